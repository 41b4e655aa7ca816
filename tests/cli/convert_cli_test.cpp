// `convert` and `verify` through the binary: each way an export can go wrong is caught by the check that
// should catch it, with exit 1 (a check failed) or 2 (unreadable input); reports are deterministic.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <set>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "test_util.h"

namespace linearize {
namespace {

std::filesystem::path fixture(const std::string& name) { return test::fixtures_dir() / name; }

test::CommandResult convert(const std::string& recipe, const std::filesystem::path& out, std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"convert", "--model", fixture("tiny-llama").string(), "--recipe", recipe, "--out", out.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return test::run_linearize(args);
}

// Changes `bytes` bytes of tensor `name` in place in dir/model.safetensors.
void patch_tensor(const std::filesystem::path& dir, const std::string& name, const std::function<void(char*)>& edit) {
  const auto path = dir / "model.safetensors";
  std::uint64_t offset = 0;
  {
    const auto file = SafetensorsFile::open(path);
    offset = file.header().data_start + file.find(name)->begin;
  }
  auto bytes = test::read_file(path);
  edit(&bytes[offset]);
  test::write_file(path, bytes);
}

void edit_config(const std::filesystem::path& dir, const std::function<void(nlohmann::json&)>& edit) {
  auto config = nlohmann::json::parse(test::read_file(dir / "config.json"));
  edit(config);
  test::write_file(dir / "config.json", config.dump());
}

// The report row of a check, from verify's stdout.
std::string row_of(const std::string& out, const std::string& check) {
  const auto at = out.find(check);
  return at == std::string::npos ? "" : out.substr(at, out.find('\n', at) - at);
}

TEST(ConvertCli, ConvertsVerifiesAndRecordsTheReport) {
  test::TempDir dir;
  const auto r = convert("lolcats", dir / "out");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("verify: PASS"), std::string::npos) << r.out;
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.json", "verify.json", "verify_logits.safetensors"})
    EXPECT_TRUE(std::filesystem::exists(dir / "out" / file)) << file;
  const auto config = nlohmann::json::parse(test::read_file(dir / "out" / "config.json"));
  EXPECT_EQ(config["architectures"][0], "LinearizeLolcatsForCausalLM");
  EXPECT_EQ(config["linearize"]["recipe"], "lolcats");
  EXPECT_EQ(config["linearize"]["params"]["window"], 64);
  EXPECT_EQ(config["linearize"]["source"]["architecture"], "LlamaForCausalLM");
  EXPECT_EQ(config["linearize"]["source"]["sha256"]["model.safetensors"].get<std::string>().size(), 64u);
  // New tensors live under the mixer's scope.
  const auto weights = SafetensorsFile::open(dir / "out" / "model.safetensors");
  EXPECT_NE(weights.find("model.layers.1.self_attn.feature_map_q.weight"), nullptr);
  EXPECT_EQ(weights.metadata().at("recipe"), "lolcats");

  // An existing output is refused without --force, and nothing in it is touched.
  const auto again = convert("lolcats", dir / "out");
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find(": --out: exists"), std::string::npos) << again.err;
  EXPECT_EQ(convert("hedgehog", dir / "out", {"--force"}).exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(test::read_file(dir / "out" / "config.json"))["linearize"]["recipe"], "hedgehog");
}

// Above --max-shard-size the export is sharded as save_pretrained shards (index last, every file holding
// the copies' hashes), verifies (L0 checks each shard's copies), and a forced rewrite into one file leaves
// no shard behind. The verify flags apply to the verification convert runs (bf16 compute here, its layers streamed
// from the shards).
TEST(ConvertCli, ShardsAboveTheSizeLimitAndVerifiesInBf16) {
  test::TempDir dir;
  const auto r = convert("lolcats", dir / "out",
                         {"--max-shard-size", "200KB", "--dtype", "bf16", "--prompt-ids", "1,5,9,13,17,21,25,29", "--stream-layers", "on"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("verify: PASS"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("drift in bf16"), std::string::npos) << r.out;
  const auto index = nlohmann::json::parse(test::read_file(dir / "out" / "model.safetensors.index.json"));
  std::set<std::string> files;
  std::uint64_t largest = 0;
  for (const auto& [name, file] : index["weight_map"].items()) files.insert(file.get<std::string>());
  EXPECT_GE(files.size(), 3u);  // 544 KB of source tensors plus the feature maps, in shards of <= 200 KB
  for (const auto& file : files) {
    largest = std::max<std::uint64_t>(largest, std::filesystem::file_size(dir / "out" / file));
    EXPECT_TRUE(SafetensorsFile::open(dir / "out" / file).metadata().count("linearize_copied_sha256")) << file;
  }
  EXPECT_LE(largest, 200'000u + 16'384u);  // plus the header (names, shapes, the hashes' metadata)
  EXPECT_FALSE(std::filesystem::exists(dir / "out" / "model.safetensors"));
  const auto again = convert("lolcats", dir / "out", {"--force"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  for (const auto& file : files) EXPECT_FALSE(std::filesystem::exists(dir / "out" / file)) << file;
  EXPECT_FALSE(std::filesystem::exists(dir / "out" / "model.safetensors.index.json"));
}

TEST(ConvertCli, VerifyIsDeterministic) {
  test::TempDir dir;
  ASSERT_EQ(convert("liger-gla", dir / "out").exit_code, 0);
  const std::vector<std::string> args{"verify", "--model", (dir / "out").string(), "--source", fixture("tiny-llama").string()};
  const auto first = test::run_linearize(args);
  const auto first_json = test::read_file(dir / "out" / "verify.json");
  const auto second = test::run_linearize(args);
  EXPECT_EQ(first.exit_code, 0);
  EXPECT_EQ(first.out, second.out);
  EXPECT_EQ(first_json, test::read_file(dir / "out" / "verify.json"));
  // Streamed layers: the same report, row for row (docs/architecture.md#streamed-layers).
  auto streamed = args;
  streamed.insert(streamed.end(), {"--stream-layers", "on"});
  const auto third = test::run_linearize(streamed);
  EXPECT_EQ(third.exit_code, 0) << third.err;
  EXPECT_EQ(first.out, third.out);
  EXPECT_EQ(test::run_linearize({"verify", "--model", (dir / "out").string(), "--stream-layers", "sometimes"}).exit_code, 2);
}

TEST(ConvertCli, VerifyOnAPlainCheckpointChecksFormsAndWritesNothingThere) {
  test::TempDir dir;
  std::filesystem::copy(fixture("tiny-mistral"), dir.path(), std::filesystem::copy_options::recursive);
  const auto before = test::list_dir(dir.path());
  const auto r = test::run_linearize({"verify", "--model", dir.path().string(), "--json", (dir / "report.json").string()});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(row_of(r.out, "drift in fp32: recurrent decode after a chunked prefill").find("PASS"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("L2"), std::string::npos) << "a plain checkpoint records no logits: " << r.out;
  auto expected = before;
  expected.push_back("report.json");
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(test::list_dir(dir.path()), expected) << "only the --json file is written";
}

struct Corruption {
  const char* label;
  const char* recipe;
  std::function<void(const std::filesystem::path&)> corrupt;
  int exit_code;
  const char* failing_check;  // the row that must say FAIL (exit 1), or text of the error (exit 2)
};
void PrintTo(const Corruption& c, std::ostream* os) { *os << c.label; }

class VerifyCatches : public testing::TestWithParam<Corruption> {};

TEST_P(VerifyCatches, TheRightCheckFails) {
  const auto& c = GetParam();
  test::TempDir dir;
  const auto out = dir / "out";
  ASSERT_EQ(convert(c.recipe, out).exit_code, 0);
  c.corrupt(out);
  const auto r = test::run_linearize({"verify", "--model", out.string()});
  EXPECT_EQ(r.exit_code, c.exit_code) << r.out << r.err;
  if (c.exit_code == 1) {
    EXPECT_NE(row_of(r.out, c.failing_check).find("FAIL"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("verify: FAIL"), std::string::npos);
  } else {
    EXPECT_NE(r.err.find(c.failing_check), std::string::npos) << r.err;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Exports, VerifyCatches,
    testing::Values(
        Corruption{"FlippedBitInACopiedTensor", "lolcats",
                   [](const auto& d) { patch_tensor(d, "model.layers.0.mlp.up_proj.weight", [](char* p) { p[9] ^= 0x01; }); },
                   1, "copied tensors match their recorded sha256"},
        Corruption{"NanInANewTensor", "lolcats",
                   [](const auto& d) {
                     patch_tensor(d, "model.layers.1.self_attn.window_factors", [](char* p) {
                       const float nan = std::nanf("");
                       std::memcpy(p, &nan, sizeof nan);
                     });
                   },
                   1, "tensors finite"},
        Corruption{"WrongGateNormaliser", "liger-gla",
                   [](const auto& d) { edit_config(d, [](auto& j) { j["linearize"]["params"]["gate_normalizer"] = 8.0; }); },
                   1, "reload reproduces the recorded logits"},
        Corruption{"SwappedRecipeParameter", "lolcats",
                   [](const auto& d) { edit_config(d, [](auto& j) { j["linearize"]["params"]["window"] = 32; }); },
                   1, "reload reproduces the recorded logits"},
        Corruption{"EditedProgram", "liger-gla",
                   [](const auto& d) {
                     edit_config(d, [](auto& j) {
                       for (auto& op : j["linearize"]["program"]["ops"])
                         if (op.contains("divisor")) op["divisor"] = 8.0;  // the gate normaliser the modeling file would run
                     });
                   },
                   1, "mixer program matches the recipe's"},
        Corruption{"MissingTensor", "hedgehog",
                   [](const auto& d) {
                     NamedTensors kept;
                     std::map<std::string, std::string> meta;
                     {
                       const auto file = SafetensorsFile::open(d / "model.safetensors");
                       meta = file.metadata();
                       for (const auto& name : file.names())
                         if (name != "model.layers.1.self_attn.feature_map_k.weight") kept.emplace_back(name, file.tensor(name).clone());
                     }
                     write_safetensors(d / "model.safetensors", kept, meta);
                   },
                   1, "tensors present with expected shapes"},
        Corruption{"NewerFormatVersion", "supra",
                   [](const auto& d) { edit_config(d, [](auto& j) { j["linearize"]["format_version"] = 99; }); }, 2,
                   "linearize.format_version: is 99: written by a newer linearize"},
        Corruption{"UnknownRecipe", "supra",
                   [](const auto& d) { edit_config(d, [](auto& j) { j["linearize"]["recipe"] = "suppra"; }); }, 2,
                   "linearize.recipe: unknown recipe 'suppra' (did you mean 'supra'?"}),
    [](const testing::TestParamInfo<Corruption>& param) { return std::string(param.param.label); });

}  // namespace
}  // namespace linearize
