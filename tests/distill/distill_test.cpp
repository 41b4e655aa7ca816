// Stages 1 and 2 of `linearize distill` on the tiny fixture: gradients reach every recipe's new tensors and
// nothing else; attention transfer cuts the attention-output MSE; stage 2 exports a PEFT adapter or merges
// it, and both verify; a run killed with SIGKILL in either stage resumes onto the uninterrupted loss
// trajectory bit for bit; SIGTERM saves and exits 0; a NaN stops the run naming the step, the layer and
// the tensor, with the last good checkpoint intact; a checkpoint write that fails (file size limit) names
// the checkpoint and leaves the previous one whole. Multi-process (Gloo on localhost, as torchrun launches
// it): block-parallel stage 1 and data-parallel stage 2 on two ranks match one process; a rank killed
// mid-run ends the job on the other with exit 4 and the run resumes with another world size; a process
// naming a rank already running stops with exit 2.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "converter/layer_selection.h"
#include "converter/linearized.h"
#include "converter/model_config.h"
#include "converter/recipes/recipe.h"
#include "converter/model/lora.h"
#include "distill/attention_transfer.h"
#include "distill/checkpoint.h"
#include "distill/distributed.h"
#include "distill/run.h"
#include "formats/checkpoint.h"
#include "formats/directory_lock.h"
#include "formats/error.h"
#include "formats/json_file.h"
#include "formats/peft_adapter.h"
#include "test_util.h"

namespace linearize {
namespace {

std::filesystem::path tiny_llama() { return test::fixtures_dir() / "tiny-llama"; }

// A short run: 64-token sequences, batch 2, no validation split (the loss trajectory is what these check).
// With `stage2_steps`, stage 2 follows: LoRA with dropout (so its random draws must resume too), CE + KL.
RunConfig small_run(const std::filesystem::path& out, std::int64_t steps, std::int64_t stage2_steps = 0) {
  return RunConfig::parse(R"(
model: )" + tiny_llama().string() + R"(
out: )" + out.string() + R"(
recipe: {name: lolcats, params: {window: 16}}
data: {files: [)" + (test::fixtures_dir() / "corpus" / "corpus.txt").string() + R"(], seq_len: 64, batch_size: 2, validation_fraction: 0}
stage1: {lr: 0.01, schedule: constant, grad_accum: 2, steps: )" + std::to_string(steps) + R"(}
stage2: {enabled: )" + (stage2_steps > 0 ? "true" : "false") + R"(, steps: )" + std::to_string(std::max<std::int64_t>(stage2_steps, 1)) + R"(,
         lr: 0.003, schedule: constant, grad_accum: 2, loss: ce+kl, lora: {r: 4, alpha: 8, dropout: 0.1}}
checkpoint: {every: 3, keep: 2}
log_every: 1
)", "test");
}

std::vector<std::string> cli_args(const RunConfig& config, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const auto path = dir / "run.yaml";
  test::write_file(path, config.dump());
  return {"distill", "--config", path.string()};
}

// Step -> loss of the training records of a metrics.jsonl.
std::map<std::int64_t, double> losses(const std::filesystem::path& metrics) {
  std::map<std::int64_t, double> by_step;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto record = nlohmann::json::parse(line, nullptr, false);
    if (!record.is_discarded() && record.contains("loss")) by_step[record["step"].get<std::int64_t>()] = record["loss"].get<double>();
  }
  return by_step;
}

// Starts the binary with `args`, stdout to `stdout_file`, stderr to `stdout_file`.err. One OpenMP thread:
// the runs a test compares then use the same thread count, and none spins at OpenMP barriers for a core
// that another process holds (which slows a 1-second run down to a minute on a busy 2-core machine).
// `file_size_limit` (bytes, RLIMIT_FSIZE) makes every write past it fail with EFBIG, as a full disk would.
// `env`: variables set in the child (a rank's RANK, WORLD_SIZE, ...).
using Environment = std::vector<std::pair<std::string, std::string>>;
pid_t spawn(const std::vector<std::string>& args, const std::filesystem::path& stdout_file,
            std::optional<rlim_t> file_size_limit = std::nullopt, const Environment& env = {}) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(LINEARIZE_BINARY)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const auto stderr_file = stdout_file.string() + ".err";
    if (!std::freopen(stdout_file.c_str(), "w", stdout) || !std::freopen(stderr_file.c_str(), "w", stderr)) _exit(127);
    if (file_size_limit) {
      const rlimit limit{*file_size_limit, *file_size_limit};
      signal(SIGXFSZ, SIG_IGN);  // a write past the limit then returns EFBIG instead of killing the process
      if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(127);
    }
    setenv("OMP_NUM_THREADS", "1", 1);
    for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
    execv(LINEARIZE_BINARY, argv.data());
    _exit(127);
  }
  return pid;
}

// The exit code, or 128 + the signal that killed it.
int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

int run_to_end(const std::vector<std::string>& args, const std::filesystem::path& stdout_file,
               std::optional<rlim_t> file_size_limit = std::nullopt) {
  int status = 0;
  waitpid(spawn(args, stdout_file, file_size_limit), &status, 0);
  return exit_code(status);
}

// Runs the binary until metrics.jsonl logs step >= `step`, then sends `signal`; returns the exit code.
int signal_at_step(const std::vector<std::string>& args, const std::filesystem::path& metrics, std::int64_t step, int signal,
                   const std::filesystem::path& stdout_file) {
  const pid_t pid = spawn(args, stdout_file);
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    const auto logged = losses(metrics);
    if (!logged.empty() && logged.rbegin()->first >= step) {
      kill(pid, signal);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return exit_code(status);
}

// Every registered recipe (the registry as the program starts: test-only recipes register later).
const std::vector<std::string> kRecipes = [] {
  std::vector<std::string> names;
  for (const auto& recipe : registered_recipes()) names.push_back(recipe.name);
  return names;
}();

TEST(AttentionTransfer, GradientsReachEveryNewTensorAndNothingElse) {
  test::TempDir dir;
  for (const auto& recipe : kRecipes) {
    SCOPED_TRACE(recipe);
    ConvertOptions convert;
    convert.source = tiny_llama();
    convert.out = dir / recipe;
    convert.recipe = recipe;
    convert_checkpoint(convert);
    CausalLM student = load_model(dir / recipe);
    const CausalLM source = load_model(tiny_llama());
    const auto params = make_stage1_trainable(student);
    if (params.empty()) continue;  // a recipe without new tensors (liger-gla) has no stage 1
    const auto ids = at::randint(0, student.config().vocab_size, {1, 96}, at::kLong);
    const auto r = attention_transfer_loss(student, source, ids, 1000.0);
    ASSERT_EQ(r.layer_loss.size(), student.layers().size());
    r.loss.backward();
    for (const auto& [name, tensor] : params) {
      ASSERT_TRUE(tensor.grad().defined()) << name;
      EXPECT_TRUE(at::isfinite(tensor.grad()).all().item<bool>()) << name;
      EXPECT_GT(tensor.grad().abs().sum().item<double>(), 0.0) << name;
    }
    EXPECT_FALSE(student.layers()[0].mlp.gate().requires_grad());
    EXPECT_FALSE(student.layers()[0].input_norm.requires_grad());
  }
}

TEST(Distill, StageOneCutsTheValidationAttentionMseTenfold) {
  test::TempDir dir;
  auto config = small_run(dir / "run", 150);
  config.data.validation_fraction = 0.02;
  config.log_every = 50;
  ASSERT_EQ(run_to_end(cli_args(config, dir / "cfg"), dir / "stdout"), 0);
  std::vector<double> validation;
  std::ifstream in(dir / "run" / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (const auto r = nlohmann::json::parse(line); r.contains("val_loss")) validation.push_back(r["val_loss"].get<double>());
  ASSERT_EQ(validation.size(), 4u);  // steps 0, 50, 100, 150
  // Measured 2049 -> 106 (19x) at these settings; 10x is the issue's target.
  EXPECT_LE(validation.back(), validation.front() / 10) << validation.front() << " -> " << validation.back();
  const auto out = test::read_file(dir / "stdout");
  EXPECT_NE(out.find("verify: PASS"), std::string::npos) << out;
  EXPECT_TRUE(std::filesystem::exists(dir / "run" / "report.html"));
  EXPECT_TRUE(std::filesystem::exists(dir / "run" / "model" / "verify_logits.safetensors"));
}

TEST(Distill, ResumeAfterSigkillReproducesTheLossTrajectoryBitwise) {
  test::TempDir dir;
  constexpr std::int64_t kStage1 = 12, kStage2 = 12, kSteps = kStage1 + kStage2;
  // Stage 2's KL teacher comes from a top-16 cache, built once at the stage's start: the resumed run reads
  // its rows by data position from the file the killed run left.
  const auto run = [&](const std::string& name) {
    auto config = small_run(dir / name, kStage1, kStage2);
    config.stage2.teacher_cache_top_k = 16;
    return config;
  };
  const auto whole = run("whole");
  ASSERT_EQ(run_to_end(cli_args(whole, dir / "whole-cfg"), dir / "whole-out"), 0);
  const auto expected = losses(dir / "whole" / "metrics.jsonl");
  ASSERT_EQ(expected.size(), static_cast<std::size_t>(kSteps));

  // One kill in each stage, at a random step (checkpoints every 3 steps: a resume at a stage boundary and
  // one inside a stage are both likely over many runs).
  std::mt19937 random(std::random_device{}());
  for (const auto& [first, last] : {std::pair<std::int64_t, std::int64_t>{4, kStage1}, {kStage1 + 1, kSteps - 1}}) {
    const std::int64_t kill_step = std::uniform_int_distribution<std::int64_t>(first, last)(random);
    const std::string name = "killed-" + std::to_string(kill_step);
    SCOPED_TRACE("SIGKILL at step " + std::to_string(kill_step) + (kill_step > kStage1 ? " (stage 2)" : " (stage 1)"));
    const auto args = cli_args(run(name), dir / (name + "-cfg"));
    EXPECT_EQ(signal_at_step(args, dir / name / "metrics.jsonl", kill_step, SIGKILL, dir / (name + "-out")), 128 + SIGKILL);
    const bool cached = std::filesystem::exists(dir / name / "teacher_logits.h5");
    EXPECT_EQ(cached, kill_step > kStage1);
    auto resume_args = args;
    resume_args.push_back("--resume");
    ASSERT_EQ(run_to_end(resume_args, dir / (name + "-resumed")), 0);
    EXPECT_EQ(losses(dir / name / "metrics.jsonl"), expected);  // doubles compared exactly: JSON keeps 17 digits
    EXPECT_EQ(test::read_file(dir / (name + "-resumed.err")).find("teacher cache:") == std::string::npos, cached)
        << "a resume builds the cache only when the killed run had not";
  }
}

// A resumed run's report keeps the training-free quality row (it was computed only by a fresh start, and a
// 30-layer run's report lost it after --resume): the same figures as the run that was not resumed.
TEST(Distill, AResumedRunsReportKeepsTheTrainingFreeRow) {
  test::TempDir dir;
  auto config = small_run(dir / "run", 6);
  config.data.validation_fraction = 0.05;
  const auto args = cli_args(config, dir / "cfg");
  const auto row = [&] {
    const auto text = test::read_file(dir / "run" / "report.html");
    const auto at = text.find("perplexity, training-free");
    return at == std::string::npos ? std::string() : text.substr(at, text.find("</tr>", at) - at);
  };
  ASSERT_EQ(run_to_end(args, dir / "first"), 0) << test::read_file(dir / "first.err");
  const auto first = row();
  EXPECT_FALSE(first.empty());
  auto resume_args = args;
  resume_args.push_back("--resume");
  ASSERT_EQ(run_to_end(resume_args, dir / "resumed"), 0) << test::read_file(dir / "resumed.err");
  EXPECT_EQ(row(), first);
}

TEST(Distill, LayerwiseTrainsEachLayerFromItsCacheAndResumesBitwise) {
  test::TempDir dir;
  constexpr std::int64_t kPerLayer = 8, kSteps = 2 * kPerLayer;  // two converted layers, one after the other
  auto layerwise = [&](const std::string& name) {
    auto config = small_run(dir / name, kPerLayer);
    config.stage1.mode = Stage1Mode::kLayerwise;
    return config;
  };
  ASSERT_EQ(run_to_end(cli_args(layerwise("whole"), dir / "whole-cfg"), dir / "whole-out"), 0)
      << test::read_file(dir / "whole-out.err");
  EXPECT_TRUE(std::filesystem::exists(dir / "whole" / "layer_cache.h5"));
  std::map<std::string, std::vector<double>> per_layer;  // each layer's own loss, step by step
  std::ifstream in(dir / "whole" / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (const auto r = nlohmann::json::parse(line); r.contains("layer_loss")) {
      ASSERT_EQ(r["layer_loss"].size(), 1u) << line;
      per_layer[r["stage"].get<std::string>()].push_back(r["layer_loss"][0].get<double>());
    }
  ASSERT_EQ(per_layer.size(), 2u);
  for (const auto& [stage, values] : per_layer) {
    ASSERT_EQ(values.size(), static_cast<std::size_t>(kPerLayer)) << stage;
    EXPECT_LT(values.back(), values.front()) << stage;  // lr 1e-2 on the same rows: it learns
  }

  const auto args = cli_args(layerwise("killed"), dir / "killed-cfg");
  std::mt19937 random(std::random_device{}());
  const std::int64_t kill_step = std::uniform_int_distribution<std::int64_t>(4, kSteps - 3)(random);  // after the first checkpoint (step 3)
  SCOPED_TRACE("SIGKILL at step " + std::to_string(kill_step));
  EXPECT_EQ(signal_at_step(args, dir / "killed" / "metrics.jsonl", kill_step, SIGKILL, dir / "killed-out"), 128 + SIGKILL);
  auto resume_args = args;
  resume_args.push_back("--resume");
  ASSERT_EQ(run_to_end(resume_args, dir / "resumed-out"), 0) << test::read_file(dir / "resumed-out.err");
  EXPECT_EQ(losses(dir / "killed" / "metrics.jsonl"), losses(dir / "whole" / "metrics.jsonl"));
}

TEST(Distill, SigtermFinishesTheStepSavesAndExitsZero) {
  test::TempDir dir;
  const auto config = small_run(dir / "run", 1000);
  const auto code = signal_at_step(cli_args(config, dir / "cfg"), dir / "run" / "metrics.jsonl", 2, SIGTERM, dir / "stdout");
  EXPECT_EQ(code, 0);
  const auto out = test::read_file(dir / "stdout");
  EXPECT_NE(out.find("--resume"), std::string::npos) << out;
  const auto latest = CheckpointManager(dir / "run" / "checkpoints", 2).latest();
  ASSERT_TRUE(latest);
  // The checkpoint holds the last step the run logged: nothing after it was lost or half-applied.
  EXPECT_EQ(CheckpointManager::load(*latest).step, losses(dir / "run" / "metrics.jsonl").rbegin()->first);
}

TEST(Distill, NanStopsNamingStepLayerAndTensorAndKeepsTheLastCheckpoint) {
  test::TempDir dir;
  DistillOptions options{small_run(dir / "run", 20), false, stderr, 8};  // checkpoints at 3 and 6
  try {
    run_distill(options);
    FAIL() << "a NaN parameter did not stop the run";
  } catch (const TrainingDiverged& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("step 8"), std::string::npos) << message;
    EXPECT_NE(message.find("model.layers.0.self_attn.feature_map_q.weight (layer 0)"), std::string::npos) << message;
    EXPECT_NE(message.find("step-000006"), std::string::npos) << message;
  }
  const CheckpointManager checkpoints(dir / "run" / "checkpoints", 2);
  ASSERT_EQ(checkpoints.complete().size(), 2u);
  const auto last = CheckpointManager::load(checkpoints.complete().back());
  EXPECT_EQ(last.step, 6);
  for (const auto& [name, tensor] : last.trainables) EXPECT_TRUE(at::isfinite(tensor).all().item<bool>()) << name;
}

TEST(Distill, NanInStageTwoNamesTheLoraTensor) {
  test::TempDir dir;
  DistillOptions options{small_run(dir / "run", 4, 6), false, stderr, 8};  // checkpoints at 3, 4 (stage end), 6
  try {
    run_distill(options);
    FAIL() << "a NaN LoRA parameter did not stop the run";
  } catch (const TrainingDiverged& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("stage2 step 8"), std::string::npos) << message;
    EXPECT_NE(message.find("model.layers.0.self_attn.q_proj.lora_A.weight (layer 0)"), std::string::npos) << message;
    EXPECT_NE(message.find("step-000006"), std::string::npos) << message;
  }
  const auto last = CheckpointManager::load(CheckpointManager(dir / "run" / "checkpoints", 2).complete().back());
  EXPECT_EQ(last.step, 6);
  for (const auto& [name, tensor] : last.trainables) EXPECT_TRUE(at::isfinite(tensor).all().item<bool>()) << name;
}

// Logits of an exported model on fixed ids.
at::Tensor export_logits(const std::filesystem::path& model) {
  at::NoGradGuard no_grad;
  const auto exported = load_model(model);
  return exported.forward(at::arange(0, 48, at::kLong).remainder(exported.config().vocab_size).view({1, -1}));
}

// A hybrid (layer 0 kept as softmax attention): stage 2's LoRA trains layer 0's attention too, so L3 leaves it
// out and says so instead of failing the export.
TEST(Distill, StageTwoExportsAPeftAdapterOrMergesItAndBothVerify) {
  test::TempDir dir;
  auto adapter_run = small_run(dir / "adapter", 3, 4);
  adapter_run.recipe.params["softmax_layers"] = {0};
  ASSERT_EQ(run_to_end(cli_args(adapter_run, dir / "adapter-cfg"), dir / "adapter-out"), 0) << test::read_file(dir / "adapter-out.err");
  EXPECT_NE(test::read_file(dir / "adapter-out").find("verify: PASS"), std::string::npos) << test::read_file(dir / "adapter-out");
  EXPECT_NE(test::read_file(dir / "adapter-out").find("layers 0 left out: their attention carries trained LoRA"), std::string::npos);
  const auto adapter = read_peft_adapter(dir / "adapter" / "model" / kPeftAdapterDir);
  EXPECT_EQ(adapter.modules.size(), 2u * 4u);  // 2 layers x q, k, v, o
  EXPECT_EQ(adapter.config.r, 4);
  for (const auto& module : adapter.modules) EXPECT_GT(module.b.abs().max().item<double>(), 0.0) << module.path;  // trained

  auto merge_run = small_run(dir / "merged", 3, 4);
  merge_run.stage2.merge = true;
  merge_run.recipe.params["softmax_layers"] = {0};
  ASSERT_EQ(run_to_end(cli_args(merge_run, dir / "merged-cfg"), dir / "merged-out"), 0) << test::read_file(dir / "merged-out.err");
  const auto merged_out = test::read_file(dir / "merged-out");
  EXPECT_NE(merged_out.find("verify: PASS"), std::string::npos) << merged_out;
  EXPECT_NE(merged_out.find("(8 with LoRA merged left out)"), std::string::npos) << merged_out;
  EXPECT_NE(merged_out.find("layers 0 left out: their attention carries trained LoRA"), std::string::npos) << merged_out;
  EXPECT_FALSE(std::filesystem::exists(dir / "merged" / "model" / kPeftAdapterDir));
  const auto config = read_json_file(dir / "merged" / "model" / "config.json");
  EXPECT_EQ(config["linearize"]["lora_merged"]["tensors"].size(), 8u);

  // Both runs trained the same adapters (same config, one thread); merging reassociates W x + s B (A x)
  // into (W + s B A) x: fp32 rounding of a few ulp per projection, through 2 layers. 1e-5 of the largest
  // logit bounds that with room; a dropped or doubled adapter moves the logits by orders more.
  const auto with_adapter = export_logits(dir / "adapter" / "model"), merged = export_logits(dir / "merged" / "model");
  EXPECT_LE((merged - with_adapter).abs().max().item<double>() / with_adapter.abs().max().item<double>(), 1e-5);
}

TEST(Distill, AFailedCheckpointWriteNamesItAndKeepsThePreviousOne) {
  test::TempDir dir;
  const auto first = small_run(dir / "run", 6);  // checkpoints at 3 and 6
  ASSERT_EQ(run_to_end(cli_args(first, dir / "cfg"), dir / "first-out"), 0);
  const CheckpointManager checkpoints(dir / "run" / "checkpoints", 2);
  ASSERT_EQ(checkpoints.complete().size(), 2u);
  const auto previous = checkpoints.complete().back();
  const auto trainables = std::filesystem::file_size(previous / "trainables.safetensors");
  // Files may grow to half a checkpoint's trainables: metrics.jsonl (a few KB) still fits, the next
  // checkpoint does not, as on a disk that fills up between two checkpoints.
  const auto limit = static_cast<rlim_t>(trainables / 2);
  ASSERT_GT(limit, std::filesystem::file_size(dir / "run" / "metrics.jsonl") + 4096);

  auto longer = small_run(dir / "run", 12);
  auto args = cli_args(longer, dir / "cfg");
  args.push_back("--resume");
  EXPECT_NE(run_to_end(args, dir / "second-out", limit), 0);
  const auto err = test::read_file(dir / "second-out.err");
  EXPECT_NE(err.find("step-000009"), std::string::npos) << err;
  EXPECT_NE(err.find("checkpoint not written"), std::string::npos) << err;
  EXPECT_NE(err.find("the last complete checkpoint is " + previous.string()), std::string::npos) << err;
  ASSERT_EQ(checkpoints.latest(), previous);
  EXPECT_EQ(CheckpointManager::load(previous).step, 6);  // whole and readable
  for (const auto& entry : std::filesystem::directory_iterator(dir / "run" / "checkpoints"))
    EXPECT_EQ(entry.path().filename().string().rfind(".", 0), std::string::npos) << "left behind: " << entry.path();
}

// device.dtype bf16 runs each micro-batch's forward under autocast (on the CPU here; CUDA takes the same
// path): the loss moves off the fp32 one by bf16 rounding, the trainables and the export stay fp32.
TEST(Distill, Bf16AutocastChangesTheLossByRoundingOnlyAndKeepsFp32Trainables) {
  test::TempDir dir;
  auto fp32 = small_run(dir / "fp32", 2, 2);
  auto bf16 = small_run(dir / "bf16", 2, 2);
  bf16.device.dtype = ComputeDtype::kBf16;
  const auto a = run_distill(DistillOptions{fp32, false, stderr, std::nullopt});
  const auto b = run_distill(DistillOptions{bf16, false, stderr, std::nullopt});
  const auto exact = losses(dir / "fp32" / "metrics.jsonl"), rounded = losses(dir / "bf16" / "metrics.jsonl");
  ASSERT_EQ(exact.size(), 4u);
  ASSERT_EQ(rounded.size(), 4u);
  for (const auto& [step, loss] : exact) {
    const double rel = std::abs(rounded.at(step) - loss) / loss;
    std::cout << "step " << step << ": fp32 " << loss << ", bf16 autocast " << rounded.at(step) << " (" << rel << ")\n";
    // bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2% per value); the losses are means over
    // thousands of rounded products whose errors mostly cancel (measured 5e-5 to 5.4e-4). 1% leaves ~20x
    // room; exactly equal would mean autocast did not act.
    EXPECT_GT(rel, 0.0) << "step " << step;
    EXPECT_LT(rel, 0.01) << "step " << step;
  }
  const auto last = CheckpointManager::load(CheckpointManager(dir / "bf16" / "checkpoints", 2).complete().back());
  for (const auto& [name, tensor] : last.trainables) EXPECT_EQ(tensor.scalar_type(), at::kFloat) << name;
  EXPECT_TRUE(b.verify && a.verify);
}

// The memory options change what a run keeps, not what it learns. Activation checkpointing recomputes each
// block in the backward with the dropout masks and autocast of its forward: the same operations on the same
// values. A teacher cache of the whole vocabulary gives the full KL (its sum in another order). A top-16
// cache's KL is the KL of the coarsened distributions, never above the full one (distill/teacher_cache.h).
TEST(Distill, ActivationCheckpointingAndTheTeacherCacheTrainWhatThePlainRunTrains) {
  test::TempDir dir;
  constexpr std::int64_t kStage1Steps = 2, kStage2Steps = 3;
  const auto configure = [&](const std::string& name, bool checkpointing, std::int64_t top_k) {
    auto config = small_run(dir / name, kStage1Steps, kStage2Steps);
    config.device.activation_checkpointing = checkpointing;
    config.stage2.teacher_cache_top_k = top_k;
    run_distill(DistillOptions{config, false, stderr, std::nullopt});
    return losses(dir / name / "metrics.jsonl");
  };
  const auto plain = configure("plain", false, 0);
  const auto checkpointed = configure("checkpointed", true, 0);
  const auto whole_vocabulary = configure("cached", false, 1'000'000);  // clamped to the 768 tokens
  const auto top16 = configure("top16", false, 16);
  ASSERT_EQ(plain.size(), static_cast<std::size_t>(kStage1Steps + kStage2Steps));
  EXPECT_TRUE(std::filesystem::exists(dir / "cached" / "teacher_logits.h5"));
  for (const auto& [step, loss] : plain) {
    EXPECT_EQ(checkpointed.at(step), loss) << "step " << step;  // both stages checkpoint their blocks
    if (step <= kStage1Steps) continue;  // stage 1 reads no teacher cache
    // The KL's terms summed in another order (by teacher probability): fp32 rounding of a 768-term sum,
    // a few u = 6e-8 relative (the test's own KL check bounds the rows at 1e-5 absolute); 1e-6 relative
    // to a loss of order 5 leaves room for that, and a token missing from the KL changes the loss at 1e-3.
    EXPECT_NEAR(whole_vocabulary.at(step), loss, 1e-6 * loss) << "step " << step;
  }
  // Every training record carries its stage's peak resident memory: at least this process's libraries and
  // fixture (over 10 MB), and far below the machine.
  std::ifstream records(dir / "plain" / "metrics.jsonl");
  for (std::string line; std::getline(records, line);) {
    const auto record = nlohmann::json::parse(line);
    if (!record.contains("loss")) continue;
    EXPECT_GT(record.value("peak_rss_bytes", std::int64_t{0}), std::int64_t{10} << 20) << line;
    EXPECT_LT(record.value("peak_rss_bytes", std::int64_t{0}), std::int64_t{64} << 30) << line;
  }
  const auto first_stage2 = kStage1Steps + 1;
  EXPECT_LT(top16.at(first_stage2), plain.at(first_stage2));  // the same weights, KL_16 <= KL
  std::cout << "first stage-2 step: loss " << plain.at(first_stage2) << ", with the top-16 cache "
            << top16.at(first_stage2) << "\n";
}

// A MoE source: both stages train with activation checkpointing and the teacher cache as without them, the export
// carries the experts and routers (and gpt-oss's sinks) byte for byte (frozen: no router drift) and verifies, and the
// report says what trained and what stayed frozen.
struct MoeSource {
  const char* fixture;
  std::int64_t frozen_tensors;  // its tensors under .mlp. and its sinks
};

class DistillMoe : public testing::TestWithParam<MoeSource> {};

TEST_P(DistillMoe, TrainsAttentionOnlyAndKeepsItsExpertsAndRouters) {
  test::TempDir dir;
  const auto source = test::fixtures_dir() / GetParam().fixture;
  const auto configure = [&](const std::string& name, bool checkpointing, std::int64_t top_k) {
    auto config = small_run(dir / name, 2, 2);
    config.model = source.string();
    config.device.activation_checkpointing = checkpointing;
    config.stage2.teacher_cache_top_k = top_k;
    config.stage2.merge = true;
    run_distill(DistillOptions{config, false, stderr, std::nullopt});
    return losses(dir / name / "metrics.jsonl");
  };
  const auto plain = configure("plain", false, 0);
  const auto checkpointed = configure("checkpointed", true, 1'000'000);
  ASSERT_EQ(plain.size(), 4u);
  // Checkpointing recomputes the same ops (stage 1 bitwise); the whole-vocabulary teacher cache sums the KL in another
  // order, fp32 rounding only (the bound of ActivationCheckpointingAndTheTeacherCacheTrainWhatThePlainRunTrains).
  for (const auto& [step, loss] : plain) EXPECT_NEAR(checkpointed.at(step), loss, 1e-6 * loss) << "step " << step;
  const auto exported = CheckpointWeights::open(dir / "plain" / "model"), original = CheckpointWeights::open(source);
  std::int64_t compared = 0;
  for (const auto& name : original.names()) {
    if (name.find(".mlp.") == std::string::npos && name.find(".sinks") == std::string::npos) continue;
    EXPECT_TRUE(exported.tensor(name).equal(original.tensor(name))) << name;
    ++compared;
  }
  EXPECT_EQ(compared, GetParam().frozen_tensors);
  const auto report = test::read_file(dir / "plain" / "report.html");
  EXPECT_NE(report.find("the experts and routers of 2 MoE layers included"), std::string::npos);
  EXPECT_NE(report.find("LoRA on q_proj, k_proj, v_proj, o_proj"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(
    Sources, DistillMoe,
    // Qwen3-MoE: routed layers 0 and 2 (router + 4 experts x 3), a dense layer 1 (3). gpt-oss: 2 routed layers of a
    // router weight and bias, 4 stacked expert tensors and the sinks.
    testing::Values(MoeSource{"tiny-qwen3-moe", 2 * (1 + 4 * 3) + 3}, MoeSource{"tiny-gpt-oss", 2 * (2 + 4 + 1)}),
    [](const testing::TestParamInfo<MoeSource>& param) {
      std::string name = param.param.fixture;
      std::replace(name.begin(), name.end(), '-', '_');
      return name;
    });

// Two processes on one run directory (two ranks launched with the same out, a second terminal): the one that
// finds it locked stops with exit 2 before writing anything.
TEST(DistillCli, ARunDirectoryInUseIsBadInputAndLeftAlone) {
  test::TempDir dir;
  const auto config = small_run(dir / "run", 2);
  const DirectoryLock held(dir / "run");
  EXPECT_EQ(run_to_end(cli_args(config, dir / "cfg"), dir / "stdout"), 2);
  const auto err = test::read_file(dir / "stdout.err");
  EXPECT_NE(err.find((dir / "run" / ".lock").string() + ": lock: is held by another process"), std::string::npos) << err;
  EXPECT_FALSE(std::filesystem::exists(dir / "run" / "converted"));
}

TEST(DistillCli, MistypedKeyFailsBeforeAnyWorkNamingTheNearestKey) {
  test::TempDir dir;
  const auto args = cli_args(small_run(dir / "run", 5), dir / "cfg");
  auto mistyped = args;
  mistyped.insert(mistyped.end(), {"--set", "stage1.stpes=3"});
  const auto r = test::run_linearize(mistyped);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("stage1.steps"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "run"));
}

// eval.text: the export's `linearize eval` against its source at the end of the run, as eval.json and charts in
// report.html; a length the source cannot take is refused before training, naming eval.lengths.
TEST(Distill, EvalTextAddsTheExportsEvalToTheReport) {
  test::TempDir dir;
  auto config = small_run(dir / "run", 2);
  config.eval.text = (test::fixtures_dir() / "corpus" / "corpus.txt").string();
  config.eval.lengths = {200};
  ASSERT_EQ(run_to_end(cli_args(config, dir / "cfg"), dir / "out"), 0) << test::read_file(dir / "out.err");
  const auto json = nlohmann::json::parse(test::read_file(dir / "run" / "eval.json"));
  EXPECT_EQ(json["perplexity_by_position"].size(), 2u);  // 0-64, 64-256
  EXPECT_GT(json["perplexity_by_position"][1]["kl"].get<double>(), 0.0) << "the trained export differs from its source";
  const auto report = test::read_file(dir / "run" / "report.html");
  EXPECT_NE(report.find("Passkey accuracy: model"), std::string::npos);
  EXPECT_NE(report.find("Perplexity ratio and KL"), std::string::npos);

  config.out = (dir / "too-long").string();
  config.eval.lengths = {300};
  ASSERT_EQ(run_to_end(cli_args(config, dir / "cfg2"), dir / "bad"), 2);
  EXPECT_NE(test::read_file(dir / "bad.err").find("eval.lengths"), std::string::npos) << test::read_file(dir / "bad.err");
  EXPECT_FALSE(std::filesystem::exists(dir / "too-long" / "metrics.jsonl")) << "refused before training";
}

// Every shipped run file loads (its bases too), names a registered recipe and gives it parameters it declares
// (auto:N / auto:P% checked against the tiny fixture's 2 layers), so a renamed key or recipe breaks here, not in a
// user's run.
TEST(DistillConfigs, EveryShippedRunFileLoadsWithParametersItsRecipeDeclares) {
  const auto model = load_model_config(test::fixtures_dir() / "tiny-llama" / "config.json");
  std::size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(LINEARIZE_CONFIGS)) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    const auto file = entry.path().string();
    const auto config = RunConfig::load(entry.path());
    const Recipe& recipe = find_recipe(config.recipe.name, file, "recipe.name");
    auto params = config.recipe.params;
    if (params.contains("softmax_layers") && auto_softmax_layers(params["softmax_layers"], model, file))
      params["softmax_layers"] = nlohmann::json::array();
    EXPECT_NO_THROW(resolve_recipe_params(recipe, params, model, file));
    ++files;
  }
  EXPECT_GE(files, 9u);  // distill-example, demo-tiny, quality-cpu and one per recipe
}

}  // namespace
}  // namespace linearize

namespace linearize {
namespace {

// A TCP port nothing listens on now, for a job's MASTER_PORT.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0)
    throw std::runtime_error("free_port: no port");
  close(fd);
  return ntohs(addr.sin_port);
}

Environment rank_env(int rank, int world, int port) {
  return {{"RANK", std::to_string(rank)}, {"WORLD_SIZE", std::to_string(world)}, {"LOCAL_RANK", std::to_string(rank)},
          {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", std::to_string(port)}};
}

// Starts every rank of a `world`-process job with `args`; returns their pids (rank order).
std::vector<pid_t> start_job(const std::vector<std::string>& args, int world, const std::filesystem::path& logs) {
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r)
    pids.push_back(spawn(args, logs.string() + ".rank" + std::to_string(r), std::nullopt, rank_env(r, world, port)));
  return pids;
}

std::vector<int> wait_all(const std::vector<pid_t>& pids) {
  std::vector<int> codes;
  for (const auto pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    codes.push_back(exit_code(status));
  }
  return codes;
}

// Layer-wise stage 1 (3 steps a layer) then stage 2 (4 steps, CE + KL), global batch 4 (2 rows a rank on
// two), LoRA without dropout: each rank's dropout would draw its own masks, which one process cannot match.
RunConfig parallel_run(const std::filesystem::path& out, const std::filesystem::path& model = tiny_llama()) {
  auto config = small_run(out, 3, 4);
  config.model = model.string();
  config.stage1.mode = Stage1Mode::kLayerwise;
  config.data.batch_size = 4;
  config.stage2.lora.dropout = 0;
  config.device.timeout_s = 30;
  return config;
}

// On the 24-layer fixture: each rank trains a block of 12 layers one after another, as at real depth.
TEST(DistillDistributed, TwoRanksTrainWhatOneProcessTrains) {
  test::TempDir dir;
  const auto deep = test::fixtures_dir() / "deep-llama";
  constexpr std::int64_t kStage1End = 24 * 3;
  // Stage 2's KL from a teacher cache of the whole vocabulary (the full KL): each rank caches its own rows.
  const auto run = [&](const std::string& name) {
    auto config = parallel_run(dir / name, deep);
    config.stage2.teacher_cache_top_k = 1'000'000;
    return cli_args(config, dir / (name + "-cfg"));
  };
  ASSERT_EQ(run_to_end(run("one"), dir / "one-out"), 0) << test::read_file(dir / "one-out.err");
  const auto codes = wait_all(start_job(run("two"), 2, dir / "two-out"));
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << test::read_file(dir / "two-out.rank0.err") << test::read_file(dir / "two-out.rank1.err");
  // Block-parallel: each rank cached only its own layers (its shard of the cache).
  EXPECT_TRUE(std::filesystem::exists(dir / "two" / "layer_cache.h5"));
  EXPECT_TRUE(std::filesystem::exists(dir / "two" / "rank1" / "layer_cache.h5"));
  EXPECT_TRUE(std::filesystem::exists(dir / "two" / "teacher_logits.h5"));
  EXPECT_TRUE(std::filesystem::exists(dir / "two" / "rank1" / "teacher_logits.h5"));
  // The report charts every layer's stage 1, rank 1's from its own log.
  const auto report = test::read_file(dir / "two" / "report.html");
  EXPECT_NE(report.find("stage1.layer0"), std::string::npos);
  EXPECT_NE(report.find("stage1.layer23"), std::string::npos);

  // Stage 1: layers 12-23 trained on rank 1 from the same cached rows with the same steps: bit for bit,
  // the whole exported checkpoint (stage-1 tensors included).
  const auto one = SafetensorsFile::open(dir / "one" / "model" / "model.safetensors");
  const auto two = SafetensorsFile::open(dir / "two" / "model" / "model.safetensors");
  ASSERT_EQ(one.names(), two.names());
  for (const auto& name : one.names()) EXPECT_TRUE(at::equal(one.tensor(name), two.tensor(name))) << name;
  auto one_losses = losses(dir / "one" / "metrics.jsonl"), two_losses = losses(dir / "two" / "metrics.jsonl");
  for (const auto& [step, loss] : losses(dir / "two" / "rank1" / "metrics.jsonl")) two_losses.emplace(step, loss);  // its layers' steps
  ASSERT_EQ(one_losses.size(), static_cast<std::size_t>(kStage1End + 4));
  ASSERT_EQ(two_losses.size(), one_losses.size());
  for (const auto& [step, loss] : one_losses) {
    // Stage 1 is the same computation: equal. Stage 2 sums two half-batch gradients and loss shares in
    // another order than one full-batch pass (and its GEMMs see 2 rows, not 4): fp32 rounding, u = 6e-8 per
    // operation, over sums of a few hundred terms (measured 5e-8 relative on tiny-llama). 1e-6 (16u) allows
    // that; an unscaled share doubles the loss, and without the gradient all-reduce each rank steps on its
    // own two sequences, which are other data.
    if (step <= kStage1End) EXPECT_EQ(two_losses.at(step), loss) << "step " << step;
    else EXPECT_NEAR(two_losses.at(step), loss, 1e-6 * std::abs(loss)) << "step " << step;
  }
  // The adapters: 4 AdamW steps from those gradients. Adam divides each update by the gradient's own RMS,
  // so a relative gradient difference d moves an update by about d (measured 9e-6 of the tensor's largest
  // value after 4 steps on tiny-llama, where B's first updates start from zero); 1e-4 is tenfold that, and
  // a rank stepping on its own half-batch gradient moves each update by its sign and size at order one.
  const auto a = read_peft_adapter(dir / "one" / "model" / kPeftAdapterDir), b = read_peft_adapter(dir / "two" / "model" / kPeftAdapterDir);
  ASSERT_EQ(a.modules.size(), b.modules.size());
  for (std::size_t i = 0; i < a.modules.size(); ++i) {
    for (const auto& [x, y] : {std::pair{a.modules[i].a, b.modules[i].a}, std::pair{a.modules[i].b, b.modules[i].b}}) {
      const double scale = x.abs().max().item<double>();
      EXPECT_LE((x - y).abs().max().item<double>(), 1e-4 * scale) << a.modules[i].path;
    }
  }
}

// Joint stage 1 on two ranks is data-parallel: each rank's rows, its share of the mean, gradients summed.
TEST(DistillDistributed, JointStageOneOnTwoRanksMatchesOneProcess) {
  test::TempDir dir;
  const auto joint = [&](const std::string& name) {
    auto config = small_run(dir / name, 4);
    config.data.batch_size = 4;
    config.device.timeout_s = 30;
    return config;
  };
  ASSERT_EQ(run_to_end(cli_args(joint("one"), dir / "one-cfg"), dir / "one-out"), 0) << test::read_file(dir / "one-out.err");
  const auto codes = wait_all(start_job(cli_args(joint("two"), dir / "two-cfg"), 2, dir / "two-out"));
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << test::read_file(dir / "two-out.rank0.err") << test::read_file(dir / "two-out.rank1.err");
  const auto one = losses(dir / "one" / "metrics.jsonl"), two = losses(dir / "two" / "metrics.jsonl");
  ASSERT_EQ(one.size(), 4u);
  ASSERT_EQ(two.size(), one.size());
  // As stage 2 in TwoRanksTrainWhatOneProcessTrains: the same sums in another order (1e-6 of the loss), and
  // the trained feature maps within 1e-4 of their largest value after AdamW's steps.
  for (const auto& [step, loss] : one) EXPECT_NEAR(two.at(step), loss, 1e-6 * std::abs(loss)) << "step " << step;
  const auto a = SafetensorsFile::open(dir / "one" / "model" / "model.safetensors");
  const auto b = SafetensorsFile::open(dir / "two" / "model" / "model.safetensors");
  for (const auto& name : a.names()) {
    const auto x = a.tensor(name), y = b.tensor(name);
    EXPECT_LE((x - y).abs().max().item<double>(), 1e-4 * std::max(x.abs().max().item<double>(), 1e-30)) << name;
  }
}

TEST(DistillDistributed, ADeadRankEndsTheJobAndItResumesWithAnotherWorldSize) {
  test::TempDir dir;
  auto config = parallel_run(dir / "run");
  config.stage2.optim.steps = 150;  // far more than rank 0 can run between the poll and the kill
  config.device.timeout_s = 20;
  const auto args = cli_args(config, dir / "cfg");
  const auto pids = start_job(args, 2, dir / "out");
  // Rank 1 dies (SIGKILL) once stage 2 has run a step past its first checkpoint (step 9).
  for (;;) {
    const auto logged = losses(dir / "run" / "metrics.jsonl");
    if (!logged.empty() && logged.rbegin()->first >= 10) break;
    int status = 0;
    ASSERT_EQ(waitpid(pids[0], &status, WNOHANG), 0) << test::read_file(dir / "out.rank0.err");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(pids[1], SIGKILL);
  const auto started = std::chrono::steady_clock::now();
  const auto codes = wait_all(pids);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_EQ(codes, (std::vector<int>{4, 128 + SIGKILL}));
  EXPECT_LE(waited, config.device.timeout_s + 10.0);  // within the timeout (Gloo sees the closed socket at once)
  const auto err = test::read_file(dir / "out.rank0.err");
  EXPECT_NE(err.find("error: rank 0 of 2: all-reduce failed"), std::string::npos) << err;
  EXPECT_NE(err.find("--resume"), std::string::npos) << err;

  // One process continues the two-rank run from rank 0's last checkpoint to the end.
  auto resume = args;
  resume.push_back("--resume");
  ASSERT_EQ(run_to_end(resume, dir / "resumed"), 0) << test::read_file(dir / "resumed.err");
  EXPECT_EQ(losses(dir / "run" / "metrics.jsonl").rbegin()->first, 6 + 150);
  EXPECT_NE(test::read_file(dir / "resumed").find("verify: PASS"), std::string::npos);
}

// A process naming a rank of a job already running (its rank directory locked) is not part of that job:
// it stops with exit 2 before joining anything or writing.
TEST(DistillDistributed, AProcessForARankAlreadyRunningIsBadInput) {
  test::TempDir dir;
  const auto config = parallel_run(dir / "run");
  const DirectoryLock held(dir / "run" / "rank1");
  int status = 0;
  waitpid(spawn(cli_args(config, dir / "cfg"), dir / "out", std::nullopt, rank_env(1, 2, free_port())), &status, 0);
  EXPECT_EQ(exit_code(status), 2);
  const auto err = test::read_file(dir / "out.err");
  EXPECT_NE(err.find((dir / "run" / "rank1" / ".lock").string() + ": lock: is held by another process"), std::string::npos) << err;
  EXPECT_FALSE(std::filesystem::exists(dir / "run" / "converted"));
}

TEST(DistillDistributed, LauncherEnvironmentIsReadAndBadValuesNamed) {
  const auto with = [](const Environment& env, auto check) {
    for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"})
      unsetenv(name);
    for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
    check();
    for (const auto& [name, value] : env) unsetenv(name.c_str());
  };
  with({}, [] { EXPECT_FALSE(process_place_from_environment()); });
  with({{"RANK", "0"}, {"WORLD_SIZE", "1"}}, [] { EXPECT_FALSE(process_place_from_environment()); });
  with(rank_env(1, 4, 1234), [] {
    const auto place = process_place_from_environment();
    ASSERT_TRUE(place);
    EXPECT_EQ(place->rank, 1);
    EXPECT_EQ(place->world_size, 4);
    EXPECT_EQ(place->master_port, 1234);
  });
  // An sbatch script sets SLURM_NTASKS for the allocation: a process run there directly is alone.
  with({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}}, [] { EXPECT_FALSE(process_place_from_environment()); });
  with({{"SLURM_PROCID", "2"}, {"SLURM_STEP_NUM_TASKS", "3"}, {"SLURM_LOCALID", "0"}, {"MASTER_ADDR", "node1"}}, [] {
    const auto place = process_place_from_environment();
    ASSERT_TRUE(place);
    EXPECT_EQ(place->rank, 2);
    EXPECT_EQ(place->master_addr, "node1");
  });
  const auto error_of = [] {
    try {
      process_place_from_environment();
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  with({{"RANK", "2"}, {"WORLD_SIZE", "2"}}, [&] { EXPECT_EQ(error_of(), "environment: RANK: 2 is not below WORLD_SIZE (2)"); });
  with({{"RANK", "x"}, {"WORLD_SIZE", "2"}}, [&] { EXPECT_EQ(error_of(), "environment: RANK: is 'x', not an integer >= 0"); });
  with({{"WORLD_SIZE", "2"}}, [&] { EXPECT_EQ(error_of(), "environment: RANK: is not set, but WORLD_SIZE is 2"); });
}

}  // namespace
}  // namespace linearize
