#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>

#include "cli/commands.h"
#include "converter/onnx_export.h"

namespace linearize::cli {

void add_export_onnx_command(CLI::App& app) {
  struct Options {
    std::string model, out;
    std::optional<std::int64_t> opset;
    bool linear_attention_operator = false;
    std::string dtype = "fp32";
    std::uint64_t external_data_above = onnx_model::SaveOptions{}.external_data_above;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("export-onnx", "Write the model as one ONNX graph (prefill and decode, states in and out) and check it");
  cmd->add_option("--model", opts->model, "Model directory (a conversion or a source checkpoint)")->required();
  cmd->add_option("--out", opts->out, "Output file (default: <model>/model.onnx)");
  cmd->add_option("--opset", opts->opset, "ONNX opset of the graph, 18 or later (default 21; 27 with --linear-attention-op)");
  cmd->add_flag("--linear-attention-op", opts->linear_attention_operator,
                "Linear, gated and gated-delta recurrences through ONNX's LinearAttention operator (opset 27) instead of a Scan");
  cmd->add_option("--dtype", opts->dtype,
                  "fp32, or fp16: projection and embedding matrices stored and multiplied in fp16, the rest (states included) fp32")
      ->check(CLI::IsMember({"fp32", "fp16"}));
  cmd->add_option("--external-data-above", opts->external_data_above,
                  "Weights go to <out>.data when they hold more bytes than this (default 2 GiB, protobuf's limit)");
  cmd->callback([opts] {
    OnnxExportOptions options;
    options.model = opts->model;
    options.out = opts->out;
    options.opset = opts->opset;
    options.linear_attention_operator = opts->linear_attention_operator;
    options.fp16 = opts->dtype == "fp16";
    options.save.external_data_above = opts->external_data_above;
    const auto started = std::chrono::steady_clock::now();
    const auto result = export_onnx(options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    spdlog::info("wrote {} ({} nodes, {} initializers, graph {:.1f} MB{}) in {:.2f} s", result.path.string(), result.nodes,
                 result.saved.initializers, result.saved.graph_bytes / 1e6,
                 result.saved.external_data.empty()
                     ? std::string(", weights inline")
                     : ", weights in " + result.saved.external_data.filename().string() + " " +
                           std::to_string(result.saved.external_data_bytes / 1000000) + " MB",
                 seconds);
    if (!result.check.ok())
      throw CheckFailed("export-onnx: the written graph fails ONNX's checks (removed): " + result.check.checker +
                        result.check.shape_inference);
    spdlog::info("onnx checker (full) and strict shape inference: pass (opset {})", result.check.opset);
    if (!result.genai_config.empty()) spdlog::info("wrote {} (onnxruntime-genai)", result.genai_config.string());
    else spdlog::info("no genai_config.json: {}", result.genai_unsupported);
  });
}

}  // namespace linearize::cli
