// `linearize tokenize`: ids out for --text, text out for --decode, exit 2 with one line on bad input.
#include <gtest/gtest.h>

#include "formats/tokenizer.h"
#include "test_util.h"

namespace linearize {
namespace {

const std::string kText = "The unary \"~\" (invert) operator";

std::string fixture_dir() { return (test::fixtures_dir() / "tokenizers" / "sentencepiece-bpe").string(); }

TEST(TokenizeCli, EncodesAndDecodesLikeTheLibrary) {
  const auto tokenizer = Tokenizer::from_file(fixture_dir() + "/tokenizer.json");
  const auto ids = tokenizer.encode(kText);
  std::string expected_ids, id_list;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    expected_ids += (i ? " " : "") + std::to_string(ids[i]);
    id_list += (i ? "," : "") + std::to_string(ids[i]);
  }

  const auto encoded = test::run_linearize({"tokenize", "--tokenizer", fixture_dir(), "--text", kText});
  ASSERT_EQ(encoded.exit_code, 0) << encoded.err;
  EXPECT_EQ(encoded.out, expected_ids + "\n");
  EXPECT_EQ(ids.front(), tokenizer.token_to_id("<s>"));  // the post-processor's BOS

  const auto no_special = test::run_linearize({"tokenize", "--tokenizer", fixture_dir() + "/tokenizer.json", "--text", kText, "--no-special"});
  ASSERT_EQ(no_special.exit_code, 0) << no_special.err;
  EXPECT_EQ(no_special.out, expected_ids.substr(expected_ids.find(' ') + 1) + "\n");

  const auto decoded = test::run_linearize({"tokenize", "--tokenizer", fixture_dir(), "--decode", id_list, "--no-special"});
  ASSERT_EQ(decoded.exit_code, 0) << decoded.err;
  EXPECT_EQ(decoded.out, kText + "\n");
}

TEST(TokenizeCli, BadInputExitsTwoWithOneLine) {
  const std::vector<std::vector<std::string>> cases = {
      {"tokenize", "--tokenizer", fixture_dir(), "--decode", "1,x,3"},
      {"tokenize", "--tokenizer", fixture_dir(), "--decode", "1,99999"},
      {"tokenize", "--tokenizer", "/nonexistent/dir", "--text", "hi"},
  };
  for (const auto& args : cases) {
    const auto result = test::run_linearize(args);
    EXPECT_EQ(result.exit_code, 2) << args.back();
    EXPECT_TRUE(result.out.empty()) << result.out;
    EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
  }
  // Neither --text nor --decode: a usage error (CLI11 adds its "Run with --help" line).
  EXPECT_EQ(test::run_linearize({"tokenize", "--tokenizer", fixture_dir()}).exit_code, 2);
}

}  // namespace
}  // namespace linearize
