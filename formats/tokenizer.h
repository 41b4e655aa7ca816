// Hugging Face tokenizer.json, encoded and decoded exactly as the `tokenizers` library does, for the two
// families our architectures use:
//   - byte-level BPE (GPT-2 / Llama-3 / Qwen2): ByteLevel pre-tokenizer (GPT-2 regex) or a Split regex
//     pre-tokenizer followed by ByteLevel(use_regex=false), optional NFC normalizer, ByteLevel decoder;
//   - SentencePiece-style BPE (Llama-2 / Mistral): Prepend("▁") + Replace(" ", "▁") normalizer or a Metaspace
//     pre-tokenizer, byte_fallback to <0xNN> tokens, Replace/ByteFallback/Fuse/Strip or Metaspace decoders.
// Added tokens are split out of the text first (leftmost-longest), the post-processor (TemplateProcessing)
// adds BOS/EOS when add_special_tokens is set. Any other component is an InputError naming it.
// Text that is not valid UTF-8 is read as Python's bytes.decode("utf-8", "replace") would (each maximal
// invalid subsequence becomes U+FFFD), so files with a stray byte still tokenize as the reference would.
// Regexes run on PCRE2 (UTF + UCP), NFC on ICU. encode/decode are const and safe to call from several
// threads (the per-word cache is shared under a mutex).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace linearize {

class Tokenizer {
 public:
  // tokenizer.json alone: no BOS/EOS names (those live in tokenizer_config.json).
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);
  // dir/tokenizer.json plus, when present, dir/tokenizer_config.json (bos_token, eos_token, chat_template)
  // and dir/chat_template.jinja.
  static Tokenizer from_dir(const std::filesystem::path& dir);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_special_tokens runs the post-processor (e.g. prepends BOS); added tokens written in the text are
  // recognised either way, as in `tokenizers`.
  std::vector<std::int64_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Throws InputError for an id outside [0, vocab_size()) (the reference silently drops it).
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens = false) const;

  std::optional<std::int64_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(std::int64_t id) const;
  // One past the largest id (model vocabulary and added tokens): every id encode returns is below it.
  std::int64_t vocab_size() const;
  std::optional<std::int64_t> bos_id() const;
  std::optional<std::int64_t> eos_id() const;
  bool has_chat_template() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace linearize
