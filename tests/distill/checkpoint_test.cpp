// Training checkpoints: exact resume (parameters and losses bitwise equal to an uninterrupted run, with
// dropout and random batches drawing from the restored generator), retention, half-written directories
// ignored, write failures that leave the previous checkpoint intact, and the SIGINT/SIGTERM stop flag.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>

#include <csignal>

#include "distill/checkpoint.h"
#include "converter/model/lora.h"
#include "distill/stop_flag.h"
#include "formats/error.h"
#include "test_util.h"

namespace linearize {
namespace {

namespace fs = std::filesystem;

// A tiny model: LoRA (with dropout, so training draws random numbers) on a frozen layer, plus a trained
// bias; AdamW with weight decay and amsgrad so every piece of optimiser state matters.
struct TinyRun {
  explicit TinyRun(std::uint64_t seed)
      : init((at::manual_seed(seed), 0)),
        // The frozen weight is the model's (the same in every run); A's init comes from `seed`.
        lora("model.layers.0.self_attn.q_proj", at::randn({6, 10}, at::make_generator<at::CPUGeneratorImpl>(42)), at::Tensor(),
             {4, 8, 0.25, false}),
        head_bias(at::zeros({6}).requires_grad_(true)),
        params{{lora.a_name(), lora.a()}, {lora.b_name(), lora.b()}, {"head.bias", head_bias}},
        optimizer(std::vector<at::Tensor>{lora.a(), lora.b(), head_bias},
                  torch::optim::AdamWOptions(1e-2).weight_decay(0.01).amsgrad(true)) {}

  // One step on a random batch from the global generator; returns the loss.
  float step() {
    const auto x = at::randn({3, 5, 10});
    const auto target = at::sin(x.sum(-1, true)).expand({3, 5, 6});
    optimizer.zero_grad();
    const auto loss = (lora.forward(x, true) + head_bias - target).square().mean();
    loss.backward();
    optimizer.step();
    return loss.item<float>();
  }

  TrainingState state(std::int64_t step) const {
    TrainingState s;
    s.step = step;
    for (const auto& [name, t] : params) s.trainables.emplace_back(name, t.detach());
    s.optimizer = save_adamw(optimizer, params);
    s.scheduler = {{"kind", "plateau"}, {"best", 0.5}};
    s.data_position = {{"epoch", 1}, {"sequence", 12}};
    s.config_yaml = "seed: 0\n";
    s.rng = capture_rng();
    return s;
  }

  void restore(const TrainingState& s) {
    copy_trainables(params, s.trainables, "ckpt");
    load_adamw(optimizer, params, s.optimizer, "ckpt");
    restore_rng(s.rng);
  }

  int init;
  LoraLinear lora;
  at::Tensor head_bias;
  NamedTensors params;
  torch::optim::AdamW optimizer;
};

TEST(CheckpointTest, ResumeContinuesBitwiseLikeAnUninterruptedRun) {
  test::TempDir dir;
  CheckpointManager manager(dir.path(), 3);
  std::vector<float> uninterrupted;
  TinyRun run(0);
  for (int step = 1; step <= 8; ++step) {
    uninterrupted.push_back(run.step());
    if (step == 3) manager.save(run.state(step));
  }

  TinyRun resumed(99);  // other initial values and generator state: everything must come from the checkpoint
  const auto latest = manager.latest();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->filename(), "step-000003");
  const auto state = CheckpointManager::load(*latest);
  EXPECT_EQ(state.step, 3);
  EXPECT_EQ(state.scheduler["best"], 0.5);
  EXPECT_EQ(state.data_position["sequence"], 12);
  EXPECT_EQ(state.config_yaml, "seed: 0\n");
  resumed.restore(state);
  for (int step = 4; step <= 8; ++step) EXPECT_EQ(resumed.step(), uninterrupted[static_cast<std::size_t>(step - 1)]) << "step " << step;
  for (std::size_t i = 0; i < run.params.size(); ++i) {
    EXPECT_TRUE(at::equal(run.params[i].second, resumed.params[i].second))
        << run.params[i].first;
  }
}

TEST(CheckpointTest, KeepsTheNewestCompleteAndIgnoresHalfWrittenOnes) {
  test::TempDir dir;
  CheckpointManager manager(dir.path(), 2);
  TinyRun run(1);
  for (int step = 1; step <= 4; ++step) manager.save(run.state(step * 10));
  EXPECT_EQ(test::list_dir(dir.path()), (std::vector<std::string>{"step-000030", "step-000040"}));
  // A run killed mid-save leaves a temporary directory; a directory without state.json is not complete.
  fs::create_directory(dir / ".step-000050.tmp");
  fs::create_directory(dir / "step-000060");
  EXPECT_EQ(manager.latest()->filename(), "step-000040");
  // Saving the same step again replaces it (a resumed run reaching its own checkpoint step).
  manager.save(run.state(40));
  manager.save(run.state(70));
  EXPECT_EQ(manager.latest()->filename(), "step-000070");
  EXPECT_FALSE(fs::exists(dir / ".step-000070.tmp"));
}

TEST(CheckpointTest, WriteFailureLeavesThePreviousCheckpointIntact) {
  test::TempDir dir;
  CheckpointManager manager(dir.path(), 2);
  TinyRun run(2);
  run.step();
  const auto first = manager.save(run.state(1));
  run.step();
  manager.set_write_hook([](const fs::path& file) {
    if (file.filename() == "rng.safetensors") throw std::runtime_error("No space left on device");
  });
  try {
    manager.save(run.state(2));
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), (dir / "step-000002").string() + ": rng.safetensors: checkpoint not written (No space left on device); " +
                                         "the last complete checkpoint is " + first.string());
  }
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"step-000001"});  // no temporary left
  TinyRun reloaded(3);
  reloaded.restore(CheckpointManager::load(*manager.latest()));
  EXPECT_EQ(CheckpointManager::load(first).step, 1);

  // A real failure: the checkpoint root is a file.
  test::write_file(dir / "file", "x");
  CheckpointManager blocked(dir / "file", 1);
  EXPECT_THROW(blocked.save(run.state(3)), InputError);
}

TEST(CheckpointTest, RestoreRefusesMismatchedTensors) {
  test::TempDir dir;
  CheckpointManager manager(dir.path(), 1);
  TinyRun run(4);
  run.step();
  auto state = CheckpointManager::load(manager.save(run.state(1)));
  TinyRun other(5);
  for (auto& [name, tensor] : state.trainables) {
    if (name == "head.bias") tensor = at::zeros({7});
  }
  try {
    other.restore(state);
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), "ckpt: head.bias: shape differs from the parameter's");
  }
}

TEST(StopFlagTest, SigintAndSigtermSetTheFlagInsteadOfKilling) {
  {
    StopFlag flag;
    EXPECT_FALSE(flag.requested());
    std::raise(SIGINT);
    EXPECT_TRUE(flag.requested());
    EXPECT_EQ(flag.signal(), SIGINT);
  }
  {
    StopFlag flag;  // a new flag starts clear
    EXPECT_FALSE(flag.requested());
    std::raise(SIGTERM);
    EXPECT_EQ(flag.signal(), SIGTERM);
  }
}

TEST(StopFlagDeathTest, ASecondSignalTerminates) {
  EXPECT_EXIT(
      {
        StopFlag flag;
        std::raise(SIGINT);
        std::raise(SIGINT);
      },
      testing::KilledBySignal(SIGINT), "");
}

}  // namespace
}  // namespace linearize
