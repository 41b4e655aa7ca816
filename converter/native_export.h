// export-native (docs/formats.md#native-layouts): a conversion written as a plain Hugging Face checkpoint of an
// architecture the serving runtimes already implement (transformers' own class, vLLM, llama.cpp's converter),
// with no modeling files and no auto_map. A layout holds a recipe's layers exactly, or the export is refused by
// name; `allow_inexact` writes it anyway and lists what differs in config.json (linearize.inexact).
//
// qwen3_5 (Qwen3_5ForCausalLM, model_type qwen3_5_text): gated-deltanet layers become Qwen3.5's linear_attn
// (kv rows repeated to the query heads: its q and k share one head count, so the state grows by H / Hkv); a kept
// softmax layer becomes its gated attention with the gate rows 0 (sigmoid(0) = 1/2, o_proj x 2) and needs the
// source's per-head q/k RMSNorms; every (1 + w) RMSNorm is stored as w - 1 in fp32.
//
// granitehybrid (GraniteMoeHybridForCausalLM without experts): mamba2 layers become its Mamba-2 mixer with one
// group of B and C per head (vLLM's and llama.cpp's norm grouping; transformers' class normalises over all of
// d_inner, so it computes another function) and inert heads up to d_inner = 2 x hidden (llama.cpp asserts it);
// kept softmax layers its Llama-style attention (no q/k norms, no biases).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "formats/checkpoint.h"

namespace linearize {

// The layouts export-native writes ("qwen3_5", "granitehybrid").
const std::vector<std::string>& native_layouts();

struct NativeExportOptions {
  std::filesystem::path model;  // a conversion
  std::filesystem::path out;
  std::string layout;
  bool force = false;
  bool allow_inexact = false;
  std::uint64_t max_shard_bytes = kDefaultMaxShardBytes;
  std::function<void(std::uint64_t written, std::uint64_t total)> progress;
};

// Something the layout cannot hold exactly: the config field or tensor, the layer (none: the whole model), why.
struct NativeInexact {
  std::string field;
  std::optional<std::int64_t> layer;
  std::string reason;
  std::string line() const;  // "layer 3: self_attn.q_norm: ..."
};

struct NativeExportResult {
  std::vector<NativeInexact> inexact;  // empty unless allow_inexact
  std::int64_t linear_layers = 0, attention_layers = 0;
  std::int64_t state_growth = 1;  // the layout's recurrent state over the conversion's (H / Hkv for qwen3_5)
  std::uint64_t bytes = 0;        // of tensors written
};

// Throws InputError (exit 2, nothing written) for an unknown layout, a model that is not a conversion of the
// layout's recipe, an unmerged adapter, an existing `out` without `force`, and, without `allow_inexact`, the
// first thing the layout cannot hold exactly (naming the layer and the reason).
NativeExportResult export_native(const NativeExportOptions& options);

}  // namespace linearize
