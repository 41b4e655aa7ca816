#include "converter/onnx_graph.h"

#include <cmath>
#include <functional>
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
  auto y = is_half(weight) ? cast(matmul(cast(x, ElementType::f16), transpose(weight, {1, 0})), ElementType::f32)
                           : matmul(x, transpose(weight, {1, 0}));
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

std::pair<std::string, ElementType> OnnxModelContext::stored(const std::string& name) {
  if (const auto it = stored_types.find(name); it != stored_types.end()) return {name, it->second};
  const auto tensor = checkpoint.tensor(name);
  ElementType type;
  switch (tensor.scalar_type()) {
    case at::kFloat: type = ElementType::f32; break;
    case at::kBFloat16: type = ElementType::bf16; break;
    case at::kHalf: type = ElementType::f16; break;
    default: throw InputError(checkpoint.file_of(name), name, "has a dtype export-onnx does not take (F32, BF16, F16)");
  }
  // A view of the mapping (or a copy, for an unaligned tensor), held until the graph is written.
  auto held = std::make_shared<at::Tensor>(tensor);
  model.initializer(name, type, tensor.sizes().vec(), held->data_ptr(), std::shared_ptr<const void>(held, held.get()),
                    [this, name] { checkpoint.release(name); });
  stored_types.emplace(name, type);
  return {name, type};
}

std::string OnnxModelContext::weight(const std::string& name) {
  if (const auto it = weights.find(name); it != weights.end()) return it->second;
  const auto [initializer, type] = stored(name);
  const auto value = type == ElementType::f32 ? initializer : ops.cast(initializer, ElementType::f32);
  weights.emplace(name, value);
  return value;
}

std::string OnnxModelContext::matrix(const std::string& name) {
  if (!fp16_matrices) return weight(name);
  if (half_matrices.count(name)) return name;
  const auto source = checkpoint.tensor(name);
  auto half = std::make_shared<at::Tensor>(source.to(at::kHalf).contiguous());
  checkpoint.release(name);
  if (!half->isfinite().all().item<bool>())
    throw InputError(checkpoint.file_of(name), name, "has values beyond fp16's range (65504): export it with --dtype fp32");
  const void* data = half->data_ptr();
  model.initializer(name, ElementType::f16, half->sizes().vec(), data, std::shared_ptr<const void>(half, half.get()));
  half_matrices.insert(name);
  return name;
}

std::pair<std::string, std::string> OnnxModelContext::rope_tables(const RopeConfig& rope, std::int64_t head_dim) {
  if (kernels::rope_depends_on_length(rope))
    throw InputError(config.source, "rope_scaling.rope_type",
                     std::string(rope_type_name(rope.type)) + " RoPE rescales with the sequence length; export-onnx takes fixed frequencies only");
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

std::string OnnxLayer::weight(names::LayerModule module) {
  using names::LayerModule;
  const auto& c = config();
  const bool attention = module == LayerModule::q_proj || module == LayerModule::k_proj || module == LayerModule::v_proj;
  if (c.block.fused_projections && (attention || module == LayerModule::gate_proj || module == LayerModule::up_proj)) {
    // Phi-3: the rows of qkv_proj = [q; k; v] or gate_up_proj = [gate; up] (a Slice of a constant, folded on load).
    const std::int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim, ff = c.intermediate_size;
    const auto fused = context_.matrix(names::weight(layer_, attention ? LayerModule::qkv_proj : LayerModule::gate_up_proj));
    const std::int64_t start = module == LayerModule::k_proj ? q : module == LayerModule::v_proj ? q + kv : module == LayerModule::up_proj ? ff : 0;
    const std::int64_t rows = module == LayerModule::q_proj ? q : attention ? kv : ff;
    const auto part = ops().slice(fused, 0, start, start + rows);
    if (ops().is_half(fused)) context_.half_matrices.insert(part);  // still fp16 values: linear() multiplies in fp16
    return part;
  }
  const auto name = names::weight(layer_, module);
  switch (module) {
    case LayerModule::q_proj: case LayerModule::k_proj: case LayerModule::v_proj: case LayerModule::o_proj:
    case LayerModule::gate_proj: case LayerModule::up_proj: case LayerModule::down_proj:
      return context_.matrix(name);
    default:
      return context_.weight(name);
  }
}

std::string OnnxLayer::bias(names::LayerModule module) {
  const auto name = names::bias(layer_, module);
  return context_.checkpoint.contains(name) ? context_.weight(name) : std::string();
}

std::string OnnxLayer::router() { return context_.matrix(names::router_weight(layer_, config().block.expert_names)); }

std::string OnnxLayer::router_bias() {
  const auto naming = config().block.expert_names;
  return names::has_router_bias(naming) ? context_.weight(names::router_bias(layer_, naming)) : std::string();
}

std::string OnnxLayer::stacked_expert(std::int64_t e, names::StackedExperts tensor) {
  // Gathered from the initializer as stored, then widened: a Cast of the whole stack would be folded into an fp32 copy
  // of every expert when the runtime loads the graph.
  auto& o = ops();
  const auto stored = context_.stored(names::stacked_experts(layer_, tensor));
  const auto one = o.op("Gather", {stored.first, o.scalar_i64(e)}, {{"axis", std::int64_t{0}}});
  return stored.second == onnx_model::ElementType::f32 ? one : o.cast(one, onnx_model::ElementType::f32);
}

std::string OnnxLayer::attention_sinks() { return context_.weight(names::attention_sinks(layer_)); }

std::string OnnxLayer::expert(std::int64_t e, names::ExpertProjection projection) {
  return context_.matrix(names::expert_weight(layer_, e, projection, config().block.expert_names));
}

std::string OnnxLayer::recipe_tensor(const std::string& name) { return context_.weight(names::recipe_tensor(layer_, name)); }

std::vector<std::int64_t> OnnxLayer::recipe_tensor_shape(const std::string& name) const {
  return context_.checkpoint.entry(names::recipe_tensor(layer_, name)).shape;
}

OnnxLayer::Heads OnnxLayer::project_weights(const std::string& x) { return project(x, /*with_bias=*/false); }

OnnxLayer::Heads OnnxLayer::project_heads(const std::string& x) {
  using names::LayerModule;
  auto h = project(x, /*with_bias=*/true);
  const auto& c = config();
  if (c.block.qk_norm != QkNorm::None) {
    auto& o = ops();
    // Heads are [B, count, S, D]; OLMo 2's norm spans all heads of a token: back to [B, S, count D] and again.
    const auto norm = [&](const std::string& heads, LayerModule module, std::int64_t count) {
      if (c.block.qk_norm == QkNorm::PerHead) return o.rms_norm(heads, weight(module), c.rms_norm_eps, c.block.norm);
      const auto flat = o.reshape(o.transpose(heads, {0, 2, 1, 3}), {0, 0, count * c.head_dim});
      const auto normed = o.rms_norm(flat, weight(module), c.rms_norm_eps, c.block.norm);
      return o.transpose(o.reshape(normed, {0, 0, count, c.head_dim}), {0, 2, 1, 3});
    };
    h.q = norm(h.q, LayerModule::q_norm, c.num_attention_heads);
    h.k = norm(h.k, LayerModule::k_norm, c.num_key_value_heads);
  }
  return h;
}

OnnxLayer::Heads OnnxLayer::project(const std::string& x, bool with_bias) {
  using names::LayerModule;
  auto& o = ops();
  const auto& c = config();
  const auto heads = [&](LayerModule module, std::int64_t count) {
    const auto y = o.linear(x, weight(module), with_bias ? bias(module) : std::string());
    return o.transpose(o.reshape(y, {0, 0, count, c.head_dim}), {0, 2, 1, 3});  // [B, count, S, D]
  };
  return {heads(LayerModule::q_proj, c.num_attention_heads), heads(LayerModule::k_proj, c.num_key_value_heads),
          heads(LayerModule::v_proj, c.num_key_value_heads)};
}

std::string OnnxLayer::rope(const std::string& heads) {
  auto& o = ops();
  const auto& rope = config().rope_for(layer_);
  const std::int64_t D = config().head_dim, rotary = kernels::rotary_dim(rope, D), half = rotary / 2;
  if (rotary == 0) return heads;  // a NoPE layer
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
  return o.linear(o.tokens_first(heads), weight(LayerModule::o_proj), bias(LayerModule::o_proj));
}

OnnxLinearAttentionOptions OnnxLayer::linear_attention_options() const {
  OnnxLinearAttentionOptions options;
  options.use_operator = context_.linear_attention_operator;
  return options;
}

std::string OnnxLayer::repeat_kv(const std::string& heads) {
  const auto& c = config();
  if (c.kv_groups() == 1) return heads;
  auto& o = ops();
  const auto expanded = o.op("Expand", {o.unsqueeze(heads, {2}), o.i64({1, 1, c.kv_groups(), 1, 1})});
  return o.reshape(expanded, {0, c.num_attention_heads, -1, c.head_dim});
}

std::string OnnxLayer::per_head(const std::string& x, const std::string& weight, const std::string& bias) {
  auto& o = ops();
  return o.unsqueeze(o.transpose(o.linear(x, weight, bias), {0, 2, 1}), {-1});
}

std::string OnnxLayer::hedgehog_map(const std::string& heads, const std::string& weight) {
  auto& o = ops();
  const auto y = o.matmul(heads, weight);  // [B, H, S, d] x [H, d, f] -> [B, H, S, f]
  return o.concat({o.softmax(y), o.softmax(o.neg(y))}, -1);
}

std::string OnnxLayer::state(const std::string& kind, const std::vector<Dim>& shape) {
  const auto name = "past." + std::to_string(layer_) + "." + kind;
  context_.carried[layer_].insert(kind);
  context_.model.graph().input(name, ElementType::f32, shape);
  return name;
}

void OnnxLayer::set_state(const std::string& kind, const std::string& value, const std::vector<Dim>& shape) {
  const auto name = "present." + std::to_string(layer_) + "." + kind;
  context_.model.graph().rename(value, name);
  context_.model.graph().output(name, ElementType::f32, shape);
}

OnnxLayer::WindowBranch OnnxLayer::window_branch(const std::string& q, const std::string& k, const std::string& v,
                                                 std::int64_t window) {
  auto& o = ops();
  auto& graph = context_.model.graph();
  const auto& c = config();
  const std::int64_t Hkv = c.num_key_value_heads, G = c.kv_groups(), D = c.head_dim;
  const std::string past = "past_key_values." + std::to_string(layer_), present = "present." + std::to_string(layer_);
  context_.carried[layer_].insert(OnnxModelContext::kKeyValues);
  for (const char* part : {".key", ".value"})
    graph.input(past + part, ElementType::f32, {"batch", Hkv, "past_window_" + std::to_string(layer_), D});
  WindowBranch w;
  w.keys = o.concat({past + ".key", k}, 2);
  w.values = o.concat({past + ".value", v}, 2);
  const auto keep = std::numeric_limits<std::int64_t>::max();
  for (const auto& [part, all] : {std::pair{".key", w.keys}, std::pair{".value", w.values}}) {
    graph.rename(o.slice(all, 2, -window, keep), present + part);
    graph.output(present + part, ElementType::f32, {"batch", Hkv, "present_window_" + std::to_string(layer_), D});
  }
  const auto S = o.dim(q, 2), T = o.dim(w.keys, 2);
  const auto rows = o.add(o.op("Range", {o.scalar_i64(0), o.squeeze(S, {0}), o.scalar_i64(1)}), o.dim(past + ".key", 2));
  const auto cols = o.op("Range", {o.scalar_i64(0), o.squeeze(T, {0}), o.scalar_i64(1)});
  w.back = o.sub(o.unsqueeze(rows, {1}), o.unsqueeze(cols, {0}));  // [S, T]
  // The cache and the call are the last T positions of attention_mask.
  const auto valid = o.cast(o.slice(context_.attention_mask, 1, o.neg(T), o.i64({keep})), ElementType::boolean);  // [B, T]
  w.key_valid = o.unsqueeze(valid, {1, 2});
  const auto in_window = o.op("And", {o.op("GreaterOrEqual", {w.back, o.scalar_i64(0)}), o.op("Less", {w.back, o.scalar_i64(window)})});
  // A padded query keeps its own key, so no row is empty (and no NaN reaches a later layer's state).
  const auto visible = o.op("And", {in_window, o.op("Or", {o.unsqueeze(valid, {1, 2, 3}), o.op("Equal", {w.back, o.scalar_i64(0)})})});
  const auto grouped = [&](const std::string& x, std::int64_t g) { return o.reshape(x, {0, Hkv, g, -1, D}); };
  // The source attention's scale (Gemma 3: query_pre_attn_scalar^-1/2), as kernels/hybrid_attention.h takes it.
  const auto scale = o.f32(static_cast<float>(c.block.attention_scale.value_or(1.0 / std::sqrt(static_cast<double>(D)))));
  const auto scores = o.mul(o.matmul(grouped(q, G), o.transpose(grouped(w.keys, 1), {0, 1, 2, 4, 3})), scale);
  const auto masked = o.op("Where", {visible, scores, o.f32(kMinusInfinity)});
  const auto weights = o.exp(o.sub(masked, o.reduce_max(masked, -1)));  // [B, Hkv, G, S, T]
  w.numerator = o.reshape(o.matmul(weights, grouped(w.values, 1)), {0, Hkv * G, -1, D});
  w.denominator = o.reshape(o.reduce_sum(weights, -1), {0, Hkv * G, -1, 1});
  return w;
}

namespace {

// A value the chunk scan carries from chunk to chunk, with its shape.
struct Carried {
  std::string value;
  std::vector<Dim> shape;
};
// A sequence input of the scan, heads first [B, heads, S, width], seen in the body as [B, Hkv, group, C, width].
struct Sequence {
  std::string value;
  std::int64_t group;  // G for query-side inputs, 1 for the kv side
  std::int64_t width;
};
// What the body returns: the carried values' next ones (same order) and the chunk's output [B, Hkv, G, C, V].
struct ChunkStep {
  std::vector<std::string> carried;
  std::string output;
};
using ChunkBody = std::function<ChunkStep(OnnxOps& body, const std::vector<std::string>& carried,
                                          const std::vector<std::string>& chunk, const std::string& causal)>;

// Chunks of C = min(S, chunk_size) tokens (a decode step is one chunk of one token) scanned in order. The call
// is padded at the end to N C tokens with zeros, which the recurrences treat as writing nothing with no decay
// (k = 0 or beta = 0, log decay 0); the padded rows' outputs are cut off. Returns the carried values after
// the last chunk and the output [B, Hkv G, S, V].
std::pair<std::vector<std::string>, std::string> scan_chunks(OnnxOps& ops, std::int64_t kv_heads, std::int64_t groups,
                                                             std::int64_t value_dim, std::int64_t chunk_size,
                                                             const std::vector<Carried>& carried,
                                                             const std::vector<Sequence>& sequences, const ChunkBody& build) {
  const auto S = ops.dim(sequences.front().value, 2);
  const auto C = ops.op("Min", {S, ops.i64({chunk_size})});
  const auto N = ops.div(ops.add(S, ops.sub(C, ops.i64({1}))), C);  // ceil(S / C)
  const auto pads = ops.concat({ops.i64({0, 0, 0, 0, 0, 0}), ops.sub(ops.mul(N, C), S), ops.i64({0})}, 0);
  std::vector<std::string> inputs;
  for (const auto& c : carried) inputs.push_back(c.value);
  for (const auto& seq : sequences) {
    const auto padded = ops.op("Pad", {seq.value, pads});
    inputs.push_back(ops.op("Reshape", {padded, ops.concat({ops.i64({0, kv_heads, seq.group}), N, C, ops.i64({seq.width})}, 0)}));
  }

  auto body_graph = ops.graph().subgraph("chunk");
  auto body = ops.in(*body_graph);
  auto& bg = body.graph();
  std::vector<std::string> carried_in, chunk_in;
  for (const auto& c : carried) {
    carried_in.push_back(bg.fresh_name("carried_in"));
    bg.input(carried_in.back(), ElementType::f32, c.shape);
  }
  for (const auto& seq : sequences) {
    chunk_in.push_back(bg.fresh_name("chunk_in"));
    bg.input(chunk_in.back(), ElementType::f32, {"batch", kv_heads, seq.group, "chunk", seq.width});
  }
  // t >= s inside the chunk, [C, C].
  const auto steps = body.op("Range", {body.scalar_i64(0), body.op("Squeeze", {body.dim(chunk_in.front(), 3)}), body.scalar_i64(1)});
  const auto causal = body.op("GreaterOrEqual", {body.unsqueeze(steps, {1}), body.unsqueeze(steps, {0})});
  const auto step = build(body, carried_in, chunk_in, causal);
  for (std::size_t i = 0; i < carried.size(); ++i) {
    const auto out = bg.fresh_name("carried_out");
    bg.rename(step.carried[i], out);
    bg.output(out, ElementType::f32, carried[i].shape);
  }
  const auto out = bg.fresh_name("chunk_out");
  bg.rename(step.output, out);
  bg.output(out, ElementType::f32, {"batch", kv_heads, groups, "chunk", value_dim});

  const auto n_scan = static_cast<std::int64_t>(sequences.size());
  auto results = ops.graph().node("Scan", inputs, static_cast<int>(carried.size()) + 1,
                                  {{"body", std::shared_ptr<const onnx_model::Graph>(body_graph)},
                                   {"num_scan_inputs", n_scan},
                                   {"scan_input_axes", std::vector<std::int64_t>(static_cast<std::size_t>(n_scan), 3)},
                                   {"scan_output_axes", std::vector<std::int64_t>{3}}});
  // [B, Hkv, G, N, C, V] -> [B, Hkv G, N C, V] -> the call's S rows.
  const auto o_all = ops.reshape(results.back(), {0, kv_heads * groups, -1, value_dim});
  results.pop_back();
  return {results, ops.slice(o_all, 2, ops.i64({0}), S)};
}

std::string transposed(OnnxOps& o, const std::string& x) { return o.transpose(x, {0, 1, 2, 4, 3}); }

// ONNX's LinearAttention (opset 27): inputs packed [B, S, heads width], the state [B, Hkv, K, V] as ours.
OnnxLinearAttention linear_attention_operator(OnnxOps& ops, const std::string& rule, const std::string& q, const std::string& k,
                                              const std::string& v, const std::string& decay, const std::string& beta,
                                              const std::string& state, const OnnxLinearAttentionOptions& opt) {
  const auto packed = [&](const std::string& x) { return ops.tokens_first(x); };
  const std::string none;  // an omitted optional input
  const auto results = ops.graph().node(
      "LinearAttention", {packed(q), packed(k), packed(v), state, decay.empty() ? none : packed(decay), beta.empty() ? none : packed(beta)},
      2,
      {{"update_rule", rule},
       {"q_num_heads", opt.kv_heads * opt.groups},
       {"kv_num_heads", opt.kv_heads},
       {"scale", static_cast<float>(opt.scale)},
       {"chunk_size", opt.chunk_size}});
  const auto o = ops.transpose(ops.reshape(results[0], {0, 0, opt.kv_heads * opt.groups, opt.value_dim}), {0, 2, 1, 3});
  return {o, results[1], ""};
}

}  // namespace

OnnxLinearAttention onnx_linear_attention(OnnxOps& ops, const std::string& q, const std::string& k, const std::string& v,
                                          const std::optional<std::string>& log_decay, const std::string& state,
                                          const std::optional<std::string>& normalizer,
                                          const OnnxLinearAttentionOptions& opt) {
  const std::int64_t Hkv = opt.kv_heads, G = opt.groups, K = opt.key_dim, V = opt.value_dim;
  const std::int64_t decay_width = opt.decay_per_channel ? K : 1;
  if (opt.use_operator && !normalizer)
    return linear_attention_operator(ops, log_decay ? "gated" : "linear", q, k, v, log_decay.value_or(""), "", state, opt);
  std::vector<Carried> carried{{state, {"batch", Hkv, K, V}}};
  if (normalizer) carried.push_back({*normalizer, {"batch", Hkv, K}});
  std::vector<Sequence> sequences{{q, G, K}, {k, 1, K}, {v, 1, V}};
  if (log_decay) sequences.push_back({*log_decay, 1, decay_width});
  const auto body = [&](OnnxOps& b, const std::vector<std::string>& in, const std::vector<std::string>& chunk,
                        const std::string& causal) {
    const auto &qc = chunk[0], &kc = chunk[1], &vc = chunk[2];
    const auto s5 = b.unsqueeze(in[0], {2});  // [B, Hkv, 1, K, V]
    std::string q_in = qc, scores, k_write = kc, decay_total;
    if (!log_decay) {
      scores = b.op("Where", {causal, b.matmul(qc, transposed(b, kc)), b.f32(0.0f)});
    } else {
      // b_t: the cumulative log decay inside the chunk; every exponent below is b_t - b_s <= 0 for s <= t.
      const auto cum = b.op("CumSum", {chunk[3], b.scalar_i64(3)});
      const auto cum_last = b.slice(cum, 3, -1, std::numeric_limits<std::int64_t>::max());  // [B, Hkv, 1, 1, Kg]
      q_in = b.mul(qc, b.exp(cum));
      if (decay_width == 1) {
        const auto diff = b.sub(cum, transposed(b, cum));  // [B, Hkv, 1, C, C]
        scores = b.mul(b.matmul(qc, transposed(b, kc)), b.exp(b.op("Where", {causal, diff, b.f32(kMinusInfinity)})));
      } else {
        // Per channel: sum_c q_tc k_sc exp(b_tc - b_sc) over [C, C, K] (the chunk's exact decays).
        const auto diff = b.sub(b.unsqueeze(cum, {4}), b.unsqueeze(cum, {3}));  // [B, Hkv, 1, C, C, K]
        const auto decay = b.exp(b.op("Where", {b.unsqueeze(causal, {-1}), diff, b.f32(kMinusInfinity)}));
        scores = b.reduce_sum(b.mul(b.mul(b.unsqueeze(qc, {4}), decay), b.unsqueeze(kc, {3})), -1, false);
      }
      k_write = b.mul(kc, b.exp(b.sub(cum_last, cum)));  // k_s exp(b_last - b_s)
      decay_total = b.exp(cum_last);
    }
    const auto scale = b.f32(static_cast<float>(opt.scale));
    auto out = b.mul(b.add(b.matmul(q_in, s5), b.matmul(scores, vc)), scale);  // [B, Hkv, G, C, V]
    const auto written = b.matmul(transposed(b, k_write), vc);
    const auto kept = log_decay ? b.mul(s5, transposed(b, decay_total)) : s5;
    ChunkStep step{{b.squeeze(b.add(kept, written), {2})}, ""};
    if (normalizer) {
      const auto z5 = b.unsqueeze(in[1], {2, 3});  // [B, Hkv, 1, 1, K]
      const auto den = b.add(b.reduce_sum(b.mul(q_in, z5), -1), b.reduce_sum(scores, -1));
      out = b.div(out, b.add(b.mul(den, scale), b.f32(static_cast<float>(opt.eps))));
      const auto z_kept = log_decay ? b.mul(z5, decay_total) : z5;
      step.carried.push_back(b.squeeze(b.add(z_kept, b.reduce_sum(k_write, 3)), {2, 3}));
    }
    step.output = out;
    return step;
  };
  auto [states, o] = scan_chunks(ops, Hkv, G, V, opt.chunk_size, carried, sequences, body);
  return {o, states[0], normalizer ? states[1] : ""};
}

OnnxLinearAttention onnx_delta_rule(OnnxOps& ops, const std::string& q, const std::string& k, const std::string& v,
                                    const std::string& beta, const std::string& log_decay, const std::string& state,
                                    const OnnxLinearAttentionOptions& opt) {
  const std::int64_t Hkv = opt.kv_heads, G = opt.groups, K = opt.key_dim, V = opt.value_dim;
  if (opt.use_operator) return linear_attention_operator(ops, "gated_delta", q, k, v, log_decay, beta, state, opt);
  const auto body = [&](OnnxOps& b, const std::vector<std::string>& in, const std::vector<std::string>& chunk,
                        const std::string& causal) {
    const auto &qc = chunk[0], &kc = chunk[1], &vc = chunk[2], &beta_c = chunk[3];
    const auto s5 = b.unsqueeze(in[0], {2});
    const auto cum = b.op("CumSum", {chunk[4], b.scalar_i64(3)});  // [B, Hkv, 1, C, 1]
    const auto cum_last = b.slice(cum, 3, -1, std::numeric_limits<std::int64_t>::max());
    const auto decay = b.exp(b.op("Where", {causal, b.sub(cum, transposed(b, cum)), b.f32(kMinusInfinity)}));
    // The WY form (docs/recipes.md#three-forms): T = (I + L)^-1 with L = strictly-lower(diag(beta) K K^T o decay),
    // by forward substitution as fla and transformers' torch_chunk_gated_delta_rule: row i of A = -L becomes
    // row_i + row_i A once rows < i are done (row_i is zero from column i on, so only those rows count);
    // T = A + I. (The closed form (I - L)(I + L^2)(I + L^4)... needs no loop but cancels in fp32: keys that
    // SiLU makes nearly parallel gave 1e-4 relative logit errors on the tiny fixture.)
    const auto diagonal = b.op("And", {causal, b.op("Transpose", {causal})});  // t == s
    const auto strict = b.op("Xor", {causal, diagonal});                         // t > s
    const auto k_beta = b.mul(kc, beta_c);
    const auto minus_l = b.neg(b.op("Where", {strict, b.mul(b.matmul(k_beta, transposed(b, kc)), decay), b.f32(0.0f)}));
    auto row_graph = b.graph().subgraph("forward_substitution_row");
    auto row = b.in(*row_graph);
    auto& rg = row.graph();
    const auto i = rg.fresh_name("row"), cond = rg.fresh_name("cond"), a_in = rg.fresh_name("a_in");
    rg.input(i, ElementType::i64, {});
    rg.input(cond, ElementType::boolean, {});
    rg.input(a_in, ElementType::f32, {"batch", Hkv, 1, "chunk", "chunk"});
    const auto current = row.unsqueeze(row.op("Gather", {a_in, i}, {{"axis", std::int64_t{3}}}), {3});  // [B, Hkv, 1, 1, C]
    const auto steps = row.op("Range", {row.scalar_i64(0), row.op("Squeeze", {row.dim(a_in, 3)}), row.scalar_i64(1)});
    const auto at_row = row.unsqueeze(row.cast(row.op("Equal", {steps, i}), ElementType::f32), {1});  // [C, 1]
    const auto a_out = rg.fresh_name("a_out"), cond_out = rg.fresh_name("cond_out");
    rg.rename(row.add(a_in, row.mul(at_row, row.matmul(current, a_in))), a_out);
    rg.rename(cond, cond_out);
    rg.output(cond_out, ElementType::boolean, {});
    rg.output(a_out, ElementType::f32, {"batch", Hkv, 1, "chunk", "chunk"});
    const auto rows = b.dim(kc, 3);
    const auto substituted = b.op("Loop", {b.op("Squeeze", {rows}), b.cast(b.scalar_i64(1), ElementType::boolean), minus_l},
                                  {{"body", std::shared_ptr<const onnx_model::Graph>(row_graph)}});
    const auto inverse = b.add(substituted, b.cast(diagonal, ElementType::f32));
    const auto values = b.matmul(inverse, b.mul(vc, beta_c));                          // [B, Hkv, 1, C, V]
    const auto k_cumdecay = b.matmul(inverse, b.mul(k_beta, b.exp(cum)));             // [B, Hkv, 1, C, K]
    const auto v_new = b.sub(values, b.matmul(k_cumdecay, s5));
    const auto scores = b.mul(b.matmul(qc, transposed(b, kc)), decay);               // [B, Hkv, G, C, C]
    const auto scale = b.f32(static_cast<float>(opt.scale));
    const auto out = b.mul(b.add(b.matmul(b.mul(qc, b.exp(cum)), s5), b.matmul(scores, v_new)), scale);
    const auto k_write = b.mul(kc, b.exp(b.sub(cum_last, cum)));
    const auto next = b.add(b.mul(s5, transposed(b, b.exp(cum_last))), b.matmul(transposed(b, k_write), v_new));
    return ChunkStep{{b.squeeze(next, {2})}, out};
  };
  auto [states, o] = scan_chunks(ops, Hkv, G, V, opt.chunk_size, {{state, {"batch", Hkv, K, V}}},
                                 {{q, G, K}, {k, 1, K}, {v, 1, V}, {beta, 1, 1}, {log_decay, 1, 1}}, body);
  return {o, states[0], ""};
}

}  // namespace linearize
