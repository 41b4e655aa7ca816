// Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost", arXiv
// 1604.06174; torch.utils.checkpoint's reentrant form): y = block(x) runs as in training and drops the
// block's intermediates at once, keeping only x; the backward runs the block again from x and
// back-propagates through that. A
// model of N blocks then holds N block inputs plus one block's intermediates, not N blocks' worth, for
// about one more forward of compute.
//
// The recomputation replays what the forward saw, so it computes the same values: the default generator
// of x's device is set back to its state at the forward (dropout draws the same masks) and restored after,
// and autocast is set as it was at the forward (the backward usually runs outside it).
#pragma once

#include <functional>

#include <ATen/ATen.h>

namespace linearize::kernels {

using Block = std::function<at::Tensor(const at::Tensor& x)>;

// block(x), checkpointed when grad mode is on (otherwise simply block(x)). The block's trainable tensors
// get their gradients when the backward reaches it, as leaves of the recomputed graph; x gets its gradient
// through the returned tensor when x requires grad. `block` is kept until the backward: it must capture
// what it uses by value or by a reference that outlives the backward, and compute then what it computed
// in the forward (a training flag switched off in between would change it). It must return a new tensor,
// not a view of x. One backward only (no create_graph).
at::Tensor checkpointed(Block block, const at::Tensor& x);

}  // namespace linearize::kernels
