// Datasets: reading text / JSONL / pre-tokenized files, packing with EOS, loss masks, the seeded shuffle,
// the validation split, exact resume from a saved position, and errors naming file, line and field.
#include <gtest/gtest.h>

#include <set>

#include "distill/data.h"
#include "formats/error.h"
#include "test_util.h"

namespace linearize {
namespace {

using nlohmann::json;

constexpr std::int32_t kEos = 1;  // the fixture tokenizer's <|eos|>

class DataTest : public testing::Test {
 protected:
  DataTest() : tokenizer_(Tokenizer::from_dir(test::fixtures_dir() / "tiny-llama")) {}

  std::filesystem::path write(const std::string& name, const std::string& contents) {
    test::write_file(dir_ / name, contents);
    return dir_ / name;
  }
  std::string error(const std::string& name, const std::string& contents) {
    try {
      read_documents(write(name, contents), &tokenizer_);
    } catch (const InputError& e) {
      return e.what();
    }
    return "(no error)";
  }
  // Documents of pre-tokenized ids 1000*d + k (k < length), with a vocabulary large enough for them.
  static std::vector<Document> numbered_documents(int count, int length) {
    std::vector<Document> documents(static_cast<std::size_t>(count));
    for (int d = 0; d < count; ++d) {
      for (int k = 0; k < length; ++k) documents[static_cast<std::size_t>(d)].ids.push_back(1000 * d + k + 2);
      documents[static_cast<std::size_t>(d)].loss.assign(static_cast<std::size_t>(length), 1);
    }
    return documents;
  }
  static DataOptions options(std::uint64_t seed = 7) {
    DataOptions o;
    o.seq_len = 8;
    o.batch_size = 2;
    o.max_seq_len = 256;
    o.vocab_size = 1 << 20;
    o.eos_id = kEos;
    o.seed = seed;
    return o;
  }
  static std::vector<std::int64_t> flat(const at::Tensor& t) { return {t.data_ptr<std::int64_t>(), t.data_ptr<std::int64_t>() + t.numel()}; }

  test::TempDir dir_;
  Tokenizer tokenizer_;
};

TEST_F(DataTest, ReadsTextJsonlAndIds) {
  const auto text = read_documents(write("a.txt", "first line\n\n  \nsecond line\r\n"), &tokenizer_);
  ASSERT_EQ(text.size(), 2u);
  EXPECT_EQ(std::vector<std::int64_t>(text[1].ids.begin(), text[1].ids.end()), tokenizer_.encode("second line", true));
  EXPECT_EQ(text[1].loss, std::vector<std::uint8_t>(text[1].ids.size(), 1));

  const auto jsonl = read_documents(write("b.jsonl", R"({"text": "hello"})" "\n" R"({"prompt": "Q:", "response": " A."})" "\n" R"({"ids": [5, 6, 7]})" "\n"), &tokenizer_);
  ASSERT_EQ(jsonl.size(), 3u);
  const auto prompt = tokenizer_.encode("Q:", true), response = tokenizer_.encode(" A.", false);
  ASSERT_EQ(jsonl[1].ids.size(), prompt.size() + response.size());
  EXPECT_EQ(jsonl[1].loss, [&] {
    std::vector<std::uint8_t> mask(prompt.size(), 0);
    mask.resize(prompt.size() + response.size(), 1);
    return mask;
  }());
  EXPECT_EQ(jsonl[2].ids, (std::vector<std::int32_t>{5, 6, 7}));

  // Pre-tokenized files need no tokenizer.
  EXPECT_EQ(read_documents(write("c.jsonl", R"({"ids": [3]})"), nullptr).size(), 1u);
}

TEST_F(DataTest, BadFilesNameFileLineAndField) {
  const std::string a = (dir_ / "a.jsonl").string() + ": ";
  EXPECT_EQ(error("a.jsonl", "{\"text\": \"ok\"}\n{\"text\": 3}\n"), a + "line 2: text: expected a string, got 3");
  EXPECT_EQ(error("a.jsonl", "{\"text\": \"ok\"}\n\n{\"txt\": \"x\"}\n"),
            a + "line 3: text: missing (each line needs \"text\", \"prompt\" and \"response\", or \"ids\")");
  EXPECT_EQ(error("a.jsonl", "{\"prompt\": \"x\"}\n"), a + "line 1: response: missing (a prompt needs a response and the other way round)");
  EXPECT_EQ(error("a.jsonl", "{\"ids\": [1, -2]}\n"), a + "line 1: ids: expected non-negative integer ids, got -2");
  EXPECT_EQ(error("a.jsonl", "{\"text\": \"ok\"}\n{broken\n").rfind(a + "line 2: not valid JSON", 0), 0u);
  EXPECT_EQ(error("a.jsonl", "\n \n"), a + "file: no documents (the file is empty or blank)");
  try {
    read_documents(write("t.txt", "text\n"), nullptr);
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), (dir_ / "t.txt").string() + ": line 1: text needs a tokenizer (none was given)");
  }
  EXPECT_THROW(read_documents(dir_ / "missing.txt", &tokenizer_), InputError);
}

TEST_F(DataTest, BadOptionsAndTooLittleData) {
  const auto error_of = [](std::vector<Document> documents, const DataOptions& o) -> std::string {
    try {
      TokenDataset dataset(std::move(documents), o, "data");
    } catch (const InputError& e) {
      return e.what();
    }
    return "(no error)";
  };
  auto too_long = options();
  too_long.seq_len = 512;
  EXPECT_EQ(error_of(numbered_documents(10, 100), too_long), "data: seq_len: 512 is larger than the model allows (max_position_embeddings 256)");
  EXPECT_EQ(error_of({}, options()), "data: documents: the dataset is empty");
  EXPECT_EQ(error_of(numbered_documents(1, 10), options()), "data: documents: the training split packs into 1 sequences of 8 tokens, fewer than one batch of 2");
  auto small_vocab = options();
  small_vocab.vocab_size = 100;
  EXPECT_EQ(error_of(numbered_documents(3, 10), small_vocab), "data: document 1: token id 1002 is outside the vocabulary (size 100)");
}

TEST_F(DataTest, PacksDocumentsWithEosAndMasksLabels) {
  std::vector<Document> documents = numbered_documents(3, 5);
  documents[1].loss = {0, 0, 1, 1, 1};  // a prompt of two tokens
  auto o = options();
  o.seq_len = 6;
  o.batch_size = 1;
  TokenDataset dataset(documents, o, "data");
  EXPECT_EQ(dataset.sequences_per_epoch(), 3);  // 3 x (5 + EOS) = 18 tokens
  std::vector<std::int64_t> ids, labels;
  for (int i = 0; i < 3; ++i) {
    const Batch batch = dataset.next_batch();
    EXPECT_EQ(batch.input_ids.sizes(), (at::IntArrayRef{1, 6}));
    EXPECT_EQ(batch.input_ids.scalar_type(), at::kLong);
    for (auto v : flat(batch.input_ids)) ids.push_back(v);
    for (auto v : flat(batch.labels)) labels.push_back(v);
  }
  // Whatever the order, every document appears whole, followed by EOS; only prompt tokens lose their labels.
  std::set<std::int64_t> starts;
  for (std::size_t k = 0; k < ids.size(); k += 6) {
    EXPECT_EQ(ids[k + 5], kEos);
    const auto d = (ids[k] - 2) / 1000;
    starts.insert(d);
    for (std::size_t j = 0; j < 5; ++j) {
      EXPECT_EQ(ids[k + j], 1000 * d + static_cast<std::int64_t>(j) + 2);
      EXPECT_EQ(labels[k + j], d == 1 && j < 2 ? -100 : ids[k + j]);
    }
    EXPECT_EQ(labels[k + 5], kEos);
  }
  EXPECT_EQ(starts, (std::set<std::int64_t>{0, 1, 2}));
}

TEST_F(DataTest, ShuffleIsSeededAndEpochsDiffer) {
  const auto stream = [&](std::uint64_t seed, int batches) {
    TokenDataset dataset(numbered_documents(40, 3), options(seed), "data");
    std::vector<std::int64_t> ids;
    for (int i = 0; i < batches; ++i) {
      for (auto v : flat(dataset.next_batch().input_ids)) ids.push_back(v);
    }
    return ids;
  };
  // 40 documents x 4 tokens = 160 = 20 sequences = 10 batches per epoch.
  const auto a = stream(7, 20), b = stream(7, 20), c = stream(8, 20);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  const std::vector<std::int64_t> epoch0(a.begin(), a.begin() + 160), epoch1(a.begin() + 160, a.end());
  EXPECT_NE(epoch0, epoch1);
  EXPECT_EQ(std::multiset<std::int64_t>(epoch0.begin(), epoch0.end()), std::multiset<std::int64_t>(epoch1.begin(), epoch1.end()));
  // Pinned: the order depends on our PRNG only, not on the standard library.
  std::vector<std::int64_t> first_documents;
  for (std::size_t k = 0; k < 16; k += 4) first_documents.push_back((a[k] - 2) / 1000);
  EXPECT_EQ(first_documents, (std::vector<std::int64_t>{4, 12, 37, 7}));
}

TEST_F(DataTest, ResumeFromSavedPositionGivesTheSameBatches) {
  TokenDataset uninterrupted(numbered_documents(40, 3), options(), "data");
  TokenDataset first_run(numbered_documents(40, 3), options(), "data");
  for (int i = 0; i < 13; ++i) {  // into the second epoch
    uninterrupted.next_batch();
    first_run.next_batch();
  }
  const std::string saved = first_run.position().to_json().dump();
  TokenDataset resumed(numbered_documents(40, 3), options(), "data");
  resumed.restore(DataPosition::from_json(json::parse(saved), "checkpoint/state.json"));
  EXPECT_EQ(resumed.position(), uninterrupted.position());
  EXPECT_EQ(resumed.position().epoch, 1);
  for (int i = 0; i < 15; ++i) {  // and across the next epoch boundary
    EXPECT_TRUE(at::equal(resumed.next_batch().input_ids, uninterrupted.next_batch().input_ids)) << "batch " << i;
  }

  TokenDataset other_seed(numbered_documents(40, 3), options(99), "data");
  EXPECT_THROW(other_seed.restore(first_run.position()), InputError);
  EXPECT_THROW(DataPosition::from_json(json{{"epoch", -1}, {"sequence", 0}, {"seed", 7}}, "state.json"), InputError);
}

TEST_F(DataTest, ValidationSplitIsDisjointAndFixed) {
  auto o = options();
  o.validation_fraction = 0.25;
  TokenDataset dataset(numbered_documents(40, 3), o, "data");
  EXPECT_EQ(dataset.validation_documents(), 10u);
  EXPECT_EQ(dataset.training_documents(), 30u);
  const auto documents_in = [](const std::vector<std::int64_t>& ids) {
    std::set<std::int64_t> found;
    for (auto id : ids) {
      if (id != kEos) found.insert((id - 2) / 1000);
    }
    return found;
  };
  std::vector<std::int64_t> validation_ids;
  for (const auto& batch : dataset.validation_batches()) {
    for (auto v : flat(batch.input_ids)) validation_ids.push_back(v);
  }
  EXPECT_EQ(validation_ids.size(), 40u);  // 10 x 4 tokens = 5 sequences of 8
  std::vector<std::int64_t> training_ids;
  for (int i = 0; i < 7; ++i) {
    for (auto v : flat(dataset.next_batch().input_ids)) training_ids.push_back(v);
  }
  const auto validation_documents = documents_in(validation_ids), training_documents = documents_in(training_ids);
  EXPECT_EQ(validation_documents.size(), 10u);
  for (auto d : validation_documents) EXPECT_EQ(training_documents.count(d), 0u) << d;
  TokenDataset again(numbered_documents(40, 3), o, "data");
  EXPECT_TRUE(at::equal(again.validation_batches()[0].input_ids, dataset.validation_batches()[0].input_ids));
  // A cap keeps the first sequences of the same packing: validation's cost stays fixed on a large split.
  o.validation_sequences = 3;
  TokenDataset capped(numbered_documents(40, 3), o, "data");
  std::vector<std::int64_t> capped_ids;
  for (const auto& batch : capped.validation_batches()) {
    for (auto v : flat(batch.input_ids)) capped_ids.push_back(v);
  }
  EXPECT_EQ(capped_ids, std::vector<std::int64_t>(validation_ids.begin(), validation_ids.begin() + 3 * 8));
}

}  // namespace
}  // namespace linearize
