// Encoding throughput of formats/tokenizer on the bundled corpus, one thread: every paragraph of
// tests/fixtures/corpus/corpus.txt encoded without special tokens, per tokenizer family. The per-word cache
// is warm after the first pass, as the reference's is (scripts/bench.sh times `tokenizers` the same way).
//
//   tokenizer_bench [--benchmark_out=FILE --benchmark_out_format=json ...]
#include <benchmark/benchmark.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "formats/tokenizer.h"

namespace {

const std::string kFixtures = LINEARIZE_FIXTURES;

std::vector<std::string> corpus_paragraphs() {
  std::ifstream in(kFixtures + "/corpus/corpus.txt", std::ios::binary);
  std::vector<std::string> paragraphs;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) paragraphs.push_back(line);
  }
  return paragraphs;
}

void BM_EncodeCorpus(benchmark::State& state, const std::string& tokenizer_json) {
  const auto tokenizer = linearize::Tokenizer::from_file(kFixtures + "/" + tokenizer_json);
  const auto paragraphs = corpus_paragraphs();
  std::size_t bytes = 0, tokens = 0;
  for (const auto& paragraph : paragraphs) bytes += paragraph.size();
  for (auto _ : state) {
    tokens = 0;
    for (const auto& paragraph : paragraphs) {
      const auto ids = tokenizer.encode(paragraph, false);
      tokens += ids.size();
      benchmark::DoNotOptimize(ids.data());
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
  state.counters["corpus_bytes"] = static_cast<double>(bytes);
  state.counters["tokens"] = static_cast<double>(tokens);
}

// Names match the tokenizer names in scripts/bench.sh.
BENCHMARK_CAPTURE(BM_EncodeCorpus, fixture, std::string("tiny-llama/tokenizer.json"))->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK_CAPTURE(BM_EncodeCorpus, byte_level_split, std::string("tokenizers/byte-level-split/tokenizer.json"))->Unit(benchmark::kMillisecond)->MinTime(1.0);
BENCHMARK_CAPTURE(BM_EncodeCorpus, sentencepiece_bpe, std::string("tokenizers/sentencepiece-bpe/tokenizer.json"))->Unit(benchmark::kMillisecond)->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
