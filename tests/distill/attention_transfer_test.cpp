// Stage-1 losses beyond the joint MSE: every mixer's attention weights reproduce its output; Hedgehog's
// attention-weight cross-entropy matches a naive fp64 computation, trains only the recipe's new tensors
// and falls under a few optimiser steps; recipes without such weights are refused; the layer-wise HDF5
// cache round-trips and gives the joint loss's per-layer values; a cache missing a dataset is named.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <cmath>
#include <iostream>

#include "converter/linearized.h"
#include "converter/model/softmax_attention_mixer.h"
#include "converter/names.h"
#include "distill/attention_transfer.h"
#include "distill/layer_inputs.h"
#include "formats/error.h"
#include "formats/hdf5_store.h"
#include "test_util.h"

namespace linearize {
namespace {

std::filesystem::path fixture(const std::string& name) { return test::fixtures_dir() / name; }

std::filesystem::path convert(const test::TempDir& dir, const std::string& source, const std::string& recipe,
                              const nlohmann::json& params = nlohmann::json::object()) {
  ConvertOptions options;
  options.source = fixture(source);
  options.out = dir / (source + "-" + recipe);
  options.recipe = recipe;
  options.params = params;
  convert_checkpoint(options);
  return options.out;
}

// Moves the maps away from their truncated-identity start, so the checks see generic features.
void randomize_maps(CausalLM& student) {
  at::NoGradGuard no_grad;
  for (auto& layer : student.layers())
    for (auto& [name, tensor] : layer.mixer->trainable())
      if (name.rfind("feature_map_", 0) == 0) tensor.set_data(0.5 * at::randn(tensor.sizes(), tensor.options()));
}

const SoftmaxAttentionMixer& source_attention(const CausalLM& source, std::size_t layer) {
  return dynamic_cast<const SoftmaxAttentionMixer&>(*source.layers()[layer].mixer);
}

double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() / b.to(at::kDouble).abs().max()).item<double>();
}

// forward(x) = W_O sum_j a_ij v_j with causal rows summing to one, for the teacher (full attention and
// Mistral's window of 16 at T = 24) and both recipes that define weights (LoLCATs with a window of 4, so
// both of its parts are in play). fp32 throughout: 1e-5 of the largest output allows the different
// summation orders (chunked scan vs one [T, T] matmul) over 24 terms.
TEST(AttentionWeights, ReproduceEveryMixersOutput) {
  at::manual_seed(0);
  test::TempDir dir;
  const CaptureFn no_capture;
  for (const auto& [source_name, recipe, params] :
       std::vector<std::tuple<std::string, std::string, nlohmann::json>>{{"tiny-llama", "hedgehog", nlohmann::json::object()},
                                                                         {"tiny-llama", "lolcats", {{"window", 4}}},
                                                                         {"tiny-mistral", "hedgehog", nlohmann::json::object()}}) {
    SCOPED_TRACE(source_name + " " + recipe);
    const CausalLM source = load_model(fixture(source_name));
    CausalLM student = load_model(convert(dir, source_name, recipe, params));
    randomize_maps(student);
    const std::int64_t T = 24, H = source.config().num_attention_heads;
    for (std::size_t layer = 0; layer < student.layers().size(); ++layer) {
      const auto x = at::randn({2, T, source.config().hidden_size});
      const auto& attention = source_attention(source, layer);
      const auto v = attention.project_heads(x).v.repeat_interleave(H / attention.shape().kv_heads, 2).transpose(1, 2);
      for (const auto* mixer : {source.layers()[layer].mixer.get(), student.layers()[layer].mixer.get()}) {
        SCOPED_TRACE(mixer->kind());
        const auto a = mixer->attention_weights(x);
        ASSERT_TRUE(a.defined());
        ASSERT_EQ(a.sizes(), at::IntArrayRef({2, H, T, T}));
        EXPECT_LT((a.sum(-1) - 1).abs().max().item<double>(), 1e-5);
        EXPECT_EQ(a.triu(1).abs().max().item<double>(), 0.0);
        const auto mixed = attention.project_output(at::matmul(a, v).transpose(1, 2));
        const auto out = mixer->forward(x, 0, nullptr, MixerCall{no_capture, "layers.0.mixer", kernels::MixerForm::chunked});
        EXPECT_LT(max_rel_diff(mixed, out), 1e-5);
      }
    }
  }
}

// An independent fp64 reference with explicit loops, from the teacher's RoPE'd q, k (captured) and the
// maps' weights: A = causal softmax(q.k / sqrt(d)); phi(x) = [softmax(xW), softmax(-xW)];
// Â_ij = phi(q_i).phi(k_j) / sum_{j'<=i}; xent = mean over batch, heads, queries of -sum_j A_ij log Â_ij,
// which is H(A) + KL(A || Â) >= H(A). The library computes in fp32 (the mixers' dtype): 1e-5 relative.
TEST(AttentionXent, MatchesANaiveFp64Computation) {
  at::manual_seed(1);
  test::TempDir dir;
  const CausalLM source = load_model(fixture("tiny-llama"));
  CausalLM student = load_model(convert(dir, "tiny-llama", "hedgehog"));
  randomize_maps(student);
  const std::int64_t B = 2, T = 10;
  const auto ids = at::randint(0, source.config().vocab_size, {B, T}, at::kLong);
  const double factor = 3.0;
  const auto r = attention_transfer_loss(student, source, ids, factor, Stage1Loss::kXent);
  ASSERT_EQ(r.layers, (std::vector<std::int64_t>{0, 1}));

  std::map<std::string, at::Tensor> captured;
  source.forward(ids, [&](const std::string& name, const at::Tensor& value) { captured[name] = value.to(at::kDouble); });
  double mean_over_layers = 0;
  for (const auto layer : r.layers) {
    const auto scope = "layers." + std::to_string(layer) + ".mixer.";
    const auto q = captured.at(scope + "q").accessor<double, 4>();  // [B, H, T, D]
    const auto k = captured.at(scope + "k").accessor<double, 4>();  // [B, Hkv, T, D]
    const auto& maps = student.layers()[static_cast<std::size_t>(layer)].mixer->trainable();
    const auto Wq = maps.at(0).second.to(at::kDouble).contiguous(), Wk = maps.at(1).second.to(at::kDouble).contiguous();
    const auto wq = Wq.accessor<double, 3>(), wk = Wk.accessor<double, 3>();  // [H, D, F]
    const std::int64_t H = Wq.size(0), D = Wq.size(1), F = Wq.size(2), groups = H / captured.at(scope + "k").size(1);
    auto phi = [&](const at::TensorAccessor<double, 1>& x, const at::TensorAccessor<double, 2>& w) {
      std::vector<double> y(F), out(2 * F);
      for (std::int64_t f = 0; f < F; ++f)
        for (std::int64_t d = 0; d < D; ++d) y[f] += x[d] * w[d][f];
      for (const int sign : {1, -1}) {
        double z = 0;
        for (std::int64_t f = 0; f < F; ++f) z += std::exp(sign * y[f]);
        for (std::int64_t f = 0; f < F; ++f) out[(sign == 1 ? 0 : F) + f] = std::exp(sign * y[f]) / z;
      }
      return out;
    };
    double xent = 0, entropy = 0, kl = 0;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t i = 0; i < T; ++i) {
          std::vector<double> a(i + 1), a_hat(i + 1);
          const auto phi_q = phi(q[b][h][i], wq[h]);
          double a_sum = 0, hat_sum = 0;
          for (std::int64_t j = 0; j <= i; ++j) {
            double s = 0;
            for (std::int64_t d = 0; d < D; ++d) s += q[b][h][i][d] * k[b][h / groups][j][d];
            a[j] = std::exp(s / std::sqrt(double(D)));
            const auto phi_k = phi(k[b][h / groups][j], wk[h]);
            for (std::int64_t f = 0; f < 2 * F; ++f) a_hat[j] += phi_q[f] * phi_k[f];
            a_sum += a[j];
            hat_sum += a_hat[j];
          }
          for (std::int64_t j = 0; j <= i; ++j) {
            const double p = a[j] / a_sum, p_hat = a_hat[j] / hat_sum;
            xent -= p * std::log(p_hat);
            entropy -= p * std::log(p);
            kl += p * std::log(p / p_hat);
          }
        }
    const double n = double(B * H * T);
    xent /= n;
    entropy /= n;
    kl /= n;
    SCOPED_TRACE("layer " + std::to_string(layer));
    const double got = r.layer_loss[static_cast<std::size_t>(layer)];
    EXPECT_NEAR(got, xent, 1e-5 * xent);
    EXPECT_NEAR(got, entropy + kl, 1e-5 * xent);
    EXPECT_GT(kl, 0.0);
    EXPECT_GE(got, entropy);
    mean_over_layers += xent / double(r.layers.size());
  }
  EXPECT_NEAR(r.loss.item<double>(), factor * mean_over_layers, 1e-5 * factor * mean_over_layers);
}

// Under xent the gradient reaches every new tensor of the recipe (the maps, LoLCATs' window factors) and
// nothing of the source weights; the teacher's weights carry no graph.
TEST(AttentionXent, GradientsReachOnlyTheRecipesNewTensors) {
  test::TempDir dir;
  const CausalLM source = load_model(fixture("tiny-llama"));
  for (const std::string recipe : {"hedgehog", "lolcats"}) {
    SCOPED_TRACE(recipe);
    CausalLM student = load_model(convert(dir, "tiny-llama", recipe, recipe == "lolcats" ? nlohmann::json{{"window", 8}} : nlohmann::json::object()));
    const auto params = make_stage1_trainable(student);
    for (const auto& [name, tensor] : params) {
      const bool expected = name.find(".feature_map_q.weight") != std::string::npos ||
                            name.find(".feature_map_k.weight") != std::string::npos ||
                            (recipe == "lolcats" && name.find(".window_factors") != std::string::npos);
      EXPECT_TRUE(expected) << name;
    }
    const auto ids = at::randint(0, student.config().vocab_size, {1, 48}, at::kLong);
    const auto r = attention_transfer_loss(student, source, ids, 1.0, Stage1Loss::kXent);
    r.loss.backward();
    for (const auto& [name, tensor] : params) {
      ASSERT_TRUE(tensor.grad().defined()) << name;
      EXPECT_TRUE(at::isfinite(tensor.grad()).all().item<bool>()) << name;
      EXPECT_GT(tensor.grad().abs().sum().item<double>(), 0.0) << name;
    }
    const auto& attention = source_attention(source, 0);
    EXPECT_FALSE(attention.projections().q.requires_grad());
    EXPECT_FALSE(student.layers()[0].mlp.gate().requires_grad());
    EXPECT_FALSE(student.layers()[0].input_norm.requires_grad());
    EXPECT_FALSE(source.layers()[0].mixer->attention_weights(at::randn({1, 4, student.config().hidden_size})).requires_grad());
  }
}

// A few AdamW steps on one batch (lr 1e-2, as LoLCATs' stage 1) lower the cross-entropy.
TEST(AttentionXent, AFewOptimiserStepsLowerIt) {
  at::manual_seed(2);
  test::TempDir dir;
  const CausalLM source = load_model(fixture("tiny-llama"));
  CausalLM student = load_model(convert(dir, "tiny-llama", "hedgehog"));
  const auto params = make_stage1_trainable(student);
  std::vector<at::Tensor> handles;
  for (const auto& [name, tensor] : params) handles.push_back(tensor);
  torch::optim::AdamW optimizer(handles, torch::optim::AdamWOptions(1e-2).weight_decay(0));
  const auto ids = at::randint(0, student.config().vocab_size, {2, 64}, at::kLong);
  std::vector<double> trajectory;
  for (int step = 0; step <= 10; ++step) {
    optimizer.zero_grad();
    const auto r = attention_transfer_loss(student, source, ids, 1.0, Stage1Loss::kXent);
    trajectory.push_back(r.loss.item<double>());
    if (step == 10) break;
    r.loss.backward();
    optimizer.step();
  }
  std::cout << "xent (hedgehog, tiny-llama, [2, 64]): " << trajectory.front() << " -> " << trajectory.back()
            << " after 10 AdamW steps\n";
  EXPECT_LT(trajectory.back(), trajectory.front());
}

TEST(AttentionXent, IsRefusedForRecipesWithoutAttentionWeights) {
  test::TempDir dir;
  for (const std::string recipe : {"liger-gla", "supra"}) {
    SCOPED_TRACE(recipe);
    const CausalLM student = load_model(convert(dir, "tiny-llama", recipe));
    EXPECT_NO_THROW(check_stage1_loss(student, Stage1Loss::kMse));
    try {
      check_stage1_loss(student, Stage1Loss::kXent);
      ADD_FAILURE() << "no error";
    } catch (const InputError& e) {
      EXPECT_EQ(e.field(), "stage1.loss");
      EXPECT_NE(std::string(e.what()).find("recipe " + recipe), std::string::npos) << e.what();
    }
  }
  const CausalLM hedgehog = load_model(convert(dir, "tiny-llama", "hedgehog"));
  EXPECT_NO_THROW(check_stage1_loss(hedgehog, Stage1Loss::kXent));
}

// The cache stores the teacher's fp32 activations exactly and the layer-wise loss runs the same per-layer
// function on them, so its per-layer values equal the joint loss's for the same batch: asserted to 1e-7
// relative (in practice bit-identical on one device and thread count).
TEST(LayerCache, RoundTripsAndLayerwiseLossEqualsJointPerLayer) {
  at::manual_seed(3);
  test::TempDir dir;
  const CausalLM source = load_model(fixture("tiny-llama"));
  CausalLM student = load_model(convert(dir, "tiny-llama", "hedgehog"));
  randomize_maps(student);
  const auto params = make_stage1_trainable(student);
  const auto layers = converted_layers(student);
  const std::vector<at::Tensor> batches{at::randint(0, source.config().vocab_size, {2, 32}, at::kLong),
                                        at::randint(0, source.config().vocab_size, {2, 32}, at::kLong)};
  std::vector<std::int64_t> progress;
  const auto path = dir / "cache.h5";
  EXPECT_EQ(write_layer_cache(path, source, layers, batches, [&](std::int64_t rows) { progress.push_back(rows); }), 4);
  EXPECT_EQ(progress, (std::vector<std::int64_t>{2, 4}));

  const LayerCache cache(path, layers, source.config().hidden_size);
  EXPECT_EQ(cache.rows(), 4);
  EXPECT_EQ(cache.seq_len(), 32);
  std::map<std::string, at::Tensor> captured;
  source.forward(batches[1], [&](const std::string& name, const at::Tensor& value) { captured[name] = value; });
  for (const auto layer : layers) {
    EXPECT_TRUE(at::equal(cache.input(layer, 2, 4), captured.at("layers." + std::to_string(layer) + ".attn_in")));
    EXPECT_TRUE(at::equal(cache.target(layer, 2, 4), captured.at("layers." + std::to_string(layer) + ".attn_out")));
  }

  for (const auto loss : {Stage1Loss::kMse, Stage1Loss::kXent}) {
    SCOPED_TRACE(to_string(loss));
    const auto joint = attention_transfer_loss(student, source, batches[1], 1.0, loss);
    for (std::size_t i = 0; i < layers.size(); ++i) {
      for (const auto& [name, tensor] : params) tensor.mutable_grad() = at::Tensor();
      const auto one = layerwise_transfer_loss(student, source, cache, layers[i], 2, 4, 5.0, loss);
      ASSERT_EQ(one.layers, std::vector<std::int64_t>{layers[i]});
      const double rel = std::abs(one.layer_loss[0] - joint.layer_loss[i]) / joint.layer_loss[i];
      std::cout << to_string(loss) << " layer " << layers[i] << ": joint " << joint.layer_loss[i] << ", layer-wise "
                << one.layer_loss[0] << ", relative difference " << rel << "\n";
      EXPECT_LE(rel, 1e-7);
      EXPECT_NEAR(one.loss.item<double>(), 5.0 * one.layer_loss[0], 1e-6 * 5.0 * one.layer_loss[0]);
      one.loss.backward();  // reaches this layer's tensors only
      for (const auto& [name, tensor] : params)
        EXPECT_EQ(tensor.grad().defined(), names::layer_of(name) == layers[i]) << name;
    }
  }
}

TEST(LayerCache, AMissingOrMisshapenDatasetIsNamedWithTheFile) {
  test::TempDir dir;
  const auto path = dir / "cache.h5";
  auto write = [&](std::int64_t last_seq_len, bool with_last) {
    Hdf5Writer writer(path);
    for (const auto& [name, seq_len] : std::vector<std::pair<std::string, std::int64_t>>{
             {"layers.0.attn_in", 8}, {"layers.0.attn_out", 8}, {"layers.1.attn_in", 8}, {"layers.1.attn_out", last_seq_len}}) {
      if (name == "layers.1.attn_out" && !with_last) continue;
      writer.create_dataset(name, at::kFloat, {seq_len, 4});
      writer.append(name, at::zeros({3, seq_len, 4}));
    }
    writer.close();
  };
  auto expect_error = [&](const std::string& message) {
    try {
      LayerCache cache(path, {0, 1}, 4);
      ADD_FAILURE() << "no error";
    } catch (const InputError& e) {
      EXPECT_EQ(e.file(), path.string());
      EXPECT_EQ(e.field(), "layers.1.attn_out");
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  };
  write(8, false);
  expect_error("no such dataset");
  write(6, true);
  expect_error("differs from the other datasets' [3, 8, 4]");
  write(8, true);
  EXPECT_EQ(LayerCache(path, {0, 1}, 4).rows(), 3);
}

}  // namespace
}  // namespace linearize
