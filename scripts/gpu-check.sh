#!/usr/bin/env bash
# The one script to run on a CUDA machine: builds, runs the device table (every kernel form and every
# recipe's model on CUDA in fp32 and bf16 against CPU fp64), a CUDA distill run (both stages, verify), the
# decoder bench in CUDA bf16 against transformers, and prints one summary table. Without a usable GPU
# everything still runs, on the CPU, and the summary says so.
#
#   scripts/gpu-check.sh            # here, or on the device machine
#   scripts/gpu-check.sh --fetch    # here, before: the .deb files of our -dev packages into .deps/debs
#
# The device machine has torch, CMake, ninja and nvcc but none of our Debian -dev packages and no network:
# fetch them here, carry `.deps` (the debs, ONNX's C++ library and Gloo's headers that scripts/setup.sh
# built), and this script unpacks them into .deps/sysroot there and builds against the machine's own torch.
# env: BUILD_DIR (default build), GPU_CHECK_OUT (default $BUILD_DIR/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
OUT=${GPU_CHECK_OUT:-$BUILD_DIR/gpu-check}
# The -dev packages scripts/setup.sh installs that the build links or includes, and the runtime libraries
# they name (not the base system: libc, libstdc++, libgcc are the machine's own).
DEV_DEBS=(libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libcli11-dev libyaml-cpp-dev libyaml-cpp0.7 libhdf5-dev
  libhdf5-103-1 libhdf5-hl-100 libsz2 libaec0 libprotobuf-dev libprotobuf32 nlohmann-json3-dev libgtest-dev libgmock-dev
  libbenchmark-dev libbenchmark1debian libpcre2-dev libpcre2-8-0 libicu-dev libicu72 libssl-dev libssl3 libcurl4-openssl-dev
  libcurl4 zlib1g-dev)

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p .deps/debs
  (cd .deps/debs && apt-get download "${DEV_DEBS[@]}")
  scripts/setup.sh >/dev/null  # ONNX's library and Gloo's headers under .deps
  echo "gpu-check: carry .deps ($(du -sh .deps | cut -f1)) to the device machine, then run scripts/gpu-check.sh there"
  exit 0
fi

PY=python3
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
  scripts/setup.sh >/dev/null
elif ! pkg-config --exists spdlog yaml-cpp 2>/dev/null; then
  # The device machine: our packages from the carried .debs, unpacked (not installed) into a sysroot.
  [ -d .deps/debs ] || { echo "gpu-check: no Debian -dev packages here and no .deps/debs: run scripts/gpu-check.sh --fetch where they are, and carry .deps" >&2; exit 2; }
  if [ ! -f .deps/sysroot/.unpacked ]; then
    for deb in .deps/debs/*.deb; do dpkg -x "$deb" .deps/sysroot; done
    touch .deps/sysroot/.unpacked
  fi
  root=$PWD/.deps/sysroot/usr
  export CMAKE_PREFIX_PATH="$root:$root/lib/x86_64-linux-gnu/cmake${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export PKG_CONFIG_PATH="$root/lib/x86_64-linux-gnu/pkgconfig:$root/share/pkgconfig"
  export CPATH="$root/include:$root/include/hdf5/serial" LIBRARY_PATH="$root/lib/x86_64-linux-gnu"
  export LD_LIBRARY_PATH="$root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# The machine's torch when there is no project venv (the device machine's own, CUDA build).
if [ ! -x .venv/bin/python ] && [ -z "${Torch_DIR:-}" ]; then
  Torch_DIR="$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')/Torch"
  export Torch_DIR
fi

BUILD_DIR=$BUILD_DIR scripts/build.sh --target linearize linearize_tests decoder_bench
mkdir -p "$OUT"
cuda=$("$PY" -c 'import torch; print(1 if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
device=cpu; [ "$cuda" = 1 ] && device=cuda
echo "== gpu-check: device $device ($("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")' 2>/dev/null))"

echo "== device table: every kernel form and recipe model, fp32 and bf16 against CPU fp64"
table_rc=0
"$BUILD_DIR/tests/linearize_tests" --gtest_filter='DeviceTable.*' | tee "$OUT/device_table.txt" || table_rc=$?

echo "== distill on $device: both stages on tiny-llama, then verify"
cat > "$OUT/distill.yaml" <<YAML
model: $PWD/tests/fixtures/tiny-llama
out: $PWD/$OUT/distill
recipe: {name: lolcats, params: {window: 16}}
data: {files: [$PWD/tests/fixtures/corpus/corpus.txt], seq_len: 128, batch_size: 4, validation_fraction: 0.05}
stage1: {lr: 0.01, schedule: constant, grad_accum: 1, steps: 40}
stage2: {steps: 40, lr: 0.003, schedule: constant, grad_accum: 1, loss: ce+kl, lora: {r: 8, alpha: 16, dropout: 0}}
device: {type: $device}
log_every: 10
YAML
rm -rf "$OUT/distill"
distill_rc=0
"$BUILD_DIR/cli/linearize" distill --config "$OUT/distill.yaml" > "$OUT/distill.txt" 2> "$OUT/distill.err" || distill_rc=$?

echo "== decoder: linearize vs transformers eager, bf16 $device"
model=$BUILD_DIR/bench/llama-1b; size=1b; [ "$cuda" = 1 ] || { model=$BUILD_DIR/bench/llama-100m; size=100m; }
"$PY" bench/decoder_transformers.py make --out "$model" --size "$size" >/dev/null
LINEARIZE_BENCH_MODEL=$model LINEARIZE_BENCH_DEVICE=$device LINEARIZE_BENCH_DTYPE=bf16 \
  "$BUILD_DIR/bench/decoder_bench" --benchmark_out="$OUT/decoder_bench.json" --benchmark_out_format=json >/dev/null
"$PY" bench/decoder_transformers.py run --model "$model" --device "$device" --dtype bf16 --threads "$(nproc)" \
  --out "$OUT/decoder_transformers.json" >/dev/null

echo
echo "== gpu-check summary ($device)"
"$PY" - "$OUT" "$table_rc" "$distill_rc" <<'PYEOF'
import json, re, sys
out, table_rc, distill_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [l.rstrip() for l in open(f"{out}/device_table.txt") if re.search(r"\s(PASS|FAIL)$", l.rstrip())]
failed = [r for r in rows if r.endswith("FAIL")]
print(f"device table: {len(rows)} rows, {len(failed)} failed (gtest exit {table_rc})")
for r in failed:
    print("  " + r)
worst = {}
for r in rows:
    parts = r.split()
    dtype, error = parts[-4], float(parts[-3])
    worst[dtype] = max(worst.get(dtype, 0.0), error)
print("  worst error by dtype: " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(worst.items())))
rates = re.findall(r"^(stage\d\S*)\s+step (\d+)/(\d+).* ([0-9.]+k?) tok/s", open(f"{out}/distill.err").read(), re.M)
last = {}
for stage, step, total, rate in rates:
    last[stage.split(".")[0]] = rate
verdict = re.search(r"verify: (PASS|FAIL)", open(f"{out}/distill.txt").read())
print(f"distill: exit {distill_rc}, " + ", ".join(f"{k} {v} tokens/s" for k, v in last.items()) +
      f", verify {verdict.group(1) if verdict else 'not reached'}")
ours = {b["name"].split("/")[0]: b["tokens_per_s"] for b in json.load(open(f"{out}/decoder_bench.json"))["benchmarks"]}
theirs = json.load(open(f"{out}/decoder_transformers.json"))
for key, bm in (("prefill", "BM_Prefill"), ("decode", "BM_Decode")):
    print(f"decoder bf16 {key}: linearize {ours[bm]:.1f} tokens/s, transformers eager {theirs[f'{key}_tokens_per_s']:.1f}, "
          f"ratio {ours[bm] / theirs[f'{key}_tokens_per_s']:.2f}x")
sys.exit(1 if table_rc or distill_rc else 0)
PYEOF
