// `linearize eval` (docs/distillation.md#eval): the figures users judge a linearized model by, for one model and
// its source:
//   - perplexity and KL(source || model) by position bucket (0-64, 64-256, 256-1K, 1K-2K, 2K-4K, ...) over
//     windows of held-out text at each length: a linear state that never learnt long context is fine inside
//     its window and worse past it, which one perplexity over the whole text hides;
//   - passkey retrieval (Mohtashami & Jaggi 2023): a random 5-digit key planted at a depth of filler text,
//     asked for at the end, the greedy answer matched exactly, per (length, depth);
//   - greedy generation agreement: the fraction of tokens before the first divergence from the source, and
//     the texts side by side (likelihood alone hides generative gaps).
// Costs: one forward per window and model, one prefill and a few decode steps per passkey trial, one prefill
// and `generation_tokens` steps per generation prompt. Logits are formed a slice of positions at a time, so
// memory holds one window's hidden states, not its [T, vocab] logits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "converter/model/causal_lm.h"
#include "distill/metrics.h"
#include "formats/tokenizer.h"

namespace linearize {

struct EvalOptions {
  std::vector<std::int64_t> lengths{512, 1024, 2048, 4096};  // tokens per window and passkey prompt
  std::int64_t windows_per_length = 2;                       // text windows each length's perplexity reads
  std::vector<double> depths{0.0, 0.25, 0.5, 0.75, 1.0};     // where the key sits in the filler, 0 = first
  std::int64_t passkey_trials = 2;                           // random keys per (length, depth)
  std::int64_t generation_prompts = 4;
  std::int64_t generation_prompt_tokens = 64, generation_tokens = 64;
  std::int64_t samples_shown = 3;  // generations shown side by side
  std::uint64_t seed = 1234;       // the keys
};

struct PositionBucket {
  std::int64_t begin = 0, end = 0;  // predicting positions [begin, end)
  std::int64_t tokens = 0;          // predictions counted
  double model_nll = 0, source_nll = 0, kl = 0;  // means per prediction; the source's NaN without a source
  double top1 = 0;  // fraction of predictions whose argmax is the source's; NaN without a source
};

struct PasskeyCell {
  std::int64_t length = 0;
  double depth = 0;
  std::int64_t trials = 0, model_found = 0, source_found = 0;
};

struct GenerationSample {
  std::string prompt, model_text, source_text;
  std::int64_t agreed = 0;  // tokens before the first divergence
};

struct TextWindow {
  std::int64_t length = 0, offset = 0;  // tokens, and where in the text its body starts
};

struct EvalResult {
  bool has_source = false;
  std::vector<TextWindow> windows;  // the perplexity windows, in the order scored
  std::vector<PositionBucket> buckets;
  std::vector<PasskeyCell> passkey;
  double generation_agreement = 0;  // mean agreed / generation_tokens; NaN without a source or prompts
  std::vector<GenerationSample> samples;
  double perplexity_seconds = 0, passkey_seconds = 0, generation_seconds = 0;
};

// The bucket edges 0, 64, 256, 1K, 2K, 4K, 8K, ... up to the first edge past the last predicting position of a
// `longest`-token window (longest - 2).
std::vector<std::int64_t> bucket_edges(std::int64_t longest);

// A passkey prompt of exactly `length` tokens: an instruction, filler sentences with the needle ("The pass key
// is K. Remember it. K is the pass key.") after the filler's first round(depth x n) tokens, then the question.
struct PasskeyPrompt {
  std::vector<std::int64_t> ids;
  std::int64_t needle_at = 0;  // the needle's first token
};
// Throws std::length_error when `length` cannot hold the instruction, needle, question and one filler sentence.
PasskeyPrompt passkey_prompt(const Tokenizer& tokenizer, std::int64_t length, double depth, const std::string& key);

// The answer's key: the first number in `text` when it has five digits, else "".
std::string first_key(const std::string& text);

// `model` against `source` (null: the model alone, the source-only baseline row) on text_ids, the held-out text
// encoded by the model's tokenizer without special tokens. It must hold the longest window and a generation
// prompt (eval_text_tokens_needed; std::invalid_argument otherwise); lengths too short for a passkey prompt throw
// std::length_error. The windows are spread over the whole text, no two of the same span.
EvalResult evaluate_model(const CausalLM& model, const CausalLM* source, const Tokenizer& tokenizer,
                          const std::vector<std::int64_t>& text_ids, const EvalOptions& options, ProgressReporter* progress);

std::int64_t eval_text_tokens_needed(const EvalOptions& options);

// Where an eval's inputs were given, for its errors: `linearize eval`'s flags or a run file's keys.
struct EvalInputNames {
  std::string source, lengths, text;  // e.g. "command line", "--lengths", "--text"
};

// The held-out text file tokenized (no special tokens) and checked with options.lengths before any model loads:
// every length within max_positions, the shortest holding a passkey prompt, the text long enough
// (eval_text_tokens_needed) and every id below vocab_size. Bad input is an InputError naming names' field.
std::vector<std::int64_t> eval_text_ids(const Tokenizer& tokenizer, const std::string& text_file, const EvalOptions& options,
                                        std::int64_t max_positions, std::int64_t vocab_size, const EvalInputNames& names);

nlohmann::json eval_json(const EvalResult& result, const EvalOptions& options);
// The HTML report's charts and tables: perplexity and KL by position, the passkey grids, the generations.
Report eval_report(const EvalResult& result, const std::string& title);

}  // namespace linearize
