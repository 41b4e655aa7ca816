// Rotary position embeddings (Su et al. 2021, RoFormer eq. 34) in Hugging Face's half-split layout:
// q' = q cos + rotate_half(q) sin with rotate_half(x) = [-x2, x1]; no Q/K row permutation is needed.
// The inverse frequencies follow transformers' modeling_rope_utils.py op by op (in fp32, as it does), so
// cos/sin equal the reference's bit for bit on CPU.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

namespace linearize {

enum class RopeType { Default, Linear, Dynamic, Llama3, Yarn, LongRope };
const char* rope_type_name(RopeType type);

struct RopeConfig {
  RopeType type = RopeType::Default;
  double theta = 10000.0;
  double partial_rotary_factor = 1.0;  // 0: no channel rotates (a NoPE layer)
  double factor = 1.0;                                            // linear, dynamic, llama3, yarn
  std::optional<double> low_freq_factor, high_freq_factor;        // llama3
  std::optional<std::int64_t> original_max_position_embeddings;   // llama3, yarn
  std::optional<double> attention_factor;                         // yarn (default 0.1 ln(factor) + 1)
  std::optional<double> mscale, mscale_all_dim;                   // yarn (DeepSeek-style attention factor)
  double beta_fast = 32.0, beta_slow = 1.0;                       // yarn
  bool truncate = true;                                           // yarn: round the correction range
  std::vector<double> short_factor, long_factor;                  // longrope: one per rotary frequency
};

namespace kernels {

// Whether the rotation of position t depends on the sequence's length: dynamic NTK past max_position_embeddings,
// LongRoPE's switch to long_factor past original_max_position_embeddings (where the two factor lists differ).
bool rope_depends_on_length(const RopeConfig& rope);

struct RopeFrequencies {
  at::Tensor inv_freq;             // fp32 [rotary_dim / 2]
  double attention_scaling = 1.0;  // multiplies cos and sin (yarn's attention factor)
};

// `seq_len` matters only where rope_depends_on_length: dynamic NTK rescales the base once a sequence passes
// `max_position_embeddings`, LongRoPE takes long_factor once it passes `original_max_position_embeddings`
// (transformers' dynamic_rope_update and longrope_frequency_update: seq_len = max position + 1).
RopeFrequencies rope_frequencies(const RopeConfig& rope, std::int64_t head_dim, std::int64_t max_position_embeddings,
                                 std::int64_t seq_len = 0);

std::int64_t rotary_dim(const RopeConfig& rope, std::int64_t head_dim);

struct RopeCosSin {
  at::Tensor cos, sin;  // [T, rotary_dim] in the requested dtype
};

// cos/sin for absolute positions [T] (int64), computed in fp32 then cast, as transformers does.
RopeCosSin rope_cos_sin(const RopeFrequencies& freqs, const at::Tensor& positions, at::ScalarType dtype);

// x: [B, H, T, D]; rotates the first rotary_dim channels of each head, leaves the rest (partial rotary).
at::Tensor apply_rope(const at::Tensor& x, const RopeCosSin& cs);

}  // namespace kernels
}  // namespace linearize
