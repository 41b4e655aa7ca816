#include "converter/verify.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "converter/linearized.h"
#include "converter/model/weights.h"
#include "converter/names.h"
#include "converter/next_token.h"
#include "converter/onnx_export.h"
#include "converter/verify_text.h"
#include "formats/checkpoint.h"
#include "formats/error.h"
#include "formats/mapped_file.h"
#include "formats/markup.h"
#include "formats/onnx_model.h"
#include "formats/safetensors.h"
#include "formats/sha256.h"
#include "formats/tokenizer.h"

namespace linearize {
namespace {

// L1 per layer runs each converted layer's mixer in fp64 on the input the model gave that layer. An output
// entry of any form is a sum of at most T <= kSampleMaxTokens = 512 products (with gate factors <= 1); two
// summation orders of T terms differ by at most ~T u |terms| (Higham's gamma_T, u = 1.1e-16), i.e. ~6e-14
// of the summed magnitudes. 1e-10 of the largest output leaves a factor ~1600 for cancellation (sum of
// |terms| over |sum|), while every real fault (a shifted decay, a missing diagonal block, a window off by
// one, a map on the wrong input) moves outputs by 1e-4 and more. It holds for any depth and width: each
// layer is checked alone, on its own input.
constexpr double kFp64FormsTolerance = 1e-10;
// L1 runs on a bounded sample of the prompts, so its cost does not grow with --text: each prompt's first
// kSampleMaxTokens tokens (the parallel form is O(T^2)), prompts taken in order until kSampleTokenBudget
// tokens. The built-in prompts fit whole; L2 and L4 see every prompt.
constexpr std::int64_t kSampleMaxTokens = 512;
constexpr std::int64_t kSampleTokenBudget = 640;
// The per-layer token-by-token runs (one call per token and layer: ~1 ms each on a 135M model on 2 cores)
// take the longest sampled prompts first, until kDecodeTokenBudget tokens (the last one cut short): the
// built-in set's longest prompt (2 max(W, C) + C + 1 = 193 tokens at the default window and chunk, the
// window cache evicting twice) whole.
constexpr std::int64_t kDecodeTokenBudget = 200;
// The model-level decode row runs what `generate` does: a chunked prefill of the longest sampled prompt,
// then its last kDriftDecodeTokens tokens one step at a time (every step evicts from a full window cache
// once the prefill is longer than the window). A model step reads every weight once (~40 ms for a 135M
// fp32 model on this machine: memory-bound), so the row is kept to one chunk of steps; decoding from
// scratch is the per-layer fp64 row's.
constexpr std::int64_t kDriftDecodeTokens = 64;
// Layers kept as softmax run the very same operations as the source, on the same inputs: only the
// grouping of identical fp32 work may differ; 1e-5 relative.
constexpr double kExactTolerance = 1e-5;

// Where the forms' and the caches' behaviour changes, which verify's prompts and split points must cross: the
// chunked form's chunk (kernels' default, the chunk every converted mixer's chunked form runs) and every window
// the model has (its recipe's window parameters, RecipeParamRole::window, and the source's sliding layers).
struct SequenceEdges {
  std::int64_t chunk = kernels::LinearAttentionOptions{}.chunk_size;
  std::set<std::int64_t> windows;
};

SequenceEdges sequence_edges(const ModelConfig& config) {
  SequenceEdges edges;
  if (!config.linearize.is_null()) {
    const auto of = recipe_of(config);
    for (const auto& param : of.recipe->params)
      if (param.role == RecipeParamRole::window) edges.windows.insert(of.params.at(param.name).get<std::int64_t>());
  }
  if (config.sliding_window) edges.windows.insert(*config.sliding_window);
  return edges;
}

// A split point of L1's prompts on no chunk or window edge.
constexpr std::int64_t kOffEdgeCut = 37;

// Unit roundoff of the compute dtype.
double unit_roundoff(at::ScalarType t) {
  return t == at::kBFloat16 ? std::ldexp(1.0, -8) : t == at::kHalf ? std::ldexp(1.0, -11) : t == at::kDouble ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
}

// The larger of two errors, NaN counting as the largest (std::max would drop a NaN that comes second).
double worse(double a, double b) { return std::isnan(a) || b <= a ? a : b; }

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  const auto e = expected.to(at::kDouble);
  const double scale = e.abs().max().item<double>();
  return (actual.to(at::kDouble) - e).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

at::Tensor as_batch(const std::vector<std::int64_t>& ids, const at::Device& device) {
  return at::tensor(ids, at::kLong).unsqueeze(0).to(device);
}

std::string dtype_name(at::ScalarType t) { return t == at::kBFloat16 ? "bf16" : t == at::kHalf ? "fp16" : "fp32"; }

std::string format_value(double v) {
  std::ostringstream s;
  if (v != 0 && (std::abs(v) < 1e-3 || std::abs(v) >= 1e5)) s << std::scientific << std::setprecision(3) << v;
  else s << std::setprecision(6) << v;
  return s.str();
}

class ReportBuilder {
 public:
  CheckResult& add(std::string level, std::string name, double value, std::string comparison, double tolerance,
                   std::string detail = "") {
    CheckResult c{std::move(level), std::move(name), value, comparison, tolerance, true, true, std::move(detail)};
    if (comparison == "<=") c.passed = value <= tolerance;
    else if (comparison == ">=") c.passed = value >= tolerance;
    else if (comparison == "==") c.passed = value == tolerance;
    if (std::isnan(value)) c.passed = false;
    report.checks.push_back(std::move(c));
    return report.checks.back();
  }
  void info(std::string level, std::string name, double value, std::string detail = "") {
    report.checks.push_back({std::move(level), std::move(name), value, "", 0, false, true, std::move(detail)});
  }
  VerifyReport report;
};

// One discarded forward before any recorded or compared one: the first GEMMs of a process may run while
// MKL's threads are still starting and split the work differently (seen on a busy machine: 1 verify in 12
// rounded its first forward differently; none in 36 with this warm-up).
void warm_up(const CausalLM& model, const std::vector<std::vector<std::int64_t>>& prompts) {
  model.forward(as_batch(prompts.front(), model.options().device));
}

// L0: the files hold what the config promises, finite, and the copies are the source's bytes.
bool check_structure(const std::filesystem::path& dir, const ModelConfig& config, const VerifyOptions& options,
                     ReportBuilder& r) {
  const auto weights = CheckpointWeights::open(dir);
  const auto expected = expected_tensors(config);  // a config that cannot say what to expect is bad input
  try {
    check_tensors(weights, expected);
    r.add("L0", "tensors present with expected shapes", 0, "==", 0);
  } catch (const InputError& e) {
    r.add("L0", "tensors present with expected shapes", 1, "==", 0, e.what());
    return false;
  }
  std::int64_t non_finite = 0;
  std::string first;
  // Every pass over the files below releases each tensor's pages once read, so reading two models' files
  // side by side does not make them both resident.
  for (const auto& name : weights.names()) {
    const auto t = weights.tensor(name);
    const bool finite = !t.is_floating_point() || at::isfinite(t).all().item<bool>();
    weights.release(name);
    if (!finite && non_finite++ == 0) first = name;
  }
  r.add("L0", "tensors finite (no NaN/Inf)", static_cast<double>(non_finite), "==", 0,
        non_finite ? "first: " + first : "");

  const auto& shard = weights.shards().front();
  const auto it = shard.metadata().find(kCopiedTensorsMetadataKey);
  if (!config.linearize.is_null() && it != shard.metadata().end()) {
    std::int64_t changed = 0;
    std::string first_changed;
    const auto recorded = nlohmann::json::parse(it->second);
    for (const auto& [name, hash] : recorded.items()) {
      const auto t = weights.contains(name) ? weights.tensor(name) : at::Tensor();
      const bool same = t.defined() && sha256_hex(t.data_ptr(), t.nbytes()) == hash.get<std::string>();
      if (t.defined()) weights.release(name);
      if (!same && changed++ == 0) first_changed = name;
    }
    r.add("L0", "copied tensors match their recorded sha256", static_cast<double>(changed), "==", 0,
          changed ? "first: " + first_changed : std::to_string(recorded.size()) + " tensors");
  } else if (!config.linearize.is_null()) {
    r.add("L0", "copied tensors match their recorded sha256", 1, "==", 0, "model.safetensors has no recorded hashes");
  }
  if (config.linearize.contains(kHfFilesKey)) {
    // The transformers files run the export elsewhere; a changed one would compute something L5 never checked.
    std::int64_t changed = 0;
    std::string first_changed;
    for (const auto& [name, hash] : config.linearize[kHfFilesKey].items()) {
      const auto path = dir / name;
      const bool same = std::filesystem::is_regular_file(path) && sha256_file(path) == hash.get<std::string>();
      if (!same && changed++ == 0) first_changed = name;
    }
    r.add("L0", "transformers files match their recorded sha256", static_cast<double>(changed), "==", 0,
          changed ? "first: " + first_changed : std::to_string(config.linearize[kHfFilesKey].size()) + " files");
  }
  if (options.source && !config.linearize.is_null()) {
    const auto source = CheckpointWeights::open(*options.source);
    // A distill export with --merge changed these on purpose (stage 2's LoRA folded in).
    std::set<std::string> merged;
    if (config.linearize.contains("lora_merged"))
      for (const auto& name : config.linearize["lora_merged"].value("tensors", nlohmann::json::array())) merged.insert(name.get<std::string>());
    std::int64_t differ = 0;
    std::string first_differ;
    for (const auto& name : source.names()) {
      if (merged.count(name)) continue;
      const auto a = source.tensor(name);
      const auto b = weights.contains(name) ? weights.tensor(name) : at::Tensor();
      const bool same = b.defined() && a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
                        std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
      source.release(name);
      if (b.defined()) weights.release(name);
      if (!same && differ++ == 0) first_differ = name;
    }
    r.add("L0", "copied tensors bit-identical to the source", static_cast<double>(differ), "==", 0,
          differ ? "first: " + first_differ
                 : std::to_string(source.names().size() - merged.size()) + " tensors" +
                       (merged.empty() ? "" : " (" + std::to_string(merged.size()) + " with LoRA merged left out)"));
  }
  return true;
}

// L6 (DESIGN section 6) where the directory holds model.onnx: ONNX's full checker and strict shape inference in
// C++, every weight of the graph byte-identical to model.safetensors (so the graph cannot carry other weights
// than the ones L0-L2 checked), and the graph built from this config's recipe and parameters. Parity in
// onnxruntime is scripts/check_onnx_export.py (no onnxruntime C headers here; README).
void check_onnx(const std::filesystem::path& dir, const ModelConfig& config, ReportBuilder& r) {
  const auto path = dir / kOnnxFileName;
  const auto check = onnx_model::check_file(path);
  r.add("L6", "onnx checker (full) and strict shape inference", check.ok() ? 0 : 1, "==", 0,
        check.ok() ? "opset " + std::to_string(check.opset) + ", " + std::to_string(check.nodes) + " nodes"
                   : (check.checker.empty() ? check.shape_inference : check.checker).substr(0, 200));
  const auto info = onnx_model::read_file_info(path);
  const auto weights = CheckpointWeights::open(dir);
  std::map<std::string, std::shared_ptr<MappedFile>> data_files;
  std::set<std::string> in_graph;
  std::int64_t differ = 0;
  std::string first_differ;
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
    if (!same && differ++ == 0) first_differ = init.name;
  }
  for (const auto& name : weights.names())
    if (!in_graph.count(name) && differ++ == 0) first_differ = name + " (not in the graph)";
  r.add("L6", "onnx weights byte-identical to model.safetensors (or its fp16 rounding)", static_cast<double>(differ), "==", 0,
        differ ? "first: " + first_differ : std::to_string(in_graph.size()) + " tensors");
  if (!config.linearize.is_null()) {
    std::map<std::string, std::string> metadata(info.metadata.begin(), info.metadata.end());
    const auto of = recipe_of(config);
    const auto params = nlohmann::json::parse(metadata[kOnnxParamsKey], nullptr, /*allow_exceptions=*/false);
    const bool same = metadata[kOnnxRecipeKey] == of.recipe->name && params == of.params;
    r.add("L6", "onnx graph built from this recipe and parameters", same ? 0 : 1, "==", 0,
          same ? of.recipe->name : "graph: " + metadata[kOnnxRecipeKey] + " " + metadata[kOnnxParamsKey]);
  }
}

// The L1 prompts that also run token by token, as (index into `sample`, tokens): the longest first until
// kDecodeTokenBudget tokens, the last one taking its first tokens only (a prefix of a causal output is the
// output of the prefix). In prompt order.
std::vector<std::pair<std::size_t, std::int64_t>> decode_sample(const std::vector<std::vector<std::int64_t>>& sample) {
  std::vector<std::size_t> order(sample.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sample[a].size() > sample[b].size(); });
  std::vector<std::pair<std::size_t, std::int64_t>> chosen;
  std::int64_t taken = 0;
  for (const auto i : order) {
    const auto length = std::min(static_cast<std::int64_t>(sample[i].size()), kDecodeTokenBudget - taken);
    if (length <= 0) break;
    chosen.emplace_back(i, length);
    taken += length;
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

std::vector<std::vector<std::int64_t>> l1_sample(const std::vector<std::vector<std::int64_t>>& prompts) {
  std::vector<std::vector<std::int64_t>> sample;
  std::int64_t taken = 0;
  for (const auto& p : prompts) {
    const auto length = std::min<std::int64_t>({static_cast<std::int64_t>(p.size()), kSampleMaxTokens, kSampleTokenBudget - taken});
    if (length <= 0) break;
    sample.emplace_back(p.begin(), p.begin() + length);
    taken += length;
  }
  return sample;
}

// The compute-dtype chunked forward over the L1 sample, run once for both L1 parts: its logits (the drift
// rows' reference), every converted layer's input (what the fp64 rows run on) and the residual stream's
// outlier ratio.
struct SampleForward {
  std::vector<std::vector<std::int64_t>> prompts;
  std::vector<at::Tensor> logits;                                 // [T, vocab] per prompt
  std::map<std::int64_t, std::vector<at::Tensor>> layer_inputs;  // converted layer -> [1, T, hidden] per prompt
  double outlier_ratio = 1;                                       // A = max|h| / rms(h) over the layers' outputs
};

SampleForward run_sample(const CausalLM& model, std::vector<std::vector<std::int64_t>> prompts) {
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
  for (const auto& p : out.prompts)
    out.logits.push_back(model.forward(as_batch(p, model.options().device), capture, kernels::MixerForm::chunked)[0]);
  return out;
}

// L1 per layer, fp64: every converted layer's mixer, rebuilt in fp64 from the model's own weights, run in
// its parallel, chunked and recurrent forms and with the prompt split into pieces carrying the state, on the
// input that layer receives in the model (captured from the compute-dtype forward). The exactness claim.
void check_layer_forms(const CausalLM& model, const SampleForward& sample, ReportBuilder& r) {
  const auto converted = converted_layers(model.config());
  if (converted.empty()) return;
  const auto& prompts = sample.prompts;
  const auto decoded = decode_sample(prompts);
  std::map<std::size_t, std::int64_t> decode_tokens(decoded.begin(), decoded.end());
  std::int64_t sampled = 0, decoded_tokens = 0;
  for (const auto& [prompt, tokens] : decoded) decoded_tokens += tokens;
  for (const auto& p : prompts) sampled += static_cast<std::int64_t>(p.size());
  // Where split prompts are cut: a chunk boundary, each window's edge, and a point on no boundary; a prompt
  // shorter than all of them (--prompt-ids of a few tokens) is cut in half, or the check would compare one
  // call with itself.
  const auto edges = sequence_edges(model.config());
  std::set<std::int64_t> cuts = edges.windows, applied;
  cuts.insert({kOffEdgeCut, edges.chunk});

  struct Worst {
    double value = 0;
    std::int64_t layer = -1;
    void update(double v, std::int64_t l) {
      if (layer < 0 || (!std::isnan(value) && !(v <= value))) value = v, layer = l;
    }
  } parallel, recurrent, carry;
  const CaptureFn none;
  // A mixer's output token by token through its recurrent form.
  const auto decode = [&none](const TokenMixer& mixer, const at::Tensor& x, const std::string& scope) {
    auto state = mixer.new_state();
    std::vector<at::Tensor> steps;
    for (std::int64_t t = 0; t < x.size(1); ++t) steps.push_back(mixer.forward(x.narrow(1, t, 1), t, state.get(), MixerCall{none, scope}));
    return at::cat(steps, 1);
  };
  for (const auto layer : converted) {
    const auto mixer = rebuild_mixer(model, layer, at::kDouble);
    const auto& own = *model.layers()[static_cast<std::size_t>(layer)].mixer;
    const auto scope = names::mixer_scope(layer);
    double layer_parallel = 0, layer_recurrent = 0, layer_carry = 0, own_chunked = 0;
    const auto& inputs = sample.layer_inputs.at(layer);
    for (std::size_t n = 0; n < inputs.size(); ++n) {
      const auto& captured = inputs[n];
      const auto x = captured.to(at::kDouble);
      const std::int64_t T = x.size(1);
      const auto chunked = mixer->forward(x, 0, nullptr, MixerCall{none, scope, kernels::MixerForm::chunked});
      layer_parallel = worse(layer_parallel, relative_error(mixer->forward(x, 0, nullptr, MixerCall{none, scope, kernels::MixerForm::parallel}), chunked));
      own_chunked = worse(own_chunked, relative_error(own.forward(captured, 0, nullptr, MixerCall{none, scope}), chunked));
      if (const auto it = decode_tokens.find(n); it != decode_tokens.end()) {
        const auto steps = it->second;
        layer_recurrent = worse(layer_recurrent, relative_error(decode(*mixer, x.narrow(1, 0, steps), scope), chunked.narrow(1, 0, steps)));
      }
      if (T < 2) continue;
      auto split = mixer->new_state();
      std::vector<at::Tensor> pieces;
      std::int64_t from = 0;
      auto prompt_cuts = cuts;
      if (*prompt_cuts.begin() >= T) prompt_cuts = {T / 2};
      for (const auto cut : prompt_cuts) {
        if (cut <= from || cut >= T) continue;
        applied.insert(cut);
        pieces.push_back(mixer->forward(x.narrow(1, from, cut - from), from, split.get(), MixerCall{none, scope}));
        from = cut;
      }
      pieces.push_back(mixer->forward(x.narrow(1, from, T - from), from, split.get(), MixerCall{none, scope}));
      layer_carry = worse(layer_carry, relative_error(at::cat(pieces, 1), chunked));
    }
    parallel.update(layer_parallel, layer);
    recurrent.update(layer_recurrent, layer);
    carry.update(layer_carry, layer);
    r.report.layer_forms.push_back({{"layer", layer},
                                    {"fp64_parallel_vs_chunked", layer_parallel},
                                    {"fp64_recurrent_vs_chunked", layer_recurrent},
                                    {"fp64_split_vs_one_call", layer_carry},
                                    {dtype_name(model.options().dtype) + "_chunked_vs_fp64", own_chunked}});
  }
  std::string cut_list;
  for (const auto c : applied) cut_list += (cut_list.empty() ? "" : ", ") + std::to_string(c);
  if (cut_list.empty()) cut_list = "nothing (no prompt of 2 tokens or more)";
  const auto where = [&](const Worst& w, std::int64_t positions) {
    return "worst layer " + std::to_string(w.layer) + " of " + std::to_string(converted.size()) + " converted; " +
           std::to_string(positions) + " positions";
  };
  r.add("L1", "per layer fp64: parallel == chunked", parallel.value, "<=", kFp64FormsTolerance, where(parallel, sampled));
  r.add("L1", "per layer fp64: recurrent == chunked", recurrent.value, "<=", kFp64FormsTolerance, where(recurrent, decoded_tokens));
  r.add("L1", "per layer fp64: split prompt, carried state == one call", carry.value, "<=", kFp64FormsTolerance,
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
double check_forms(const CausalLM& model, const SampleForward& sample, ReportBuilder& r) {
  double parallel = 0, recurrent = 0, carry = 0;
  std::int64_t longest = 0, decode_prompt = -1;
  for (std::size_t n = 0; n < sample.prompts.size(); ++n) {
    const auto ids = as_batch(sample.prompts[n], model.options().device);
    const std::int64_t T = ids.size(1);
    if (T > longest) longest = T, decode_prompt = static_cast<std::int64_t>(n);
    const auto& chunked = sample.logits[n];
    parallel = worse(parallel, relative_error(model.forward(ids, {}, kernels::MixerForm::parallel)[0], chunked));
    if (T < 2) continue;
    auto split = model.new_state();
    const std::int64_t half = T / 2;
    model.prefill(ids.narrow(1, 0, half), split);
    const auto last = model.prefill(ids.narrow(1, half, T - half), split)[0];
    carry = worse(carry, relative_error(last, chunked[T - 1]));
  }
  // Prefill, then decode the last tokens one step each (logits of the position each step feeds).
  const auto& ids = sample.prompts[static_cast<std::size_t>(decode_prompt)];
  const auto steps = std::min<std::int64_t>(kDriftDecodeTokens, longest - 1);
  const auto prefix = longest - steps;
  if (steps > 0) {  // a one-token prompt has nothing to decode
    const auto batch = as_batch(ids, model.options().device);
    auto state = model.new_state();
    std::vector<at::Tensor> rows{model.prefill(batch.narrow(1, 0, prefix), state)[0]};
    for (std::int64_t t = prefix; t < longest - 1; ++t) rows.push_back(model.step(batch.select(1, t), state)[0]);
    recurrent = relative_error(at::stack(rows), sample.logits[static_cast<std::size_t>(decode_prompt)].narrow(0, prefix - 1, steps));
  }
  const double u = unit_roundoff(model.options().dtype);
  const auto layers = static_cast<double>(model.config().num_hidden_layers);
  const double bound = 4 * u * std::sqrt(static_cast<double>(longest)) * layers * sample.outlier_ratio;
  std::ostringstream how;
  how << "bound 4 u sqrt(T) L A: u " << format_value(u) << ", T " << longest << ", L " << layers << ", A "
      << format_value(sample.outlier_ratio);
  r.add("L1", "drift in " + dtype_name(model.options().dtype) + ": parallel form vs chunked (logits)", parallel, "<=", bound, how.str());
  r.add("L1", "drift in " + dtype_name(model.options().dtype) + ": recurrent decode after a chunked prefill vs chunked (logits)", recurrent, "<=", bound,
        std::to_string(steps) + " steps after a " + std::to_string(prefix) + "-token prefill");
  r.add("L1", "drift in " + dtype_name(model.options().dtype) + ": split prompt, carried state vs one prefill", carry, "<=", bound);
  return bound;
}

// L2: the logits recorded at export come back: bit-identical on the same device, dtype and threads, else
// within the rounding drift bound of L1 (another thread count or device reorders the same sums).
void check_reload(const std::filesystem::path& dir, const CausalLM& model, double drift_bound, ReportBuilder& r) {
  const auto path = dir / kVerifyLogitsFile;
  // Only an export promises recorded logits; a plain checkpoint without them has no L2 to check.
  if (!std::filesystem::exists(path) && model.config().linearize.is_null()) return;
  if (!std::filesystem::exists(path)) {
    r.add("L2", "reload reproduces the recorded logits", 1, "==", 0, std::string(kVerifyLogitsFile) + " is missing");
    return;
  }
  const auto recorded = SafetensorsFile::open(path);
  const auto& meta = recorded.metadata();
  const auto same = [&](const char* key, const std::string& value) {
    const auto it = meta.find(key);
    return it != meta.end() && it->second == value;
  };
  const bool exact = same("device", model.options().device.str()) && same("dtype", dtype_name(model.options().dtype)) &&
                     same("threads", std::to_string(at::get_num_threads()));
  double worst = 0;
  for (std::int64_t i = 0;; ++i) {
    const auto* ids = recorded.find("prompt." + std::to_string(i) + ".ids");
    if (!ids) break;
    const auto expected = recorded.tensor("prompt." + std::to_string(i) + ".logits");
    const auto got = model.forward(recorded.tensor(ids->name).unsqueeze(0).to(model.options().device))[0].to(at::kCPU);
    worst = worse(worst, exact ? (got.to(at::kFloat) - expected).abs().max().item<double>() : relative_error(got, expected));
  }
  if (exact) r.add("L2", "reload reproduces the recorded logits (bit-identical)", worst, "==", 0);
  else r.add("L2", "reload reproduces the recorded logits (other device/dtype/threads)", worst, "<=", drift_bound);
}

// What L3 and L4 need from the source, per prompt: its logits and named intermediates. Computed before
// the model is loaded, so verify holds one model in memory at a time.
struct SourceOutputs {
  std::vector<at::Tensor> logits;                            // [T, vocab]
  std::vector<std::map<std::string, at::Tensor>> captured;  // layers.{i}.out / attn_in / attn_out
  std::vector<std::vector<std::int64_t>> continuations;      // greedy, one per generation prompt
};

// L4's generation prompts: the first kGenerationPromptTokens tokens of the first few prompts that long
// (one length, so they decode as one batch).
constexpr std::size_t kGenerationPrompts = 4, kGenerationPromptTokens = 24;
std::vector<std::vector<std::int64_t>> generation_prompts(const std::vector<std::vector<std::int64_t>>& prompts) {
  std::vector<std::vector<std::int64_t>> out;
  for (const auto& p : prompts) {
    if (p.size() < kGenerationPromptTokens) continue;
    out.emplace_back(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(kGenerationPromptTokens));
    if (out.size() == kGenerationPrompts) break;
  }
  return out;
}

// Greedy decoding through prefill and the recurrent step (what `generate` does), `tokens` new ids for each
// of the equally long prompts, all in one batch.
std::vector<std::vector<std::int64_t>> greedy(const CausalLM& model, const std::vector<std::vector<std::int64_t>>& prompts,
                                              std::int64_t tokens) {
  std::vector<std::vector<std::int64_t>> out(prompts.size());
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
                         const std::vector<std::vector<std::int64_t>>& prompts) {
  const auto& load = options.load;
  const auto source = load_model(dir, load);
  if (source.config().num_hidden_layers != config.num_hidden_layers || source.config().vocab_size != config.vocab_size)
    throw InputError(dir.string(), "config.json", "is not this model's source (layers or vocabulary differ)");
  warm_up(source, prompts);
  // L4 compares every layer's output; L3 needs the input and output of the layers kept as softmax. Only
  // those are held (for every prompt: with --text they add up).
  std::set<std::string> wanted;
  for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) wanted.insert(names::capture(i, names::Capture::out));
  for (const auto layer : config.linearize.is_null() ? std::vector<std::int64_t>{}
                                                     : config.linearize.value("softmax_layers", std::vector<std::int64_t>{})) {
    wanted.insert(names::capture(layer, names::Capture::attn_in));
    wanted.insert(names::capture(layer, names::Capture::attn_out));
  }
  SourceOutputs out;
  for (const auto& p : prompts) {
    std::map<std::string, at::Tensor> seen;
    const auto keep = [&seen, &wanted](const std::string& name, const at::Tensor& t) {
      if (wanted.count(name)) seen[name] = t;
    };
    out.logits.push_back(source.forward(as_batch(p, source.options().device), keep)[0]);
    out.captured.push_back(std::move(seen));
  }
  out.continuations = greedy(source, generation_prompts(prompts), options.thresholds.generate_tokens);
  return out;
}

// L3: layers kept as softmax attention compute exactly what the source layer computes on the same input.
void check_exactness(const CausalLM& model, const SourceOutputs& source, ReportBuilder& r) {
  const auto kept = model.config().linearize.is_null()
                        ? std::vector<std::int64_t>{}
                        : model.config().linearize.value("softmax_layers", std::vector<std::int64_t>{});
  if (kept.empty()) return;
  // A kept layer whose attention stage 2 trained (a LoRA adapter on q/k/v/o, attached or merged) is no
  // longer the source's by design: it is left out of the exact comparison, and named.
  std::set<std::int64_t> trained;
  for (const auto layer : kept)
    for (const auto p : {Projection::q, Projection::k, Projection::v, Projection::o})
      if (model.layers()[static_cast<std::size_t>(layer)].adapters->has(p)) trained.insert(layer);
  const auto& lin = model.config().linearize;
  std::set<std::string> merged;
  if (lin.contains("lora_merged"))
    for (const auto& name : lin["lora_merged"].value("tensors", nlohmann::json::array())) merged.insert(name.get<std::string>());
  for (const auto layer : kept)
    for (const auto p : {Projection::q, Projection::k, Projection::v, Projection::o})
      if (merged.count(names::weight(layer, layer_module(p)))) trained.insert(layer);
  std::string trained_list;
  for (const auto layer : trained) trained_list += (trained_list.empty() ? "" : ", ") + std::to_string(layer);
  const auto trained_detail = trained.empty() ? std::string() : "layers " + trained_list + " left out: their attention carries trained LoRA";
  if (trained.size() == kept.size()) {
    r.info("L3", "softmax_layers reproduce the source layer outputs", 0, trained_detail);
    return;
  }
  double worst = 0;
  for (const auto& seen : source.captured) {
    for (const auto layer : kept) {
      if (trained.count(layer)) continue;
      const CaptureFn none;
      const auto out = model.layers()[static_cast<std::size_t>(layer)].mixer->forward(
          seen.at(names::capture(layer, names::Capture::attn_in)), 0, nullptr, MixerCall{none, names::mixer_scope(layer)});
      worst = worse(worst, relative_error(out, seen.at(names::capture(layer, names::Capture::attn_out))));
    }
  }
  r.add("L3", "softmax_layers reproduce the source layer outputs", worst, "<=", kExactTolerance, trained_detail);
}

// L4: next-token distributions and hidden states against the source.
void check_agreement(const CausalLM& model, const SourceOutputs& source, const VerifyOptions& options,
                     const std::vector<std::vector<std::int64_t>>& prompts, ReportBuilder& r) {
  std::vector<double> kls;
  double agree = 0, positions = 0, nll_model = 0, nll_source = 0, targets = 0;
  const auto layers = model.config().num_hidden_layers;
  std::vector<double> layer_error(static_cast<std::size_t>(layers), 0.0);
  for (std::size_t n = 0; n < prompts.size(); ++n) {
    const auto ids = as_batch(prompts[n], model.options().device);
    std::map<std::string, at::Tensor> mod_h;
    const auto ls = at::log_softmax(source.logits[n].to(at::kDouble), -1);
    const auto lm = at::log_softmax(model.forward(ids, [&mod_h](const std::string& name, const at::Tensor& t) {
                                            const auto what = names::parse_capture(name);
                                            if (what && what->what == names::Capture::out) mod_h[name] = t;
                                          })[0].to(at::kDouble),
                                    -1);
    const auto kl = kl_per_row(ls, lm);  // KL(source || model) per position, fp64: near-identical models
    for (std::int64_t t = 0; t < kl.size(0); ++t) kls.push_back(kl[t].item<double>());
    agree += ls.argmax(-1).eq(lm.argmax(-1)).sum().item<double>();
    positions += static_cast<double>(kl.size(0));
    const auto next = shifted_targets(ids);
    nll_source += nll_sum(ls.narrow(0, 0, ids.size(1) - 1), next).item<double>();
    nll_model += nll_sum(lm.narrow(0, 0, ids.size(1) - 1), next).item<double>();
    targets += static_cast<double>(ids.size(1) - 1);
    for (std::int64_t i = 0; i < layers; ++i) {
      const auto name = names::capture(i, names::Capture::out);
      auto& e = layer_error[static_cast<std::size_t>(i)];
      e = worse(e, relative_error(mod_h.at(name), source.captured[n].at(name)));
    }
  }
  std::sort(kls.begin(), kls.end());
  double mean_kl = 0;
  for (const double k : kls) mean_kl += k;
  mean_kl /= static_cast<double>(kls.size());
  const double p99 = kls[static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(kls.size()))) - 1];
  const double top1 = agree / positions;
  const double ppl_ratio = std::exp((nll_model - nll_source) / targets);
  if (options.thresholds.max_kl) r.add("L4", "mean KL(source || model)", mean_kl, "<=", *options.thresholds.max_kl);
  else r.info("L4", "mean KL(source || model)", mean_kl);
  r.info("L4", "p99 KL(source || model)", p99);
  if (options.thresholds.min_top1) r.add("L4", "top-1 agreement with the source", top1, ">=", *options.thresholds.min_top1);
  else r.info("L4", "top-1 agreement with the source", top1);
  r.info("L4", "perplexity ratio (model / source) on the prompts", ppl_ratio);

  // Greedy generation: where the model's continuation first leaves the source's (likelihood figures can
  // hide large generative gaps). The value is the mean fraction of tokens before the first divergence.
  const auto gen = generation_prompts(prompts);
  if (!gen.empty() && options.thresholds.generate_tokens > 0) {
    double position_sum = 0;
    std::size_t identical = 0;
    const auto continuations = greedy(model, gen, options.thresholds.generate_tokens);
    for (std::size_t n = 0; n < gen.size(); ++n) {
      const auto& ours = continuations[n];
      const auto& theirs = source.continuations[n];
      const auto first = static_cast<std::size_t>(std::mismatch(ours.begin(), ours.end(), theirs.begin()).first - ours.begin());
      position_sum += static_cast<double>(first);
      identical += first == ours.size();
    }
    const double mean_first = position_sum / static_cast<double>(gen.size());
    const double fraction = mean_first / static_cast<double>(options.thresholds.generate_tokens);
    std::ostringstream detail;
    detail << "mean first divergence at token " << format_value(mean_first) << " of " << options.thresholds.generate_tokens << "; "
           << identical << " of " << gen.size() << " continuations identical";
    if (options.thresholds.min_gen_agree) r.add("L4", "greedy generation agreement (tokens before first divergence)", fraction, ">=", *options.thresholds.min_gen_agree, detail.str());
    else r.info("L4", "greedy generation agreement (tokens before first divergence)", fraction, detail.str());
  }
  std::int64_t first_over = -1;
  for (std::int64_t i = 0; i < layers; ++i) {
    const double e = layer_error[static_cast<std::size_t>(i)];
    r.report.layers.push_back({{"layer", i}, {"relative_error", e}, {"over_budget", e > options.thresholds.layer_budget}});
    if (first_over < 0 && e > options.thresholds.layer_budget) first_over = i;
  }
  r.info("L4", "first layer whose hidden-state error exceeds " + format_value(options.thresholds.layer_budget),
         static_cast<double>(first_over), first_over < 0 ? "none" : "layer " + std::to_string(first_over));
}

}  // namespace

bool VerifyReport::passed() const {
  return std::all_of(checks.begin(), checks.end(), [](const CheckResult& c) { return c.passed; });
}

nlohmann::ordered_json VerifyReport::to_json() const {
  nlohmann::ordered_json j;
  j["passed"] = passed();
  j["checks"] = nlohmann::ordered_json::array();
  for (const auto& c : checks) {
    nlohmann::ordered_json row{{"level", c.level}, {"check", c.name}, {"value", c.value}};
    if (c.enforced) {
      row["comparison"] = c.comparison;
      row["tolerance"] = c.tolerance;
    }
    row["result"] = c.enforced ? (c.passed ? "PASS" : "FAIL") : "INFO";
    if (!c.detail.empty()) row["detail"] = c.detail;
    j["checks"].push_back(row);
  }
  j["layers"] = layers;
  j["layer_forms"] = layer_forms;
  return j;
}

std::string VerifyReport::table() const {
  std::ostringstream out;
  std::size_t width = 5;
  for (const auto& c : checks) width = std::max(width, c.name.size());
  out << "level  " << std::left << std::setw(static_cast<int>(width)) << "check" << "  " << std::setw(12) << "value"
      << "  " << std::setw(14) << "tolerance" << "  result\n";
  for (const auto& c : checks) {
    const std::string tol = c.enforced ? c.comparison + " " + format_value(c.tolerance) : "-";
    out << std::left << std::setw(7) << c.level << std::setw(static_cast<int>(width)) << c.name << "  " << std::setw(12)
        << format_value(c.value) << "  " << std::setw(14) << tol << "  "
        << (c.enforced ? (c.passed ? "PASS" : "FAIL") : "info") << (c.detail.empty() ? "" : "  (" + c.detail + ")") << '\n';
  }
  out << (passed() ? "verify: PASS" : "verify: FAIL") << '\n';
  return out.str();
}

std::string VerifyReport::junit(const std::string& suite) const {
  std::size_t failures = 0;
  for (const auto& c : checks) failures += c.enforced && !c.passed;
  std::ostringstream out;
  out << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"" << escape_markup(suite) << "\" tests=\""
      << checks.size() << "\" failures=\"" << failures << "\">\n";
  for (const auto& c : checks) {
    out << "  <testcase classname=\"verify." << escape_markup(c.level) << "\" name=\"" << escape_markup(c.name) << "\">";
    const std::string value = "value " + format_value(c.value) +
                              (c.enforced ? ", tolerance " + c.comparison + " " + format_value(c.tolerance) : " (reported, not enforced)") +
                              (c.detail.empty() ? "" : "; " + c.detail);
    if (c.enforced && !c.passed) out << "\n    <failure message=\"" << escape_markup(value) << "\" type=\"" << escape_markup(c.level) << "\"/>\n  ";
    else out << "<system-out>" << escape_markup(value) << "</system-out>";
    out << "</testcase>\n";
  }
  out << "</testsuite>\n</testsuites>\n";
  return out.str();
}

VerifyPrompts builtin_verify_prompts(const std::filesystem::path& dir, const ModelConfig& config) {
  // Lengths at the edges of the chunked form's chunks and of every window the model has (the recipe's
  // window branch, the source's sliding layers), and one long enough for a window cache to evict twice.
  const auto [chunk, windows] = sequence_edges(config);
  std::set<std::int64_t> lengths{1, chunk - 1, chunk, chunk + 1};
  std::int64_t widest = chunk;
  for (const auto w : windows) {
    for (const auto l : {w - 1, w, w + 1})
      if (l >= 1) lengths.insert(l);
    widest = std::max(widest, w);
  }
  lengths.insert(2 * widest + chunk + 1);

  VerifyPrompts prompts;
  if (!std::filesystem::exists(dir / "tokenizer.json")) {
    std::uint64_t x = 0x9E3779B97F4A7C15ULL;  // splitmix64: the same ids everywhere
    for (const auto length : lengths) {
      auto& p = prompts.ids.emplace_back();
      for (std::int64_t i = 0; i < length; ++i) {
        x += 0x9E3779B97F4A7C15ULL;
        std::uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        p.push_back(static_cast<std::int64_t>((z ^ (z >> 31)) % static_cast<std::uint64_t>(config.vocab_size)));
      }
    }
    prompts.origin = "random token ids (the model directory has no tokenizer.json)";
    return prompts;
  }
  const auto tokenizer = Tokenizer::from_dir(dir);
  std::vector<std::vector<std::int64_t>> samples;
  // Each sample starts as a document does: with BOS where the tokenizer defines one, whether or not its
  // post-processor adds it (models put their attention sink and massive activations there).
  const auto bos = tokenizer.bos_id();
  for (const auto text : builtin_verify_texts()) {
    auto ids = tokenizer.encode(text);
    if (bos && (ids.empty() || ids.front() != *bos)) ids.insert(ids.begin(), *bos);
    samples.push_back(std::move(ids));
  }
  // Prompt n starts at sample n (mod the count) and runs on into the next samples as far as it must.
  std::size_t n = 0;
  for (const auto length : lengths) {
    auto& p = prompts.ids.emplace_back();
    for (std::size_t s = n++; static_cast<std::int64_t>(p.size()) < length; ++s) {
      const auto& sample = samples[s % samples.size()];
      p.insert(p.end(), sample.begin(), sample.begin() + std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(sample.size()),
                                                                                  length - static_cast<std::ptrdiff_t>(p.size())));
    }
  }
  prompts.origin = "built-in text (prose, code, numbers, non-English)";
  return prompts;
}

VerifyPrompts text_file_prompts(const std::filesystem::path& dir, const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(file.string(), "--text", "cannot be read");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  const auto ids = Tokenizer::from_dir(dir).encode(text);
  VerifyPrompts prompts;
  for (std::size_t i = 0; i < ids.size(); i += 256)
    prompts.ids.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(i),
                             ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), i + 256)));
  if (prompts.ids.empty()) throw InputError(file.string(), "--text", "holds no tokens");
  prompts.origin = "--text " + file.string();
  return prompts;
}

void record_verify_logits(const std::filesystem::path& dir, const CausalLM& model,
                          const std::vector<std::vector<std::int64_t>>& prompts) {
  warm_up(model, prompts);
  NamedTensors tensors;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto ids = as_batch(prompts[i], model.options().device);
    tensors.emplace_back("prompt." + std::to_string(i) + ".ids", ids[0].to(at::kCPU));
    tensors.emplace_back("prompt." + std::to_string(i) + ".logits", model.forward(ids)[0].to(at::kCPU, at::kFloat).contiguous());
  }
  write_safetensors(dir / kVerifyLogitsFile, tensors,
                    {{"device", model.options().device.str()}, {"dtype", dtype_name(model.options().dtype)},
                     {"threads", std::to_string(at::get_num_threads())}});
}

VerifyReport verify_model(const VerifyOptions& options) {
  ReportBuilder r;
  const auto config = load_model_config(options.model / "config.json");
  if (!check_structure(options.model, config, options, r)) return std::move(r.report);
  const auto given = options.prompts.ids.empty() ? builtin_verify_prompts(options.model, config) : options.prompts;
  const auto& prompts = given.ids;
  std::int64_t tokens = 0;
  for (const auto& p : prompts) {
    if (p.empty()) throw InputError(given.origin, "prompt", "is empty");
    tokens += static_cast<std::int64_t>(p.size());
    for (const auto id : p)
      if (id < 0 || id >= config.vocab_size)
        throw InputError(given.origin, "prompt", "token id " + std::to_string(id) + " is outside the vocabulary");
  }
  r.info("L1", "verify prompts", static_cast<double>(prompts.size()),
         given.origin + ", " + std::to_string(tokens) + " tokens");
  auto started = std::chrono::steady_clock::now();
  const auto stage_done = [&](const char* stage) {
    const auto now = std::chrono::steady_clock::now();
    if (options.progress) options.progress(stage, std::chrono::duration<double>(now - started).count());
    started = now;
  };
  std::optional<SourceOutputs> source;
  if (options.source) {
    source = run_source(*options.source, config, options, prompts);
    stage_done("source model on the prompts");
  }
  const auto model = load_model(options.model, options.load);
  warm_up(model, prompts);
  stage_done("load");
  const auto sample = run_sample(model, l1_sample(prompts));
  check_layer_forms(model, sample, r);
  stage_done("L1 per layer fp64");
  const double drift_bound = check_forms(model, sample, r);
  stage_done("L1 drift");
  check_reload(options.model, model, drift_bound, r);
  stage_done("L2");
  if (std::filesystem::exists(options.model / kOnnxFileName)) {
    check_onnx(options.model, config, r);
    stage_done("L6");
  }
  if (source) {
    check_exactness(model, *source, r);
    check_agreement(model, *source, options, prompts, r);
    stage_done("L3 and L4");
  }
  return std::move(r.report);
}

VerifyReport record_and_verify(const std::filesystem::path& dir, const std::filesystem::path& source, VerifyOptions options) {
  {
    const auto model = load_model(dir, options.load);
    record_verify_logits(dir, model, options.prompts.ids.empty() ? builtin_verify_prompts(dir, model.config()).ids : options.prompts.ids);
  }  // one model in memory at a time
  options.model = dir;
  options.source = source;
  return verify_model(options);
}

}  // namespace linearize
