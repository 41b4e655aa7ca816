// SUPRA (Mercat et al. 2024, arXiv 2405.06640, TRI-ML/linear_open_lm; docs/recipes.md#supra): phi(x) = RoPE(ReLU(xW + b))
// with one dense map over all heads for queries and one for keys, a fixed decay per head
// gamma_h = exp(-slope_h) from the ALiBi slopes, no denominator, k scaled by 1/sqrt(d), and a GroupNorm
// per head (no affine) before W_O:  S_t = gamma S_{t-1} + phi(k_t) v_t^T,  o_t = GroupNorm(phi(q_t) S_t).
// W starts as the identity and b at zero (the reference starts from a random Linear and uptrains 20-100B
// tokens; the identity keeps a training-free conversion closest to the source).
#include <cmath>

#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/mixer_program.h"

namespace linearize {
namespace {

// ALiBi slopes (Press et al. 2022): 2^(-8i/n) for i = 1..n when n is a power of two, else the slopes of
// the nearest power of two below, completed with every other slope of the next power of two.
std::vector<double> alibi_slopes(std::int64_t n) {
  auto power_of_two = [](std::int64_t m) {
    std::vector<double> s;
    const double start = std::pow(2.0, -8.0 / static_cast<double>(m));
    for (std::int64_t i = 0; i < m; ++i) s.push_back(std::pow(start, static_cast<double>(i + 1)));
    return s;
  };
  const auto closest = static_cast<std::int64_t>(std::pow(2.0, std::floor(std::log2(static_cast<double>(n)))));
  auto slopes = power_of_two(closest);
  if (closest != n) {
    const auto extra = power_of_two(2 * closest);
    for (std::int64_t i = 0; i < n - closest; ++i) slopes.push_back(extra[static_cast<std::size_t>(2 * i)]);
  }
  return slopes;
}

struct SupraProgram {
  static constexpr const char* kind = "supra";

  template <class Ops>
  static typename Ops::Value run(Ops& o, const typename Ops::Value& x) {
    const std::int64_t H = o.heads(), d = o.head_dim();
    const auto h = o.project_heads(x);
    // phi over the concatenated heads of a token (in fp32 at least), back into heads, then RoPE.
    const auto phi = [&](const auto& heads, const char* weight, const char* bias) {
      return o.rope(o.split_heads(o.relu(o.linear(o.fp32(o.merge_heads(heads)), weight, bias)), d));
    };
    recipes::Recurrence state{H, d, d};  // per query head: the maps' keys are repeated to them
    state.scale = 1.0 / std::sqrt(static_cast<double>(d));
    state.decay = recipes::Decay::fixed;
    for (const double slope : alibi_slopes(H)) state.fixed_log_decay.push_back(-slope);
    const auto lin = o.linear_attention(phi(h.q, names::kFeatureMapQWeight, names::kFeatureMapQBias),
                                        o.repeat_kv(phi(h.k, names::kFeatureMapKWeight, names::kFeatureMapKBias)),
                                        o.repeat_kv(h.v), {}, state);
    o.capture(names::MixerCapture::o_lin, lin);
    // GroupNorm(num_groups = H, affine = False) over the concatenated heads: each head normalised alone.
    return o.project_output(o.layer_normalize(o.fp32(lin), o.number("groupnorm_eps")));
  }
};

}  // namespace

Recipe supra_recipe() {
  Recipe r;
  r.name = "supra";
  r.summary = "RoPE(ReLU(xW+b)) maps, fixed ALiBi-slope decay per head, GroupNorm per head, no denominator";
  r.params = {{"groupnorm_eps", 1e-5, "epsilon of the per-head GroupNorm"}};
  r.new_tensors = [](const LayerContext& ctx) {
    const std::int64_t q = ctx.config.num_attention_heads * ctx.config.head_dim;
    const std::int64_t k = ctx.config.num_key_value_heads * ctx.config.head_dim;
    auto eye = [](std::int64_t n) { return [n] { return at::eye(n, at::kFloat); }; };
    return std::vector<NewTensor>{{names::kFeatureMapQWeight, {q, q}, eye(q)}, recipes::filled(names::kFeatureMapQBias, {q}, 0.0),
                                  {names::kFeatureMapKWeight, {k, k}, eye(k)}, recipes::filled(names::kFeatureMapKBias, {k}, 0.0)};
  };
  return recipes::program_recipe<SupraProgram>(std::move(r));
}

}  // namespace linearize
