#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "cli/id_list.h"
#include "formats/tokenizer.h"

namespace linearize::cli {
void add_tokenize_command(CLI::App& app) {
  struct Options {
    std::string tokenizer;
    std::string text;
    std::string decode;
    bool no_special = false;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("tokenize", "Encode text to ids, or decode ids to text, with a model's tokenizer.json");
  cmd->add_option("--tokenizer", opts->tokenizer, "Model directory (tokenizer.json + tokenizer_config.json) or a tokenizer.json file")->required();
  auto* text = cmd->add_option("--text", opts->text, "Text to encode; prints the ids separated by spaces");
  auto* decode = cmd->add_option("--decode", opts->decode, "Comma-separated ids to decode; prints the text");
  text->excludes(decode);
  cmd->add_flag("--no-special", opts->no_special, "Encoding: do not add BOS/EOS (the post-processor); decoding: drop special tokens");
  cmd->callback([opts, text, decode] {
    if (text->count() == 0 && decode->count() == 0) throw CLI::RequiredError("--text or --decode");
    const auto tokenizer = std::filesystem::is_regular_file(opts->tokenizer) ? Tokenizer::from_file(opts->tokenizer) : Tokenizer::from_dir(opts->tokenizer);
    if (decode->count() > 0) {
      std::cout << tokenizer.decode(parse_id_list(opts->decode, "--decode"), opts->no_special) << '\n';
      return;
    }
    const auto ids = tokenizer.encode(opts->text, !opts->no_special);
    for (std::size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << '\n';
  });
}

}  // namespace linearize::cli
