// `forward` and `generate` end to end through the binary, against transformers' reference outputs, and
// their bad-input contract: exit 2 and one line naming the file and the field.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <functional>
#include <sstream>

#include "formats/safetensors.h"
#include "nlohmann/json.hpp"
#include "test_util.h"

namespace linearize {
namespace {

std::string ids_text(const at::Tensor& ids) {
  std::string out;
  for (std::int64_t i = 0; i < ids.numel(); ++i) out += (i ? "," : "") + std::to_string(ids[i].item<std::int64_t>());
  return out;
}

SafetensorsFile reference(const std::string& fixture) {
  return SafetensorsFile::open(test::fixtures_dir() / fixture / "reference.safetensors");
}

TEST(ModelCli, ForwardWritesLogitsAndIntermediatesMatchingTransformers) {
  test::TempDir dir;
  const auto ref = reference("tiny-qwen2");  // the sharded fixture
  const auto r = test::run_linearize({"forward", "--model", (test::fixtures_dir() / "tiny-qwen2").string(), "--prompt-ids",
                                      ids_text(ref.tensor("prompt.0.input_ids")), "--hidden", "--out",
                                      (dir / "out.safetensors").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = SafetensorsFile::open(dir / "out.safetensors");
  const auto expected = ref.tensor("prompt.0.logits");
  // The library test justifies 1e-4 of the largest logit for fp32 against transformers.
  const double error = (out.tensor("logits") - expected).abs().max().item<double>() / expected.abs().max().item<double>();
  EXPECT_LE(error, 1e-4);
  for (const char* name : {"embed", "layers.0.attn_out", "layers.2.mlp_out", "layers.2.out", "norm"})
    EXPECT_NE(out.find(name), nullptr) << name;
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"out.safetensors"}) << "no temporary left behind";
}

TEST(ModelCli, GeneratePrintsTransformersGreedyTokensAndSpeed) {
  for (const char* fixture : {"tiny-llama", "tiny-mistral"}) {
    const auto ref = reference(fixture);
    const auto r = test::run_linearize({"generate", "--model", (test::fixtures_dir() / fixture).string(), "--prompt-ids",
                                        ids_text(ref.tensor("generate.prompt_ids")), "--max-new-tokens", "16",
                                        "--no-stop-at-eos"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::string expected = ids_text(ref.tensor("generate.output_ids"));
    std::replace(expected.begin(), expected.end(), ',', ' ');
    EXPECT_EQ(r.out.substr(0, r.out.find('\n') + 1), expected + "\n") << fixture;
    EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
  }
}

struct ModelBadInput {
  const char* label;
  std::function<void(const std::filesystem::path&)> corrupt;
  std::vector<std::string> args;  // after --model DIR
  const char* file;               // must appear in the message
  const char* field;              // must appear as ": <field>:"
  std::vector<std::string> mentions;  // further text the message must hold
};
void PrintTo(const ModelBadInput& c, std::ostream* os) { *os << c.label; }

void edit_config(const std::filesystem::path& dir, const std::function<void(nlohmann::json&)>& edit) {
  auto config = nlohmann::json::parse(test::read_file(dir / "config.json"));
  edit(config);
  test::write_file(dir / "config.json", config.dump());
}

// Rewrites model.safetensors without `drop` and with an extra tensor nobody expects.
void drop_and_add_tensor(const std::filesystem::path& dir, const std::string& drop) {
  NamedTensors kept;
  {
    const auto file = SafetensorsFile::open(dir / "model.safetensors");
    for (const auto& name : file.names())
      if (name != drop) kept.emplace_back(name, file.tensor(name).clone());
  }
  kept.emplace_back("model.layers.0.self_attn.extra.weight", at::zeros({2}));
  write_safetensors(dir / "model.safetensors", kept);
}

class ModelCliBadInput : public testing::TestWithParam<ModelBadInput> {};

TEST_P(ModelCliBadInput, ExitsTwoWithOneLineNamingFileAndField) {
  const auto& c = GetParam();
  test::TempDir dir;
  std::filesystem::copy(test::fixtures_dir() / "tiny-llama", dir.path(), std::filesystem::copy_options::recursive);
  c.corrupt(dir.path());
  std::vector<std::string> args{"forward", "--model", dir.path().string(), "--out", (dir / "out.safetensors").string()};
  args.insert(args.end(), c.args.begin(), c.args.end());
  const auto r = test::run_linearize(args);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "one line: " << r.err;
  EXPECT_NE(r.err.find(c.file), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(std::string(": ") + c.field + ":"), std::string::npos) << r.err;
  for (const auto& text : c.mentions) EXPECT_NE(r.err.find(text), std::string::npos) << text << " in " << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "out.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(
    Forward, ModelCliBadInput,
    testing::Values(
        ModelBadInput{"ShapeMismatchBetweenConfigAndWeights",
                      [](const auto& d) { edit_config(d, [](auto& j) { j["intermediate_size"] = 96; }); },
                      {"--prompt-ids", "1,2"}, "model.safetensors", "tensors",
                      // every mis-shaped tensor at once, expected vs found
                      {"6 mis-shaped", "model.layers.0.mlp.gate_proj.weight expected [96,64] found [128,64]",
                       "model.layers.1.mlp.down_proj.weight expected [64,96] found [64,128]"}},
        ModelBadInput{"MissingAndUnexpectedTensorsTogether",
                      [](const auto& d) { drop_and_add_tensor(d, "model.layers.1.mlp.up_proj.weight"); },
                      {"--prompt-ids", "1,2"}, "model.safetensors", "tensors",
                      {"1 missing: model.layers.1.mlp.up_proj.weight [128,64]",
                       "1 unexpected: model.layers.0.self_attn.extra.weight"}},
        ModelBadInput{"UnknownArchitecture",
                      [](const auto& d) { edit_config(d, [](auto& j) { j["architectures"] = {"GPT2LMHeadModel"}; }); },
                      {"--prompt-ids", "1,2"}, "config.json", "architectures",
                      {"GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}},
        ModelBadInput{"KvHeadsNotDividingHeads",
                      [](const auto& d) { edit_config(d, [](auto& j) { j["num_key_value_heads"] = 3; }); },
                      {"--prompt-ids", "1,2"}, "config.json", "num_key_value_heads", {"does not divide"}},
        ModelBadInput{"TokenIdOutsideTheVocabulary", [](const auto&) {}, {"--prompt-ids", "1,768"}, "command line",
                      "--prompt-ids", {"768"}},
        ModelBadInput{"TokenIdNotANumber", [](const auto&) {}, {"--prompt-ids", "1,x"}, "command line", "--prompt-ids", {}},
        ModelBadInput{"BatchIdOutsideTheVocabulary", [](const auto&) {}, {"--batch-ids", "1,2;768"}, "command line", "--batch-ids", {"768"}},
        ModelBadInput{"BatchWithAnEmptyRow", [](const auto&) {}, {"--batch-ids", "1,2;;3"}, "command line", "--batch-ids", {}}));

// --batch-ids: the left-padded batch, its mask, and each row's logits equal to `forward` of the row alone (the
// padded-batch tolerance of tests/converter/padded_batch_test.cpp, 1e-4 of the largest logit).
TEST(ModelCli, ForwardBatchIdsWritesALeftPaddedBatchEqualToEachRowAlone) {
  test::TempDir dir;
  const auto model = (test::fixtures_dir() / "tiny-mistral").string();
  const auto batch = dir / "batch.safetensors";
  auto r = test::run_linearize({"forward", "--model", model, "--batch-ids", "5,6,7,8,9;10,11", "--out", batch.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto file = SafetensorsFile::open(batch);
  EXPECT_TRUE(at::equal(file.tensor("input_ids"), at::tensor({5, 6, 7, 8, 9, 0, 0, 0, 10, 11}, at::kLong).view({2, 5})));
  EXPECT_TRUE(at::equal(file.tensor("attention_mask"), at::tensor({1, 1, 1, 1, 1, 0, 0, 0, 1, 1}, at::kLong).view({2, 5})));
  const auto logits = file.tensor("logits");
  const std::vector<std::pair<std::string, std::int64_t>> rows{{"5,6,7,8,9", 5}, {"10,11", 2}};
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto alone_path = dir / ("alone" + std::to_string(i) + ".safetensors");
    r = test::run_linearize({"forward", "--model", model, "--prompt-ids", rows[i].first, "--out", alone_path.string()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto alone = SafetensorsFile::open(alone_path).tensor("logits");
    const auto n = rows[i].second;
    const auto ours = logits[static_cast<std::int64_t>(i)].narrow(0, 5 - n, n);
    EXPECT_LE((ours - alone).abs().max().item<double>(), 1e-4 * alone.abs().max().item<double>()) << "row " << i;
  }
}

// `eval` on a fixture against itself: the report files, and bad input as exit 2 naming the file and field.
TEST(ModelCli, EvalWritesItsReportsAndRefusesBadInput) {
  test::TempDir dir;
  const auto model = (test::fixtures_dir() / "tiny-llama").string();
  const auto text = (test::fixtures_dir() / "corpus" / "corpus.txt").string();
  const auto run = [&](const std::vector<std::string>& extra, const std::string& text_file) {
    std::vector<std::string> args{"eval", "--model", model, "--text", text_file, "--windows", "1", "--passkey-trials", "1",
                                  "--generation-prompts", "1", "--generation-tokens", "4"};
    args.insert(args.end(), extra.begin(), extra.end());
    return test::run_linearize(args);
  };
  auto r = run({"--source", model, "--lengths", "200", "--depths", "0,1", "--json", (dir / "eval.json").string(), "--html",
                (dir / "eval.html").string()},
          text);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto json = nlohmann::json::parse(test::read_file(dir / "eval.json"));
  EXPECT_EQ(json["perplexity_by_position"][0]["ratio"], 1.0);
  EXPECT_EQ(json["generation"]["agreement"], 1.0);
  EXPECT_NE(test::read_file(dir / "eval.html").find("<svg"), std::string::npos);

  const auto expect_bad = [&](const std::vector<std::string>& extra, const std::string& file, const std::string& field,
                              const std::string& text_file) {
    const auto bad = run(extra, text_file);
    EXPECT_EQ(bad.exit_code, 2) << bad.err;
    EXPECT_EQ(bad.err.find('\n'), bad.err.size() - 1) << "one line: " << bad.err;
    EXPECT_NE(bad.err.find(file), std::string::npos) << bad.err;
    EXPECT_NE(bad.err.find(std::string(": ") + field + ":"), std::string::npos) << bad.err;
  };
  expect_bad({"--lengths", "300"}, "command line", "--lengths", text);      // past max_position_embeddings (256)
  expect_bad({"--lengths", "100"}, "command line", "--lengths", text);      // too short for a passkey prompt
  expect_bad({"--lengths", "200,200"}, "command line", "--lengths", text);  // repeated
  const auto short_text = dir / "short.txt";
  test::write_file(short_text, "A few words.");
  expect_bad({"--lengths", "200"}, short_text.string(), "--text", short_text.string());
  const auto other = dir / "other";
  std::filesystem::copy(test::fixtures_dir() / "tiny-llama", other, std::filesystem::copy_options::recursive);
  auto config = nlohmann::json::parse(test::read_file(other / "config.json"));
  config["vocab_size"] = 700;
  test::write_file(other / "config.json", config.dump());
  expect_bad({"--lengths", "200", "--source", other.string()}, (other / "config.json").string(), "vocab_size", text);
}

}  // namespace
}  // namespace linearize
