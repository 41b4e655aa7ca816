// Weights directories: single file, shards through the index, and the index checked against the shard
// headers both ways.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "formats/checkpoint.h"
#include "formats/error.h"
#include "test_util.h"

namespace linearize {
namespace {

void write_index(const std::filesystem::path& dir, const std::string& weight_map) {
  test::write_file(dir / kShardIndexFile, R"({"metadata":{"total_size":40},"weight_map":)" + weight_map + "}");
}

// Two shards: a (4 floats) + b (2 floats) in shard 1, c (4 floats) in shard 2.
void write_two_shards(const test::TempDir& dir) {
  write_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", at::arange(4, at::kFloat)}, {"b", at::ones({2})}});
  write_safetensors(dir / "model-00002-of-00002.safetensors", {{"c", at::full({4}, 3.0)}});
}

std::string error_of(const std::filesystem::path& dir) {
  try {
    CheckpointWeights::open(dir);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Checkpoint, ReadsSingleFile) {
  test::TempDir dir;
  write_safetensors(dir / kSingleWeightsFile, {{"x", at::ones({2, 2})}});
  const auto w = CheckpointWeights::open(dir.path());
  EXPECT_FALSE(w.sharded());
  EXPECT_EQ(w.names(), std::vector<std::string>{"x"});
  EXPECT_TRUE(at::equal(w.tensor("x"), at::ones({2, 2})));
}

TEST(Checkpoint, ReadsShardsThroughTheIndex) {
  test::TempDir dir;
  write_two_shards(dir);
  write_index(dir.path(), R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"})");
  const auto w = CheckpointWeights::open(dir.path());
  EXPECT_TRUE(w.sharded());
  EXPECT_EQ(w.shards().size(), 2u);
  EXPECT_EQ(w.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(at::equal(w.tensor("c"), at::full({4}, 3.0)));
  EXPECT_NE(w.file_of("c").find("model-00002-of-00002.safetensors"), std::string::npos);
  EXPECT_EQ(w.declared_total_size(), 40u);
}

TEST(Checkpoint, IndexNamingAMissingShardFile) {
  test::TempDir dir;
  write_two_shards(dir);
  write_index(dir.path(), R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00003-of-00002.safetensors"})");
  const auto e = error_of(dir.path());
  EXPECT_NE(e.find("model.safetensors.index.json: weight_map: names shard 'model-00003-of-00002.safetensors', which does not exist"),
            std::string::npos) << e;
}

TEST(Checkpoint, IndexNamingATensorTheShardLacks) {
  test::TempDir dir;
  write_two_shards(dir);
  write_index(dir.path(), R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors","d":"model-00002-of-00002.safetensors"})");
  const auto e = error_of(dir.path());
  EXPECT_NE(e.find("weight_map.d: shard 'model-00002-of-00002.safetensors' has no such tensor"), std::string::npos) << e;
}

TEST(Checkpoint, ShardHoldingATensorTheIndexDoesNotList) {
  test::TempDir dir;
  write_two_shards(dir);
  write_index(dir.path(), R"({"a":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"})");
  const auto e = error_of(dir.path());
  EXPECT_NE(e.find("model-00001-of-00002.safetensors: tensor 'b': is not listed in model.safetensors.index.json"), std::string::npos) << e;
}

TEST(Checkpoint, TensorDuplicatedAcrossShards) {
  test::TempDir dir;
  write_safetensors(dir / "s1.safetensors", {{"a", at::ones({1})}});
  write_safetensors(dir / "s2.safetensors", {{"a", at::ones({1})}, {"b", at::ones({1})}});
  write_index(dir.path(), R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  const auto e = error_of(dir.path());
  EXPECT_NE(e.find("s2.safetensors: tensor 'a': is also here, but the index maps it to 's1.safetensors'"), std::string::npos) << e;
}

TEST(Checkpoint, MalformedIndexAndMissingWeights) {
  test::TempDir dir;
  EXPECT_NE(error_of(dir.path()).find(": weights: no model.safetensors or model.safetensors.index.json"), std::string::npos);
  test::write_file(dir / kShardIndexFile, R"({"metadata":{}})");
  EXPECT_NE(error_of(dir.path()).find("model.safetensors.index.json: weight_map: required key is missing"), std::string::npos);
  test::write_file(dir / kShardIndexFile, R"({"weight_map":{"a":"../etc/passwd"}})");
  EXPECT_NE(error_of(dir.path()).find("weight_map.a: shard name '../etc/passwd' is not a file name"), std::string::npos);
  test::write_file(dir / kShardIndexFile, R"({"weight_map":{"a":3}})");
  EXPECT_NE(error_of(dir.path()).find("weight_map.a: shard name is not a string"), std::string::npos);
  test::write_file(dir / kShardIndexFile, R"({"weight_map":)");
  EXPECT_NE(error_of(dir.path()).find("model.safetensors.index.json: file: not valid JSON"), std::string::npos);
}

TEST(Checkpoint, CorruptShardIsNamed) {
  test::TempDir dir;
  write_two_shards(dir);
  const auto shard = dir / "model-00002-of-00002.safetensors";
  const auto bytes = test::read_file(shard);
  test::write_file(shard, bytes.substr(0, bytes.size() - 4));  // truncated download
  write_index(dir.path(), R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"})");
  const auto e = error_of(dir.path());
  EXPECT_NE(e.find("model-00002-of-00002.safetensors: tensor 'c'.data_offsets: ends at 16, past the 12-byte data buffer"),
            std::string::npos) << e;
}

}  // namespace
}  // namespace linearize
