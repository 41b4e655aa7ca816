#include "converter/verify.h"

#include <chrono>
#include <iterator>
#include <string_view>

#include "converter/linearized.h"
#include "converter/onnx_export.h"
#include "converter/verify/check.h"
#include "converter/verify/prompts.h"

namespace linearize {
namespace {

using namespace checks;

// The checks in the order they run and their rows appear. The source runs before the model loads (one model in
// memory at a time), so the checks needing the source come after the model's own without costing memory.
const Check* const kChecks[] = {&kStructureCheck, &kPromptsCheck, &kLayerFormsCheck, &kDriftCheck,
                                &kReloadCheck,    &kOnnxCheck,    &kExactnessCheck,  &kAgreementCheck};

// Wall time since the last stage ended, to VerifyOptions::progress.
class StageClock {
 public:
  explicit StageClock(const VerifyOptions& options) : progress_(options.progress) {}
  // Ends a stage: reported when named (the quick file checks before the first model runs are not).
  void done(std::string_view stage) {
    const auto now = std::chrono::steady_clock::now();
    if (progress_ && !stage.empty()) progress_(std::string(stage), std::chrono::duration<double>(now - started_).count());
    started_ = now;
  }

 private:
  const std::function<void(const std::string&, double)>& progress_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

// Makes what `inputs` name, each once; false when this verification cannot have one of them (no --source, no
// model.onnx, no drift bound).
bool provide(unsigned inputs, VerifyContext& c, StageClock& clock) {
  if ((inputs & kSource) && !c.options.source) return false;
  if ((inputs & kOnnxFile) && !std::filesystem::exists(c.options.model / kOnnxFileName)) return false;
  if ((inputs & kDriftBound) && !c.drift_bound) return false;
  const bool model = inputs & (kModel | kSample);
  if (((inputs & (kPrompts | kSource)) || model) && !c.prompts) c.prompts = checked_prompts(c.options, c.config);
  if (((inputs & kSource) || model) && c.options.source && !c.source) {
    c.source = run_source(*c.options.source, c.config, c.options, c.prompts->ids);
    clock.done("source model on the prompts");
  }
  if (model && !c.model) {
    c.model.emplace(load_model(c.options.model, c.options.load));
    warm_up(*c.model, c.prompts->ids);
    clock.done("load");
  }
  if ((inputs & kSample) && !c.sample) c.sample = run_sample(*c.model, l1_sample(c.prompts->ids));
  return true;
}

}  // namespace

VerifyReport verify_model(const VerifyOptions& options) {
  VerifyContext c(options, load_model_config(options.model / "config.json"));
  StageClock clock(options);
  for (auto it = std::begin(kChecks); it != std::end(kChecks) && !c.stop; ++it) {
    const Check& check = **it;
    if (!provide(check.inputs, c, clock)) continue;
    c.report.level = check.level;
    check.run(c);
    const bool stage_ends = std::next(it) == std::end(kChecks) || std::string_view((*std::next(it))->name) != check.name;
    if (stage_ends) clock.done(check.name);
  }
  return std::move(c.report.report);
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
