// verify's prompts: the built-in ones cut at the chunk and window edges (verify.h), and the samples of them that
// the costlier checks take.
#pragma once

#include <cstddef>
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "converter/verify/check.h"

namespace linearize::checks {

// Where the forms' and the caches' behaviour changes, which verify's prompts and split points must cross: the
// chunked form's chunk (kernels' default, the chunk every converted mixer's chunked form runs) and every window
// the model has (its recipe's window parameters, RecipeParamRole::window, and the source's sliding layers).
struct SequenceEdges {
  std::int64_t chunk;
  std::set<std::int64_t> windows;
};
SequenceEdges sequence_edges(const ModelConfig& config);

// L1 runs on a bounded sample of the prompts, so its cost does not grow with --text: each prompt's first
// kSampleMaxTokens tokens (the parallel form is O(T^2)), prompts taken in order until kSampleTokenBudget
// tokens. The built-in prompts fit whole; L2 and L4 see every prompt.
inline constexpr std::int64_t kSampleMaxTokens = 512;
inline constexpr std::int64_t kSampleTokenBudget = 640;
Prompts l1_sample(const Prompts& prompts);

// The per-layer token-by-token runs (one call per token and layer, each a full pass over the layer's state)
// take the longest sampled prompts first, until kDecodeTokenBudget tokens (the last one cut short): the
// built-in set's longest prompt (2 max(W, C) + C + 1 = 193 tokens at the default window and chunk, the
// window cache evicting twice) whole.
inline constexpr std::int64_t kDecodeTokenBudget = 200;
// Those runs as (index into `sample`, tokens), in prompt order: the last one takes its first tokens only (a
// prefix of a causal output is the output of the prefix).
std::vector<std::pair<std::size_t, std::int64_t>> decode_sample(const Prompts& sample);

// L4's generation prompts: the first tokens of the first few prompts that long (one length, so they decode as
// one batch).
Prompts generation_prompts(const Prompts& prompts);

// options.prompts, or the built-in ones when none are given; an empty prompt or an id outside the vocabulary
// is InputError naming where the prompts came from.
VerifyPrompts checked_prompts(const VerifyOptions& options, const ModelConfig& config);

}  // namespace linearize::checks
