"""`linearize inspect --json` on every bundled fixture against what transformers and safetensors say.

The oracle is transformers' own config classes (after their defaults and RoPE standardisation) and the
model they build, plus safetensors' view of the shards, never our own output.
"""
import json
import os
import subprocess
import sys
import unittest

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

LINEARIZE = os.environ["LINEARIZE_BINARY"]
FIXTURES = os.environ["LINEARIZE_FIXTURES"]
MODELS = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3", "deep-llama"]


def weight_files(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(os.path.join(model_dir, "model.safetensors")):
        return ["model.safetensors"]
    with open(index) as f:
        return sorted(set(json.load(f)["weight_map"].values()))


class InspectFixtures(unittest.TestCase):
    def check(self, name):
        model_dir = os.path.join(FIXTURES, name)
        run = subprocess.run([LINEARIZE, "inspect", "--json", model_dir], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        got = json.loads(run.stdout)
        cfg = AutoConfig.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

        self.assertEqual(got["architecture"], cfg.architectures[0])
        self.assertEqual(got["parameters"], model.num_parameters())
        self.assertEqual(got["layers"], cfg.num_hidden_layers)
        self.assertEqual(got["heads"], cfg.num_attention_heads)
        self.assertEqual(got["kv_heads"], cfg.num_key_value_heads)
        self.assertEqual(got["head_dim"], model.model.layers[0].self_attn.head_dim)
        self.assertEqual(got["vocab_size"], cfg.vocab_size)
        self.assertEqual(got["tie_word_embeddings"], bool(cfg.tie_word_embeddings))
        attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
        expected_biases = [f"{scope}.{name}" for scope, module in (("self_attn", attn), ("mlp", mlp))
                           for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                           if getattr(getattr(module, name, None), "bias", None) is not None]
        self.assertEqual(got["layer0_biases"], expected_biases)
        self.assertEqual(got["config_dtype"], str(cfg.dtype).replace("torch.", ""))

        # One RoPE, or one per layer type (Gemma 3: the sliding layers' own base).
        ropes = cfg.rope_parameters
        per_type = "full_attention" in ropes
        for ours, rope in ((got["rope"], ropes["full_attention"] if per_type else ropes),
                           (got.get("sliding_rope"), ropes.get("sliding_attention") if per_type else None)):
            if rope is None:
                continue
            self.assertEqual(ours["type"], rope["rope_type"])
            self.assertAlmostEqual(ours["theta"], rope["rope_theta"])
            for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if key in rope and rope["rope_type"] != "default":
                    self.assertAlmostEqual(ours[key], rope[key], msg=key)

        # The block, against the modules transformers built.
        layer, block = model.model.layers[0], got["block"]
        self.assertEqual(block["qk_norm"], hasattr(attn, "q_norm"))
        self.assertEqual(block["sandwich_norms"], hasattr(layer, "pre_feedforward_layernorm"))
        self.assertEqual(block["activation"], getattr(cfg, "hidden_activation", None) or cfg.hidden_act)
        self.assertAlmostEqual(block["embedding_scale"], float(getattr(model.model.embed_tokens, "scalar_embed_scale", 1.0)))
        self.assertAlmostEqual(block["attention_scale"], attn.scaling)
        self.assertEqual(block.get("final_logit_softcap"), getattr(cfg, "final_logit_softcapping", None))

        layer_types = getattr(cfg, "layer_types", None)
        if cfg.model_type == "mistral":  # MistralConfig: one window for all layers, when set
            expected_sliding = list(range(cfg.num_hidden_layers)) if cfg.sliding_window else []
        else:
            expected_sliding = [i for i, t in enumerate(layer_types or []) if t == "sliding_attention"]
        self.assertEqual(got["attention_window"]["sliding_layers"], expected_sliding)
        self.assertEqual(got["attention_window"]["sliding_window"], getattr(cfg, "sliding_window", None))

        files = weight_files(model_dir)
        self.assertEqual([s["file"] for s in got["shards"]], files)
        self.assertEqual(got["sharded"], len(files) > 1 or files != ["model.safetensors"])
        total = 0
        for shard, file in zip(got["shards"], files):
            with safe_open(os.path.join(model_dir, file), framework="pt") as f:
                keys = list(f.keys())
                nbytes = sum(f.get_tensor(k).nbytes for k in keys)
            self.assertEqual(shard["tensors"], len(keys), file)
            self.assertEqual(shard["bytes"], nbytes, file)
            total += nbytes
        self.assertEqual(got["bytes"], total)

        text = subprocess.run([LINEARIZE, "inspect", model_dir], capture_output=True, text=True, check=True).stdout
        self.assertIn(cfg.architectures[0], text)
        self.assertIn(f"{got['parameters']}", text)

    def test_llama(self):
        self.check("tiny-llama")

    def test_mistral(self):
        self.check("tiny-mistral")

    def test_qwen2(self):
        self.check("tiny-qwen2")

    def test_qwen3(self):
        self.check("tiny-qwen3")

    def test_gemma3(self):
        self.check("tiny-gemma3")

    def test_deep_llama(self):
        self.check("deep-llama")


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
