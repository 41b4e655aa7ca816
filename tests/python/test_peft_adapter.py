"""Our PEFT LoRA adapters against the reference: `peft.PeftModel.from_pretrained` loads what our C++
writer produced onto transformers' LlamaForCausalLM, and peft's LoRA forward and merged weights must equal
our LoraLinear::forward and LoraLinear::merge; and the adapter a `linearize distill` stage 2 exports loads
onto the converted model's HF module names with every module and value in place. Driven by ctest with
LORA_PROBE and LINEARIZE_BINARY pointing at the C++ tools.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import check_hf_export  # noqa: E402

PROBE = os.environ["LORA_PROBE"]
MODEL = os.path.join(os.environ["LINEARIZE_FIXTURES"], "tiny-llama")


def distill(out, recipe, stage1_steps, stage2):
    """`linearize distill` on tiny-llama into out/run (64-token batches of 2, constant lr 0.01); the export dir."""
    corpus = os.path.join(os.environ["LINEARIZE_FIXTURES"], "corpus", "corpus.txt")
    run = os.path.join(out, "run.yaml")
    with open(run, "w") as f:
        f.write(f"""model: {MODEL}
out: {out}/run
recipe: {recipe}
data: {{files: [{corpus}], seq_len: 64, batch_size: 2, validation_fraction: 0}}
stage1: {{lr: 0.01, schedule: constant, grad_accum: 1, steps: {stage1_steps}}}
stage2: {{steps: 3, lr: 0.01, schedule: constant, grad_accum: 1, {stage2}}}
""")
    subprocess.run([os.environ["LINEARIZE_BINARY"], "distill", "--config", run], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return os.path.join(out, "run", "model")


class PeftAdapter(unittest.TestCase):
    def check(self, r, alpha, rslora):
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([PROBE, MODEL, out, str(r), str(alpha), "1" if rslora else "0"], check=True, capture_output=True)
            with open(os.path.join(out, "adapter", "adapter_config.json")) as f:
                config = json.load(f)
            self.assertEqual((config["r"], config["lora_alpha"], config["use_rslora"]), (r, alpha, rslora))
            expected = load_file(os.path.join(out, "expected.safetensors"))
            modules = sorted({name.rsplit(".", 1)[0] for name in expected})
            self.assertEqual(len(modules), 4)  # q_proj and v_proj of both layers

            base = LlamaForCausalLM.from_pretrained(MODEL, attn_implementation="eager", dtype=torch.float32)
            model = PeftModel.from_pretrained(base, os.path.join(out, "adapter"))
            model.eval()
            scaling = alpha / (r ** 0.5 if rslora else r)
            with torch.no_grad():
                for path in modules:
                    layer = model.get_submodule("base_model.model." + path)
                    self.assertAlmostEqual(layer.scaling["default"], scaling)
                    # fp32 on the same CPU: x W^T plus s B (A x) with in <= 96 and r <= 8 products per sum. Any
                    # difference comes from BLAS blocking order, a few ulp of the O(1) outputs: 1e-5 bounds it
                    # with room and is still far below a wrong scale or a transposed factor (O(0.1) changes).
                    torch.testing.assert_close(layer(expected[path + ".input"]), expected[path + ".output"], rtol=1e-5, atol=1e-5)
                merged = model.merge_and_unload()
            for path in modules:
                # PEFT merges as W + (B @ A) * s in fp32, the same operations in the same order as ours.
                torch.testing.assert_close(merged.get_submodule(path).weight, expected[path + ".merged"], rtol=1e-6, atol=1e-6)

    def test_plain_lora(self):
        self.check(r=8, alpha=16, rslora=False)

    def test_rslora(self):
        self.check(r=4, alpha=8, rslora=True)

    def test_distill_export_loads_onto_the_converted_model(self):
        with tempfile.TemporaryDirectory() as out:
            model_dir = distill(out, "{name: lolcats, params: {window: 16}}", 2,
                                "lora: {r: 4, alpha: 8, targets: [q_proj, v_proj, down_proj]}")
            adapter_dir = os.path.join(model_dir, "adapter")
            ours = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
            # The export loads in transformers through its own modeling file (auto_map), and the adapter onto it.
            base = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, adapter_dir)
            loaded = {name: module for name, module in model.named_modules() if hasattr(module, "lora_A") and "default" in module.lora_A}
            expected = sorted(f"base_model.model.model.layers.{i}.{m}" for i in range(2)
                              for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))
            self.assertEqual(sorted(loaded), expected)
            for name, module in loaded.items():
                key = name + ".lora_A.weight"
                torch.testing.assert_close(module.lora_A["default"].weight, ours[key], rtol=0, atol=0)
                torch.testing.assert_close(module.lora_B["default"].weight, ours[name + ".lora_B.weight"], rtol=0, atol=0)
                self.assertGreater(module.lora_B["default"].weight.abs().max().item(), 0)  # trained, not the zero init
            # L5 with the adapter attached (as `linearize` attaches DIR/adapter): logits, decode, generate.
            report = check_hf_export.check(model_dir, os.environ["LINEARIZE_BINARY"], check_hf_export.Report(), model=model)
            self.assertTrue(report.passed, [r for r in report.rows if not r["pass"]])

    def test_merged_distill_export_loads_alone(self):
        with tempfile.TemporaryDirectory() as out:
            model_dir = distill(out, "{name: hedgehog}", 1, "merge: true, lora: {r: 4, alpha: 8, targets: [q_proj, k_proj, o_proj]}")
            self.assertFalse(os.path.exists(os.path.join(model_dir, "adapter")))
            report = check_hf_export.check(model_dir, os.environ["LINEARIZE_BINARY"], check_hf_export.Report())
            self.assertTrue(report.passed, [r for r in report.rows if not r["pass"]])


if __name__ == "__main__":
    unittest.main()
