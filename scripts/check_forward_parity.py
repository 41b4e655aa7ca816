#!/usr/bin/env python3
"""`linearize forward` against transformers on one checkpoint directory, at any size that fits memory once.

Runs `linearize forward` (fp32) on N token ids of the bundled corpus (encoded with the checkpoint's tokenizer), lets
that process exit, then loads the model in transformers (fp32, its default attention) on the same ids, so only one
copy of the model is in memory at a time. Prints max|err| / max|logit| (fp32 parity: <= 1e-4, as
scripts/check_hf_export.py) and the positions whose argmax agree; exit 0 when the error holds and every argmax agrees
but at near-ties (the reference's top two within 2 x 1e-4 x max|logit|, which rounding may swap), 1 otherwise.

  scripts/check_forward_parity.py --model /tmp/gpt-oss [--tokens 1200] [--binary build/cli/linearize]
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TOLERANCE = 1e-4  # x max|logit|: fp32 forward parity, as in scripts/check_hf_export.py


def forward_parity(model_dir, binary, ids):
    """(max|err| / max|logit|, positions whose argmax agree, positions whose argmax differ at a near-tie) of
    `linearize forward` against transformers on ids."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "logits.safetensors")
        subprocess.run([binary, "--log-level", "warn", "forward", "--model", model_dir, "--prompt-ids", ",".join(map(str, ids)),
                        "--out", path], check=True)
        ours = load_file(path)["logits"].reshape(len(ids), -1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0]
    scale = reference.abs().max()
    err = ((ours - reference).abs().max() / scale).item()
    theirs_top, ours_top = reference.argmax(-1), ours.argmax(-1)
    gap = reference.gather(-1, theirs_top[:, None]) - reference.gather(-1, ours_top[:, None])
    ties = ((theirs_top != ours_top) & (gap[:, 0] <= 2 * TOLERANCE * scale)).sum().item()
    return err, (theirs_top == ours_top).sum().item(), ties


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--binary", default=os.path.join(REPO, "build", "cli", "linearize"))
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from check_hf_export import text_tokens
    ids = text_tokens(args.model, args.tokens)
    started = time.monotonic()
    err, same, ties = forward_parity(args.model, args.binary, ids)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.model}: {len(ids)} tokens, max|err| / max|logit| = {err:.3g} (<= {TOLERANCE:g}), argmax equal at "
          f"{same}/{len(ids)} positions, {ties} near-ties apart ({time.monotonic() - started:.0f} s; transformers' peak RSS "
          f"{peak:.1f} GiB)")
    return 0 if err <= TOLERANCE and same + ties == len(ids) else 1


if __name__ == "__main__":
    sys.exit(main())
