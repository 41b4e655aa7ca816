#!/usr/bin/env bash
# Set-up, build and the whole test suite: what CI runs (.ci/run) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure --parallel "$(nproc)" "$@"
