#include "cli/model_options.h"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>

#include <ATen/Context.h>

#include "cli/id_list.h"
#include "converter/linearized.h"
#include "converter/model/weights.h"
#include "formats/checkpoint.h"
#include "formats/error.h"
#include "formats/tokenizer.h"

namespace linearize::cli {

void add_model_options(CLI::App& cmd, ModelOptions& opts) {
  cmd.add_option("--model", opts.dir, "Model directory (Hugging Face checkpoint)")->required();
  auto* ids = cmd.add_option("--prompt-ids", opts.prompt_ids, "Comma-separated token ids, e.g. 1,2,3");
  auto* text = cmd.add_option("--prompt", opts.prompt, "Prompt text, encoded with the model's tokenizer.json");
  ids->excludes(text);
  add_device_options(cmd, opts);
  add_stream_option(cmd, opts);
}

void add_stream_option(CLI::App& cmd, ModelOptions& opts) {
  cmd.add_option("--stream-layers", opts.stream_layers,
                 "Copy one decoder layer in at a time from the mapped checkpoint (any size runs in bounded memory; every "
                 "forward reads the weights again): on, off, or auto (on when the weights at --dtype would take over half "
                 "the available memory)")
      ->check(CLI::IsMember({"auto", "on", "off"}));
}

namespace {

// MemAvailable of /proc/meminfo in bytes; nullopt where there is none (not Linux).
std::optional<double> available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return std::nullopt;
}

// Whether `model`'s weights go through one layer at a time: --stream-layers on, or auto on the CPU with weights (at the
// compute dtype) over half the available memory, the other half left to the activations, logits and the page cache.
bool stream_layers(const ModelOptions& opts, const std::filesystem::path& model, const LoadOptions& load) {
  if (opts.stream_layers != "auto" || model.empty()) return opts.stream_layers == "on";
  const auto available = available_memory();
  if (!available || load.device.type() != at::kCPU) return false;
  const double bytes = weight_bytes(CheckpointWeights::open(model), load.dtype);
  if (bytes <= *available / 2) return false;
  spdlog::info("streaming the layers of {}: its weights take {:.1f} GB as {}, over half of the {:.1f} GB available (--stream-layers auto)",
               model.string(), bytes / 1e9, c10::toString(load.dtype), *available / 1e9);
  return true;
}

}  // namespace

void add_device_options(CLI::App& cmd, ModelOptions& opts) {
  cmd.add_option("--device", opts.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd.add_option("--dtype", opts.dtype, "Computation dtype (weights are converted on load)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
}

LoadOptions load_options(const ModelOptions& opts, const std::filesystem::path& model) {
  LoadOptions load;
  load.dtype = opts.dtype == "bf16" ? at::kBFloat16 : opts.dtype == "fp16" ? at::kHalf : at::kFloat;
  if (opts.device == "cuda") {
    if (!at::hasCUDA()) throw InputError("command line", "--device", "cuda was asked for but no CUDA device is usable here");
    load.device = at::Device(at::kCUDA);
  }
  load.stream_layers = stream_layers(opts, model, load);
  if (load.stream_layers) {
    // oneDNN caches a primitive per GEMM shape, 1024 by default, with its own copy of the weights packed for AMX/AVX-512.
    // A streamed model's weights change with every layer (and a MoE layer gives each expert its own row count), so the
    // cache held copies of dropped layers: verify of the 26 GB MoE checkpoint peaked at 7.2 GiB with it and 3.75 GiB
    // without it, and ran faster without it (6 min 54 s vs 8 min 25 s). oneDNN reads the variable when it makes its first
    // primitive, which no command does before its model is loaded. A value the user set is kept.
    setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0", /*overwrite=*/0);
    // At most one line every 15 s: a greedy token streams every layer again.
    auto last = std::make_shared<std::chrono::steady_clock::time_point>();
    auto copies = std::make_shared<std::int64_t>(0);
    load.layer_streamed = [last, copies](std::int64_t layer, double seconds) {
      ++*copies;
      const auto now = std::chrono::steady_clock::now();
      if (now - *last < std::chrono::seconds(15)) return;
      *last = now;
      spdlog::info("streaming: layer {} copied in ({:.2f} s; {} layer copies so far)", layer, seconds, *copies);
    };
  }
  return load;
}

CausalLM load_model(const ModelOptions& opts) {
  const auto load = load_options(opts, opts.dir);
  const auto started = std::chrono::steady_clock::now();
  auto model = load_model(opts.dir, load);
  spdlog::info("loaded {} ({} layers) as {} on {} in {:.2f} s", opts.dir, model.config().num_hidden_layers, opts.dtype,
               opts.device, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return model;
}

void check_in_vocabulary(const std::vector<std::int64_t>& ids, std::int64_t vocab_size, const std::string& flag) {
  for (const auto id : ids)
    if (id >= vocab_size)
      throw InputError("command line", flag, "token id " + std::to_string(id) + " is outside the vocabulary (size " +
                                                 std::to_string(vocab_size) + ")");
}

at::Tensor prompt_tensor(const ModelOptions& opts) {
  const std::filesystem::path dir(opts.dir);
  const auto vocab_size = load_model_config(dir / "config.json").vocab_size;
  std::vector<std::int64_t> ids;
  std::string flag = "--prompt-ids";
  if (!opts.prompt.empty()) {
    ids = Tokenizer::from_dir(dir).encode(opts.prompt);
    flag = "--prompt";
  } else if (!opts.prompt_ids.empty()) {
    ids = parse_id_list(opts.prompt_ids, flag);
  } else {
    throw InputError("command line", "--prompt-ids", "give the prompt as --prompt-ids or --prompt");
  }
  check_in_vocabulary(ids, vocab_size, flag);
  if (ids.empty()) throw InputError("command line", flag, "encodes to no tokens");
  return at::tensor(ids, at::kLong).unsqueeze(0);
}

}  // namespace linearize::cli
