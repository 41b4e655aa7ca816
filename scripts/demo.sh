#!/usr/bin/env bash
# Set-up, build, and the whole pipeline on the bundled tiny models: inspect, tokenize, generate, forward,
# convert + verify with every recipe, and a distillation run (stage 1 + stage 2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh --target linearize
bin=build/cli/linearize
for model in tests/fixtures/tiny-llama tests/fixtures/tiny-mistral tests/fixtures/tiny-qwen2; do
  echo "== linearize inspect $model"
  "$bin" inspect "$model"
  echo
done

prompt="The interpreter reads"
echo "== linearize tokenize: '$prompt'"
"$bin" tokenize --tokenizer tests/fixtures/tiny-llama --text "$prompt"
echo
for model in tests/fixtures/tiny-llama tests/fixtures/tiny-mistral tests/fixtures/tiny-qwen2; do
  echo "== linearize generate --model $model --prompt '$prompt' (greedy, KV cache, equal to transformers)"
  "$bin" generate --model "$model" --prompt "$prompt" --max-new-tokens 24
  echo
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "== linearize forward --hidden: every named intermediate of tiny-qwen2"
"$bin" forward --model tests/fixtures/tiny-qwen2 --prompt "$prompt" --hidden --out "$out/forward.safetensors"
ls -l "$out/forward.safetensors"
echo

# Every recipe on the bundled Llama: convert (which verifies against the source and exits 1 on a failed
# check), then decode with the constant-size recurrent state.
for recipe in liger-gla lolcats hedgehog supra gated-deltanet mamba2; do
  echo "== linearize convert --recipe $recipe (training-free), then its verify table"
  "$bin" --log-level warn convert --model tests/fixtures/tiny-llama --recipe "$recipe" --out "$out/$recipe"
  echo "== linearize generate --model <$recipe export> --prompt '$prompt'"
  "$bin" generate --model "$out/$recipe" --prompt "$prompt" --max-new-tokens 24
  echo
done

# The liger-gla export as one ONNX graph (prefill and decode, states in and out), then verify with its L6 rows
# and onnxruntime's parity with linearize.
echo "== linearize export-onnx --model <liger-gla export>, verify (L6), onnxruntime vs linearize"
"$bin" export-onnx --model "$out/liger-gla"
"$bin" verify --model "$out/liger-gla" | grep -E "L6|verify:"
.venv/bin/python scripts/check_onnx_export.py --model "$out/liger-gla" --linearize "$bin"
echo

# Attention transfer then LoRA (stages 1 and 2 of distill, LoLCATs) on the bundled model: prints the attention MSE,
# perplexity and KL before and after, then the export's verify table.
echo "== linearize distill --config configs/demo-tiny.yaml (LoLCATs stages 1 + 2 on tiny-llama)"
"$bin" distill --config configs/demo-tiny.yaml --set out="$out/distill"
