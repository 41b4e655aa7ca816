// The distill run schema: defaults, the example config, nearest-key errors for unknown keys, typed
// values, --set overrides, validation, and dump() round trips.
#include <gtest/gtest.h>

#include "distill/run_config.h"
#include "formats/error.h"
#include "test_util.h"

namespace linearize {
namespace {

constexpr const char* kMinimal = R"(
model: m
out: o
recipe: {name: lolcats}
data: {files: [a.txt]}
)";

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    RunConfig::parse(yaml, "run.yaml", overrides);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(RunConfigTest, DefaultsFollowLolcats) {
  const auto c = RunConfig::parse(kMinimal, "run.yaml");
  EXPECT_EQ(c.model, "m");
  EXPECT_EQ(c.data.files, std::vector<std::string>{"a.txt"});
  EXPECT_EQ(c.stage1.loss, Stage1Loss::kMse);
  EXPECT_EQ(c.stage1.factor, 1000.0);
  EXPECT_EQ(c.stage1.optim.lr, 1e-2);
  EXPECT_EQ(c.stage1.mode, Stage1Mode::kJoint);
  EXPECT_EQ(c.stage2.optim.lr, 1e-4);
  EXPECT_EQ(c.stage2.lora.r, 8);
  EXPECT_EQ(c.stage2.lora.alpha, 16.0);
  EXPECT_FALSE(c.stage2.lora.rslora);
  EXPECT_EQ(c.stage2.lora.targets, (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj"}));
  EXPECT_EQ(c.stage2.loss, Stage2Loss::kCe);
  EXPECT_EQ(c.device.type, DeviceType::kCpu);
  EXPECT_EQ(c.checkpoint.keep, 3);
  EXPECT_FALSE(c.verify.max_kl.has_value());
  EXPECT_TRUE(c.recipe.params.is_object() && c.recipe.params.empty());
}

TEST(RunConfigTest, ExampleConfigLoadsAndStatesTheDefaults) {
  const auto path = test::fixtures_dir().parent_path().parent_path() / "configs" / "distill-example.yaml";
  const auto example = RunConfig::load(path);
  EXPECT_EQ(example.recipe.name, "lolcats");
  // The example documents every key with its default value: its dump equals that of the minimal file
  // carrying the same required keys.
  auto defaults = RunConfig::parse(kMinimal, "run.yaml");
  defaults.model = example.model;
  defaults.out = example.out;
  defaults.data.files = example.data.files;
  EXPECT_EQ(example.dump(), defaults.dump());
}

TEST(RunConfigTest, BaseFileLoadsFirstAndThisFilesKeysReplaceItsKeysOneByOne) {
  test::TempDir dir;
  std::filesystem::create_directories(dir / "shared");
  test::write_file(dir / "shared" / "base.yaml", "model: m\nout: o\nrecipe: {name: lolcats, params: {window: 32}}\n"
                                                 "data: {files: [a.txt], seq_len: 2048}\nstage2: {loss: kl, lr: 0.0005}\n");
  test::write_file(dir / "run.yaml", "base: shared/base.yaml\nrecipe: {name: hedgehog, params: {}}\nstage2: {lr: 0.001}\n");
  const auto c = RunConfig::load(dir / "run.yaml");
  EXPECT_EQ(c.model, "m");                                   // only in the base
  EXPECT_EQ(c.data.seq_len, 2048);
  EXPECT_EQ(c.stage2.loss, Stage2Loss::kKl);                 // the base's, beside ...
  EXPECT_EQ(c.stage2.optim.lr, 1e-3);                        // ... this file's key of the same section
  EXPECT_EQ(c.recipe.name, "hedgehog");
  EXPECT_TRUE(c.recipe.params.empty()) << c.recipe.params;   // params are one key: lolcats' window does not leak
  // A base of a base, relative to the file that names it.
  test::write_file(dir / "shared" / "mid.yaml", "base: base.yaml\nseed: 7\n");
  test::write_file(dir / "run2.yaml", "base: shared/mid.yaml\nlog_every: 3\n");
  const auto c2 = RunConfig::load(dir / "run2.yaml");
  EXPECT_EQ(c2.seed, 7u);
  EXPECT_EQ(c2.log_every, 3);
  EXPECT_EQ(c2.data.seq_len, 2048);
}

TEST(RunConfigTest, BaseErrorsNameTheFileTheyAreIn) {
  test::TempDir dir;
  const auto error = [&](const std::string& file) {
    try {
      RunConfig::load(dir / file);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  test::write_file(dir / "bad-base.yaml", std::string(kMinimal) + "stage1: {lr: fast}\n");
  test::write_file(dir / "a.yaml", "base: bad-base.yaml\n");
  EXPECT_EQ(error("a.yaml"), (dir / "bad-base.yaml").string() + ": stage1.lr: expected a finite number, got 'fast'");
  test::write_file(dir / "b.yaml", "base: missing.yaml\n");
  EXPECT_EQ(error("b.yaml"), (dir / "b.yaml").string() + ": base: '" + (dir / "missing.yaml").string() + "' cannot be read");
  test::write_file(dir / "c.yaml", "base: d.yaml\n");
  test::write_file(dir / "d.yaml", "base: c.yaml\n");
  EXPECT_EQ(error("c.yaml"),
            (dir / "d.yaml").string() + ": base: '" + (dir / "c.yaml").string() + "' is already being loaded (a cycle of bases)");
  test::write_file(dir / "e.yaml", "base: [x.yaml]\n");
  EXPECT_EQ(error("e.yaml").rfind((dir / "e.yaml").string() + ": base: expected a file name", 0), 0u) << error("e.yaml");
}

TEST(RunConfigTest, UnknownKeysNameFileKeyAndNearestKnownKey) {
  EXPECT_EQ(error_of(std::string(kMinimal) + "stage2: {lora: {alpah: 32}}\n"),
            "run.yaml: stage2.lora.alpah: unknown key; did you mean 'stage2.lora.alpha'?");
  // A key under the wrong section suggests where it lives.
  EXPECT_EQ(error_of(std::string(kMinimal) + "stage2: {r: 4}\n"), "run.yaml: stage2.r: unknown key; did you mean 'stage2.lora.r'?");
  EXPECT_EQ(error_of(std::string(kMinimal) + "lr: 0.1\n"), "run.yaml: lr: unknown key; did you mean 'stage1.lr'?");
  EXPECT_EQ(error_of(std::string(kMinimal) + "stag2: {enabled: false}\n"), "run.yaml: stag2: unknown key; did you mean 'stage2'?");
  EXPECT_EQ(error_of(std::string(kMinimal) + "data: {seq_len: 8}\n"), "run.yaml: data: duplicate key");
  EXPECT_EQ(error_of("model: m\ndata: {seqlen: 8}\n"), "run.yaml: data.seqlen: unknown key; did you mean 'data.seq_len'?");
  EXPECT_EQ(error_of(std::string(kMinimal) + "eval: {text: t.txt, lengths: [512, 512]}\n"), "run.yaml: eval.lengths: must be distinct");
  EXPECT_EQ(error_of(std::string(kMinimal) + "eval: {text: t.txt, lengths: [512, x]}\n"),
            "run.yaml: eval.lengths[1]: expected an integer, got 'x'");
}

TEST(RunConfigTest, MistypedValuesNameKeyAndWhatWasExpected) {
  const std::string base = "model: m\nout: o\nrecipe: {name: r}\ndata: {files: [a.txt]}\n";
  EXPECT_EQ(error_of(base + "seed: -1\n"), "run.yaml: seed: expected a non-negative integer, got '-1'");
  EXPECT_EQ(error_of(base + "log_every: 2.5\n"), "run.yaml: log_every: expected an integer, got '2.5'");
  EXPECT_EQ(error_of(base + "stage1: {lr: fast}\n"), "run.yaml: stage1.lr: expected a finite number, got 'fast'");
  EXPECT_EQ(error_of(base + "stage1: {lr: '0.1'}\n"), "run.yaml: stage1.lr: expected a finite number, got '0.1'");
  EXPECT_EQ(error_of(base + "stage1: {loss: mae}\n"), "run.yaml: stage1.loss: expected one of mse, xent, got 'mae'");
  EXPECT_EQ(error_of(base + "stage2: {enabled: maybe}\n"), "run.yaml: stage2.enabled: expected true or false, got 'maybe'");
  EXPECT_EQ(error_of(base + "stage2: {lora: {targets: q_proj}}\n"), "run.yaml: stage2.lora.targets: expected a list of strings, got 'q_proj'");
  EXPECT_EQ(error_of(base + "stage2: {lora: {targets: [q_proj, {a: 1}]}}\n"), "run.yaml: stage2.lora.targets[1]: expected a string, got a mapping");
  EXPECT_EQ(error_of(base + "stage1: 3\n"), "run.yaml: stage1: expected a mapping, got '3'");
  EXPECT_EQ(error_of("[1, 2]"), "run.yaml: (top level): expected a mapping of keys, got a list");
  EXPECT_EQ(error_of("model: [unclosed\n"), "run.yaml: line 2, column 1: not valid YAML: end of sequence flow not found");
}

TEST(RunConfigTest, ValidationNamesTheKeyAndTheRule) {
  EXPECT_EQ(error_of("out: o\nrecipe: {name: r}\ndata: {files: [a]}\n"), "run.yaml: model: missing required key");
  EXPECT_EQ(error_of(kMinimal, {"data.files=[]"}), "run.yaml: data.files: missing required key");
  EXPECT_EQ(error_of(kMinimal, {"stage2.lora.targets=[q_proj, v_prj]"}),
            "run.yaml: stage2.lora.targets: unknown projection 'v_prj'; did you mean 'v_proj'?");
  EXPECT_EQ(error_of(kMinimal, {"stage2.lora.targets=[q_proj, q_proj]"}), "run.yaml: stage2.lora.targets: 'q_proj' is listed twice");
  EXPECT_EQ(error_of(kMinimal, {"data.validation_fraction=1"}), "run.yaml: data.validation_fraction: must be in [0, 1)");
  EXPECT_EQ(error_of(kMinimal, {"data.validation_sequences=0"}), "run.yaml: data.validation_sequences: must be >= 1");
  EXPECT_EQ(error_of(kMinimal, {"stage2.lora.r=0"}), "run.yaml: stage2.lora.r: must be >= 1");
  EXPECT_EQ(error_of(kMinimal, {"stage1.min_lr=1"}), "run.yaml: stage1.min_lr: must be in [0, lr]");
  EXPECT_EQ(error_of(kMinimal, {"stage2.warmup=1000"}), "run.yaml: stage2.warmup: must be < steps");
  EXPECT_EQ(error_of(kMinimal, {"verify.min_top1=1.5"}), "run.yaml: verify.min_top1: must be in [0, 1]");
  EXPECT_EQ(error_of(kMinimal, {"stage2.teacher_cache.top_k=-1"}), "run.yaml: stage2.teacher_cache.top_k: must be >= 0");
  EXPECT_EQ(error_of(kMinimal, {"stage2.teacher_cache.top_k=64"}),
            "run.yaml: stage2.teacher_cache.top_k: caches the teacher of the KL loss, and stage2.loss is ce: set it to kl or "
            "ce+kl, or top_k to 0");
  EXPECT_EQ(error_of(kMinimal, {"stage2.teacher_cache.path=t.h5"}),
            "run.yaml: stage2.teacher_cache.path: names a cache, and stage2.teacher_cache.top_k is 0 (no cache): set top_k");
  EXPECT_EQ(error_of(kMinimal, {"stage1.enabled=false", "stage2.enabled=false"}),
            "run.yaml: stage1.enabled: both stages are disabled: nothing to do");
}

TEST(RunConfigTest, OverridesAreTypedByTheSchema) {
  const auto c = RunConfig::parse(kMinimal, "run.yaml",
                                  {"stage2.lora.r=16", "stage2.lora.targets=[q_proj, v_proj]", "stage1.lr=3e-3",
                                   "stage2.schedule=cosine", "verify.max_kl=0.05", "model=/models/x=y", "seed=42",
                                   "recipe.params.window=64", "recipe.params.feature_map.kind=softmax_dim",
                                   "recipe.params.tag='7'"});
  EXPECT_EQ(c.stage2.lora.r, 16);
  EXPECT_EQ(c.stage2.lora.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.stage1.optim.lr, 3e-3);
  EXPECT_EQ(c.stage2.optim.schedule, Schedule::kCosine);
  EXPECT_EQ(c.verify.max_kl, 0.05);
  EXPECT_EQ(c.model, "/models/x=y");  // only the first '=' separates key and value
  EXPECT_EQ(c.seed, 42u);
  EXPECT_EQ(c.recipe.params, (nlohmann::json{{"window", 64}, {"feature_map", {{"kind", "softmax_dim"}}}, {"tag", "7"}}));
  // Later overrides win; null clears an optional threshold.
  EXPECT_FALSE(RunConfig::parse(kMinimal, "run.yaml", {"verify.max_kl=0.1", "verify.max_kl=null"}).verify.max_kl.has_value());

  EXPECT_EQ(error_of(kMinimal, {"stage2.lora.rank=4"}), "--set: stage2.lora.rank: unknown key; did you mean 'stage2.lora.r'?");
  EXPECT_EQ(error_of(kMinimal, {"stage2.lora.r=four"}), "--set: stage2.lora.r: expected an integer, got 'four'");
  EXPECT_EQ(error_of(kMinimal, {"stage2.lora=4"}), "--set: stage2.lora: is a section: set one of its keys (see --dump-config)");
  EXPECT_EQ(error_of(kMinimal, {"stage2.lora.r"}), "--set: stage2.lora.r: expected KEY=VALUE, e.g. stage2.lora.r=16");
}

TEST(RunConfigTest, RecipeParamsKeepYamlTypes) {
  const auto c = RunConfig::parse("model: m\nout: o\ndata: {files: [a.txt]}\n"
                                  "recipe:\n  name: lolcats\n  params: {window: 64, eps: 1.0e-6, tie: false, name: '12', "
                                      "layers: [7, 15], map: {dim: 64}, none: ~}\n",
                                  "run.yaml");
  EXPECT_EQ(c.recipe.params, nlohmann::json::parse(R"({"window": 64, "eps": 1e-6, "tie": false, "name": "12",
                                                        "layers": [7, 15], "map": {"dim": 64}, "none": null})"));
}

TEST(RunConfigTest, DumpIsStableAndReadsBackEqual) {
  auto c = RunConfig::parse(kMinimal, "run.yaml", {"stage2.lora.alpha=0.1", "data.tokenizer=123", "verify.min_top1=0.9",
                                                    "recipe.params={window: 64, layers: [1, 2], note: 'true'}"});
  const std::string dumped = c.dump();
  // Shortest round-trip decimals, numbers-as-strings quoted, optional thresholds as null.
  EXPECT_NE(dumped.find("alpha: 0.1\n"), std::string::npos) << dumped;
  EXPECT_NE(dumped.find("tokenizer: \"123\"\n"), std::string::npos) << dumped;
  EXPECT_NE(dumped.find("max_kl: ~\n"), std::string::npos) << dumped;
  const auto reread = RunConfig::parse(dumped, "dump.yaml");
  EXPECT_EQ(reread.dump(), dumped);
  EXPECT_EQ(reread.data.tokenizer, "123");
  EXPECT_EQ(reread.stage2.lora.alpha, 0.1);
  EXPECT_EQ(reread.recipe.params, c.recipe.params);
  // Schema order: the dump lists the keys in the order keys() gives.
  std::size_t previous = 0;
  for (const auto& key : RunConfig::keys()) {
    const auto last = key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1);
    const auto at = dumped.find(last + ":", previous);
    ASSERT_NE(at, std::string::npos) << key << " in\n" << dumped;
    previous = at;
  }
}

}  // namespace
}  // namespace linearize
