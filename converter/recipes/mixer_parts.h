// The new tensors several recipes declare alike (their conversion-time values).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "converter/names.h"
#include "converter/recipes/recipe.h"

namespace linearize::recipes {

// A new tensor of `shape` holding `value` everywhere at conversion (fp32).
NewTensor filled(std::string name, std::vector<std::int64_t> shape, double value);

// Hedgehog feature maps of LoLCATs and Hedgehog: feature_map_q.weight and feature_map_k.weight, [H, d, f]
// per query head, truncated-identity init (LoLCATs --lk_zero_init); f = params.feature_dim or d / 2.
std::vector<NewTensor> hedgehog_map_tensors(const LayerContext& ctx);
std::int64_t hedgehog_feature_dim(std::int64_t head_dim, const RecipeParams& params);  // f

// A short causal conv's weight [channels, K] starting as the identity tap (the last tap 1, the others 0), so
// the conv passes its input through at conversion (mamba2, gated-deltanet).
NewTensor identity_conv(std::string name, std::int64_t channels, std::int64_t K);

// An output gate's projection z_proj.weight [rows, hidden] ~ N(0, 0.02^2), Mamba's in_proj init: small and
// nonzero, so gradients reach the rest through silu(z). Seeded by the layer and `salt` (one per recipe): the
// same on every conversion, different between layers.
NewTensor gate_projection(const LayerContext& ctx, std::int64_t rows, std::uint64_t salt);

// x with softplus(x) = y > 0 (a dt bias that starts dt at y).
double softplus_inverse(double y);

}  // namespace linearize::recipes
