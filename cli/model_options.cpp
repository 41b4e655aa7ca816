#include "cli/model_options.h"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <sstream>

#include <ATen/Context.h>

#include "formats/error.h"

namespace linearize::cli {

void add_model_options(CLI::App& cmd, ModelOptions& opts) {
  cmd.add_option("--model", opts.dir, "Model directory (Hugging Face checkpoint)")->required();
  cmd.add_option("--prompt-ids", opts.prompt_ids, "Comma-separated token ids, e.g. 1,2,3")->required();
  cmd.add_option("--device", opts.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd.add_option("--dtype", opts.dtype, "Computation dtype (weights are converted on load)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
}

CausalLM load_model(const ModelOptions& opts) {
  LoadOptions load;
  load.dtype = opts.dtype == "bf16" ? at::kBFloat16 : opts.dtype == "fp16" ? at::kHalf : at::kFloat;
  if (opts.device == "cuda") {
    if (!at::hasCUDA()) throw InputError("command line", "--device", "cuda was asked for but no CUDA device is usable here");
    load.device = at::Device(at::kCUDA);
  }
  const auto started = std::chrono::steady_clock::now();
  auto model = CausalLM::load(opts.dir, load);
  spdlog::info("loaded {} ({} layers) as {} on {} in {:.2f} s", opts.dir, model.config().num_hidden_layers, opts.dtype,
               opts.device, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return model;
}

at::Tensor prompt_tensor(const ModelOptions& opts) {
  const auto vocab_size = load_model_config(std::filesystem::path(opts.dir) / "config.json").vocab_size;
  std::vector<std::int64_t> ids;
  std::stringstream in(opts.prompt_ids);
  std::string item;
  while (std::getline(in, item, ',')) {
    std::size_t used = 0;
    std::int64_t id = -1;
    try {
      id = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || id < 0)
      throw InputError("command line", "--prompt-ids", "'" + item + "' is not a token id");
    if (id >= vocab_size)
      throw InputError("command line", "--prompt-ids", "token id " + item + " is outside the vocabulary (size " +
                                                           std::to_string(vocab_size) + ")");
    ids.push_back(id);
  }
  if (ids.empty()) throw InputError("command line", "--prompt-ids", "is empty");
  return at::tensor(ids, at::kLong).unsqueeze(0);
}

}  // namespace linearize::cli
