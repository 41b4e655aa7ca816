"""`linearize inspect --json` on every bundled fixture against what transformers and safetensors say.

The oracle is transformers' own config classes (after their defaults and RoPE standardisation) and the
model they build, plus safetensors' view of the shards, never our own output.
"""
import glob
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
MODELS = sorted(os.path.basename(d) for d in glob.glob(os.path.join(FIXTURES, "tiny-*"))) + ["deep-llama"]


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
        q_norm = getattr(attn, "q_norm", None)
        self.assertEqual(block["qk_norm"], "none" if q_norm is None else
                         "per_head" if q_norm.weight.shape[0] == attn.head_dim else "full_width")
        self.assertEqual(block["norm_placement"], "sandwich" if hasattr(layer, "pre_feedforward_layernorm") else
                         "post" if not hasattr(layer, "input_layernorm") else "pre")
        self.assertEqual(block["activation"], getattr(cfg, "hidden_activation", None) or cfg.hidden_act)
        embed_scale = getattr(model.model.embed_tokens, "scalar_embed_scale", None) or getattr(model.model, "embedding_multiplier", 1.0)
        self.assertAlmostEqual(block["embedding_scale"], float(embed_scale))
        self.assertAlmostEqual(block["attention_scale"], attn.scaling)
        self.assertAlmostEqual(block["residual_scale"], getattr(layer, "residual_multiplier", 1.0))
        self.assertAlmostEqual(block["logits_divisor"], getattr(cfg, "logits_scaling", 1.0))
        self.assertEqual(block.get("final_logit_softcap"), getattr(cfg, "final_logit_softcapping", None))
        self.assertEqual(block.get("attention_sinks", False), hasattr(attn, "sinks"))
        nope = [i for i, l in enumerate(model.model.layers) if not getattr(l.self_attn, "use_rope", True)]
        self.assertEqual(block.get("nope_layers", []), nope)

        # Routed MLPs: the layers whose MLP module has experts, and its router's settings.
        mlps = [getattr(l, "mlp", None) or getattr(l, "block_sparse_moe") for l in model.model.layers]
        sparse = [i for i, m in enumerate(mlps) if hasattr(m, "experts")]
        if not sparse:
            self.assertNotIn("moe", got)
        else:
            routed = mlps[sparse[0]]
            moe, router, experts = got["moe"], getattr(routed, "router", None) or routed.gate, routed.experts
            self.assertEqual(moe["sparse_layers"], sparse)
            self.assertEqual(moe["experts"], router.num_experts)
            self.assertEqual(moe["top_k"], router.top_k)
            self.assertEqual(moe["expert_intermediate_size"], getattr(experts, "intermediate_dim", None) or experts.intermediate_size)
            # Mixtral always renormalises; gpt-oss's softmax over the top k logits is the renormalised top k.
            self.assertEqual(moe["normalize_top_k"], getattr(router, "norm_topk_prob", True))
            self.assertEqual(moe["router_bias"], getattr(router, "bias", None) is not None)
            with safe_open(os.path.join(model_dir, weight_files(model_dir)[0]), framework="pt") as f:
                stacked = any(k.endswith("mlp.experts.gate_up_proj") for k in f.keys())
            self.assertEqual(moe["stacked_experts"], stacked)
            if hasattr(experts, "limit"):  # gpt-oss's clamped SwiGLU
                self.assertAlmostEqual(moe["expert_activation"]["clamped_swiglu_alpha"], experts.alpha)
                self.assertAlmostEqual(moe["expert_activation"]["clamped_swiglu_limit"], experts.limit)
            else:
                self.assertNotIn("expert_activation", moe)

        layer_types = getattr(cfg, "layer_types", None)
        if cfg.model_type in ("mistral", "mixtral", "phi3"):  # one window for all layers, when set
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

    def test_every_fixture(self):
        self.assertGreaterEqual(len(MODELS), 15)  # the glob found the fixtures
        for name in MODELS:
            with self.subTest(name):
                self.check(name)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
