#!/usr/bin/env python3
"""Every recipe distilled on a real model at one fixed token budget, then judged by `linearize eval` against its
source (scripts/bench.sh section `quality`, docs/distillation.md#the-quality-bench).

Rows: the source alone (the baseline: its passkey accuracy and decode speed), then each recipe of `linearize
recipes` as a hybrid (softmax_layers auto:N, N = half the layers unless --keep) and pure. Each row is one
`linearize distill` of the template run file (configs/quality-cpu.yaml) with only the recipe, its softmax layers and
the step counts changed; the template's recipe parameters go to every recipe that declares them (window to the
window hybrids). Its final `linearize eval` (eval.text) gives the perplexity ratio, KL(source || model) and top-1
agreement per position bucket, passkey accuracy per length and greedy generation agreement; `linearize generate`
gives the decode tokens/s after a --decode-context prompt.

The budget is the step counts (--stage1-steps, --stage2-steps) times the template's seq_len x batch_size x
grad_accum tokens; on CUDA (--device cuda) both are multiplied by 100. A row is kept in <work>/<row>/row.json and
skipped by the next run when its settings are unchanged (--force reruns it), so a long bench resumes where it
stopped.

    quality_bench.py --linearize BIN --model DIR --train FILE --eval FILE --config YAML --work DIR --out F.json
                     [--recipes a,b] [--modes hybrid,pure] [--keep N] [--stage1-steps 20] [--stage2-steps 10]
                     [--device cpu|cuda] [--dtype auto|fp32|bf16] [--lengths 512,1024,2048] [--decode-context 4096]
                     [--set KEY=VALUE ...]

--set changes the run file for every recipe row (e.g. --set stage2.loss=ce+kl), to measure a lever against the
bench's rows: give it its own --work (the source's row can be copied there: it does not depend on --set).
"""
import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

import yaml

CUDA_SCALE = 100  # the "budget x 100" on a GPU
DECODE_TOKENS = 32
VALIDATION_SEQUENCES = 4
NO_STAGE1 = "stage1.enabled: recipe"  # distill's refusal of stage 1 for a recipe that adds no tensors


def linearize_json(args, *command):
    return json.loads(subprocess.run([args.linearize, *command], capture_output=True, text=True, check=True).stdout)


def effective_config(args, overrides):
    """The run file as distill reads it, overrides applied (`distill --dump-config`)."""
    command = [args.linearize, "distill", "--config", args.config, "--dump-config"]
    for o in overrides:
        command += ["--set", o]
    return yaml.safe_load(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def stage_tokens(config, stage):
    s = config[stage]
    if not s.get("enabled", True):
        return 0
    data = config["data"]
    return s["steps"] * s["grad_accum"] * data["batch_size"] * data["seq_len"]


def decode_rate(args, model, vocab):
    """Decode tokens/s of `linearize generate` after a prompt of --decode-context tokens (its own timing line)."""
    rng = random.Random(args.decode_context)
    ids = [rng.randrange(3, vocab) for _ in range(args.decode_context)]
    command = [args.linearize, "generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)),
               "--max-new-tokens", str(DECODE_TOKENS + 1), "--no-stop-at-eos", "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(re.search(r"decode \d+ tokens in [\d.]+ s \(([\d.]+) tokens/s\)", done.stderr).group(1))


def summarise_eval(path):
    """The figures a row shows, from eval.json: per-bucket ratio, KL and top-1, their means weighted by
    predictions, passkey accuracy per length, generation agreement."""
    with open(path) as f:
        e = json.load(f)
    buckets = [{k: b.get(k) for k in ("begin", "end", "tokens", "model_perplexity", "source_perplexity", "ratio", "kl", "top1")}
               for b in e["perplexity_by_position"]]
    row = {"buckets": buckets, "passkey": {str(p["length"]): p for p in e["passkey_by_length"]},
           "generation_agreement": e["generation"].get("agreement"), "eval_seconds": sum(e["seconds"].values())}
    if e["has_source"]:
        total = sum(b["tokens"] for b in buckets)
        row["kl"] = sum(b["kl"] * b["tokens"] for b in buckets) / total
        row["top1"] = sum(b["top1"] * b["tokens"] for b in buckets) / total
    return row


def distill(args, name, work, overrides, row):
    """One `linearize distill` of the template with `overrides`, logged to <work>/distill.log."""
    config = effective_config(args, overrides)
    row["tokens"] = [stage_tokens(config, "stage1"), stage_tokens(config, "stage2")]
    print(f"{name}: distill {row['tokens'][0]} + {row['tokens'][1]} tokens (log: {work}/distill.log)", flush=True)
    command = [args.linearize, "distill", "--config", args.config]
    for o in overrides:
        command += ["--set", o]
    with open(os.path.join(work, "distill.log"), "w") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)


def fingerprint(settings):
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def run_row(args, name, recipe, mode, declared, template, vocab):
    """One row: distill + eval (or the source's eval alone), then decode speed. Cached in <work>/<name>/row.json."""
    work = os.path.join(args.work, name)
    # The run file's values (an edited comment keeps the rows) less the softmax layers, which each row sets itself.
    values = json.loads(json.dumps(template))
    values["recipe"]["params"].pop("softmax_layers", None)
    settings = {"recipe": recipe, "device": args.device, "lengths": args.lengths, "decode_context": args.decode_context,
                "model": os.path.abspath(args.model), "eval": os.path.abspath(args.eval)}
    if recipe is not None:  # what only a distilled row depends on (the source's row is kept across levers)
        settings.update({"mode": mode, "keep": args.keep, "steps": [args.stage1_steps, args.stage2_steps], "dtype": args.dtype,
                         "train": os.path.abspath(args.train), "config": values, "set": args.set})
    row_file = os.path.join(work, "row.json")
    if not args.force and os.path.exists(row_file):
        with open(row_file) as f:
            row = json.load(f)
        if row.get("fingerprint") == fingerprint(settings):
            print(f"{name}: kept from an earlier run ({row_file})", flush=True)
            return row
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    lengths = ",".join(map(str, args.lengths))
    start = time.time()
    row = {"name": name, "recipe": recipe, "mode": mode, "fingerprint": fingerprint(settings)}
    if recipe is None:
        eval_json = os.path.join(work, "eval.json")
        with open(os.path.join(work, "eval.log"), "w") as log:
            subprocess.run([args.linearize, "eval", "--model", args.model, "--text", args.eval, "--lengths", lengths,
                            "--json", eval_json, "--device", args.device], stdout=log, stderr=subprocess.STDOUT, check=True)
        model, row["tokens"] = args.model, [0, 0]
    else:
        params = {k: v for k, v in template["recipe"]["params"].items() if k in declared}
        params["softmax_layers"] = f"auto:{args.keep}" if mode == "hybrid" else []
        overrides = [f"model={args.model}", f"out={os.path.join(work, 'run')}", f"data.files=[{args.train}]",
                     f"recipe.name={recipe}", "recipe.params=" + json.dumps(params), f"eval.text={args.eval}",
                     f"eval.lengths=[{lengths}]", f"stage1.steps={args.stage1_steps}", f"stage2.steps={args.stage2_steps}",
                     f"device.type={args.device}", f"device.dtype={args.dtype}",
                     # distill's own validation runs at every log step and four times for its held-out table: a few
                     # sequences keep that under a minute; the row is judged by the eval, not by them.
                     f"data.validation_sequences={VALIDATION_SEQUENCES}"]
        done = distill(args, name, work, overrides + args.set, row)
        if done.returncode == 2 and NO_STAGE1 in open(os.path.join(work, "distill.log")).read():
            # A recipe without stage-1 tensors (liger-gla: gates pooled from W_K, no new weights) trains LoRA only,
            # over the whole budget; the conversion in run/converted is reused.
            overrides += ["stage1.enabled=false", f"stage2.steps={args.stage1_steps + args.stage2_steps}"]
            done = distill(args, name, work, overrides + args.set, row)
        if done.returncode not in (0, 1):  # 1: the export's verify failed a threshold; the eval still ran
            raise RuntimeError(f"{name}: distill exited {done.returncode} (see {work}/distill.log)")
        row["verify_passed"] = done.returncode == 0
        model, eval_json = os.path.join(work, "run", "model"), os.path.join(work, "run", "eval.json")
    row["wall_s"] = time.time() - start
    row.update(summarise_eval(eval_json))
    row["decode_tokens_per_s"] = decode_rate(args, model, vocab)
    with open(row_file, "w") as f:
        json.dump(row, f, indent=1)
    return row


def fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows, lengths, keep):
    """The README table: one line per row, ratios per bucket up to the longest eval length."""
    spans = [(b["begin"], b["end"]) for b in rows[0]["buckets"]]
    label = lambda n: f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)
    head = ["row", "tokens (stage 1 + 2)", "wall"] + [f"{label(a)}-{label(b)}" for a, b in spans] + \
           [f"passkey {label(l)}" for l in lengths[-2:]] + ["KL", "top-1", "gen. agr.", "decode tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = "source" if r["recipe"] is None else f"{r['recipe']} {'auto:' + str(keep) if r['mode'] == 'hybrid' else 'pure'}"
        tokens = "" if r["recipe"] is None else f"{r['tokens'][0] / 1000:.0f}k + {r['tokens'][1] / 1000:.0f}k"
        wall = "" if r["recipe"] is None else f"{r['wall_s'] / 60:.1f} min"
        ratios = [fmt(b.get("ratio")) if r["recipe"] else "1" for b in r["buckets"]]
        passkey = [fmt(r["passkey"][str(l)]["model_accuracy"], 1) for l in lengths[-2:]]
        lines.append("| " + " | ".join([name, tokens, wall] + ratios + passkey +
                                       [fmt(r.get("kl")), fmt(r.get("top1")), fmt(r.get("generation_agreement")),
                                        fmt(r["decode_tokens_per_s"], 1)]) + " |")
    return lines


def target(rows, lengths):
    """The issue's bar for the best hybrid: ratio <= 1.10 in every bucket up to 2K, passkey at 2K >= 0.9 x the
    source's. Returns one line per hybrid row."""
    source = next(r for r in rows if r["recipe"] is None)
    at = str(2048 if 2048 in lengths else lengths[-1])
    out = []
    for r in rows:
        if r["recipe"] is None or r["mode"] != "hybrid":
            continue
        worst = max(b["ratio"] for b in r["buckets"] if b["begin"] < 2048)
        pk, src = r["passkey"][at]["model_accuracy"], source["passkey"][at]["model_accuracy"]
        ok = worst <= 1.10 and pk >= 0.9 * src
        out.append(f"{r['recipe']}: worst ratio to 2K {worst:.3f} (target <= 1.10), passkey at {at} {pk:.1f} vs source {src:.1f} "
                   f"(target >= {0.9 * src:.2f}): {'PASS' if ok else 'FAIL'}")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--linearize", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--eval", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--recipes", default="all")
    p.add_argument("--modes", default="hybrid,pure")
    p.add_argument("--keep", type=int, default=None, help="softmax layers of a hybrid (default: half the layers)")
    p.add_argument("--stage1-steps", type=int, default=20)
    p.add_argument("--stage2-steps", type=int, default=10)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--lengths", default="512,1024,2048")
    p.add_argument("--decode-context", type=int, default=4096)
    p.add_argument("--force", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a distill --set for every recipe row, after the bench's own (a lever to measure)")
    args = p.parse_args()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    if args.device == "cuda":
        args.stage1_steps *= CUDA_SCALE
        args.stage2_steps *= CUDA_SCALE
    with open(os.path.join(args.model, "config.json")) as f:
        model_config = json.load(f)
    if args.keep is None:
        args.keep = model_config["num_hidden_layers"] // 2
    registry = linearize_json(args, "recipes", "--json")
    recipes = [r["name"] for r in registry] if args.recipes == "all" else args.recipes.split(",")
    declared = {r["name"]: {q["name"] for q in r["params"]} for r in registry}
    template = effective_config(args, [])  # the run file with its bases, every key present
    os.makedirs(args.work, exist_ok=True)

    rows = [run_row(args, "source", None, None, set(), template, model_config["vocab_size"])]
    for mode in args.modes.split(","):
        for recipe in recipes:
            rows.append(run_row(args, f"{recipe}-{mode}", recipe, mode, declared[recipe], template, model_config["vocab_size"]))
            print("\n".join(table(rows, args.lengths, args.keep)[-1:]), flush=True)
    # The bench's budget, not the last row's (a recipe without stage 1 moves its share into stage 2).
    budget = [stage_tokens(effective_config(args, [f"stage1.steps={args.stage1_steps}", f"stage2.steps={args.stage2_steps}"]), s)
              for s in ("stage1", "stage2")]
    with open(args.out, "w") as f:
        json.dump({"model": args.model, "budget_tokens": budget, "device": args.device, "dtype": args.dtype, "rows": rows}, f, indent=1)
    print(f"\nquality on {os.path.basename(os.path.normpath(args.model))}: {budget[0]} + {budget[1]} tokens per row, "
          f"{args.device} {args.dtype}; ratio = model / source perplexity by position")
    print("\n".join(table(rows, args.lengths, args.keep)))
    print("\n".join(target(rows, args.lengths)))


if __name__ == "__main__":
    sys.exit(main())
