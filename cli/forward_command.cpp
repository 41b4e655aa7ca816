#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <memory>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "formats/safetensors.h"

namespace linearize::cli {

void add_forward_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    bool hidden = false;
    std::string out;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("forward", "Run one forward pass and write the logits (and intermediates) as safetensors");
  add_model_options(*cmd, opts->model);
  cmd->add_flag("--hidden", opts->hidden, "Also write every named intermediate (layers.{i}.attn_out, mlp_out, out, norm, ...)");
  cmd->add_option("--out", opts->out, "Output .safetensors file (written atomically)")->required();
  cmd->callback([opts] {
    const auto ids = prompt_tensor(opts->model);
    const auto model = load_model(opts->model);
    NamedTensors tensors{{"input_ids", ids[0]}};
    CaptureFn capture;
    if (opts->hidden)
      capture = [&](const std::string& name, const at::Tensor& t) { tensors.emplace_back(name, t[0].to(at::kCPU).contiguous()); };
    const auto logits = model.forward(ids, capture);
    if (!opts->hidden) tensors.emplace_back("logits", logits[0].to(at::kCPU).contiguous());
    write_safetensors(opts->out, tensors, {{"format", "pt"}, {"model", opts->model.dir}});
    spdlog::info("wrote {} tensors to {}", tensors.size(), opts->out);
  });
}

}  // namespace linearize::cli
