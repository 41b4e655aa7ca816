#include "kernels/checkpoint.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <mutex>
#include <utility>

namespace linearize::kernels {
namespace {

// What the forward saw and the backward replays.
struct Replay final : torch::CustomClassHolder {
  Block block;
  at::Generator generator;
  at::Tensor generator_state;
  bool autocast = false;
  at::ScalarType autocast_dtype = at::kBFloat16;
};

// Sets the generator to `state` for the scope, then back to where it was (also when the block throws).
// The generator's lock is held while its state is read or written, not while the block draws from it.
class GeneratorAt {
 public:
  GeneratorAt(at::Generator generator, const at::Tensor& state) : generator_(std::move(generator)) {
    const std::lock_guard<std::mutex> lock(generator_.mutex());
    now_ = generator_.get_state();
    generator_.set_state(state);
  }
  ~GeneratorAt() {
    const std::lock_guard<std::mutex> lock(generator_.mutex());
    generator_.set_state(now_);
  }
  GeneratorAt(const GeneratorAt&) = delete;
  GeneratorAt& operator=(const GeneratorAt&) = delete;

 private:
  at::Generator generator_;
  at::Tensor now_;
};

// Sets autocast on `device` as `replay` saw it for the scope, then back.
class AutocastAs {
 public:
  AutocastAs(at::DeviceType device, const Replay& replay)
      : device_(device), enabled_(at::autocast::is_autocast_enabled(device)), dtype_(at::autocast::get_autocast_dtype(device)) {
    at::autocast::set_autocast_dtype(device, replay.autocast_dtype);
    at::autocast::set_autocast_enabled(device, replay.autocast);
  }
  ~AutocastAs() {
    at::autocast::set_autocast_enabled(device_, enabled_);
    at::autocast::set_autocast_dtype(device_, dtype_);
    at::autocast::clear_cache();  // casts made for the recomputation are not reused by later steps
  }
  AutocastAs(const AutocastAs&) = delete;
  AutocastAs& operator=(const AutocastAs&) = delete;

 private:
  at::DeviceType device_;
  bool enabled_;
  at::ScalarType dtype_;
};

// Inputs: x and `anchor`, a 0-element leaf (requiring grad when x does not), so the output belongs to the
// graph and the backward reaches the block's trainables (torch.utils.checkpoint needs an input that
// requires grad for the same reason).
struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& /*anchor*/,
                            c10::intrusive_ptr<Replay> replay) {
    ctx->save_for_backward({x});
    at::Tensor y;
    {
      // As a training forward runs it (grad mode on: kernels with a faster no-grad path take the path the
      // recomputation takes, so the two agree bit for bit), then the block's graph is dropped.
      const at::AutoGradMode grad(true);
      y = replay->block(x.detach().requires_grad_(x.requires_grad())).detach();
    }
    ctx->saved_data["replay"] = c10::IValue::make_capsule(std::move(replay));
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    // The recomputed graph is back-propagated once, not recorded: a gradient of this gradient would be wrong.
    TORCH_CHECK(!at::GradMode::is_enabled(), "checkpointed: double backward (create_graph) is not supported");
    const auto x = ctx->get_saved_variables()[0];
    const auto replay = c10::static_intrusive_pointer_cast<Replay>(ctx->saved_data["replay"].toCapsule());
    const auto input = x.detach().requires_grad_(x.requires_grad());
    at::Tensor y;
    {
      const GeneratorAt generator(replay->generator, replay->generator_state);
      const AutocastAs autocast(x.device().type(), *replay);
      const at::AutoGradMode grad(true);
      y = replay->block(input);
    }
    if (y.requires_grad()) torch::autograd::backward({y}, {grad_outputs[0]});  // else nothing in it trains
    return {x.requires_grad() ? input.grad() : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor checkpointed(Block block, const at::Tensor& x) {
  if (!at::GradMode::is_enabled()) return block(x);
  auto replay = c10::make_intrusive<Replay>();
  replay->block = std::move(block);
  replay->generator = at::globalContext().defaultGenerator(x.device());
  {
    const std::lock_guard<std::mutex> lock(replay->generator.mutex());
    replay->generator_state = replay->generator.get_state();
  }
  replay->autocast = at::autocast::is_autocast_enabled(x.device().type());
  replay->autocast_dtype = at::autocast::get_autocast_dtype(x.device().type());
  const auto anchor = at::empty({0}, x.options().dtype(at::kFloat)).requires_grad_(!x.requires_grad());
  return CheckpointFunction::apply(x, anchor, std::move(replay));
}

}  // namespace linearize::kernels
