// One function per subcommand; each lives in its own cli/<name>_command.cpp and is added to main.cpp
// with one line. A command owns its options (shared with its callback, so they outlive parsing).
#pragma once

#include <stdexcept>

namespace CLI {
class App;
}

namespace linearize::cli {

// A check the command ran failed (verify): main prints the message and exits 1.
struct CheckFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void add_inspect_command(CLI::App& app);
void add_forward_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_select_layers_command(CLI::App& app);
void add_verify_command(CLI::App& app);
void add_distill_command(CLI::App& app);
void add_export_onnx_command(CLI::App& app);
void add_export_native_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_recipes_command(CLI::App& app);

}  // namespace linearize::cli
