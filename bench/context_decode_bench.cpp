// Decode speed and memory against context length: a source model (KV cache grows with the context) and
// its conversion (recurrent state + window cache: constant), same checkpoint, same run.
//   BM_DecodeAtContext/context:N           per model, prefill N tokens (untimed), then time 32 greedy steps;
//                                          5 rounds alternating the models, medians and the ratio
//   BM_DecodeMemory/<model>/tokens:N       decode N tokens from a 1-token prompt: the state's bytes and
//                                          the resident memory the decode added
//   env: LINEARIZE_BENCH_SOURCE, LINEARIZE_BENCH_CONVERTED (model directories)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

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

// Greedy decode tokens/s of one model from a fresh prefill of `context` tokens (untimed).
double decode_rate(const CausalLM& model, std::int64_t context, std::int64_t& state_bytes) {
  auto decode = model.new_state();
  auto next = model.prefill(prompt(model, context), decode).argmax(-1);
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t i = 0; i < kTimedSteps; ++i) next = model.step(next, decode).argmax(-1);
  const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
  state_bytes = decode.bytes();
  return static_cast<double>(kTimedSteps) / seconds.count();
}

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x.size() % 2 ? x[x.size() / 2] : 0.5 * (x[x.size() / 2 - 1] + x[x.size() / 2]);
}

// Source and converted in alternating rounds, so a drift of the machine's speed (other processes, clocks)
// falls on both: the ratio is the median of the rounds' ratios.
void BM_DecodeAtContext(benchmark::State& state, const CausalLM* source, const CausalLM* converted) {
  const std::int64_t context = state.range(0);
  constexpr int kRounds = 5;
  std::vector<double> source_rates, converted_rates, ratios;
  std::int64_t source_bytes = 0, converted_bytes = 0;
  for (auto _ : state) {
    for (int round = 0; round < kRounds; ++round) {
      source_rates.push_back(decode_rate(*source, context, source_bytes));
      converted_rates.push_back(decode_rate(*converted, context, converted_bytes));
      ratios.push_back(converted_rates.back() / source_rates.back());
    }
  }
  state.counters["source_tokens_per_s"] = median(source_rates);
  state.counters["converted_tokens_per_s"] = median(converted_rates);
  state.counters["ratio"] = median(ratios);
  state.counters["ratio_min"] = *std::min_element(ratios.begin(), ratios.end());
  state.counters["source_state_bytes"] = static_cast<double>(source_bytes);
  state.counters["converted_state_bytes"] = static_cast<double>(converted_bytes);
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
  benchmark::RegisterBenchmark("BM_DecodeAtContext", BM_DecodeAtContext, source.get(), converted.get())
      ->ArgName("context")->Arg(256)->Arg(4096)->Arg(16384)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  for (auto [name, model] : {std::pair{"source", source.get()}, std::pair{"converted", converted.get()}}) {
    benchmark::RegisterBenchmark((std::string("BM_DecodeMemory/") + name).c_str(), BM_DecodeMemory, model)
        ->ArgName("tokens")->Arg(256)->Arg(4096)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
