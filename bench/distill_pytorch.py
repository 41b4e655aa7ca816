#!/usr/bin/env python3
"""The plain-PyTorch side of the training benchmark (scripts/bench.sh section `distill`; bench/distill_bench.cpp
is linearize's side): the same optimiser steps on the same checkpoints, ids, batch and threads, written the
way a PyTorch user would write LoLCATs' two stages.

    distill_pytorch.py --source DIR --converted DIR --threads N [--tokens 512] --out FILE.json

The teacher is transformers' LlamaForCausalLM (eager attention, fp32). The student is the same model with
every attention's forward replaced by LoLCATs' sliding-window + linear hybrid in its quadratic masked form
(lolcats:src/model/linear_attention/linear_window_attention_sw.py, hybrid_attention_quadratic), with the
feature maps and window factors read from the conversion's model.safetensors. Each step: zero_grad, loss,
backward, clip_grad_norm_(1.0), torch.optim.AdamW step.
  stage1   : hooks on the teacher's attentions give every layer's input and output (one no-grad forward);
             loss = 1000 x mean over layers of MSE(student attention(input), teacher output); AdamW
             (lr 1e-2, no weight decay) on the feature maps and window factors.
  stage2_ce: peft LoRA (r 8, alpha 16, dropout 0) on q,k,v,o of the student, everything else frozen;
             next-token CE (the model's own labels= loss); AdamW (lr 1e-4) on the adapters.
  stage2_kl: the same with KL(teacher || student) of the next-token distributions (the teacher's forward
             under no_grad), mean over predicted tokens.
Two warm-up steps of each, then 7 timed steps of each; tokens/s from the median and from the fastest step."""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaForCausalLM
from transformers.utils import logging
from transformers.models.llama.modeling_llama import LlamaAttention, apply_rotary_pos_emb, repeat_kv

WINDOW = 64  # the conversion's default window (its config.json says so; checked below)
TRANSFER_FACTOR, CLIP, WARMUP, STEPS = 1000.0, 1.0, 2, 7


def bench_ids(length, vocab):
    # distill_bench.cpp's ids: (i * 2654435761 mod 2^32) mod vocab.
    return (torch.arange(length, dtype=torch.long) * 2654435761 % 2**32 % vocab).unsqueeze(0)


def hedgehog(x, weight):
    # [softmax_f(x W_h), softmax_f(-x W_h)] per head; x [B, H, T, d], W [H, d, f].
    y = torch.einsum("bhtd,hdf->bhtf", x, weight)
    return torch.cat([y.softmax(-1), (-y).softmax(-1)], -1)


class LolcatsAttention(LlamaAttention):
    """LlamaAttention whose softmax is LoLCATs' hybrid: query n sees keys n - 64 < j <= n by exact softmax
    weighted by sigmoid(w_h), and older keys by phi_q(q_n).phi_k(k_j), over one shared normaliser."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        B, T, _ = hidden_states.shape
        shape = (B, T, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        k, v = repeat_kv(k, self.num_key_value_groups), repeat_kv(v, self.num_key_value_groups)
        pos = torch.arange(T, device=q.device)
        back = pos[:, None] - pos[None, :]  # i - j
        in_window, older = (back >= 0) & (back < WINDOW), back >= WINDOW
        s = (q @ k.transpose(-1, -2) * self.scaling).masked_fill(~in_window, float("-inf"))
        a_sm = torch.sigmoid(self.window_factors)[None, :, None, None] * torch.exp(s - s.amax(-1, keepdim=True))
        a_ln = (hedgehog(q, self.feature_map_q) @ hedgehog(k, self.feature_map_k).transpose(-1, -2)).masked_fill(~older, 0)
        a = a_sm + a_ln
        y = (a @ v) / a.sum(-1, keepdim=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1)), None


def load_student(converted, tensors):
    model = LlamaForCausalLM.from_pretrained(converted, dtype=torch.float32)
    model.requires_grad_(False)
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        attn.__class__ = LolcatsAttention
        prefix = f"model.layers.{i}.self_attn."
        for name in ("feature_map_q", "feature_map_k", "window_factors"):
            key = prefix + (name if name == "window_factors" else name + ".weight")
            attn.register_parameter(name, torch.nn.Parameter(tensors[key].clone(), requires_grad=False))
    return model


def step_seconds(step):
    seconds = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--converted", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.set_verbosity_error()  # the load report lists the conversion's new tensors, which load_student adds
    logging.disable_progress_bar()
    params = json.loads((Path(args.converted) / "config.json").read_text())["linearize"]["params"]
    assert params["window"] == WINDOW, f"the conversion's window is {params['window']}, this side computes {WINDOW}"

    teacher = LlamaForCausalLM.from_pretrained(args.source, dtype=torch.float32, attn_implementation="eager").eval()
    teacher.requires_grad_(False)
    tensors = load_file(str(Path(args.converted) / "model.safetensors"))
    stage1_student = load_student(args.converted, tensors)
    stage2_student = load_student(args.converted, tensors)
    ids = bench_ids(args.tokens, teacher.config.vocab_size)

    # Stage 1: the teacher's attention inputs and outputs, captured by hooks during one no-grad forward.
    captured = {}
    for i, layer in enumerate(teacher.model.layers):
        def hook(module, _args, kwargs, output, i=i):
            captured[i] = (kwargs["hidden_states"], kwargs["position_embeddings"], output[0])
        layer.self_attn.register_forward_hook(hook, with_kwargs=True)
    stage1_params = []
    for layer in stage1_student.model.layers:
        for p in (layer.self_attn.feature_map_q, layer.self_attn.feature_map_k, layer.self_attn.window_factors):
            p.requires_grad_(True)
            stage1_params.append(p)

    def stage1_loss():
        with torch.no_grad():
            teacher(input_ids=ids, use_cache=False)
        losses = [F.mse_loss(stage1_student.model.layers[i].self_attn(hidden_states=x, position_embeddings=pe)[0], y)
                  for i, (x, pe, y) in sorted(captured.items())]
        return TRANSFER_FACTOR * torch.stack(losses).mean()

    # Stage 2: peft freezes everything but the adapters (the feature maps and window factors included).
    lora = get_peft_model(stage2_student, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    stage2_params = [p for p in lora.parameters() if p.requires_grad]

    def stage2_ce():
        return lora(input_ids=ids, labels=ids, use_cache=False).loss

    def stage2_kl():
        with torch.no_grad():
            target = teacher(input_ids=ids, use_cache=False).logits[0, :-1].log_softmax(-1)
        student = lora(input_ids=ids, use_cache=False).logits[0, :-1].log_softmax(-1)
        return F.kl_div(student, target, log_target=True, reduction="batchmean")

    with torch.no_grad():
        initial = {"stage1_loss": stage1_loss().item(), "stage2_ce": stage2_ce().item(), "stage2_kl": stage2_kl().item()}

    def stepper(loss_fn, params, optimizer):
        def step():
            optimizer.zero_grad()
            loss_fn().backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            optimizer.step()
        return step

    stage1_optimizer = torch.optim.AdamW(stage1_params, lr=1e-2, weight_decay=0.0)
    stage2_optimizer = torch.optim.AdamW(stage2_params, lr=1e-4, weight_decay=0.0)  # ce's and kl's steps share it
    steps = {"stage1": stepper(stage1_loss, stage1_params, stage1_optimizer),
             "stage2_ce": stepper(stage2_ce, stage2_params, stage2_optimizer),
             "stage2_kl": stepper(stage2_kl, stage2_params, stage2_optimizer)}
    for _ in range(WARMUP):
        for step in steps.values():
            step()
    seconds = {name: step_seconds(step) for name, step in steps.items()}
    rates = {name: ids.numel() / statistics.median(s) for name, s in seconds.items()}
    best = {name: ids.numel() / min(s) for name, s in seconds.items()}
    result = {"tokens_per_s": rates, "best_tokens_per_s": best, "step_s": seconds, "initial": initial, "threads": torch.get_num_threads(),
              "batch": 1, "tokens": ids.numel(), "torch": torch.__version__,
              "parameters": sum(p.numel() for p in teacher.parameters())}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("pytorch: " + ", ".join(f"{name} {rates[name]:.1f} tokens/s (fastest step {best[name]:.1f})" for name in rates))


if __name__ == "__main__":
    main()
