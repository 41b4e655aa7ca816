#!/usr/bin/env python3
"""Test vectors for the kernels tests from an independent oracle: plain-PyTorch re-implementations of the
naive token-by-token recurrences in flash-linear-attention's fla/ops/*/naive.py (docs/recipes.md#three-forms),
written in fla's own conventions (sequence-first [B,T,H,D]; GLA's fixed scale K**-0.5; delta rule's
head-first layout and d_k**-0.5 scale; linear attention's normaliser q.scale . cumsum(k) + 1e-10 from
fla/ops/linear_attn/utils.py, which carries no normaliser state). The window + linear hybrids of Liger and
LoLCATs (docs/recipes.md#liger-gla, docs/recipes.md#lolcats) are written as a per-token loop over an explicit window buffer: a
key enters the window when it arrives and, in LoLCATs, the linear state when it drops out of the buffer.
Everything is fp64 and seeded.

  make_kernel_vectors.py            # (re)writes tests/fixtures/kernels/{mixer,hybrid}_vectors.safetensors
  make_kernel_vectors.py --check    # recomputes and compares with the committed files (exit 1 on mismatch)
"""
import argparse
import pathlib
import sys

import torch
from safetensors.torch import load_file, save_file

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "kernels"
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


def window_softmax(q_t, buf_k, buf_v, scale):
    """One query [B,D] against the buffered keys/values of its kv head ([B,D] each): sum exp(s - max) v, sum exp(s - max)."""
    s = torch.stack([(q_t * kk).sum(-1) * scale for kk in buf_k], -1)
    w = (s - s.max(-1, keepdim=True).values).exp()
    num = sum(w[:, i, None] * vv for i, vv in enumerate(buf_v))
    return num, w.sum(-1)


def liger_recurrent(q, k, v, phi_q, phi_k, gk, window):
    """Liger: o = 0.5 o_swa + 0.5 o_lin, o_swa over the last `window` keys (softmax, scale D**-0.5),
    o_lin = GLA(phi_q, phi_k, v, gk) with scale 1 and no denominator. Returns o, the GLA state, the window buffer."""
    b, t_len, hq, d = q.shape
    hkv, f_dim, v_dim = k.shape[2], phi_q.shape[-1], v.shape[-1]
    group = hq // hkv
    state = torch.zeros(b, hkv, f_dim, v_dim, dtype=q.dtype)
    buf_k, buf_v = [], []
    o = torch.zeros(b, t_len, hq, v_dim, dtype=q.dtype)
    for t in range(t_len):
        buf_k.append(k[:, t])
        buf_v.append(v[:, t])
        if len(buf_k) > window:
            buf_k.pop(0)
            buf_v.pop(0)
        state = state * gk[:, t].exp()[..., None] + phi_k[:, t, :, :, None] * v[:, t, :, None, :]
        for h in range(hq):
            g = h // group
            num, den = window_softmax(q[:, t, h], [x[:, g] for x in buf_k], [x[:, g] for x in buf_v], d ** -0.5)
            o_lin = (phi_q[:, t, h, :, None] * state[:, g]).sum(-2)
            o[:, t, h] = 0.5 * num / den[:, None] + 0.5 * o_lin
    return o, state, torch.stack(buf_k, 1), torch.stack(buf_v, 1)


def hedgehog(x, weight):
    """LoLCATs' Hedgehog map per head: [softmax(x W_h), softmax(-x W_h)], x [B,H,D], weight [H,D,f]."""
    y = torch.einsum("bhd,hdf->bhf", x, weight)
    return torch.cat([y.softmax(-1), (-y).softmax(-1)], -1)


def lolcats_recurrent(q, k, v, phi_q, map_k, window_factor, window):
    """LoLCATs (sw window): y = (f num + phi_q.S) / (f den + phi_q.z), f = sigmoid(w_h); a key enters S = sum phi_k v^T
    and z = sum phi_k (per query head, phi_k = hedgehog(k, map_k[h])) when it drops out of the window buffer.
    Returns y, the state [B,Hq,F,V+1] with z as the last column, the window buffer."""
    b, t_len, hq, d = q.shape
    hkv, f_dim, v_dim = k.shape[2], phi_q.shape[-1], v.shape[-1]
    group = hq // hkv
    s_state = torch.zeros(b, hq, f_dim, v_dim, dtype=q.dtype)
    z_state = torch.zeros(b, hq, f_dim, dtype=q.dtype)
    buf_k, buf_v = [], []
    y = torch.zeros(b, t_len, hq, v_dim, dtype=q.dtype)
    for t in range(t_len):
        buf_k.append(k[:, t])
        buf_v.append(v[:, t])
        if len(buf_k) > window:
            old_k, old_v = buf_k.pop(0), buf_v.pop(0)
            feats = hedgehog(old_k.repeat_interleave(group, 1), map_k)  # [B, Hq, F]
            s_state = s_state + feats[..., None] * old_v.repeat_interleave(group, 1)[:, :, None, :]
            z_state = z_state + feats
        for h in range(hq):
            g = h // group
            num, den = window_softmax(q[:, t, h], [x[:, g] for x in buf_k], [x[:, g] for x in buf_v], d ** -0.5)
            f = torch.sigmoid(window_factor[h])
            lin_num = (phi_q[:, t, h, :, None] * s_state[:, h]).sum(-2)
            lin_den = (phi_q[:, t, h] * z_state[:, h]).sum(-1)
            y[:, t, h] = (f * num + lin_num) / (f * den + lin_den)[:, None]
    return y, torch.cat([s_state, z_state[..., None]], -1), torch.stack(buf_k, 1), torch.stack(buf_v, 1)


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


def hybrid_vectors():
    """GQA (4 query heads over 2 kv heads), window 8 over 33 tokens: the window fills, keys leave it, and a
    chunk of 16 leaves a partial chunk. Liger's features are its own (softmax_d, logsigmoid/16 gates)."""
    torch.manual_seed(20241123)
    d = torch.float64
    b, t_len, hq, hkv, dim, v_dim, window = 1, 33, 4, 2, 8, 6, 8
    q, k = torch.randn(b, t_len, hq, dim, dtype=d), torch.randn(b, t_len, hkv, dim, dtype=d)
    v = torch.randn(b, t_len, hkv, v_dim, dtype=d)
    raw_q, raw_k = torch.randn(b, t_len, hq, dim, dtype=d), torch.randn(b, t_len, hkv, dim, dtype=d)
    out = {"hybrid.q": q, "hybrid.k": k, "hybrid.v": v, "hybrid.window": torch.tensor([window])}
    out["liger.phi_q"], out["liger.phi_k"] = raw_q.softmax(-1), raw_k.softmax(-1)
    out["liger.gk"] = torch.nn.functional.logsigmoid(raw_k) / 16
    out["liger.o"], out["liger.h"], out["liger.cache_k"], out["liger.cache_v"] = liger_recurrent(
        q, k, v, out["liger.phi_q"], out["liger.phi_k"], out["liger.gk"], window)
    map_q, map_k = torch.randn(hq, dim, 4, dtype=d) * 0.5, torch.randn(hq, dim, 4, dtype=d) * 0.5
    out["lolcats.phi_q"] = torch.stack([hedgehog(q[:, t], map_q) for t in range(t_len)], 1)
    out["lolcats.map_k"] = map_k
    out["lolcats.window_factor"] = torch.randn(hq, dtype=d)
    out["lolcats.o"], out["lolcats.h"], out["lolcats.cache_k"], out["lolcats.cache_v"] = lolcats_recurrent(
        q, k, v, out["lolcats.phi_q"], map_k, out["lolcats.window_factor"], window)
    return {name: t.contiguous() for name, t in out.items()}


FILES = {"mixer_vectors.safetensors": vectors, "hybrid_vectors.safetensors": hybrid_vectors}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed vectors instead of writing")
    args = parser.parse_args()
    failed = False
    for file_name, make in FILES.items():
        path, fresh = FIXTURES / file_name, make()
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(fresh, str(path), metadata={"generator": "tests/kernels/make_kernel_vectors.py"})
            print(f"wrote {len(fresh)} tensors, {path.stat().st_size} bytes to {path}")
            continue
        stored = load_file(str(path))
        bad = sorted(set(fresh) ^ set(stored))
        bad += [n for n in fresh if n in stored and not torch.allclose(fresh[n], stored[n], rtol=0, atol=1e-12)]
        if bad:
            print(f"{path}: mismatch:", ", ".join(bad))
            failed = True
        else:
            print(f"{len(fresh)} tensors match {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
