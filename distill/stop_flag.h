// SIGINT / SIGTERM during training: the handler only sets a flag (async-signal-safe, CERT SIG30-C/SIG31-C,
// as Marian's signal_handling.h does); the loop checks it between steps, saves a checkpoint and exits 0.
// A second signal while the first is pending restores the default action and re-raises it, so a stuck
// run can still be interrupted.
#pragma once

#include <csignal>

namespace linearize {

class StopFlag {
 public:
  // Installs the handlers; the previous ones come back on destruction. One StopFlag at a time.
  StopFlag();
  ~StopFlag();
  StopFlag(const StopFlag&) = delete;
  StopFlag& operator=(const StopFlag&) = delete;

  bool requested() const;
  int signal() const;  // the signal that asked to stop, 0 if none

 private:
  struct sigaction previous_int_{};
  struct sigaction previous_term_{};
};

}  // namespace linearize
