#include "distill/data.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>

#include "formats/error.h"

namespace linearize {
namespace {

using nlohmann::json;

constexpr std::int64_t kIgnoreLabel = -100;  // PyTorch cross-entropy's default ignore_index

// splitmix64 (Steele, Lea, Flood 2014): ours, so a seed gives the same order with any standard library.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound): rejects the top values that would bias the modulo.
  std::uint64_t below(std::uint64_t bound) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    std::uint64_t value = next();
    while (value >= limit) value = next();
    return value % bound;
  }

 private:
  std::uint64_t state_;
};

// Fisher-Yates over 0..count-1.
std::vector<std::size_t> shuffled_indices(std::size_t count, std::uint64_t seed) {
  std::vector<std::size_t> order(count);
  std::iota(order.begin(), order.end(), std::size_t{0});
  SplitMix64 rng(seed);
  for (std::size_t i = count; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  return order;
}

// Independent streams per purpose and epoch from one user seed.
constexpr std::uint64_t kSplitStream = 0x5EED0001ULL;
std::uint64_t epoch_seed(std::uint64_t seed, std::int64_t epoch) { return SplitMix64(seed ^ static_cast<std::uint64_t>(epoch + 1)).next(); }

void append_tokens(Document& document, const std::vector<std::int64_t>& ids, bool loss) {
  for (auto id : ids) {
    document.ids.push_back(static_cast<std::int32_t>(id));
    document.loss.push_back(loss ? 1 : 0);
  }
}

const Tokenizer& need_tokenizer(const Tokenizer* tokenizer, const std::string& file, const std::string& field) {
  if (!tokenizer) throw InputError(file, field, "text needs a tokenizer (none was given)");
  return *tokenizer;
}

Document document_from_jsonl(const json& object, const Tokenizer* tokenizer, const std::string& file, const std::string& line) {
  if (!object.is_object()) throw InputError(file, line, "expected a JSON object");
  const auto string_field = [&](const char* key) {
    const json& value = object.at(key);
    if (!value.is_string()) throw InputError(file, line + ": " + key, "expected a string, got " + value.dump().substr(0, 80));
    return value.get<std::string>();
  };
  Document document;
  if (object.contains("ids")) {
    const json& ids = object["ids"];
    if (!ids.is_array()) throw InputError(file, line + ": ids", "expected a list of token ids");
    for (const auto& id : ids) {
      if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() > INT32_MAX) throw InputError(file, line + ": ids", "expected non-negative integer ids, got " + id.dump());
      document.ids.push_back(id.get<std::int32_t>());
    }
    document.loss.assign(document.ids.size(), 1);
  } else if (object.contains("text")) {
    append_tokens(document, need_tokenizer(tokenizer, file, line + ": text").encode(string_field("text"), true), true);
  } else if (object.contains("prompt") || object.contains("response")) {
    for (const char* key : {"prompt", "response"}) {
      if (!object.contains(key)) throw InputError(file, line + ": " + key, "missing (a prompt needs a response and the other way round)");
    }
    const Tokenizer& text_tokenizer = need_tokenizer(tokenizer, file, line + ": prompt");
    append_tokens(document, text_tokenizer.encode(string_field("prompt"), true), false);
    append_tokens(document, text_tokenizer.encode(string_field("response"), false), true);
  } else {
    throw InputError(file, line + ": text", "missing (each line needs \"text\", \"prompt\" and \"response\", or \"ids\")");
  }
  return document;
}

}  // namespace

std::vector<Document> read_documents(const std::filesystem::path& path, const Tokenizer* tokenizer) {
  const std::string file = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(file, "file", "cannot open");
  const bool jsonl = path.extension() == ".jsonl";
  std::vector<Document> documents;
  std::string text;
  for (std::int64_t number = 1; std::getline(in, text); ++number) {
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string line = "line " + std::to_string(number);
    if (!jsonl) {
      Document document;
      append_tokens(document, need_tokenizer(tokenizer, file, line).encode(text, true), true);
      documents.push_back(std::move(document));
      continue;
    }
    json object;
    try {
      object = json::parse(text);
    } catch (const json::exception& e) {
      throw InputError(file, line, std::string("not valid JSON (") + e.what() + ")");
    }
    documents.push_back(document_from_jsonl(object, tokenizer, file, line));
  }
  if (documents.empty()) throw InputError(file, "file", "no documents (the file is empty or blank)");
  return documents;
}

json DataPosition::to_json() const { return {{"epoch", epoch}, {"sequence", sequence}, {"seed", seed}}; }

DataPosition DataPosition::from_json(const json& value, const std::string& source) {
  const auto integer = [&](const char* key) -> const json& {
    const bool present = value.is_object() && value.contains(key) && value[key].is_number_integer();
    if (!present || (!value[key].is_number_unsigned() && value[key].get<std::int64_t>() < 0)) {
      throw InputError(source, std::string("data_position.") + key, "expected a non-negative integer");
    }
    return value[key];
  };
  DataPosition position;
  position.epoch = integer("epoch").get<std::int64_t>();
  position.sequence = integer("sequence").get<std::int64_t>();
  position.seed = integer("seed").get<std::uint64_t>();
  return position;
}

TokenDataset::TokenDataset(std::vector<Document> documents, const DataOptions& options, const std::string& source)
    : options_(options), source_(source) {
  const auto fail = [&](const std::string& field, const std::string& message) { throw InputError(source_, field, message); };
  if (options.seq_len <= 0) fail("seq_len", "must be positive, got " + std::to_string(options.seq_len));
  if (options.seq_len > options.max_seq_len) {
    fail("seq_len", std::to_string(options.seq_len) + " is larger than the model allows (max_position_embeddings " + std::to_string(options.max_seq_len) + ")");
  }
  if (options.batch_size <= 0) fail("batch_size", "must be positive, got " + std::to_string(options.batch_size));
  if (options.eos_id < 0 || options.eos_id >= options.vocab_size) fail("eos_id", "the tokenizer names no EOS token inside the vocabulary");
  if (!(options.validation_fraction >= 0.0 && options.validation_fraction < 1.0)) fail("validation_fraction", "must be in [0, 1)");
  if (documents.empty()) fail("documents", "the dataset is empty");
  for (std::size_t d = 0; d < documents.size(); ++d) {
    for (auto id : documents[d].ids) {
      if (id < 0 || id >= options.vocab_size) fail("document " + std::to_string(d), "token id " + std::to_string(id) + " is outside the vocabulary (size " + std::to_string(options.vocab_size) + ")");
    }
  }

  // The split is a function of the seed alone, so it never changes across epochs or resumes.
  std::size_t validation_count = 0;
  if (options.validation_fraction > 0) {
    validation_count = std::max<std::size_t>(1, static_cast<std::size_t>(std::llround(options.validation_fraction * static_cast<double>(documents.size()))));
  }
  if (validation_count >= documents.size()) fail("validation_fraction", "leaves no training documents (" + std::to_string(documents.size()) + " in all)");
  const auto order = shuffled_indices(documents.size(), options.seed ^ kSplitStream);
  std::vector<std::size_t> validation_indices(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(validation_count));
  std::sort(validation_indices.begin(), validation_indices.end());  // validation keeps the files' order
  std::vector<bool> is_validation(documents.size(), false);
  for (auto i : validation_indices) is_validation[i] = true;
  for (auto i : validation_indices) validation_.push_back(std::move(documents[i]));
  for (std::size_t i = 0; i < documents.size(); ++i) {
    if (!is_validation[i]) training_.push_back(std::move(documents[i]));
  }

  const auto packed_tokens = [](const std::vector<Document>& split) {
    std::size_t tokens = 0;
    for (const auto& document : split) tokens += document.ids.size() + 1;  // + EOS
    return tokens;
  };
  if (validation_count > 0 && packed_tokens(validation_) < static_cast<std::size_t>(options.seq_len)) {
    fail("validation_fraction", "the validation split holds " + std::to_string(packed_tokens(validation_)) + " tokens, fewer than one sequence of " + std::to_string(options.seq_len));
  }
  const std::size_t tokens = packed_tokens(training_);
  sequences_per_epoch_ = static_cast<std::int64_t>(tokens) / options.seq_len;
  if (sequences_per_epoch_ < options.batch_size) {
    fail("documents", "the training split packs into " + std::to_string(sequences_per_epoch_) + " sequences of " + std::to_string(options.seq_len) +
                          " tokens, fewer than one batch of " + std::to_string(options.batch_size));
  }
  position_.seed = options.seed;
  start_epoch(0);
}

TokenDataset::Stream TokenDataset::pack(const std::vector<std::size_t>& order, const std::vector<Document>& documents) const {
  Stream stream;
  for (auto i : order) {
    stream.ids.insert(stream.ids.end(), documents[i].ids.begin(), documents[i].ids.end());
    stream.loss.insert(stream.loss.end(), documents[i].loss.begin(), documents[i].loss.end());
    stream.ids.push_back(static_cast<std::int32_t>(options_.eos_id));
    stream.loss.push_back(1);
  }
  return stream;
}

void TokenDataset::start_epoch(std::int64_t epoch) {
  epoch_stream_ = pack(shuffled_indices(training_.size(), epoch_seed(options_.seed, epoch)), training_);
  position_.epoch = epoch;
  position_.sequence = 0;
}

Batch TokenDataset::make_batch(const Stream& stream, std::int64_t first_sequence, std::int64_t count) const {
  const std::int64_t length = options_.seq_len;
  Batch batch{at::empty({count, length}, at::kLong), at::empty({count, length}, at::kLong)};
  auto* input_ids = batch.input_ids.data_ptr<std::int64_t>();
  auto* labels = batch.labels.data_ptr<std::int64_t>();
  const auto offset = static_cast<std::size_t>(first_sequence * length);
  for (std::size_t k = 0; k < static_cast<std::size_t>(count * length); ++k) {
    input_ids[k] = stream.ids[offset + k];
    labels[k] = stream.loss[offset + k] ? input_ids[k] : kIgnoreLabel;
  }
  return batch;
}

Batch TokenDataset::next_batch() {
  if (position_.sequence + options_.batch_size > sequences_per_epoch_) start_epoch(position_.epoch + 1);
  Batch batch = make_batch(epoch_stream_, position_.sequence, options_.batch_size);
  position_.sequence += options_.batch_size;
  return batch;
}

std::vector<Batch> TokenDataset::validation_batches() const {
  std::vector<std::size_t> order(validation_.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  const Stream stream = pack(order, validation_);
  auto sequences = static_cast<std::int64_t>(stream.ids.size()) / options_.seq_len;
  if (options_.validation_sequences > 0) sequences = std::min(sequences, options_.validation_sequences);
  std::vector<Batch> batches;
  for (std::int64_t first = 0; first < sequences; first += options_.batch_size) {
    batches.push_back(make_batch(stream, first, std::min(options_.batch_size, sequences - first)));
  }
  return batches;
}

void TokenDataset::restore(const DataPosition& position) {
  if (position.seed != options_.seed) {
    throw InputError(source_, "data_position.seed", "the checkpoint was taken with seed " + std::to_string(position.seed) + ", this run uses " + std::to_string(options_.seed));
  }
  if (position.sequence > sequences_per_epoch_) {
    throw InputError(source_, "data_position.sequence", std::to_string(position.sequence) + " is beyond the " + std::to_string(sequences_per_epoch_) + " sequences of an epoch (different data?)");
  }
  start_epoch(position.epoch);
  position_.sequence = position.sequence;
}

}  // namespace linearize
