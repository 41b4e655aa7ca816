#!/usr/bin/env bash
# Configures (once) and builds into build/. Extra arguments go to `cmake --build` (e.g. --target linearize).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
# Paths relative to the checkout in ccache keys, so a fresh clone reuses the cache of an earlier one.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
# The fixtures not committed (tests/fixtures/.gitignore), made where missing or stale before CMake lists the fixtures.
if [ -x .venv/bin/python ]; then .venv/bin/python tests/fixtures/make_fixtures.py --generated; fi
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
  cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DLINEARIZE_WERROR=ON
fi
cmake --build "$BUILD_DIR" --parallel "$(nproc)" "$@"
