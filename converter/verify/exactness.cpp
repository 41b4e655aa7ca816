// L3: layers kept as softmax attention compute exactly what the source layer computes on the same input.
#include "converter/names.h"
#include "converter/verify/check.h"

namespace linearize::checks {
namespace {

// Layers kept as softmax run the very same operations as the source, on the same inputs: only the
// grouping of identical fp32 work may differ; 1e-5 relative.
constexpr double kExactTolerance = 1e-5;

constexpr Projection kAttentionProjections[] = {Projection::q, Projection::k, Projection::v, Projection::o};

// The kept layers whose attention stage 2 trained (a LoRA adapter on q/k/v/o, attached or merged): no longer
// the source's by design, so left out of the exact comparison, and named.
std::set<std::int64_t> trained_layers(const CausalLM& model, const std::vector<std::int64_t>& kept) {
  const auto merged = merged_lora_tensors(model.config());
  std::set<std::int64_t> trained;
  for (const auto layer : kept)
    for (const auto p : kAttentionProjections)
      if (model.layer(layer).adapters->has(p) || merged.count(names::weight(layer, layer_module(p))))
        trained.insert(layer);
  return trained;
}

void check_exactness(const CausalLM& model, const SourceOutputs& source, double tolerance, ReportBuilder& r) {
  const auto kept = kept_softmax_layers(model.config());
  if (kept.empty()) return;
  const auto trained = trained_layers(model, kept);
  std::string trained_list;
  for (const auto layer : trained) trained_list += (trained_list.empty() ? "" : ", ") + std::to_string(layer);
  const auto trained_detail = trained.empty() ? std::string() : "layers " + trained_list + " left out: their attention carries trained LoRA";
  if (trained.size() == kept.size()) {
    r.info("softmax_layers reproduce the source layer outputs", 0, trained_detail);
    return;
  }
  const CaptureFn none;
  double worst = 0;
  // Layer by layer, every prompt at each (a streamed model copies each kept layer in once).
  for (const auto layer : kept) {
    if (trained.count(layer)) continue;
    const auto& mixer = *model.layer(layer).mixer;
    for (const auto& seen : source.captured) {
      const auto out = mixer.forward(seen.at(names::capture(layer, names::Capture::attn_in)), 0, nullptr,
                                     MixerCall{none, names::mixer_scope(layer)});
      worst = worse(worst, relative_error(out, seen.at(names::capture(layer, names::Capture::attn_out))));
    }
  }
  r.add("softmax_layers reproduce the source layer outputs", worst, "<=", tolerance, trained_detail);
}

}  // namespace

const Check kExactnessCheck{"L3", "L3 and L4", kModel | kSource,
                            [](VerifyContext& c) { check_exactness(*c.model, *c.source, kExactTolerance, c.report); }};

}  // namespace linearize::checks
