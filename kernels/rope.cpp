#include "kernels/rope.h"

#include <algorithm>
#include <cmath>

namespace linearize {

const char* rope_type_name(RopeType type) {
  switch (type) {
    case RopeType::Default: return "default";
    case RopeType::Linear: return "linear";
    case RopeType::Dynamic: return "dynamic";
    case RopeType::Llama3: return "llama3";
    case RopeType::Yarn: return "yarn";
    case RopeType::LongRope: return "longrope";
  }
  return "?";
}

namespace kernels {
namespace {

// 1 / base^(2i/d), i = 0..d/2-1, in fp32 like transformers' _compute_default_rope_parameters.
at::Tensor default_inv_freq(double base, std::int64_t dim) {
  const auto exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  return 1.0 / at::pow(base, exponents);
}

// Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between (smooth ramp on wavelength).
at::Tensor llama3_inv_freq(const RopeConfig& rope, std::int64_t dim) {
  const auto inv_freq = default_inv_freq(rope.theta, dim);
  const double old_context = static_cast<double>(*rope.original_max_position_embeddings);
  const double low = *rope.low_freq_factor, high = *rope.high_freq_factor;
  const double low_freq_wavelen = old_context / low, high_freq_wavelen = old_context / high;
  const auto wavelen = 2 * M_PI / inv_freq;
  auto scaled = at::where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq);
  const auto smooth = (old_context / wavelen - low) / (high - low);
  const auto smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
  const auto medium = wavelen.ge(high_freq_wavelen).logical_and(wavelen.le(low_freq_wavelen));
  return at::where(medium, smoothed, scaled);
}

// YaRN (Peng et al. 2023, eq. 17-20): interpolate low frequencies, extrapolate high ones, linear ramp
// between the correction dims found for beta_fast / beta_slow rotations.
RopeFrequencies yarn_frequencies(const RopeConfig& rope, std::int64_t dim) {
  const double base = rope.theta, factor = rope.factor;
  const auto original = static_cast<double>(*rope.original_max_position_embeddings);
  auto get_mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  double attention = 0;
  if (rope.attention_factor) attention = *rope.attention_factor;
  else if (rope.mscale && rope.mscale_all_dim && *rope.mscale != 0 && *rope.mscale_all_dim != 0)
    attention = get_mscale(factor, *rope.mscale) / get_mscale(factor, *rope.mscale_all_dim);
  else attention = get_mscale(factor, 1.0);

  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) * std::log(original / (rotations * 2 * M_PI))) / (2 * std::log(base));
  };
  double low = correction_dim(rope.beta_fast), high = correction_dim(rope.beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp

  const auto pos_freqs = at::pow(base, at::arange(0, dim, 2, at::kFloat) / static_cast<double>(dim));
  const auto extrapolation = 1.0 / pos_freqs;
  const auto interpolation = 1.0 / (factor * pos_freqs);
  const auto ramp = ((at::arange(dim / 2, at::kFloat) - low) / (high - low)).clamp(0, 1);
  const auto extrapolation_factor = 1 - ramp;
  return {interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor, attention};
}

// LongRoPE (Ding et al. 2024; Phi-3): 1 / (f_i base^(2i/d)) with f the short factors, or the long ones past the
// original context, and cos/sin scaled by attention_factor, by default sqrt(1 + ln(s) / ln(L_orig)) for the extension
// s = factor (else max_position_embeddings / L_orig), 1 when s <= 1 (transformers' _compute_longrope_parameters).
RopeFrequencies longrope_frequencies(const RopeConfig& rope, std::int64_t dim, std::int64_t max_position_embeddings,
                                     std::int64_t seq_len) {
  const auto original = *rope.original_max_position_embeddings;
  const auto& ext = seq_len > original ? rope.long_factor : rope.short_factor;
  const auto factors = at::tensor(std::vector<float>(ext.begin(), ext.end()));  // torch.tensor(list, float32)
  const auto exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  double attention = 1.0;
  if (rope.attention_factor) {
    attention = *rope.attention_factor;
  } else {
    const double factor = rope.factor > 0 ? rope.factor : static_cast<double>(max_position_embeddings) / static_cast<double>(original);
    if (factor > 1.0) attention = std::sqrt(1 + std::log(factor) / std::log(static_cast<double>(original)));
  }
  return {1.0 / (factors * at::pow(rope.theta, exponents)), attention};
}

}  // namespace

bool rope_depends_on_length(const RopeConfig& rope) {
  return rope.type == RopeType::Dynamic || (rope.type == RopeType::LongRope && rope.long_factor != rope.short_factor);
}

std::int64_t rotary_dim(const RopeConfig& rope, std::int64_t head_dim) {
  return static_cast<std::int64_t>(static_cast<double>(head_dim) * rope.partial_rotary_factor);
}

RopeFrequencies rope_frequencies(const RopeConfig& rope, std::int64_t head_dim, std::int64_t max_position_embeddings,
                                 std::int64_t seq_len) {
  const std::int64_t dim = rotary_dim(rope, head_dim);
  switch (rope.type) {
    case RopeType::Default: return {default_inv_freq(rope.theta, dim), 1.0};
    case RopeType::Linear: return {default_inv_freq(rope.theta, dim) / rope.factor, 1.0};
    case RopeType::Dynamic: {
      // Dynamic NTK: base' = base (factor L / L_max - (factor - 1))^(d / (d - 2)) once L > L_max.
      const double len = static_cast<double>(std::max(seq_len, max_position_embeddings));
      const double max_len = static_cast<double>(max_position_embeddings);
      const double base = rope.theta * std::pow(rope.factor * len / max_len - (rope.factor - 1),
                                                static_cast<double>(dim) / static_cast<double>(dim - 2));
      return {default_inv_freq(base, dim), 1.0};
    }
    case RopeType::Llama3: return {llama3_inv_freq(rope, dim), 1.0};
    case RopeType::Yarn: return yarn_frequencies(rope, dim);
    case RopeType::LongRope: return longrope_frequencies(rope, dim, max_position_embeddings, seq_len);
  }
  return {};
}

RopeCosSin rope_cos_sin(const RopeFrequencies& freqs, const at::Tensor& positions, at::ScalarType dtype) {
  const auto inv_freq = freqs.inv_freq.to(positions.device());
  const auto angles = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;  // [T, rotary/2]
  const auto emb = at::cat({angles, angles}, -1);
  auto cos = emb.cos(), sin = emb.sin();
  if (freqs.attention_scaling != 1.0) {
    cos = cos * freqs.attention_scaling;
    sin = sin * freqs.attention_scaling;
  }
  return {cos.to(dtype), sin.to(dtype)};
}

at::Tensor apply_rope(const at::Tensor& x, const RopeCosSin& cs) {
  const std::int64_t rot = cs.cos.size(-1), dim = x.size(-1);
  if (rot == 0) return x;  // a layer without RoPE (rotary_dim 0)
  const auto rotated = rot == dim ? x : x.narrow(-1, 0, rot);
  const auto halves = rotated.chunk(2, -1);
  const auto rotate_half = at::cat({-halves[1], halves[0]}, -1);
  const auto out = rotated * cs.cos + rotate_half * cs.sin;
  return rot == dim ? out : at::cat({out, x.narrow(-1, rot, dim - rot)}, -1);
}

}  // namespace kernels
}  // namespace linearize
