"""L5 over the registries: every registered recipe converts a fixture family (`--family tiny-llama`) and the
export's transformers files pass scripts/check_hf_export.py against `linearize forward` / `generate`; so does a
hybrid (layer 0 kept as softmax attention, a 16-key window); and (on tiny-llama) a planted change in the
modeling file fails it. Driven by ctest with LINEARIZE_BINARY and LINEARIZE_FIXTURES set.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import check_hf_export  # noqa: E402

BINARY = os.environ["LINEARIZE_BINARY"]
FIXTURES = os.environ["LINEARIZE_FIXTURES"]


def registered_recipes():
    """The recipe registry, as `linearize convert --help` lists it."""
    text = subprocess.run([BINARY, "convert", "--help"], check=True, capture_output=True, text=True).stdout
    return re.search(r"Recipe: ([^\n]+)", text).group(1).replace(" ", "").split(",")


def convert(source, recipe, out, params=()):
    """The export directory (every fixture family takes every recipe: a refusal is a failure here)."""
    args = [BINARY, "--log-level", "warn", "convert", "--model", source, "--recipe", recipe, "--out", out]
    for p in params:
        args += ["--set", p]
    run = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if run.returncode != 0:
        raise RuntimeError(f"convert {recipe} failed ({run.returncode}): {run.stderr}")
    return out


def check(model_dir, label):
    print(f"-- {label}", flush=True)
    return check_hf_export.check(model_dir, BINARY, check_hf_export.Report())


def plant(model_dir, old, new):
    """A copy of the export whose modeling file has `old` replaced by `new` (the L0 hash would catch the edit;
    this checks that L5 does too)."""
    planted = model_dir + "-planted"
    shutil.copytree(model_dir, planted)
    path = os.path.join(planted, "modeling_linearize.py")
    with open(path) as f:
        text = f.read()
    assert old in text, f"the planted change's anchor {old!r} is no longer in modeling_linearize.py"
    with open(path, "w") as f:
        f.write(text.replace(old, new))
    return planted


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", required=True, help="fixture directory name, e.g. tiny-llama")
    args = parser.parse_args()
    torch.set_num_threads(1)  # ctest runs two tests at once on two cores
    source = os.path.join(FIXTURES, args.family)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in registered_recipes():
            out = convert(source, recipe, os.path.join(tmp, recipe))
            if not check(out, f"{args.family} {recipe}").passed:
                failed.append(recipe)
        hybrid = convert(source, "lolcats", os.path.join(tmp, "hybrid"), ["softmax_layers=[0]", "window=16"])
        if not check(hybrid, f"{args.family} hybrid (layer 0 softmax)").passed:
            failed.append("hybrid")
        if args.family == "tiny-llama":
            # Halving the GLA gate's strength (a decay bug) must fail the logits rows: all but the 1-token prompt,
            # whose output no decay has acted on yet.
            planted = plant(os.path.join(tmp, "liger-gla"), 'self.params["gate_normalizer"]',
                            '(2 * self.params["gate_normalizer"])')
            report = check(planted, "planted change: liger-gla gate normaliser doubled")
            logit_rows = [r for r in report.rows if r["check"].startswith("logits") and not r["check"].startswith("logits 1 ")]
            if not logit_rows or any(r["pass"] for r in logit_rows):
                failed.append("planted change not caught")
    print("failed: " + ", ".join(failed) if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
