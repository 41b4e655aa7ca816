// linearize's side of the training benchmark against plain PyTorch (bench/distill_pytorch.py runs the same
// steps on the same checkpoints, ids and threads): full optimiser steps of both LoLCATs stages, as
// distill/run.cpp takes them (zero_grad, loss, backward, gradient clip 1.0, AdamW step).
//   BM_Stage1Step      attention transfer: attention_transfer_loss (mse, factor 1000) over every layer,
//                      AdamW (lr 1e-2, no weight decay) on the feature maps and window factors
//   BM_Stage2Step/ce   LoRA r 8 alpha 16 on q,k,v,o (base and stage-1 tensors frozen): next-token CE,
//   BM_Stage2Step/kl   or KL(teacher || student) with the source's forward; AdamW (lr 1e-4) on the adapters
// Each step is one timed iteration of batch 1 x T tokens; tokens_per_s counts T per step (the "min"
// aggregate's real_time is the fastest step). The initial losses (before any step, no grad) go into the
// JSON context, so the other side can be checked against them.
//
//   distill_bench [--benchmark_out=FILE --benchmark_out_format=json ...]
//   env: LINEARIZE_BENCH_SOURCE (HF checkpoint), LINEARIZE_BENCH_CONVERTED (its lolcats conversion),
//        LINEARIZE_BENCH_THREADS, LINEARIZE_BENCH_TOKENS (512)
#include <benchmark/benchmark.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "bench/synthetic_safetensors.h"
#include "converter/linearized.h"
#include "converter/model/lora.h"
#include "distill/attention_transfer.h"
#include "distill/run.h"
#include "distill/stage2_loss.h"

namespace {

using linearize::CausalLM;

constexpr double kTransferFactor = 1000.0, kClip = 1.0;

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

// Fixed pseudo-random ids both sides compute: (i * 2654435761 mod 2^32) mod vocab, Knuth's multiplicative
// hash of the position, [1, T].
at::Tensor bench_ids(std::int64_t length, std::int64_t vocab) {
  return ((at::arange(length, at::kLong) * 2654435761LL) % (std::int64_t{1} << 32) % vocab).unsqueeze(0);
}

std::vector<at::Tensor> handles(const linearize::NamedTensors& params) {
  std::vector<at::Tensor> out;
  for (const auto& [name, tensor] : params) out.push_back(tensor);
  return out;
}

struct Workload {
  std::unique_ptr<CausalLM> source, stage1_student, stage2_student;
  linearize::NamedTensors stage1_params, stage2_params;
  std::unique_ptr<torch::optim::AdamW> stage1_optimizer, stage2_optimizer;  // kept across repetitions
  at::Tensor ids;
};

void step_counters(benchmark::State& state, const Workload& w) {
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * w.ids.numel()), benchmark::Counter::kIsRate);
}

void stage1_step(Workload& w) {
  w.stage1_optimizer->zero_grad();
  linearize::attention_transfer_loss(*w.stage1_student, *w.source, w.ids, kTransferFactor).loss.backward();
  linearize::clip_gradients(w.stage1_params, kClip);
  w.stage1_optimizer->step();
}

void stage2_step(Workload& w, linearize::Stage2Loss kind) {
  w.stage2_optimizer->zero_grad();
  linearize::stage2_loss(*w.stage2_student, *w.source, w.ids, w.ids, kind).backward();
  linearize::clip_gradients(w.stage2_params, kClip);
  w.stage2_optimizer->step();
}

void BM_Stage1Step(benchmark::State& state, Workload* w) {
  for (auto _ : state) stage1_step(*w);
  step_counters(state, *w);
}

void BM_Stage2Step(benchmark::State& state, Workload* w, linearize::Stage2Loss kind) {
  for (auto _ : state) stage2_step(*w, kind);
  step_counters(state, *w);
}

std::string figure(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.9g", value);
  return buffer;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  Workload w;
  try {
    const std::string source = env_or("LINEARIZE_BENCH_SOURCE", ""), converted = env_or("LINEARIZE_BENCH_CONVERTED", "");
    if (source.empty() || converted.empty()) throw std::runtime_error("set LINEARIZE_BENCH_SOURCE and LINEARIZE_BENCH_CONVERTED");
    at::set_num_threads(std::stoi(env_or("LINEARIZE_BENCH_THREADS", std::to_string(at::get_num_threads()))));
    w.source = std::make_unique<CausalLM>(linearize::load_model(source));
    // Two students: stage 2's LoRA adds work to every projection, which stage 1's step must not pay.
    w.stage1_student = std::make_unique<CausalLM>(linearize::load_model(converted));
    w.stage1_params = linearize::make_stage1_trainable(*w.stage1_student);
    w.stage2_student = std::make_unique<CausalLM>(linearize::load_model(converted));
    const auto adapters = linearize::attach_lora(*w.stage2_student, {"q_proj", "k_proj", "v_proj", "o_proj"},
                                                 linearize::LoraOptions{8, 16.0, 0.0, false},
                                                 at::make_generator<at::CPUGeneratorImpl>(0));
    for (const auto& adapter : adapters) {
      w.stage2_params.emplace_back(adapter->a_name(), adapter->a());
      w.stage2_params.emplace_back(adapter->b_name(), adapter->b());
    }
    w.stage1_optimizer = std::make_unique<torch::optim::AdamW>(handles(w.stage1_params),
                                                               torch::optim::AdamWOptions(1e-2).weight_decay(0));
    w.stage2_optimizer = std::make_unique<torch::optim::AdamW>(handles(w.stage2_params),
                                                               torch::optim::AdamWOptions(1e-4).weight_decay(0));
    w.ids = bench_ids(std::stoll(env_or("LINEARIZE_BENCH_TOKENS", "512")), w.source->config().vocab_size);
    {
      // B = 0 leaves the LoRA student equal to the conversion, so these do not depend on A's draw.
      at::NoGradGuard no_grad;
      const auto initial = linearize::attention_transfer_loss(*w.stage1_student, *w.source, w.ids, kTransferFactor);
      benchmark::AddCustomContext("initial_stage1_loss", figure(initial.loss.item<double>()));
      benchmark::AddCustomContext("initial_stage2_ce", figure(linearize::stage2_loss(*w.stage2_student, *w.source, w.ids, w.ids,
                                                                                     linearize::Stage2Loss::kCe).item<double>()));
      benchmark::AddCustomContext("initial_stage2_kl", figure(linearize::stage2_loss(*w.stage2_student, *w.source, w.ids, w.ids,
                                                                                     linearize::Stage2Loss::kKl).item<double>()));
    }
    benchmark::AddCustomContext("source", source);
    benchmark::AddCustomContext("converted", converted);
    benchmark::AddCustomContext("batch", "1");
    benchmark::AddCustomContext("tokens", std::to_string(w.ids.size(1)));
    benchmark::AddCustomContext("threads", std::to_string(at::get_num_threads()));
    benchmark::AddCustomContext("cpu_model", cpu_model());
    benchmark::AddCustomContext("libtorch", linearize::bench::libtorch_version());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distill_bench: %s\n", e.what());
    return 3;
  }
  // Two warm-up steps of each (the allocator's first requests, AdamW's state), then one step an
  // iteration, 7 of them: the median and the fastest (contention on a shared machine only ever adds time,
  // so the fastest step is the one nearest the unloaded figure).
  for (int i = 0; i < 2; ++i) {
    stage1_step(w);
    stage2_step(w, linearize::Stage2Loss::kCe);
    stage2_step(w, linearize::Stage2Loss::kKl);
  }
  auto configure = [](benchmark::internal::Benchmark* b) {
    b->Iterations(1)->Repetitions(7)->ReportAggregatesOnly(true)->UseRealTime()->Unit(benchmark::kMillisecond)
        ->ComputeStatistics("min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); });
  };
  configure(benchmark::RegisterBenchmark("BM_Stage1Step", BM_Stage1Step, &w));
  configure(benchmark::RegisterBenchmark("BM_Stage2Step/ce", BM_Stage2Step, &w, linearize::Stage2Loss::kCe));
  configure(benchmark::RegisterBenchmark("BM_Stage2Step/kl", BM_Stage2Step, &w, linearize::Stage2Loss::kKl));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
