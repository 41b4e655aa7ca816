#include "distill/distributed.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if LINEARIZE_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <string>
#include <utility>

#include "formats/error.h"

namespace linearize {
namespace {

constexpr const char* kEnvironment = "environment";

std::optional<std::string> env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

int env_int(const char* name, int fallback, int least) {
  const auto text = env(name);
  if (!text) return fallback;
  try {
    std::size_t used = 0;
    const int value = std::stoi(*text, &used);
    if (used == text->size() && value >= least) return value;
  } catch (const std::exception&) {
  }
  throw InputError(kEnvironment, name, "is '" + *text + "', not an integer >= " + std::to_string(least));
}

}  // namespace

std::optional<ProcessPlace> process_place_from_environment() {
  // torchrun's names first; Slurm's when srun started the processes without a wrapper (the step's task
  // count: SLURM_NTASKS is also set in an sbatch script, where one process runs alone).
  const bool torchrun = env("RANK").has_value() || env("WORLD_SIZE").has_value();
  const char* rank_var = torchrun ? "RANK" : "SLURM_PROCID";
  const char* size_var = torchrun ? "WORLD_SIZE" : "SLURM_STEP_NUM_TASKS";
  const char* local_var = torchrun ? "LOCAL_RANK" : "SLURM_LOCALID";
  ProcessPlace place;
  place.world_size = env_int(size_var, 1, 1);
  if (place.world_size == 1) return std::nullopt;
  if (!env(rank_var)) throw InputError(kEnvironment, rank_var, std::string("is not set, but ") + size_var + " is " + std::to_string(place.world_size));
  place.rank = env_int(rank_var, 0, 0);
  if (place.rank >= place.world_size)
    throw InputError(kEnvironment, rank_var, std::to_string(place.rank) + " is not below " + size_var + " (" + std::to_string(place.world_size) + ")");
  place.local_rank = env_int(local_var, 0, 0);
  if (const auto addr = env("MASTER_ADDR")) place.master_addr = *addr;
  else if (!torchrun) throw InputError(kEnvironment, "MASTER_ADDR", "is not set (under Slurm, export the first node's address)");
  place.master_port = env_int("MASTER_PORT", place.master_port, 1);
  if (place.master_port > 65535) throw InputError(kEnvironment, "MASTER_PORT", "is above 65535");
  return place;
}

struct ProcessGroup::Connection {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

ProcessGroup::ProcessGroup(ProcessPlace place, std::chrono::milliseconds timeout, at::Device device, std::unique_ptr<Connection> connection)
    : place_(std::move(place)), device_(device), timeout_(timeout), connection_(std::move(connection)) {}

ProcessGroup::~ProcessGroup() = default;

std::unique_ptr<ProcessGroup> ProcessGroup::connect(const ProcessPlace& place, std::chrono::milliseconds timeout, bool cuda) {
  const auto where = place.master_addr + ":" + std::to_string(place.master_port);
  auto connection = std::make_unique<Connection>();
  at::Device device(at::kCPU);
#if !LINEARIZE_WITH_NCCL
  if (cuda)
    throw InputError(kEnvironment, "device.type", "cuda with several ranks needs NCCL, which this build lacks (the torch wheel's nvidia/nccl headers)");
#endif
  try {
    c10d::TCPStoreOptions store;
    store.port = static_cast<std::uint16_t>(place.master_port);
    // Under torchrun the agent on node 0 already serves the store on MASTER_PORT
    // (TORCHELASTIC_USE_AGENT_STORE=True): every rank is its client, as torch.distributed does.
    const char* agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
    store.isServer = place.rank == 0 && !(agent_store != nullptr && std::string(agent_store) == "True");
    store.multiTenant = true;
    store.numWorkers = static_cast<std::size_t>(place.world_size);
    store.waitWorkers = true;
    store.timeout = timeout;
    connection->store = c10::make_intrusive<c10d::TCPStore>(place.master_addr, store);
    if (cuda) {
#if LINEARIZE_WITH_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(place.local_rank));
      device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(place.local_rank));
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      connection->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(connection->store, place.rank, place.world_size, options);
#endif
    } else {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      // GLOO_SOCKET_IFNAME picks the interface, as in torch.distributed; else the hostname's address.
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname != '\0')
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      options->threads = 1;  // one collective at a time: the training loop waits on each
      connection->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(connection->store, place.rank, place.world_size, options);
    }
  } catch (const std::exception& e) {
    throw DistributedError("rank " + std::to_string(place.rank) + " of " + std::to_string(place.world_size) +
                           ": could not join the job at " + where + " within " + std::to_string(timeout.count() / 1000) +
                           " s (MASTER_ADDR/MASTER_PORT, and every rank started?): " + e.what());
  }
  return std::unique_ptr<ProcessGroup>(new ProcessGroup(place, timeout, device, std::move(connection)));
}

namespace {

template <typename Start>
void run_collective(const ProcessPlace& place, std::chrono::milliseconds timeout, const char* what, Start start) {
  try {
    auto work = start();
    work->wait(timeout);
  } catch (const std::exception& e) {
    throw DistributedError("rank " + std::to_string(place.rank) + " of " + std::to_string(place.world_size) + ": " + what +
                           " failed (a rank died or did not answer within " + std::to_string(timeout.count() / 1000) +
                           " s); the job stops, --resume continues it from the last checkpoint: " + e.what());
  }
}

}  // namespace

void ProcessGroup::all_reduce_sum(const std::vector<at::Tensor>& tensors, std::int64_t bucket_bytes) const {
  at::NoGradGuard no_grad;
  std::size_t begin = 0;
  while (begin < tensors.size()) {
    // One bucket: consecutive tensors of one dtype up to bucket_bytes (at least one tensor).
    std::size_t end = begin;
    std::int64_t bytes = 0;
    while (end < tensors.size() && tensors[end].scalar_type() == tensors[begin].scalar_type() &&
           (end == begin || bytes + static_cast<std::int64_t>(tensors[end].nbytes()) <= bucket_bytes))
      bytes += static_cast<std::int64_t>(tensors[end++].nbytes());
    std::vector<at::Tensor> parts;
    for (std::size_t i = begin; i < end; ++i) parts.push_back(tensors[i].reshape({-1}));
    std::vector<at::Tensor> flat{at::cat(parts)};
    run_collective(place_, timeout_, "all-reduce", [&] { return connection_->backend->allreduce(flat); });
    std::int64_t offset = 0;
    for (std::size_t i = begin; i < end; ++i) {
      const auto n = tensors[i].numel();
      tensors[i].copy_(flat[0].narrow(0, offset, n).view(tensors[i].sizes()));
      offset += n;
    }
    begin = end;
  }
}

double ProcessGroup::all_reduce_sum(double value) const {
  const auto t = at::full({1}, value, at::TensorOptions(at::kDouble).device(device_));
  all_reduce_sum({t});
  return t.item<double>();
}

void ProcessGroup::broadcast(const std::vector<at::Tensor>& tensors, int root,
                             std::optional<std::chrono::milliseconds> timeout) const {
  at::NoGradGuard no_grad;  // trainable parameters are written in place
  for (const auto& tensor : tensors) {
    std::vector<at::Tensor> one{tensor.is_contiguous() ? tensor : tensor.contiguous()};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = timeout.value_or(timeout_);
    run_collective(place_, options.timeout, "broadcast", [&] { return connection_->backend->broadcast(one, options); });
    if (!one[0].is_same(tensor)) tensor.copy_(one[0]);
  }
}

void ProcessGroup::barrier(std::optional<std::chrono::milliseconds> timeout) const {
  c10d::BarrierOptions options;
  options.timeout = timeout.value_or(timeout_);
  run_collective(place_, options.timeout, "barrier", [&] { return connection_->backend->barrier(options); });
}

}  // namespace linearize
