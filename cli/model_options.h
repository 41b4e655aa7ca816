// Flags shared by the commands that run a model: --model, --device, --dtype and the prompt.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "converter/model/causal_lm.h"

namespace CLI {
class App;
}

namespace linearize::cli {

struct ModelOptions {
  std::string dir;
  std::string device = "cpu";
  std::string dtype = "fp32";
  std::string stream_layers = "auto";  // on, off, auto: on when the weights would take over half the available memory
  std::string prompt_ids;  // "1,2,3"
  std::string prompt;      // text, encoded with the model's tokenizer.json
};

void add_model_options(CLI::App& cmd, ModelOptions& opts);
// --device and --dtype alone (add_model_options includes them).
void add_device_options(CLI::App& cmd, ModelOptions& opts);
// --stream-layers (add_model_options includes it): for the commands that run a model through its layers in
// order (forward, generate, verify, convert's verify); layer selection and distill hold every layer.
void add_stream_option(CLI::App& cmd, ModelOptions& opts);

// What --device and --dtype ask for; --device cuda without a usable GPU is bad input (exit 2). `model`: the
// checkpoint whose size --stream-layers auto weighs (empty: no streaming).
LoadOptions load_options(const ModelOptions& opts, const std::filesystem::path& model = {});

// Loads the model as asked; --device cuda without a usable GPU is bad input (exit 2), not a crash.
CausalLM load_model(const ModelOptions& opts);

// Every id below vocab_size, else InputError("command line", flag, ...) naming the first one outside.
void check_in_vocabulary(const std::vector<std::int64_t>& ids, std::int64_t vocab_size, const std::string& flag);

// --prompt-ids parsed (or --prompt encoded with the model's tokenizer, BOS included) and checked against
// the vocabulary of the model's config.json, before any weights are loaded: int64 [1, T].
at::Tensor prompt_tensor(const ModelOptions& opts);

}  // namespace linearize::cli
