#include "distill/eval.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>

#include "converter/next_token.h"
#include "converter/verify/check.h"
#include "formats/error.h"

namespace linearize {
namespace {

// The passkey task's wording (Mohtashami & Jaggi 2023, as LongLoRA and the LoLCATs evaluations use it).
constexpr const char* kInstruction =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about "
    "the important information there.";
constexpr const char* kFiller = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
constexpr const char* kQuestion = " What is the pass key? The pass key is";
constexpr std::int64_t kAnswerTokens = 8;   // " 12345." in any tokenizer that splits digits one or a few at a time
constexpr std::int64_t kLogitSlice = 256;   // positions whose [., vocab] log-probabilities exist at once

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void append(std::vector<std::int64_t>& to, const std::vector<std::int64_t>& from) { to.insert(to.end(), from.begin(), from.end()); }

using checks::greedy;
using Prompts = checks::Prompts;

// What the tokenizer puts before a text: its BOS where it adds one (a suffix such as EOS is left out: it would
// end every window and prompt).
std::vector<std::int64_t> text_prefix(const Tokenizer& tokenizer) {
  const auto ids = tokenizer.encode("", /*add_special_tokens=*/true);
  const auto bos = tokenizer.bos_id();
  return !ids.empty() && bos && ids.front() == *bos ? std::vector<std::int64_t>{*bos} : std::vector<std::int64_t>{};
}

// ids the tokenizer covers, decoded (a model whose embedding rows outnumber its tokenizer's may pick the others).
std::string decode_known(const Tokenizer& tokenizer, std::vector<std::int64_t> ids) {
  ids.erase(std::remove_if(ids.begin(), ids.end(), [&](std::int64_t id) { return id >= tokenizer.vocab_size(); }), ids.end());
  return tokenizer.decode(ids);
}

// Sums per bucket, divided into means at the end.
struct BucketSums {
  std::vector<std::int64_t> edges;
  std::vector<double> model_nll, source_nll, kl, top1;
  std::vector<std::int64_t> count;

  explicit BucketSums(std::vector<std::int64_t> e)
      : edges(std::move(e)), model_nll(edges.size() - 1), source_nll(edges.size() - 1), kl(edges.size() - 1), top1(edges.size() - 1),
        count(edges.size() - 1) {}
  std::size_t bucket(std::int64_t position) const {
    return static_cast<std::size_t>(std::upper_bound(edges.begin(), edges.end(), position) - edges.begin() - 1);
  }
};

// One window: every position's -log p(next token) under the model (and the source), KL(source || model) and
// whether both pick the same top token, added to its position's bucket.
void score_window(const CausalLM& model, const CausalLM* source, const at::Tensor& ids, BucketSums& sums) {
  const std::int64_t predictions = ids.size(1) - 1;
  const auto model_hidden = model.hidden_states(ids);
  const auto source_hidden = source ? source->hidden_states(ids) : at::Tensor();
  for (std::int64_t s = 0; s < predictions; s += kLogitSlice) {
    const std::int64_t n = std::min(kLogitSlice, predictions - s);
    const auto log_probs = [n, s](const CausalLM& m, const at::Tensor& hidden) {
      return at::log_softmax(m.logits_of(hidden.narrow(1, s, n)).to(at::kFloat), -1)[0];  // [n, V]
    };
    const auto targets = ids[0].narrow(0, s + 1, n).to(model_hidden.device()).unsqueeze(1);
    const auto model_lp = log_probs(model, model_hidden);
    const auto model_nll = (-model_lp.gather(1, targets).squeeze(1)).to(at::kCPU).to(at::kDouble);
    at::Tensor source_nll, kl, same_top;
    if (source) {
      const auto source_lp = log_probs(*source, source_hidden);
      source_nll = (-source_lp.gather(1, targets).squeeze(1)).to(at::kCPU).to(at::kDouble);
      kl = kl_per_row(source_lp.to(at::kDouble), model_lp.to(at::kDouble)).to(at::kCPU);
      same_top = model_lp.argmax(1).eq(source_lp.argmax(1)).to(at::kCPU).to(at::kDouble);
    }
    for (std::int64_t i = 0; i < n; ++i) {
      const auto b = sums.bucket(s + i);
      sums.model_nll[b] += model_nll[i].item<double>();
      if (source) {
        sums.source_nll[b] += source_nll[i].item<double>();
        sums.kl[b] += kl[i].item<double>();
        sums.top1[b] += same_top[i].item<double>();
      }
      ++sums.count[b];
    }
  }
}

// Windows of every length spread evenly over the whole text, lengths interleaved (no window a prefix of
// another, which would count the same predictions twice), each body after the tokenizer's own prefix.
std::vector<TextWindow> text_windows(std::int64_t text_tokens, std::int64_t prefix, const EvalOptions& options) {
  const auto lengths = static_cast<std::int64_t>(options.lengths.size());
  const std::int64_t count = lengths * options.windows_per_length;
  std::vector<TextWindow> windows;
  for (std::int64_t w = 0; w < options.windows_per_length; ++w) {
    for (std::int64_t l = 0; l < lengths; ++l) {
      const auto length = options.lengths[static_cast<std::size_t>(l)];
      const std::int64_t room = text_tokens - (length - prefix), k = w * lengths + l;
      windows.push_back({length, count > 1 ? room * k / (count - 1) : 0});
    }
  }
  return windows;
}

std::vector<PositionBucket> perplexity_by_position(const CausalLM& model, const CausalLM* source, const std::vector<std::int64_t>& prefix,
                                                   const std::vector<std::int64_t>& text_ids, const std::vector<TextWindow>& windows,
                                                   ProgressReporter* progress, std::int64_t& step) {
  std::int64_t longest = 0;
  for (const auto& w : windows) longest = std::max(longest, w.length);
  BucketSums sums(bucket_edges(longest));
  std::int64_t tokens = 0;
  for (const auto& w : windows) {
    auto window = prefix;
    const auto body = text_ids.begin() + w.offset;
    window.insert(window.end(), body, body + (w.length - static_cast<std::int64_t>(prefix.size())));
    score_window(model, source, at::tensor(window, at::kLong).unsqueeze(0), sums);
    tokens += w.length;
    if (progress) progress->update(++step, sums.model_nll[0] / static_cast<double>(std::max<std::int64_t>(1, sums.count[0])), tokens);
  }
  std::vector<PositionBucket> buckets;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (std::size_t b = 0; b + 1 < sums.edges.size(); ++b) {
    const auto n = static_cast<double>(sums.count[b]);
    buckets.push_back({sums.edges[b], sums.edges[b + 1], sums.count[b], sums.model_nll[b] / n, source ? sums.source_nll[b] / n : nan,
                       source ? std::max(0.0, sums.kl[b] / n) : nan, source ? sums.top1[b] / n : nan});  // KL >= 0 but for rounding
  }
  return buckets;
}

std::string random_key(std::mt19937_64& rng) { return std::to_string(std::uniform_int_distribution<int>(10000, 99999)(rng)); }

std::string format_double(double v, int digits = 4) {
  if (!std::isfinite(v)) return "-";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.*g", digits, v);
  return buffer;
}

}  // namespace

std::vector<std::int64_t> bucket_edges(std::int64_t longest) {
  std::vector<std::int64_t> edges{0};
  const std::int64_t last = longest - 2;  // the last position with a next token
  for (std::int64_t next = 64; edges.back() <= last; next = next < 1024 ? next * 4 : next * 2) edges.push_back(next);
  return edges;
}

PasskeyPrompt passkey_prompt(const Tokenizer& tokenizer, std::int64_t length, double depth, const std::string& key) {
  auto head = text_prefix(tokenizer);
  append(head, tokenizer.encode(kInstruction, /*add_special_tokens=*/false));
  const auto filler = tokenizer.encode(kFiller, /*add_special_tokens=*/false);
  const auto needle = tokenizer.encode(" The pass key is " + key + ". Remember it. " + key + " is the pass key.", false);
  const auto question = tokenizer.encode(kQuestion, false);
  const auto fixed = static_cast<std::int64_t>(head.size() + needle.size() + question.size());
  if (length < fixed + static_cast<std::int64_t>(filler.size()))
    throw std::length_error("a passkey prompt needs at least " + std::to_string(fixed + static_cast<std::int64_t>(filler.size())) +
                                " tokens, not " + std::to_string(length));
  const std::int64_t body = length - fixed, sentence = static_cast<std::int64_t>(filler.size());
  std::vector<std::int64_t> fill;
  for (std::int64_t i = 0; i < body; ++i) fill.push_back(filler[static_cast<std::size_t>(i % sentence)]);
  // At a whole round of filler: depth 0 right after the instruction, 1 after the last whole round.
  const std::int64_t at = std::llround(depth * static_cast<double>(body / sentence)) * sentence;
  PasskeyPrompt prompt;
  prompt.ids = head;
  prompt.ids.insert(prompt.ids.end(), fill.begin(), fill.begin() + at);
  prompt.needle_at = static_cast<std::int64_t>(prompt.ids.size());
  append(prompt.ids, needle);
  prompt.ids.insert(prompt.ids.end(), fill.begin() + at, fill.end());
  append(prompt.ids, question);
  return prompt;
}

std::string first_key(const std::string& text) {
  const auto digit = [](char c) { return c >= '0' && c <= '9'; };
  const auto begin = std::find_if(text.begin(), text.end(), digit);
  const auto end = std::find_if_not(begin, text.end(), digit);
  return end - begin == 5 ? std::string(begin, end) : std::string();
}

std::int64_t eval_text_tokens_needed(const EvalOptions& options) {
  return *std::max_element(options.lengths.begin(), options.lengths.end()) + options.generation_prompt_tokens;
}

EvalResult evaluate_model(const CausalLM& model, const CausalLM* source, const Tokenizer& tokenizer,
                          const std::vector<std::int64_t>& text_ids, const EvalOptions& options, ProgressReporter* progress) {
  if (options.lengths.empty()) throw std::invalid_argument("no lengths to evaluate at");
  at::NoGradGuard no_grad;
  const auto prefix = text_prefix(tokenizer);
  const auto needed = eval_text_tokens_needed(options);
  if (static_cast<std::int64_t>(text_ids.size()) < needed)
    throw std::invalid_argument("the text has " + std::to_string(text_ids.size()) + " tokens; the windows and prompts need " +
                                std::to_string(needed));
  EvalResult result;
  result.has_source = source != nullptr;
  const std::int64_t models = source ? 2 : 1;
  result.windows = text_windows(static_cast<std::int64_t>(text_ids.size()), static_cast<std::int64_t>(prefix.size()), options);
  const auto cells = static_cast<std::int64_t>(options.lengths.size() * options.depths.size());
  std::int64_t step = 0;
  if (progress)
    progress->start("eval", 0, static_cast<std::int64_t>(result.windows.size()) + cells * options.passkey_trials + options.generation_prompts);

  auto started = std::chrono::steady_clock::now();
  result.buckets = perplexity_by_position(model, source, prefix, text_ids, result.windows, progress, step);
  result.perplexity_seconds = seconds_since(started);

  started = std::chrono::steady_clock::now();
  std::mt19937_64 rng(options.seed);
  std::int64_t tokens = 0, found = 0, tried = 0;  // the progress line's loss: the model's miss rate so far
  for (const auto length : options.lengths) {
    for (const auto depth : options.depths) {
      PasskeyCell cell{length, depth, options.passkey_trials, 0, 0};
      for (std::int64_t t = 0; t < options.passkey_trials; ++t) {
        const auto key = random_key(rng);
        const Prompts prompt{passkey_prompt(tokenizer, length, depth, key).ids};
        const auto answer = [&](const CausalLM& m) { return first_key(decode_known(tokenizer, greedy(m, prompt, kAnswerTokens)[0])) == key; };
        const bool model_found = answer(model);
        cell.model_found += model_found;
        if (source) cell.source_found += answer(*source);
        found += model_found, ++tried;
        tokens += length * models;
        if (progress) progress->update(++step, 1.0 - static_cast<double>(found) / static_cast<double>(tried), tokens);
      }
      result.passkey.push_back(cell);
    }
  }
  result.passkey_seconds = seconds_since(started);

  // Generation prompts, equally long, from the text's end backwards, continued in one batch per model.
  started = std::chrono::steady_clock::now();
  const auto room = static_cast<std::int64_t>(text_ids.size()) - options.generation_prompt_tokens;
  Prompts prompts;
  for (std::int64_t g = 0; g < options.generation_prompts; ++g) {
    const auto begin = text_ids.begin() + (room - room * g / options.generation_prompts);
    prompts.push_back(prefix);
    prompts.back().insert(prompts.back().end(), begin, begin + options.generation_prompt_tokens);
  }
  const auto ours = greedy(model, prompts, options.generation_tokens);
  const auto theirs = source ? greedy(*source, prompts, options.generation_tokens) : Prompts();
  double agreed = 0;
  for (std::size_t g = 0; g < prompts.size(); ++g) {
    GenerationSample sample;
    if (source) {
      sample.agreed = std::mismatch(ours[g].begin(), ours[g].end(), theirs[g].begin()).first - ours[g].begin();
      agreed += static_cast<double>(sample.agreed) / static_cast<double>(options.generation_tokens);
    }
    if (static_cast<std::int64_t>(g) < options.samples_shown) {
      sample.prompt = decode_known(tokenizer, std::vector<std::int64_t>(prompts[g].begin() + static_cast<std::ptrdiff_t>(prefix.size()), prompts[g].end()));
      sample.model_text = decode_known(tokenizer, ours[g]);
      if (source) sample.source_text = decode_known(tokenizer, theirs[g]);
      result.samples.push_back(std::move(sample));
    }
    tokens += (options.generation_prompt_tokens + options.generation_tokens) * models;
    if (progress) progress->update(++step, 0.0, tokens);
  }
  result.generation_agreement = source && !prompts.empty() ? agreed / static_cast<double>(prompts.size()) : std::numeric_limits<double>::quiet_NaN();
  result.generation_seconds = seconds_since(started);
  if (progress) progress->finish();
  return result;
}

std::vector<std::int64_t> eval_text_ids(const Tokenizer& tokenizer, const std::string& text_file, const EvalOptions& options,
                                        std::int64_t max_positions, std::int64_t vocab_size, const EvalInputNames& names) {
  // Lengths past what the models were trained for measure RoPE extrapolation, not the conversion: refused.
  for (const auto length : options.lengths)
    if (length > max_positions)
      throw InputError(names.source, names.lengths, std::to_string(length) + " is beyond max_position_embeddings (" +
                                                        std::to_string(max_positions) + ")");
  try {  // the shortest length must hold a passkey prompt
    passkey_prompt(tokenizer, *std::min_element(options.lengths.begin(), options.lengths.end()), 0.0, "00000");
  } catch (const std::length_error& e) {
    throw InputError(names.source, names.lengths, e.what());
  }
  std::ifstream in(text_file, std::ios::binary);
  if (!in) throw InputError(text_file, names.text, "cannot be read");
  std::stringstream text;
  text << in.rdbuf();
  const auto ids = tokenizer.encode(text.str(), /*add_special_tokens=*/false);
  for (const auto id : ids)
    if (id >= vocab_size)
      throw InputError(text_file, names.text, "encodes to id " + std::to_string(id) + ", outside the model's vocabulary of " +
                                                  std::to_string(vocab_size));
  if (static_cast<std::int64_t>(ids.size()) < eval_text_tokens_needed(options))
    throw InputError(text_file, names.text, "has " + std::to_string(ids.size()) + " tokens; the longest window and a generation prompt need " +
                                                std::to_string(eval_text_tokens_needed(options)));
  return ids;
}

nlohmann::json eval_json(const EvalResult& result, const EvalOptions& options) {
  using nlohmann::json;
  json windows = json::array(), buckets = json::array(), passkey = json::array(), by_length = json::array(), samples = json::array();
  for (const auto& w : result.windows) windows.push_back({{"length", w.length}, {"offset", w.offset}});
  for (const auto& b : result.buckets) {
    json row{{"begin", b.begin}, {"end", b.end}, {"tokens", b.tokens}, {"model_perplexity", std::exp(b.model_nll)}};
    if (result.has_source) {
      row["source_perplexity"] = std::exp(b.source_nll);
      row["ratio"] = std::exp(b.model_nll - b.source_nll);
      row["kl"] = b.kl;
      row["top1"] = b.top1;
    }
    buckets.push_back(row);
  }
  for (const auto length : options.lengths) {
    std::int64_t trials = 0, model_found = 0, source_found = 0;
    for (const auto& c : result.passkey) {
      const auto model_accuracy = static_cast<double>(c.model_found) / static_cast<double>(c.trials);
      if (c.length == length) {
        json cell{{"length", c.length}, {"depth", c.depth}, {"trials", c.trials}, {"model_accuracy", model_accuracy}};
        if (result.has_source) cell["source_accuracy"] = static_cast<double>(c.source_found) / static_cast<double>(c.trials);
        passkey.push_back(cell);
        trials += c.trials, model_found += c.model_found, source_found += c.source_found;
      }
    }
    json row{{"length", length}, {"model_accuracy", static_cast<double>(model_found) / static_cast<double>(trials)}};
    if (result.has_source) row["source_accuracy"] = static_cast<double>(source_found) / static_cast<double>(trials);
    by_length.push_back(row);
  }
  for (const auto& s : result.samples) {
    json sample{{"prompt", s.prompt}, {"model", s.model_text}};
    if (result.has_source) sample["source"] = s.source_text, sample["agreed_tokens"] = s.agreed;
    samples.push_back(sample);
  }
  json out{{"has_source", result.has_source},
           {"windows", windows},
           {"perplexity_by_position", buckets},
           {"passkey", passkey},
           {"passkey_by_length", by_length},
           {"generation", {{"prompts", options.generation_prompts}, {"tokens", options.generation_tokens}, {"samples", samples}}},
           {"seconds", {{"perplexity", result.perplexity_seconds}, {"passkey", result.passkey_seconds}, {"generation", result.generation_seconds}}}};
  if (std::isfinite(result.generation_agreement)) out["generation"]["agreement"] = result.generation_agreement;
  return out;
}

Report eval_report(const EvalResult& result, const std::string& title) {
  Report report;
  report.title = title;
  report.summary.emplace_back("compared with", result.has_source ? "the source model" : "nothing (the model alone)");
  if (std::isfinite(result.generation_agreement)) report.summary.emplace_back("generation agreement", format_double(result.generation_agreement, 3));
  report.summary.emplace_back("wall time", format_double(result.perplexity_seconds + result.passkey_seconds + result.generation_seconds, 4) + " s");

  LineChart perplexity{"Perplexity by position", "position (bucket midpoint)", "perplexity", true, {{"model", {}}}};
  LineChart ratio{"Perplexity ratio and KL(source || model) by position", "position (bucket midpoint)", "", false,
                  {{"ratio model / source", {}}, {"KL (nats)", {}}}};
  if (result.has_source) perplexity.series.push_back({"source", {}});
  Table buckets{"Perplexity by position", {"positions", "predictions", "model", "source", "ratio", "KL", "top-1"}, {}};
  for (const auto& b : result.buckets) {
    const double mid = 0.5 * static_cast<double>(b.begin + b.end);
    perplexity.series[0].points.emplace_back(mid, std::exp(b.model_nll));
    if (result.has_source) {
      perplexity.series[1].points.emplace_back(mid, std::exp(b.source_nll));
      ratio.series[0].points.emplace_back(mid, std::exp(b.model_nll - b.source_nll));
      ratio.series[1].points.emplace_back(mid, b.kl);
    }
    buckets.rows.push_back({std::to_string(b.begin) + "-" + std::to_string(b.end), std::to_string(b.tokens), format_double(std::exp(b.model_nll)),
                            format_double(std::exp(b.source_nll)), format_double(std::exp(b.model_nll - b.source_nll)), format_double(b.kl),
                            format_double(b.top1)});
  }
  report.curves.push_back(perplexity);
  if (result.has_source) report.curves.push_back(ratio);
  report.tables.push_back(buckets);

  // The passkey grids: rows the lengths, columns the depths, in the order evaluated.
  const auto grid = [&](const std::string& who, bool of_source) {
    HeatMap map{"Passkey accuracy: " + who, "depth of the key", "prompt length (tokens)", {}, {}, {}};
    for (const auto& c : result.passkey) {
      const auto column = format_double(100 * c.depth, 3) + "%", row = std::to_string(c.length);
      if (std::find(map.columns.begin(), map.columns.end(), column) == map.columns.end()) map.columns.push_back(column);
      if (map.rows.empty() || map.rows.back() != row) map.rows.push_back(row), map.values.emplace_back();
      map.values.back().push_back(static_cast<double>(of_source ? c.source_found : c.model_found) / static_cast<double>(c.trials));
    }
    return map;
  };
  report.heatmaps.push_back(grid("model", false));
  if (result.has_source) report.heatmaps.push_back(grid("source", true));

  Table samples{"Greedy generations", {"prompt (end)", "model", "source", "agreed tokens"}, {}};
  for (const auto& s : result.samples) {
    const auto tail = s.prompt.size() > 200 ? "..." + s.prompt.substr(s.prompt.size() - 200) : s.prompt;
    samples.rows.push_back({tail, s.model_text, result.has_source ? s.source_text : "-", result.has_source ? std::to_string(s.agreed) : "-"});
  }
  report.tables.push_back(samples);
  return report;
}

}  // namespace linearize
