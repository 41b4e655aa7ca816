#!/usr/bin/env python3
"""A synthetic Hugging Face checkpoint of a real model's shape, for measuring conversion at scale.

Random weights (N(0, 0.02), norms 1: activations stay finite through every layer), stored in the real
model's dtype and sharded like `save_pretrained` (shards of at most --max-shard-size bytes, in state-dict
order, with model.safetensors.index.json). One shard is held in memory at a time. The tokenizer is the tiny
fixture's (its ids are all below the real vocabulary). Never commit the output: Llama-3-8B's shape is 16 GB,
Qwen3-30B-A3B's cut to 20 of its 48 layers 25 GB (more than a 24 GB machine's memory: streamed verify's case),
gpt-oss-20b's (bf16, as dequantized from MXFP4) cut to 2 of its 24 layers 5.6 GB (scripts/check_forward_parity.py).

  scripts/make_synthetic_checkpoint.py --out /tmp/llama3-8b [--shape llama3-8b] [--layers N]
  scripts/make_synthetic_checkpoint.py --out /tmp/qwen3-moe --shape qwen3-30b-a3b --layers 20
  scripts/make_synthetic_checkpoint.py --out /tmp/gpt-oss --shape gpt-oss-20b --layers 2
"""
import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

# config.json of the real models (the keys the families read); vocab and dims as published.
LLAMA3 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128001,
    "torch_dtype": "bfloat16", "initializer_range": 0.02,
}
SHAPES = {
    "llama3-8b": {**LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "tie_word_embeddings": False},
    # A 1B-class shape for quicker runs of the same path.
    "llama3.2-1b": {**LLAMA3, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "tie_word_embeddings": True},
    # Qwen2.5-0.5B's dimensions (494M parameters, 136M of them the tied 151936-row embedding) in the Llama layout
    # (Qwen2's q/k/v biases are 0.3% of its FLOPs): the 0.5B model whose distillation budget configs/quality-cpu.yaml states.
    "qwen2.5-0.5b-dims": {**LLAMA3, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                          "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                          "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                          "tie_word_embeddings": True},
    # Qwen3-30B-A3B (Qwen3MoeForCausalLM): 128 experts of 768, 8 routed per token, q/k RMSNorm, every layer sparse.
    "qwen3-30b-a3b": {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
        "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "num_hidden_layers": 48, "num_attention_heads": 32,
        "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu", "attention_bias": False,
        "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16",
        "initializer_range": 0.02, "use_sliding_window": False, "sliding_window": None,
    },
    # gpt-oss-20b (GptOssForCausalLM) as its config.json has it, less the MXFP4 quantization_config (the experts here are
    # bf16, as transformers' Mxfp4Config(dequantize=True) leaves them): 32 stacked experts of 2880, 4 routed per token,
    # attention sinks, q/k/v/o biases, sliding (128) and full layers alternating, YaRN over 4096 positions.
    "gpt-oss-20b": {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880,
        "num_local_experts": 32, "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_attention_heads": 64,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 201088, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 150000.0, "hidden_act": "silu", "attention_bias": True, "sliding_window": 128,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": 4096},
        "swiglu_limit": 7.0, "tie_word_embeddings": False, "eos_token_id": 200002, "pad_token_id": 199999,
        "torch_dtype": "bfloat16", "initializer_range": 0.02,
    },
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_DIR = os.path.join(HERE, "..", "tests", "fixtures", "tiny-llama")


def tensor_shapes(c):
    """(name, shape) in the order transformers' state dict lists them."""
    d, ff = c["hidden_size"], c["intermediate_size"]
    hd = c.get("head_dim", d // c["num_attention_heads"])
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    moe, stacked = c["model_type"] == "qwen3_moe", c["model_type"] == "gpt_oss"
    yield "model.embed_tokens.weight", (c["vocab_size"], d)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, rows, cols in (("q_proj", q, d), ("k_proj", kv, d), ("v_proj", kv, d), ("o_proj", d, q)):
            yield p + f"self_attn.{name}.weight", (rows, cols)
            if c["attention_bias"]:
                yield p + f"self_attn.{name}.bias", (rows,)
        if stacked:
            experts = c["num_local_experts"]
            yield p + "self_attn.sinks", (c["num_attention_heads"],)
            yield p + "mlp.router.weight", (experts, d)
            yield p + "mlp.router.bias", (experts,)
            yield p + "mlp.experts.gate_up_proj", (experts, d, 2 * ff)
            yield p + "mlp.experts.gate_up_proj_bias", (experts, 2 * ff)
            yield p + "mlp.experts.down_proj", (experts, ff, d)
            yield p + "mlp.experts.down_proj_bias", (experts, d)
        if moe:
            yield p + "self_attn.q_norm.weight", (hd,)
            yield p + "self_attn.k_norm.weight", (hd,)
        if moe and i not in c["mlp_only_layers"] and (i + 1) % c["decoder_sparse_step"] == 0:
            yield p + "mlp.gate.weight", (c["num_experts"], d)
            for e in range(c["num_experts"]):
                yield p + f"mlp.experts.{e}.gate_proj.weight", (c["moe_intermediate_size"], d)
                yield p + f"mlp.experts.{e}.up_proj.weight", (c["moe_intermediate_size"], d)
                yield p + f"mlp.experts.{e}.down_proj.weight", (d, c["moe_intermediate_size"])
        elif not stacked:
            yield p + "mlp.gate_proj.weight", (ff, d)
            yield p + "mlp.up_proj.weight", (ff, d)
            yield p + "mlp.down_proj.weight", (d, ff)
        yield p + "input_layernorm.weight", (d,)
        yield p + "post_attention_layernorm.weight", (d,)
    yield "model.norm.weight", (d,)
    if not c["tie_word_embeddings"]:
        yield "lm_head.weight", (c["vocab_size"], d)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--layers", type=int, help="fewer layers than the real model (same per-layer shapes)")
    ap.add_argument("--max-shard-size", type=int, default=5_000_000_000, help="bytes (save_pretrained's 5GB)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    config = dict(SHAPES[args.shape])
    if args.layers:
        config["num_hidden_layers"] = args.layers
    dtype = DTYPES[config["torch_dtype"]]
    shapes = list(tensor_shapes(config))
    size = lambda shape: torch.Size(shape).numel() * dtype.itemsize
    shards, current, current_bytes = [], [], 0
    for name, shape in shapes:
        if current and current_bytes + size(shape) > args.max_shard_size:
            shards.append(current)
            current, current_bytes = [], 0
        current.append((name, shape))
        current_bytes += size(shape)
    shards.append(current)

    os.makedirs(args.out, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shape, dtype=dtype)
            else:
                tensors[name] = torch.empty(shape, dtype=dtype).normal_(0.0, config["initializer_range"], generator=generator)
            weight_map[name] = file
            total += size(shape)
        save_file(tensors, os.path.join(args.out, file), metadata={"format": "pt"})
        print(f"wrote {file}: {len(shard)} tensors, {sum(size(s) for _, s in shard) / 1e9:.2f} GB", flush=True)
        del tensors
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(TOKENIZER_DIR, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.out, name))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"{args.out}: {args.shape}, {config['num_hidden_layers']} layers, {total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    sys.exit(main())
