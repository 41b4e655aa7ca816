// The CLI's contract on bad input: exit code 2, exactly one line on stderr naming the file and the
// field, nothing on stdout, no crash.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "formats/safetensors.h"
#include "test_util.h"

namespace linearize {
namespace {

const char* kConfig = R"({"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":16,"hidden_size":8,
  "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1})";

void expect_bad_input(const std::vector<std::string>& args, const std::string& file, const std::string& field) {
  const auto r = test::run_linearize(args);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "one line: " << r.err;
  EXPECT_NE(r.err.find(file), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(": " + field + ":"), std::string::npos) << r.err;
}

class CliBadInput : public testing::Test {
 protected:
  void SetUp() override {
    test::write_file(dir_ / "config.json", kConfig);
    write_safetensors(dir_ / "model.safetensors", {{"model.embed_tokens.weight", at::zeros({16, 8})}});
  }
  test::TempDir dir_;
};

TEST_F(CliBadInput, MissingDirectory) {
  expect_bad_input({"inspect", (dir_ / "nope").string()}, "nope/config.json", "file");
}

TEST_F(CliBadInput, ConfigMissingKey) {
  test::write_file(dir_ / "config.json", R"({"architectures":["LlamaForCausalLM"],"vocab_size":16})");
  expect_bad_input({"inspect", dir_.path().string()}, "config.json", "hidden_size");
}

TEST_F(CliBadInput, ConfigImpossibleHeads) {
  auto text = std::string(kConfig);
  text.replace(text.find("\"num_key_value_heads\":1"), 23, "\"num_key_value_heads\":3");
  test::write_file(dir_ / "config.json", text);
  expect_bad_input({"inspect", dir_.path().string()}, "config.json", "num_key_value_heads");
}

TEST_F(CliBadInput, TruncatedSafetensors) {
  const auto bytes = test::read_file(dir_ / "model.safetensors");
  test::write_file(dir_ / "model.safetensors", bytes.substr(0, bytes.size() / 2));
  expect_bad_input({"inspect", dir_.path().string()}, "model.safetensors", "tensor 'model.embed_tokens.weight'.data_offsets");
}

TEST_F(CliBadInput, LyingHeaderLength) {
  std::string bytes = test::read_file(dir_ / "model.safetensors");
  bytes[5] = '\x7f';  // a header length of ~140 TB
  test::write_file(dir_ / "model.safetensors", bytes);
  expect_bad_input({"inspect", dir_.path().string()}, "model.safetensors", "header length");
}

TEST_F(CliBadInput, ShardIndexNamingMissingFile) {
  std::filesystem::remove(dir_ / "model.safetensors");
  test::write_file(dir_ / "model.safetensors.index.json", R"({"weight_map":{"model.embed_tokens.weight":"model-00001-of-00002.safetensors"}})");
  expect_bad_input({"inspect", dir_.path().string()}, "model.safetensors.index.json", "weight_map");
}

TEST(Cli, UsageErrorsExitTwo) {
  auto r = test::run_linearize({"inspect"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("dir is required"), std::string::npos) << r.err;
  r = test::run_linearize({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  r = test::run_linearize({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("inspect"), std::string::npos);
}

}  // namespace
}  // namespace linearize
