// A distill process's place in a multi-process job (docs/distillation.md#multi-process) and the collectives it
// needs, on c10d's process groups as LibTorch ships them: Gloo on CPU tensors, NCCL on CUDA ones (rank r
// uses GPU LOCAL_RANK; built where the torch wheel's NCCL headers are, LINEARIZE_WITH_NCCL). Launched like torchrun
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or by srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS,
// SLURM_LOCALID when RANK is not set). A rank that dies or stops answering ends every other rank's
// collective with DistributedError within the timeout, so the job never hangs.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace linearize {

struct ProcessPlace {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

// The job this process belongs to, from the launcher's environment; nullopt when none is set (or
// WORLD_SIZE is 1). A malformed or inconsistent variable is InputError naming it.
std::optional<ProcessPlace> process_place_from_environment();

// A collective failed: a rank died, or did not answer within the timeout.
struct DistributedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class ProcessGroup {
 public:
  // Rendezvous at master_addr:master_port (rank 0 serves the store) and a group over every rank: Gloo on
  // the CPU, NCCL for `cuda` (which makes GPU LOCAL_RANK this process's current device); waits up to
  // `timeout` for the others to arrive, and bounds every later collective by it too.
  static std::unique_ptr<ProcessGroup> connect(const ProcessPlace& place, std::chrono::milliseconds timeout,
                                               bool cuda = false);
  ~ProcessGroup();

  int rank() const { return place_.rank; }
  int world_size() const { return place_.world_size; }
  // Where the collectives' tensors live: the CPU (Gloo) or this rank's GPU (NCCL).
  const at::Device& device() const { return device_; }

  // Sums each tensor over the ranks in place. Tensors are packed into flat buckets of at most
  // `bucket_bytes` (as DistributedDataParallel does: one message per bucket, not per tensor) of their dtype.
  void all_reduce_sum(const std::vector<at::Tensor>& tensors, std::int64_t bucket_bytes = 25 << 20) const;
  double all_reduce_sum(double value) const;
  // Every rank's tensors become `root`'s (same shapes and dtypes on every rank). `timeout` replaces the
  // group's for a wait that is long by design (a rank training its block while others are done).
  void broadcast(const std::vector<at::Tensor>& tensors, int root,
                 std::optional<std::chrono::milliseconds> timeout = std::nullopt) const;
  void barrier(std::optional<std::chrono::milliseconds> timeout = std::nullopt) const;

 private:
  struct Connection;  // the store and the c10d backend (Gloo or NCCL): their headers stay in the .cpp
  ProcessGroup(ProcessPlace place, std::chrono::milliseconds timeout, at::Device device, std::unique_ptr<Connection> connection);

  ProcessPlace place_;
  at::Device device_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<Connection> connection_;
};

}  // namespace linearize
