#include "distill/run.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "converter/layer_selection.h"
#include "converter/linearized.h"
#include "converter/names.h"
#include "converter/model/lora.h"
#include "distill/attention_transfer.h"
#include "distill/checkpoint.h"
#include "distill/data.h"
#include "distill/distributed.h"
#include "distill/eval.h"
#include "distill/evaluate.h"
#include "distill/export.h"
#include "distill/layer_inputs.h"
#include "distill/metrics.h"
#include "distill/report.h"
#include "distill/schedule.h"
#include "distill/stage2_loss.h"
#include "distill/stop_flag.h"
#include "formats/atomic_file.h"
#include "distill/teacher_cache.h"
#include "formats/directory_lock.h"
#include "formats/error.h"
#include "formats/sha256.h"
#include "formats/tokenizer.h"

namespace linearize {
namespace fs = std::filesystem;
namespace {

constexpr const char* kConfigSource = "run config";

// The bound of a collective that waits by design for as long as work takes elsewhere (rank 0 converting an
// 8B checkpoint; the ranks that finished their stage-1 block waiting for the others), where device.timeout_s
// bounds a step's collectives. A rank that dies still ends these at once (its socket closes).
constexpr auto kLongWait = std::chrono::hours(24);

// A conversion left by an earlier run must be of this run's recipe with the same resolved parameters.
void check_conversion(const ModelConfig& converted, const ModelConfig& source, const RunConfig& config) {
  const auto& stored = converted.linearize;
  auto given = config.recipe.params;
  // softmax_layers: auto:N was resolved by measurement when converting: the layers it chose stand.
  if (given.contains("softmax_layers"))
    if (const auto keep = auto_softmax_layers(given["softmax_layers"], source, "recipe.params"))
      if (stored.contains("layer_selection") && stored["layer_selection"].value("keep", std::int64_t{-1}) == *keep)
        given["softmax_layers"] = stored["params"]["softmax_layers"];
  const auto expected = resolve_recipe_params(find_recipe(config.recipe.name, kConfigSource, "recipe.name"), given,
                                              source, "recipe.params");
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
  options.validation_sequences = config.data.validation_sequences;
  options.seed = config.seed;
  return TokenDataset(std::move(documents), options, "data.files");
}

// bf16 autocast over a micro-batch's forward (docs/distillation.md#stage-2-lora: bf16 on CUDA by default, fp32 on CPU unless
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
  // Data-parallel: every rank computes its rows' share of the global batch's loss and the gradients are
  // summed over the ranks before the step. Block-parallel stage 1 trains layers alone on each rank: its
  // plans neither checkpoint nor stop (rank 0 checkpoints the whole stage once the ranks have met).
  bool data_parallel = false;
  bool checkpoints = true;
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

// The tensors of `saved` named in `params`, in params' order (a stage-2 checkpoint also holds stage 1's).
NamedTensors select(const NamedTensors& saved, const NamedTensors& params) {
  NamedTensors picked;
  for (const auto& [name, tensor] : params)
    for (const auto& entry : saved)
      if (entry.first == name) picked.push_back(entry);
  return picked;
}

// The checkpoint a resumed run continues from.
struct Resumed {
  TrainingState state;
  std::string from;  // its path, for messages
};

// Shared by both stages: the models, the data stream, the checkpoints, the records, the stop flag and
// the checkpoint a resume continues from.
struct TrainingContext {
  const RunConfig& config;
  const DistillOptions& options;
  CausalLM& student;
  const CausalLM& source;  // the teacher: its attention, hidden states and logits
  TokenDataset& data;
  const std::vector<Batch>& validation;
  CheckpointManager& checkpoints;
  MetricsLog& metrics;
  StopFlag& stop;
  at::Device device;
  const std::optional<Resumed>& resumed;
  const ProcessGroup* group;  // null: a single-process run
  fs::path work_dir;          // this rank's files: <out> for rank 0, <out>/rank<r> for the others
  bool root() const { return group == nullptr || group->rank() == 0; }
};

// Rank 0 writes the checkpoints of a multi-process run (the others return an empty path).
fs::path save_checkpoint(const TrainingContext& ctx, std::int64_t step, const NamedTensors& saved, OptimizerState optimizer,
                         nlohmann::json scheduler) {
  if (!ctx.root()) return {};
  TrainingState state;
  state.step = step;
  for (const auto& [name, tensor] : saved) state.trainables.emplace_back(name, tensor.detach());
  state.optimizer = std::move(optimizer);
  state.scheduler = std::move(scheduler);
  state.data_position = ctx.data.position().to_json();
  state.config_yaml = ctx.config.dump();
  state.rng = capture_rng();
  return ctx.checkpoints.save(state);
}

// This rank's rows of a global batch [B, ...]: rows [r B/W, (r+1) B/W) (run_distill checks W divides B).
std::int64_t rank_first_row(std::int64_t batch_rows, const ProcessGroup* group) {
  return group == nullptr ? 0 : group->rank() * (batch_rows / group->world_size());
}
at::Tensor rank_rows(const at::Tensor& batch, const ProcessGroup* group) {
  if (group == nullptr) return batch;
  return batch.narrow(0, rank_first_row(batch.size(0), group), batch.size(0) / group->world_size());
}

// Stage 2's cached teacher (distill/teacher_cache.h) at stage2.teacher_cache.path (default
// <out>/teacher_logits.h5; rank r > 0 adds ".rank<r>" before the extension), built first when absent:
// the teacher runs over this rank's rows of the `micro_batches` batches stage 2 draws next, then the data
// stream is set back.
std::unique_ptr<TeacherCache> open_teacher_cache(const TrainingContext& ctx, std::int64_t micro_batches) {
  const auto& stage2 = ctx.config.stage2;
  fs::path path = stage2.teacher_cache_path.empty() ? ctx.work_dir / "teacher_logits.h5" : fs::path(stage2.teacher_cache_path);
  if (!stage2.teacher_cache_path.empty() && !ctx.root())
    path.replace_filename(path.stem().string() + ".rank" + std::to_string(ctx.group->rank()) + path.extension().string());
  const auto top_k = std::min(stage2.teacher_cache_top_k, ctx.source.config().vocab_size);
  // The teacher: the source files (their hashes, recorded by the conversion) in this compute dtype.
  const auto teacher = ctx.student.config().linearize.value("source", nlohmann::json()).dump() + "|" +
                       to_string(ctx.config.device.dtype) + "|" + to_string(ctx.config.device.type);
  const auto fingerprint = sha256_hex(teacher.data(), teacher.size());
  if (!fs::exists(path)) {
    const auto start = ctx.data.position();
    const auto begun = std::chrono::steady_clock::now();
    const std::int64_t batch_rows = ctx.config.data.batch_size;
    std::int64_t tokens = 0, reported = 0;
    // The teacher as the live KL would run it: under the stage's autocast.
    const AutocastScope autocast(uses_autocast(ctx.config.device), ctx.device.type());
    const auto summary = write_teacher_cache(
        path, ctx.source, fingerprint, top_k, micro_batches,
        [&] {
          const auto batch = ctx.data.next_batch();
          const auto& pos = ctx.data.position();
          KeyedRows rows{pos.epoch, pos.sequence - batch_rows + rank_first_row(batch_rows, ctx.group),
                         rank_rows(batch.input_ids, ctx.group).to(ctx.device)};
          tokens += rows.ids.numel();
          return rows;
        },
        [&](std::int64_t done) {
          if (done * 10 / micro_batches == reported && done != micro_batches) return;
          reported = done * 10 / micro_batches;
          const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begun).count();
          spdlog::info("teacher cache: {}/{} batches, {:.0f} tokens/s, ETA {:.0f} s", done, micro_batches, tokens / seconds,
                       seconds / static_cast<double>(done) * static_cast<double>(micro_batches - done));
        });
    ctx.data.restore(start);
    spdlog::info("teacher cache {}: {} sequences, top {} of {} tokens, {:.1f} MB; the teacher's mean mass outside them {:.3g} "
                 "(the KL's part the loss does not see is weighted by it)",
                 path.string(), summary.rows, top_k, ctx.source.config().vocab_size, summary.bytes / 1e6, summary.mean_other_mass);
  }
  return std::make_unique<TeacherCache>(path, fingerprint, top_k, ctx.config.data.seq_len);
}

// Sums a data-parallel step over the ranks: the gradients (bucketed), then the loss, the per-layer losses
// and the stop requests in one message, so every rank steps, logs and stops alike.
void all_reduce_step(const ProcessGroup& group, const NamedTensors& params, double& loss, std::vector<double>& layer_values,
                     bool& stop) {
  std::vector<at::Tensor> grads;
  for (const auto& [name, tensor] : params) {
    if (!tensor.grad().defined()) tensor.mutable_grad() = at::zeros_like(tensor);
    grads.push_back(tensor.grad());
  }
  group.all_reduce_sum(grads);
  std::vector<double> values{loss, stop ? 1.0 : 0.0};
  values.insert(values.end(), layer_values.begin(), layer_values.end());
  const auto on_device = at::tensor(values, at::kDouble).to(group.device());
  group.all_reduce_sum({on_device});
  const auto summed = on_device.cpu();
  loss = summed[0].item<double>();
  stop = summed[1].item<double>() > 0;
  for (std::size_t i = 0; i < layer_values.size(); ++i) layer_values[i] = summed[2 + static_cast<std::int64_t>(i)].item<double>();
}

// One optimiser step's micro-batches: each one's loss (under the device's autocast) backward, scaled by
// 1 / grad_accum; returns the step's mean loss and layer values and the tokens it read.
struct AccumulatedLoss {
  double loss = 0;
  std::vector<double> layer_values;
  std::int64_t tokens = 0;
};
AccumulatedLoss accumulate_gradients(const StagePlan& plan, const TrainingContext& ctx, std::int64_t step) {
  const auto& optim = *plan.optim;
  const auto accum = static_cast<double>(optim.grad_accum);
  AccumulatedLoss total;
  for (std::int64_t micro = 0; micro < optim.grad_accum; ++micro) {
    StageLoss r;
    {
      const AutocastScope autocast(uses_autocast(ctx.config.device), ctx.device.type());
      r = plan.loss((step - plan.first_step - 1) * optim.grad_accum + micro);
    }
    (r.loss / accum).backward();
    total.loss += r.loss.item<double>() / accum;
    total.layer_values.resize(r.layer_values.size());
    for (std::size_t i = 0; i < r.layer_values.size(); ++i) total.layer_values[i] += r.layer_values[i] / accum;
    total.tokens += r.tokens;
  }
  return total;
}

// Runs `plan` from global step `result.step` to the end of its stage (or a stop), resuming the optimiser
// and schedule from `resumed` when it was saved inside this stage. Returns false when stopped.
bool train_stage(const StagePlan& plan, const TrainingContext& ctx, DistillResult& result) {
  const auto& optim = *plan.optim;
  const std::int64_t last_step = plan.first_step + optim.steps;
  std::vector<at::Tensor> handles;
  for (const auto& [name, tensor] : plan.params) handles.push_back(tensor);
  torch::optim::AdamW optimizer(handles, torch::optim::AdamWOptions(optim.lr).weight_decay(optim.weight_decay));
  LrSchedule schedule(optim);
  const bool resuming = ctx.resumed && ctx.resumed->state.step > plan.first_step;
  if (resuming) {
    load_adamw(optimizer, plan.params, ctx.resumed->state.optimizer, ctx.resumed->from);
    schedule.restore(ctx.resumed->state.scheduler, ctx.resumed->from);
  }

  auto save = [&] { return save_checkpoint(ctx, result.step, plan.saved, save_adamw(optimizer, plan.params), schedule.to_json()); };
  if (!resuming) {
    nlohmann::json record{{"stage", plan.name}, {"step", plan.first_step}};
    plan.validate(record);
    ctx.metrics.append(record);
  }

  // A data-parallel step is the same on every rank: rank 0 alone shows it.
  std::FILE* progress_out = plan.data_parallel && !ctx.root() ? nullptr : ctx.options.progress;
  const bool live_progress = progress_out != nullptr && ProgressReporter::is_tty(progress_out);
  ProgressReporter progress(progress_out, live_progress);
  progress.start(plan.name, result.step - plan.first_step, optim.steps);
  reset_peak_rss();  // the records' peak_rss_bytes: this stage's
  std::int64_t tokens = 0;
  bool stop_deferred = false;
  while (result.step < last_step) {
    const std::int64_t step = result.step + 1;
    const double lr = schedule.lr(step - plan.first_step);
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    if (ctx.options.poison_step && *ctx.options.poison_step == step) {
      at::NoGradGuard no_grad;
      plan.params.front().second.view({-1}).narrow(0, 0, 1).fill_(std::numeric_limits<double>::quiet_NaN());
    }
    optimizer.zero_grad();
    auto [loss, layer_values, step_tokens] = accumulate_gradients(plan, ctx, step);
    tokens += step_tokens;
    bool stop = plan.checkpoints && ctx.stop.requested();
    if (!plan.checkpoints && ctx.stop.requested() && !stop_deferred) {
      spdlog::warn("stop requested: block-parallel stage 1 checkpoints and stops once every rank has trained its block");
      stop_deferred = true;
    }
    if (plan.data_parallel && ctx.group) all_reduce_step(*ctx.group, plan.params, loss, layer_values, stop);
    check_finite(plan, step, loss, layer_values, ctx.checkpoints);
    const double grad_norm = clip_gradients(plan.params, optim.clip);
    optimizer.step();
    result.step = step;

    if (step % ctx.config.log_every == 0 || step == last_step) {
      nlohmann::json record{{"stage", plan.name}, {"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                            {"peak_rss_bytes", peak_rss_bytes()}};
      if (!layer_values.empty()) record["layer_loss"] = layer_values;
      const auto val = plan.validate(record);
      schedule.observe(val ? *val : loss);  // plateau: the validation loss, the training loss without a split
      ctx.metrics.append(record);
    }
    // A terminal line is rewritten every step; a log gets a line per log step only.
    if (live_progress || step % ctx.config.log_every == 0 || step == last_step)
      progress.update(step - plan.first_step, loss, tokens);
    if (stop) {
      progress.finish();
      result.checkpoint = save();
      result.stopped = true;
      return false;
    }
    if (plan.checkpoints && (step % ctx.config.checkpoint.every == 0 || step == last_step)) result.checkpoint = save();
  }
  progress.finish();
  return true;
}

// The newest complete checkpoint with --resume; without it, a directory of an earlier run's checkpoints
// is refused rather than mixed into this one.
std::optional<Resumed> resume_point(const CheckpointManager& checkpoints, bool resume) {
  const auto latest = checkpoints.latest();
  if (!resume) {
    if (latest)
      throw InputError(checkpoints.root().string(), "--resume",
                       "holds checkpoints of an earlier run: pass --resume to continue it, or remove the directory");
    return std::nullopt;
  }
  if (!latest) throw InputError(checkpoints.root().string(), "--resume", "holds no complete checkpoint to resume from");
  return Resumed{CheckpointManager::load(*latest), latest->string()};
}

// <out>/converted, once: a directory without config.json is an interrupted conversion and is redone.
void ensure_converted(const RunConfig& config, const fs::path& converted) {
  if (fs::exists(converted / "config.json")) return;
  ConvertOptions convert;
  convert.source = config.model;
  convert.out = converted;
  convert.recipe = config.recipe.name;
  convert.params = config.recipe.params;
  convert.params_origin = "recipe.params";
  convert.force = true;
  convert_checkpoint(convert);
  spdlog::info("converted {} with {} into {}", config.model, config.recipe.name, converted.string());
}

// The converted layers, in the order of stage 1's per-layer losses.
std::vector<std::int64_t> trained_layers(const NamedTensors& stage1_params) {
  std::vector<std::int64_t> layers;
  for (const auto& [name, tensor] : stage1_params)
    if (layers.empty() || layers.back() != *names::layer_of(name)) layers.push_back(*names::layer_of(name));
  return layers;
}

// Stage 1's optimiser steps: stage1.steps, or that many per layer when layer-wise (each layer trains its own
// steps, one layer after another); 0 when disabled.
std::int64_t stage1_steps(const Stage1Config& stage1, std::size_t layers) {
  if (!stage1.enabled) return 0;
  return stage1.optim.steps * (stage1.mode == Stage1Mode::kLayerwise ? static_cast<std::int64_t>(layers) : 1);
}

// Stage 1's validation: every layer's loss into `record`; a layer-wise plan's schedule watches its own layer's
// (`layer_index`), a joint one the mean.
std::optional<double> validate_stage1(const TrainingContext& ctx, nlohmann::json& record, std::optional<std::size_t> layer_index) {
  if (ctx.validation.empty()) return std::nullopt;
  const auto v = validation_transfer_loss(ctx.student, ctx.source, ctx.validation, ctx.config.stage1);
  record["val_loss"] = v.loss;
  record["val_layer_loss"] = v.layer_loss;
  return layer_index ? v.layer_loss[*layer_index] : v.loss;
}

// Joint stage 1: every converted layer's transfer loss on the same batches, one optimiser.
bool train_stage1_joint(const TrainingContext& ctx, const NamedTensors& params, const std::vector<std::int64_t>& layers,
                        DistillResult& result) {
  const auto& stage1 = ctx.config.stage1;
  StagePlan plan;
  plan.name = "stage1";
  plan.optim = &stage1.optim;
  plan.params = plan.saved = params;
  plan.layers = layers;
  plan.data_parallel = ctx.group != nullptr;
  plan.loss = [&](std::int64_t) {
    const auto batch = ctx.data.next_batch().input_ids.to(ctx.device);
    const auto ids = rank_rows(batch, ctx.group);
    auto r = attention_transfer_loss(ctx.student, ctx.source, ids, stage1.factor, stage1.loss);
    // The loss is a mean over the rows' positions, all rows the same length: a rank's share of the
    // global batch's mean is its mean times its fraction of the rows.
    const double share = static_cast<double>(ids.size(0)) / static_cast<double>(batch.size(0));
    for (auto& v : r.layer_loss) v *= share;
    return StageLoss{r.loss * share, std::move(r.layer_loss), batch.numel()};
  };
  plan.validate = [&ctx](nlohmann::json& record) { return validate_stage1(ctx, record, std::nullopt); };
  return train_stage(plan, ctx, result);
}

// Block-wise stage 1's owner of converted layer j: with W ranks (block-parallel, as LoLCATs trains a 405B model
// block by block), rank r owns the contiguous block of layers [r n/W, (r+1) n/W).
int stage1_owner(const TrainingContext& ctx, std::size_t j, std::size_t layers) {
  const int world = ctx.group ? ctx.group->world_size() : 1;
  return static_cast<int>(j * static_cast<std::size_t>(world) / layers);
}

// The teacher's input and output of every layer this rank owns, for every sequence stage 1 trains on, cached
// once in HDF5 (this rank's shard of the cache, under its rank directory); none when every owned layer is
// trained already (a resumed run). Opened into `cache` (an HDF5 reader does not move).
void open_stage1_cache(const TrainingContext& ctx, const std::vector<std::int64_t>& layers, const DistillResult& result,
                       std::optional<LayerCache>& cache) {
  const auto& stage1 = ctx.config.stage1;
  const int rank = ctx.group ? ctx.group->rank() : 0;
  std::vector<std::int64_t> owned;
  bool needs_cache = false;  // this rank still has a layer to train (a resumed run may have trained them all)
  for (std::size_t j = 0; j < layers.size(); ++j)
    if (stage1_owner(ctx, j, layers.size()) == rank) {
      owned.push_back(layers[j]);
      needs_cache = needs_cache || result.step < static_cast<std::int64_t>(j + 1) * stage1.optim.steps;
    }
  const fs::path cache_path = ctx.work_dir / "layer_cache.h5";
  const std::int64_t micro_batches = stage1.optim.steps * stage1.optim.grad_accum;
  if (ctx.resumed) {
    // The checkpoint's data position lies after the batches stage 1 drew: they cannot be drawn again.
    if (needs_cache && !fs::exists(cache_path))
      throw InputError(cache_path.string(), "layer cache",
                       "is missing and a resumed run cannot draw its sequences again (the checkpoint's data position is "
                       "past them): resume with the world size that cached them, or start the run over");
  } else if (!fs::exists(cache_path) || ctx.group) {
    // Every rank draws the same batches, so the data position after stage 1 is the same everywhere. A
    // multi-rank run rewrites its shard: one left by another world size would hold other layers.
    std::vector<at::Tensor> batches;
    for (std::int64_t i = 0; i < micro_batches; ++i) batches.push_back(ctx.data.next_batch().input_ids.to(ctx.device));
    if (!owned.empty()) {
      fs::remove(cache_path);
      const auto rows = write_layer_cache(cache_path, ctx.source, owned, batches);
      spdlog::info("cached the inputs of {} layers for {} sequences in {}", owned.size(), rows, cache_path.string());
    }
  }
  if (needs_cache) cache.emplace(cache_path, owned, ctx.source.config().hidden_size);
  const std::int64_t rows = micro_batches * ctx.config.data.batch_size;
  if (cache && cache->rows() != rows)
    throw InputError(cache_path.string(), "rows", "holds " + std::to_string(cache->rows()) + " sequences, the run trains on " +
                                                      std::to_string(rows) + ": remove the file");
}

// Block-parallel stage 1's end: each layer's trained tensors go from its owner to every rank, then one checkpoint
// of the whole stage; false when a stop was asked for during the stage (each rank trains alone, no step
// checkpoints), which is honoured here.
bool gather_stage1(const TrainingContext& ctx, const NamedTensors& params, const std::vector<std::int64_t>& layers,
                   DistillResult& result) {
  for (std::size_t j = 0; j < layers.size(); ++j) {
    std::vector<at::Tensor> tensors;
    for (const auto& [name, tensor] : params)
      if (names::layer_of(name) == layers[j]) tensors.push_back(tensor);
    ctx.group->broadcast(tensors, stage1_owner(ctx, j, layers.size()), kLongWait);
  }
  result.step = stage1_steps(ctx.config.stage1, layers.size());
  if (ctx.root()) {  // every layer trained: the per-layer validation the report's stage-1 chart ends with
    nlohmann::json record{{"stage", "stage1"}, {"step", result.step}};
    validate_stage1(ctx, record, std::nullopt);
    ctx.metrics.append(record);
  }
  result.checkpoint = save_checkpoint(ctx, result.step, params, OptimizerState{}, nlohmann::json::object());
  if (ctx.group->all_reduce_sum(ctx.stop.requested() ? 1.0 : 0.0) > 0) {
    result.stopped = true;
    return false;
  }
  return true;
}

// Stage 1, joint or layer-wise, from result.step; false when stopped. Layer-wise
// (docs/distillation.md#stage-1-attention-transfer): each layer trains alone from its cached rows.
bool train_stage1(const TrainingContext& ctx, const NamedTensors& params, const std::vector<std::int64_t>& layers,
                  DistillResult& result) {
  const auto& stage1 = ctx.config.stage1;
  if (stage1.mode != Stage1Mode::kLayerwise) return train_stage1_joint(ctx, params, layers, result);
  std::optional<LayerCache> cache;
  open_stage1_cache(ctx, layers, result, cache);
  const std::int64_t batch = ctx.config.data.batch_size;
  const int rank = ctx.group ? ctx.group->rank() : 0;
  for (std::size_t j = 0; j < layers.size(); ++j) {
    if (stage1_owner(ctx, j, layers.size()) != rank) continue;
    StagePlan plan;
    plan.name = "stage1.layer" + std::to_string(layers[j]);
    plan.optim = &stage1.optim;
    plan.first_step = static_cast<std::int64_t>(j) * stage1.optim.steps;
    plan.checkpoints = ctx.group == nullptr;
    if (result.step >= plan.first_step + stage1.optim.steps) continue;  // trained before a resume
    for (const auto& entry : params)
      if (names::layer_of(entry.first) == layers[j]) plan.params.push_back(entry);
    plan.saved = params;
    plan.layers = {layers[j]};
    plan.loss = [&, layer = layers[j]](std::int64_t micro) {
      auto r = layerwise_transfer_loss(ctx.student, ctx.source, *cache, layer, micro * batch, (micro + 1) * batch,
                                       stage1.factor, stage1.loss);
      return StageLoss{r.loss, std::move(r.layer_loss), batch * cache->seq_len()};
    };
    plan.validate = [&ctx, j](nlohmann::json& record) { return validate_stage1(ctx, record, j); };
    // A rank's first layer starts past the other ranks' layers (one process: where the previous one ended,
    // or a resume inside this one left off).
    result.step = std::max(result.step, plan.first_step);
    if (!train_stage(plan, ctx, result)) return false;
  }
  return !ctx.group || gather_stage1(ctx, params, layers, result);
}

// Stage 2: LoRA on the configured projections of the frozen student, from global step `first_step`;
// `adapters` gets them (attached); false when stopped.
bool train_stage2(const TrainingContext& ctx, const NamedTensors& stage1_params, std::int64_t first_step,
                  std::vector<std::shared_ptr<LoraLinear>>& adapters, DistillResult& result) {
  const auto& config = ctx.config;
  const auto& lora = config.stage2.lora;
  // A's init comes from its own generator: a resume (which restores the global generators for dropout)
  // then draws nothing from them before its first step.
  adapters = attach_lora(ctx.student, lora.targets, {lora.r, lora.alpha, lora.dropout, lora.rslora},
                         at::make_generator<at::CPUGeneratorImpl>(config.seed));
  StagePlan plan;
  plan.name = "stage2";
  plan.optim = &config.stage2.optim;
  plan.first_step = first_step;
  for (const auto& adapter : adapters) {
    plan.params.emplace_back(adapter->a_name(), adapter->a());
    plan.params.emplace_back(adapter->b_name(), adapter->b());
  }
  plan.saved = stage1_params;
  plan.saved.insert(plan.saved.end(), plan.params.begin(), plan.params.end());
  if (ctx.resumed && ctx.resumed->state.step > first_step)
    copy_trainables(plan.params, select(ctx.resumed->state.trainables, plan.params), ctx.resumed->from);
  const auto kind = config.stage2.loss;
  auto set_training = [&](bool training) {
    for (const auto& adapter : adapters) adapter->set_training(training);
  };
  plan.data_parallel = ctx.group != nullptr;
  std::unique_ptr<TeacherCache> teacher_cache;
  const std::int64_t micro_batches_left = (first_step + plan.optim->steps - result.step) * plan.optim->grad_accum;
  if (config.stage2.teacher_cache_top_k > 0 && micro_batches_left > 0) {
    teacher_cache = open_teacher_cache(ctx, micro_batches_left);
    if (ctx.group) ctx.group->barrier(kLongWait);  // the ranks build their rows' caches at their own pace
  }
  plan.loss = [&](std::int64_t) {
    const auto batch = ctx.data.next_batch();
    const auto ids = rank_rows(batch.input_ids, ctx.group).to(ctx.device);
    const auto labels = rank_rows(batch.labels, ctx.group);
    // The loss is a mean over predicted tokens (labels after the first, not -100): a rank's share of the
    // global mean is its mean times its fraction of those tokens.
    const auto predicted = [](const at::Tensor& l) { return l.narrow(1, 1, l.size(1) - 1).ne(-100).sum().item<double>(); };
    const double share = ctx.group ? predicted(labels) / std::max(predicted(batch.labels), 1.0) : 1.0;
    std::optional<TeacherTopK> teacher;
    if (teacher_cache) {
      const auto& pos = ctx.data.position();
      const std::int64_t rows = batch.input_ids.size(0);
      teacher = teacher_cache->rows(pos.epoch, pos.sequence - rows + rank_first_row(rows, ctx.group), ids);
    }
    // Dropout stays on until the next validation: checkpointed blocks run again in the backward, after this returns.
    set_training(true);
    auto loss = stage2_loss(ctx.student, ctx.source, ids, labels.to(ctx.device), kind, teacher ? &*teacher : nullptr);
    return StageLoss{loss * share, {}, batch.input_ids.numel()};
  };
  plan.validate = [&](nlohmann::json& record) {
    set_training(false);
    if (ctx.validation.empty()) return std::optional<double>{};
    const auto q = evaluate_quality(ctx.student, ctx.source, ctx.validation);
    const double loss = stage2_validation_loss(q, kind);
    record["val_loss"] = loss;
    record["val_perplexity"] = q.student_perplexity;
    record["val_kl"] = q.kl;
    return std::optional<double>{loss};
  };
  const bool finished = train_stage(plan, ctx, result);
  set_training(false);
  return finished;
}

// A multi-process job's process group (none for one process), the global batch checked to split over its ranks.
std::unique_ptr<ProcessGroup> join_job(const RunConfig& config, const std::optional<ProcessPlace>& place) {
  if (!place) return nullptr;
  if (config.data.batch_size % place->world_size != 0)
    throw InputError(kConfigSource, "data.batch_size",
                     std::to_string(config.data.batch_size) + " rows do not split over " + std::to_string(place->world_size) +
                         " ranks (the global batch is divided among them)");
  auto group = ProcessGroup::connect(*place, std::chrono::seconds(config.device.timeout_s), config.device.type == DeviceType::kCuda);
  spdlog::info("rank {} of {} joined the job at {}:{}", place->rank, place->world_size, place->master_addr, place->master_port);
  return group;
}

// A resumed run takes its checkpoint's trainables, data position, generators and step; a new one seeds the
// generators and starts its metrics afresh.
void start_or_resume(const RunConfig& config, const std::optional<Resumed>& resumed, const NamedTensors& stage1_params,
                     const ProcessGroup* group, const fs::path& work_dir, TokenDataset& data, DistillResult& result) {
  if (!resumed) {
    // LoRA's dropout draws from the global generators: each rank its own masks for its own rows.
    at::manual_seed(config.seed + static_cast<std::uint64_t>(group ? group->rank() : 0));
    fs::remove(work_dir / "metrics.jsonl");
    return;
  }
  copy_trainables(stage1_params, select(resumed->state.trainables, stage1_params), resumed->from);
  data.restore(DataPosition::from_json(resumed->state.data_position, resumed->from));
  restore_rng(resumed->state.rng);
  result.step = resumed->state.step;
  // Rank 0 saved its generators; the other ranks draw their own dropout masks from a stream of their own
  // (a multi-rank run with dropout resumes onto new masks, not bitwise).
  if (group && group->rank() > 0)
    at::manual_seed(config.seed + 1'000'003ULL * static_cast<std::uint64_t>(result.step) + static_cast<std::uint64_t>(group->rank()));
  spdlog::info("resuming from {} (step {})", resumed->from, result.step);
}

}  // namespace

// The end-of-run eval's text, tokenized and checked before any training (a bad eval.text or length fails at
// once, not after the run).
struct EvalInput {
  Tokenizer tokenizer;
  std::vector<std::int64_t> text_ids;
  EvalOptions options;
};

std::optional<EvalInput> prepare_eval(const RunConfig& config, const ModelConfig& source) {
  if (config.eval.text.empty()) return std::nullopt;
  EvalInput eval{Tokenizer::from_dir(config.model), {}, {}};  // the source's, which the export ships
  eval.options.lengths = config.eval.lengths;
  eval.text_ids = eval_text_ids(eval.tokenizer, config.eval.text, eval.options, source.max_position_embeddings, source.vocab_size,
                                {kConfigSource, "eval.lengths", "eval.text"});
  return eval;
}

DistillResult run_distill(const DistillOptions& options) {
  const RunConfig& config = options.config;
  const fs::path out = config.out, converted = out / "converted";
  // A multi-process job (torchrun, Slurm): rank 0 holds the run directory's lock and writes its files;
  // rank r > 0 holds <out>/rank<r>'s. A process that is not part of the job finds its lock held and stops
  // there (exit 2), before joining anything.
  const auto place = process_place_from_environment();
  const fs::path work_dir = place && place->rank > 0 ? out / ("rank" + std::to_string(place->rank)) : out;
  const DirectoryLock lock(work_dir);
  const auto group = join_job(config, place);
  const bool root = !group || group->rank() == 0;
  CheckpointManager checkpoints(config.checkpoint.dir.empty() ? out / "checkpoints" : fs::path(config.checkpoint.dir),
                                config.checkpoint.keep);
  const auto resumed = resume_point(checkpoints, options.resume);
  if (root) ensure_converted(config, converted);
  if (group) group->barrier(kLongWait);  // the others load the conversion rank 0 wrote
  LoadOptions load;
  load.device = group ? group->device()  // this rank's GPU under NCCL
                      : config.device.type == DeviceType::kCuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  CausalLM student = load_model(converted, load);
  student.set_checkpoint_blocks(config.device.activation_checkpointing);
  // The teacher is the student's own source layers (no second copy of the weights; the export's verify
  // still compares against the source checkpoint itself).
  const CausalLM source = student.source_model();
  check_conversion(student.config(), load_model_config(fs::path(config.model) / "config.json"), config);
  TokenDataset data = make_dataset(config, source.config());
  const auto eval = root ? prepare_eval(config, source.config()) : std::nullopt;
  const auto validation = data.validation_batches();

  // Stage 1's tensors exist (and are exported) whether or not stage 1 trains them.
  const NamedTensors stage1_params = make_stage1_trainable(student);
  const auto& stage1 = config.stage1;
  if (stage1.enabled && stage1_params.empty())
    throw InputError(kConfigSource, "stage1.enabled", "recipe " + config.recipe.name + " adds no trainable tensors; set it to false");
  if (stage1.enabled) check_stage1_loss(student, stage1.loss);
  const auto layers = trained_layers(stage1_params);
  const std::int64_t stage1_end = stage1_steps(stage1, layers.size());

  DistillResult result;
  // The training-free figures, from the student as converted: before a checkpoint's tensors replace its
  // own, so a resumed run's report keeps them (they draw no random numbers).
  if (!validation.empty()) {
    result.before = evaluate_quality(student, source, validation);
    if (stage1.enabled) result.initial_transfer_loss = validation_transfer_loss(student, source, validation, stage1).loss;
  }
  start_or_resume(config, resumed, stage1_params, group.get(), work_dir, data, result);
  MetricsLog metrics(work_dir / "metrics.jsonl", resumed ? std::optional<std::int64_t>(result.step) : std::nullopt);
  StopFlag stop;
  const TrainingContext ctx{config, options, student, source, data, validation, checkpoints, metrics, stop, load.device,
                            resumed, group.get(), work_dir};

  if (stage1.enabled && result.step < stage1_end) {
    if (!train_stage1(ctx, stage1_params, layers, result)) return result;
    if (!validation.empty()) {
      result.final_transfer_loss = validation_transfer_loss(student, source, validation, stage1).loss;
      if (config.stage2.enabled) result.after_stage1 = evaluate_quality(student, source, validation);
    }
  }
  for (const auto& [name, tensor] : stage1_params) tensor.requires_grad_(false);  // frozen from here on
  std::vector<std::shared_ptr<LoraLinear>> adapters;
  if (config.stage2.enabled && !train_stage2(ctx, stage1_params, stage1_end, adapters, result)) return result;

  if (!root) return result;  // rank 0 exports and verifies
  if (!validation.empty()) result.after = evaluate_quality(student, source, validation);
  result.export_dir = out / "model";
  export_model(converted, result.export_dir, stage1_params, adapters, config);
  result.verify = verify_export(result.export_dir, config);
  const auto report_layers = stage1.enabled ? layers : std::vector<std::int64_t>{};
  write_report(out, config, result, report_layers);  // written first: an eval that fails leaves the run's report
  if (eval) {  // the trained student (the export before its dtype cast and any LoRA merge) against its source layers
    ProgressReporter progress(options.progress, options.progress != nullptr && ProgressReporter::is_tty(options.progress));
    EvalResult evaluated;
    try {
      evaluated = evaluate_model(student, &source, eval->tokenizer, eval->text_ids, eval->options, &progress);
    } catch (const std::length_error& e) {  // a key that tokenizes longer than the one checked before training
      throw InputError(kConfigSource, "eval.lengths", e.what());
    }
    write_file_atomic(out / "eval.json", eval_json(evaluated, eval->options).dump(2) + "\n");
    write_report(out, config, result, report_layers, &evaluated);
  }
  return result;
}

}  // namespace linearize
