// One function per subcommand; each lives in its own cli/<name>_command.cpp and is added to main.cpp
// with one line. A command owns its options (shared with its callback, so they outlive parsing).
#pragma once

namespace CLI {
class App;
}

namespace linearize::cli {

void add_inspect_command(CLI::App& app);
void add_forward_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);

}  // namespace linearize::cli
