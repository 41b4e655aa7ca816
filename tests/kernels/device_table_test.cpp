// Every kernel and mixer form on the device under test against CPU fp64 (llama.cpp's test-backend-ops
// idea): one row per op, shape and dtype with the error, its tolerance and PASS/FAIL, printed as a table.
// The device is CUDA when one is usable (fp32 with TF32 off, and bf16); without one it is the CPU (fp32 and
// bf16), so the table and its tolerances run on every machine and scripts/gpu-check.sh shows the CUDA one.
// The fp64 reference of a mixer form is another form (linear and hybrid attention: the parallel oracle; the
// delta rule: its other form), so a form's own indexing error cannot hide in its reference.
//
// Error: max |out - ref| / max(1, max |ref|) over every output (absolute for O(1) values, relative for
// large ones). Tolerances, from the dtype's unit roundoff u and how the ops accumulate:
//   fp32 (u = 6e-8): the longest sums here have n <= 100 x 64 terms; forms that reassociate them differ by
//     up to n u (4e-4) in the worst case and by sqrt(n) u (5e-6) for random data: 1e-4 sits between, about
//     100x above the worst a correct kernel shows here (1.1e-6 on the CPU), while a wrong decay, mask or
//     state carry changes outputs of unit-normal inputs at order one.
//   bf16 (u = 2^-8 = 3.9e-3): the inputs themselves are rounded (q, k, v each by u), products of three
//     rounded factors and the rounded output give about 4u; 8u = 3.1e-2 allows the gates' exponentials on
//     top (worst here 1.1e-2).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kernels/delta_rule.h"
#include "kernels/feature_maps.h"
#include "kernels/hybrid_attention.h"
#include "kernels/linear.h"
#include "kernels/linear_attention.h"
#include "kernels/norms.h"
#include "kernels/rope.h"
#include "kernels/short_conv.h"
#include "kernels/softmax_attention.h"
#include "kernels/mixer_test_util.h"
#include "converter/linearized.h"
#include "test_util.h"

namespace linearize::kernels {
namespace {

// Puts an fp64 CPU input where the op under test runs (the reference: itself).
using Place = std::function<at::Tensor(const at::Tensor&)>;

struct Op {
  std::string name, shape;
  // `reference`: the fp64 run the device's is compared with (a mixer runs its oracle form there).
  std::function<std::vector<at::Tensor>(const Place&, bool reference)> run;
};

constexpr int64_t B = 2, T = 100, Hq = 4, Hkv = 2, D = 32;

at::Tensor normal(std::vector<int64_t> shape, uint64_t seed) { return test::randn(std::move(shape), seed); }
at::Tensor unit(const at::Tensor& x) { return x / x.norm(2, -1, true); }

// The window branch's q, k, v of the hybrids (seeds seed, seed+1, seed+2).
struct WindowQkv {
  at::Tensor q, k, v;
};
WindowQkv window_qkv(const Place& at, uint64_t seed) {
  return {at(normal({B, T, Hq, D}, seed)), at(normal({B, T, Hkv, D}, seed + 1)), at(normal({B, T, Hkv, D}, seed + 2))};
}

std::vector<at::Tensor> outputs(const LinearAttentionOutput& r) {
  std::vector<at::Tensor> out{r.o, r.state.kv};
  if (r.state.k_sum.defined()) out.push_back(r.state.k_sum);
  return out;
}

std::vector<Op> ops() {
  std::vector<Op> list;
  const std::string qkv = "B2 T100 Hq4 Hkv2 d32";
  for (const auto form : {MixerForm::parallel, MixerForm::chunked, MixerForm::recurrent}) {
    struct Gating {
      const char* name;
      bool normalize;
      int kind;  // 0 none, 1 per head and step, 2 per channel, 3 fixed per head
    };
    for (const Gating gating : {Gating{"linear+normalize", true, 0}, Gating{"simple-gla", false, 1}, Gating{"gla", false, 2},
                                Gating{"retention", false, 3}}) {
      list.push_back({std::string("linear_attention ") + to_string(form) + " " + gating.name, qkv + " +state", [=](const Place& at, bool reference) {
                        LinearAttentionInputs in;
                        in.q = at(normal({B, T, Hq, D}, 1));
                        in.k = at(normal({B, T, Hkv, D}, 2));
                        in.v = at(normal({B, T, Hkv, D}, 3));
                        if (gating.normalize) in.q = in.q.exp(), in.k = in.k.exp();  // positive features
                        if (gating.kind == 1) in.log_decay = at(test::log_decay({B, T, Hkv}, 4));
                        if (gating.kind == 2) in.log_decay = at(test::log_decay({B, T, Hkv, D}, 4));
                        if (gating.kind == 3) in.log_gamma = at(test::log_decay({Hkv}, 4));
                        LinearState initial;  // a carried state (the kernel keeps it in fp32 / fp64)
                        initial.kv = at(normal({B, Hkv, D, D}, 5));
                        if (gating.normalize) initial.k_sum = at(normal({B, Hkv, D}, 6).abs());
                        LinearAttentionOptions options;
                        options.form = reference ? MixerForm::parallel : form;
                        options.normalize = gating.normalize;
                        return outputs(linear_attention(in, initial, options));
                      }});
    }
  }
  for (const auto form : {MixerForm::chunked, MixerForm::recurrent}) {
    list.push_back({std::string("delta_rule ") + to_string(form) + " gated", qkv, [=](const Place& at, bool reference) {
                      DeltaRuleInputs in;
                      in.q = at(unit(normal({B, T, Hq, D}, 11)));
                      in.k = at(unit(normal({B, T, Hkv, D}, 12)));
                      in.v = at(normal({B, T, Hkv, D}, 13));
                      in.beta = at(normal({B, T, Hkv}, 14).sigmoid());
                      in.log_decay = at(test::log_decay({B, T, Hkv}, 15));
                      LinearAttentionOptions options;
                      options.form = reference ? (form == MixerForm::chunked ? MixerForm::recurrent : MixerForm::chunked) : form;
                      options.scale = 1.0;
                      return outputs(delta_rule(in, {}, options));
                    }});
  }
  for (const std::optional<int64_t> window : {std::optional<int64_t>{}, std::optional<int64_t>{16}}) {
    list.push_back({std::string("softmax_attention ") + (window ? "window 16" : "causal"), "B2 H4 Hkv2 T100 d32", [=](const Place& at, bool /*reference*/) {
                      SoftmaxAttentionOptions options;
                      options.window = window;
                      return std::vector<at::Tensor>{softmax_attention(at(normal({B, Hq, T, D}, 21)), at(normal({B, Hkv, T, D}, 22)),
                                                                       at(normal({B, Hkv, T, D}, 23)), options)};
                    }});
  }
  for (const auto form : {MixerForm::chunked, MixerForm::recurrent}) {
    list.push_back({std::string("liger_attention ") + to_string(form), qkv + " window 16", [=](const Place& at, bool reference) {
                      const auto w = window_qkv(at, 31);
                      const LigerAttentionInputs in{w.q, w.k, w.v, softmax_d(w.q), softmax_d(w.k), at(test::log_decay({B, T, Hkv, D}, 34))};
                      const auto r = liger_attention(in, {}, {reference ? MixerForm::parallel : form, 16});
                      return std::vector<at::Tensor>{r.o, r.state.linear.kv, r.state.k, r.state.v};
                    }});
    list.push_back({std::string("lolcats_attention ") + to_string(form), qkv + " window 16", [=](const Place& at, bool reference) {
                      const auto w = window_qkv(at, 41);
                      const LolcatsAttentionInputs in{w.q, w.k, w.v, softmax_d(w.q), [](const at::Tensor& k) { return softmax_d(k); },
                                                      at(normal({Hq}, 44))};
                      const auto r = lolcats_attention(in, {}, {reference ? MixerForm::parallel : form, 16});
                      return std::vector<at::Tensor>{r.o, r.state.linear.kv, r.state.k, r.state.v};
                    }});
  }
  list.push_back({"short_conv", "B2 T100 C64 K4 +state", [](const Place& at, bool /*reference*/) {
                    const auto r = short_conv(at(normal({B, T, 64}, 51)), at(normal({64, 4}, 52)), at(normal({64}, 53)),
                                              at(normal({B, 3, 64}, 54)));
                    return std::vector<at::Tensor>{r.y, r.state};
                  }});
  list.push_back({"rms_norm / rms_norm_one_plus", "B2 T100 d256", [](const Place& at, bool /*reference*/) {
                    const auto x = at(normal({B, T, 256}, 61)), w = at(normal({256}, 62));
                    return std::vector<at::Tensor>{rms_norm(x, w, 1e-6), rms_norm_one_plus(x, w, 1e-6)};
                  }});
  list.push_back({"hedgehog / softmax_d feature maps", "B2 T100 H4 d32 f16", [](const Place& at, bool /*reference*/) {
                    // xW + b of unit scale, as LoLCATs' identity initialisation gives: a bf16 softmax's error is
                    // about u times its logits' magnitude, so logits of ~20 would exceed any u-based bound.
                    const auto x = at(normal({B, T, Hq, D}, 71));
                    const auto w = at(normal({Hq, D, 16}, 72) / std::sqrt(static_cast<double>(D)));
                    return std::vector<at::Tensor>{hedgehog(x, w, at(normal({Hq, 16}, 73) * 0.1)), softmax_d(x)};
                  }});
  list.push_back({"apply_rope (llama3 scaling)", "B2 H4 T100 d32 from position 4000", [](const Place& at, bool /*reference*/) {
                    RopeConfig rope;
                    rope.type = RopeType::Llama3;
                    rope.theta = 500000;
                    rope.factor = 8;
                    rope.low_freq_factor = 1;
                    rope.high_freq_factor = 4;
                    rope.original_max_position_embeddings = 8192;
                    const auto x = at(normal({B, Hq, T, D}, 81));
                    const auto positions = at::arange(4000, 4000 + T, at::TensorOptions(at::kLong).device(x.device()));
                    return std::vector<at::Tensor>{apply_rope(x, rope_cos_sin(rope_frequencies(rope, D, 131072), positions, x.scalar_type()))};
                  }});
  list.push_back({"linear_projection (decode rows)", "rows 1 in 1000 out 300 +bias", [](const Place& at, bool /*reference*/) {
                    return std::vector<at::Tensor>{linear_projection(at(normal({1, 1000}, 91)), at(normal({300, 1000}, 92)),
                                                                     at(normal({300}, 93)))};
                  }});
  return list;
}

double unit_roundoff(at::ScalarType dtype) { return dtype == at::kBFloat16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -24); }
double tolerance(at::ScalarType dtype) { return dtype == at::kBFloat16 ? 8 * unit_roundoff(dtype) : 1e-4; }

TEST(DeviceTable, EveryKernelAgreesWithCpuFp64) {
  c10::InferenceMode inference;
  const bool cuda = at::hasCUDA();
  const at::Device device = cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  // TF32 would make fp32 convolutions and matmuls 10-bit: the table checks fp32 as fp32.
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  const auto list = ops();
  std::printf("%-46s %-36s %-5s %-10s %-9s %s\n", "op", "shape", "dtype", "error", "tolerance", "");
  int failed = 0;
  for (const auto& op : list) {
    const auto reference = op.run([](const at::Tensor& x) { return x; }, true);
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      const auto got = op.run([&](const at::Tensor& x) { return x.to(device, dtype); }, false);
      ASSERT_EQ(got.size(), reference.size()) << op.name;
      double error = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i].sizes(), reference[i].sizes()) << op.name << " output " << i;
        error = std::max(error, test::max_rel_diff(got[i].to(at::kCPU, at::kDouble), reference[i]));
      }
      const double tol = tolerance(dtype);
      const bool pass = error <= tol;
      failed += pass ? 0 : 1;
      std::printf("%-46s %-36s %-5s %-10.3g %-9.3g %s\n", op.name.c_str(), op.shape.c_str(), dtype == at::kBFloat16 ? "bf16" : "fp32",
                  error, tol, pass ? "PASS" : "FAIL");
      EXPECT_LE(error, tol) << op.name << " " << (dtype == at::kBFloat16 ? "bf16" : "fp32") << " on " << device.str();
    }
  }
  std::printf("device %s: %zu ops x 2 dtypes, %d failed\n", device.str().c_str(), list.size(), failed);
}

// Every registered recipe's mixer in a whole converted model (tiny-llama, 2 layers): logits on the device
// against the same export run on the CPU in fp64. fp32 as above; bf16 as the reference forward's own bf16
// test: every linear, norm and residual rounds once, ~25 roundings through 2 layers, errors adding at worst
// linearly: 25u ~ 0.1 of the largest logit.
TEST(DeviceTable, EveryRecipeMixerAgreesWithCpuFp64) {
  c10::InferenceMode inference;
  const at::Device device = at::hasCUDA() ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  test::TempDir dir;
  const auto ids = at::arange(1, 81, at::kLong).remainder(200).unsqueeze(0);  // 80 tokens: past a 64-token chunk
  for (const auto& recipe : registered_recipes()) {
    ConvertOptions convert;
    convert.source = test::fixtures_dir() / "tiny-llama";
    convert.out = dir / recipe.name;
    convert.recipe = recipe.name;
    for (const auto& param : recipe.params)
      if (param.name == "window") convert.params["window"] = 16;  // the window hybrids: the window slides
    convert_checkpoint(convert);
    LoadOptions fp64;
    fp64.dtype = at::kDouble;
    const auto reference = load_model(convert.out, fp64).forward(ids)[0];
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      LoadOptions load;
      load.dtype = dtype;
      load.device = device;
      const auto got = load_model(convert.out, load).forward(ids.to(device))[0].to(at::kCPU, at::kDouble);
      const double error = (got - reference).abs().max().item<double>() / reference.abs().max().item<double>();
      const double tol = dtype == at::kBFloat16 ? 0.1 : 1e-4;
      std::printf("%-46s %-36s %-5s %-10.3g %-9.3g %s\n", ("model with " + recipe.name).c_str(), "tiny-llama, 80 tokens",
                  dtype == at::kBFloat16 ? "bf16" : "fp32", error, tol, error <= tol ? "PASS" : "FAIL");
      EXPECT_LE(error, tol) << recipe.name << " on " << device.str();
    }
  }
}

}  // namespace
}  // namespace linearize::kernels
