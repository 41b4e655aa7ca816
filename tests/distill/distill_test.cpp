// Stage 1 and `linearize distill` on the tiny fixture: gradients reach every recipe's new tensors and
// nothing else; attention transfer cuts the attention-output MSE; a run killed with SIGKILL resumes onto
// the uninterrupted loss trajectory bit for bit; SIGTERM saves and exits 0; a NaN stops the run naming
// the step, the layer and the tensor, with the last good checkpoint intact.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "converter/linearized.h"
#include "distill/attention_transfer.h"
#include "distill/checkpoint.h"
#include "distill/run.h"
#include "test_util.h"

namespace linearize {
namespace {

std::filesystem::path tiny_llama() { return test::fixtures_dir() / "tiny-llama"; }

// A short run: 64-token sequences, batch 2, no validation split (the loss trajectory is what these check).
RunConfig small_run(const std::filesystem::path& out, std::int64_t steps) {
  return RunConfig::parse(R"(
model: )" + tiny_llama().string() + R"(
out: )" + out.string() + R"(
recipe: {name: lolcats, params: {window: 16}}
data: {files: [)" + (test::fixtures_dir() / "corpus" / "corpus.txt").string() + R"(], seq_len: 64, batch_size: 2, validation_fraction: 0}
stage1: {lr: 0.01, schedule: constant, grad_accum: 2, steps: )" + std::to_string(steps) + R"(}
stage2: {enabled: false}
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

// Starts the binary with `args`, stdout to `stdout_file`, stderr discarded. One OpenMP thread: the runs
// a test compares then use the same thread count, and none spins at OpenMP barriers for a core that
// another process holds (which slows a 1-second run down to a minute on a busy 2-core machine).
pid_t spawn(const std::vector<std::string>& args, const std::filesystem::path& stdout_file) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(LINEARIZE_BINARY)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (!std::freopen(stdout_file.c_str(), "w", stdout) || !std::freopen("/dev/null", "w", stderr)) _exit(127);
    setenv("OMP_NUM_THREADS", "1", 1);
    execv(LINEARIZE_BINARY, argv.data());
    _exit(127);
  }
  return pid;
}

// The exit code, or 128 + the signal that killed it.
int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

int run_to_end(const std::vector<std::string>& args, const std::filesystem::path& stdout_file) {
  int status = 0;
  waitpid(spawn(args, stdout_file), &status, 0);
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

TEST(AttentionTransfer, GradientsReachEveryNewTensorAndNothingElse) {
  test::TempDir dir;
  for (const std::string recipe : {"lolcats", "hedgehog", "supra"}) {
    SCOPED_TRACE(recipe);
    ConvertOptions convert;
    convert.source = tiny_llama();
    convert.out = dir / recipe;
    convert.recipe = recipe;
    convert_checkpoint(convert);
    CausalLM student = load_model(dir / recipe);
    const CausalLM source = load_model(tiny_llama());
    const auto params = make_stage1_trainable(student);
    ASSERT_FALSE(params.empty());
    const auto ids = at::randint(0, student.config().vocab_size, {1, 96}, at::kLong);
    const auto r = attention_transfer_loss(student, source, ids, 1000.0);
    ASSERT_EQ(r.layer_mse.size(), student.layers().size());
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
  constexpr std::int64_t kSteps = 24;
  const auto whole = small_run(dir / "whole", kSteps);
  ASSERT_EQ(run_to_end(cli_args(whole, dir / "whole-cfg"), dir / "whole-out"), 0);

  const auto killed = small_run(dir / "killed", kSteps);
  const auto args = cli_args(killed, dir / "killed-cfg");
  std::mt19937 random(std::random_device{}());
  const std::int64_t kill_step = std::uniform_int_distribution<std::int64_t>(4, kSteps - 4)(random);
  SCOPED_TRACE("SIGKILL at step " + std::to_string(kill_step));
  EXPECT_EQ(signal_at_step(args, dir / "killed" / "metrics.jsonl", kill_step, SIGKILL, dir / "killed-out"), 128 + SIGKILL);
  auto resume_args = args;
  resume_args.push_back("--resume");
  ASSERT_EQ(run_to_end(resume_args, dir / "resumed-out"), 0);

  const auto expected = losses(dir / "whole" / "metrics.jsonl"), got = losses(dir / "killed" / "metrics.jsonl");
  ASSERT_EQ(expected.size(), static_cast<std::size_t>(kSteps));
  EXPECT_EQ(got, expected);  // doubles compared exactly: JSON keeps 17 significant digits
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

TEST(DistillConfigs, EveryShippedRunFileLoads) {
  std::size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(LINEARIZE_CONFIGS)) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    EXPECT_NO_THROW(RunConfig::load(entry.path()));
    ++files;
  }
  EXPECT_GE(files, 5u);  // distill-example, demo-tiny, lolcats, hedgehog, supra
}

}  // namespace
}  // namespace linearize
