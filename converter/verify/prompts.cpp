#include "converter/verify/prompts.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <string>

#include "converter/linearized.h"
#include "converter/verify_text.h"
#include "formats/error.h"
#include "formats/tokenizer.h"
#include "kernels/linear_attention.h"

namespace linearize {
namespace checks {

SequenceEdges sequence_edges(const ModelConfig& config) {
  SequenceEdges edges{kernels::LinearAttentionOptions{}.chunk_size, {}};
  if (!config.linearize.is_null()) {
    const auto of = recipe_of(config);
    for (const auto& param : of.recipe->params)
      if (param.role == RecipeParamRole::window) edges.windows.insert(of.params.at(param.name).get<std::int64_t>());
  }
  if (config.sliding_window) edges.windows.insert(*config.sliding_window);
  return edges;
}

Prompts l1_sample(const Prompts& prompts) {
  Prompts sample;
  std::int64_t taken = 0;
  for (const auto& p : prompts) {
    const auto length = std::min<std::int64_t>({static_cast<std::int64_t>(p.size()), kSampleMaxTokens, kSampleTokenBudget - taken});
    if (length <= 0) break;
    sample.emplace_back(p.begin(), p.begin() + length);
    taken += length;
  }
  return sample;
}

std::vector<std::pair<std::size_t, std::int64_t>> decode_sample(const Prompts& sample) {
  std::vector<std::size_t> order(sample.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sample[a].size() > sample[b].size(); });
  std::vector<std::pair<std::size_t, std::int64_t>> chosen;
  std::int64_t taken = 0;
  for (const auto i : order) {
    const auto length = std::min(static_cast<std::int64_t>(sample[i].size()), kDecodeTokenBudget - taken);
    if (length <= 0) break;
    chosen.emplace_back(i, length);
    taken += length;
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

// L4 generates from the first kGenerationPromptTokens tokens of the first kGenerationPrompts prompts that long.
constexpr std::size_t kGenerationPrompts = 4, kGenerationPromptTokens = 24;

Prompts generation_prompts(const Prompts& prompts) {
  Prompts out;
  for (const auto& p : prompts) {
    if (p.size() < kGenerationPromptTokens) continue;
    out.emplace_back(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(kGenerationPromptTokens));
    if (out.size() == kGenerationPrompts) break;
  }
  return out;
}

VerifyPrompts checked_prompts(const VerifyOptions& options, const ModelConfig& config) {
  auto given = options.prompts.ids.empty() ? builtin_verify_prompts(options.model, config) : options.prompts;
  for (const auto& p : given.ids) {
    if (p.empty()) throw InputError(given.origin, "prompt", "is empty");
    for (const auto id : p)
      if (id < 0 || id >= config.vocab_size)
        throw InputError(given.origin, "prompt", "token id " + std::to_string(id) + " is outside the vocabulary");
  }
  return given;
}

namespace {

// Lengths at the edges of the chunked form's chunks and of every window the model has, and one long enough
// for a window cache to evict twice.
std::set<std::int64_t> builtin_prompt_lengths(const ModelConfig& config) {
  const auto [chunk, windows] = sequence_edges(config);
  std::set<std::int64_t> lengths{1, chunk - 1, chunk, chunk + 1};
  std::int64_t widest = chunk;
  for (const auto w : windows) {
    for (const auto l : {w - 1, w, w + 1})
      if (l >= 1) lengths.insert(l);
    widest = std::max(widest, w);
  }
  lengths.insert(2 * widest + chunk + 1);
  return lengths;
}

// Without a tokenizer: splitmix64's ids, the same everywhere.
VerifyPrompts random_prompts(const std::set<std::int64_t>& lengths, std::int64_t vocab_size) {
  VerifyPrompts prompts;
  std::uint64_t x = 0x9E3779B97F4A7C15ULL;
  for (const auto length : lengths) {
    auto& p = prompts.ids.emplace_back();
    for (std::int64_t i = 0; i < length; ++i) {
      x += 0x9E3779B97F4A7C15ULL;
      std::uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      p.push_back(static_cast<std::int64_t>((z ^ (z >> 31)) % static_cast<std::uint64_t>(vocab_size)));
    }
  }
  prompts.origin = "random token ids (the model directory has no tokenizer.json)";
  return prompts;
}

// The built-in texts tokenized, prompt n starting at text n (mod the count) and running on into the next
// texts as far as its length asks.
VerifyPrompts text_prompts(const Tokenizer& tokenizer, const std::set<std::int64_t>& lengths) {
  Prompts samples;
  // Each sample starts as a document does: with BOS where the tokenizer defines one, whether or not its
  // post-processor adds it (models put their attention sink and massive activations there).
  const auto bos = tokenizer.bos_id();
  for (const auto text : builtin_verify_texts()) {
    auto ids = tokenizer.encode(text);
    if (bos && (ids.empty() || ids.front() != *bos)) ids.insert(ids.begin(), *bos);
    samples.push_back(std::move(ids));
  }
  VerifyPrompts prompts;
  std::size_t n = 0;
  for (const auto length : lengths) {
    auto& p = prompts.ids.emplace_back();
    for (std::size_t s = n++; static_cast<std::int64_t>(p.size()) < length; ++s) {
      const auto& sample = samples[s % samples.size()];
      p.insert(p.end(), sample.begin(), sample.begin() + std::min<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(sample.size()),
                                                                                  length - static_cast<std::ptrdiff_t>(p.size())));
    }
  }
  prompts.origin = "built-in text (prose, code, numbers, non-English)";
  return prompts;
}

void report_prompts(VerifyContext& c) {
  std::int64_t tokens = 0;
  for (const auto& p : c.prompts->ids) tokens += static_cast<std::int64_t>(p.size());
  c.report.info("verify prompts", static_cast<double>(c.prompts->ids.size()),
                c.prompts->origin + ", " + std::to_string(tokens) + " tokens");
}

}  // namespace

const Check kPromptsCheck{"L1", "", kPrompts, report_prompts};

}  // namespace checks

VerifyPrompts builtin_verify_prompts(const std::filesystem::path& dir, const ModelConfig& config) {
  const auto lengths = checks::builtin_prompt_lengths(config);
  if (!std::filesystem::exists(dir / "tokenizer.json")) return checks::random_prompts(lengths, config.vocab_size);
  return checks::text_prompts(Tokenizer::from_dir(dir), lengths);
}

VerifyPrompts text_file_prompts(const std::filesystem::path& dir, const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(file.string(), "--text", "cannot be read");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  const auto ids = Tokenizer::from_dir(dir).encode(text);
  VerifyPrompts prompts;
  for (std::size_t i = 0; i < ids.size(); i += 256)
    prompts.ids.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(i),
                             ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), i + 256)));
  if (prompts.ids.empty()) throw InputError(file.string(), "--text", "holds no tokens");
  prompts.origin = "--text " + file.string();
  return prompts;
}

}  // namespace linearize
