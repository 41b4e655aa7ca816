// L6 (docs/verification.md#l6-onnx) where the directory holds model.onnx: ONNX's full checker and strict shape inference in
// C++, every weight of the graph byte-identical to model.safetensors (so the graph cannot carry other weights
// than the ones L0-L2 checked), and the graph built from this config's recipe and parameters. Parity in
// onnxruntime is scripts/check_onnx_export.py (no onnxruntime C headers here; README).
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "converter/linearized.h"
#include "converter/onnx_export.h"
#include "converter/verify/check.h"
#include "formats/checkpoint.h"
#include "formats/mapped_file.h"
#include "formats/onnx_model.h"

namespace linearize::checks {
namespace {

void check_graph(const std::filesystem::path& path, ReportBuilder& r) {
  const auto check = onnx_model::check_file(path);
  r.add("onnx checker (full) and strict shape inference", check.ok() ? 0 : 1, "==", 0,
        check.ok() ? "opset " + std::to_string(check.opset) + ", " + std::to_string(check.nodes) + " nodes"
                   : (check.checker.empty() ? check.shape_inference : check.checker).substr(0, 200));
}

void check_weights(const std::filesystem::path& dir, const onnx_model::FileInfo& info, ReportBuilder& r) {
  const auto weights = CheckpointWeights::open(dir);
  std::map<std::string, std::shared_ptr<MappedFile>> data_files;
  std::set<std::string> in_graph;
  Differences differ;
  for (const auto& init : info.initializers) {
    if (!weights.contains(init.name)) continue;
    in_graph.insert(init.name);
    // An fp16 graph (export-onnx --dtype fp16) holds its matrices as the checkpoint's values rounded to fp16.
    auto t = weights.tensor(init.name);
    if (init.type == onnx_model::ElementType::f16 && t.scalar_type() != at::kHalf) t = t.to(at::kHalf).contiguous();
    const std::uint8_t* bytes = reinterpret_cast<const std::uint8_t*>(init.inline_bytes.data());
    if (!init.location.empty()) {
      auto& file = data_files[init.location];
      if (!file) file = MappedFile::open(dir / init.location);
      bytes = init.offset + init.length <= file->size() ? file->data() + init.offset : nullptr;
    }
    const bool same = bytes && init.shape == t.sizes().vec() && init.length == t.nbytes() &&
                      std::memcmp(bytes, t.data_ptr(), t.nbytes()) == 0;
    weights.release(init.name);
    differ.note(same, init.name);
  }
  for (const auto& name : weights.names()) differ.note(in_graph.count(name) > 0, name + " (not in the graph)");
  r.add("onnx weights byte-identical to model.safetensors (or its fp16 rounding)", static_cast<double>(differ.count), "==", 0,
        differ.detail(std::to_string(in_graph.size()) + " tensors"));
}

void check_recipe(const ModelConfig& config, const onnx_model::FileInfo& info, ReportBuilder& r) {
  std::map<std::string, std::string> metadata(info.metadata.begin(), info.metadata.end());
  const auto of = recipe_of(config);
  const auto params = nlohmann::json::parse(metadata[kOnnxParamsKey], nullptr, /*allow_exceptions=*/false);
  const bool same = metadata[kOnnxRecipeKey] == of.recipe->name && params == of.params;
  r.add("onnx graph built from this recipe and parameters", same ? 0 : 1, "==", 0,
        same ? of.recipe->name : "graph: " + metadata[kOnnxRecipeKey] + " " + metadata[kOnnxParamsKey]);
}

void check_onnx(VerifyContext& c) {
  const auto path = c.options.model / kOnnxFileName;
  check_graph(path, c.report);
  const auto info = onnx_model::read_file_info(path);
  check_weights(c.options.model, info, c.report);
  if (!c.config.linearize.is_null()) check_recipe(c.config, info, c.report);
}

}  // namespace

const Check kOnnxCheck{"L6", "L6", kOnnxFile, check_onnx};

}  // namespace linearize::checks
