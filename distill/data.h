// Training data: documents from files, packed into fixed-length sequences, shuffled with our own seeded
// PRNG, split into training and validation, served as LibTorch batches from a position a checkpoint can
// save and restore exactly.
//
// Files (one document per line; blank lines are skipped; errors name the file, the line and the field):
//   *.jsonl  one JSON object per line, one of
//              {"text": "..."}                        tokenized with add_special_tokens (BOS if the
//                                                      tokenizer's post-processor adds it), loss on all tokens;
//              {"prompt": "...", "response": "..."}   prompt tokenized with special tokens, response without;
//                                                      loss on the response tokens only;
//              {"ids": [1, 2, ...]}                   pre-tokenized, used as they are, loss on all tokens.
//   other    plain UTF-8 text: each non-empty line is one document, as {"text": line}.
// Packing: the training documents, in this epoch's order, each followed by EOS (which carries loss: the
// model learns where documents end), are concatenated and cut into sequences of seq_len tokens; the tail
// shorter than seq_len is dropped for that epoch. Labels follow the Hugging Face convention: labels equal
// input_ids (the loss shifts them), with -100 where there is no loss.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/tokenizer.h"

namespace linearize {

struct Document {
  std::vector<std::int32_t> ids;
  std::vector<std::uint8_t> loss;  // 1 where the token is a training target
};

// Reads one file (format as above). `tokenizer` may be null when every line holds "ids".
std::vector<Document> read_documents(const std::filesystem::path& file, const Tokenizer* tokenizer);

struct DataOptions {
  std::int64_t seq_len = 0;
  std::int64_t batch_size = 0;
  std::int64_t max_seq_len = 0;        // the model's limit (max_position_embeddings)
  std::int64_t vocab_size = 0;         // ids must lie in [0, vocab_size)
  std::int64_t eos_id = -1;            // written after every document
  double validation_fraction = 0.0;    // of the documents, chosen by the seed, in [0, 1)
  std::int64_t validation_sequences = 0;  // validation_batches() serves at most this many sequences (0: all)
  std::uint64_t seed = 0;
};

// Where the training stream stands: the next batch is sequences [sequence, sequence + batch_size) of epoch
// `epoch`'s packing. The seed is kept to refuse restoring into a differently seeded dataset.
struct DataPosition {
  std::int64_t epoch = 0;
  std::int64_t sequence = 0;
  std::uint64_t seed = 0;

  nlohmann::json to_json() const;
  // `source` names where the JSON came from, for errors.
  static DataPosition from_json(const nlohmann::json& value, const std::string& source);
  bool operator==(const DataPosition& other) const { return epoch == other.epoch && sequence == other.sequence && seed == other.seed; }
};

struct Batch {
  at::Tensor input_ids;  // int64 [batch_size, seq_len]
  at::Tensor labels;     // int64 [batch_size, seq_len], -100 where there is no loss
};

class TokenDataset {
 public:
  // `source` names the data in errors (e.g. the files, or the config key). Throws InputError for an empty
  // dataset, a seq_len beyond the model's limit, ids outside the vocabulary, or too little data for a batch.
  TokenDataset(std::vector<Document> documents, const DataOptions& options, const std::string& source);

  // The next training batch; wraps into the next epoch (a new order) when this one runs out.
  Batch next_batch();
  // The validation sequences in a fixed order (the first validation_sequences of them when that is set), in
  // batches of at most batch_size; empty without a split.
  std::vector<Batch> validation_batches() const;

  const DataPosition& position() const { return position_; }
  void restore(const DataPosition& position);

  std::int64_t sequences_per_epoch() const { return sequences_per_epoch_; }
  std::size_t training_documents() const { return training_.size(); }
  std::size_t validation_documents() const { return validation_.size(); }

 private:
  struct Stream {
    std::vector<std::int32_t> ids;
    std::vector<std::uint8_t> loss;
  };
  Stream pack(const std::vector<std::size_t>& order, const std::vector<Document>& documents) const;
  void start_epoch(std::int64_t epoch);
  Batch make_batch(const Stream& stream, std::int64_t first_sequence, std::int64_t count) const;

  DataOptions options_;
  std::string source_;
  std::vector<Document> training_;
  std::vector<Document> validation_;
  std::int64_t sequences_per_epoch_ = 0;  // the same every epoch: order changes, token count does not
  Stream epoch_stream_;
  DataPosition position_;
};

}  // namespace linearize
