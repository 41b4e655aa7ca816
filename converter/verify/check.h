// The checks verify_model runs (converter/verify.h) and what they read. Each level's file here defines its
// checks as entries: the level of the rows it adds, its name, the inputs it reads, and a run that adds those
// rows, each against the threshold it applies (a fixed tolerance beside the check, L1's derived drift bound,
// or the caller's VerifyThresholds). converter/verify.cpp lists the entries in the order they run and report.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "converter/model/causal_lm.h"
#include "converter/verify.h"

namespace linearize::checks {

using Prompts = std::vector<std::vector<std::int64_t>>;

// Rows as checks add them, at the level of the check running: a row with a comparison passes or fails (NaN
// fails), one without is reported only.
class ReportBuilder {
 public:
  void add(std::string name, double value, std::string comparison, double tolerance, std::string detail = "");
  void info(std::string name, double value, std::string detail = "");
  std::string level;  // of the check running (verify_model sets it)
  VerifyReport report;
};

// How many items (tensors, files) differ, and the first of them, as the byte-comparison rows report them.
struct Differences {
  std::int64_t count = 0;
  std::string first;
  void note(bool same, const std::string& name) {
    if (!same && count++ == 0) first = name;
  }
  std::string detail(const std::string& when_none) const { return count ? "first: " + first : when_none; }
};

// The larger of two errors, NaN counting as the largest (std::max would drop a NaN that comes second).
double worse(double a, double b);
// max |actual - expected| / max |expected|, in fp64.
double relative_error(const at::Tensor& actual, const at::Tensor& expected);
at::Tensor as_batch(const std::vector<std::int64_t>& ids, const at::Device& device);
std::string dtype_name(at::ScalarType t);  // "fp32", "bf16", "fp16"

// One discarded forward before any recorded or compared one: the first GEMMs of a process may run while
// MKL's threads are still starting and split the work differently (seen on a busy machine: 1 verify in 12
// rounded its first forward differently; none in 36 with this warm-up). CausalLM::warm_up.
void warm_up(const CausalLM& model, const Prompts& prompts);

// What a capture of forward_prompts is told: the prompt's index, then the capture's name and tensor.
using PromptCaptureFn = std::function<void(std::size_t prompt, const std::string& name, const at::Tensor& t)>;
// Each prompt's logits [T, vocab], every prompt through the model layer by layer (CausalLM::run_layer_major: a
// streamed model reads its weights once for all of them), computing what forward() computes for each.
std::vector<at::Tensor> forward_prompts(const CausalLM& model, const Prompts& prompts,
                                        kernels::MixerForm form = kernels::MixerForm::chunked,
                                        const PromptCaptureFn& capture = {});

// The layers a conversion kept as the source's softmax attention (none for a plain checkpoint), and the
// tensors a distill export changed on purpose (stage 2's LoRA merged in: config.json's linearize.lora_merged).
std::vector<std::int64_t> kept_softmax_layers(const ModelConfig& config);
std::set<std::string> merged_lora_tensors(const ModelConfig& config);

// The compute-dtype chunked forward over L1's sample of the prompts, run once for both L1 checks: its logits
// (the drift rows' reference), every converted layer's input (what the fp64 rows run on) and the residual
// stream's outlier ratio (forms.cpp).
struct SampleForward {
  Prompts prompts;
  std::vector<at::Tensor> logits;                                // [T, vocab] per prompt
  std::map<std::int64_t, std::vector<at::Tensor>> layer_inputs;  // converted layer -> [1, T, hidden] per prompt
  double outlier_ratio = 1;                                      // A = max|h| / rms(h) over the layers' outputs
};
SampleForward run_sample(const CausalLM& model, Prompts prompts);

// What L3 and L4 need from the source, per prompt: its logits, named intermediates and greedy continuations
// (source.cpp). Computed before the model is loaded, so verify holds one model in memory at a time.
struct SourceOutputs {
  std::vector<at::Tensor> logits;                           // [T, vocab]
  std::vector<std::map<std::string, at::Tensor>> captured;  // layers.{i}.out / attn_in / attn_out
  Prompts continuations;                                    // greedy, one per generation prompt
};
SourceOutputs run_source(const std::filesystem::path& dir, const ModelConfig& config, const VerifyOptions& options,
                         const Prompts& prompts);
// Greedy decoding through prefill and the recurrent step (what `generate` does), `tokens` new ids for each
// of the equally long prompts, all in one batch.
Prompts greedy(const CausalLM& model, const Prompts& prompts, std::int64_t tokens);

// What the checks read besides options and config, each made once by verify_model before the first check
// that reads it, in this order.
struct VerifyContext {
  VerifyContext(const VerifyOptions& verify_options, ModelConfig model_config)
      : options(verify_options), config(std::move(model_config)) {}
  const VerifyOptions& options;
  ModelConfig config;                    // options.model's config.json
  std::optional<VerifyPrompts> prompts;  // options.prompts, or the built-in ones; every id in the vocabulary
  std::optional<SourceOutputs> source;   // with options.source, run before the model loads
  std::optional<CausalLM> model;         // options.model, loaded and warmed up
  std::optional<SampleForward> sample;
  std::optional<double> drift_bound;     // L1 drift's bound, which L2 applies off the recording's device/dtype/threads
  ReportBuilder report;
  bool stop = false;                     // set by a check after which none can run (L0: tensors missing)
};

// A check's inputs, a set of these bits. A check whose inputs this verification lacks (no --source, no
// model.onnx) does not run.
enum Input : unsigned {
  kPrompts = 1u << 0,
  kSource = 1u << 1,
  kModel = 1u << 2,
  kSample = 1u << 3,
  kDriftBound = 1u << 4,
  kOnnxFile = 1u << 5,  // options.model / model.onnx
};

struct Check {
  const char* level;  // "L0" .. "L6": the level of every row it adds
  // Its line in the progress log ("" for the quick file checks before the first model runs); adjacent checks
  // of one name share a line.
  const char* name;
  unsigned inputs;
  void (*run)(VerifyContext& c);
};

extern const Check kStructureCheck;    // L0, structure.cpp
extern const Check kPromptsCheck;      // L1's prompts row, prompts.cpp
extern const Check kLayerFormsCheck;   // L1 per layer in fp64, forms.cpp
extern const Check kDriftCheck;        // L1 drift in the compute dtype, forms.cpp
extern const Check kReloadCheck;       // L2, reload.cpp
extern const Check kOnnxCheck;         // L6, onnx.cpp
extern const Check kExactnessCheck;    // L3, exactness.cpp
extern const Check kAgreementCheck;    // L4, agreement.cpp

}  // namespace linearize::checks
