#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>

#include <ATen/Context.h>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "formats/tokenizer.h"

namespace linearize::cli {
namespace {

void synchronize(const at::Tensor& t) {
  if (t.is_cuda()) t.cpu();  // forces the queued kernels to finish before the clock is read
}

}  // namespace

void add_generate_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::int64_t max_new_tokens = 32;
    bool stop_at_eos = true;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("generate", "Greedy-decode token by token through the model's step() and print the ids");
  add_model_options(*cmd, opts->model);
  cmd->add_option("--max-new-tokens", opts->max_new_tokens, "Tokens to generate")->check(CLI::Range(1, 1 << 20));
  cmd->add_flag("!--no-stop-at-eos", opts->stop_at_eos, "Keep going past the end-of-sequence token");
  cmd->callback([opts] {
    const auto prompt = prompt_tensor(opts->model);
    const auto model = load_model(opts->model);
    const auto& eos = model.config().eos_token_ids;
    auto state = model.new_state();

    const auto t0 = std::chrono::steady_clock::now();
    auto logits = model.prefill(prompt, state);
    auto next = logits.argmax(-1);
    synchronize(next);
    const auto t1 = std::chrono::steady_clock::now();
    std::vector<std::int64_t> generated;
    while (true) {
      const auto id = next.item<std::int64_t>();  // the host needs it to decide whether to stop
      generated.push_back(id);
      if (static_cast<std::int64_t>(generated.size()) == opts->max_new_tokens) break;
      if (opts->stop_at_eos && std::find(eos.begin(), eos.end(), id) != eos.end()) break;
      next = model.step(next, state).argmax(-1);
    }
    const auto t2 = std::chrono::steady_clock::now();

    for (std::size_t i = 0; i < generated.size(); ++i) std::cout << (i ? " " : "") << generated[i];
    std::cout << '\n';
    // The continuation as text, when the model directory has a tokenizer that covers the generated ids (a model
    // whose vocabulary is wider than its tokenizer's still generated them: the ids stand, the text is left out).
    const std::filesystem::path dir(opts->model.dir);
    if (std::filesystem::exists(dir / "tokenizer.json")) {
      const auto tokenizer = Tokenizer::from_dir(dir);
      const auto outside = std::find_if(generated.begin(), generated.end(),
                                        [&tokenizer](std::int64_t id) { return id >= tokenizer.vocab_size(); });
      if (outside == generated.end()) std::cout << tokenizer.decode(generated) << '\n';
      else spdlog::warn("no text: generated id {} is outside {}'s vocabulary of {}", *outside,
                        (dir / "tokenizer.json").string(), tokenizer.vocab_size());
    }
    const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
    const double decode_s = std::chrono::duration<double>(t2 - t1).count();
    const auto decoded = static_cast<double>(generated.size() - 1);  // the first token came from prefill
    spdlog::info("prefill {} tokens in {:.3f} s ({:.1f} tokens/s); decode {} tokens in {:.3f} s ({:.1f} tokens/s); "
                 "state {:.1f} KiB",
                 prompt.size(1), prefill_s, static_cast<double>(prompt.size(1)) / prefill_s, generated.size() - 1, decode_s,
                 decoded > 0 ? decoded / decode_s : 0.0, static_cast<double>(state.bytes()) / 1024.0);
  });
}

}  // namespace linearize::cli
