// The source model on verify's prompts: what L3 and L4 compare the model with.
#include "converter/linearized.h"
#include "converter/names.h"
#include "converter/verify/check.h"
#include "converter/verify/prompts.h"
#include "formats/error.h"

namespace linearize::checks {

Prompts greedy(const CausalLM& model, const Prompts& prompts, std::int64_t tokens) {
  Prompts out(prompts.size());
  if (prompts.empty() || tokens <= 0) return out;
  std::vector<at::Tensor> rows;
  for (const auto& p : prompts) rows.push_back(at::tensor(p, at::kLong));
  auto state = model.new_state();
  auto next = model.prefill(at::stack(rows).to(model.options().device), state).argmax(-1);
  for (std::int64_t i = 0; i < tokens; ++i) {
    const auto ids = next.to(at::kCPU);
    for (std::size_t b = 0; b < prompts.size(); ++b) out[b].push_back(ids[static_cast<std::int64_t>(b)].item<std::int64_t>());
    if (i + 1 < tokens) next = model.step(next, state).argmax(-1);
  }
  return out;
}

SourceOutputs run_source(const std::filesystem::path& dir, const ModelConfig& config, const VerifyOptions& options,
                         const Prompts& prompts) {
  const auto source = load_model(dir, options.load);
  if (source.config().num_hidden_layers != config.num_hidden_layers || source.config().vocab_size != config.vocab_size)
    throw InputError(dir.string(), "config.json", "is not this model's source (layers or vocabulary differ)");
  warm_up(source, prompts);
  // L4 compares every layer's output; L3 needs the input and output of the layers kept as softmax. Only
  // those are held (for every prompt: with --text they add up).
  std::set<std::string> wanted;
  for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) wanted.insert(names::capture(i, names::Capture::out));
  for (const auto layer : kept_softmax_layers(config)) {
    wanted.insert(names::capture(layer, names::Capture::attn_in));
    wanted.insert(names::capture(layer, names::Capture::attn_out));
  }
  SourceOutputs out;
  out.captured.resize(prompts.size());
  out.logits = forward_prompts(source, prompts, kernels::MixerForm::chunked,
                               [&out, &wanted](std::size_t n, const std::string& name, const at::Tensor& t) {
                                 if (wanted.count(name)) out.captured[n][name] = t;
                               });
  out.continuations = greedy(source, generation_prompts(prompts), options.thresholds.generate_tokens);
  return out;
}

}  // namespace linearize::checks
