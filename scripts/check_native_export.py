#!/usr/bin/env python3
"""Parity of a native export (docs/verification.md#native-layouts): `linearize export-native` wrote NATIVE from the
conversion CONVERSION as a plain checkpoint of a serving runtime's architecture; this loads NATIVE with that
runtime's own code and checks it computes what `linearize` computes on CONVERSION.

    .venv/bin/python scripts/check_native_export.py --conversion DIR --native DIR [--runtime transformers]
        [--linearize build/cli/linearize] [--json out.json]

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
Prints one row per check; exit 0 if every check passes, 1 if one fails, 2 on bad input.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_hf_export import (TOLERANCE, Linearize, Report, left_padded, padded_batch_vs_linearize, padded_prompts,  # noqa: E402
                             relative_error, text_tokens)

LENGTHS = (1, 63, 64, 65, 600)
DECODE_STEPS = 64
GREEDY_TOKENS = 64
MAX_FLOOR = 1e-2  # a runtime whose equal computations differ by more than 1% of the logits compares nothing


def load_transformers(native, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(native, dtype=dtype).eval()


def forward(model, ids, **kwargs):
    return model(ids, use_cache=False, **kwargs).logits


def greedy(model, ids, tokens, **kwargs):
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0, **kwargs)
    return out[:, ids.shape[1]:]


def first_difference(ours, theirs):
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return same, ("identical" if same == len(ours) == len(theirs) else f"first difference at token {same}")


def check_transformers(conversion, native, linearize, report):
    model = load_transformers(native)
    context = model.config.max_position_embeddings
    tokens = text_tokens(native, 600 + 3 * 64)
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
        ours = greedy(model, torch.tensor([prompt]), GREEDY_TOKENS, use_cache=cacheable)[0].tolist()
        theirs, _ = linearize.generate(prompt, GREEDY_TOKENS)
        same, detail = first_difference(ours, theirs)
        report.add(f"transformers: greedy {GREEDY_TOKENS} tokens == linearize generate" + ("" if cacheable else " (no cache)"),
                   GREEDY_TOKENS - same, 0, same == GREEDY_TOKENS, detail)

        err = padded_batch_vs_linearize(batched, mask, linearize.batch_logits(prompts))
        report.add("transformers: left-padded batch of 3 vs linearize forward's", err, tolerance, err <= tolerance)

    model16 = load_transformers(native, torch.bfloat16)
    ids = torch.tensor([tokens[:65]])
    with torch.no_grad():
        p32 = forward(model, ids)[0].double().log_softmax(-1)
        p16 = forward(model16, ids)[0].double().log_softmax(-1)
    finite = bool(torch.isfinite(p16).all())
    kl = (p32.exp() * (p32 - p16)).sum(-1).mean().item()
    top1 = (p32.argmax(-1) == p16.argmax(-1)).double().mean().item()
    report.add("transformers: bf16 logits non-finite", int(not finite), 0, finite,
               f"KL(fp32 || bf16) {kl:.3g}, top-1 agreement {top1:.3f}")
    return report


RUNTIMES = {"transformers": check_transformers}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversion", required=True, help="the conversion export-native read")
    parser.add_argument("--native", required=True, help="the directory export-native wrote")
    parser.add_argument("--runtime", choices=sorted(RUNTIMES), default="transformers")
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
    RUNTIMES[args.runtime](args.conversion, args.native, Linearize(args.linearize, args.conversion), report)
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
