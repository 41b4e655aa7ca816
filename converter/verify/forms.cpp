// L1: the forms agree. Per layer in fp64 (the exactness claim, to 1e-10), then end to end in the compute dtype
// (rounding only, against a bound derived from the dtype, the prompt length, the depth and the activations).
#include <cmath>
#include <sstream>

#include "converter/linearized.h"
#include "converter/names.h"
#include "converter/verify/check.h"
#include "converter/verify/prompts.h"

namespace linearize::checks {
namespace {

// L1 per layer runs each converted layer's mixer in fp64 on the input the model gave that layer. An output
// entry of any form is a sum of at most T <= kSampleMaxTokens = 512 products (with gate factors <= 1); two
// summation orders of T terms differ by at most ~T u |terms| (Higham's gamma_T, u = 1.1e-16), i.e. ~6e-14
// of the summed magnitudes. 1e-10 of the largest output leaves a factor ~1600 for cancellation (sum of
// |terms| over |sum|), while every real fault (a shifted decay, a missing diagonal block, a window off by
// one, a map on the wrong input) moves outputs by 1e-4 and more. It holds for any depth and width: each
// layer is checked alone, on its own input.
constexpr double kFp64FormsTolerance = 1e-10;
static_assert(kSampleMaxTokens <= 512, "kFp64FormsTolerance's margin is for sums of at most 512 terms");
// A split point of L1's prompts on no chunk or window edge.
constexpr std::int64_t kOffEdgeCut = 37;
// The model-level decode row runs what `generate` does: a chunked prefill of the longest sampled prompt,
// then its last kDriftDecodeTokens tokens one step at a time (every step evicts from a full window cache
// once the prefill is longer than the window). A model step reads every weight once (memory-bound;
// verify's cost: scripts/bench.sh verify), so the row is kept to one chunk of steps; decoding from
// scratch is the per-layer fp64 row's.
constexpr std::int64_t kDriftDecodeTokens = 64;

// Unit roundoff of the compute dtype.
double unit_roundoff(at::ScalarType t) {
  return t == at::kBFloat16 ? std::ldexp(1.0, -8) : t == at::kHalf ? std::ldexp(1.0, -11) : t == at::kDouble ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
}

// One converted layer's fp64 form differences over the sample, and how far its compute-dtype mixer is from them.
struct LayerForms {
  double parallel = 0, recurrent = 0, carry = 0, own_chunked = 0;
};

// The worst layer of one form difference.
struct Worst {
  double value = 0;
  std::int64_t layer = -1;
  void update(double v, std::int64_t l) {
    if (layer < 0 || (!std::isnan(value) && !(v <= value))) value = v, layer = l;
  }
};

// A mixer's output token by token through its recurrent form.
at::Tensor decode(const TokenMixer& mixer, const at::Tensor& x, const std::string& scope) {
  const CaptureFn none;
  auto state = mixer.new_state();
  std::vector<at::Tensor> steps;
  for (std::int64_t t = 0; t < x.size(1); ++t) steps.push_back(mixer.forward(x.narrow(1, t, 1), t, state.get(), MixerCall{none, scope}));
  return at::cat(steps, 1);
}

// The mixer over x in pieces cut at `cuts` (a prompt shorter than all of them in half, or the check would
// compare one call with itself), the state carried; the cuts made are added to `applied`.
at::Tensor split_forward(const TokenMixer& mixer, const at::Tensor& x, const std::string& scope, std::set<std::int64_t> cuts,
                         std::set<std::int64_t>& applied) {
  const CaptureFn none;
  const std::int64_t T = x.size(1);
  if (*cuts.begin() >= T) cuts = {T / 2};
  auto split = mixer.new_state();
  std::vector<at::Tensor> pieces;
  std::int64_t from = 0;
  for (const auto cut : cuts) {
    if (cut <= from || cut >= T) continue;
    applied.insert(cut);
    pieces.push_back(mixer.forward(x.narrow(1, from, cut - from), from, split.get(), MixerCall{none, scope}));
    from = cut;
  }
  pieces.push_back(mixer.forward(x.narrow(1, from, T - from), from, split.get(), MixerCall{none, scope}));
  return at::cat(pieces, 1);
}

// Layer `layer`'s mixer rebuilt in fp64, in every form on each sampled input of that layer; `decode_tokens`:
// the prompts (by index) that also run token by token, and how many of their tokens.
LayerForms layer_forms(const CausalLM& model, std::int64_t layer, const std::vector<at::Tensor>& inputs,
                       const std::map<std::size_t, std::int64_t>& decode_tokens, const std::set<std::int64_t>& cuts,
                       std::set<std::int64_t>& applied) {
  const CaptureFn none;
  const auto mixer = rebuild_mixer(model, layer, at::kDouble);
  const auto& own = *model.layer(layer).mixer;
  const auto scope = names::mixer_scope(layer);
  LayerForms f;
  for (std::size_t n = 0; n < inputs.size(); ++n) {
    const auto& captured = inputs[n];
    const auto x = captured.to(at::kDouble);
    const auto chunked = mixer->forward(x, 0, nullptr, MixerCall{none, scope, kernels::MixerForm::chunked});
    f.parallel = worse(f.parallel, relative_error(mixer->forward(x, 0, nullptr, MixerCall{none, scope, kernels::MixerForm::parallel}), chunked));
    f.own_chunked = worse(f.own_chunked, relative_error(own.forward(captured, 0, nullptr, MixerCall{none, scope}), chunked));
    if (const auto it = decode_tokens.find(n); it != decode_tokens.end()) {
      const auto steps = it->second;
      f.recurrent = worse(f.recurrent, relative_error(decode(*mixer, x.narrow(1, 0, steps), scope), chunked.narrow(1, 0, steps)));
    }
    if (x.size(1) < 2) continue;
    f.carry = worse(f.carry, relative_error(split_forward(*mixer, x, scope, cuts, applied), chunked));
  }
  return f;
}

// L1 per layer, fp64: every converted layer's mixer, rebuilt in fp64 from the model's own weights, run in
// its parallel, chunked and recurrent forms and with the prompt split into pieces carrying the state, on the
// input that layer receives in the model (captured from the compute-dtype forward). The exactness claim.
void check_layer_forms(const CausalLM& model, const SampleForward& sample, double tolerance, ReportBuilder& r) {
  const auto converted = converted_layers(model.config());
  if (converted.empty()) return;
  const auto decoded = decode_sample(sample.prompts);
  const std::map<std::size_t, std::int64_t> decode_tokens(decoded.begin(), decoded.end());
  std::int64_t sampled = 0, decoded_tokens = 0;
  for (const auto& [prompt, tokens] : decoded) decoded_tokens += tokens;
  for (const auto& p : sample.prompts) sampled += static_cast<std::int64_t>(p.size());
  // Where split prompts are cut: a chunk boundary, each window's edge, and a point on no boundary.
  const auto edges = sequence_edges(model.config());
  std::set<std::int64_t> cuts = edges.windows, applied;
  cuts.insert({kOffEdgeCut, edges.chunk});
  Worst parallel, recurrent, carry;
  for (const auto layer : converted) {
    const auto f = layer_forms(model, layer, sample.layer_inputs.at(layer), decode_tokens, cuts, applied);
    parallel.update(f.parallel, layer);
    recurrent.update(f.recurrent, layer);
    carry.update(f.carry, layer);
    r.report.layer_forms.push_back({{"layer", layer},
                                    {"fp64_parallel_vs_chunked", f.parallel},
                                    {"fp64_recurrent_vs_chunked", f.recurrent},
                                    {"fp64_split_vs_one_call", f.carry},
                                    {dtype_name(model.options().dtype) + "_chunked_vs_fp64", f.own_chunked}});
  }
  std::string cut_list;
  for (const auto c : applied) cut_list += (cut_list.empty() ? "" : ", ") + std::to_string(c);
  if (cut_list.empty()) cut_list = "nothing (no prompt of 2 tokens or more)";
  const auto where = [&](const Worst& w, std::int64_t positions) {
    return "worst layer " + std::to_string(w.layer) + " of " + std::to_string(converted.size()) + " converted; " +
           std::to_string(positions) + " positions";
  };
  r.add("per layer fp64: parallel == chunked", parallel.value, "<=", tolerance, where(parallel, sampled));
  r.add("per layer fp64: recurrent == chunked", recurrent.value, "<=", tolerance, where(recurrent, decoded_tokens));
  r.add("per layer fp64: split prompt, carried state == one call", carry.value, "<=", tolerance,
        where(carry, sampled) + "; cut at " + cut_list);
}

// L1 end to end, in the compute dtype: chunked prefill vs the parallel form vs decode steps after a chunked
// prefill, and a prompt split in two with the state carried, through the whole model. The forms are exact (the fp64 rows
// above); here they differ by rounding only, and the bound says how much rounding a model of this depth and
// activation scale may show, derived rather than a constant a deeper model outgrows:
//   - one form's sum over T terms and another order of it differ by ~u sqrt(T) of the largest term
//     (rounding errors of a long sum add like a random walk), u the compute dtype's unit roundoff;
//   - that error is relative to the largest activation of the residual stream, while the logits depend on
//     the typical channels: an outlier channel A = max|h| / rms(h) times the rest (massive activations)
//     makes the same absolute error A times larger relative to what matters;
//   - each of the L layers adds its own through the residual stream (L, the worst case of sqrt(L)).
// bound = 4 u sqrt(T) L A, with 4 for the constants of the rounding model (one rounding per multiply and
// add, the normalisation after the sum). A fault that the fp64 rows would miss changes logits by far more.
// Returns the bound, which L2 applies when it cannot ask for bit identity.
double check_drift(const CausalLM& model, const SampleForward& sample, ReportBuilder& r) {
  // Every form's runs go through the model together, layer by layer (a streamed model reads each layer once):
  // the parallel form of each prompt, each prompt of 2 tokens or more as two prefills carrying the state, and the
  // longest prompt decoded as `generate` does, a chunked prefill then one step per token (the logits of the
  // position each step feeds).
  std::vector<SequenceRun> runs;
  std::int64_t longest = 0, decode_prompt = -1;
  for (std::size_t n = 0; n < sample.prompts.size(); ++n) {
    const auto ids = as_batch(sample.prompts[n], model.options().device);
    const std::int64_t T = ids.size(1);
    if (T > longest) longest = T, decode_prompt = static_cast<std::int64_t>(n);
    runs.push_back({ids, {}, kernels::MixerForm::parallel, {}});
    if (T < 2) continue;
    runs.push_back({ids, {T / 2, T - T / 2}, kernels::MixerForm::chunked, {}});
  }
  // Prefill, then decode the last tokens of the longest prompt one step each (a one-token prompt has nothing to decode).
  const auto steps = std::min<std::int64_t>(kDriftDecodeTokens, longest - 1);
  const auto prefix = longest - steps;
  if (steps > 0) {
    std::vector<std::int64_t> pieces{prefix};
    pieces.resize(static_cast<std::size_t>(steps), 1);
    const auto& ids = sample.prompts[static_cast<std::size_t>(decode_prompt)];
    runs.push_back({as_batch(ids, model.options().device).narrow(1, 0, longest - 1), std::move(pieces), kernels::MixerForm::chunked, {}});
  }
  const auto logits = model.run_layer_major(runs);
  double parallel = 0, recurrent = 0, carry = 0;
  std::size_t next = 0;
  for (std::size_t n = 0; n < sample.prompts.size(); ++n) {
    const auto& chunked = sample.logits[n];
    parallel = worse(parallel, relative_error(logits[next++][0], chunked));
    if (sample.prompts[n].size() < 2) continue;  // no split run
    carry = worse(carry, relative_error(logits[next++][0][1], chunked[chunked.size(0) - 1]));
  }
  if (steps > 0)
    recurrent = relative_error(logits[next][0], sample.logits[static_cast<std::size_t>(decode_prompt)].narrow(0, prefix - 1, steps));
  const double u = unit_roundoff(model.options().dtype);
  const auto layers = static_cast<double>(model.config().num_hidden_layers);
  const double bound = 4 * u * std::sqrt(static_cast<double>(longest)) * layers * sample.outlier_ratio;
  std::ostringstream how;
  how << "bound 4 u sqrt(T) L A: u " << format_value(u) << ", T " << longest << ", L " << layers << ", A "
      << format_value(sample.outlier_ratio);
  const auto dtype = dtype_name(model.options().dtype);
  r.add("drift in " + dtype + ": parallel form vs chunked (logits)", parallel, "<=", bound, how.str());
  r.add("drift in " + dtype + ": recurrent decode after a chunked prefill vs chunked (logits)", recurrent, "<=", bound,
        std::to_string(steps) + " steps after a " + std::to_string(prefix) + "-token prefill");
  r.add("drift in " + dtype + ": split prompt, carried state vs one prefill", carry, "<=", bound);
  return bound;
}

}  // namespace

SampleForward run_sample(const CausalLM& model, Prompts prompts) {
  SampleForward out;
  out.prompts = std::move(prompts);
  const auto converted = converted_layers(model.config());
  const std::set<std::int64_t> wanted(converted.begin(), converted.end());
  const auto capture = [&](const std::string& name, const at::Tensor& t) {
    const auto what = names::parse_capture(name);
    if (!what) return;
    if (what->what == names::Capture::attn_in && wanted.count(what->layer)) out.layer_inputs[what->layer].push_back(t.detach());
    if (what->what != names::Capture::out) return;
    const auto h = t.detach().to(at::kDouble);
    const double rms = h.pow(2).mean().sqrt().item<double>();
    if (rms > 0) out.outlier_ratio = worse(out.outlier_ratio, h.abs().max().item<double>() / rms);
  };
  out.logits = forward_prompts(model, out.prompts, kernels::MixerForm::chunked,
                               [&capture](std::size_t, const std::string& name, const at::Tensor& t) { capture(name, t); });
  return out;
}

const Check kLayerFormsCheck{"L1", "L1 per layer fp64", kModel | kSample, [](VerifyContext& c) {
                              check_layer_forms(*c.model, *c.sample, kFp64FormsTolerance, c.report);
                            }};
const Check kDriftCheck{"L1", "L1 drift", kModel | kSample,
                        [](VerifyContext& c) { c.drift_bound = check_drift(*c.model, *c.sample, c.report); }};

}  // namespace linearize::checks
