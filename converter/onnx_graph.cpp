#include "converter/onnx_graph.h"

#include <cmath>
#include <limits>

#include "formats/error.h"
#include "kernels/rope.h"

namespace linearize {

using onnx_model::ElementType;

namespace {
std::string number_key(std::int64_t v) { return v < 0 ? "m" + std::to_string(-v) : std::to_string(v); }
constexpr float kMinusInfinity = -std::numeric_limits<float>::infinity();
}  // namespace

std::string OnnxOps::i64(const std::vector<std::int64_t>& values) {
  std::string key = "const_i64";
  for (const auto v : values) key += "_" + number_key(v);
  if (!model_.has_initializer(key)) model_.constant(key, values, {static_cast<std::int64_t>(values.size())});
  return key;
}

std::string OnnxOps::scalar_i64(std::int64_t value) {
  const std::string key = "const_i64_scalar_" + number_key(value);
  if (!model_.has_initializer(key)) model_.constant(key, std::vector<std::int64_t>{value}, {});
  return key;
}

std::string OnnxOps::f32(float value) {
  // The bits name the constant, so equal values share one and no two values collide.
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  const std::string key = "const_f32_" + std::to_string(bits);
  if (!model_.has_initializer(key)) model_.constant(key, std::vector<float>{value}, {});
  return key;
}

std::string OnnxOps::linear(const std::string& x, const std::string& weight, const std::string& bias) {
  // MatMul against W^T: ONNX's Gemm (transB) is 2-D only; a Transpose of a constant is folded once by the
  // runtime when it loads the graph.
  auto y = matmul(x, transpose(weight, {1, 0}));
  return bias.empty() ? y : add(y, bias);
}

std::string OnnxOps::rms_normalize(const std::string& x, double eps) {
  const auto mean_square = reduce_mean(mul(x, x), -1);
  return div(x, op("Sqrt", {add(mean_square, f32(static_cast<float>(eps)))}));
}

std::string OnnxOps::rms_norm(const std::string& x, const std::string& weight, double eps, NormStyle style) {
  const auto y = rms_normalize(x, eps);
  return mul(y, style == NormStyle::OnePlusWeight ? add(weight, f32(1.0f)) : weight);
}

std::string OnnxModelContext::weight(const std::string& name) {
  if (const auto it = weights.find(name); it != weights.end()) return it->second;
  const auto tensor = checkpoint.tensor(name);
  ElementType type;
  switch (tensor.scalar_type()) {
    case at::kFloat: type = ElementType::f32; break;
    case at::kBFloat16: type = ElementType::bf16; break;
    case at::kHalf: type = ElementType::f16; break;
    default: throw InputError(checkpoint.file_of(name), name, "has a dtype export-onnx does not take (F32, BF16, F16)");
  }
  model.initializer(name, type, tensor.sizes().vec(), tensor.data_ptr());
  const auto value = type == ElementType::f32 ? name : ops.cast(name, ElementType::f32);
  weights.emplace(name, value);
  return value;
}

std::pair<std::string, std::string> OnnxModelContext::rope_tables(const RopeConfig& rope, std::int64_t head_dim) {
  if (rope.type == RopeType::Dynamic)
    throw InputError(config.source, "rope_scaling.rope_type",
                     "dynamic RoPE rescales with the sequence length; export-onnx takes fixed frequencies only");
  const auto freqs = kernels::rope_frequencies(rope, head_dim, config.max_position_embeddings);
  const auto inv = freqs.inv_freq.contiguous();
  std::vector<float> values(inv.data_ptr<float>(), inv.data_ptr<float>() + inv.numel());
  std::string key = "rope_inv_freq";
  for (const float v : values) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    key += "_" + std::to_string(bits);
  }
  key += "_" + std::to_string(static_cast<std::uint64_t>(freqs.attention_scaling * 1e9));
  if (const auto it = cos_sin.find(key); it != cos_sin.end()) return it->second;
  const auto name = "rope_inv_freq_" + std::to_string(cos_sin.size());
  model.constant(name, values, {static_cast<std::int64_t>(values.size())});
  // transformers: freqs = positions (fp32) x inv_freq, emb = cat(freqs, freqs), cos/sin times attention scaling.
  const auto positions = ops.unsqueeze(ops.cast(position_ids, ElementType::f32), {-1});  // [B, S, 1]
  const auto f = ops.mul(positions, name);
  const auto emb = ops.unsqueeze(ops.concat({f, f}, -1), {1});  // [B, 1, S, rotary]
  auto cos = ops.op("Cos", {emb}), sin = ops.op("Sin", {emb});
  if (freqs.attention_scaling != 1.0) {
    const auto s = ops.f32(static_cast<float>(freqs.attention_scaling));
    cos = ops.mul(cos, s);
    sin = ops.mul(sin, s);
  }
  return cos_sin.emplace(key, std::make_pair(cos, sin)).first->second;
}

std::string OnnxModelContext::mask_of_tokens() {
  if (!token_mask) {
    const auto S = ops.dim(input_ids, 1);
    const auto last = ops.slice(attention_mask, 1, ops.op("Neg", {S}), ops.i64({std::numeric_limits<std::int64_t>::max()}));
    token_mask = ops.unsqueeze(ops.cast(last, ElementType::f32), {1, 3});
  }
  return *token_mask;
}

std::string OnnxLayer::weight(names::LayerModule module) { return context_.weight(names::weight(layer_, module)); }

std::string OnnxLayer::bias(names::LayerModule module) {
  const auto name = names::bias(layer_, module);
  return context_.checkpoint.contains(name) ? context_.weight(name) : std::string();
}

std::string OnnxLayer::recipe_tensor(const std::string& name) { return context_.weight(names::recipe_tensor(layer_, name)); }

OnnxLayer::Heads OnnxLayer::project_heads(const std::string& x) {
  using names::LayerModule;
  auto& o = ops();
  const auto& c = config();
  const auto heads = [&](LayerModule module, std::int64_t count) {
    const auto y = o.linear(x, weight(module), bias(module));
    return o.transpose(o.reshape(y, {0, 0, count, c.head_dim}), {0, 2, 1, 3});  // [B, count, S, D]
  };
  Heads h{heads(LayerModule::q_proj, c.num_attention_heads), heads(LayerModule::k_proj, c.num_key_value_heads),
          heads(LayerModule::v_proj, c.num_key_value_heads)};
  const auto q_norm = names::weight(layer_, LayerModule::q_norm);
  if (context_.checkpoint.contains(q_norm)) {
    h.q = o.rms_norm(h.q, context_.weight(q_norm), c.rms_norm_eps, c.block.norm);
    h.k = o.rms_norm(h.k, weight(LayerModule::k_norm), c.rms_norm_eps, c.block.norm);
  }
  return h;
}

std::string OnnxLayer::rope(const std::string& heads) {
  auto& o = ops();
  const auto& rope = config().rope_for(layer_);
  const std::int64_t D = config().head_dim, rotary = kernels::rotary_dim(rope, D), half = rotary / 2;
  const auto [cos, sin] = context_.rope_tables(rope, D);
  const auto rotated = rotary == D ? heads : o.slice(heads, -1, 0, rotary);
  // q cos + rotate_half(q) sin, rotate_half(x) = [-x2, x1] (transformers' apply_rotary_pos_emb).
  const auto x1 = o.slice(rotated, -1, 0, half), x2 = o.slice(rotated, -1, half, rotary);
  const auto turned = o.concat({o.neg(x2), x1}, -1);
  const auto out = o.add(o.mul(rotated, cos), o.mul(turned, sin));
  if (rotary == D) return out;
  return o.concat({out, o.slice(heads, -1, rotary, D)}, -1);
}

std::string OnnxLayer::project_output(const std::string& heads) {
  using names::LayerModule;
  auto& o = ops();
  const auto flat = o.reshape(o.transpose(heads, {0, 2, 1, 3}), {0, 0, -1});
  return o.linear(flat, weight(LayerModule::o_proj), bias(LayerModule::o_proj));
}

std::string OnnxLayer::repeat_kv(const std::string& heads) {
  const auto& c = config();
  if (c.kv_groups() == 1) return heads;
  auto& o = ops();
  const auto expanded = o.op("Expand", {o.unsqueeze(heads, {2}), o.i64({1, 1, c.kv_groups(), 1, 1})});
  return o.reshape(expanded, {0, c.num_attention_heads, -1, c.head_dim});
}

std::string OnnxLayer::hedgehog_map(const std::string& heads, const std::string& weight) {
  auto& o = ops();
  const auto y = o.matmul(heads, weight);  // [B, H, S, d] x [H, d, f] -> [B, H, S, f]
  return o.concat({o.softmax(y), o.softmax(o.neg(y))}, -1);
}

std::string OnnxLayer::state(const std::string& kind, const std::vector<Dim>& shape) {
  const auto name = "past." + std::to_string(layer_) + "." + kind;
  context_.model.graph().input(name, ElementType::f32, shape);
  return name;
}

void OnnxLayer::set_state(const std::string& kind, const std::string& value, const std::vector<Dim>& shape) {
  const auto name = "present." + std::to_string(layer_) + "." + kind;
  context_.model.graph().rename(value, name);
  context_.model.graph().output(name, ElementType::f32, shape);
}

std::pair<std::string, std::string> OnnxLayer::window_cache() {
  const auto& c = config();
  const std::string past = "past_key_values." + std::to_string(layer_);
  const std::string n = "past_window_" + std::to_string(layer_);
  context_.model.graph().input(past + ".key", ElementType::f32, {"batch", c.num_key_value_heads, n, c.head_dim});
  context_.model.graph().input(past + ".value", ElementType::f32, {"batch", c.num_key_value_heads, n, c.head_dim});
  return {past + ".key", past + ".value"};
}

void OnnxLayer::set_window_cache(const std::string& key, const std::string& value) {
  const auto& c = config();
  const std::string present = "present." + std::to_string(layer_);
  const std::string n = "present_window_" + std::to_string(layer_);
  for (const auto& [part, v] : {std::pair{".key", key}, std::pair{".value", value}}) {
    context_.model.graph().rename(v, present + part);
    context_.model.graph().output(present + part, ElementType::f32, {"batch", c.num_key_value_heads, n, c.head_dim});
  }
}

OnnxLinearAttention onnx_linear_attention(OnnxOps& ops, const std::string& q, const std::string& k, const std::string& v,
                                          const std::optional<std::string>& log_decay, const std::string& state,
                                          const std::optional<std::string>& normalizer,
                                          const OnnxLinearAttentionOptions& opt) {
  const std::int64_t Hkv = opt.kv_heads, G = opt.groups, K = opt.key_dim, V = opt.value_dim;
  // Chunks of C = min(S, chunk_size) tokens (a decode step is one chunk of one token). The call is padded at
  // the end to N C tokens with k = v = 0 and log decay 0, which leave the state as it is; the padded rows'
  // outputs are cut off.
  const auto S = ops.dim(q, 2);
  const auto C = ops.op("Min", {S, ops.i64({opt.chunk_size})});
  const auto N = ops.div(ops.add(S, ops.sub(C, ops.i64({1}))), C);  // ceil(S / C)
  const auto pads = ops.concat({ops.i64({0, 0, 0, 0, 0, 0}), ops.sub(ops.mul(N, C), S), ops.i64({0})}, 0);
  // q [B, Hkv, G, N, C, K]; k, v, log decay [B, Hkv, 1, N, C, .]: GQA broadcasts over G, nothing is repeated.
  const auto chunks = [&](const std::string& x, std::int64_t heads, std::int64_t group, std::int64_t width) {
    const auto padded = ops.op("Pad", {x, pads});
    return ops.op("Reshape", {padded, ops.concat({ops.i64({0, heads, group}), N, C, ops.i64({width})}, 0)});
  };
  std::vector<std::string> scan_inputs{chunks(q, Hkv, G, K), chunks(k, Hkv, 1, K), chunks(v, Hkv, 1, V)};
  const std::int64_t decay_width = log_decay ? (opt.decay_per_channel ? K : 1) : 0;
  if (log_decay) scan_inputs.push_back(chunks(*log_decay, Hkv, 1, decay_width));

  auto body_graph = ops.graph().subgraph("linear_attention_chunk");
  auto body = ops.in(*body_graph);
  auto& bg = body.graph();
  const auto name = [&](const std::string& hint) { return bg.fresh_name(hint); };
  const auto s_in = name("state_in"), z_in = name("normalizer_in");
  bg.input(s_in, ElementType::f32, {"batch", Hkv, K, V});
  if (normalizer) bg.input(z_in, ElementType::f32, {"batch", Hkv, K});
  const auto qc = name("q_chunk"), kc = name("k_chunk"), vc = name("v_chunk"), gc = name("log_decay_chunk");
  bg.input(qc, ElementType::f32, {"batch", Hkv, G, "chunk", K});
  bg.input(kc, ElementType::f32, {"batch", Hkv, 1, "chunk", K});
  bg.input(vc, ElementType::f32, {"batch", Hkv, 1, "chunk", V});
  if (log_decay) bg.input(gc, ElementType::f32, {"batch", Hkv, 1, "chunk", decay_width});

  // Causal mask of the chunk, t >= s, [C, C].
  const auto c_len = body.op("Squeeze", {body.dim(qc, 3)});
  const auto steps = body.op("Range", {body.scalar_i64(0), c_len, body.scalar_i64(1)});
  const auto causal = body.op("GreaterOrEqual", {body.unsqueeze(steps, {1}), body.unsqueeze(steps, {0})});
  const auto s5 = body.unsqueeze(s_in, {2});  // [B, Hkv, 1, K, V]
  const auto k_t = body.transpose(kc, {0, 1, 2, 4, 3});
  std::string q_in = qc, scores, k_write = kc, decay_total;
  if (!log_decay) {
    scores = body.op("Where", {causal, body.matmul(qc, k_t), body.f32(0.0f)});
  } else {
    // b_t: cumulative log decay inside the chunk; every exponent below is b_t - b_s <= 0 for s <= t.
    const auto b = body.op("CumSum", {gc, body.scalar_i64(3)});
    const auto b_last = body.slice(b, 3, -1, std::numeric_limits<std::int64_t>::max());  // [B, Hkv, 1, 1, Kg]
    q_in = body.mul(qc, body.exp(b));
    if (decay_width == 1) {
      const auto diff = body.sub(b, body.transpose(b, {0, 1, 2, 4, 3}));  // [B, Hkv, 1, C, C]
      const auto decay = body.exp(body.op("Where", {causal, diff, body.f32(kMinusInfinity)}));
      scores = body.mul(body.matmul(qc, k_t), decay);
    } else {
      // Per channel: sum_c q_tc k_sc exp(b_tc - b_sc) over [C, C, K] (the exact decays of a chunk).
      const auto diff = body.sub(body.unsqueeze(b, {4}), body.unsqueeze(b, {3}));  // [B, Hkv, 1, C, C, K]
      const auto decay = body.exp(body.op("Where", {body.unsqueeze(causal, {-1}), diff, body.f32(kMinusInfinity)}));
      scores = body.reduce_sum(body.mul(body.mul(body.unsqueeze(qc, {4}), decay), body.unsqueeze(kc, {3})), -1, false);
    }
    k_write = body.mul(kc, body.exp(body.sub(b_last, b)));  // k_s exp(b_last - b_s)
    decay_total = body.exp(b_last);
  }
  auto numerator = body.add(body.matmul(q_in, s5), body.matmul(scores, vc));  // [B, Hkv, G, C, V]
  const auto scale = body.f32(static_cast<float>(opt.scale));
  std::string out = body.mul(numerator, scale);
  auto s_next = body.matmul(body.transpose(k_write, {0, 1, 2, 4, 3}), vc);
  if (log_decay) s_next = body.add(body.mul(s5, body.transpose(decay_total, {0, 1, 2, 4, 3})), s_next);
  else s_next = body.add(s5, s_next);
  std::string z_next;
  if (normalizer) {
    const auto z5 = body.unsqueeze(z_in, {2, 3});  // [B, Hkv, 1, 1, K]
    const auto den = body.add(body.reduce_sum(body.mul(q_in, z5), -1), body.reduce_sum(scores, -1));
    out = body.div(out, body.add(body.mul(den, scale), body.f32(static_cast<float>(opt.eps))));
    const auto written = body.reduce_sum(k_write, 3);  // [B, Hkv, 1, 1, K]
    z_next = body.squeeze(body.add(log_decay ? body.mul(z5, decay_total) : z5, written), {2, 3});
  }
  const auto s_out = name("state_out"), z_out = name("normalizer_out"), o_out = name("o_chunk");
  bg.rename(body.squeeze(s_next, {2}), s_out);
  bg.output(s_out, ElementType::f32, {"batch", Hkv, K, V});
  if (normalizer) {
    bg.rename(z_next, z_out);
    bg.output(z_out, ElementType::f32, {"batch", Hkv, K});
  }
  bg.rename(out, o_out);
  bg.output(o_out, ElementType::f32, {"batch", Hkv, G, "chunk", V});

  std::vector<std::string> inputs{state};
  if (normalizer) inputs.push_back(*normalizer);
  inputs.insert(inputs.end(), scan_inputs.begin(), scan_inputs.end());
  const auto n_scan = static_cast<std::int64_t>(scan_inputs.size());
  const auto results = ops.graph().node(
      "Scan", inputs, normalizer ? 3 : 2,
      {{"body", std::shared_ptr<const onnx_model::Graph>(body_graph)},
       {"num_scan_inputs", n_scan},
       {"scan_input_axes", std::vector<std::int64_t>(static_cast<std::size_t>(n_scan), 3)},
       {"scan_output_axes", std::vector<std::int64_t>{3}}});
  OnnxLinearAttention result;
  result.state = results[0];
  if (normalizer) result.normalizer = results[1];
  // [B, Hkv, G, N, C, V] -> [B, Hq, N C, V] -> the call's S rows.
  const auto o_all = ops.reshape(results.back(), {0, Hkv * G, -1, V});
  result.o = ops.slice(o_all, 2, ops.i64({0}), S);
  return result;
}

WindowParts onnx_window_parts(OnnxOps& ops, const std::string& q, const std::string& keys, const std::string& values,
                              const std::string& cached, std::int64_t window, double scale, std::int64_t kv_heads,
                              std::int64_t groups, std::int64_t head_dim) {
  const auto S = ops.dim(q, 2), T = ops.dim(keys, 2);
  // Query i sits at index cached + i of the keys; it sees key j when 0 <= cached + i - j < window.
  const auto rows = ops.add(ops.op("Range", {ops.scalar_i64(0), ops.squeeze(S, {0}), ops.scalar_i64(1)}), cached);
  const auto cols = ops.op("Range", {ops.scalar_i64(0), ops.squeeze(T, {0}), ops.scalar_i64(1)});
  WindowParts parts;
  parts.back = ops.sub(ops.unsqueeze(rows, {1}), ops.unsqueeze(cols, {0}));  // [S, T]
  const auto visible = ops.op("And", {ops.op("GreaterOrEqual", {parts.back, ops.scalar_i64(0)}),
                                      ops.op("Less", {parts.back, ops.scalar_i64(window)})});
  const auto grouped = [&](const std::string& x, std::int64_t g) { return ops.reshape(x, {0, kv_heads, g, -1, head_dim}); };
  const auto q5 = grouped(q, groups), k5 = grouped(keys, 1), v5 = grouped(values, 1);
  const auto scores = ops.mul(ops.matmul(q5, ops.transpose(k5, {0, 1, 2, 4, 3})), ops.f32(static_cast<float>(scale)));
  const auto masked = ops.op("Where", {visible, scores, ops.f32(kMinusInfinity)});
  // The row max c_i over the window (the key i itself is always visible, so it is finite).
  const auto weights = ops.exp(ops.sub(masked, ops.reduce_max(masked, -1)));
  const auto heads = kv_heads * groups;
  parts.numerator = ops.reshape(ops.matmul(weights, v5), {0, heads, -1, head_dim});
  parts.denominator = ops.reshape(ops.reduce_sum(weights, -1), {0, heads, -1, 1});
  return parts;
}

}  // namespace linearize
