#include "formats/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include <algorithm>
#include <array>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "formats/error.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

using nlohmann::json;

// ------------------------------------------------------------------------------------------------ UTF-8

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence at text[i], or 0 if it is invalid; *consumed is then the length of its
// maximal subpart (Unicode 3.9, "U+FFFD substitution of maximal subparts"), the policy of both Python's
// decode("utf-8", "replace") and Rust's String::from_utf8_lossy.
std::size_t utf8_sequence_length(std::string_view text, std::size_t i, std::size_t* consumed) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  *consumed = 1;
  if (lead < 0x80) return 1;
  std::size_t need = 0;
  unsigned char low = 0x80, high = 0xBF;  // bounds of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 2;
    if (lead == 0xE0) low = 0xA0;   // no overlong forms
    if (lead == 0xED) high = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 3;
    if (lead == 0xF0) low = 0x90;
    if (lead == 0xF4) high = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  for (std::size_t k = 1; k <= need; ++k) {
    if (i + k >= text.size()) return 0;
    const unsigned char b = byte(i + k);
    if (b < (k == 1 ? low : 0x80) || b > (k == 1 ? high : 0xBF)) return 0;
    *consumed = k + 1;
  }
  return need + 1;
}

bool is_valid_utf8(std::string_view text) {
  std::size_t consumed = 0;
  for (std::size_t i = 0; i < text.size(); i += consumed) {
    if (utf8_sequence_length(text, i, &consumed) == 0) return false;
  }
  return true;
}

// `text` itself when it is valid UTF-8, else a copy in `storage` with each maximal invalid subpart
// replaced by U+FFFD.
std::string_view lossy_utf8(std::string_view text, std::string& storage) {
  if (is_valid_utf8(text)) return text;
  storage.clear();
  std::size_t consumed = 0;
  for (std::size_t i = 0; i < text.size(); i += consumed) {
    const std::size_t length = utf8_sequence_length(text, i, &consumed);
    if (length == 0) {
      storage += kReplacementChar;
    } else {
      storage.append(text, i, length);
    }
  }
  return storage;
}

// Byte length of the character starting at text[i] of valid UTF-8.
std::size_t char_length(std::string_view text, std::size_t i) {
  const auto lead = static_cast<unsigned char>(text[i]);
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

bool starts_with(std::string_view text, std::string_view prefix) { return text.substr(0, prefix.size()) == prefix; }

// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes stand for themselves,
// the others take code points 256, 257, ... in byte order. Computed, not a table of Unicode data.
struct ByteLevelAlphabet {
  std::array<std::string, 256> char_of_byte;
  std::unordered_map<std::string, unsigned char> byte_of_char;

  ByteLevelAlphabet() {
    int next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const int code_point = printable ? b : next_extra++;
      // Code points below 0x800 take two UTF-8 bytes at most.
      std::string utf8 = code_point < 0x80 ? std::string(1, static_cast<char>(code_point))
                                           : std::string{static_cast<char>(0xC0 | (code_point >> 6)),
                                                         static_cast<char>(0x80 | (code_point & 0x3F))};
      byte_of_char.emplace(utf8, static_cast<unsigned char>(b));
      char_of_byte[static_cast<std::size_t>(b)] = std::move(utf8);
    }
  }
};

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet;
  return alphabet;
}

// ------------------------------------------------------------------------------------------- JSON help

// Where a component sits in tokenizer.json, for error messages ("pre_tokenizer.pretokenizers[1].type").
struct Context {
  std::string file;
  std::string field;

  Context child(const std::string& key) const { return {file, field.empty() ? key : field + "." + key}; }
  Context item(std::size_t index) const { return {file, field + "[" + std::to_string(index) + "]"}; }
  [[noreturn]] void fail(const std::string& message) const { throw InputError(file, field, message); }

  const json& at(const json& object, const std::string& key) const {
    if (!object.is_object()) fail("expected an object, got " + object.dump());
    const auto it = object.find(key);
    if (it == object.end() || it->is_null()) child(key).fail("required key is missing");
    return *it;
  }
  std::string string_at(const json& object, const std::string& key) const {
    const json& value = at(object, key);
    if (!value.is_string()) child(key).fail("expected a string, got " + value.dump());
    return value.get<std::string>();
  }
  bool bool_or(const json& object, const std::string& key, bool fallback) const {
    const auto it = object.find(key);
    if (it == object.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) child(key).fail("expected true or false, got " + it->dump());
    return it->get<bool>();
  }
  std::int64_t int_at(const json& object, const std::string& key) const {
    const json& value = at(object, key);
    if (!value.is_number_integer()) child(key).fail("expected an integer, got " + value.dump());
    return value.get<std::int64_t>();
  }
  const json& list_at(const json& object, const std::string& key) const {
    const json& value = at(object, key);
    if (!value.is_array()) child(key).fail("expected a list, got " + value.dump());
    return value;
  }
  [[noreturn]] void unsupported(const std::string& kind, const std::string& type, const std::string& supported) const {
    child("type").fail("unsupported " + kind + " '" + type + "' (supported: " + supported + ")");
  }
};

bool is_null_or_missing(const json& object, const std::string& key) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null();
}

// ------------------------------------------------------------------------------------------------ regex

class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const Context& where) {
    if (pattern.empty()) where.fail("an empty pattern is not supported");
    const std::string translated = literal ? pattern : onig_compatible(pattern);
    int error = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t options = literal ? PCRE2_LITERAL | PCRE2_UTF : PCRE2_UTF | PCRE2_UCP;
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), options, &error, &offset, nullptr));
    if (!code_) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error, message.data(), message.size());
      where.fail("regex does not compile at offset " + std::to_string(offset) + ": " + reinterpret_cast<const char*>(message.data()));
    }
    pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);  // falls back to the interpreter where JIT is unavailable
  }

  // Calls on_match(start, end) for each non-overlapping match, left to right. An empty match advances by
  // one character, as Oniguruma's find_iter does.
  template <typename OnMatch>
  void for_each_match(std::string_view text, OnMatch&& on_match) const {
    thread_local const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match_data(
        pcre2_match_data_create(1, nullptr), &pcre2_match_data_free);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t from = 0;
    while (from <= text.size()) {
      const int rc = pcre2_match(code_.get(), subject, text.size(), from, PCRE2_NO_UTF_CHECK, match_data.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) throw std::runtime_error("PCRE2 match failed with code " + std::to_string(rc));
      const PCRE2_SIZE* span = pcre2_get_ovector_pointer(match_data.get());
      on_match(span[0], span[1]);
      if (span[1] > span[0]) {
        from = span[1];
      } else if (span[1] < text.size()) {
        from = span[1] + char_length(text, span[1]);
      } else {
        return;
      }
    }
  }

 private:
  // Oniguruma (the reference's engine) gives \s the Unicode White_Space property; PCRE2's UCP \s also
  // takes U+180E, which Unicode no longer counts as space. Spell the property out instead.
  static std::string onig_compatible(const std::string& pattern) {
    std::string out;
    out.reserve(pattern.size());
    for (std::size_t i = 0; i < pattern.size(); ++i) {
      if (pattern[i] == '\\' && i + 1 < pattern.size()) {
        const char escaped = pattern[i + 1];
        out += escaped == 's' ? "\\p{White_Space}" : escaped == 'S' ? "\\P{White_Space}" : pattern.substr(i, 2);
        ++i;
      } else {
        out += pattern[i];
      }
    }
    return out;
  }

  struct Free {
    void operator()(pcre2_code* code) const { pcre2_code_free(code); }
  };
  std::unique_ptr<pcre2_code, Free> code_;
};

// {"String": "..."} (a literal) or {"Regex": "..."}.
std::shared_ptr<const Regex> parse_pattern(const json& object, const Context& where) {
  const json& pattern = where.at(object, "pattern");
  const Context at = where.child("pattern");
  if (pattern.contains("String") && pattern["String"].is_string()) return std::make_shared<Regex>(pattern["String"].get<std::string>(), true, at);
  if (pattern.contains("Regex") && pattern["Regex"].is_string()) return std::make_shared<Regex>(pattern["Regex"].get<std::string>(), false, at);
  at.fail("expected {\"String\": ...} or {\"Regex\": ...}, got " + pattern.dump());
}

std::string replace_all(const Regex& pattern, std::string_view text, std::string_view content) {
  std::string out;
  std::size_t previous = 0;
  pattern.for_each_match(text, [&](std::size_t start, std::size_t end) {
    out.append(text, previous, start - previous);
    out += content;
    previous = end;
  });
  out.append(text, previous, std::string_view::npos);
  return out;
}

// ------------------------------------------------------------------------------------------- normalizer

struct NormalizerStep {
  enum class Kind { kNfc, kPrepend, kReplace } kind;
  std::string text;  // Prepend: what to prepend; Replace: the replacement
  std::shared_ptr<const Regex> pattern;
};

void parse_normalizer(const json& object, const Context& where, std::vector<NormalizerStep>& steps) {
  const std::string type = where.string_at(object, "type");
  if (type == "Sequence") {
    const json& list = where.list_at(object, "normalizers");
    for (std::size_t i = 0; i < list.size(); ++i) parse_normalizer(list[i], where.child("normalizers").item(i), steps);
  } else if (type == "NFC") {
    steps.push_back({NormalizerStep::Kind::kNfc, "", nullptr});
  } else if (type == "Prepend") {
    steps.push_back({NormalizerStep::Kind::kPrepend, where.string_at(object, "prepend"), nullptr});
  } else if (type == "Replace") {
    steps.push_back({NormalizerStep::Kind::kReplace, where.string_at(object, "content"), parse_pattern(object, where)});
  } else {
    where.unsupported("normalizer", type, "NFC, Prepend, Replace, Sequence");
  }
}

std::string nfc(std::string_view text) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = icu::Normalizer2::getNFCInstance(status);
  const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  if (U_SUCCESS(status) && normalizer->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return std::string(text);
  std::string out;
  icu::StringByteSink<std::string> sink(&out);
  status = U_ZERO_ERROR;
  normalizer->normalizeUTF8(0, piece, sink, nullptr, status);
  if (U_FAILURE(status)) throw std::runtime_error(std::string("ICU NFC failed: ") + u_errorName(status));
  return out;
}

std::string normalize(const std::vector<NormalizerStep>& steps, std::string text) {
  for (const auto& step : steps) {
    switch (step.kind) {
      case NormalizerStep::Kind::kNfc:
        text = nfc(text);
        break;
      case NormalizerStep::Kind::kPrepend:
        if (!text.empty()) text.insert(0, step.text);
        break;
      case NormalizerStep::Kind::kReplace:
        text = replace_all(*step.pattern, text, step.text);
        break;
    }
  }
  return text;
}

// ---------------------------------------------------------------------------------------- pre-tokenizer

// A span of text on its way to the model. at_text_start: it begins at offset 0 of the original text (what
// Metaspace's prepend_scheme "first" looks at).
struct Piece {
  std::string text;
  bool at_text_start;
};

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

SplitBehavior parse_behavior(const std::string& name, const Context& where) {
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  where.fail("unsupported split behavior '" + name + "'");
}

enum class PrependScheme { kAlways, kFirst, kNever };

// Metaspace's prepend_scheme, or the older add_prefix_space (true meant "always").
PrependScheme parse_prepend_scheme(const json& object, const Context& where) {
  if (is_null_or_missing(object, "prepend_scheme")) {
    return where.bool_or(object, "add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  const std::string scheme = where.string_at(object, "prepend_scheme");
  if (scheme == "always") return PrependScheme::kAlways;
  if (scheme == "first") return PrependScheme::kFirst;
  if (scheme == "never") return PrependScheme::kNever;
  where.child("prepend_scheme").fail("unsupported prepend_scheme '" + scheme + "'");
}

// GPT-2's split, applied by ByteLevel(use_regex=true).
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct PreTokenizerStep {
  enum class Kind { kSplit, kMetaspace, kPrefixSpace } kind;
  std::shared_ptr<const Regex> pattern{};  // kSplit, and kMetaspace with split
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  std::string replacement{};  // kMetaspace
  PrependScheme prepend_scheme = PrependScheme::kAlways;
};

struct PreTokenizer {
  std::vector<PreTokenizerStep> steps;
  bool byte_level = false;  // pieces reach the model as GPT-2 byte characters
};

void parse_pre_tokenizer(const json& object, const Context& where, PreTokenizer& out) {
  const std::string type = where.string_at(object, "type");
  if (out.byte_level) where.fail("a pre-tokenizer after ByteLevel is not supported");
  if (type == "Sequence") {
    const json& list = where.list_at(object, "pretokenizers");
    for (std::size_t i = 0; i < list.size(); ++i) parse_pre_tokenizer(list[i], where.child("pretokenizers").item(i), out);
  } else if (type == "ByteLevel") {
    if (where.bool_or(object, "add_prefix_space", true)) out.steps.push_back({PreTokenizerStep::Kind::kPrefixSpace, nullptr});
    if (where.bool_or(object, "use_regex", true)) {
      PreTokenizerStep split{PreTokenizerStep::Kind::kSplit, std::make_shared<Regex>(kGpt2Pattern, false, where)};
      out.steps.push_back(std::move(split));
    }
    out.byte_level = true;
  } else if (type == "Split") {
    PreTokenizerStep split{PreTokenizerStep::Kind::kSplit, parse_pattern(object, where)};
    split.behavior = parse_behavior(where.string_at(object, "behavior"), where.child("behavior"));
    split.invert = where.bool_or(object, "invert", false);
    out.steps.push_back(std::move(split));
  } else if (type == "Metaspace") {
    PreTokenizerStep metaspace{PreTokenizerStep::Kind::kMetaspace, nullptr};
    metaspace.replacement = where.string_at(object, "replacement");
    metaspace.prepend_scheme = parse_prepend_scheme(object, where);
    if (where.bool_or(object, "split", true)) {
      metaspace.pattern = std::make_shared<Regex>(metaspace.replacement, true, where.child("replacement"));
      metaspace.behavior = SplitBehavior::kMergedWithNext;
    }
    out.steps.push_back(std::move(metaspace));
  } else {
    where.unsupported("pre-tokenizer", type, "ByteLevel, Split, Metaspace, Sequence");
  }
}

// Splits `piece` where `pattern` matches, keeping the matches as `behavior` says (tokenizers'
// NormalizedString::split). Empty results are dropped, as PreTokenizedString::split does.
void split_piece(const Piece& piece, const Regex& pattern, SplitBehavior behavior, bool invert, std::vector<Piece>& out) {
  struct Span {
    std::size_t start, end;
    bool is_match;
  };
  thread_local std::vector<Span> spans;
  spans.clear();
  std::size_t previous = 0;
  pattern.for_each_match(piece.text, [&](std::size_t start, std::size_t end) {
    if (previous != start) spans.push_back({previous, start, invert});
    spans.push_back({start, end, !invert});
    previous = end;
  });
  if (previous != piece.text.size()) spans.push_back({previous, piece.text.size(), invert});

  thread_local std::vector<Span> kept;
  kept.clear();
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      kept = spans;
      break;
    case SplitBehavior::kRemoved:
      for (const auto& span : spans) {
        if (!span.is_match) kept.push_back(span);
      }
      break;
    case SplitBehavior::kContiguous:
    case SplitBehavior::kMergedWithPrevious:
      for (const auto& span : spans) {
        const bool extend = behavior == SplitBehavior::kContiguous ? span.is_match == previous_match : span.is_match && !previous_match;
        if (extend && !kept.empty()) {
          kept.back().end = span.end;
        } else {
          kept.push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) {
          kept.back().start = it->start;
        } else {
          kept.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const auto& span : kept) {
    if (span.end > span.start) out.push_back({piece.text.substr(span.start, span.end - span.start), piece.at_text_start && span.start == 0});
  }
}

void apply_step(const PreTokenizerStep& step, std::vector<Piece>& pieces, std::vector<Piece>& scratch) {
  if (step.kind == PreTokenizerStep::Kind::kPrefixSpace) {
    for (auto& piece : pieces) {
      if (!starts_with(piece.text, " ")) piece.text.insert(0, " ");
    }
    return;
  }
  if (step.kind == PreTokenizerStep::Kind::kMetaspace) {
    for (auto& piece : pieces) {
      std::string replaced;
      for (char c : piece.text) {
        if (c == ' ') {
          replaced += step.replacement;
        } else {
          replaced += c;
        }
      }
      const bool prepend = !starts_with(replaced, step.replacement) &&
                           (step.prepend_scheme == PrependScheme::kAlways || (step.prepend_scheme == PrependScheme::kFirst && piece.at_text_start));
      if (prepend) replaced.insert(0, step.replacement);
      piece.text = std::move(replaced);
    }
    if (!step.pattern) return;
  }
  scratch.clear();
  for (const auto& piece : pieces) split_piece(piece, *step.pattern, step.behavior, step.invert, scratch);
  std::swap(pieces, scratch);
}

// ------------------------------------------------------------------------------------------------- BPE

struct Symbol {
  std::int32_t id;
  std::int32_t prev;  // index of the neighbours in the symbol list, -1 at the ends
  std::int32_t next;
  std::int32_t length;  // bytes of the word it covers; 0 once merged into its left neighbour
};

struct Merge {
  std::int32_t rank;
  std::int32_t position;
  std::int32_t new_id;
};

// tokenizers' heap order: lowest rank first, then leftmost.
bool merges_later(const Merge& a, const Merge& b) { return a.rank != b.rank ? a.rank > b.rank : a.position > b.position; }

std::uint64_t pair_key(std::int32_t left, std::int32_t right) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
}

class BpeModel {
 public:
  BpeModel(const json& object, const Context& where);

  // Appends the ids of one pre-tokenized word (BPE::tokenize: ignore_merges, per-word cache, merge_word).
  void tokenize(std::string_view word, std::vector<std::int64_t>& out) const;

  std::optional<std::int32_t> token_to_id(std::string_view token) const {
    const auto it = vocab_.find(std::string(token));
    return it == vocab_.end() ? std::nullopt : std::optional<std::int32_t>(it->second);
  }
  const std::unordered_map<std::string, std::int32_t>& vocab() const { return vocab_; }

 private:
  void merge_word(std::string_view word, std::vector<std::int32_t>& ids) const;
  void merge_all(std::vector<Symbol>& symbols) const;
  std::optional<std::pair<std::int32_t, std::int32_t>> find_merge(std::int32_t left, std::int32_t right) const {
    const auto it = merges_.find(pair_key(left, right));
    return it == merges_.end() ? std::nullopt : std::optional<std::pair<std::int32_t, std::int32_t>>(it->second);
  }

  std::unordered_map<std::string, std::int32_t> vocab_;
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges_;  // pair -> (rank, new id)
  std::optional<std::int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::array<std::int32_t, 256> byte_fallback_ids_{};  // id of <0xNN>, -1 if absent; all -1 unless byte_fallback

  // Results per word. Words longer than kMaxCachedWordBytes (whole lines in the SentencePiece family) rarely
  // repeat; the entry cap bounds memory on large corpora. Neither changes results.
  static constexpr std::size_t kMaxCachedWordBytes = 256;
  static constexpr std::size_t kCacheCapacity = 1 << 17;
  mutable std::mutex cache_mutex_;
  mutable std::deque<std::string> cache_keys_;  // owns the bytes the map's keys view (stable addresses)
  mutable std::unordered_map<std::string_view, std::vector<std::int32_t>> cache_;
};

BpeModel::BpeModel(const json& object, const Context& where) {
  const std::string type = where.string_at(object, "type");
  if (type != "BPE") where.unsupported("model", type, "BPE");
  if (!is_null_or_missing(object, "dropout") && object["dropout"] != 0) where.child("dropout").fail("BPE dropout is not supported (encoding must be deterministic)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!is_null_or_missing(object, key) && object[key] != "") where.child(key).fail("not supported by the byte-level and SentencePiece BPE families");
  }
  const json& vocab = where.at(object, "vocab");
  if (!vocab.is_object()) where.child("vocab").fail("expected an object of token -> id");
  vocab_.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() > INT32_MAX) where.child("vocab").child(token).fail("expected a non-negative id, got " + id.dump());
    vocab_.emplace(token, id.get<std::int32_t>());
  }

  const Context merges_at = where.child("merges");
  const json& merges = where.list_at(object, "merges");
  merges_.reserve(merges.size());
  std::int32_t rank = 0;
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const json& merge = merges[i];
    std::string left, right;
    if (merge.is_string()) {  // legacy "a b"
      const std::string line = merge.get<std::string>();
      if (starts_with(line, "#version")) continue;
      const std::size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) merges_at.item(i).fail("expected two tokens separated by one space, got " + merge.dump());
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      merges_at.item(i).fail("expected \"a b\" or [\"a\", \"b\"], got " + merge.dump());
    }
    const auto left_id = token_to_id(left), right_id = token_to_id(right), new_id = token_to_id(left + right);
    if (!left_id || !right_id || !new_id) merges_at.item(i).fail("merge " + merge.dump() + " names a token that is not in the vocabulary");
    merges_[pair_key(*left_id, *right_id)] = {rank++, *new_id};  // a repeated pair keeps its last rank, as in tokenizers
  }

  if (const auto unk = object.find("unk_token"); unk != object.end() && !unk->is_null()) {
    unk_id_ = token_to_id(where.string_at(object, "unk_token"));
    if (!unk_id_) where.child("unk_token").fail("not in the vocabulary");
  }
  fuse_unk_ = where.bool_or(object, "fuse_unk", false);
  ignore_merges_ = where.bool_or(object, "ignore_merges", false);
  byte_fallback_ids_.fill(-1);
  if (where.bool_or(object, "byte_fallback", false)) {
    for (int b = 0; b < 256; ++b) {
      static constexpr char kHex[] = "0123456789ABCDEF";
      const std::string name{'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
      if (const auto id = token_to_id(name)) byte_fallback_ids_[static_cast<std::size_t>(b)] = *id;
    }
  }
}

void BpeModel::tokenize(std::string_view word, std::vector<std::int64_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto id = token_to_id(word)) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedWordBytes;
  if (cacheable) {
    const std::lock_guard<std::mutex> lock(cache_mutex_);
    if (const auto hit = cache_.find(word); hit != cache_.end()) {
      out.insert(out.end(), hit->second.begin(), hit->second.end());
      return;
    }
  }
  std::vector<std::int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    const std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity && cache_.find(word) == cache_.end()) {
      cache_.emplace(cache_keys_.emplace_back(word), std::move(ids));
    }
  }
}

// One symbol per character (or its <0xNN> bytes, or <unk>), then merges by rank: tokenizers' merge_word,
// including its order quirk (a pending unk is emitted after byte-fallback symbols that follow it).
void BpeModel::merge_word(std::string_view word, std::vector<std::int32_t>& ids) const {
  thread_local std::vector<Symbol> symbols;
  thread_local std::string character;
  symbols.clear();
  const auto add = [&](std::int32_t id, std::size_t length) {
    const auto index = static_cast<std::int32_t>(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, static_cast<std::int32_t>(length)});
  };
  std::size_t pending_unk_length = 0;  // bytes covered by an <unk> not yet emitted; 0: none
  const auto flush_unk = [&] {
    if (pending_unk_length > 0) add(*unk_id_, pending_unk_length);
    pending_unk_length = 0;
  };
  for (std::size_t i = 0; i < word.size();) {
    const std::size_t length = char_length(word, i);
    character.assign(word, i, length);
    i += length;
    if (const auto it = vocab_.find(character); it != vocab_.end()) {
      flush_unk();
      add(it->second, length);
      continue;
    }
    const bool has_all_bytes = std::all_of(character.begin(), character.end(), [&](char c) { return byte_fallback_ids_[static_cast<unsigned char>(c)] >= 0; });
    if (has_all_bytes) {
      for (char c : character) add(byte_fallback_ids_[static_cast<unsigned char>(c)], 1);
      continue;
    }
    if (!unk_id_) continue;  // no unk token: the character is dropped, as in tokenizers
    if (!fuse_unk_) flush_unk();
    pending_unk_length += length;
  }
  flush_unk();
  merge_all(symbols);
  ids.clear();
  for (const auto& symbol : symbols) {
    if (symbol.length > 0) ids.push_back(symbol.id);
  }
}

// tokenizers' Word::merge_all: a min-heap of candidate merges; a popped candidate is stale (skipped) when
// its left symbol was absorbed or its pair no longer produces the same token.
void BpeModel::merge_all(std::vector<Symbol>& symbols) const {
  thread_local std::vector<Merge> heap;
  heap.clear();
  const auto push = [&](std::int32_t position, std::int32_t left, std::int32_t right) {
    if (const auto merge = find_merge(left, right)) {
      heap.push_back({merge->first, position, merge->second});
      std::push_heap(heap.begin(), heap.end(), merges_later);
    }
  };
  for (std::size_t i = 0; i + 1 < symbols.size(); ++i) push(static_cast<std::int32_t>(i), symbols[i].id, symbols[i + 1].id);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), merges_later);
    const Merge top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[static_cast<std::size_t>(top.position)];
    if (left.length == 0 || left.next == -1) continue;
    const Symbol right = symbols[static_cast<std::size_t>(left.next)];
    const auto current = find_merge(left.id, right.id);
    if (!current || current->second != top.new_id) continue;
    symbols[static_cast<std::size_t>(left.next)].length = 0;
    left.id = top.new_id;
    left.length += right.length;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = top.position;
    if (left.prev >= 0) push(left.prev, symbols[static_cast<std::size_t>(left.prev)].id, left.id);
    if (left.next >= 0) push(top.position, left.id, symbols[static_cast<std::size_t>(left.next)].id);
  }
}

// ------------------------------------------------------------------------------------------ added tokens

struct AddedToken {
  std::string content;
  std::int32_t id;
  bool special;
};

// Finds added tokens in text, leftmost first and longest at a position (the reference's aho-corasick
// LeftmostLongest). Few tokens, rarely present: a first-byte filter, then candidates longest first.
class AddedTokenMatcher {
 public:
  void add(const std::string& content, std::int32_t id) {
    auto& bucket = by_first_byte_[static_cast<unsigned char>(content[0])];
    bucket.push_back({content, id});
    std::stable_sort(bucket.begin(), bucket.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }

  // Calls on_text(text span) and on_token(id) in order; text spans may be empty only when text is.
  template <typename OnText, typename OnToken>
  void split(std::string_view text, OnText&& on_text, OnToken&& on_token) const {
    std::size_t previous = 0;
    for (std::size_t i = 0; i < text.size() && !by_first_byte_.empty();) {
      const auto bucket = by_first_byte_.find(static_cast<unsigned char>(text[i]));
      const std::pair<std::string, std::int32_t>* found = nullptr;
      if (bucket != by_first_byte_.end()) {
        for (const auto& candidate : bucket->second) {
          if (text.compare(i, candidate.first.size(), candidate.first) == 0) {
            found = &candidate;
            break;
          }
        }
      }
      if (!found) {
        ++i;
        continue;
      }
      if (previous < i) on_text(text.substr(previous, i - previous), previous);
      on_token(found->second);
      i += found->first.size();
      previous = i;
    }
    if (previous < text.size() || text.empty()) on_text(text.substr(previous), previous);
  }

 private:
  std::unordered_map<unsigned char, std::vector<std::pair<std::string, std::int32_t>>> by_first_byte_;
};

// -------------------------------------------------------------------------------------------- decoders

struct DecoderStep {
  enum class Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip } kind;
  std::string text;  // Metaspace: the replacement; Replace: the content; Strip: the character
  std::shared_ptr<const Regex> pattern;
  bool strip_first_replacement = false;  // Metaspace with a prepend scheme other than "never"
  std::size_t strip_start = 0, strip_stop = 0;
};

void parse_decoder(const json& object, const Context& where, std::vector<DecoderStep>& steps) {
  const std::string type = where.string_at(object, "type");
  if (type == "Sequence") {
    const json& list = where.list_at(object, "decoders");
    for (std::size_t i = 0; i < list.size(); ++i) parse_decoder(list[i], where.child("decoders").item(i), steps);
  } else if (type == "ByteLevel") {
    steps.push_back({DecoderStep::Kind::kByteLevel, "", nullptr});
  } else if (type == "Metaspace") {
    DecoderStep step{DecoderStep::Kind::kMetaspace, where.string_at(object, "replacement"), nullptr};
    step.strip_first_replacement = parse_prepend_scheme(object, where) != PrependScheme::kNever;
    steps.push_back(std::move(step));
  } else if (type == "Replace") {
    steps.push_back({DecoderStep::Kind::kReplace, where.string_at(object, "content"), parse_pattern(object, where)});
  } else if (type == "ByteFallback") {
    steps.push_back({DecoderStep::Kind::kByteFallback, "", nullptr});
  } else if (type == "Fuse") {
    steps.push_back({DecoderStep::Kind::kFuse, "", nullptr});
  } else if (type == "Strip") {
    DecoderStep step{DecoderStep::Kind::kStrip, where.string_at(object, "content"), nullptr};
    if (step.text.empty() || char_length(step.text, 0) != step.text.size()) where.child("content").fail("expected one character");
    step.strip_start = static_cast<std::size_t>(where.int_at(object, "start"));
    step.strip_stop = static_cast<std::size_t>(where.int_at(object, "stop"));
    steps.push_back(std::move(step));
  } else {
    where.unsupported("decoder", type, "ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence");
  }
}

// "<0xNN>" -> NN.
std::optional<unsigned char> byte_token_value(const std::string& token) {
  if (token.size() != 6 || !starts_with(token, "<0x") || token[5] != '>') return std::nullopt;
  const auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
  const int high = hex(token[3]), low = hex(token[4]);
  if (high < 0 || low < 0) return std::nullopt;
  return static_cast<unsigned char>(high * 16 + low);
}

std::vector<std::string> decode_step(const DecoderStep& step, std::vector<std::string> tokens) {
  std::vector<std::string> out;
  switch (step.kind) {
    case DecoderStep::Kind::kByteLevel: {
      const auto& alphabet = byte_level_alphabet();
      std::string bytes;
      for (const auto& token : tokens) {
        std::string mapped;
        bool all_mapped = true;
        for (std::size_t i = 0; i < token.size() && all_mapped;) {
          const std::size_t length = char_length(token, i);
          const auto it = alphabet.byte_of_char.find(token.substr(i, length));
          all_mapped = it != alphabet.byte_of_char.end();
          if (all_mapped) mapped += static_cast<char>(it->second);
          i += length;
        }
        bytes += all_mapped ? mapped : token;
      }
      std::string storage;
      out.emplace_back(lossy_utf8(bytes, storage));
      break;
    }
    case DecoderStep::Kind::kMetaspace:
      for (std::size_t t = 0; t < tokens.size(); ++t) {
        std::string decoded;
        for (std::size_t i = 0; i < tokens[t].size();) {
          const std::size_t length = char_length(tokens[t], i);
          if (tokens[t].compare(i, length, step.text) != 0) {
            decoded.append(tokens[t], i, length);
          } else if (t != 0 || !step.strip_first_replacement) {  // the first token loses every replacement
            decoded += ' ';
          }
          i += length;
        }
        out.push_back(std::move(decoded));
      }
      break;
    case DecoderStep::Kind::kReplace:
      for (const auto& token : tokens) out.push_back(replace_all(*step.pattern, token, step.text));
      break;
    case DecoderStep::Kind::kByteFallback: {
      std::string pending;  // consecutive <0xNN> bytes
      const auto flush = [&] {
        if (pending.empty()) return;
        if (is_valid_utf8(pending)) {
          out.push_back(pending);
        } else {
          out.insert(out.end(), pending.size(), std::string(kReplacementChar));  // one U+FFFD per byte
        }
        pending.clear();
      };
      for (auto& token : tokens) {
        if (const auto byte = byte_token_value(token)) {
          pending += static_cast<char>(*byte);
        } else {
          flush();
          out.push_back(std::move(token));
        }
      }
      flush();
      break;
    }
    case DecoderStep::Kind::kFuse: {
      std::string joined;
      for (const auto& token : tokens) joined += token;
      out.push_back(std::move(joined));
      break;
    }
    case DecoderStep::Kind::kStrip:
      for (const auto& token : tokens) {
        std::size_t begin = 0, end = token.size();
        for (std::size_t n = 0; n < step.strip_start && begin < end && token.compare(begin, step.text.size(), step.text) == 0; ++n) begin += step.text.size();
        for (std::size_t n = 0; n < step.strip_stop && end >= begin + step.text.size() && token.compare(end - step.text.size(), step.text.size(), step.text) == 0; ++n) end -= step.text.size();
        out.push_back(token.substr(begin, end - begin));
      }
      break;
  }
  return out;
}

// --------------------------------------------------------------------------------------- post-processor

// What TemplateProcessing adds around a single sequence; ByteLevel post-processing only trims offsets.
struct PostProcessor {
  std::vector<std::int32_t> prefix, suffix;
};

void parse_post_processor(const json& object, const Context& where, PostProcessor& out) {
  const std::string type = where.string_at(object, "type");
  if (type == "Sequence") {
    const json& list = where.list_at(object, "processors");
    for (std::size_t i = 0; i < list.size(); ++i) parse_post_processor(list[i], where.child("processors").item(i), out);
  } else if (type == "TemplateProcessing") {
    if (!out.prefix.empty() || !out.suffix.empty()) where.fail("more than one TemplateProcessing is not supported");
    const json& special_tokens = where.at(object, "special_tokens");
    const json& single = where.list_at(object, "single");
    bool after_sequence = false;
    for (std::size_t i = 0; i < single.size(); ++i) {
      const Context at = where.child("single").item(i);
      if (single[i].contains("Sequence")) {
        after_sequence = true;
        continue;
      }
      const std::string name = at.string_at(at.at(single[i], "SpecialToken"), "id");
      const json& ids = where.child("special_tokens").list_at(where.child("special_tokens").at(special_tokens, name), "ids");
      for (const auto& id : ids) {
        if (!id.is_number_integer()) where.child("special_tokens").child(name).fail("expected integer ids");
        (after_sequence ? out.suffix : out.prefix).push_back(id.get<std::int32_t>());
      }
    }
  } else if (type != "ByteLevel") {
    where.unsupported("post-processor", type, "TemplateProcessing, ByteLevel, Sequence");
  }
}

}  // namespace

// ----------------------------------------------------------------------------------------------- Tokenizer

struct Tokenizer::Impl {
  std::unique_ptr<BpeModel> model;
  std::vector<AddedToken> added_tokens;
  std::unordered_map<std::string, std::int32_t> added_token_ids;
  AddedTokenMatcher raw_matcher;         // added tokens with normalized false: matched on the raw text
  AddedTokenMatcher normalized_matcher;  // normalized true: matched after normalization
  std::vector<NormalizerStep> normalizer;
  PreTokenizer pre_tokenizer;
  PostProcessor post_processor;
  std::optional<std::vector<DecoderStep>> decoder;  // none: tokens joined with spaces
  std::vector<const std::string*> token_of_id;     // model vocabulary and added tokens; null for holes
  std::vector<bool> special_of_id;
  std::optional<std::int64_t> bos, eos;
  bool chat_template = false;

  void encode_text(std::string_view text, bool at_text_start, std::vector<std::int64_t>& ids) const;
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::filesystem::path& tokenizer_json) {
  const json document = read_json_file(tokenizer_json);
  const Context root{tokenizer_json.string(), ""};
  if (!document.is_object()) root.fail("not a JSON object");
  auto impl = std::make_unique<Impl>();

  // Normalizer first: normalized added tokens are matched in their normalized form.
  if (!is_null_or_missing(document, "normalizer")) parse_normalizer(document["normalizer"], root.child("normalizer"), impl->normalizer);
  if (!is_null_or_missing(document, "pre_tokenizer")) parse_pre_tokenizer(document["pre_tokenizer"], root.child("pre_tokenizer"), impl->pre_tokenizer);
  if (!is_null_or_missing(document, "post_processor")) parse_post_processor(document["post_processor"], root.child("post_processor"), impl->post_processor);
  if (!is_null_or_missing(document, "decoder")) {
    impl->decoder.emplace();
    parse_decoder(document["decoder"], root.child("decoder"), *impl->decoder);
  }
  impl->model = std::make_unique<BpeModel>(root.at(document, "model"), root.child("model"));

  std::size_t size = 0;
  for (const auto& entry : impl->model->vocab()) size = std::max(size, static_cast<std::size_t>(entry.second) + 1);
  if (!is_null_or_missing(document, "added_tokens")) {
    const json& list = root.list_at(document, "added_tokens");
    for (std::size_t i = 0; i < list.size(); ++i) {
      const Context at = root.child("added_tokens").item(i);
      AddedToken token{at.string_at(list[i], "content"), static_cast<std::int32_t>(at.int_at(list[i], "id")), at.bool_or(list[i], "special", false)};
      if (token.content.empty() || token.id < 0) at.fail("expected a non-empty content and a non-negative id");
      for (const char* option : {"single_word", "lstrip", "rstrip"}) {
        if (at.bool_or(list[i], option, false)) at.child(option).fail("added tokens with " + std::string(option) + " are not supported");
      }
      if (at.bool_or(list[i], "normalized", !token.special)) {
        impl->normalized_matcher.add(normalize(impl->normalizer, token.content), token.id);
      } else {
        impl->raw_matcher.add(token.content, token.id);
      }
      impl->added_token_ids[token.content] = token.id;
      size = std::max(size, static_cast<std::size_t>(token.id) + 1);
      impl->added_tokens.push_back(std::move(token));
    }
  }
  impl->token_of_id.assign(size, nullptr);
  impl->special_of_id.assign(size, false);
  for (const auto& [token, id] : impl->model->vocab()) impl->token_of_id[static_cast<std::size_t>(id)] = &token;
  for (const auto& token : impl->added_tokens) {
    impl->token_of_id[static_cast<std::size_t>(token.id)] = &token.content;
    impl->special_of_id[static_cast<std::size_t>(token.id)] = token.special;
  }
  for (const auto& ids : {impl->post_processor.prefix, impl->post_processor.suffix}) {
    for (auto id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= size) root.child("post_processor").fail("special token id " + std::to_string(id) + " is outside the vocabulary");
    }
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_dir(const std::filesystem::path& dir) {
  Tokenizer tokenizer = from_file(dir / "tokenizer.json");
  const auto config_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    const json config = read_json_file(config_path);
    const Context root{config_path.string(), ""};
    if (!config.is_object()) root.fail("not a JSON object");
    // bos_token / eos_token: a string, or an AddedToken object with "content" (older files).
    const auto special_id = [&](const std::string& key) -> std::optional<std::int64_t> {
      if (is_null_or_missing(config, key)) return std::nullopt;
      const json& value = config[key];
      const std::string name = value.is_object() ? root.child(key).string_at(value, "content") : root.string_at(config, key);
      const auto id = tokenizer.token_to_id(name);
      if (!id) root.child(key).fail("'" + name + "' is not a token of tokenizer.json");
      return id;
    };
    tokenizer.impl_->bos = special_id("bos_token");
    tokenizer.impl_->eos = special_id("eos_token");
    tokenizer.impl_->chat_template = !is_null_or_missing(config, "chat_template");
  }
  tokenizer.impl_->chat_template = tokenizer.impl_->chat_template || std::filesystem::exists(dir / "chat_template.jinja");
  return tokenizer;
}

void Tokenizer::Impl::encode_text(std::string_view text, bool at_text_start, std::vector<std::int64_t>& ids) const {
  const std::string normalized = normalize(normalizer, std::string(text));
  normalized_matcher.split(
      normalized,
      [&](std::string_view span, std::size_t offset) {
        if (span.empty()) return;
        thread_local std::vector<Piece> pieces, scratch;
        pieces.assign(1, Piece{std::string(span), at_text_start && offset == 0});
        for (const auto& step : pre_tokenizer.steps) apply_step(step, pieces, scratch);
        if (!pre_tokenizer.byte_level) {
          for (const auto& piece : pieces) model->tokenize(piece.text, ids);
          return;
        }
        const auto& alphabet = byte_level_alphabet();
        std::string mapped;
        for (const auto& piece : pieces) {
          mapped.clear();
          for (char c : piece.text) mapped += alphabet.char_of_byte[static_cast<unsigned char>(c)];
          model->tokenize(mapped, ids);
        }
      },
      [&](std::int32_t id) { ids.push_back(id); });
}

std::vector<std::int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string storage;
  const std::string_view valid = lossy_utf8(text, storage);
  std::vector<std::int64_t> ids;
  if (add_special_tokens) ids.assign(impl_->post_processor.prefix.begin(), impl_->post_processor.prefix.end());
  impl_->raw_matcher.split(
      valid, [&](std::string_view span, std::size_t offset) { impl_->encode_text(span, offset == 0, ids); },
      [&](std::int32_t id) { ids.push_back(id); });
  if (add_special_tokens) ids.insert(ids.end(), impl_->post_processor.suffix.begin(), impl_->post_processor.suffix.end());
  return ids;
}

std::string Tokenizer::decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::int64_t id = ids[i];
    if (id < 0 || id >= vocab_size() || !impl_->token_of_id[static_cast<std::size_t>(id)]) {
      throw InputError("decode", "ids[" + std::to_string(i) + "]", "id " + std::to_string(id) + " is not in the vocabulary (size " + std::to_string(vocab_size()) + ")");
    }
    if (skip_special_tokens && impl_->special_of_id[static_cast<std::size_t>(id)]) continue;
    tokens.push_back(*impl_->token_of_id[static_cast<std::size_t>(id)]);
  }
  std::string text;
  if (!impl_->decoder) {
    for (std::size_t i = 0; i < tokens.size(); ++i) text += (i ? " " : "") + tokens[i];
    return text;
  }
  for (const auto& step : *impl_->decoder) tokens = decode_step(step, std::move(tokens));
  for (const auto& token : tokens) text += token;
  return text;
}

std::optional<std::int64_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = impl_->added_token_ids.find(std::string(token)); it != impl_->added_token_ids.end()) return it->second;
  return impl_->model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(std::int64_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->token_of_id[static_cast<std::size_t>(id)]) return std::nullopt;
  return *impl_->token_of_id[static_cast<std::size_t>(id)];
}

std::int64_t Tokenizer::vocab_size() const { return static_cast<std::int64_t>(impl_->token_of_id.size()); }
std::optional<std::int64_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<std::int64_t> Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::has_chat_template() const { return impl_->chat_template; }

}  // namespace linearize
