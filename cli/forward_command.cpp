#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>
#include <sstream>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "cli/id_list.h"
#include "converter/model_config.h"
#include "formats/error.h"
#include "formats/safetensors.h"

namespace linearize::cli {
namespace {

// --batch-ids "1,2;3" -> ids [B, T] left-padded with 0 and attention_mask [B, T] (1 on the tokens), each row
// checked as --prompt-ids is.
std::pair<at::Tensor, at::Tensor> padded_batch(const ModelOptions& model, const std::string& rows) {
  const auto vocab_size = load_model_config(std::filesystem::path(model.dir) / "config.json").vocab_size;
  std::vector<std::vector<std::int64_t>> prompts;
  std::stringstream in(rows);
  for (std::string row; std::getline(in, row, ';');) {
    prompts.push_back(parse_id_list(row, "--batch-ids"));
    if (prompts.back().empty()) throw InputError("command line", "--batch-ids", "has an empty row (rows are separated by ';')");
    check_in_vocabulary(prompts.back(), vocab_size, "--batch-ids");
  }
  if (prompts.empty()) throw InputError("command line", "--batch-ids", "has no rows");
  std::int64_t width = 0;
  for (const auto& p : prompts) width = std::max(width, static_cast<std::int64_t>(p.size()));
  auto ids = at::zeros({static_cast<std::int64_t>(prompts.size()), width}, at::kLong), mask = at::zeros_like(ids);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto n = static_cast<std::int64_t>(prompts[i].size());
    ids[static_cast<std::int64_t>(i)].narrow(0, width - n, n).copy_(at::tensor(prompts[i], at::kLong));
    mask[static_cast<std::int64_t>(i)].narrow(0, width - n, n).fill_(1);
  }
  return {ids, mask};
}

}  // namespace

void add_forward_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    bool hidden = false;
    std::string batch;  // "1,2;3": rows of a left-padded batch
    std::string out;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("forward", "Run one forward pass and write the logits (and intermediates) as safetensors");
  add_model_options(*cmd, opts->model);
  cmd->add_flag("--hidden", opts->hidden, "Also write every named intermediate (layers.{i}.attn_out, mlp_out, out, norm, ...)");
  cmd->add_option("--out", opts->out, "Output .safetensors file (written atomically)")->required();
  cmd->add_option("--batch-ids", opts->batch,
                  "A left-padded batch: rows of comma-separated ids separated by ';' (pad id 0, attention_mask 0, each row at "
                  "its own positions); writes input_ids, attention_mask and logits [B, T, vocab]")
      ->excludes(cmd->get_option("--prompt-ids"))
      ->excludes(cmd->get_option("--prompt"))
      ->excludes("--hidden");
  cmd->callback([opts] {
    if (!opts->batch.empty()) {
      const auto [ids, mask] = padded_batch(opts->model, opts->batch);
      const auto logits = load_model(opts->model).forward(ids, {}, kernels::MixerForm::chunked, mask);
      write_safetensors(opts->out, {{"input_ids", ids}, {"attention_mask", mask}, {"logits", logits.to(at::kCPU).contiguous()}},
                        {{"format", "pt"}, {"model", opts->model.dir}});
      spdlog::info("wrote the logits of a batch of {} to {}", ids.size(0), opts->out);
      return;
    }
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
