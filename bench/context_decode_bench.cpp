// Decode speed and memory against context length: a source model (KV cache grows with the context) and
// its conversion (recurrent state + window cache: constant), same checkpoint, same run.
//   BM_DecodeAtContext/<model>/context:N   prefill N tokens (untimed), then time 32 greedy steps
//   BM_DecodeMemory/<model>/tokens:N       decode N tokens from a 1-token prompt: the state's bytes and
//                                          the resident memory the decode added
//   env: LINEARIZE_BENCH_SOURCE, LINEARIZE_BENCH_CONVERTED (model directories)
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <unistd.h>

#include "bench/synthetic_safetensors.h"
#include "converter/linearized.h"

namespace {

using linearize::CausalLM;

constexpr std::int64_t kTimedSteps = 32;

std::int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

at::Tensor prompt(const CausalLM& model, std::int64_t length) {
  return ((at::arange(length, at::kLong) * 7 + 3) % model.config().vocab_size).unsqueeze(0);
}

void BM_DecodeAtContext(benchmark::State& state, const CausalLM* model) {
  const std::int64_t context = state.range(0);
  std::int64_t bytes = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto decode = model->new_state();
    auto next = model->prefill(prompt(*model, context), decode).argmax(-1);
    state.ResumeTiming();
    for (std::int64_t i = 0; i < kTimedSteps; ++i) next = model->step(next, decode).argmax(-1);
    bytes = decode.bytes();
  }
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * kTimedSteps), benchmark::Counter::kIsRate);
  state.counters["state_bytes"] = static_cast<double>(bytes);
}

void BM_DecodeMemory(benchmark::State& state, const CausalLM* model) {
  const std::int64_t tokens = state.range(0);
  for (auto _ : state) {
    auto decode = model->new_state();
    auto next = model->prefill(prompt(*model, 1), decode).argmax(-1);
    const auto before = resident_bytes();
    for (std::int64_t i = 0; i < tokens; ++i) next = model->step(next, decode).argmax(-1);
    state.counters["state_bytes"] = static_cast<double>(decode.bytes());
    state.counters["rss_growth_bytes"] = static_cast<double>(resident_bytes() - before);
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  std::unique_ptr<CausalLM> source, converted;
  try {
    const char* s = std::getenv("LINEARIZE_BENCH_SOURCE");
    const char* c = std::getenv("LINEARIZE_BENCH_CONVERTED");
    if (!s || !c) throw std::runtime_error("set LINEARIZE_BENCH_SOURCE and LINEARIZE_BENCH_CONVERTED");
    source = std::make_unique<CausalLM>(linearize::load_model(s));
    converted = std::make_unique<CausalLM>(linearize::load_model(c));
    benchmark::AddCustomContext("source", s);
    benchmark::AddCustomContext("converted", c);
    benchmark::AddCustomContext("recipe", converted->config().linearize.value("recipe", ""));
    benchmark::AddCustomContext("libtorch", linearize::bench::libtorch_version());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "context_decode_bench: %s\n", e.what());
    return 3;
  }
  for (auto [name, model] : {std::pair{"source", source.get()}, std::pair{"converted", converted.get()}}) {
    benchmark::RegisterBenchmark((std::string("BM_DecodeAtContext/") + name).c_str(), BM_DecodeAtContext, model)
        ->ArgName("context")->Arg(256)->Arg(4096)->Arg(16384)->Iterations(1)->Repetitions(3)
        ->ReportAggregatesOnly(true)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark((std::string("BM_DecodeMemory/") + name).c_str(), BM_DecodeMemory, model)
        ->ArgName("tokens")->Arg(256)->Arg(4096)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
