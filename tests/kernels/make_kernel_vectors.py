#!/usr/bin/env python3
"""Test vectors for the kernels tests from an independent oracle: plain-PyTorch re-implementations of the
naive token-by-token recurrences in flash-linear-attention's fla/ops/*/naive.py (research/kernels.md 1.2),
written in fla's own conventions (sequence-first [B,T,H,D]; GLA's fixed scale K**-0.5; delta rule's
head-first layout and d_k**-0.5 scale; linear attention's normaliser q.scale . cumsum(k) + 1e-10 from
fla/ops/linear_attn/utils.py, which carries no normaliser state). Everything is fp64 and seeded.

  make_kernel_vectors.py            # (re)writes tests/fixtures/kernels/mixer_vectors.safetensors
  make_kernel_vectors.py --check    # recomputes and compares with the committed file (exit 1 on mismatch)
"""
import argparse
import pathlib
import sys

import torch
from safetensors.torch import load_file, save_file

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "kernels" / "mixer_vectors.safetensors"
B, T, H, K, V = 1, 50, 2, 16, 8


# --- the naive recurrences, fla layouts ---------------------------------------------------------------
def recurrent_gla(q, k, v, gk, initial_state):
    """fla naive_recurrent_gla: [B,T,H,K], per-channel log gate gk, scale hard-coded K**-0.5."""
    scale = q.shape[-1] ** -0.5
    h = initial_state.clone()
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        h = h * gk[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = ((q[:, t] * scale)[..., None] * h).sum(-2)
    return o, h


def recurrent_simple_gla(q, k, v, g, scale, initial_state):
    """fla naive_recurrent_simple_gla: scalar log gate g [B,T,H]."""
    h = initial_state.clone()
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        h = h * g[:, t].exp()[..., None, None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = ((q[:, t] * scale)[..., None] * h).sum(-2)
    return o, h


def recurrent_linear_attn(q, k, v, scale, normalize):
    """fla naive_recurrent_linear_attn (zero initial state); normalize divides by q.scale . cumsum(k) + 1e-10."""
    g = torch.zeros(q.shape[:3], dtype=q.dtype)
    o, h = recurrent_simple_gla(q, k, v, g, scale, torch.zeros(B, H, K, V, dtype=q.dtype))
    if normalize:
        z = ((q * scale) * k.cumsum(1)).sum(-1, keepdim=True)
        o = o / (z + 1e-10)
    return o, h


def delta_rule_recurrence(q, k, v, beta, initial_state):
    """fla delta_rule_recurrence: head-first [B,H,T,D], scale d_k**-0.5."""
    scale = q.shape[-1] ** -0.5
    h = initial_state.clone()
    o = torch.zeros_like(v)
    for t in range(q.shape[2]):
        u = (v[:, :, t] - (h * k[:, :, t, :, None]).sum(-2)) * beta[:, :, t, None]
        h = h + k[:, :, t, :, None] * u[..., None, :]
        o[:, :, t] = ((q[:, :, t] * scale)[..., None] * h).sum(-2)
    return o, h


def recurrent_gated_delta_rule(q, k, v, beta, g, scale, initial_state):
    """fla naive_recurrent_gated_delta_rule: [B,T,H,K], h *= exp(g); v' = beta(v - h^T k); h += k v'^T."""
    h = initial_state.clone()
    o = torch.zeros_like(v)
    for t in range(q.shape[1]):
        h = h * g[:, t].exp()[..., None, None]
        u = (v[:, t] - (h * k[:, t, :, :, None]).sum(-2)) * beta[:, t, :, None]
        h = h + k[:, t, :, :, None] * u[..., None, :]
        o[:, t] = ((q[:, t] * scale)[..., None] * h).sum(-2)
    return o, h


# --- the cases ----------------------------------------------------------------------------------------
def vectors():
    torch.manual_seed(20240601)
    d = torch.float64
    q, k, v = torch.randn(B, T, H, K, dtype=d), torch.randn(B, T, H, K, dtype=d), torch.randn(B, T, H, V, dtype=d)
    h0 = torch.randn(B, H, K, V, dtype=d)
    gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, dtype=d) + 2)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, dtype=d) + 2)
    beta = torch.rand(B, T, H, dtype=d)
    kn = torch.nn.functional.normalize(k, dim=-1)  # the delta rule wants unit keys (qk_norm='l2')
    qp, kp = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    out = {"q": q, "k": k, "v": v, "h0": h0, "gk": gk, "g": g, "beta": beta, "k_l2": kn}

    out["gla.o"], out["gla.h"] = recurrent_gla(q, k, v, gk, h0)
    out["simple_gla.o"], out["simple_gla.h"] = recurrent_simple_gla(q, k, v, g, 0.3, h0)
    log_gamma = torch.log(torch.tensor([0.9, 0.97], dtype=d))
    out["retention.log_gamma"] = log_gamma
    out["retention.o"], out["retention.h"] = recurrent_simple_gla(q, k, v, log_gamma.expand(B, T, H), K ** -0.5, h0)
    out["linear.o"], out["linear.h"] = recurrent_linear_attn(q, k, v, K ** -0.5, normalize=False)
    out["normalized.q"], out["normalized.k"] = qp, kp
    out["normalized.o"], out["normalized.h"] = recurrent_linear_attn(qp, kp, v, K ** -0.5, normalize=True)
    head_first = lambda x: x.transpose(1, 2).contiguous()
    o, h = delta_rule_recurrence(head_first(q), head_first(kn), head_first(v), head_first(beta), h0)
    out["delta.o"], out["delta.h"] = head_first(o), h
    out["gated_delta.o"], out["gated_delta.h"] = recurrent_gated_delta_rule(q, kn, v, beta, g, K ** -0.5, h0)
    return {name: t.contiguous() for name, t in out.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed vectors instead of writing")
    args = parser.parse_args()
    fresh = vectors()
    if not args.check:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        save_file(fresh, str(OUT), metadata={"generator": "tests/kernels/make_kernel_vectors.py"})
        print(f"wrote {len(fresh)} tensors, {OUT.stat().st_size} bytes to {OUT}")
        return 0
    stored = load_file(str(OUT))
    bad = sorted(set(fresh) ^ set(stored))
    bad += [n for n in fresh if n in stored and not torch.allclose(fresh[n], stored[n], rtol=0, atol=1e-12)]
    if bad:
        print("mismatch:", ", ".join(bad))
        return 1
    print(f"{len(fresh)} tensors match {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
