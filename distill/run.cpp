#include "distill/run.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>
#include <torch/optim/adamw.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "converter/linearized.h"
#include "converter/names.h"
#include "converter/next_token.h"
#include "converter/model/lora.h"
#include "distill/attention_transfer.h"
#include "distill/checkpoint.h"
#include "distill/data.h"
#include "distill/layer_inputs.h"
#include "distill/metrics.h"
#include "distill/schedule.h"
#include "distill/stage2_loss.h"
#include "distill/stop_flag.h"
#include "formats/atomic_file.h"
#include "formats/checkpoint.h"
#include "formats/error.h"
#include "formats/json_file.h"
#include "formats/peft_adapter.h"
#include "formats/tokenizer.h"

namespace linearize {
namespace fs = std::filesystem;
namespace {

constexpr const char* kConfigSource = "run config";

// A conversion left by an earlier run must be of this run's recipe with the same resolved parameters.
void check_conversion(const ModelConfig& converted, const ModelConfig& source, const RunConfig& config) {
  const auto expected = resolve_recipe_params(find_recipe(config.recipe.name, kConfigSource, "recipe.name"),
                                              config.recipe.params, source, "recipe.params");
  const auto& stored = converted.linearize;
  if (stored.value("recipe", std::string()) != config.recipe.name || stored.value("params", nlohmann::json()) != expected)
    throw InputError(converted.source, "linearize",
                     "this conversion (" + stored.value("recipe", std::string()) + ", " + stored.value("params", nlohmann::json()).dump() +
                         ") is not the run's recipe (" + config.recipe.name + ", " + expected.dump() +
                         "): remove the directory or use another out");
}

TokenDataset make_dataset(const RunConfig& config, const ModelConfig& model) {
  const fs::path tokenizer_dir = config.data.tokenizer.empty() ? fs::path(config.model) : fs::path(config.data.tokenizer);
  const auto tokenizer = Tokenizer::from_dir(tokenizer_dir);
  std::vector<Document> documents;
  for (const auto& file : config.data.files) {
    auto read = read_documents(file, &tokenizer);
    documents.insert(documents.end(), std::make_move_iterator(read.begin()), std::make_move_iterator(read.end()));
  }
  std::int64_t eos = -1;
  if (const auto id = tokenizer.eos_id()) eos = *id;
  else if (!model.eos_token_ids.empty()) eos = model.eos_token_ids.front();
  else throw InputError(tokenizer_dir.string(), "eos_token", "neither the tokenizer nor the model config names an EOS token");
  DataOptions options;
  options.seq_len = config.data.seq_len;
  options.batch_size = config.data.batch_size;
  options.max_seq_len = model.max_position_embeddings;
  options.vocab_size = model.vocab_size;
  options.eos_id = eos;
  options.validation_fraction = config.data.validation_fraction;
  options.seed = config.seed;
  return TokenDataset(std::move(documents), options, "data.files");
}

QualityFigures evaluate_quality(const CausalLM& student, const CausalLM& source, const std::vector<Batch>& batches) {
  at::NoGradGuard no_grad;
  double teacher_nll = 0, student_nll = 0, kl = 0;
  std::int64_t count = 0;
  for (const auto& batch : batches) {
    const auto ids = batch.input_ids.to(source.options().device);
    // -100 labels carry no loss.
    const auto labels = shifted_targets(batch.labels).to(ids.device());
    const auto mask = labels.ne(-100);
    const auto teacher = shifted_log_probs(source.forward(ids), at::kFloat, mask);
    const auto pupil = shifted_log_probs(student.forward(ids), at::kFloat, mask);
    const auto targets = labels.index({mask});
    teacher_nll += nll_sum(teacher, targets).item<double>();
    student_nll += nll_sum(pupil, targets).item<double>();
    kl += kl_per_row(teacher, pupil).sum().item<double>();
    count += targets.size(0);
  }
  const auto n = static_cast<double>(std::max<std::int64_t>(count, 1));
  return {std::exp(teacher_nll / n), std::exp(student_nll / n), kl / n};
}

struct ValidationLoss {
  double loss = 0;
  std::vector<double> layer_loss;
};

ValidationLoss validation_transfer_loss(const CausalLM& student, const CausalLM& source, const std::vector<Batch>& batches,
                                        const Stage1Config& stage) {
  at::NoGradGuard no_grad;
  ValidationLoss total;
  for (const auto& batch : batches) {
    const auto r = attention_transfer_loss(student, source, batch.input_ids.to(source.options().device), stage.factor, stage.loss);
    total.loss += r.loss.item<double>();
    total.layer_loss.resize(r.layer_loss.size());
    for (std::size_t i = 0; i < r.layer_loss.size(); ++i) total.layer_loss[i] += r.layer_loss[i];
  }
  const auto n = static_cast<double>(batches.size());
  total.loss /= n;
  for (auto& v : total.layer_loss) v /= n;
  return total;
}

// bf16 autocast over a micro-batch's forward (DESIGN section 7: bf16 on CUDA by default, fp32 on CPU unless
// asked): autocast's op lists run matmuls in bf16 and reductions, softmaxes and losses in fp32; weights,
// trainables and AdamW's moments stay fp32. The backward runs outside it, as torch.autocast recommends.
class AutocastScope {
 public:
  AutocastScope(bool enabled, at::DeviceType device) : enabled_(enabled), device_(device) {
    if (!enabled_) return;
    at::autocast::set_autocast_dtype(device_, at::kBFloat16);
    at::autocast::set_autocast_enabled(device_, true);
  }
  ~AutocastScope() {
    if (!enabled_) return;
    at::autocast::set_autocast_enabled(device_, false);
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  at::DeviceType device_;
};

bool uses_autocast(const DeviceConfig& device) {
  return device.dtype == ComputeDtype::kBf16 || (device.dtype == ComputeDtype::kAuto && device.type == DeviceType::kCuda);
}

// One stage's micro-batch loss: the differentiable total, for stage 1 each trained layer's part, and the
// tokens it covered.
struct StageLoss {
  at::Tensor loss;
  std::vector<double> layer_values;
  std::int64_t tokens = 0;
};

// What a stage trains and how: its optimiser's tensors, every tensor a checkpoint of it keeps (stage 2
// also keeps stage 1's result), its loss and its validation (which adds to a metrics record and returns
// the figure a plateau schedule watches).
struct StagePlan {
  std::string name;  // "stage1", "stage2"
  const Optimization* optim = nullptr;
  std::int64_t first_step = 0;  // the global step before this stage's first
  NamedTensors params;
  NamedTensors saved;
  std::vector<std::int64_t> layers;  // stage 1: the trained layers, in the order of layer_values
  // The loss of micro-batch `micro` of the stage (0, 1, ... in step order: what a layer-wise plan indexes
  // its cached rows by; the others draw their next batch from the data stream).
  std::function<StageLoss(std::int64_t micro)> loss;
  std::function<std::optional<double>(nlohmann::json& record)> validate;
};

// Stops the run on a non-finite loss or gradient, naming the step, the layer and the tensor.
void check_finite(const StagePlan& plan, std::int64_t step, double loss, const std::vector<double>& layer_values,
                  const CheckpointManager& checkpoints) {
  std::string what;
  for (const auto& [name, tensor] : plan.params) {
    if (tensor.grad().defined() && !at::isfinite(tensor.grad()).all().item<bool>()) {
      what = "non-finite gradient of " + name + " (layer " + std::to_string(names::layer_of(name).value_or(-1)) + ")";
      break;
    }
  }
  if (what.empty() && !std::isfinite(loss)) {
    for (std::size_t i = 0; i < plan.layers.size() && i < layer_values.size(); ++i)
      if (!std::isfinite(layer_values[i])) {
        what = "non-finite attention-transfer loss of layer " + std::to_string(plan.layers[i]);
        break;
      }
    if (what.empty()) what = "non-finite loss";
  }
  if (what.empty()) return;
  const auto last = checkpoints.latest();
  throw TrainingDiverged(plan.name + " step " + std::to_string(step) + ": " + what + " (loss " + std::to_string(loss) +
                         "); the step was not applied; last good checkpoint: " +
                         (last ? last->string() : std::string("none")));
}

}  // namespace

double clip_gradients(const NamedTensors& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> squares;
  for (const auto& [name, tensor] : params)
    if (tensor.grad().defined()) squares.push_back(tensor.grad().pow(2).sum());
  const double norm = squares.empty() ? 0.0 : at::stack(squares).sum().sqrt().item<double>();
  if (max_norm > 0 && norm > max_norm) {
    const double coef = max_norm / (norm + 1e-6);
    for (const auto& [name, tensor] : params)
      if (tensor.grad().defined()) tensor.grad().mul_(coef);
  }
  return norm;
}

namespace {

// The stage-2 loss's counterpart on the validation figures (what the plateau schedule watches).
double stage2_validation_loss(const QualityFigures& q, Stage2Loss kind) {
  const double ce = std::log(q.student_perplexity);
  return kind == Stage2Loss::kCe ? ce : kind == Stage2Loss::kKl ? q.kl : ce + q.kl;
}

// <out>/model: the converted directory with the trained tensors. Weights first, config.json last (a
// directory counts as a model once config.json is there); the copied tensors keep their sha256 record.
// Stage 2's adapters go to <out>/model/adapter (PEFT) or, with `merge`, into the weights (fp32 merge,
// finiteness checked), and config.json's linearize.lora_merged lists the merged tensors so verify knows
// they are no longer the source's.
void export_model(const fs::path& converted, const fs::path& out, const NamedTensors& trained,
                  const std::vector<std::shared_ptr<LoraLinear>>& adapters, const RunConfig& config) {
  fs::create_directories(out);
  fs::remove(out / "config.json");
  fs::remove_all(out / kPeftAdapterDir);
  for (const auto& entry : fs::directory_iterator(converted)) {
    const auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || name == "config.json" || name == kSingleWeightsFile || name == kVerifyLogitsFile ||
        name == kVerifyReportFile)
      continue;
    fs::copy_file(entry.path(), out / name, fs::copy_options::overwrite_existing);
  }
  const bool merge = config.stage2.merge && !adapters.empty();
  std::map<std::string, at::Tensor> replaced;
  for (const auto& [name, tensor] : trained) replaced[name] = tensor;
  nlohmann::json merged_names = nlohmann::json::array();
  if (merge) {
    for (const auto& lora : adapters) {
      replaced[names::weight_of(lora->path())] = lora->merge();
      merged_names.push_back(names::weight_of(lora->path()));
    }
  }
  const auto file = SafetensorsFile::open(converted / kSingleWeightsFile);
  auto metadata = file.metadata();
  if (merge) {
    auto copied = nlohmann::json::parse(metadata.at(kCopiedTensorsMetadataKey));
    for (const auto& name : merged_names) copied.erase(name.get<std::string>());
    metadata[kCopiedTensorsMetadataKey] = copied.dump();
  }
  NamedTensors tensors;
  for (const auto& name : file.names()) {
    at::Tensor value = file.tensor(name);
    if (const auto it = replaced.find(name); it != replaced.end())
      value = it->second.detach().to(at::kCPU, value.scalar_type()).contiguous();
    tensors.emplace_back(name, value);
  }
  write_safetensors(out / kSingleWeightsFile, tensors, metadata);
  auto model_config = read_json_file(converted / "config.json");
  if (merge) {
    const auto& lora = config.stage2.lora;
    model_config["linearize"]["lora_merged"] = {
        {"r", lora.r}, {"alpha", lora.alpha}, {"rslora", lora.rslora}, {"tensors", merged_names}};
  } else if (!adapters.empty()) {
    PeftAdapter adapter;
    const auto& lora = config.stage2.lora;
    adapter.config = {lora.r, lora.alpha, lora.dropout, lora.rslora, lora.targets, out.string()};
    for (const auto& module : adapters) adapter.modules.push_back(module->to_peft());
    write_peft_adapter(out / kPeftAdapterDir, adapter);
  }
  write_file_atomic(out / "config.json", model_config.dump(2) + "\n");
}

std::vector<nlohmann::json> read_records(const fs::path& path) {
  std::vector<nlohmann::json> records;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) records.push_back(nlohmann::json::parse(line));
  return records;
}

void write_report(const fs::path& out, const RunConfig& config, const DistillResult& result,
                  const std::vector<std::int64_t>& layers) {
  Report report;
  report.title = "linearize distill: " + config.recipe.name + " on " + config.model;
  report.summary = {{"model", config.model}, {"recipe", config.recipe.name}, {"steps", std::to_string(result.step)}};
  auto figure = [](double v) { return std::to_string(v); };
  if (result.initial_transfer_loss && result.final_transfer_loss) {
    report.summary.emplace_back("stage 1 validation loss", figure(*result.initial_transfer_loss) + " -> " +
                                                               figure(*result.final_transfer_loss));
  }
  const std::vector<std::pair<std::string, std::optional<QualityFigures>>> columns{
      {"training-free", result.before}, {"after stage 1", result.after_stage1}, {"final", result.after}};
  for (const auto& [label, q] : columns) {
    if (!q) continue;
    report.summary.emplace_back("perplexity, " + label, figure(q->student_perplexity) + " (teacher " +
                                                           figure(q->teacher_perplexity) + ")");
    report.summary.emplace_back("KL(teacher || student), " + label, figure(q->kl));
  }
  std::map<std::string, LineChart> curves;
  std::vector<double> first_layers, last_layers;
  for (const auto& r : read_records(out / "metrics.jsonl")) {
    const auto stage = r.value("stage", std::string("stage1"));
    auto& curve = curves.try_emplace(stage, LineChart{stage == "stage2" ? "stage 2: LoRA" : "stage 1: attention transfer (" + stage + ")",
                                                      "optimiser step", "loss", true, {{"training", {}}, {"validation", {}}}})
                      .first->second;
    const auto step = static_cast<double>(r.value("step", std::int64_t{0}));
    if (r.contains("loss")) curve.series[0].points.emplace_back(step, r["loss"].get<double>());
    if (r.contains("val_loss")) curve.series[1].points.emplace_back(step, r["val_loss"].get<double>());
    if (r.contains("val_layer_loss")) {
      last_layers = r["val_layer_loss"].get<std::vector<double>>();
      if (first_layers.empty()) first_layers = last_layers;
    }
  }
  for (auto& [stage, curve] : curves) report.curves.push_back(std::move(curve));
  if (!layers.empty()) {
    const auto loss_name = to_string(config.stage1.loss);
    BarChart bars{"per-layer stage 1 loss (" + loss_name + ", validation)", loss_name, {}, {{"before", first_layers}, {"after", last_layers}}};
    for (const auto layer : layers) bars.labels.push_back("layer " + std::to_string(layer));
    report.bars.push_back(std::move(bars));
  }
  write_report_html(out / "report.html", report);
}

// The tensors of `saved` named in `params`, in params' order (a stage-2 checkpoint also holds stage 1's).
NamedTensors select(const NamedTensors& saved, const NamedTensors& params) {
  NamedTensors picked;
  for (const auto& [name, tensor] : params)
    for (const auto& entry : saved)
      if (entry.first == name) picked.push_back(entry);
  return picked;
}

// Shared by both stages: the data stream, the checkpoints, the records and the stop flag.
struct TrainingContext {
  const RunConfig& config;
  const DistillOptions& options;
  TokenDataset& data;
  CheckpointManager& checkpoints;
  MetricsLog& metrics;
  StopFlag& stop;
  at::Device device;
};

// Runs `plan` from global step `result.step` to the end of its stage (or a stop), resuming the optimiser
// and schedule from `resumed` when it was saved inside this stage. Returns false when stopped.
bool train_stage(const StagePlan& plan, const TrainingContext& ctx, const std::optional<TrainingState>& resumed,
                 const std::string& resumed_from, DistillResult& result) {
  const auto& optim = *plan.optim;
  const std::int64_t last_step = plan.first_step + optim.steps;
  std::vector<at::Tensor> handles;
  for (const auto& [name, tensor] : plan.params) handles.push_back(tensor);
  torch::optim::AdamW optimizer(handles, torch::optim::AdamWOptions(optim.lr).weight_decay(optim.weight_decay));
  LrSchedule schedule(optim);
  const bool resuming = resumed && resumed->step > plan.first_step;
  if (resuming) {
    load_adamw(optimizer, plan.params, resumed->optimizer, resumed_from);
    schedule.restore(resumed->scheduler, resumed_from);
  }

  auto save = [&] {
    TrainingState state;
    state.step = result.step;
    for (const auto& [name, tensor] : plan.saved) state.trainables.emplace_back(name, tensor.detach());
    state.optimizer = save_adamw(optimizer, plan.params);
    state.scheduler = schedule.to_json();
    state.data_position = ctx.data.position().to_json();
    state.config_yaml = ctx.config.dump();
    state.rng = capture_rng();
    return ctx.checkpoints.save(state);
  };
  if (!resuming) {
    nlohmann::json record{{"stage", plan.name}, {"step", plan.first_step}};
    plan.validate(record);
    ctx.metrics.append(record);
  }

  const bool live_progress = ProgressReporter::is_tty(ctx.options.progress);
  ProgressReporter progress(ctx.options.progress, live_progress);
  progress.start(plan.name, result.step - plan.first_step, optim.steps);
  std::int64_t tokens = 0;
  while (result.step < last_step) {
    const std::int64_t step = result.step + 1;
    const double lr = schedule.lr(step - plan.first_step);
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    if (ctx.options.poison_step && *ctx.options.poison_step == step) {
      at::NoGradGuard no_grad;
      plan.params.front().second.view({-1}).narrow(0, 0, 1).fill_(std::numeric_limits<double>::quiet_NaN());
    }
    optimizer.zero_grad();
    double loss = 0;
    std::vector<double> layer_values;
    const auto accum = static_cast<double>(optim.grad_accum);
    for (std::int64_t micro = 0; micro < optim.grad_accum; ++micro) {
      StageLoss r;
      {
        const AutocastScope autocast(uses_autocast(ctx.config.device), ctx.device.type());
        r = plan.loss((step - plan.first_step - 1) * optim.grad_accum + micro);
      }
      (r.loss / accum).backward();
      loss += r.loss.item<double>() / accum;
      layer_values.resize(r.layer_values.size());
      for (std::size_t i = 0; i < r.layer_values.size(); ++i) layer_values[i] += r.layer_values[i] / accum;
      tokens += r.tokens;
    }
    check_finite(plan, step, loss, layer_values, ctx.checkpoints);
    const double grad_norm = clip_gradients(plan.params, optim.clip);
    optimizer.step();
    result.step = step;

    if (step % ctx.config.log_every == 0 || step == last_step) {
      nlohmann::json record{{"stage", plan.name}, {"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm}};
      if (!layer_values.empty()) record["layer_loss"] = layer_values;
      const auto val = plan.validate(record);
      schedule.observe(val ? *val : loss);  // plateau: the validation loss, the training loss without a split
      ctx.metrics.append(record);
    }
    // A terminal line is rewritten every step; a log gets a line per log step only.
    if (live_progress || step % ctx.config.log_every == 0 || step == last_step)
      progress.update(step - plan.first_step, loss, tokens);
    if (ctx.stop.requested()) {
      progress.finish();
      result.checkpoint = save();
      result.stopped = true;
      return false;
    }
    if (step % ctx.config.checkpoint.every == 0 || step == last_step) result.checkpoint = save();
  }
  progress.finish();
  return true;
}

}  // namespace

DistillResult run_distill(const DistillOptions& options) {
  const RunConfig& config = options.config;
  const fs::path out = config.out, converted = out / "converted";
  CheckpointManager checkpoints(config.checkpoint.dir.empty() ? out / "checkpoints" : fs::path(config.checkpoint.dir),
                                config.checkpoint.keep);
  std::optional<TrainingState> resumed;
  std::string resumed_from;
  if (options.resume) {
    const auto latest = checkpoints.latest();
    if (!latest) throw InputError(checkpoints.root().string(), "--resume", "holds no complete checkpoint to resume from");
    resumed = CheckpointManager::load(*latest);
    resumed_from = latest->string();
  } else if (checkpoints.latest()) {
    throw InputError(checkpoints.root().string(), "--resume",
                     "holds checkpoints of an earlier run: pass --resume to continue it, or remove the directory");
  }

  if (!fs::exists(converted / "config.json")) {
    ConvertOptions convert;
    convert.source = config.model;
    convert.out = converted;
    convert.recipe = config.recipe.name;
    convert.params = config.recipe.params;
    convert.params_origin = "recipe.params";
    convert.force = true;  // a directory without config.json is an interrupted conversion
    convert_checkpoint(convert);
    spdlog::info("converted {} with {} into {}", config.model, config.recipe.name, converted.string());
  }
  LoadOptions load;
  load.device = config.device.type == DeviceType::kCuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  CausalLM student = load_model(converted, load);
  const CausalLM source = load_model(config.model, load);  // the teacher: its attention, hidden states and logits
  check_conversion(student.config(), source.config(), config);
  TokenDataset data = make_dataset(config, source.config());
  const auto validation = data.validation_batches();

  // Stage 1's tensors exist (and are exported) whether or not stage 1 trains them.
  const NamedTensors stage1_params = make_stage1_trainable(student);
  const auto& stage1 = config.stage1;
  if (stage1.enabled && stage1_params.empty())
    throw InputError(kConfigSource, "stage1.enabled", "recipe " + config.recipe.name + " adds no trainable tensors; set it to false");
  if (stage1.enabled) check_stage1_loss(student, stage1.loss);
  std::vector<std::int64_t> layers;  // the converted layers, in the order of the per-layer losses
  for (const auto& [name, tensor] : stage1_params)
    if (layers.empty() || layers.back() != *names::layer_of(name)) layers.push_back(*names::layer_of(name));
  // Layer-wise, each layer trains stage1.steps steps of its own, one layer after another.
  const bool layerwise = stage1.mode == Stage1Mode::kLayerwise;
  const std::int64_t stage1_steps =
      stage1.enabled ? stage1.optim.steps * (layerwise ? static_cast<std::int64_t>(layers.size()) : 1) : 0;

  DistillResult result;
  // The training-free figures, from the student as converted: before a checkpoint's tensors replace its
  // own, so a resumed run's report keeps them (they draw no random numbers).
  if (!validation.empty()) {
    result.before = evaluate_quality(student, source, validation);
    if (stage1.enabled) result.initial_transfer_loss = validation_transfer_loss(student, source, validation, stage1).loss;
  }
  if (resumed) {
    copy_trainables(stage1_params, select(resumed->trainables, stage1_params), resumed_from);
    data.restore(DataPosition::from_json(resumed->data_position, resumed_from));
    restore_rng(resumed->rng);
    result.step = resumed->step;
    spdlog::info("resuming from {} (step {})", resumed_from, result.step);
  } else {
    at::manual_seed(config.seed);  // LoRA's dropout draws from the global generators
    fs::remove(out / "metrics.jsonl");
  }
  MetricsLog metrics(out / "metrics.jsonl", resumed ? std::optional<std::int64_t>(result.step) : std::nullopt);
  StopFlag stop;
  const TrainingContext ctx{config, options, data, checkpoints, metrics, stop, load.device};

  if (stage1.enabled && result.step < stage1_steps) {
    // Validation records every layer's loss; a layer-wise plan's schedule watches its own layer's.
    auto validate_layers = [&](nlohmann::json& record, std::optional<std::size_t> layer_index) {
      if (validation.empty()) return std::optional<double>{};
      const auto v = validation_transfer_loss(student, source, validation, stage1);
      record["val_loss"] = v.loss;
      record["val_layer_loss"] = v.layer_loss;
      return std::optional<double>{layer_index ? v.layer_loss[*layer_index] : v.loss};
    };
    if (!layerwise) {
      StagePlan plan;
      plan.name = "stage1";
      plan.optim = &stage1.optim;
      plan.params = plan.saved = stage1_params;
      plan.layers = layers;
      plan.loss = [&](std::int64_t) {
        const auto ids = data.next_batch().input_ids.to(load.device);
        auto r = attention_transfer_loss(student, source, ids, stage1.factor, stage1.loss);
        return StageLoss{r.loss, std::move(r.layer_loss), ids.numel()};
      };
      plan.validate = [&](nlohmann::json& record) { return validate_layers(record, std::nullopt); };
      if (!train_stage(plan, ctx, resumed, resumed_from, result)) return result;
    } else {
      // Block-wise (DESIGN section 7): the teacher's input and output of every converted layer, for every
      // sequence stage 1 trains on, cached once in HDF5; each layer then trains alone from its rows.
      const fs::path cache_path = out / "layer_cache.h5";
      const std::int64_t micro_batches = stage1.optim.steps * stage1.optim.grad_accum;
      if (!fs::exists(cache_path)) {
        std::vector<at::Tensor> batches;
        for (std::int64_t i = 0; i < micro_batches; ++i) batches.push_back(data.next_batch().input_ids.to(load.device));
        const auto rows = write_layer_cache(cache_path, source, layers, batches);
        spdlog::info("cached the inputs of {} layers for {} sequences in {}", layers.size(), rows, cache_path.string());
      }
      const LayerCache cache(cache_path, layers, source.config().hidden_size);
      const std::int64_t batch = config.data.batch_size;
      if (cache.rows() != micro_batches * batch)
        throw InputError(cache_path.string(), "rows", "holds " + std::to_string(cache.rows()) + " sequences, the run trains on " +
                                                          std::to_string(micro_batches * batch) + ": remove the file");
      for (std::size_t j = 0; j < layers.size(); ++j) {
        StagePlan plan;
        plan.name = "stage1.layer" + std::to_string(layers[j]);
        plan.optim = &stage1.optim;
        plan.first_step = static_cast<std::int64_t>(j) * stage1.optim.steps;
        if (result.step >= plan.first_step + stage1.optim.steps) continue;  // trained before a resume
        for (const auto& entry : stage1_params)
          if (names::layer_of(entry.first) == layers[j]) plan.params.push_back(entry);
        plan.saved = stage1_params;
        plan.layers = {layers[j]};
        plan.loss = [&, layer = layers[j]](std::int64_t micro) {
          auto r = layerwise_transfer_loss(student, source, cache, layer, micro * batch, (micro + 1) * batch,
                                           stage1.factor, stage1.loss);
          return StageLoss{r.loss, std::move(r.layer_loss), batch * cache.seq_len()};
        };
        plan.validate = [&, j](nlohmann::json& record) { return validate_layers(record, j); };
        if (!train_stage(plan, ctx, resumed, resumed_from, result)) return result;
      }
    }
    if (!validation.empty()) {
      result.final_transfer_loss = validation_transfer_loss(student, source, validation, stage1).loss;
      if (config.stage2.enabled) result.after_stage1 = evaluate_quality(student, source, validation);
    }
  }
  for (const auto& [name, tensor] : stage1_params) tensor.requires_grad_(false);  // frozen from here on

  std::vector<std::shared_ptr<LoraLinear>> adapters;
  if (config.stage2.enabled) {
    const auto& lora = config.stage2.lora;
    // A's init comes from its own generator: a resume (which restores the global generators for dropout)
    // then draws nothing from them before its first step.
    adapters = attach_lora(student, lora.targets, {lora.r, lora.alpha, lora.dropout, lora.rslora},
                           at::make_generator<at::CPUGeneratorImpl>(config.seed));
    StagePlan plan;
    plan.name = "stage2";
    plan.optim = &config.stage2.optim;
    plan.first_step = stage1_steps;
    for (const auto& adapter : adapters) {
      plan.params.emplace_back(adapter->a_name(), adapter->a());
      plan.params.emplace_back(adapter->b_name(), adapter->b());
    }
    plan.saved = stage1_params;
    plan.saved.insert(plan.saved.end(), plan.params.begin(), plan.params.end());
    if (resumed && resumed->step > stage1_steps) copy_trainables(plan.params, select(resumed->trainables, plan.params), resumed_from);
    const auto kind = config.stage2.loss;
    auto set_training = [&](bool training) {
      for (const auto& adapter : adapters) adapter->set_training(training);
    };
    plan.loss = [&](std::int64_t) {
      const auto batch = data.next_batch();
      set_training(true);
      const auto ids = batch.input_ids.to(load.device);
      auto loss = stage2_loss(student, source, ids, batch.labels.to(load.device), kind);
      set_training(false);
      return StageLoss{loss, {}, ids.numel()};
    };
    plan.validate = [&](nlohmann::json& record) {
      if (validation.empty()) return std::optional<double>{};
      const auto q = evaluate_quality(student, source, validation);
      const double loss = stage2_validation_loss(q, kind);
      record["val_loss"] = loss;
      record["val_perplexity"] = q.student_perplexity;
      record["val_kl"] = q.kl;
      return std::optional<double>{loss};
    };
    if (!train_stage(plan, ctx, resumed, resumed_from, result)) return result;
  }

  if (!validation.empty()) result.after = evaluate_quality(student, source, validation);
  result.export_dir = out / "model";
  export_model(converted, result.export_dir, stage1_params, adapters, config);
  VerifyOptions verify;
  verify.max_kl = config.verify.max_kl;
  verify.min_top1 = config.verify.min_top1;
  verify.min_gen_agree = config.verify.min_gen_agree;
  result.verify = record_and_verify(result.export_dir, fs::path(config.model), verify);
  write_report(out, config, result, config.stage1.enabled ? layers : std::vector<std::int64_t>{});
  return result;
}

}  // namespace linearize
