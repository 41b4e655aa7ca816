#!/usr/bin/env python3
"""L5 of the verification contract (docs/verification.md#l5-transformers): an export's own transformers files
(configuration_linearize.py, modeling_linearize.py) compute what `linearize` computes.

    .venv/bin/python scripts/check_hf_export.py --model DST [--linearize build/cli/linearize] [--json out.json]

Loads DST with AutoModelForCausalLM.from_pretrained(DST, trust_remote_code=True) in fp32 (with DST/adapter
attached through PEFT when present, as `linearize` attaches it) and checks, on prompts cut from real text:
  logits        vs `linearize forward` for prompts of 1, 63, 64, 65, window-1, window+1 and 600 tokens;
  prefill+decode  prefill of a prompt == prefill of its first part + token-by-token decode of the rest;
  greedy        128 greedy tokens of model.generate == `linearize generate`'s;
  padded batch  a left-padded batch of three prompts == each prompt alone (logits and greedy tokens), and its
                logits == `linearize forward --batch-ids`'s (the C++ reference's padded batch);
  beam search   num_beams=3 with the cache == without it (the cache reordered per beam);
  decode memory the converted layers' state is the same size after 64 more decode steps.
Tolerances: logits within 1e-4 x max|logit|. Both sides run fp32 on the same CPU; what differs is the order of
the sums (chunk splits, einsum vs fused GEMMs), which leaves ~1e-6 relative (measured over every recipe and
fixture family); a wrong gate, window or normaliser moves logits by 1e-2 to 1 of their scale.
Prints one row per check; exit 0 if every check passes, 1 if one fails, 2 on bad input.
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

import torch

TOLERANCE = 1e-4  # x max|logit|, see the module docstring
MAX_FLOOR = 1e-2  # a runtime whose equal computations differ by more than 1% of the logits compares nothing
GREEDY_TOKENS = 128
SPLIT_PROMPT, SPLIT_AT = 200, 137  # crosses chunk (64) and window (64) edges on both sides of the split


class Report:
    def __init__(self, level="L5"):
        self.level, self.rows = level, []

    def add(self, name, value, tolerance, passed, detail=""):
        self.rows.append({"check": name, "value": value, "tolerance": tolerance, "pass": bool(passed), "detail": detail})
        print(f"{self.level}  {name:<44} {value:<12.3g} <= {tolerance:<10.3g} {'PASS' if passed else 'FAIL'}  {detail}", flush=True)

    @property
    def passed(self):
        return all(r["pass"] for r in self.rows)

    def finish(self, json_path=None):
        """Writes the rows to `json_path` when given; the exit status (0 every row passed, 1 one failed)."""
        if json_path:
            with open(json_path, "w") as f:
                json.dump(self.rows, f, indent=1)
        return 0 if self.passed else 1


def relative_error(ours, reference):
    return ((ours.float() - reference.float()).abs().max() / reference.float().abs().max()).item()


def narrow_dtype_row(report, name, wide, narrow, label="bf16", reference="fp32"):
    """A narrow dtype's logits [T, vocab] against the fp32 ones (or any two models'): finite enforced;
    KL(reference || narrow) and top-1 agreement reported, not bounded (what the dtype costs is the model's)."""
    p32, p16 = wide.double().log_softmax(-1), narrow.double().log_softmax(-1)
    finite = bool(torch.isfinite(p16).all())
    kl = (p32.exp() * (p32 - p16)).sum(-1).mean().item()
    top1 = (p32.argmax(-1) == p16.argmax(-1)).double().mean().item()
    report.add(name, int(not finite), 0, finite, f"KL({reference} || {label}) {kl:.3g}, top-1 agreement {top1:.3f}")


def first_difference(ours, theirs):
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return same, ("identical" if same == len(ours) == len(theirs) else f"first difference at token {same}")


def greedy_row(report, name, runtime_tokens, prompt, linearize, tolerance):
    """Greedy tokens identical to `linearize generate`'s, or parting only at a tie: where they first differ, the
    reference's logits (fed the common prefix) put the two tokens within 2 x tolerance x max|logit| of each other,
    a gap the two implementations' rounding can reverse (random fixtures have such ties)."""
    theirs = linearize.generate(prompt, len(runtime_tokens))[0]
    same, detail = first_difference(runtime_tokens, theirs)
    gap = 0.0
    if same < len(runtime_tokens):
        logits = linearize.logits(prompt + runtime_tokens[:same])[-1].double()
        gap = ((logits[theirs[same]] - logits[runtime_tokens[same]]).abs() / logits.abs().max()).item()
        detail += f" (the reference's logits of the two {gap:.2g} x max|logit| apart{': a tie' if gap <= 2 * tolerance else ''})"
    report.add(name, gap, 2 * tolerance, gap <= 2 * tolerance, detail)


def padded_prompts(tokens):
    """The padded-batch rows' prompts: 65, 20 and 1 token of the text."""
    return [tokens[5:70], tokens[100:120], tokens[200:201]]


def left_padded(prompts):
    """ids and attention_mask (lists of rows) of the prompts left-padded with id 0, as transformers pads to generate."""
    width = max(map(len, prompts))
    return ([[0] * (width - len(p)) + p for p in prompts], [[0] * (width - len(p)) + [1] * len(p) for p in prompts])


def padded_batch_vs_linearize(batched, mask, reference):
    """The largest relative error over the real tokens of a padded batch's logits against `linearize forward
    --batch-ids`'s (the C++ reference's padded batch), both [B, T, vocab]."""
    real = torch.as_tensor(mask).bool()
    return relative_error(torch.as_tensor(batched)[real], reference[real])


def text_tokens(model_dir, count):
    """`count` token ids of real text (the bundled corpus) encoded with the export's tokenizer.json."""
    from tokenizers import Tokenizer
    corpus = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "corpus", "corpus.txt")
    with open(corpus, encoding="utf-8") as f:
        ids = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json")).encode(f.read()).ids
    while len(ids) < count:
        ids = ids + ids
    return ids[:count]


class Linearize:
    """`linearize forward` and `linearize generate` on the export, fp32 on the CPU."""

    def __init__(self, binary, model_dir):
        self.binary, self.model_dir = binary, model_dir
        self.cache = {}  # the L5 and L6 checks of one export ask for the same prompts

    def logits(self, ids, dtype="fp32"):
        key = ("forward", tuple(ids), dtype)
        if key not in self.cache:
            from safetensors.torch import load_file
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "logits.safetensors")
                self._run("forward", ids, ["--out", out] + (["--dtype", dtype] if dtype != "fp32" else []))
                self.cache[key] = load_file(out)["logits"].reshape(len(ids), -1)
        return self.cache[key]

    def generate(self, ids, tokens, dtype="fp32"):
        """The generated ids and their text, as `linearize generate` prints them (ids, then the decoded text)."""
        key = ("generate", tuple(ids), tokens, dtype)
        if key not in self.cache:
            extra = ["--max-new-tokens", str(tokens), "--no-stop-at-eos"] + (["--dtype", dtype] if dtype != "fp32" else [])
            ids_line, _, text = self._run("generate", ids, extra).partition("\n")
            self.cache[key] = [int(t) for t in ids_line.split()], text[:-1] if text else None  # the text may hold newlines
        return self.cache[key]

    def batch_logits(self, prompts):
        """`linearize forward --batch-ids` on the prompts left-padded (the C++ reference's padded batch): [B, T, vocab]."""
        key = ("batch", tuple(map(tuple, prompts)))
        if key not in self.cache:
            from safetensors.torch import load_file
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "logits.safetensors")
                subprocess.run([self.binary, "--log-level", "warn", "forward", "--model", self.model_dir, "--out", out,
                                "--batch-ids", ";".join(",".join(map(str, p)) for p in prompts)], check=True, capture_output=True)
                self.cache[key] = load_file(out)["logits"]
        return self.cache[key]

    def _run(self, command, ids, extra):
        args = [self.binary, "--log-level", "warn", command, "--model", self.model_dir,
                "--prompt-ids", ",".join(map(str, ids))] + extra
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def load(model_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype)
    adapter = os.path.join(model_dir, "adapter")
    if os.path.isdir(adapter):
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def generate(model, ids, tokens, **kwargs):
    """`tokens` greedy (or beam) tokens of one or more prompts, the end-of-sequence token included where it wins (as
    `linearize generate --no-stop-at-eos`): the eos set to an id past the vocabulary, so generate neither stops at
    the real one nor masks it (min_new_tokens would, and a prompt whose next best token is eos would then part)."""
    config = copy.deepcopy(model.generation_config)
    config.update(eos_token_id=model.config.vocab_size, max_new_tokens=tokens, do_sample=False, pad_token_id=0)
    out = model.generate(ids, generation_config=config, **kwargs)
    return out[:, ids.shape[1]:]


def mixer_cache_class(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return sys.modules[type(base).__module__].LinearizeCache


def check(model_dir, binary, report, model=None, linearize=None):
    model = model or load(model_dir)
    config = model.config
    linearize = linearize or Linearize(binary, model_dir)
    window = config.linearize["params"].get("window")
    converted = config.num_hidden_layers > len(config.linearize.get("softmax_layers", []))
    lengths = sorted({1, 63, 64, 65, 600} | ({window - 1, window + 1} if window else set()))
    tokens = text_tokens(model_dir, 600 + 3 * 64)

    with torch.no_grad():
        for n in lengths:
            ids = tokens[n % 64: n % 64 + n]  # each prompt starts elsewhere in the text
            ours = model(torch.tensor([ids])).logits[0]
            ref = linearize.logits(ids)
            err = relative_error(ours, ref)
            report.add(f"logits {n} tokens vs linearize forward", err, TOLERANCE, err <= TOLERANCE)

        ids = torch.tensor([tokens[:SPLIT_PROMPT]])
        whole = model(ids).logits[0]
        cache = mixer_cache_class(model)(model.config)
        parts = [model(ids[:, :SPLIT_AT], past_key_values=cache, use_cache=True).logits[0]]
        for t in range(SPLIT_AT, SPLIT_PROMPT):
            parts.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits[0])
        err = relative_error(torch.cat(parts), whole)
        report.add(f"prefill {SPLIT_AT} + decode {SPLIT_PROMPT - SPLIT_AT} == prefill", err, TOLERANCE, err <= TOLERANCE)

        prompt = tokens[:65]
        ours = generate(model, torch.tensor([prompt]), GREEDY_TOKENS)[0].tolist()
        theirs, their_text = linearize.generate(prompt, GREEDY_TOKENS)
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
        detail = "identical" if same == len(ours) else f"first difference at token {same}: {ours[same]} vs {theirs[same]}"
        report.add(f"greedy {GREEDY_TOKENS} tokens == linearize generate", GREEDY_TOKENS - same, 0, same == len(ours), detail)
        if their_text is not None:
            from transformers import AutoTokenizer
            text = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True).decode(ours)
            report.add("greedy text == linearize generate's text", int(text != their_text), 0, text == their_text,
                       repr(text[:40]) if text == their_text else f"{text[:40]!r} vs {their_text[:40]!r}")

        prompts = padded_prompts(tokens)
        batch, mask = (torch.tensor(a) for a in left_padded(prompts))
        batched = model(batch, attention_mask=mask).logits
        err = max(relative_error(batched[i, mask.shape[1] - len(p):], model(torch.tensor([p])).logits[0]) for i, p in enumerate(prompts))
        report.add("left-padded batch of 3 == each alone (logits)", err, TOLERANCE, err <= TOLERANCE)
        err = padded_batch_vs_linearize(batched, mask, linearize.batch_logits(prompts))
        report.add("left-padded batch of 3 vs linearize forward's", err, TOLERANCE, err <= TOLERANCE)
        batched_tokens = generate(model, batch, 16, attention_mask=mask)
        alone = [generate(model, torch.tensor([p]), 16)[0] for p in prompts]
        differ = sum(int(not torch.equal(batched_tokens[i], alone[i])) for i in range(len(prompts)))
        report.add("left-padded batch of 3 == each alone (16 tokens)", differ, 0, differ == 0)

        prompt = torch.tensor([tokens[300:340]])
        cached = generate(model, prompt, 12, num_beams=3, use_cache=True)
        uncached = generate(model, prompt, 12, num_beams=3, use_cache=False)
        report.add("beam search (3 beams) cached == uncached", int(not torch.equal(cached, uncached)), 0, torch.equal(cached, uncached))

        if converted:
            cache = mixer_cache_class(model)(model.config)
            prefix = torch.tensor([tokens[:(window or 64) + 8]])
            generate(model, prefix, 1, past_key_values=cache)
            before = cache.mixer_bytes()
            cache = mixer_cache_class(model)(model.config)
            generate(model, prefix, 65, past_key_values=cache)
            after = cache.mixer_bytes()
            report.add("converted layers' decode state: bytes grown in 64 steps", after - before, 0, after == before,
                       f"{after} bytes")
    # bf16: loads and runs (what it costs in agreement is reported, not bounded: it depends on the model).
    model16 = load(model_dir, torch.bfloat16)
    ids = torch.tensor([tokens[:65]])
    with torch.no_grad():
        narrow_dtype_row(report, "bf16 (dtype=torch.bfloat16) logits non-finite", model(ids).logits[0], model16(ids).logits[0])
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="export directory")
    parser.add_argument("--linearize", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "cli", "linearize"))
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.model, "modeling_linearize.py")):
        print(f"error: {args.model}/modeling_linearize.py: missing (not a linearize export)", file=sys.stderr)
        return 2
    return check(args.model, args.linearize, Report()).finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
