// Linear-attention kernels on the CPU, fp32 prefill forward, B = 1 (docs/kernels.md#benchmarks): chunked GLA,
// recurrent GLA and causal SDPA over H in {8, 32}, d in {64, 128}, T in {256 .. 32K}; the gated delta rule's
// chunked and recurrent forms and Mamba-2's SSD (per-head decay) to 4K; the recurrent
// one-token decode step at several context lengths; decode's projections (one row through 16-bit weights); and, in the context, the in-process roofline (GEMM
// GFLOP/s, streaming GB/s), CPU model, threads and LibTorch version. scripts/bench.sh (section kernels)
// turns the JSON into the ratios the kernels issue asks for.
//
//   kernels_bench [--benchmark_out=FILE --benchmark_out_format=json ...]
#include <benchmark/benchmark.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "kernels/delta_rule.h"
#include "kernels/linear.h"
#include "kernels/linear_attention.h"

namespace {

namespace lk = linearize::kernels;
using Clock = std::chrono::steady_clock;

const lk::LinearAttentionOptions kDefaults;  // chunk C and sub-chunk c as a converted model runs them

double seconds_of(const std::function<void()>& f, int reps) {
  f();  // warm-up
  const auto start = Clock::now();
  for (int i = 0; i < reps; ++i) f();
  return std::chrono::duration<double>(Clock::now() - start).count() / reps;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

void add_roofline_context() {
  c10::InferenceMode inference;
  const at::Tensor a = at::randn({2048, 2048}), b = at::randn({2048, 2048});
  const double big = 2.0 * 2048 * 2048 * 2048 / seconds_of([&] { at::mm(a, b); }, 3) / 1e9;
  const at::Tensor sa = at::randn({64, 128}), sb = at::randn({128, 128});
  const double small = 2.0 * 64 * 128 * 128 / seconds_of([&] { at::mm(sa, sb); }, 2000) / 1e9;
  const at::Tensor ba = at::randn({512, 64, 128}), bb = at::randn({512, 128, 128});
  const double batched = 512 * 2.0 * 64 * 128 * 128 / seconds_of([&] { at::bmm(ba, bb); }, 10) / 1e9;
  const at::Tensor src = at::randn({int64_t{64} << 20}), dst = at::empty_like(src);
  const double stream = 2.0 * src.nbytes() / seconds_of([&] { dst.copy_(src); }, 5) / 1e9;
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("torch_threads", std::to_string(at::get_num_threads()));
  benchmark::AddCustomContext("libtorch", LINEARIZE_LIBTORCH_VERSION);
  benchmark::AddCustomContext("gemm_2048_gflops", std::to_string(big));
  benchmark::AddCustomContext("gemm_64x128x128_gflops", std::to_string(small));
  benchmark::AddCustomContext("gemm_64x128x128_batched512_gflops", std::to_string(batched));
  benchmark::AddCustomContext("stream_copy_gbs", std::to_string(stream));
}

// GLA inputs as a converted model feeds them: q, k, v [1,T,H,d], gates logsigmoid(.)/16 per channel.
lk::LinearAttentionInputs gla_inputs(int64_t T, int64_t H, int64_t d) {
  lk::LinearAttentionInputs in;
  in.q = at::randn({1, T, H, d});
  in.k = at::randn({1, T, H, d});
  in.v = at::randn({1, T, H, d});
  in.log_decay = at::log_sigmoid(at::randn({1, T, H, d})) / 16;
  return in;
}

// FLOPs per token and head (docs/kernels.md#benchmarks), K = V = d.
double chunked_gla_flops(double d) {
  const auto C = static_cast<double>(kDefaults.chunk_size), c = static_cast<double>(kDefaults.sub_chunk_size);
  return 4 * d * d + 2 * C * d + (C - c) * d;
}
double recurrent_gla_flops(double d) { return 4 * d * d; }

// FLOPs of one call as a plain counter (not a rate): the summary divides it by the fastest repetition's
// time, where a "min" over rate counters would pick the slowest.
void set_counters(benchmark::State& state, int64_t T, int64_t H, double flops_per_token_head) {
  state.counters["T"] = static_cast<double>(T);
  state.counters["flops_per_call"] = flops_per_token_head * static_cast<double>(T * H);
}

// args: H, d, T
void BM_GlaChunked(benchmark::State& state) {
  c10::InferenceMode inference;
  const int64_t H = state.range(0), d = state.range(1), T = state.range(2);
  const auto in = gla_inputs(T, H, d);
  for (auto _ : state) benchmark::DoNotOptimize(lk::linear_attention(in, {}, kDefaults).o.data_ptr());
  set_counters(state, T, H, chunked_gla_flops(static_cast<double>(d)));
}

void BM_GlaRecurrent(benchmark::State& state) {
  c10::InferenceMode inference;
  const int64_t H = state.range(0), d = state.range(1), T = state.range(2);
  const auto in = gla_inputs(T, H, d);
  lk::LinearAttentionOptions opt;
  opt.form = lk::MixerForm::recurrent;
  for (auto _ : state) benchmark::DoNotOptimize(lk::linear_attention(in, {}, opt).o.data_ptr());
  set_counters(state, T, H, recurrent_gla_flops(static_cast<double>(d)));
}

// Mamba-2's SSD as mamba2 runs it (converter/recipes/mamba2.cpp): the same kernel with one log decay per head
// and token (simple GLA), so its intra-chunk decays are [C, C] instead of [C, C, K].
void BM_SsdChunked(benchmark::State& state) {
  c10::InferenceMode inference;
  const int64_t H = state.range(0), d = state.range(1), T = state.range(2);
  auto in = gla_inputs(T, H, d);
  in.log_decay = -at::softplus(at::randn({1, T, H})) / 16;
  for (auto _ : state) benchmark::DoNotOptimize(lk::linear_attention(in, {}, kDefaults).o.data_ptr());
  state.counters["T"] = static_cast<double>(T);
}

// Causal softmax attention, LibTorch's flash-style CPU kernel, head-first [1,H,T,d].
void BM_SdpaCausal(benchmark::State& state) {
  c10::InferenceMode inference;
  const int64_t H = state.range(0), d = state.range(1), T = state.range(2);
  const at::Tensor q = at::randn({1, H, T, d}), k = at::randn({1, H, T, d}), v = at::randn({1, H, T, d});
  for (auto _ : state) {
    benchmark::DoNotOptimize(at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true).data_ptr());
  }
  set_counters(state, T, H, 2.0 * static_cast<double>(T) * static_cast<double>(d));  // 2Td per token on average
}

// One decode step of recurrent GLA (H = 32, d = 128) on the state a chunked prefill of `context` tokens
// left (built with H = 32 only up to 8K, beyond that the state of the 8K prefill is reused: the step never
// reads the context, only the state).
void BM_GlaDecodeStep(benchmark::State& state) {
  c10::InferenceMode inference;
  const int64_t H = 32, d = 128, context = state.range(0);
  auto decoded = lk::linear_attention(gla_inputs(std::min<int64_t>(context, 8192), H, d), {}, {}).state;
  const auto token = gla_inputs(1, H, d);
  lk::LinearAttentionOptions opt;
  opt.form = lk::MixerForm::recurrent;
  // A decode loop: each step consumes the state the previous one returned (updated in place).
  for (auto _ : state) {
    auto step = lk::linear_attention(token, std::move(decoded), opt);
    benchmark::DoNotOptimize(step.o.data_ptr());
    decoded = std::move(step.state);
  }
  state.counters["context"] = static_cast<double>(context);
  state.counters["state_bytes"] = static_cast<double>(decoded.bytes());
  state.counters["state_bytes_formula"] = static_cast<double>(1 * H * d * d * 4);  // B*H*K*V*fp32
}

// The baseline a decode step is held to: ggml's GATED_LINEAR_ATTN loop (per head and token one pass over
// the state rows, decayed, updated with k_i v^T and dotted into the output while in cache) on raw fp32
// arrays, no tensors, no allocation; heads spread over the same threads as ours (at::parallel_for).
void BM_FusedDecodeBaseline(benchmark::State& state) {
  const int64_t H = 32, d = 128;
  const auto in = gla_inputs(1, H, d);
  const at::Tensor gate = in.log_decay.exp().contiguous(), S = at::randn({H, d, d}) * 0.1, o = at::empty({H, d});
  const float *q = in.q.const_data_ptr<float>(), *k = in.k.const_data_ptr<float>(), *v = in.v.const_data_ptr<float>(),
              *a = gate.const_data_ptr<float>();
  float *s = S.mutable_data_ptr<float>(), *out = o.mutable_data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (auto _ : state) {
    at::parallel_for(0, H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t h = begin; h < end; ++h) {
        float* oh = out + h * d;
        std::fill(oh, oh + d, 0.0f);
        for (int64_t i = 0; i < d; ++i) {
          float* row = s + (h * d + i) * d;
          const float ai = a[h * d + i], ki = k[h * d + i], qi = scale * q[h * d + i];
          for (int64_t j = 0; j < d; ++j) {
            row[j] = ai * row[j] + ki * v[h * d + j];
            oh[j] += qi * row[j];
          }
        }
      }
    });
    benchmark::DoNotOptimize(out);
    benchmark::ClobberMemory();
  }
}

// Gated delta rule as gated-deltanet feeds it (converter/recipes/gated_deltanet.cpp): unit-norm q, k per head,
// beta in (0, 1), a scalar log decay per head and token; scale 1. args: H, d, T.
lk::DeltaRuleInputs delta_rule_inputs(int64_t T, int64_t H, int64_t d) {
  const auto unit = [](const at::Tensor& x) { return x / x.norm(2, -1, true); };
  lk::DeltaRuleInputs in;
  in.q = unit(at::randn({1, T, H, d}));
  in.k = unit(at::randn({1, T, H, d}));
  in.v = at::randn({1, T, H, d});
  in.beta = at::sigmoid(at::randn({1, T, H}));
  in.log_decay = -at::softplus(at::randn({1, T, H})) / 16;
  return in;
}

void delta_rule(benchmark::State& state, lk::MixerForm form) {
  c10::InferenceMode inference;
  const int64_t H = state.range(0), d = state.range(1), T = state.range(2);
  const auto in = delta_rule_inputs(T, H, d);
  lk::LinearAttentionOptions opt;
  opt.form = form;
  opt.scale = 1.0;
  for (auto _ : state) benchmark::DoNotOptimize(lk::delta_rule(in, {}, opt).o.data_ptr());
  state.counters["T"] = static_cast<double>(T);
}
void BM_DeltaRuleChunked(benchmark::State& state) { delta_rule(state, lk::MixerForm::chunked); }
void BM_DeltaRuleRecurrent(benchmark::State& state) { delta_rule(state, lk::MixerForm::recurrent); }

void prefill_grid(benchmark::internal::Benchmark* b, int64_t max_T_h32, int64_t max_T_h8) {
  for (int64_t H : {8, 32}) {
    for (int64_t d : {64, 128}) {
      for (int64_t T : {256, 1024, 2048, 4096, 16384, 32768}) {
        if (T <= (H == 32 ? max_T_h32 : max_T_h8)) b->Args({H, d, T});
      }
    }
  }
  // Three repetitions and their fastest: a 32K point is a single call per repetition, and the first call
  // of a size also pays for first-touch page faults of its buffers.
  b->ArgNames({"H", "d", "T"})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.3)->Repetitions(3);
  b->ComputeStatistics("min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); });
  b->ReportAggregatesOnly(true);
}

// The chunked form runs the full grid; the recurrent form to 4K (its time per token is flat, and 4K is
// where the issue compares it); SDPA's quadratic cost runs to 4K at H = 32 and to 32K at H = 8.
BENCHMARK(BM_GlaChunked)->Apply([](auto* b) { prefill_grid(b, 32768, 32768); });
BENCHMARK(BM_GlaRecurrent)->Apply([](auto* b) { prefill_grid(b, 4096, 4096); });
BENCHMARK(BM_SdpaCausal)->Apply([](auto* b) { prefill_grid(b, 4096, 32768); });
BENCHMARK(BM_SsdChunked)->Apply([](auto* b) { prefill_grid(b, 4096, 4096); });
// The delta rule to 4K on both forms (its chunked form adds a triangular solve per chunk to GLA's work).
BENCHMARK(BM_DeltaRuleChunked)->Apply([](auto* b) { prefill_grid(b, 4096, 4096); });
BENCHMARK(BM_DeltaRuleRecurrent)->Apply([](auto* b) { prefill_grid(b, 4096, 4096); });
// Decode's projections: one row times 120 distinct [2048, 768] matrices in turn (377 MB in bf16, 755 MB in
// fp32: streamed from memory, as a model's weights are, not from cache). arg 0: kernels::linear_projection
// with bf16 weights (the matrix-vector loop), 1: at::linear with fp32 weights (MKL's GEMV, our fp32 path),
// 2: at::linear with bf16 weights (oneDNN, what the loop replaced). Counter: weight bytes read per second.
void BM_DecodeProjection(benchmark::State& state) {
  c10::InferenceMode inference;
  const int64_t kind = state.range(0), out = 2048, in = 768, matrices = 120;
  const auto dtype = kind == 1 ? at::kFloat : at::kBFloat16;
  std::vector<at::Tensor> weights;
  for (int64_t i = 0; i < matrices; ++i) weights.push_back(at::randn({out, in}).to(dtype));
  const auto x = at::randn({1, in}).to(dtype);
  for (auto _ : state)
    for (const auto& w : weights)
      benchmark::DoNotOptimize((kind == 0 ? lk::linear_projection(x, w) : at::linear(x, w)).data_ptr());
  state.counters["weight_bytes_per_s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * matrices * out * in * weights[0].element_size()), benchmark::Counter::kIsRate);
}

BENCHMARK(BM_FusedDecodeBaseline)->Unit(benchmark::kMicrosecond)->MinTime(0.3);
BENCHMARK(BM_DecodeProjection)->Arg(0)->Arg(1)->Arg(2)->ArgName("kind")->Unit(benchmark::kMillisecond)->MinTime(0.5);
BENCHMARK(BM_GlaDecodeStep)->Arg(128)->Arg(1024)->Arg(8192)->Arg(32768)->ArgName("context")->Unit(benchmark::kMicrosecond)->MinTime(0.3);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  add_roofline_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
