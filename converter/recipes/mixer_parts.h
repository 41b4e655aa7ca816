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

}  // namespace linearize::recipes
