#include "distill/run.h"

#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>
#include <torch/optim/adamw.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "converter/linearized.h"
#include "distill/attention_transfer.h"
#include "distill/checkpoint.h"
#include "distill/data.h"
#include "distill/metrics.h"
#include "distill/schedule.h"
#include "distill/stop_flag.h"
#include "formats/checkpoint.h"
#include "formats/error.h"
#include "formats/tokenizer.h"

namespace linearize {
namespace fs = std::filesystem;
namespace {

constexpr const char* kConfigSource = "run config";

// The parts of the schema this build trains; anything else is refused before any work.
void check_supported(const RunConfig& config) {
  if (config.stage2.enabled)
    throw InputError(kConfigSource, "stage2.enabled", "stage 2 (LoRA) is not available in this build; set it to false");
  if (config.stage1.loss != Stage1Loss::kMse)
    throw InputError(kConfigSource, "stage1.loss", "only mse is available in this build");
  if (config.stage1.mode != Stage1Mode::kJoint)
    throw InputError(kConfigSource, "stage1.mode", "only joint is available in this build");
  if (config.device.dtype == ComputeDtype::kBf16)
    throw InputError(kConfigSource, "device.dtype", "bf16 autocast is not available in this build; use auto or fp32");
}

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
    // Position t predicts label t + 1 (the HF shift); -100 labels carry no loss.
    const auto labels = batch.labels.narrow(1, 1, batch.labels.size(1) - 1).reshape({-1}).to(ids.device());
    const auto mask = labels.ne(-100);
    auto log_probs = [&](const CausalLM& model) {
      const auto logits = model.forward(ids).to(at::kFloat);
      return at::log_softmax(logits.narrow(1, 0, logits.size(1) - 1).reshape({-1, logits.size(-1)}), -1).index({mask});
    };
    const auto teacher = log_probs(source), pupil = log_probs(student);
    const auto targets = labels.index({mask}).unsqueeze(1);
    teacher_nll -= teacher.gather(1, targets).sum().item<double>();
    student_nll -= pupil.gather(1, targets).sum().item<double>();
    kl += (teacher.exp() * (teacher - pupil)).sum().item<double>();
    count += targets.size(0);
  }
  const auto n = static_cast<double>(std::max<std::int64_t>(count, 1));
  return {std::exp(teacher_nll / n), std::exp(student_nll / n), kl / n};
}

struct ValidationLoss {
  double loss = 0;
  std::vector<double> layer_mse;
};

ValidationLoss validation_transfer_loss(const CausalLM& student, const CausalLM& source, const std::vector<Batch>& batches,
                                        double factor) {
  at::NoGradGuard no_grad;
  ValidationLoss total;
  for (const auto& batch : batches) {
    const auto r = attention_transfer_loss(student, source, batch.input_ids.to(source.options().device), factor);
    total.loss += r.loss.item<double>();
    total.layer_mse.resize(r.layer_mse.size());
    for (std::size_t i = 0; i < r.layer_mse.size(); ++i) total.layer_mse[i] += r.layer_mse[i];
  }
  const auto n = static_cast<double>(batches.size());
  total.loss /= n;
  for (auto& v : total.layer_mse) v /= n;
  return total;
}

// Stops the run on a non-finite loss or gradient, naming the step, the layer and the tensor.
void check_finite(std::int64_t step, double loss, const std::vector<std::int64_t>& layers,
                  const std::vector<double>& layer_mse, const NamedTensors& params, const CheckpointManager& checkpoints) {
  std::string what;
  for (const auto& [name, tensor] : params) {
    if (tensor.grad().defined() && !at::isfinite(tensor.grad()).all().item<bool>()) {
      what = "non-finite gradient of " + name + " (layer " + std::to_string(layer_of(name)) + ")";
      break;
    }
  }
  if (what.empty() && !std::isfinite(loss)) {
    for (std::size_t i = 0; i < layers.size(); ++i)
      if (!std::isfinite(layer_mse[i])) {
        what = "non-finite attention-transfer loss of layer " + std::to_string(layers[i]);
        break;
      }
    if (what.empty()) what = "non-finite loss";
  }
  if (what.empty()) return;
  const auto last = checkpoints.latest();
  throw TrainingDiverged("stage1 step " + std::to_string(step) + ": " + what + " (loss " + std::to_string(loss) +
                         "); the step was not applied; last good checkpoint: " +
                         (last ? last->string() : std::string("none")));
}

// max_norm / (norm + 1e-6), at most 1, as torch.nn.utils.clip_grad_norm_; returns the norm before clipping.
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

// <out>/model: the converted directory with the trained tensors. Weights first, config.json last (a
// directory counts as a model once config.json is there); the copied tensors keep their sha256 record.
void export_model(const fs::path& converted, const fs::path& out, const NamedTensors& trained) {
  fs::create_directories(out);
  fs::remove(out / "config.json");
  for (const auto& entry : fs::directory_iterator(converted)) {
    const auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || name == "config.json" || name == kSingleWeightsFile || name == kVerifyLogitsFile ||
        name == kVerifyReportFile)
      continue;
    fs::copy_file(entry.path(), out / name, fs::copy_options::overwrite_existing);
  }
  const auto file = SafetensorsFile::open(converted / kSingleWeightsFile);
  NamedTensors tensors;
  for (const auto& name : file.names()) {
    at::Tensor value = file.tensor(name);
    for (const auto& [trained_name, tensor] : trained)
      if (trained_name == name) value = tensor.detach().to(at::kCPU, value.scalar_type()).contiguous();
    tensors.emplace_back(name, value);
  }
  write_safetensors(out / kSingleWeightsFile, tensors, file.metadata());
  fs::copy_file(converted / "config.json", out / "config.json", fs::copy_options::overwrite_existing);
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
  if (result.before && result.after) {
    report.summary.emplace_back("teacher perplexity", figure(result.after->teacher_perplexity));
    report.summary.emplace_back("student perplexity", figure(result.before->student_perplexity) + " -> " +
                                                          figure(result.after->student_perplexity));
    report.summary.emplace_back("KL(teacher || student)", figure(result.before->kl) + " -> " + figure(result.after->kl));
  }
  LineChart curve{"stage 1: attention transfer", "optimiser step", "loss", true, {{"training", {}}, {"validation", {}}}};
  std::vector<double> first_layers, last_layers;
  for (const auto& r : read_records(out / "metrics.jsonl")) {
    const auto step = static_cast<double>(r.value("step", std::int64_t{0}));
    if (r.contains("loss")) curve.series[0].points.emplace_back(step, r["loss"].get<double>());
    if (r.contains("val_loss")) {
      curve.series[1].points.emplace_back(step, r["val_loss"].get<double>());
      last_layers = r["val_layer_mse"].get<std::vector<double>>();
      if (first_layers.empty()) first_layers = last_layers;
    }
  }
  report.curves.push_back(std::move(curve));
  BarChart bars{"per-layer attention-output MSE (validation)", "MSE", {}, {{"before", first_layers}, {"after", last_layers}}};
  for (const auto layer : layers) bars.labels.push_back("layer " + std::to_string(layer));
  report.bars.push_back(std::move(bars));
  write_report_html(out / "report.html", report);
}

}  // namespace

DistillResult run_distill(const DistillOptions& options) {
  const RunConfig& config = options.config;
  check_supported(config);
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
  const CausalLM source = load_model(config.model, load);  // the teacher: its attention and its hidden states
  check_conversion(student.config(), source.config(), config);
  TokenDataset data = make_dataset(config, source.config());
  const auto validation = data.validation_batches();

  const auto& stage = config.stage1;
  const auto& optim = stage.optim;
  const NamedTensors params = make_stage1_trainable(student);
  if (params.empty())
    throw InputError(kConfigSource, "stage1.enabled", "recipe " + config.recipe.name + " adds no trainable tensors; set it to false");
  std::vector<at::Tensor> handles;
  for (const auto& [name, tensor] : params) handles.push_back(tensor);
  torch::optim::AdamW optimizer(handles, torch::optim::AdamWOptions(optim.lr).weight_decay(optim.weight_decay));
  LrSchedule schedule(optim);

  DistillResult result;
  if (resumed) {
    copy_trainables(params, resumed->trainables, resumed_from);
    load_adamw(optimizer, params, resumed->optimizer, resumed_from);
    schedule.restore(resumed->scheduler, resumed_from);
    data.restore(DataPosition::from_json(resumed->data_position, resumed_from));
    restore_rng(resumed->rng);
    result.step = resumed->step;
    spdlog::info("resuming from {} (step {})", resumed_from, result.step);
  } else {
    fs::remove(out / "metrics.jsonl");
  }
  MetricsLog metrics(out / "metrics.jsonl", resumed ? std::optional<std::int64_t>(result.step) : std::nullopt);

  auto save = [&] {
    TrainingState state;
    state.step = result.step;
    for (const auto& [name, tensor] : params) state.trainables.emplace_back(name, tensor.detach());
    state.optimizer = save_adamw(optimizer, params);
    state.scheduler = schedule.to_json();
    state.data_position = data.position().to_json();
    state.config_yaml = config.dump();
    state.rng = capture_rng();
    return checkpoints.save(state);
  };
  auto validate = [&](nlohmann::json& record) {
    if (validation.empty()) return std::optional<double>{};
    const auto v = validation_transfer_loss(student, source, validation, stage.factor);
    record["val_loss"] = v.loss;
    record["val_layer_mse"] = v.layer_mse;
    return std::optional<double>{v.loss};
  };

  if (!resumed) {
    nlohmann::json record{{"stage", "stage1"}, {"step", 0}};
    validate(record);
    metrics.append(record);
  }
  if (!resumed && !validation.empty()) {
    result.before = evaluate_quality(student, source, validation);
    result.initial_transfer_loss = validation_transfer_loss(student, source, validation, stage.factor).loss;
  }

  StopFlag stop;
  const bool live_progress = ProgressReporter::is_tty(options.progress);
  ProgressReporter progress(options.progress, live_progress);
  progress.start("stage1", result.step, optim.steps);
  std::int64_t tokens = 0;
  std::vector<std::int64_t> layers;  // the converted layers, in the order of layer_mse
  for (const auto& [name, tensor] : params)
    if (layers.empty() || layers.back() != layer_of(name)) layers.push_back(layer_of(name));
  while (result.step < optim.steps) {
    const std::int64_t step = result.step + 1;
    const double lr = schedule.lr(step);
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    if (options.poison_step && *options.poison_step == step) {
      at::NoGradGuard no_grad;
      params.front().second.view({-1}).narrow(0, 0, 1).fill_(std::numeric_limits<double>::quiet_NaN());
    }
    optimizer.zero_grad();
    double loss = 0;
    std::vector<double> layer_mse;
    for (std::int64_t micro = 0; micro < optim.grad_accum; ++micro) {
      const auto batch = data.next_batch();
      const auto ids = batch.input_ids.to(load.device);
      const auto r = attention_transfer_loss(student, source, ids, stage.factor);
      (r.loss / static_cast<double>(optim.grad_accum)).backward();
      loss += r.loss.item<double>() / static_cast<double>(optim.grad_accum);
      layer_mse.resize(r.layer_mse.size());
      for (std::size_t i = 0; i < r.layer_mse.size(); ++i) layer_mse[i] += r.layer_mse[i] / static_cast<double>(optim.grad_accum);
      tokens += ids.numel();
    }
    check_finite(step, loss, layers, layer_mse, params, checkpoints);
    const double grad_norm = clip_gradients(params, optim.clip);
    optimizer.step();
    result.step = step;

    if (step % config.log_every == 0 || step == optim.steps) {
      nlohmann::json record{{"stage", "stage1"}, {"step", step}, {"loss", loss}, {"lr", lr},
                            {"grad_norm", grad_norm}, {"layer_mse", layer_mse}};
      const auto val = validate(record);
      schedule.observe(val ? *val : loss);  // plateau: the validation loss, the training loss without a split
      metrics.append(record);
    }
    // A terminal line is rewritten every step; a log gets a line per log step only.
    if (live_progress || step % config.log_every == 0 || step == optim.steps) progress.update(step, loss, tokens);
    if (stop.requested()) {
      progress.finish();
      result.checkpoint = save();
      result.stopped = true;
      return result;
    }
    if (step % config.checkpoint.every == 0 || step == optim.steps) result.checkpoint = save();
  }
  progress.finish();

  if (!validation.empty()) {
    result.after = evaluate_quality(student, source, validation);
    result.final_transfer_loss = validation_transfer_loss(student, source, validation, stage.factor).loss;
  }
  result.export_dir = out / "model";
  export_model(converted, result.export_dir, params);
  const auto exported = load_model(result.export_dir);
  record_verify_logits(result.export_dir, exported, builtin_verify_prompts(exported.config().vocab_size));
  VerifyOptions verify;
  verify.model = result.export_dir;
  verify.source = fs::path(config.model);
  verify.max_kl = config.verify.max_kl;
  verify.min_top1 = config.verify.min_top1;
  result.verify = verify_model(verify);
  write_report(out, config, result, layers);
  return result;
}

}  // namespace linearize
