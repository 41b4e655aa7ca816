// export-onnx (docs/formats.md#onnx-graph, docs/verification.md#l6-onnx): a model directory, source or converted, as one ONNX graph for
// prefill and decode. Inputs: input_ids [batch, sequence] (sequence > 1 prefills with the chunked form,
// 1 is a decode step), attention_mask [batch, total_sequence], position_ids [batch, sequence], and per layer
// its state: past_key_values.{i}.key/.value for softmax layers (the whole cache; sliding layers mask it) and
// window hybrids (their last `window` keys), past.{i}.<kind> fp32 for recurrent states
// (past.{i}.recurrent [batch, Hkv, K, V], ...). Outputs: logits [batch, sequence, vocab] and present.* of
// the same shapes (onnxruntime-genai's names; its genai_config.json is written where genai can carry every
// state: key/value caches and conv + recurrent pairs). Standard operators at opset `opset`; weights are
// initializers holding the checkpoint's bytes under their safetensors names.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "formats/onnx_model.h"

namespace linearize {

inline constexpr std::int64_t kOnnxDefaultOpset = 21;
inline constexpr std::int64_t kLinearAttentionOpset = 27;  // ONNX's LinearAttention operator
inline constexpr const char* kOnnxFileName = "model.onnx";
// Metadata keys of the graph: the recipe parameters it was built from, as config.json holds them.
inline constexpr const char* kOnnxRecipeKey = "linearize.recipe";
inline constexpr const char* kOnnxParamsKey = "linearize.params";
inline constexpr const char* kOnnxDtypeKey = "linearize.dtype";  // "fp32" or "fp16"

struct OnnxExportOptions {
  std::filesystem::path model;  // the model directory
  std::filesystem::path out;    // default <model>/model.onnx
  std::optional<std::int64_t> opset;  // default kOnnxDefaultOpset, or kLinearAttentionOpset with the operator
  // The linear, gated and gated-delta recurrences through ONNX's LinearAttention operator instead of a Scan of
  // standard operators (runtimes that implement it; the graphs agree: tests/python/test_exports.py).
  bool linear_attention_operator = false;
  // fp16: the projection and embedding matrices stored in fp16 (half the graph) and their products taken in
  // fp16; norms, RoPE, softmax, gates, the states and their accumulation stay fp32.
  bool fp16 = false;
  onnx_model::SaveOptions save;
};

struct OnnxExportResult {
  std::filesystem::path path;
  onnx_model::SaveResult saved;
  std::int64_t nodes = 0;  // of the main graph
  // onnxruntime-genai's config, written beside the graph when genai can carry every state (key/value caches,
  // and recurrent layers with exactly a conv and a recurrent state: gated-deltanet, mamba2); otherwise empty,
  // and genai_unsupported says why, naming the first layer it cannot carry.
  std::filesystem::path genai_config;
  std::string genai_unsupported;
  // ONNX's full checker and strict shape inference on the written file. A graph that fails them is removed
  // (with its data file) and no genai config is written: nothing invalid is left as if it were an export.
  onnx_model::CheckResult check;
};

// Throws InputError (exit 2, nothing written) for a model it cannot express: a layer whose recipe has no ONNX
// form (naming the layer and the mixer), an unmerged LoRA adapter, dynamic RoPE, an opset below 18 (27 with
// the LinearAttention operator).
OnnxExportResult export_onnx(const OnnxExportOptions& options);

}  // namespace linearize
