#!/usr/bin/env bash
# Set-up, build, and the pipeline as far as it exists today on the bundled tiny models.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh --target linearize
for model in tests/fixtures/tiny-llama tests/fixtures/tiny-mistral tests/fixtures/tiny-qwen2; do
  echo "== linearize inspect $model"
  build/cli/linearize inspect "$model"
  echo
done
