// tokenizer.json -> ids exactly as Hugging Face `tokenizers` computes them (vectors written by
// tests/fixtures/tokenizers/make_tokenizer_vectors.py), decode round trips, and errors naming the component.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/json_file.h"
#include "formats/tokenizer.h"
#include "test_util.h"

namespace linearize {
namespace {

using nlohmann::json;

const json& vectors() {
  static const json document = read_json_file(test::fixtures_dir() / "tokenizers" / "vectors.json");
  return document;
}

// A text entry: a string, or {"utf8_replaced_from_hex": "..."} for bytes that are not valid UTF-8.
std::string text_bytes(const json& entry) {
  if (entry.is_string()) return entry.get<std::string>();
  const std::string hex = entry.at("utf8_replaced_from_hex").get<std::string>();
  std::string bytes;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) bytes += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return bytes;
}

std::vector<std::int64_t> ids_of(const json& list) { return list.get<std::vector<std::int64_t>>(); }

class ReferenceVectors : public testing::TestWithParam<std::string> {};

// Every text, both add_special_tokens settings, and decode with and without special tokens. Mismatches are
// counted and the first few printed in full, so one bug does not bury the log.
TEST_P(ReferenceVectors, EncodeAndDecodeMatchTokenizers) {
  const json& expected = vectors().at("tokenizers").at(GetParam());
  const Tokenizer tokenizer = Tokenizer::from_file(test::fixtures_dir() / expected.at("file").get<std::string>());
  const json& texts = vectors().at("texts");
  int failures = 0;
  const auto check = [&](bool ok, std::size_t i, const std::string& what, const std::string& got, const std::string& want) {
    if (ok) return;
    if (++failures <= 5) ADD_FAILURE() << GetParam() << " text " << i << " " << what << "\n  text: " << texts[i].dump() << "\n  got:  " << got << "\n  want: " << want;
  };
  const auto dump = [](const std::vector<std::int64_t>& ids) { return json(ids).dump(); };
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::string text = text_bytes(texts[i]);
    const auto ids = tokenizer.encode(text, false);
    check(ids == ids_of(expected.at("ids")[i]), i, "ids", dump(ids), expected.at("ids")[i].dump());
    const auto ids_special = tokenizer.encode(text, true);
    if (!expected.at("ids_special")[i].is_null()) {
      check(ids_special == ids_of(expected.at("ids_special")[i]), i, "ids_special", dump(ids_special), expected.at("ids_special")[i].dump());
    }
    for (const auto& [key, skip] : {std::pair<const char*, bool>{"decoded", false}, {"decoded_skip_special", true}}) {
      const json& want = expected.at(key)[i];
      const std::string decoded = tokenizer.decode(ids_special, skip);
      const std::string wanted = want.is_null() ? text : want.get<std::string>();
      check(decoded == wanted, i, key, json(decoded).dump(), json(wanted).dump());
    }
  }
  EXPECT_EQ(failures, 0) << "of " << texts.size() << " texts";
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, ReferenceVectors, testing::Values("fixture", "byte-level-split", "sentencepiece-bpe", "metaspace-bpe"),
                         [](const testing::TestParamInfo<std::string>& param_info) {
                           std::string name = param_info.param;
                           for (auto& c : name) c = c == '-' ? '_' : c;
                           return name;
                         });

TEST(Tokenizer, FixtureDirectoryNamesBosAndEos) {
  const auto tokenizer = Tokenizer::from_dir(test::fixtures_dir() / "tiny-llama");
  EXPECT_EQ(tokenizer.vocab_size(), 768);
  EXPECT_EQ(tokenizer.bos_id(), 0);
  EXPECT_EQ(tokenizer.eos_id(), 1);
  EXPECT_FALSE(tokenizer.has_chat_template());
  EXPECT_EQ(tokenizer.token_to_id("<|pad|>"), 2);
  EXPECT_EQ(tokenizer.id_to_token(1), "<|eos|>");
  EXPECT_EQ(tokenizer.id_to_token(768), std::nullopt);
  EXPECT_EQ(tokenizer.token_to_id("not a token"), std::nullopt);
}

TEST(Tokenizer, FileAloneHasNoBosOrEos) {
  const auto tokenizer = Tokenizer::from_file(test::fixtures_dir() / "tiny-llama" / "tokenizer.json");
  EXPECT_EQ(tokenizer.bos_id(), std::nullopt);
  EXPECT_EQ(tokenizer.eos_id(), std::nullopt);
}

TEST(Tokenizer, DecodeRejectsIdsOutsideTheVocabulary) {
  const auto tokenizer = Tokenizer::from_file(test::fixtures_dir() / "tiny-llama" / "tokenizer.json");
  EXPECT_THROW(tokenizer.decode({5, 768}), InputError);
  EXPECT_THROW(tokenizer.decode({-1}), InputError);
}

// Bad tokenizer files: each error names the file and the component.
class TokenizerErrors : public testing::Test {
 protected:
  static json base() { return read_json_file(test::fixtures_dir() / "tokenizers" / "sentencepiece-bpe" / "tokenizer.json"); }
  std::string error(const json& document) {
    test::write_file(dir_ / "tokenizer.json", document.dump());
    try {
      Tokenizer::from_file(dir_ / "tokenizer.json");
    } catch (const InputError& e) {
      return e.what();
    }
    return "(no error)";
  }
  std::string prefix(const std::string& field) { return (dir_ / "tokenizer.json").string() + ": " + field + ": "; }
  test::TempDir dir_;
};

TEST_F(TokenizerErrors, UnsupportedComponentsAreNamed) {
  const auto with = [](const std::string& key, const json& value) {
    json document = base();
    document[key] = value;
    return document;
  };
  EXPECT_EQ(error(with("pre_tokenizer", {{"type", "Whitespace"}})),
            prefix("pre_tokenizer.type") + "unsupported pre-tokenizer 'Whitespace' (supported: ByteLevel, Split, Metaspace, Sequence)");
  EXPECT_EQ(error(with("normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", "x"}}, {{"type", "NFKC"}}}}})),
            prefix("normalizer.normalizers[1].type") + "unsupported normalizer 'NFKC' (supported: NFC, Prepend, Replace, Sequence)");
  EXPECT_EQ(error(with("decoder", {{"type", "WordPiece"}})),
            prefix("decoder.type") + "unsupported decoder 'WordPiece' (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence)");
  EXPECT_EQ(error(with("post_processor", {{"type", "RobertaProcessing"}})),
            prefix("post_processor.type") + "unsupported post-processor 'RobertaProcessing' (supported: TemplateProcessing, ByteLevel, Sequence)");
  json unigram = base();
  unigram["model"]["type"] = "Unigram";
  EXPECT_EQ(error(unigram), prefix("model.type") + "unsupported model 'Unigram' (supported: BPE)");
  json lstrip = base();
  lstrip["added_tokens"][1]["lstrip"] = true;
  EXPECT_EQ(error(lstrip), prefix("added_tokens[1].lstrip") + "added tokens with lstrip are not supported");
  json dropout = base();
  dropout["model"]["dropout"] = 0.1;
  EXPECT_EQ(error(dropout), prefix("model.dropout") + "BPE dropout is not supported (encoding must be deterministic)");
}

TEST_F(TokenizerErrors, BadMergesAndVocabulary) {
  json unknown = base();
  unknown["model"]["merges"][3] = {"no-such-token", "x"};
  EXPECT_EQ(error(unknown).rfind(prefix("model.merges[3]") + "merge [\"no-such-token\",\"x\"] names a token", 0), 0u) << error(unknown);
  json three = base();
  three["model"]["merges"][0] = "a b c";
  EXPECT_EQ(error(three), prefix("model.merges[0]") + "expected two tokens separated by one space, got \"a b c\"");
  json no_vocab = base();
  no_vocab["model"].erase("vocab");
  EXPECT_EQ(error(no_vocab), prefix("model.vocab") + "required key is missing");
  json bad_regex = base();
  bad_regex["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}, {"invert", false}};
  EXPECT_EQ(error(bad_regex).rfind(prefix("pre_tokenizer.pattern") + "regex does not compile", 0), 0u) << error(bad_regex);
  test::write_file(dir_ / "tokenizer.json", "{not json");
  EXPECT_THROW(Tokenizer::from_file(dir_ / "tokenizer.json"), InputError);
  EXPECT_THROW(Tokenizer::from_dir(dir_ / "missing"), InputError);
}

TEST_F(TokenizerErrors, ConfigNamingAnUnknownBosToken) {
  test::write_file(dir_ / "tokenizer.json", base().dump());
  test::write_file(dir_ / "tokenizer_config.json", json{{"bos_token", {{"content", "<bos>"}}}, {"chat_template", "{{ x }}"}}.dump());
  try {
    Tokenizer::from_dir(dir_.path());
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), (dir_ / "tokenizer_config.json").string() + ": bos_token: '<bos>' is not a token of tokenizer.json");
  }
  test::write_file(dir_ / "tokenizer_config.json", json{{"bos_token", {{"content", "<s>"}}}, {"eos_token", "</s>"}, {"chat_template", "{{ x }}"}}.dump());
  const auto tokenizer = Tokenizer::from_dir(dir_.path());
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.eos_id(), 2);
  EXPECT_TRUE(tokenizer.has_chat_template());
}

}  // namespace
}  // namespace linearize
