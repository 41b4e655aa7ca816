#include "distill/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <fcntl.h>
#include <torch/optim/adamw.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <mutex>
#include <regex>
#include <stdexcept>
#include <system_error>
#include <unordered_map>

#include "formats/atomic_file.h"
#include "formats/error.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kFormatVersion = 1;
constexpr const char* kTrainablesFile = "trainables.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kRngFile = "rng.safetensors";
constexpr const char* kConfigFile = "config.yaml";
constexpr const char* kStateFile = "state.json";
const char* const kMoments[] = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};

std::optional<std::int64_t> step_of(const fs::path& dir) {
  static const std::regex pattern("step-([0-9]+)");
  std::smatch match;
  const std::string name = dir.filename().string();
  if (!std::regex_match(name, match, pattern)) return std::nullopt;
  return std::stoll(match[1].str());
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "open " + dir.string());
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0) throw std::system_error(error, std::generic_category(), "fsync " + dir.string());
}

std::unordered_map<const void*, std::string> names_by_impl(const NamedTensors& params) {
  std::unordered_map<const void*, std::string> names;
  for (const auto& [name, tensor] : params) names[tensor.unsafeGetTensorImpl()] = name;
  return names;
}

const at::Tensor& find_tensor(const NamedTensors& tensors, const std::string& name, const std::string& source) {
  for (const auto& [n, t] : tensors) {
    if (n == name) return t;
  }
  throw InputError(source, name, "missing from the checkpoint");
}

NamedTensors read_tensors(const fs::path& path) {
  const auto file = SafetensorsFile::open(path);
  NamedTensors tensors;
  for (const auto& name : file.names()) tensors.emplace_back(name, file.tensor(name).clone());  // out of the mapping
  return tensors;
}

}  // namespace

std::string checkpoint_dir_name(std::int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%06lld", static_cast<long long>(step));
  return name;
}

RngState capture_rng() {
  RngState state;
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    state.cpu = generator.get_state();
  }
  if (at::hasCUDA()) {
    for (c10::DeviceIndex i = 0; i < static_cast<c10::DeviceIndex>(at::getNumGPUs()); ++i) {
      auto generator = at::globalContext().defaultGenerator(c10::Device(at::kCUDA, i));
      std::lock_guard<std::mutex> lock(generator.mutex());
      state.cuda.push_back(generator.get_state());
    }
  }
  return state;
}

void restore_rng(const RngState& state) {
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state.cpu);
  }
  const std::size_t devices = at::hasCUDA() ? at::getNumGPUs() : 0;
  for (std::size_t i = 0; i < std::min(devices, state.cuda.size()); ++i) {
    auto generator = at::globalContext().defaultGenerator(c10::Device(at::kCUDA, static_cast<c10::DeviceIndex>(i)));
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state.cuda[i]);
  }
}

OptimizerState save_adamw(const torch::optim::AdamW& optimizer, const NamedTensors& params) {
  const auto names = names_by_impl(params);
  OptimizerState saved;
  saved.meta = {{"steps", json::object()}, {"groups", json::array()}};
  for (const auto& group : optimizer.param_groups()) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    saved.meta["groups"].push_back({{"lr", options.lr()},
                                    {"betas", {std::get<0>(options.betas()), std::get<1>(options.betas())}},
                                    {"eps", options.eps()},
                                    {"weight_decay", options.weight_decay()},
                                    {"amsgrad", options.amsgrad()}});
    for (const auto& param : group.params()) {
      const auto name = names.find(param.unsafeGetTensorImpl());
      if (name == names.end()) throw std::invalid_argument("save_adamw: the optimiser holds a tensor not among the named params");
      const auto state = optimizer.state().find(param.unsafeGetTensorImpl());
      if (state == optimizer.state().end()) continue;  // not stepped yet
      const auto& adamw = static_cast<const torch::optim::AdamWParamState&>(*state->second);
      saved.meta["steps"][name->second] = adamw.step();
      const at::Tensor moments[] = {adamw.exp_avg(), adamw.exp_avg_sq(), adamw.max_exp_avg_sq()};
      for (std::size_t m = 0; m < 3; ++m) {
        if (moments[m].defined()) saved.tensors.emplace_back(name->second + "." + kMoments[m], moments[m].detach().clone());
      }
    }
  }
  return saved;
}

void load_adamw(torch::optim::AdamW& optimizer, const NamedTensors& params, const OptimizerState& saved, const std::string& source) {
  const auto names = names_by_impl(params);
  const JsonObject meta(saved.meta, source);
  const auto& groups = meta.raw().at("groups");
  if (groups.size() != optimizer.param_groups().size()) {
    meta.fail("groups", "the checkpoint has " + std::to_string(groups.size()) + " parameter groups, the optimiser " +
                            std::to_string(optimizer.param_groups().size()));
  }
  const JsonObject steps(meta.raw().at("steps"), source, "steps.");
  for (std::size_t g = 0; g < groups.size(); ++g) {
    auto& group = optimizer.param_groups()[g];
    const JsonObject saved_group(groups[g], source, "groups[" + std::to_string(g) + "].");
    auto& options = static_cast<torch::optim::AdamWOptions&>(group.options());
    const auto betas = saved_group.raw().at("betas");
    options.lr(saved_group.get_double("lr"))
        .betas({betas.at(0).get<double>(), betas.at(1).get<double>()})
        .eps(saved_group.get_double("eps"))
        .weight_decay(saved_group.get_double("weight_decay"))
        .amsgrad(saved_group.get_bool("amsgrad", false));
    for (const auto& param : group.params()) {
      const auto name = names.find(param.unsafeGetTensorImpl());
      if (name == names.end()) throw std::invalid_argument("load_adamw: the optimiser holds a tensor not among the named params");
      optimizer.state().erase(param.unsafeGetTensorImpl());
      if (!steps.has(name->second)) continue;  // saved before its first step
      auto state = std::make_unique<torch::optim::AdamWParamState>();
      state->step(steps.get_int(name->second));
      const auto moment = [&](const char* which) {
        const at::Tensor& t = find_tensor(saved.tensors, name->second + "." + which, source);
        if (!t.sizes().equals(param.sizes())) throw InputError(source, name->second + "." + which, "shape differs from the parameter's");
        return t.to(param.options()).clone();
      };
      state->exp_avg(moment("exp_avg"));
      state->exp_avg_sq(moment("exp_avg_sq"));
      if (options.amsgrad()) state->max_exp_avg_sq(moment("max_exp_avg_sq"));
      optimizer.state()[param.unsafeGetTensorImpl()] = std::move(state);
    }
  }
}

void copy_trainables(const NamedTensors& params, const NamedTensors& saved, const std::string& source) {
  if (params.size() != saved.size()) {
    throw InputError(source, kTrainablesFile, "holds " + std::to_string(saved.size()) + " tensors, the run trains " + std::to_string(params.size()));
  }
  at::NoGradGuard no_grad;
  for (const auto& [name, param] : params) {
    const at::Tensor& value = find_tensor(saved, name, source);
    if (!value.sizes().equals(param.sizes())) throw InputError(source, name, "shape differs from the parameter's");
    param.copy_(value);
  }
}

CheckpointManager::CheckpointManager(fs::path root, std::int64_t keep) : root_(std::move(root)), keep_(keep) {
  if (keep_ < 1) throw std::invalid_argument("CheckpointManager: keep must be >= 1");
}

void CheckpointManager::write_files(const fs::path& dir, const TrainingState& state, fs::path& current) const {
  const auto next = [&](const char* name) {
    current = dir / name;
    if (write_hook_) write_hook_(current);
    return current;
  };
  write_safetensors(next(kTrainablesFile), state.trainables);
  write_safetensors(next(kOptimizerFile), state.optimizer.tensors);
  NamedTensors rng = {{"cpu", state.rng.cpu}};
  for (std::size_t i = 0; i < state.rng.cuda.size(); ++i) rng.emplace_back("cuda." + std::to_string(i), state.rng.cuda[i]);
  write_safetensors(next(kRngFile), rng);
  write_file_atomic(next(kConfigFile), state.config_yaml);
  const json meta = {{"format_version", kFormatVersion},
                     {"step", state.step},
                     {"optimizer", state.optimizer.meta},
                     {"scheduler", state.scheduler},
                     {"data_position", state.data_position}};
  write_file_atomic(next(kStateFile), meta.dump(2) + "\n");
  current = dir;
  fsync_dir(dir);
}

fs::path CheckpointManager::save(const TrainingState& state) {
  const std::string name = checkpoint_dir_name(state.step);
  const fs::path final_dir = root_ / name, temp_dir = root_ / ("." + name + ".tmp"), old_dir = root_ / ("." + name + ".old");
  const auto previous = latest();
  fs::path current = root_;
  try {
    fs::create_directories(root_);
    fs::remove_all(temp_dir);  // left by a run killed mid-save
    fs::create_directory(temp_dir);
    write_files(temp_dir, state, current);
    current = final_dir;
    if (fs::exists(final_dir)) fs::rename(final_dir, old_dir);  // a resumed run saving the same step again
    fs::rename(temp_dir, final_dir);
    fsync_dir(root_);
    fs::remove_all(old_dir);
  } catch (const std::exception& e) {
    std::error_code ignored;
    fs::remove_all(temp_dir, ignored);
    if (!fs::exists(final_dir, ignored) && fs::exists(old_dir, ignored)) fs::rename(old_dir, final_dir, ignored);
    throw InputError(final_dir.string(), current.filename().string(),
                     std::string("checkpoint not written (") + e.what() + "); " +
                         (previous ? "the last complete checkpoint is " + previous->string() : std::string("no earlier checkpoint exists")));
  }
  const auto all = complete();
  for (std::size_t i = 0; i + static_cast<std::size_t>(keep_) < all.size(); ++i) fs::remove_all(all[i]);
  return final_dir;
}

std::vector<fs::path> CheckpointManager::complete() const {
  std::vector<std::pair<std::int64_t, fs::path>> found;
  std::error_code error;
  for (fs::directory_iterator it(root_, error), end; !error && it != end; it.increment(error)) {
    const auto step = step_of(it->path());
    if (step && fs::exists(it->path() / kStateFile)) found.emplace_back(*step, it->path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> dirs;
  for (auto& [step, dir] : found) dirs.push_back(std::move(dir));
  return dirs;
}

std::optional<fs::path> CheckpointManager::latest() const {
  auto all = complete();
  if (all.empty()) return std::nullopt;
  return all.back();
}

TrainingState CheckpointManager::load(const fs::path& dir) {
  const auto state_path = dir / kStateFile;
  const json meta_json = read_json_file(state_path);
  const JsonObject meta(meta_json, state_path.string());
  if (const auto version = meta.get_int("format_version"); version > kFormatVersion) {
    meta.fail("format_version", std::to_string(version) + " is newer than this linearize reads (" + std::to_string(kFormatVersion) + ")");
  }
  TrainingState state;
  state.step = meta.get_int("step");
  state.optimizer.meta = meta.raw().at("optimizer");
  state.scheduler = meta.raw().value("scheduler", json::object());
  state.data_position = meta.raw().value("data_position", json::object());
  state.trainables = read_tensors(dir / kTrainablesFile);
  state.optimizer.tensors = read_tensors(dir / kOptimizerFile);
  const auto rng = read_tensors(dir / kRngFile);
  state.rng.cpu = find_tensor(rng, "cpu", (dir / kRngFile).string());
  for (std::size_t i = 0;; ++i) {
    const auto it = std::find_if(rng.begin(), rng.end(), [&](const auto& entry) { return entry.first == "cuda." + std::to_string(i); });
    if (it == rng.end()) break;
    state.rng.cuda.push_back(it->second);
  }
  std::FILE* config = std::fopen((dir / kConfigFile).c_str(), "rb");
  if (config == nullptr) throw InputError((dir / kConfigFile).string(), "file", "cannot open");
  char buffer[4096];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, config)) > 0;) state.config_yaml.append(buffer, n);
  std::fclose(config);
  return state;
}

}  // namespace linearize
