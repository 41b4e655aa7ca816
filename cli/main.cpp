// linearize: the one executable. Parses flags and calls the library; maps errors to exit codes:
// 0 success, 1 a check failed, 2 bad input or usage, 3 internal error.
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <malloc.h>

#include <cstdio>
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "distill/distributed.h"
#include "formats/error.h"

namespace {

constexpr int kExitCheckFailed = 1;
constexpr int kExitBadInput = 2;
constexpr int kExitInternal = 3;
constexpr int kExitJobFailed = 4;  // a multi-process job lost a rank: resume it

}  // namespace

int main(int argc, char** argv) {
  // Blocks of 4 MiB and more (every weight matrix of a real model) come from mmap and go back to the
  // system when freed: glibc's default threshold rises with such frees and then keeps dropped weights in
  // its heap. It lowers the peak RSS of convert + verify at no cost in run time, prefill or decode
  // (scripts/bench.sh verify, scripts/bench.sh decoder).
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  CLI::App app{"linearize: convert softmax-attention transformers into verified linear-attention RNNs"};
  app.set_version_flag("--version", LINEARIZE_VERSION);
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off")->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.parse_complete_callback([&] {
    auto logger = spdlog::stderr_color_mt("linearize");
    logger->set_pattern("[%H:%M:%S] %^%l%$ %v");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(log_level));
  });
  linearize::cli::add_inspect_command(app);
  linearize::cli::add_forward_command(app);
  linearize::cli::add_generate_command(app);
  linearize::cli::add_tokenize_command(app);
  linearize::cli::add_convert_command(app);
  linearize::cli::add_select_layers_command(app);
  linearize::cli::add_verify_command(app);
  linearize::cli::add_distill_command(app);
  linearize::cli::add_export_onnx_command(app);
  linearize::cli::add_export_native_command(app);
  linearize::cli::add_eval_command(app);
  linearize::cli::add_recipes_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help/version to stdout, usage errors to stderr
    return code == 0 ? 0 : kExitBadInput;
  } catch (const linearize::cli::CheckFailed& e) {
    std::cerr << e.what() << '\n';
    return kExitCheckFailed;
  } catch (const linearize::InputError& e) {
    std::cerr << "error: " << e.what() << '\n';
    return kExitBadInput;
  } catch (const linearize::DistributedError& e) {
    std::cerr << "error: " << e.what() << '\n';
    return kExitJobFailed;
  } catch (const c10::Error& e) {
    std::cerr << "internal error: " << e.what_without_backtrace() << '\n';
    return kExitInternal;
  } catch (const std::exception& e) {
    std::cerr << "internal error: " << e.what() << '\n';
    return kExitInternal;
  }
  return 0;
}
