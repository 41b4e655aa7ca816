// linearize's side of the decoder benchmark against transformers (bench/decoder_transformers.py times the
// same two things on the same checkpoint and prompt): prefill of T tokens at batch 1, and greedy decode of
// N new tokens through step() with the KV cache.
//
//   decoder_bench [--benchmark_out=FILE --benchmark_out_format=json ...]
//   env: LINEARIZE_BENCH_MODEL (checkpoint dir), LINEARIZE_BENCH_DEVICE (cpu|cuda), LINEARIZE_BENCH_DTYPE
//        (fp32|bf16|fp16), LINEARIZE_BENCH_THREADS, LINEARIZE_BENCH_PROMPT (512), LINEARIZE_BENCH_NEW_TOKENS (64)
#include <benchmark/benchmark.h>

#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>

#include "bench/synthetic_safetensors.h"
#include "converter/model/causal_lm.h"

namespace {

using linearize::CausalLM;

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

struct Workload {
  std::unique_ptr<CausalLM> model;
  at::Tensor prompt;  // [1, T]
  std::int64_t new_tokens = 64;
};

void sync(const at::Tensor& t) {
  if (t.is_cuda()) t.cpu();
}

void BM_Prefill(benchmark::State& state, Workload* w) {
  for (auto _ : state) {
    auto decode = w->model->new_state();
    const auto logits = w->model->prefill(w->prompt, decode);
    sync(logits);
    benchmark::DoNotOptimize(logits.data_ptr());
  }
  state.counters["tokens_per_s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * w->prompt.size(1)), benchmark::Counter::kIsRate);
}

// The prompt's prefill is outside the timed region; the first token comes from it, so N - 1 steps.
void BM_Decode(benchmark::State& state, Workload* w) {
  for (auto _ : state) {
    state.PauseTiming();
    auto decode = w->model->new_state();
    auto next = w->model->prefill(w->prompt, decode).argmax(-1);
    sync(next);
    state.ResumeTiming();
    for (std::int64_t i = 1; i < w->new_tokens; ++i) next = w->model->step(next, decode).argmax(-1);
    sync(next);
  }
  state.counters["tokens_per_s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * (w->new_tokens - 1)), benchmark::Counter::kIsRate);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  Workload w;
  try {
    const std::string dir = env_or("LINEARIZE_BENCH_MODEL", "");
    if (dir.empty()) throw std::runtime_error("set LINEARIZE_BENCH_MODEL to a checkpoint directory");
    const std::string device = env_or("LINEARIZE_BENCH_DEVICE", "cpu"), dtype = env_or("LINEARIZE_BENCH_DTYPE", "fp32");
    at::set_num_threads(std::stoi(env_or("LINEARIZE_BENCH_THREADS", std::to_string(at::get_num_threads()))));
    linearize::LoadOptions options;
    options.dtype = dtype == "bf16" ? at::kBFloat16 : dtype == "fp16" ? at::kHalf : at::kFloat;
    options.device = device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
    w.model = std::make_unique<CausalLM>(CausalLM::load(dir, options));
    const std::int64_t length = std::stoll(env_or("LINEARIZE_BENCH_PROMPT", "512"));
    w.new_tokens = std::stoll(env_or("LINEARIZE_BENCH_NEW_TOKENS", "64"));
    // (7 i + 3) mod vocab, as bench/decoder_transformers.py builds it.
    w.prompt = ((at::arange(length, at::kLong) * 7 + 3) % w.model->config().vocab_size).unsqueeze(0).to(options.device);
    benchmark::AddCustomContext("model", dir);
    benchmark::AddCustomContext("device", device);
    benchmark::AddCustomContext("dtype", dtype);
    benchmark::AddCustomContext("threads", std::to_string(at::get_num_threads()));
    benchmark::AddCustomContext("prompt_tokens", std::to_string(length));
    benchmark::AddCustomContext("new_tokens", std::to_string(w.new_tokens));
    benchmark::AddCustomContext("libtorch", linearize::bench::libtorch_version());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decoder_bench: %s\n", e.what());
    return 3;
  }
  benchmark::RegisterBenchmark("BM_Prefill", BM_Prefill, &w)->Unit(benchmark::kMillisecond)->MinTime(3.0)->UseRealTime();
  benchmark::RegisterBenchmark("BM_Decode", BM_Decode, &w)->Unit(benchmark::kMillisecond)->MinTime(3.0)->UseRealTime();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
