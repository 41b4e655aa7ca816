#include "converter/verify.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "converter/linearized.h"
#include "converter/model/weights.h"
#include "formats/checkpoint.h"
#include "formats/error.h"
#include "formats/safetensors.h"
#include "formats/sha256.h"

namespace linearize {
namespace {

// fp32 forms of the same function differ in summation order and in how gate cumsums are exponentiated:
// ~1e-6 of the largest logit through a few layers. 1e-4 (DESIGN section 6) leaves a margin of ~100 and
// still catches a wrong mask, decay or state hand-over, which move logits by 1e-2 and more.
constexpr double kFormsTolerance = 1e-4;
// Layers kept as softmax run the very same operations as the source, on the same inputs: only the
// grouping of identical fp32 work may differ; 1e-5 relative.
constexpr double kExactTolerance = 1e-5;

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

// L1: chunked prefill == parallel form == token-by-token recurrent decode; state carried across a split.
void check_forms(const CausalLM& model, const std::vector<std::vector<std::int64_t>>& prompts, ReportBuilder& r) {
  double parallel = 0, recurrent = 0, carry = 0;
  for (const auto& p : prompts) {
    const auto ids = as_batch(p, model.options().device);
    const auto chunked = model.forward(ids, {}, kernels::MixerForm::chunked)[0];
    parallel = std::max(parallel, relative_error(model.forward(ids, {}, kernels::MixerForm::parallel)[0], chunked));
    auto state = model.new_state();
    std::vector<at::Tensor> rows;
    for (std::int64_t t = 0; t < ids.size(1); ++t) rows.push_back(model.step(ids.select(1, t), state)[0]);
    recurrent = std::max(recurrent, relative_error(at::stack(rows), chunked));
    auto split = model.new_state();
    const std::int64_t half = ids.size(1) / 2;
    model.prefill(ids.narrow(1, 0, half), split);
    const auto last = model.prefill(ids.narrow(1, half, ids.size(1) - half), split)[0];
    carry = std::max(carry, relative_error(last, chunked[ids.size(1) - 1]));
  }
  r.add("L1", "parallel form == chunked prefill (logits)", parallel, "<=", kFormsTolerance);
  r.add("L1", "recurrent decode == chunked prefill (logits)", recurrent, "<=", kFormsTolerance);
  r.add("L1", "split prompt, carried state == one prefill", carry, "<=", kFormsTolerance);
}

// L2: the logits recorded at export come back: bit-identical on the same device, dtype and threads.
void check_reload(const std::filesystem::path& dir, const CausalLM& model, ReportBuilder& r) {
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
    worst = std::max(worst, exact ? (got.to(at::kFloat) - expected).abs().max().item<double>() : relative_error(got, expected));
  }
  if (exact) r.add("L2", "reload reproduces the recorded logits (bit-identical)", worst, "==", 0);
  else r.add("L2", "reload reproduces the recorded logits (other device/dtype/threads)", worst, "<=", kFormsTolerance);
}

// What L3 and L4 need from the source, per prompt: its logits and named intermediates. Computed before
// the model is loaded, so verify holds one model in memory at a time.
struct SourceOutputs {
  std::vector<at::Tensor> logits;                            // [T, vocab]
  std::vector<std::map<std::string, at::Tensor>> captured;  // layers.{i}.out / attn_in / attn_out
};

SourceOutputs run_source(const std::filesystem::path& dir, const ModelConfig& config, const LoadOptions& load,
                         const std::vector<std::vector<std::int64_t>>& prompts) {
  const auto source = load_model(dir, load);
  if (source.config().num_hidden_layers != config.num_hidden_layers || source.config().vocab_size != config.vocab_size)
    throw InputError(dir.string(), "config.json", "is not this model's source (layers or vocabulary differ)");
  warm_up(source, prompts);
  SourceOutputs out;
  for (const auto& p : prompts) {
    std::map<std::string, at::Tensor> seen;
    const auto keep = [&seen](const std::string& name, const at::Tensor& t) {
      for (const char* suffix : {".out", ".attn_in", ".attn_out"}) {
        const std::string s(suffix);
        if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0 && name.rfind("layers.", 0) == 0)
          seen[name] = t;
      }
    };
    out.logits.push_back(source.forward(as_batch(p, source.options().device), keep)[0]);
    out.captured.push_back(std::move(seen));
  }
  return out;
}

// L3: layers kept as softmax attention compute exactly what the source layer computes on the same input.
void check_exactness(const CausalLM& model, const SourceOutputs& source, ReportBuilder& r) {
  const auto kept = model.config().linearize.is_null()
                        ? std::vector<std::int64_t>{}
                        : model.config().linearize.value("softmax_layers", std::vector<std::int64_t>{});
  if (kept.empty()) return;
  double worst = 0;
  for (const auto& seen : source.captured) {
    for (const auto layer : kept) {
      const std::string scope = "layers." + std::to_string(layer);
      const CaptureFn none;
      const auto out = model.layers()[static_cast<std::size_t>(layer)].mixer->forward(
          seen.at(scope + ".attn_in"), 0, nullptr, MixerCall{none, scope + ".mixer"});
      worst = std::max(worst, relative_error(out, seen.at(scope + ".attn_out")));
    }
  }
  r.add("L3", "softmax_layers reproduce the source layer outputs", worst, "<=", kExactTolerance);
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
                                            if (name.size() > 4 && name.compare(name.size() - 4, 4, ".out") == 0) mod_h[name] = t;
                                          })[0].to(at::kDouble),
                                    -1);
    const auto kl = (ls.exp() * (ls - lm)).sum(-1);  // KL(source || model) per position
    for (std::int64_t t = 0; t < kl.size(0); ++t) kls.push_back(kl[t].item<double>());
    agree += ls.argmax(-1).eq(lm.argmax(-1)).sum().item<double>();
    positions += static_cast<double>(kl.size(0));
    const auto next = ids[0].narrow(0, 1, ids.size(1) - 1).to(at::kCPU).unsqueeze(1);
    nll_source -= ls.narrow(0, 0, ids.size(1) - 1).to(at::kCPU).gather(1, next).sum().item<double>();
    nll_model -= lm.narrow(0, 0, ids.size(1) - 1).to(at::kCPU).gather(1, next).sum().item<double>();
    targets += static_cast<double>(ids.size(1) - 1);
    for (std::int64_t i = 0; i < layers; ++i) {
      const auto name = "layers." + std::to_string(i) + ".out";
      auto& e = layer_error[static_cast<std::size_t>(i)];
      e = std::max(e, relative_error(mod_h.at(name), source.captured[n].at(name)));
    }
  }
  std::sort(kls.begin(), kls.end());
  double mean_kl = 0;
  for (const double k : kls) mean_kl += k;
  mean_kl /= static_cast<double>(kls.size());
  const double p99 = kls[static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(kls.size()))) - 1];
  const double top1 = agree / positions;
  const double ppl_ratio = std::exp((nll_model - nll_source) / targets);
  if (options.max_kl) r.add("L4", "mean KL(source || model)", mean_kl, "<=", *options.max_kl);
  else r.info("L4", "mean KL(source || model)", mean_kl);
  r.info("L4", "p99 KL(source || model)", p99);
  if (options.min_top1) r.add("L4", "top-1 agreement with the source", top1, ">=", *options.min_top1);
  else r.info("L4", "top-1 agreement with the source", top1);
  r.info("L4", "perplexity ratio (model / source) on the prompts", ppl_ratio);
  std::int64_t first_over = -1;
  for (std::int64_t i = 0; i < layers; ++i) {
    const double e = layer_error[static_cast<std::size_t>(i)];
    r.report.layers.push_back({{"layer", i}, {"relative_error", e}, {"over_budget", e > options.layer_budget}});
    if (first_over < 0 && e > options.layer_budget) first_over = i;
  }
  r.info("L4", "first layer whose hidden-state error exceeds " + format_value(options.layer_budget),
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

std::vector<std::vector<std::int64_t>> builtin_verify_prompts(std::int64_t vocab_size) {
  std::uint64_t x = 0x9E3779B97F4A7C15ULL;  // splitmix64: the same ids everywhere
  std::vector<std::vector<std::int64_t>> prompts(2);
  for (auto& p : prompts)
    for (int i = 0; i < 96; ++i) {
      x += 0x9E3779B97F4A7C15ULL;
      std::uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      p.push_back(static_cast<std::int64_t>((z ^ (z >> 31)) % static_cast<std::uint64_t>(vocab_size)));
    }
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
  const auto prompts = options.prompts.empty() ? builtin_verify_prompts(config.vocab_size) : options.prompts;
  for (const auto& p : prompts)
    for (const auto id : p)
      if (id < 0 || id >= config.vocab_size)
        throw InputError("command line", "prompt", "token id " + std::to_string(id) + " is outside the vocabulary");
  std::optional<SourceOutputs> source;
  if (options.source) source = run_source(*options.source, config, options.load, prompts);
  const auto model = load_model(options.model, options.load);
  warm_up(model, prompts);
  check_forms(model, prompts, r);
  check_reload(options.model, model, r);
  if (source) {
    check_exactness(model, *source, r);
    check_agreement(model, *source, options, prompts, r);
  }
  return std::move(r.report);
}

}  // namespace linearize
