// Test tool for tests/python/test_peft_adapter.py: puts LoRA (random A and B, so the adapter matters) on
// the q_proj and v_proj of every layer of a model directory's model.safetensors, and writes
//   OUT/adapter/                  the PEFT adapter (write_peft_adapter)
//   OUT/expected.safetensors      per module: <path>.merged (LoraLinear::merge), <path>.input and
//                                 <path>.output (LoraLinear::forward in eval mode)
// Usage: lora_probe MODEL_DIR OUT_DIR R ALPHA RSLORA(0|1)
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <iostream>
#include <string>

#include "converter/model/lora.h"
#include "formats/safetensors.h"

int main(int argc, char** argv) {
  using namespace linearize;
  if (argc != 6) {
    std::cerr << "usage: lora_probe MODEL_DIR OUT_DIR R ALPHA RSLORA(0|1)\n";
    return 2;
  }
  const std::filesystem::path model_dir = argv[1], out_dir = argv[2];
  const LoraOptions options{std::stoll(argv[3]), std::stod(argv[4]), 0.1, std::string(argv[5]) == "1"};
  const auto weights = SafetensorsFile::open(model_dir / "model.safetensors");
  auto generator = at::make_generator<at::CPUGeneratorImpl>(1234);

  PeftAdapter adapter;
  adapter.config = {options.r, options.alpha, options.dropout, options.rslora, {"q_proj", "v_proj"}, model_dir.string()};
  NamedTensors expected;
  for (int layer = 0; weights.find("model.layers." + std::to_string(layer) + ".self_attn.q_proj.weight") != nullptr; ++layer) {
    for (const char* projection : {"q_proj", "v_proj"}) {
      const std::string path = "model.layers." + std::to_string(layer) + ".self_attn." + projection;
      const LoraLinear lora(path, weights.tensor(path + ".weight"), at::Tensor(), options, generator);
      {
        at::NoGradGuard no_grad;
        lora.b().normal_(0, 0.1, generator);
      }
      const at::Tensor input = at::randn({2, 5, lora.weight().size(1)}, generator);
      at::NoGradGuard no_grad;
      expected.emplace_back(path + ".merged", lora.merge());
      expected.emplace_back(path + ".input", input);
      expected.emplace_back(path + ".output", lora.forward(input, false));
      adapter.modules.push_back(lora.to_peft());
    }
  }
  write_peft_adapter(out_dir / "adapter", adapter);
  write_safetensors(out_dir / "expected.safetensors", expected);
  std::cout << adapter.modules.size() << " modules\n";
  return 0;
}
