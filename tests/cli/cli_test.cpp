// The CLI's contract on bad input: exit code 2, exactly one line on stderr naming the file and the
// field, nothing on stdout, no crash. One case per bad-input class of docs/formats.md#input-checks that `inspect` reads.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <functional>

#include <nlohmann/json.hpp>

#include "converter/recipes/recipe.h"
#include "formats/safetensors.h"
#include "test_util.h"

namespace linearize {
namespace {

const std::string kConfig = R"({"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":16,"hidden_size":8,
  "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1})";

std::string replaced(std::string text, const std::string& from, const std::string& to) {
  text.replace(text.find(from), from.size(), to);
  return text;
}

void write_weights_file(const std::filesystem::path& path, const std::string& header) {
  test::write_file(path, test::safetensors_bytes(header, std::string(16, '\0')));
}

struct BadInputCase {
  const char* label;
  std::function<void(const std::filesystem::path&)> corrupt;
  const char* file;   // must appear in the message
  const char* field;  // must appear as ": <field>:"
};

// ctest lists each case by its label, not by its bytes.
void PrintTo(const BadInputCase& c, std::ostream* os) { *os << c.label; }

class CliBadInput : public testing::TestWithParam<BadInputCase> {};

TEST_P(CliBadInput, ExitsTwoWithOneLineNamingFileAndField) {
  const auto& c = GetParam();
  test::TempDir dir;
  test::write_file(dir / "config.json", kConfig);
  write_safetensors(dir / "model.safetensors", {{"model.embed_tokens.weight", at::zeros({16, 8})}});
  c.corrupt(dir.path());
  const auto listing = [&] { return std::filesystem::exists(dir.path()) ? test::list_dir(dir.path()) : std::vector<std::string>{}; };
  const auto before = listing();

  const auto r = test::run_linearize({"inspect", dir.path().string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "one line: " << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(c.file), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(std::string(": ") + c.field + ":"), std::string::npos) << r.err;
  EXPECT_EQ(listing(), before) << "nothing written";
}

INSTANTIATE_TEST_SUITE_P(
    Inspect, CliBadInput,
    testing::Values(
        BadInputCase{"missing_directory", [](const auto& d) { std::filesystem::remove_all(d); }, "config.json", "file"},
        BadInputCase{"config_not_json", [](const auto& d) { test::write_file(d / "config.json", "{"); }, "config.json", "file"},
        BadInputCase{"config_missing_key",
                     [](const auto& d) { test::write_file(d / "config.json", replaced(kConfig, "\"hidden_size\":8,", "")); },
                     "config.json", "hidden_size"},
        BadInputCase{"kv_heads_not_dividing_heads",
                     [](const auto& d) { test::write_file(d / "config.json", replaced(kConfig, "\"num_key_value_heads\":1", "\"num_key_value_heads\":3")); },
                     "config.json", "num_key_value_heads"},
        BadInputCase{"heads_not_dividing_hidden",
                     [](const auto& d) { test::write_file(d / "config.json", replaced(kConfig, "\"num_attention_heads\":2", "\"num_attention_heads\":3,\"num_key_value_heads_\":1")); },
                     "config.json", "num_attention_heads"},
        BadInputCase{"truncated_safetensors",
                     [](const auto& d) {
                       const auto bytes = test::read_file(d / "model.safetensors");
                       test::write_file(d / "model.safetensors", bytes.substr(0, bytes.size() / 2));
                     },
                     "model.safetensors", "tensor 'model.embed_tokens.weight'.data_offsets"},
        BadInputCase{"empty_safetensors", [](const auto& d) { test::write_file(d / "model.safetensors", ""); }, "model.safetensors", "header length"},
        BadInputCase{"lying_header_length",
                     [](const auto& d) {
                       auto bytes = test::read_file(d / "model.safetensors");
                       bytes[5] = '\x7f';
                       test::write_file(d / "model.safetensors", bytes);
                     },
                     "model.safetensors", "header length"},
        BadInputCase{"header_not_json", [](const auto& d) { write_weights_file(d / "model.safetensors", "{\"a\":"); }, "model.safetensors", "header"},
        BadInputCase{"overlapping_offsets",
                     [](const auto& d) {
                       write_weights_file(d / "model.safetensors", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})");
                     },
                     "model.safetensors", "tensor 'b'.data_offsets"},
        BadInputCase{"byte_count_mismatch",
                     [](const auto& d) { write_weights_file(d / "model.safetensors", R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})"); },
                     "model.safetensors", "tensor 'a'.data_offsets"},
        BadInputCase{"unknown_dtype",
                     [](const auto& d) { write_weights_file(d / "model.safetensors", R"({"a":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,16]}})"); },
                     "model.safetensors", "tensor 'a'.dtype"},
        BadInputCase{"duplicate_names",
                     [](const auto& d) {
                       write_weights_file(d / "model.safetensors", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})");
                     },
                     "model.safetensors", "header"},
        BadInputCase{"index_names_missing_shard",
                     [](const auto& d) {
                       std::filesystem::remove(d / "model.safetensors");
                       test::write_file(d / "model.safetensors.index.json", R"({"weight_map":{"model.embed_tokens.weight":"model-00001-of-00002.safetensors"}})");
                     },
                     "model.safetensors.index.json", "weight_map"},
        BadInputCase{"index_names_missing_tensor",
                     [](const auto& d) {
                       std::filesystem::rename(d / "model.safetensors", d / "model-00001-of-00001.safetensors");
                       test::write_file(d / "model.safetensors.index.json",
                                        R"({"weight_map":{"model.embed_tokens.weight":"model-00001-of-00001.safetensors","lm_head.weight":"model-00001-of-00001.safetensors"}})");
                     },
                     "model.safetensors.index.json", "weight_map.lm_head.weight"},
        BadInputCase{"shard_tensor_missing_from_index",
                     [](const auto& d) {
                       std::filesystem::rename(d / "model.safetensors", d / "model-00001-of-00001.safetensors");
                       test::write_file(d / "model.safetensors.index.json", R"({"weight_map":{"other":"model-00001-of-00001.safetensors"}})");
                     },
                     "model.safetensors.index.json", "weight_map.other"}),
    [](const testing::TestParamInfo<BadInputCase>& param_info) { return std::string(param_info.param.label); });

TEST(Cli, UsageErrorsExitTwoAndHelpExitsZero) {
  auto r = test::run_linearize({"inspect"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("dir is required"), std::string::npos) << r.err;
  r = test::run_linearize({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  r = test::run_linearize({"inspect", "--no-such-flag", "x"});
  EXPECT_EQ(r.exit_code, 2);
  r = test::run_linearize({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("inspect"), std::string::npos);
}

// The listing is the registry: every recipe convert accepts, each parameter with its role (the bench reads it).
TEST(Cli, RecipesListsTheRegistryWithItsParameters) {
  const auto r = test::run_linearize({"recipes", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto listed = nlohmann::json::parse(r.out);
  ASSERT_EQ(listed.size(), registered_recipes().size());
  for (std::size_t i = 0; i < listed.size(); ++i) {
    const auto& recipe = registered_recipes()[i];
    EXPECT_EQ(listed[i]["name"], recipe.name);
    ASSERT_EQ(listed[i]["params"].size(), recipe.params.size()) << recipe.name;
    for (std::size_t p = 0; p < recipe.params.size(); ++p) {
      EXPECT_EQ(listed[i]["params"][p]["name"], recipe.params[p].name);
      EXPECT_EQ(listed[i]["params"][p]["default"], recipe.params[p].default_value);
      EXPECT_EQ(listed[i]["params"][p]["role"], recipe.params[p].role == RecipeParamRole::window ? "window" : "none");
    }
  }
  const auto text = test::run_linearize({"recipes"});
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_NE(text.out.find("lolcats: "), std::string::npos);
}

TEST(Cli, InspectReadsEveryFixture) {
  for (const auto& model : test::fixture_models()) {
    const auto r = test::run_linearize({"inspect", "--json", (test::fixtures_dir() / model).string()});
    EXPECT_EQ(r.exit_code, 0) << model << ": " << r.err;
    EXPECT_NE(r.out.find("\"architecture\""), std::string::npos) << model;
  }
}

}  // namespace
}  // namespace linearize
