#!/usr/bin/env bash
# Benchmarks: builds the bench targets, runs each section, keeps their JSON under $BENCH_OUT (default
# $BUILD_DIR/bench-results) and prints a summary. Speed is never asserted in tests; here each figure is a
# ratio measured in the same run, printed next to its target.
#
#   scripts/bench.sh               # every section of SECTIONS (NAMED_ONLY ones run only when named)
#   scripts/bench.sh kernels       # only the named sections (see SECTIONS)
#
# env: BUILD_DIR (default build), BENCH_OUT, LINEARIZE_BENCH_DIR (where synthetic inputs are written and
# reused, default $BUILD_DIR/bench), LINEARIZE_BENCH_MB (size of the synthetic safetensors file, 2048).
#
# A new section: a function section_<name> that runs its targets, writes into $BENCH_OUT and appends
# lines to SUMMARY; add its targets to BENCH_TARGETS and its name to SECTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
BENCH_OUT=${BENCH_OUT:-$BUILD_DIR/bench-results}
export LINEARIZE_BENCH_DIR=${LINEARIZE_BENCH_DIR:-$BUILD_DIR/bench}

SECTIONS=(safetensors tokenizer decoder kernels context_decode distill distill_ranks distill_memory verify hf_export onnx_export native convert)
NAMED_ONLY=(quality)  # sections run only when named: hours of CPU
BENCH_TARGETS=(safetensors_bench safetensors_rss tokenizer_bench decoder_bench kernels_bench context_decode_bench distill_bench convert_rss linearize)

scripts/setup.sh
BUILD_DIR=$BUILD_DIR scripts/build.sh --target "${BENCH_TARGETS[@]}"
mkdir -p "$BENCH_OUT" "$LINEARIZE_BENCH_DIR"
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3

SUMMARY=()

# Opening a ~2 GiB safetensors file (map + validate + a view of every tensor and a read of its first
# element) against mapping it and parsing its header; peak RSS of reading all of it into tensors.
section_safetensors() {
  local json=$BENCH_OUT/safetensors_bench.json rss=$BENCH_OUT/safetensors_rss.json
  echo "== safetensors: open/validate/touch vs map+header (Google Benchmark)"
  "$BUILD_DIR/bench/safetensors_bench" --benchmark_out="$json" --benchmark_out_format=json
  echo "== safetensors: peak RSS reading every tensor (fresh process)"
  "$BUILD_DIR/bench/safetensors_rss" | tee "$rss"
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <("$PY" - "$json" "$rss" <<'PYEOF'
import json, sys
bench, rss = (json.load(open(p)) for p in sys.argv[1:3])
ctx, runs = bench["context"], {b["name"].split("/")[0]: b for b in bench["benchmarks"]}
r = runs["BM_TouchVsHeaderRatio"]
gib = 1 << 30
print(f"safetensors file: {int(ctx['file_bytes']) / gib:.2f} GiB, {ctx['tensors']} tensors, "
      f"page cache resident {float(ctx['page_cache_resident']) * 100:.0f}% (both sides read cached pages)")
print(f"  map + read header:               {runs['BM_MapAndReadHeader']['real_time']:9.1f} us")
print(f"  open + validate + touch all:     {runs['BM_OpenValidateTouchEveryTensor']['real_time']:9.1f} us")
print(f"    breakdown: open+validate {runs['BM_OpenValidate']['real_time']:.1f} us, + a view of every tensor "
      f"{runs['BM_OpenValidateViews']['real_time']:.1f} us, + reading each first element (page faults) "
      f"{runs['BM_OpenValidateTouchEveryTensor']['real_time']:.1f} us")
print(f"  ratio (interleaved medians {r['touch_us']:.1f} / {r['header_us']:.1f} us): "
      f"{r['ratio']:.2f}x   target <= 2x: {'PASS' if r['ratio'] <= 2 else 'FAIL'}")
print(f"  sha256 of the mapped file (OpenSSL EVP): {runs['BM_Sha256MappedFile']['bytes_per_second'] / 1e9:.2f} GB/s "
      f"({runs['BM_Sha256MappedFile']['real_time']:.0f} ms for the file)")
print(f"  peak RSS reading all tensors:    {rss['peak_rss'] / gib:.2f} GiB = {rss['ratio']:.3f}x file   "
      f"target <= 1.1x: {'PASS' if rss['ratio'] <= 1.1 else 'FAIL'}")
print(f"    of which before opening (LibTorch loaded): {rss['rss_before_open'] / gib:.2f} GiB; "
      f"added by reading: {rss['added_by_reading'] / gib:.2f} GiB = {rss['added_ratio']:.3f}x file")
PYEOF
)
}

# The reference forward against transformers (eager, fp32, same threads, same checkpoint, same prompt):
# prefill tokens/s at T=512 batch 1 and decode tokens/s for 64 new tokens, on a ~100M-parameter random
# Llama made here once (not committed). With a GPU (LINEARIZE_BENCH_CUDA=1): bf16 on a ~1.1B shape too.
section_decoder() {
  local threads=${LINEARIZE_BENCH_THREADS:-$(nproc)}
  decoder_run cpu fp32 100m "$threads"
  decoder_run cpu bf16 100m "$threads"
  # Decode is memory-bound: bf16 weights (half the bytes) against our own fp32 path, same run.
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <("$PY" - "$BENCH_OUT/decoder_bench_cpu_fp32.json" "$BENCH_OUT/decoder_bench_cpu_bf16.json" <<'PYEOF'
import json, sys
fp32, bf16 = ({b["name"].split("/")[0]: b["tokens_per_s"] for b in json.load(open(p))["benchmarks"]} for p in sys.argv[1:3])
ratio = bf16["BM_Decode"] / fp32["BM_Decode"]
print(f"decoder bf16 vs fp32 (ours, cpu): decode {bf16['BM_Decode']:.1f} vs {fp32['BM_Decode']:.1f} tokens/s, ratio {ratio:.2f}x   "
      f"target >= 1.6x: {'PASS' if ratio >= 1.6 else 'FAIL'}")
PYEOF
)
  if [ "${LINEARIZE_BENCH_CUDA:-0}" = 1 ]; then decoder_run cuda bf16 1b "$threads"; fi
}

decoder_run() {
  local device=$1 dtype=$2 size=$3 threads=$4
  local model=$LINEARIZE_BENCH_DIR/llama-$size ours=$BENCH_OUT/decoder_bench_${device}_$dtype.json theirs=$BENCH_OUT/decoder_transformers_${device}_$dtype.json
  echo "== decoder: linearize vs transformers eager, $dtype $device, llama-$size, $threads threads"
  "$PY" bench/decoder_transformers.py make --out "$model" --size "$size"
  LINEARIZE_BENCH_MODEL=$model LINEARIZE_BENCH_DEVICE=$device LINEARIZE_BENCH_DTYPE=$dtype LINEARIZE_BENCH_THREADS=$threads \
    "$BUILD_DIR/bench/decoder_bench" --benchmark_out="$ours" --benchmark_out_format=json
  "$PY" bench/decoder_transformers.py run --model "$model" --threads "$threads" --device "$device" --dtype "$dtype" --out "$theirs"
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <("$PY" - "$ours" "$theirs" "$device" "$dtype" <<'PYEOF'
import json, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
device, dtype = sys.argv[3:5]
rate = {b["name"].split("/")[0]: b["tokens_per_s"] for b in ours["benchmarks"]}
# The 2x decode target is bf16's (issue 20: memory-bound decode with half the bytes); fp32 decode is reported.
targets = {"prefill": 1.0, "decode": 2.0 if dtype == "bf16" else None}
print(f"decoder {dtype} {device} ({ours['context']['model']}, {ours['context']['threads']} threads, "
      f"prompt {ours['context']['prompt_tokens']}, {ours['context']['new_tokens']} new tokens):")
for key, bm in (("prefill", "BM_Prefill"), ("decode", "BM_Decode")):
    ratio = rate[bm] / theirs[f"{key}_tokens_per_s"]
    target = targets[key]
    verdict = "(reported)" if device != "cpu" or target is None else f"target >= {target}x: {'PASS' if ratio >= target else 'FAIL'}"
    print(f"  {key:8s} linearize {rate[bm]:9.1f} tokens/s   transformers {theirs[f'{key}_tokens_per_s']:9.1f} tokens/s   "
          f"ratio {ratio:.2f}x   {verdict}")
PYEOF
)
}

# Encoding the bundled corpus (every paragraph, no special tokens), one thread, per tokenizer family: ours
# (Google Benchmark) against Hugging Face `tokenizers` (Rust, via Python encode_batch, RAYON_NUM_THREADS=1)
# on the same paragraphs in the same run. Both sides warm their per-word caches on a first pass; the
# reference's figure is its best of 10 passes, ours Google Benchmark's mean over >= 1 s.
section_tokenizer() {
  local json=$BENCH_OUT/tokenizer_bench.json
  echo "== tokenizer: encode corpus paragraphs, one thread (Google Benchmark, then tokenizers)"
  "$BUILD_DIR/bench/tokenizer_bench" --benchmark_out="$json" --benchmark_out_format=json
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "$PY" - "$json" <<'PYEOF'
import json, sys, time
import tokenizers
from tokenizers import Tokenizer
bench = json.load(open(sys.argv[1]))
ours = {b["name"].split("/")[1]: b for b in bench["benchmarks"]}
files = {"fixture": "tiny-llama/tokenizer.json",
         "byte_level_split": "tokenizers/byte-level-split/tokenizer.json",
         "sentencepiece_bpe": "tokenizers/sentencepiece-bpe/tokenizer.json"}
text = open("tests/fixtures/corpus/corpus.txt", encoding="utf-8").read()
paragraphs = [p for p in text.split("\n") if p]
corpus_bytes = sum(len(p.encode()) for p in paragraphs)
print(f"tokenizer encode, corpus {corpus_bytes / 1e3:.0f} KB in {len(paragraphs)} paragraphs, one thread, "
      f"vs tokenizers {tokenizers.__version__} (target >= 0.5x):")
for name, path in files.items():
    tok = Tokenizer.from_file("tests/fixtures/" + path)
    tok.encode_batch(paragraphs, add_special_tokens=False)  # warm its cache, as our first iteration does
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        tok.encode_batch(paragraphs, add_special_tokens=False)
        best = min(best, time.perf_counter() - start)
    reference = corpus_bytes / best / 1e6
    mine = ours[name]["bytes_per_second"] / 1e6
    ratio = mine / reference
    print(f"  {name:18s} ours {mine:7.1f} MB/s   tokenizers {reference:6.1f} MB/s   "
          f"ratio {ratio:5.2f}x   {'PASS' if ratio >= 0.5 else 'FAIL'}")
PYEOF
)
}

# Linear-attention kernels, fp32 prefill forward on the CPU (docs/kernels.md#benchmarks): chunked GLA against
# recurrent GLA and causal SDPA, decode-step flatness, and chunked GLA's share of the in-process GEMM roofline.
# KERNELS_BENCH_THREADS (default 1): the benchmark and its roofline run with this many threads; on a
# shared 2-core machine OpenMP barriers with 2 threads stall whenever another process takes a core.
section_kernels() {
  local json=$BENCH_OUT/kernels_bench.json
  echo "== kernels: GLA chunked / recurrent vs SDPA(is_causal), gated delta rule, decode step (Google Benchmark)"
  OMP_NUM_THREADS=${KERNELS_BENCH_THREADS:-1} "$BUILD_DIR/bench/kernels_bench" \
    --benchmark_out="$json" --benchmark_out_format=json
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <("$PY" - "$json" <<'PYEOF'
import json, sys
bench = json.load(open(sys.argv[1]))
ctx = bench["context"]
gemm = float(ctx["gemm_2048_gflops"])
runs = {}
for b in bench["benchmarks"]:
    if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "min":
        continue  # prefill points: the fastest of their repetitions
    parts = dict(p.split(":") for p in b["name"].split("/")[1:] if ":" in p and not p.startswith(("min_time", "repeats")))
    runs[(b["name"].split("/")[0],) + tuple(int(parts[k]) for k in ("H", "d", "T") if k in parts) +
         tuple(int(parts[k]) for k in ("context",) if k in parts)] = b
ms = lambda kind, H, d, T: runs[(kind, H, d, T)]["real_time"] if (kind, H, d, T) in runs else None
gflops = lambda H, d, T: runs[("BM_GlaChunked", H, d, T)]["flops_per_call"] / (ms("BM_GlaChunked", H, d, T) * 1e-3) / 1e9
ok = lambda c: "PASS" if c else "FAIL"
print(f"kernels: {ctx['cpu_model']}, {ctx['torch_threads']} thread(s), LibTorch {ctx['libtorch']}; roofline: "
      f"mm 2048^3 {gemm:.0f} GFLOP/s, mm 64x128x128 {float(ctx['gemm_64x128x128_gflops']):.0f} "
      f"(batched x512 {float(ctx['gemm_64x128x128_batched512_gflops']):.0f}), copy {float(ctx['stream_copy_gbs']):.1f} GB/s")
print(f"  {'H':>3} {'d':>4} {'T':>6} | {'chunked ms':>10} {'us/tok':>7} {'GFLOP/s':>7} | {'recurrent ms':>12} | {'SDPA ms':>9} | {'SDPA/chunk':>10}")
for H in (8, 32):
    for d in (64, 128):
        for T in (256, 1024, 2048, 4096, 16384, 32768):
            c, r, s = ms("BM_GlaChunked", H, d, T), ms("BM_GlaRecurrent", H, d, T), ms("BM_SdpaCausal", H, d, T)
            if c is None:
                continue
            g = gflops(H, d, T)
            fmt = lambda x: f"{x:.1f}" if x is not None else "-"
            print(f"  {H:>3} {d:>4} {T:>6} | {c:>10.1f} {c * 1e3 / T:>7.2f} {g:>7.1f} | {fmt(r):>12} | {fmt(s):>9} | "
                  f"{(f'{s / c:.2f}x' if s else '-'):>10}")
for H in (8, 32):
    c, r = ms("BM_GlaChunked", H, 128, 4096), ms("BM_GlaRecurrent", H, 128, 4096)
    print(f"  chunked / recurrent GLA speed, T=4K d=128 H={H}: {r / c:.2f}x   target >= 3x: {ok(r / c >= 3)}")
sd = [(T, ms("BM_SdpaCausal", 8, 128, T) / ms("BM_GlaChunked", 8, 128, T)) for T in (256, 1024, 2048, 4096, 16384, 32768)
      if ms("BM_SdpaCausal", 8, 128, T)]
cross = next((T for T, x in sd if x >= 1), None)
print(f"  chunked GLA vs SDPA(is_causal), H=8 d=128: crossover at T={cross} (SDPA/chunked " +
      ", ".join(f"{T}: {x:.2f}" for T, x in sd) + f")   target T <= 2K: {ok(cross is not None and cross <= 2048)}")
print(f"  chunked GLA vs SDPA at T=32K (H=8 d=128): {sd[-1][1]:.2f}x faster   target >= 5x: {ok(sd[-1][1] >= 5)}")
for H in (8, 32):
    for d in (64, 128):
        f = (ms("BM_GlaChunked", H, d, 32768) / 32768) / (ms("BM_GlaChunked", H, d, 1024) / 1024)
        print(f"  chunked per-token time 32K / 1K, H={H} d={d}: {f:.2f}   target <= 1.3: {ok(f <= 1.3)}")
for H in (8, 32):
    best = max(gflops(H, 128, T) for T in (1024, 2048, 4096, 16384, 32768))
    print(f"  chunked GLA d=128 H={H}: best {best:.1f} GFLOP/s = {best / gemm * 100:.1f}% of mm 2048^3   target >= 30%: {ok(best / gemm >= 0.3)}")
for H in (8, 32):
    for d in (64, 128):
        c, r = ms("BM_DeltaRuleChunked", H, d, 4096), ms("BM_DeltaRuleRecurrent", H, d, 4096)
        if c and r:
            flat = (c / 4096) / (ms("BM_DeltaRuleChunked", H, d, 1024) / 1024)
            print(f"  gated delta rule H={H} d={d} T=4K: chunked {c:.1f} ms, recurrent {r:.1f} ms ({r / c:.2f}x); "
                  f"chunked per-token time 4K / 1K {flat:.2f}")
        s, g = ms("BM_SsdChunked", H, d, 4096), ms("BM_GlaChunked", H, d, 4096)
        if s and g:
            print(f"  Mamba-2 SSD (per-head decay) H={H} d={d} T=4K: chunked {s:.1f} ms vs per-channel GLA {g:.1f} ms ({g / s:.2f}x)")
steps = {k[1]: v for k, v in runs.items() if k[0] == "BM_GlaDecodeStep"}
times = [steps[c]["real_time"] for c in sorted(steps)]
print("  recurrent decode step, H=32 d=128: " + ", ".join(f"ctx {c}: {steps[c]['real_time']:.1f} us" for c in sorted(steps)) +
      f"; max/min {max(times) / min(times):.2f}   target flat (<= 1.1): {ok(max(times) / min(times) <= 1.1)}")
base = next(v for k, v in runs.items() if k[0] == "BM_FusedDecodeBaseline")["real_time"]
print(f"  fused per-head decode loop (ggml's GATED_LINEAR_ATTN, raw arrays, same threads): {base:.1f} us = "
      f"{base / 32:.2f} us per token-head; our step at ctx 1024 {steps[1024]['real_time'] / base:.2f}x of it   "
      f"target <= 1.5x: {ok(steps[1024]['real_time'] / base <= 1.5)}")
proj = {int(b["name"].split("kind:")[1].split("/")[0]): b["weight_bytes_per_s"] / 1e9 for b in bench["benchmarks"]
        if b["name"].startswith("BM_DecodeProjection")}
print(f"  decode projection, one row x 120 [2048, 768] matrices: bf16 matrix-vector loop {proj[0]:.1f} GB/s, "
      f"fp32 at::linear (MKL) {proj[1]:.1f} GB/s, bf16 at::linear (oneDNN) {proj[2]:.1f} GB/s; "
      f"bf16 decode's bound vs fp32: {2 * proj[0] / proj[1]:.2f}x (half the bytes)")
sb = {(v["state_bytes"], v["state_bytes_formula"]) for v in steps.values()}
print(f"  decode state bytes {', '.join(f'{a:.0f} (formula B*H*K*V*4 = {b:.0f})' for a, b in sb)}   target equal: {ok(all(a == b for a, b in sb))}")
PYEOF
)
}

# Decode at long contexts, source vs its liger-gla conversion (random ~25M Llama, fp32 CPU): tokens/s at
# context 256 / 4K / 16K, and the memory decoding 256 vs 4096 tokens adds (state bytes and resident set).
section_context_decode() {
  local src=$LINEARIZE_BENCH_DIR/llama-25m conv=$LINEARIZE_BENCH_DIR/llama-25m-liger-gla json=$BENCH_OUT/context_decode_bench.json
  echo "== context decode: source vs liger-gla conversion, 256 / 4K / 16K context"
  "$PY" bench/decoder_transformers.py make --out "$src" --size 25m
  [ -f "$conv/config.json" ] || "$BUILD_DIR/cli/linearize" --log-level warn convert --model "$src" --recipe liger-gla --out "$conv" --force >/dev/null
  LINEARIZE_BENCH_SOURCE=$src LINEARIZE_BENCH_CONVERTED=$conv "$BUILD_DIR/bench/context_decode_bench" \
    --benchmark_out="$json" --benchmark_out_format=json
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <("$PY" - "$json" <<'PYEOF'
import json, sys
bench = json.load(open(sys.argv[1]))
rate, mem = {}, {}
for b in bench["benchmarks"]:
    parts = b["name"].split("/")
    if parts[0] == "BM_DecodeAtContext":
        rate[int(parts[1].split(":")[1])] = b
    if parts[0] == "BM_DecodeMemory":
        mem[(parts[1], int(parts[2].split(":")[1]))] = b
print(f"context decode ({bench['context']['recipe']} conversion of {bench['context']['source']}):")
for ctx in (256, 4096, 16384):
    r = rate[ctx]
    print(f"  context {ctx:>5}: source {r['source_tokens_per_s']:8.1f} tokens/s (KV {r['source_state_bytes'] / 2**20:7.2f} MiB)   "
          f"converted {r['converted_tokens_per_s']:8.1f} tokens/s (state {r['converted_state_bytes'] / 2**20:5.2f} MiB)   "
          f"ratio {r['ratio']:.2f}x (5 alternating rounds, lowest {r['ratio_min']:.2f}x)   target >= 1.0x: {'PASS' if r['ratio'] >= 1.0 else 'FAIL'}")
for name in ("source", "converted"):
    a, b = mem[(name, 256)], mem[(name, 4096)]
    print(f"  decoding 256 vs 4096 tokens, {name:9s}: state {a['state_bytes'] / 2**20:.2f} -> {b['state_bytes'] / 2**20:.2f} MiB, "
          f"resident growth {a['rss_growth_bytes'] / 2**20:.1f} -> {b['rss_growth_bytes'] / 2**20:.1f} MiB")
ok = mem[("converted", 4096)]["state_bytes"] == mem[("converted", 256)]["state_bytes"]
print(f"  converted state constant in decoded length: {'PASS' if ok else 'FAIL'}")
PYEOF
)
}

# What convert and verify cost at a real depth (bench/verify_cost.py): wall time and peak RSS of `convert`
# (records and verifies on the built-in prompts) and of `verify --text` over 4096 tokens, fresh processes,
# on a random SmolLM-135M-shaped Llama (30 layers, made here once, not committed) and on the deep fixture;
# LINEARIZE_BENCH_VERIFY_1B=1 adds a random TinyLlama-1.1B-shaped bf16 checkpoint.
section_verify() {
  local models=("$LINEARIZE_BENCH_DIR/llama-135m")
  echo "== verify: convert and verify --text 4096 tokens (resident and streamed layers), wall time and peak RSS"
  "$PY" bench/decoder_transformers.py make --out "$LINEARIZE_BENCH_DIR/llama-135m" --size 135m --tokenizer tests/fixtures/tiny-llama
  [ -d tests/fixtures/deep-llama ] && models+=(tests/fixtures/deep-llama)
  if [ "${LINEARIZE_BENCH_VERIFY_1B:-0}" = 1 ]; then
    "$PY" bench/decoder_transformers.py make --out "$LINEARIZE_BENCH_DIR/llama-1b-bf16" --size 1b --dtype bf16 --tokenizer tests/fixtures/tiny-llama
    models+=("$LINEARIZE_BENCH_DIR/llama-1b-bf16")
  fi
  local jsons=()
  for model in "${models[@]}"; do
    local json=$BENCH_OUT/verify_cost_$(basename "$model").json
    "$PY" bench/verify_cost.py --linearize "$BUILD_DIR/cli/linearize" --source "$model" --recipe lolcats \
      --work "$LINEARIZE_BENCH_DIR/verify" --text-tokens 4096 --out "$json"
    jsons+=("$json")
  done
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <("$PY" - "${jsons[@]}" <<'PYEOF'
import json, sys
print("verify cost (lolcats conversions, fresh processes):")
for path in sys.argv[1:]:
    r = json.load(open(path))
    gib = 1 << 30
    print(f"  {r['source']}: convert (+ verify, built-in prompts) {r['convert_s']:.1f} s, peak RSS {r['convert_peak_rss'] / gib:.2f} GiB"
          f" [{'PASS' if r['convert_passed'] else 'FAIL'}]; verify --text {r['text_tokens']} tokens {r['verify_text_s']:.1f} s, "
          f"peak RSS {r['verify_text_peak_rss'] / gib:.2f} GiB [{'PASS' if r['verify_text_passed'] else 'FAIL'}]"
          + ("   target <= 60 s: " + ("PASS" if r['verify_text_s'] <= 60 else "FAIL") if "135m" in r["source"] else ""))
    print(f"    streamed layers: {r['streamed_s']:.1f} s ({r['streamed_s'] / r['verify_text_s']:.2f}x resident), peak RSS "
          f"{r['streamed_peak_rss'] / gib:.2f} GiB ({r['streamed_peak_rss'] / r['verify_text_peak_rss']:.2f}x resident), "
          f"same report: {'PASS' if r['streamed_same_report'] else 'FAIL'}")
PYEOF
)
}

# An export in transformers (its modeling_linearize.py) vs in linearize (bench/hf_export_bench.py): decode
# tokens/s of model.generate and `linearize generate` on the same prompt, fresh processes, peak RSS and cache
# bytes at 256 vs 4096 generated tokens, on the random SmolLM-135M-shaped model; bf16 vs fp32 agreement on
# the deep fixture (trained, with outlier channels).
section_hf_export() {
  echo "== hf_export: transformers decode vs linearize generate, memory at 256 / 4096 tokens, bf16 agreement"
  "$PY" bench/decoder_transformers.py make --out "$LINEARIZE_BENCH_DIR/llama-135m" --size 135m --tokenizer tests/fixtures/tiny-llama
  local json=$BENCH_OUT/hf_export.json
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} "$PY" bench/hf_export_bench.py --linearize "$BUILD_DIR/cli/linearize" \
    --source "$LINEARIZE_BENCH_DIR/llama-135m" --recipe lolcats --work "$LINEARIZE_BENCH_DIR/hf_export" --tokens 256,4096 \
    --bf16-source tests/fixtures/deep-llama --out "$json" | tee "$BENCH_OUT/hf_export.txt"
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <(echo "hf_export (lolcats, 135M shape):"; sed 's/^/  /' "$BENCH_OUT/hf_export.txt")
}

# An export's ONNX graph in onnxruntime vs `linearize generate` (bench/onnx_export_bench.py): export time, graph
# size and external-data layout, and greedy decode tokens/s on the same prompt, fresh processes, same threads,
# with the LinearAttention operator where the recipe has one; on the random SmolLM-135M-shaped model.
section_onnx_export() {
  echo "== onnx_export: export-onnx, graph size and layout, onnxruntime decode vs linearize generate"
  "$PY" bench/decoder_transformers.py make --out "$LINEARIZE_BENCH_DIR/llama-135m" --size 135m --tokenizer tests/fixtures/tiny-llama
  local json=$BENCH_OUT/onnx_export.json
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} "$PY" bench/onnx_export_bench.py --linearize "$BUILD_DIR/cli/linearize" \
    --source "$LINEARIZE_BENCH_DIR/llama-135m" --recipes lolcats,gated-deltanet --work "$LINEARIZE_BENCH_DIR/onnx_export" \
    --tokens 256 --out "$json" | tee "$BENCH_OUT/onnx_export.txt"
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <(echo "onnx_export (135M shape):"; sed 's/^/  /' "$BENCH_OUT/onnx_export.txt")
}

# A conversion in the runtimes people serve with, against its source in the same runtime (bench/native_bench.py):
# decode tokens/s after 256 / 4K / 16K tokens of context and peak RSS, fresh processes, all threads, in llama.cpp
# (bf16 and Q8_0 GGUFs), vLLM and `linearize generate`; layers 10 and 20 kept, mamba2 as granitehybrid (of the random
# SmolLM2-135M-shaped Llama, vLLM fp32) and gated-deltanet as qwen3_5 (of a Qwen3 of that shape, vLLM bf16).
# LINEARIZE_BENCH_NATIVE_LENGTHS overrides the lengths.
section_native() {
  echo "== native: decode tokens/s and memory of granitehybrid and qwen3_5 conversions vs their sources in llama.cpp, vLLM, linearize"
  "$PY" bench/decoder_transformers.py make --out "$LINEARIZE_BENCH_DIR/llama-135m" --size 135m --tokenizer tests/fixtures/tiny-llama
  local json=$BENCH_OUT/native.json
  "$PY" bench/native_bench.py --linearize "$BUILD_DIR/cli/linearize" --source "$LINEARIZE_BENCH_DIR/llama-135m" \
    --work "$LINEARIZE_BENCH_DIR/native" --lengths "${LINEARIZE_BENCH_NATIVE_LENGTHS:-256,4096,16384}" --out "$json" \
    | tee "$BENCH_OUT/native.txt"
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <(echo "native (conversions vs sources, 135M shape):"; sed 's/^/  /' "$BENCH_OUT/native.txt")
}

# Training steps of both LoLCATs stages against the same steps in plain PyTorch (bench/distill_pytorch.py:
# transformers' Llama, the hybrid attention in its quadratic masked form, peft LoRA, torch.optim.AdamW) on the
# random ~25M Llama and its lolcats conversion (window 64), fp32 CPU, batch 1 x 512 tokens, same threads.
# The initial losses of both sides on the same ids come first: agreement is what makes the ratio a
# comparison of the same computation. The sides run one after the other, so the load average around them
# is printed: a shared machine's load moves the ratio.
section_distill() {
  local threads=${LINEARIZE_BENCH_THREADS:-$(nproc)}
  local src=$LINEARIZE_BENCH_DIR/llama-25m conv=$LINEARIZE_BENCH_DIR/llama-25m-lolcats
  local ours=$BENCH_OUT/distill_bench.json theirs=$BENCH_OUT/distill_pytorch.json load_before load_after
  echo "== distill: stage 1 / stage 2 training steps, linearize vs plain PyTorch, llama-25m lolcats, $threads threads"
  "$PY" bench/decoder_transformers.py make --out "$src" --size 25m
  [ -f "$conv/config.json" ] || "$BUILD_DIR/cli/linearize" --log-level warn convert --model "$src" --recipe lolcats --out "$conv" --force >/dev/null
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  LINEARIZE_BENCH_SOURCE=$src LINEARIZE_BENCH_CONVERTED=$conv LINEARIZE_BENCH_THREADS=$threads \
    "$BUILD_DIR/bench/distill_bench" --benchmark_out="$ours" --benchmark_out_format=json
  "$PY" bench/distill_pytorch.py --source "$src" --converted "$conv" --threads "$threads" --out "$theirs"
  load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <("$PY" - "$ours" "$theirs" "$load_before" "$load_after" <<'PYEOF'
import json, statistics, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
ctx = ours["context"]
runs = {(b["name"].split("/iterations")[0], b["aggregate_name"]): b for b in ours["benchmarks"] if "aggregate_name" in b}
print(f"distill training steps ({ctx['source']} + lolcats, {theirs['parameters'] / 1e6:.1f}M parameters, fp32 CPU, "
      f"batch {ctx['batch']} x {ctx['tokens']} tokens, threads {ctx['threads']}; load average {sys.argv[3]} before, "
      f"{sys.argv[4]} after):")
# Relative tolerances: fp32 sums in another order; KL is a small difference of two near-equal distributions.
for key, label, tol in (("stage1_loss", "stage 1 loss (mse x 1000)", 1e-4), ("stage2_ce", "stage 2 CE", 1e-4),
                        ("stage2_kl", "stage 2 KL", 1e-3)):
    a, b = float(ctx[f"initial_{key}"]), theirs["initial"][key]
    rel = abs(a - b) / max(abs(b), 1e-30)
    print(f"  initial {label:26s} linearize {a:.9g}   pytorch {b:.9g}   rel diff {rel:.1e}   "
          f"tolerance {tol:.0e}: {'AGREE' if rel <= tol else 'DISAGREE'}")
# The verdict is on the fastest of 7 steps a side (load only ever adds time); the medians and the spread of
# step times show how much the load moved them.
tokens = int(ctx["tokens"])
for bm, key, label in (("BM_Stage1Step", "stage1", "stage 1 (mse)"), ("BM_Stage2Step/ce", "stage2_ce", "stage 2 (ce)"),
                       ("BM_Stage2Step/kl", "stage2_kl", "stage 2 (kl)")):
    mine, ref = tokens / (runs[(bm, "min")]["real_time"] / 1e3), theirs["best_tokens_per_s"][key]
    mine_median, ref_median = runs[(bm, "median")]["tokens_per_s"], theirs["tokens_per_s"][key]
    steps = theirs["step_s"][key]
    ratio = mine / ref
    print(f"  {label:14s} linearize {mine:7.1f} tokens/s   pytorch {ref:7.1f} tokens/s   ratio {ratio:.2f}x   "
          f"target >= 1.0x: {'PASS' if ratio >= 1 else 'FAIL'}")
    print(f"  {'':14s}   medians: linearize {mine_median:7.1f} (cv {runs[(bm, 'cv')]['real_time'] * 100:.0f}%)   pytorch "
          f"{ref_median:7.1f} (cv {statistics.stdev(steps) / statistics.mean(steps) * 100:.0f}%)   ratio {mine_median / ref_median:.2f}x")
PYEOF
)
}

# Converting a Llama-3-8B-shaped bf16 checkpoint (random weights, 16 GB in 4 shards as save_pretrained
# shards it; made once under $LINEARIZE_BENCH_DIR by scripts/make_synthetic_checkpoint.py, never committed;
# LINEARIZE_BENCH_CONVERT_SHAPE=llama3.2-1b for a quicker run): convert alone in a fresh process: time,
# peak RSS against the bound (largest shard + one layer's tensors + 10%), write rate.
section_convert() {
  local shape=${LINEARIZE_BENCH_CONVERT_SHAPE:-llama3-8b}
  local src=$LINEARIZE_BENCH_DIR/synthetic-$shape out=$LINEARIZE_BENCH_DIR/synthetic-$shape-lolcats json=$BENCH_OUT/convert_rss.json
  echo "== convert: $shape (bf16, sharded) with lolcats, no verification"
  [ -f "$src/config.json" ] || "$PY" scripts/make_synthetic_checkpoint.py --shape "$shape" --out "$src"
  "$BUILD_DIR/bench/convert_rss" "$src" "$out" lolcats | tee "$json"
  rm -rf "$out"
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <("$PY" - "$json" "$shape" <<'PYEOF'
import json, sys
r, gb = json.load(open(sys.argv[1])), 1e9
print(f"convert ({sys.argv[2]}, {r['layers_converted']} layers, lolcats): {r['seconds']:.1f} s, wrote {r['bytes_written'] / gb:.2f} GB "
      f"at {r['write_gb_per_s']:.2f} GB/s")
print(f"  peak RSS {r['peak_rss'] / gb:.2f} GB ({r['added_by_convert'] / gb:.2f} GB over the base {r['rss_before'] / gb:.2f} GB of the process); "
      f"bound 1.1 x (largest shard {r['largest_shard'] / gb:.2f} + layer {r['largest_layer'] / gb:.2f}) = {r['bound'] / gb:.2f} GB: "
      f"{r['added_over_bound']:.2f}x of it   target <= 1x: {'PASS' if r['added_over_bound'] <= 1 else 'FAIL'}")
PYEOF
)
}

# One process against two Gloo ranks on localhost (launched as torchrun does), the same run file and global
# batch (4 x 256 tokens) on the 100M-parameter Llama: tokens/s of data-parallel stage 2 from rank 0's
# progress lines. One process runs $(nproc) threads, each rank $(nproc)/2.
section_distill_ranks() {
  local model=$LINEARIZE_BENCH_DIR/llama-100m dir=$BENCH_OUT/distill_ranks threads=$(nproc)
  echo "== distill: 1 process vs 2 ranks (Gloo), stage 2, llama-100m"
  "$PY" bench/decoder_transformers.py make --out "$model" --size 100m --tokenizer tests/fixtures/tiny-llama
  rm -rf "$dir" && mkdir -p "$dir"
  cat > "$dir/run.yaml" <<YAML
model: $PWD/$model
out: RUN_OUT
recipe: {name: lolcats, params: {window: 64}}
data: {files: [$PWD/tests/fixtures/corpus/corpus.txt], seq_len: 256, batch_size: 4, validation_fraction: 0}
stage1: {enabled: false}
stage2: {steps: 12, lr: 0.001, schedule: constant, grad_accum: 1, loss: ce, lora: {r: 8, alpha: 16, dropout: 0}}
checkpoint: {every: 1000}
log_every: 4
YAML
  OMP_NUM_THREADS=$threads "$BUILD_DIR/cli/linearize" distill --config "$dir/run.yaml" --set out="$dir/one" > "$dir/one.log" 2> "$dir/one.err"
  local port; port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  for r in 0 1; do
    OMP_NUM_THREADS=$((threads / 2 > 0 ? threads / 2 : 1)) RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$BUILD_DIR/cli/linearize" distill --config "$dir/run.yaml" --set out="$dir/two" > "$dir/two.$r.log" 2> "$dir/two.$r.err" &
  done
  wait
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <("$PY" - "$dir/one.err" "$dir/two.0.err" <<'PYEOF'
import re, sys
def rate(path):  # tokens/s of the last stage-2 progress line (counted over the global batch)
    value = None
    for line in open(path):
        m = re.search(r"^stage2 .* ([0-9.]+)(k?) tok/s", line)
        if m: value = float(m.group(1)) * (1000 if m.group(2) else 1)
    return value
one, two = rate(sys.argv[1]), rate(sys.argv[2])
print(f"distill stage 2 (llama-100m, lolcats, 4 x 256 tokens a step): 1 process {one:.0f} tokens/s, "
      f"2 Gloo ranks {two:.0f} tokens/s, ratio {two / one:.2f}x (same cores: the ratio is the cost of splitting them)")
PYEOF
)
}

# Peak resident memory of distill's training per model size, without and with activation checkpointing:
# joint stage 1 (1 step) and stage 2 (2 steps, CE + KL to the teacher), one 512-token sequence a step, fp32
# on the CPU, from the records' peak_rss_bytes (each stage's own peak; the export's verify afterwards is not
# training and loads the source beside it). Models: llama-25m and llama-100m (bench/decoder_transformers.py),
# and the Llama-3.2-1B shape (scripts/make_synthetic_checkpoint.py: 1.24B parameters, 128K vocabulary, bf16
# on disk, 4.9 GB in fp32). DISTILL_MEMORY_MODELS narrows the list.
section_distill_memory() {
  local dir=$BENCH_OUT/distill_memory models=(${DISTILL_MEMORY_MODELS:-llama-25m llama-100m llama3.2-1b})
  echo "== distill: peak memory per model size, activation checkpointing off / on"
  rm -rf "$dir" && mkdir -p "$dir"
  local m
  for m in "${models[@]}"; do
    case $m in
      llama-25m|llama-100m) "$PY" bench/decoder_transformers.py make --out "$LINEARIZE_BENCH_DIR/$m" --size "${m#llama-}" --tokenizer tests/fixtures/tiny-llama ;;
      llama3.2-1b) [ -f "$LINEARIZE_BENCH_DIR/$m/config.json" ] || "$PY" scripts/make_synthetic_checkpoint.py --out "$LINEARIZE_BENCH_DIR/$m" --shape llama3.2-1b ;;
      *) echo "bench.sh: distill_memory: unknown model $m" >&2; exit 2 ;;
    esac
    cat > "$dir/$m.yaml" <<YAML
model: $PWD/$LINEARIZE_BENCH_DIR/$m
out: RUN_OUT
recipe: {name: lolcats, params: {window: 64}}
data: {files: [$PWD/tests/fixtures/corpus/corpus.txt], tokenizer: $PWD/tests/fixtures/tiny-llama, seq_len: 512, batch_size: 1, validation_fraction: 0}
stage1: {steps: 1, grad_accum: 1, schedule: constant}
stage2: {steps: 2, grad_accum: 1, schedule: constant, loss: ce+kl, lr: 0.0001}
checkpoint: {every: 1000}
log_every: 1
YAML
    local c
    for c in false true; do
      OMP_NUM_THREADS=$(nproc) "$BUILD_DIR/cli/linearize" distill --config "$dir/$m.yaml" --set out="$dir/$m-$c" \
        --set device.activation_checkpointing=$c > "$dir/$m-$c.log" 2> "$dir/$m-$c.err"
    done
  done
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <("$PY" - "$dir" "$LINEARIZE_BENCH_DIR" "${models[@]}" <<'PYEOF'
import json, re, sys
from pathlib import Path
out, models_dir, models = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
def params(model):
    c = json.load(open(models_dir / model / "config.json"))
    d, f, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = d // c["num_attention_heads"] * c["num_key_value_heads"]
    return n * (2 * d * d + 2 * d * kv + 3 * d * f + 2 * d) + v * d * (1 if c.get("tie_word_embeddings") else 2) + d
def peaks(run):
    stage = {}
    for line in open(out / run / "metrics.jsonl"):
        r = json.loads(line)
        if "peak_rss_bytes" in r:
            key = r["stage"].split(".")[0]
            stage[key] = max(stage.get(key, 0), r["peak_rss_bytes"])
    return stage
def rate(run, stage):  # tokens/s of the stage's last progress line
    value = None
    for line in open(out / f"{run}.err"):
        m = re.search(rf"^{stage} .* ([0-9.]+)(k?) tok/s", line)
        if m: value = float(m.group(1)) * (1000 if m.group(2) else 1)
    return value
print("distill peak RSS (GB), fp32 CPU, 1 x 512 tokens: model | weights fp32 | stage 1 off / on | stage 2 off / on | stage-2 tokens/s off / on")
for m in models:
    off, on = peaks(f"{m}-false"), peaks(f"{m}-true")
    w = params(m) * 4 / 1e9
    print(f"  {m}: {w:.2f} | {off['stage1'] / 1e9:.2f} / {on['stage1'] / 1e9:.2f} ({on['stage1'] / off['stage1']:.2f}x)"
          f" | {off['stage2'] / 1e9:.2f} / {on['stage2'] / 1e9:.2f} ({on['stage2'] / off['stage2']:.2f}x)"
          f" | {rate(f'{m}-false', 'stage2'):.0f} / {rate(f'{m}-true', 'stage2'):.0f}")
PYEOF
)
}

# Every recipe, hybrid (auto: half the layers) and pure, distilled on the real SmolLM2-135M-Instruct with
# configs/quality-cpu.yaml at one fixed budget (20 + 10 steps of 2 x 2048 tokens: 82k + 41k; x 100 on CUDA) and
# judged by linearize eval on held-out text (bench/quality_bench.py). Named only (NAMED_ONLY): hours on a CPU.
# Rows already measured with the same settings are kept, so a stopped run resumes; LINEARIZE_BENCH_QUALITY
# passes more flags (e.g. "--recipes lolcats --modes hybrid", "--dtype bf16").
section_quality() {
  local cache=${LINEARIZE_CACHE:-$HOME/.cache/linearize} device=cpu dtype=auto
  [ "${LINEARIZE_BENCH_CUDA:-0}" = 1 ] && device=cuda
  # bf16 autocast where the CPU multiplies bf16 in hardware (AMX: 5.8x fp32's matmul rate on the 2-core Xeon,
  # 1.3x / 1.45x stage 1 / stage 2 tokens/s); auto (fp32) elsewhere.
  [ $device = cpu ] && grep -qw amx_bf16 /proc/cpuinfo && dtype=bf16
  echo "== quality: every recipe distilled on SmolLM2-135M-Instruct at one budget, judged by linearize eval ($device)"
  "$PY" scripts/fetch_real_model.py --out "$cache/smollm2-135m-instruct"
  "$PY" scripts/fetch_real_text.py --out "$cache/text"
  # shellcheck disable=SC2086
  "$PY" bench/quality_bench.py --linearize "$BUILD_DIR/cli/linearize" --model "$cache/smollm2-135m-instruct" \
    --train "$cache/text/train.jsonl" --eval "$cache/text/eval.txt" --config configs/quality-cpu.yaml \
    --work "$LINEARIZE_BENCH_DIR/quality" --out "$BENCH_OUT/quality.json" --device "$device" --dtype "$dtype" ${LINEARIZE_BENCH_QUALITY:-} \
    | tee "$BENCH_OUT/quality.txt"
  mapfile -t -O "${#SUMMARY[@]}" SUMMARY < <(sed -n '/^quality on/,$p' "$BENCH_OUT/quality.txt")
}

selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${SECTIONS[@]}")
for s in "${selected[@]}"; do
  declare -F "section_$s" >/dev/null || { echo "bench.sh: no section '$s' (have: ${SECTIONS[*]} ${NAMED_ONLY[*]})" >&2; exit 2; }
  "section_$s"
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
torch=$("$PY" -c 'import torch; print(torch.__version__, "(CUDA build)" if torch.version.cuda else "(CPU build)")' 2>/dev/null || echo unknown)
echo
echo "== summary (JSON in $BENCH_OUT)"
echo "machine: ${cpu:-unknown CPU}, $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, LibTorch $torch"
printf '%s\n' "${SUMMARY[@]}"
