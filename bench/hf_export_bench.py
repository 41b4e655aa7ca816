#!/usr/bin/env python3
"""An export in transformers vs in linearize (scripts/bench.sh section `hf_export`), fp32 on the CPU:

  decode   tokens/s of model.generate (the export's modeling_linearize.py, LinearizeCache) and of
           `linearize generate`, same prompt, same threads, each in a fresh process;
  memory   peak RSS and cache bytes of transformers decoding 256 vs 4096 tokens (the converted layers' state
           must not grow; only layers kept as softmax attention and the window grow);
  bf16     KL(fp32 || bf16) and top-1 agreement of the export loaded with dtype=torch.bfloat16, on real text.

    hf_export_bench.py --linearize BIN --source DIR --recipe R --work DIR [--tokens 256,4096] [--bf16-source DIR] --out F.json
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

PROMPT_TOKENS = 32


def convert(binary, source, recipe, out):
    if not os.path.exists(os.path.join(out, "config.json")):
        subprocess.run([binary, "--log-level", "warn", "convert", "--model", source, "--recipe", recipe, "--out", out, "--force"],
                       check=True, stdout=subprocess.DEVNULL)
    return out


def prompt_ids(model_dir, count):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
    import check_hf_export
    return check_hf_export.text_tokens(model_dir, count)


def decode_in_transformers(model_dir, tokens, prompt):
    """Runs in a fresh process (`--child`): decode tokens/s, peak RSS and cache bytes after `tokens` tokens."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()
    cache_class = sys.modules[type(model).__module__].LinearizeCache
    ids = torch.tensor([prompt])

    def run(n):
        cache = cache_class(model.config)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, past_key_values=cache, pad_token_id=0)
        return time.perf_counter() - start, cache

    first, _ = run(1)  # prefill + one token
    total, cache = run(tokens)
    kv = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers
             if getattr(layer, "keys", None) is not None and layer.keys.numel())
    return {"tokens": tokens, "decode_tokens_per_s": (tokens - 1) / (total - first),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "state_bytes": cache.mixer_bytes(), "kv_bytes": kv}


def decode_in_linearize(binary, model_dir, tokens, prompt):
    """`linearize generate`'s decode tokens/s (from its log) and its own peak RSS (wait4 on that child alone)."""
    args = [binary, "generate", "--model", model_dir, "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens",
            str(tokens), "--no-stop-at-eos"]
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        log = err.read()
    if child.returncode != 0:
        sys.exit(f"{' '.join(args)} exited {child.returncode}:\n{log}")
    rate = float(re.search(r"decode \d+ tokens in [\d.]+ s \(([\d.]+) tokens/s\)", log).group(1))
    return {"tokens": tokens, "decode_tokens_per_s": rate, "peak_rss": usage.ru_maxrss * 1024}


def bf16_agreement(model_dir, tokens=512):
    """KL(fp32 || bf16) per position (mean and max) and top-1 agreement on `tokens` tokens of real text."""
    import torch
    from transformers import AutoModelForCausalLM
    ids = torch.tensor([prompt_ids(model_dir, tokens)])
    logp = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype).eval()
        with torch.no_grad():
            logp[dtype] = model(ids).logits[0].double().log_softmax(-1)
    p32, p16 = logp[torch.float32], logp[torch.bfloat16]
    kl = (p32.exp() * (p32 - p16)).sum(-1)
    return {"tokens": tokens, "kl_mean": kl.mean().item(), "kl_max": kl.max().item(),
            "top1_agreement": (p32.argmax(-1) == p16.argmax(-1)).double().mean().item()}


def child(model_dir, tokens, prompt):
    print(json.dumps(decode_in_transformers(model_dir, tokens, [int(t) for t in prompt.split(",")])))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--linearize", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--recipe", default="lolcats")
    parser.add_argument("--work", required=True)
    parser.add_argument("--tokens", default="256,4096")
    parser.add_argument("--bf16-source", help="a trained checkpoint for the bf16 agreement (default: --source)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    export = convert(args.linearize, args.source, args.recipe, os.path.join(args.work, f"{os.path.basename(args.source)}-{args.recipe}"))
    prompt = prompt_ids(args.source, PROMPT_TOKENS)
    result = {"source": args.source, "recipe": args.recipe, "threads": os.environ.get("OMP_NUM_THREADS"), "decode": []}
    for tokens in map(int, args.tokens.split(",")):
        hf = json.loads(subprocess.run([sys.executable, __file__, "--child", export, str(tokens), ",".join(map(str, prompt))],
                                       capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        ours = decode_in_linearize(args.linearize, export, tokens, prompt)
        result["decode"].append({"transformers": hf, "linearize": ours})
        print(f"{tokens} tokens: transformers {hf['decode_tokens_per_s']:.1f} tokens/s (peak RSS {hf['peak_rss'] / 2**20:.0f} MiB, "
              f"state {hf['state_bytes'] / 2**20:.2f} MiB, KV {hf['kv_bytes'] / 2**20:.2f} MiB); linearize generate "
              f"{ours['decode_tokens_per_s']:.1f} tokens/s (peak RSS {ours['peak_rss'] / 2**20:.0f} MiB); ratio {hf['decode_tokens_per_s'] / ours['decode_tokens_per_s']:.2f}", flush=True)
    bf16_dir = convert(args.linearize, args.bf16_source, args.recipe,
                       os.path.join(args.work, f"{os.path.basename(args.bf16_source)}-{args.recipe}")) if args.bf16_source else export
    result["bf16"] = bf16_agreement(bf16_dir)
    result["bf16"]["model"] = bf16_dir
    b = result["bf16"]
    print(f"bf16 vs fp32 ({bf16_dir}, {b['tokens']} tokens): KL mean {b['kl_mean']:.3g}, max {b['kl_max']:.3g}, top-1 {b['top1_agreement']:.3f}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:  # one transformers decode in a fresh process: python hf_export_bench.py --child DIR TOKENS IDS
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
