#!/usr/bin/env python3
"""L6 of the verification contract (docs/verification.md#l6-onnx): an export's model.onnx (from `linearize export-onnx`)
run by onnxruntime computes what `linearize` computes.

    .venv/bin/python scripts/check_onnx_export.py --model DST [--onnx DST/model.onnx] [--linearize build/cli/linearize] [--json out.json]

onnxruntime is the oracle here: the project has no onnxruntime C/C++ headers (the wheel ships libonnxruntime.so
without them), and `verify`'s own L6 rows (checker, shape inference, weights byte-identical to
model.safetensors) run in C++. On prompts cut from real text, from empty states:
  logits        one call (the chunked prefill) vs `linearize forward` for 1, 63, 64, 65, window-1, window+1 and
                600 tokens;
  decode        a prefill of 137 tokens, then 64 decode steps fed with the returned states and the tokens
                `linearize generate` picked: each step's logits vs `linearize forward` of the whole sequence at
                that position, and onnxruntime's greedy token == linearize's at every step;
  state size    every recurrent present.* has the same shape after the 64 steps, window caches hold <= window keys;
  padded batch  a left-padded batch of three prompts (attention_mask 0 on the pads, positions counting real
                tokens) == each prompt alone, over the prefill and 8 greedy decode steps; its prefill's logits ==
                `linearize forward --batch-ids`'s (the C++ reference's padded batch).
  genai         where genai_config.json beside the graph names it (export-onnx writes one when onnxruntime-genai
                can carry every state): og.Generator, greedy, 32 tokens on prompts of 1, 65, 137 and 600 tokens (or the context less 32):
                its logits at every step vs `linearize forward` of the same tokens, and its tokens == `linearize
                generate`'s (or parting only at a tie of the reference, as the native layouts' rows allow).
Tolerance: logits within 1e-4 x max|logit| (the issue's and L5's bound: both sides fp32 on one CPU, only the
order of sums differs, ~1e-6 relative measured; a wrong gate, window or normaliser moves logits by 1e-2 to 1).
A graph exported with --dtype fp16 (its metadata says) rounds every matrix and every product's input to fp16:
its distance from the fp32 model is a property of the model, not a bound to derive, so those rows report
KL(linearize fp32 || graph) and top-1 agreement on the 600-token prompt and on the 64 decode steps, and
enforce only finite logits and fixed state shapes (as L5 treats bf16).
Prints one row per check; exit 0 if every check passes, 1 if one fails, 2 on bad input.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_hf_export import (TOLERANCE, Linearize, Report, greedy_row, left_padded,  # noqa: E402
                             padded_batch_vs_linearize, padded_prompts, text_tokens)

DECODE_PROMPT, DECODE_STEPS = 137, 64
PADDED_STEPS = 8
GENAI_TOKENS = 32


class OnnxModel:
    """model.onnx in onnxruntime (CPU), its states carried between calls as numpy arrays."""

    def __init__(self, path):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0"))  # 0: onnxruntime's default
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.state_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past")]

    def empty_states(self, batch=1):
        """Zero recurrent states and empty caches: named dims are the batch or a cache length (0)."""
        states = {}
        for i in self.state_inputs:
            shape = [batch if d == "batch" else (0 if isinstance(d, str) else d) for d in i.shape]
            states[i.name] = np.zeros(shape, dtype=np.float32)
        return states

    def run(self, ids, states, past=0):
        """Logits [S, vocab] of ids (one row) at positions past.., and the states after them."""
        n = len(ids)
        logits, states = self.run_batch(np.array([ids], dtype=np.int64), np.ones((1, past + n), dtype=np.int64),
                                        np.arange(past, past + n, dtype=np.int64)[None], states)
        return logits[0], states

    def decode(self, prompt, fed=None, greedy_steps=0):
        """A prefill of `prompt` from empty states, then one decode step per token: each of `fed`, or for
        `greedy_steps` steps the argmax of the previous logits. Returns the prefill's logits [P, vocab], the
        steps' logits [steps, vocab], and the states after the prefill and after the last step."""
        logits, states = self.run(prompt, self.empty_states())
        after_prefill, rows, token = states, [], int(logits[-1].argmax())
        for t in range(len(fed) if fed is not None else greedy_steps):
            step, states = self.run([fed[t] if fed is not None else token], states, past=len(prompt) + t)
            rows.append(step[-1])
            token = int(step[-1].argmax())
        return logits, np.array(rows).reshape(len(rows), logits.shape[-1]), after_prefill, states

    def run_batch(self, ids, attention_mask, position_ids, states):
        """Logits [B, S, vocab] and the states after them (the whole history's attention_mask, as genai feeds it)."""
        feed = dict(states, input_ids=ids, attention_mask=attention_mask, position_ids=position_ids)
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, feed)))
        return outputs["logits"], {past_name(k): v for k, v in outputs.items() if k.startswith("present.")}


def past_name(present):
    """present.{i}.key -> past_key_values.{i}.key (onnxruntime-genai's cache names); present.{i}.<state> -> past.{i}.<state>."""
    rest = present[len("present."):]
    return ("past_key_values." if rest.endswith((".key", ".value")) else "past.") + rest


def relative_error(ours, reference):
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - reference).max() / np.abs(reference).max())


def graph_dtype(onnx_path):
    import onnx
    meta = {p.key: p.value for p in onnx.load(onnx_path, load_external_data=False).metadata_props}
    return meta.get("linearize.dtype", "fp32")


def agreement(ours, reference):
    """KL(reference || ours) mean per position and top-1 agreement, from logits [S, vocab]."""
    p = reference.astype(np.float64) - np.logaddexp.reduce(reference.astype(np.float64), axis=-1, keepdims=True)
    q = ours.astype(np.float64) - np.logaddexp.reduce(ours.astype(np.float64), axis=-1, keepdims=True)
    kl = (np.exp(p) * (p - q)).sum(-1).mean()
    return float(kl), float((p.argmax(-1) == q.argmax(-1)).mean())


def check_fp16(model_dir, onnx_path, binary, report, linearize=None):
    linearize = linearize or Linearize(binary, model_dir)
    model = OnnxModel(onnx_path)
    tokens = text_tokens(model_dir, 600)
    ours, _ = model.run(tokens, model.empty_states())
    kl, top1 = agreement(ours, linearize.logits(tokens).numpy())
    finite = bool(np.isfinite(ours).all())
    report.add("fp16 graph: 600-token logits non-finite", int(not finite), 0, finite, f"KL(fp32 || fp16) {kl:.3g}, top-1 {top1:.3f}")
    rows, reference, _, after_prefill, states = decode_against_linearize(model, linearize, tokens)
    kl, top1 = agreement(rows, reference)
    finite = bool(np.isfinite(rows).all())
    report.add(f"fp16 graph: prefill + {DECODE_STEPS} decode steps non-finite", int(not finite), 0, finite,
               f"KL(fp32 || fp16) {kl:.3g}, top-1 {top1:.3f}")
    report_state_shapes(report, after_prefill, states)
    return report


def check(model_dir, onnx_path, binary, report, linearize=None):
    if graph_dtype(onnx_path) == "fp16":
        return check_fp16(model_dir, onnx_path, binary, report, linearize)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    window = (config.get("linearize") or {}).get("params", {}).get("window")
    linearize = linearize or Linearize(binary, model_dir)
    model = OnnxModel(onnx_path)
    tokens = text_tokens(model_dir, 600 + 3 * 64)
    lengths = sorted({1, 63, 64, 65, 600} | ({window - 1, window + 1} if window else set()))
    for n in lengths:
        ids = tokens[n % 64: n % 64 + n]
        ours, _ = model.run(ids, model.empty_states())
        err = relative_error(ours, linearize.logits(ids).numpy())
        report.add(f"logits {n} tokens vs linearize forward", err, TOLERANCE, err <= TOLERANCE)

    rows, reference, generated, after_prefill, states = decode_against_linearize(model, linearize, tokens)
    err = relative_error(rows, reference)
    report.add(f"prefill {DECODE_PROMPT} + {DECODE_STEPS} decode steps vs linearize", err, TOLERANCE, err <= TOLERANCE)
    picked = rows.argmax(-1).tolist()
    same = next((i for i, (a, b) in enumerate(zip(picked, generated)) if a != b), len(picked))
    report.add(f"greedy {DECODE_STEPS} tokens == linearize generate", DECODE_STEPS - same, 0, same == len(picked),
               "identical" if same == len(picked) else f"first difference at step {same}: {picked[same]} vs {generated[same]}")
    report_state_shapes(report, after_prefill, states)
    window_caches = [v.shape[2] for k, v in states.items()
                     if k.startswith("past_key_values.") and int(k.split(".")[1]) in converted_layers(config)]
    if window_caches:
        report.add("window caches: keys held after the decode", max(window_caches), window, max(window_caches) <= window)
    err, prefill, mask = padded_batch_error(model, padded_prompts(tokens), PADDED_STEPS)
    report.add(f"left-padded batch of 3 == each alone (prefill + {PADDED_STEPS} steps)", err, TOLERANCE, err <= TOLERANCE)
    err = padded_batch_vs_linearize(prefill, mask, linearize.batch_logits(padded_prompts(tokens)))
    report.add("left-padded batch of 3 (prefill) vs linearize forward's", err, TOLERANCE, err <= TOLERANCE)
    if genai_config_of(onnx_path):
        check_genai(model_dir, onnx_path, linearize, report)
    return report


def genai_config_of(onnx_path):
    """The genai_config.json beside the graph when it names this graph (export-onnx wrote it for this file)."""
    path = os.path.join(os.path.dirname(onnx_path), "genai_config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        config = json.load(f)
    return config if config["model"]["decoder"]["filename"] == os.path.basename(onnx_path) else None


def genai_greedy(model, prompt, steps):
    """og.Generator's greedy tokens after `prompt` and the logits each was picked from [tokens, vocab] (fewer
    tokens when it stops at an end-of-sequence id, as a served model does)."""
    import onnxruntime_genai as og
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    rows, tokens = [generator.get_output("logits")[0, -1]], []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
        if len(rows) < len(tokens):  # the call ran the step feeding the previous token: its logits picked this one
            rows.append(generator.get_output("logits")[0, -1])
    return tokens, np.array(rows)


def check_genai(model_dir, onnx_path, linearize, report):
    import onnxruntime_genai as og
    model = og.Model(os.path.dirname(onnx_path))
    longest = min(600, genai_config_of(onnx_path)["model"]["context_length"] - GENAI_TOKENS)  # genai's max_length cap
    tokens = text_tokens(model_dir, 137 + longest)
    worst = 0.0
    for prompt in (tokens[:1], tokens[5:70], tokens[100:237], tokens[137:137 + longest]):
        ours, rows = genai_greedy(model, prompt, GENAI_TOKENS)
        reference = linearize.logits(prompt + ours[:-1]).numpy()[len(prompt) - 1:]
        worst = max(worst, relative_error(rows, reference))
        greedy_row(report, f"genai: greedy {GENAI_TOKENS} tokens after {len(prompt)} == linearize generate", ours, prompt,
                   linearize, TOLERANCE)
    report.add(f"genai: logits of {GENAI_TOKENS} greedy steps vs linearize forward", worst, TOLERANCE, worst <= TOLERANCE,
               "4 prompts, og.Generator")


def decode_against_linearize(model, linearize, tokens):
    """The graph's logits for the 64 tokens `linearize generate` picks after a 137-token prompt (prefill, then
    decode steps fed with those tokens and the returned states), `linearize forward`'s logits at the same
    positions (P-1 .. P+62 predict them), the tokens, and the graph's states after the prefill and at the end."""
    prompt = tokens[:DECODE_PROMPT]
    generated, _ = linearize.generate(prompt, DECODE_STEPS)
    reference = linearize.logits(prompt + generated[:-1]).numpy()[DECODE_PROMPT - 1:]
    prefill, steps, after_prefill, states = model.decode(prompt, fed=generated[:-1])
    return np.concatenate([prefill[-1:], steps]), reference, generated, after_prefill, states


def report_state_shapes(report, before, after):
    """Recurrent states (not KV caches) keep their shapes over the decode."""
    grown = [k for k, v in before.items() if not k.startswith("past_key_values.") and after[k].shape != v.shape]
    count = sum(not k.startswith("past_key_values.") for k in before)
    report.add(f"recurrent states: shapes changed in {DECODE_STEPS} steps", len(grown), 0, not grown, ", ".join(grown) or f"{count} states")


def converted_layers(config):
    kept = set((config.get("linearize") or {}).get("softmax_layers", []))
    return [i for i in range(config["num_hidden_layers"]) if config.get("linearize") and i not in kept]


def padded_batch_error(model, prompts, steps):
    """The largest relative logits error of a left-padded batch (attention_mask 0 on the pads, positions counting
    the real tokens only) against each prompt alone, over the prefill and `steps` greedy decode steps; and the
    prefill's logits and mask."""
    ids, mask = (np.array(a, dtype=np.int64) for a in left_padded(prompts))
    width = ids.shape[1]
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    logits, states = model.run_batch(ids, mask, positions, model.empty_states(len(prompts)))
    first_logits, first_mask = logits, mask
    batched = [[logits[i, width - len(p):]] for i, p in enumerate(prompts)]
    tokens = logits[:, -1].argmax(-1)
    for _ in range(steps):
        mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], 1)
        positions = positions[:, -1:] + 1
        logits, states = model.run_batch(tokens[:, None].astype(np.int64), mask, positions, states)
        for i in range(len(prompts)):
            batched[i].append(logits[i])
        tokens = logits[:, -1].argmax(-1)
    err = 0.0
    for i, p in enumerate(prompts):
        ours = np.concatenate(batched[i])
        prefill, steps_alone, _, _ = model.decode(p, greedy_steps=steps)
        err = max(err, relative_error(ours, np.concatenate([prefill, steps_alone])))
    return err, first_logits, first_mask


def compare_graphs(model_dir, first, second, report, label):
    """Two graphs of one model (the Scan form and the LinearAttention operator) give the same logits over a
    600-token prefill and 16 decode steps from their own states."""
    tokens = text_tokens(model_dir, 600 + 16)
    outputs = []
    for path in (first, second):
        prefill, steps, _, _ = OnnxModel(path).decode(tokens[:600], fed=tokens[600:616])
        outputs.append(np.concatenate([prefill, steps]))
    err = relative_error(outputs[1], outputs[0])
    report.add(label, err, TOLERANCE, err <= TOLERANCE)
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--onnx", help="the graph (default: MODEL/model.onnx)")
    parser.add_argument("--linearize", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "cli", "linearize"))
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--compare", metavar="OTHER_ONNX", help="also: this graph's logits == OTHER_ONNX's (prefill + decode)")
    args = parser.parse_args()
    onnx_path = args.onnx or os.path.join(args.model, "model.onnx")
    if not os.path.isfile(onnx_path):
        print(f"error: {onnx_path}: missing (run linearize export-onnx first)", file=sys.stderr)
        return 2
    report = check(args.model, onnx_path, args.linearize, Report("L6"))
    if args.compare:
        compare_graphs(args.model, onnx_path, args.compare, report, f"{os.path.basename(args.compare)} == {os.path.basename(onnx_path)}")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
