#!/usr/bin/env python3
"""The transformers side of the decoder benchmark (scripts/bench.sh section `decoder`).

    decoder_transformers.py make --out DIR [--size 100m|135m|1b] [--dtype fp32|bf16] [--tokenizer DIR]
                                                              # random Llama checkpoint, made once
    decoder_transformers.py run --model DIR --threads N [--device cpu|cuda --dtype fp32|bf16] --out FILE.json

`run` times what `linearize`'s model_bench times, on the same prompt: prefill of T tokens (batch 1, KV
cache on, logits of the last position only, as generate() asks for) and greedy decode of N new tokens
through the KV cache in a plain loop of model() calls (leaner than generate(), so a fair baseline)."""
import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

SIZES = {
    # ~100M parameters: 12 layers x 6.3M + 24.6M tied embeddings.
    "100m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=True),
    # ~25M, 6 layers, for decode at long contexts (16K) on a CPU: the source's KV cache vs a conversion.
    "25m": dict(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True),
    # ~135M, SmolLM-135M's shape (30 layers, GQA 9/3, head_dim 64): verify's cost at a real depth.
    "135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    # ~1.1B (TinyLlama's shape) for the CUDA run and verify's cost at 1B.
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, tie_word_embeddings=False),
}


def prompt_ids(length, vocab):
    # The same ids linearize's model_bench builds: (7 i + 3) mod vocab.
    return torch.tensor([[(7 * i + 3) % vocab for i in range(length)]], dtype=torch.long)


def make(args):
    out = Path(args.out)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        print(f"{out}: exists")
    else:
        save_model(out, args)
    # A tokenizer makes verify tokenize its built-in text (ids below the vocabulary of every size here);
    # copied also into a model another section made without one.
    if args.tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if not (out / name).exists():
                shutil.copy(Path(args.tokenizer) / name, out / name)


def save_model(out, args):
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=32768, rms_norm_eps=1e-5, **SIZES[args.size])
    model = LlamaForCausalLM(config).eval()
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    print(f"{out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def run(args):
    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="eager").to(args.device).eval()
    ids = prompt_ids(args.prompt, model.config.vocab_size).to(args.device)

    def prefill():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values

    def decode(logits, cache):
        next_id = logits.argmax(-1, keepdim=True)
        for _ in range(args.new_tokens - 1):
            out = model(input_ids=next_id, past_key_values=cache, use_cache=True)
            next_id = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(args.device)

    prefill()  # warm-up
    prefill_s, decode_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        logits, cache = prefill()
        sync(args.device)
        t1 = time.perf_counter()
        decode(logits, cache)
        t2 = time.perf_counter()
        prefill_s.append(t1 - t0)
        decode_s.append(t2 - t1)
    p, d = statistics.median(prefill_s), statistics.median(decode_s)
    result = {"prefill_tokens_per_s": args.prompt / p, "decode_tokens_per_s": (args.new_tokens - 1) / d,
              "prefill_s": prefill_s, "decode_s": decode_s, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "device": args.device, "dtype": args.dtype,
              "parameters": sum(p.numel() for p in model.parameters())}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"transformers eager {args.dtype} {args.device}: prefill {result['prefill_tokens_per_s']:.0f} tokens/s, "
          f"decode {result['decode_tokens_per_s']:.1f} tokens/s")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--size", default="100m", choices=SIZES)
    m.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    m.add_argument("--tokenizer", help="copy tokenizer.json and tokenizer_config.json from this directory")
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--threads", type=int, required=True)
    r.add_argument("--device", default="cpu")
    r.add_argument("--dtype", default="fp32")
    r.add_argument("--prompt", type=int, default=512)
    r.add_argument("--new-tokens", type=int, default=64)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--out", required=True)
    args = parser.parse_args()
    make(args) if args.cmd == "make" else run(args)


if __name__ == "__main__":
    main()
