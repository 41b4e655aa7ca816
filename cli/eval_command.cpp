// `linearize eval`: distill/eval.h's quality figures for a model (and its source), printed as a table and
// written as eval.json / eval.html where asked.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "converter/linearized.h"
#include "converter/model_config.h"
#include "distill/eval.h"
#include "formats/atomic_file.h"
#include "formats/error.h"

namespace linearize::cli {
namespace {

void print_table(const EvalResult& r) {
  std::printf("%-12s %8s %10s", "positions", "tokens", "model ppl");
  if (r.has_source) std::printf(" %10s %8s %8s %6s", "source", "ratio", "KL", "top-1");
  std::printf("\n");
  for (const auto& b : r.buckets) {
    std::printf("%-12s %8lld %10.3f", (std::to_string(b.begin) + "-" + std::to_string(b.end)).c_str(), static_cast<long long>(b.tokens),
                std::exp(b.model_nll));
    if (r.has_source) std::printf(" %10.3f %8.3f %8.4f %6.3f", std::exp(b.source_nll), std::exp(b.model_nll - b.source_nll), b.kl, b.top1);
    std::printf("\n");
  }
  std::printf("\n%-8s %-8s %12s%s\n", "length", "depth", "model found", r.has_source ? "  source found" : "");
  for (const auto& c : r.passkey) {
    std::printf("%-8lld %-8.2f %8lld/%-3lld", static_cast<long long>(c.length), c.depth, static_cast<long long>(c.model_found),
                static_cast<long long>(c.trials));
    if (r.has_source) std::printf(" %10lld/%-3lld", static_cast<long long>(c.source_found), static_cast<long long>(c.trials));
    std::printf("\n");
  }
  if (std::isfinite(r.generation_agreement)) std::printf("\ngeneration agreement with the source: %.3f\n", r.generation_agreement);
  std::fflush(stdout);
}

// --lengths and --depths name each value once (the passkey grid has one row and column per value).
template <class T>
void require_distinct(std::vector<T> values, const std::string& flag) {
  std::sort(values.begin(), values.end());
  if (std::adjacent_find(values.begin(), values.end()) != values.end()) throw InputError("command line", flag, "repeats a value");
}

}  // namespace

void add_eval_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string source, text, json, html;
    EvalOptions eval;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("eval", "Quality by position, passkey retrieval and generation agreement of a model against its source");
  cmd->add_option("--model", opts->model.dir, "Model directory: a conversion, a distilled export or any checkpoint")->required();
  cmd->add_option("--source", opts->source, "The source checkpoint to compare with (without it: the model's figures alone)");
  cmd->add_option("--text", opts->text, "Held-out text (tokenized with the model's tokenizer.json)")->required();
  cmd->add_option("--lengths", opts->eval.lengths, "Window and passkey prompt lengths in tokens")->delimiter(',')->check(CLI::PositiveNumber);
  cmd->add_option("--windows", opts->eval.windows_per_length, "Text windows per length for perplexity")->check(CLI::Range(1, 1000));
  cmd->add_option("--depths", opts->eval.depths, "Passkey depths in [0, 1]")->delimiter(',')->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--passkey-trials", opts->eval.passkey_trials, "Random keys per (length, depth)")->check(CLI::Range(1, 1000));
  cmd->add_option("--generation-prompts", opts->eval.generation_prompts, "Held-out prompts continued greedily")->check(CLI::Range(0, 1000));
  cmd->add_option("--generation-tokens", opts->eval.generation_tokens, "Greedy tokens per prompt")->check(CLI::Range(1, 4096));
  cmd->add_option("--json", opts->json, "Write the figures as JSON (eval.json)");
  cmd->add_option("--html", opts->html, "Write the report with its charts (eval.html)");
  add_device_options(*cmd, opts->model);
  cmd->callback([opts] {
    const std::filesystem::path dir(opts->model.dir);
    require_distinct(opts->eval.lengths, "--lengths");
    require_distinct(opts->eval.depths, "--depths");
    const auto config = load_model_config(dir / "config.json");
    auto context = config.max_position_embeddings;
    if (!opts->source.empty()) {
      const auto source_config = std::filesystem::path(opts->source) / "config.json";
      const auto source = load_model_config(source_config);
      if (source.vocab_size != config.vocab_size)
        throw InputError(source_config.string(), "vocab_size", std::to_string(source.vocab_size) + " differs from the model's " +
                                                                   std::to_string(config.vocab_size) + ": not its source");
      context = std::min(context, source.max_position_embeddings);
    }
    if (!std::filesystem::exists(dir / "tokenizer.json"))
      throw InputError((dir / "tokenizer.json").string(), "tokenizer.json", "is missing: eval tokenizes with the model's own tokenizer");
    const auto tokenizer = Tokenizer::from_dir(dir);
    const auto text_ids = eval_text_ids(tokenizer, opts->text, opts->eval, context, config.vocab_size, {"command line", "--lengths", "--text"});
    const auto model = load_model(opts->model);
    std::optional<CausalLM> source;
    if (!opts->source.empty()) source = load_model(opts->source, load_options(opts->model));
    ProgressReporter progress(stderr, ProgressReporter::is_tty(stderr));
    EvalResult result;
    try {
      result = evaluate_model(model, source ? &*source : nullptr, tokenizer, text_ids, opts->eval, &progress);
    } catch (const std::length_error& e) {  // a key that tokenizes longer than "00000" did
      throw InputError("command line", "--lengths", e.what());
    }
    print_table(result);
    if (!opts->json.empty()) write_file_atomic(opts->json, eval_json(result, opts->eval).dump(2) + "\n");
    if (!opts->html.empty()) write_report_html(opts->html, eval_report(result, "linearize eval: " + opts->model.dir));
    spdlog::info("eval: perplexity {:.1f} s, passkey {:.1f} s, generation {:.1f} s", result.perplexity_seconds, result.passkey_seconds,
                 result.generation_seconds);
  });
}

}  // namespace linearize::cli
