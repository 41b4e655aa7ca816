#!/usr/bin/env python3
"""What convert and verify cost (scripts/bench.sh section `verify`): wall time and peak resident memory of
`linearize convert` (which records and verifies on the built-in prompts) and of `linearize verify --text`
over a text of exactly N tokens, resident and with its layers streamed (the same report, row for row), each in a
fresh process.

    verify_cost.py --linearize BIN --source DIR --recipe R --work DIR --text-tokens 4096 --out FILE.json
"""
import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "corpus" / "corpus.txt"


def text_of_tokens(tokenizer_dir, tokens, out):
    """The corpus's first `tokens` tokens (by the model's tokenizer) as text."""
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    text = CORPUS.read_text(encoding="utf-8")
    while len(tokenizer.encode(text).ids) < tokens:
        text += "\n" + text
    encoding = tokenizer.encode(text)
    cut = text[: encoding.offsets[tokens - 1][1]]
    Path(out).write_text(cut, encoding="utf-8")
    return len(tokenizer.encode(cut).ids)


def timed(args):
    """Wall seconds, peak RSS (bytes) and the result of one command, run under a fresh child Python so that
    RUSAGE_CHILDREN (the largest child so far) is this command's alone."""
    code = ("import json, sys, resource, subprocess, time; s = time.monotonic(); "
            "d = subprocess.run(sys.argv[1:], capture_output=True, text=True); w = time.monotonic() - s; "
            "print(json.dumps({'wall': w, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "
            "'rc': d.returncode, 'out': d.stdout, 'err': d.stderr}))")
    r = json.loads(subprocess.run([sys.executable, "-c", code] + args, capture_output=True, text=True, check=True).stdout)
    if r["rc"] not in (0, 1):  # 1: a check failed, still a full run
        sys.exit(f"{' '.join(args)} exited {r['rc']}:\n{r['err']}")
    return r["wall"], r["rss"], r["out"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--linearize", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--recipe", default="lolcats")
    p.add_argument("--work", required=True)
    p.add_argument("--text-tokens", type=int, default=4096)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    converted = work / f"{Path(a.source).name}-{a.recipe}"
    text = work / f"text-{a.text_tokens}.txt"
    tokens = text_of_tokens(a.source, a.text_tokens, text)

    lin = [a.linearize, "--log-level", "warn"]
    convert_s, convert_rss, convert_out = timed(lin + ["convert", "--model", a.source, "--recipe", a.recipe, "--out", str(converted), "--force"])
    verify = lin + ["verify", "--model", str(converted), "--source", a.source, "--text", str(text), "--stream-layers"]
    verify_s, verify_rss, verify_out = timed(verify + ["off"])
    streamed_s, streamed_rss, streamed_out = timed(verify + ["on"])
    result = {
        "source": a.source, "recipe": a.recipe, "text_tokens": tokens, "cpus": os.cpu_count(),
        "convert_s": convert_s, "convert_peak_rss": convert_rss, "convert_passed": "verify: PASS" in convert_out,
        "verify_text_s": verify_s, "verify_text_peak_rss": verify_rss, "verify_text_passed": "verify: PASS" in verify_out,
        "streamed_s": streamed_s, "streamed_peak_rss": streamed_rss, "streamed_same_report": streamed_out == verify_out,
        "convert_table": convert_out, "verify_table": verify_out,
    }
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
