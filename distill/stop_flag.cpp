#include "distill/stop_flag.h"

#include <atomic>
#include <stdexcept>

namespace linearize {
namespace {

// Lock-free atomics are async-signal-safe; the handler touches nothing else but signal()/raise().
std::atomic<int> g_stop_signal{0};
std::atomic<bool> g_installed{false};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void on_stop_signal(int signal) {
  int expected = 0;
  if (!g_stop_signal.compare_exchange_strong(expected, signal)) {
    std::signal(signal, SIG_DFL);  // second signal: the default action (terminate) now
    std::raise(signal);
  }
}

}  // namespace

StopFlag::StopFlag() {
  if (g_installed.exchange(true)) throw std::logic_error("StopFlag: only one may be installed at a time");
  g_stop_signal = 0;
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // blocking reads in the loop continue rather than fail with EINTR
  sigaction(SIGINT, &action, &previous_int_);
  sigaction(SIGTERM, &action, &previous_term_);
}

StopFlag::~StopFlag() {
  sigaction(SIGINT, &previous_int_, nullptr);
  sigaction(SIGTERM, &previous_term_, nullptr);
  g_installed = false;
}

bool StopFlag::requested() const { return g_stop_signal.load() != 0; }
int StopFlag::signal() const { return g_stop_signal.load(); }

}  // namespace linearize
