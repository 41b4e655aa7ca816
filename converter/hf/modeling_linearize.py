"""A Linearize export in transformers: the source family's own decoder (its norms, MLP, RoPE, embeddings, taken
from transformers) with the converted layers' attention replaced by the recipe's mixer, in plain PyTorch.

Each mixer computes what Linearize's C++ mixer computes (converter/recipes/*.cpp, kernels/*.h; DESIGN sections
3-4): prefill runs a chunked form, decode one token on the carried state, both through the same functions, so
the two agree by construction. The state lives in `LinearizeCache`, a transformers Cache: a recurrent state
(fixed size) plus, for the window hybrids, the last `window` keys; layers kept as softmax attention keep their
source KV cache. A padded token (attention_mask 0) is an exact no-op on the state: its key and write are zeroed
and its decay is 1, so a left-padded row computes what the row alone computes. Kept in the Linearize repository
(converter/hf/) and copied, with its sha256 recorded, into every export; tests/python/test_exports.py checks it
against `linearize forward` and `linearize generate`.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, Cache, CacheLayerMixin, get_layer_types_and_kwargs
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen3_next.modeling_qwen3_next import (
    torch_chunk_gated_delta_rule,
    torch_recurrent_gated_delta_rule,
)

from .configuration_linearize import LinearizeConfig

# Chunk lengths of the chunked form: 64 as Linearize's default; 16 for per-channel gates, whose intra-chunk term
# holds a [C, C, K] decay tensor (fla's secondary chunking size).
CHUNK = 64
CHUNK_PER_CHANNEL = 16


def wide(t):
    """t in fp32 when narrower (maps, gates and states compute in fp32), fp64 kept (Linearize's at_least_fp32)."""
    return t if t.dtype == torch.float64 else t.float()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(x, cos, sin):
    """RoPE on [B, T, H, D] with the family's cos, sin [B, T, D] (transformers' rotary embedding of this layer)."""
    return x * cos.unsqueeze(2).to(x.dtype) + rotate_half(x) * sin.unsqueeze(2).to(x.dtype)


def repeat_heads(x, heads):
    """[B, T, Hkv, ...] -> [B, T, heads, ...], each kv head repeated for its query heads."""
    return x if x.shape[2] == heads else x.repeat_interleave(heads // x.shape[2], dim=2)


def hedgehog(x, weight):
    """Hedgehog map per head (LoLCATs): [softmax(xW), softmax(-xW)], x [B, T, H, d], W [H, d, f] -> [B, T, H, 2f]."""
    xw = torch.einsum("bthd,hdf->bthf", x, weight.to(x.dtype))
    return torch.cat([xw.softmax(-1), (-xw).softmax(-1)], dim=-1)


def zero_where_padded(x, valid):
    """x [B, T, ...] with the padded tokens' rows set to 0 (a where, not a product: padded rows may hold inf)."""
    return torch.where(valid.view(*valid.shape, *([1] * (x.dim() - 2))), x, torch.zeros((), dtype=x.dtype, device=x.device))


def gated_linear_attention(q, k, v, log_decay, state, chunk):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t (Linearize kernels/linear_attention.h), chunked.

    q [B, T, Hq, K], k [B, T, Hkv, K], v [B, T, Hkv, V]; log_decay None or [B, T, Hkv, K or 1], <= 0; state None or
    [B, Hkv, K, V]. Query head h reads kv head h // (Hq / Hkv). Inside a chunk only exp(b_i - b_j), i >= j, and
    exp(b_last - b_j) appear (b the in-chunk cumulative log decay): every exponent is <= 0. T = 1 is the recurrent
    step. Returns o [B, T, Hq, V] and the state after the last token.
    """
    B, T, Hq, K = q.shape
    Hkv, V = k.shape[2], v.shape[-1]
    q = q.reshape(B, T, Hkv, Hq // Hkv, K)
    if state is None:
        state = torch.zeros(B, Hkv, K, V, dtype=q.dtype, device=q.device)
    outputs = []
    for start in range(0, T, chunk):
        qc, kc, vc = q[:, start:start + chunk], k[:, start:start + chunk], v[:, start:start + chunk]
        L = qc.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        if log_decay is None:
            scores = torch.einsum("bihgk,bjhk->bhgij", qc, kc).masked_fill(~causal, 0)
            o = torch.einsum("bihgk,bhkv->bihgv", qc, state) + torch.einsum("bhgij,bjhv->bihgv", scores, vc)
            state = state + torch.einsum("bjhk,bjhv->bhkv", kc, vc)
        else:
            b = log_decay[:, start:start + chunk].cumsum(1)  # [B, L, Hkv, K']
            o = torch.einsum("bihgk,bhkv->bihgv", qc * b.exp().unsqueeze(3), state)
            diff = (b.unsqueeze(2) - b.unsqueeze(1)).masked_fill(~causal.view(1, L, L, 1, 1), float("-inf"))
            decay = diff.exp()  # [B, i, j, Hkv, K']: exp(b_i - b_j) for j <= i, else 0
            if decay.shape[-1] == 1:
                scores = torch.einsum("bihgk,bjhk->bhgij", qc, kc) * decay[..., 0].permute(0, 3, 1, 2).unsqueeze(2)
            else:
                scores = torch.einsum("bihgk,bjhk,bijhk->bhgij", qc, kc, decay)
            o = o + torch.einsum("bhgij,bjhv->bihgv", scores, vc)
            last = b[:, -1]  # [B, Hkv, K']
            state = last.exp().unsqueeze(-1) * state + torch.einsum("bjhk,bjhv->bhkv", kc * (last.unsqueeze(1) - b).exp(), vc)
        outputs.append(o)
    return torch.cat(outputs, dim=1).reshape(B, T, Hq, V), state


def window_attention(q, keys, values, key_valid, first, window, scale, block=64):
    """The sliding-window softmax branch of the hybrids (Linearize kernels/hybrid_attention.h): query t (at key index
    first + t) sees keys first + t - window < j <= first + t that are not padding (its own key always), with
    s = q.k * scale and the row max c subtracted. q [B, T, Hq, D]; keys, values [B, N, Hkv, D|V]; key_valid [B, N].
    Returns num = sum exp(s - c) v [B, T, Hq, V] and den = sum exp(s - c) [B, T, Hq, 1], in query blocks so
    memory stays O(block x (block + window)).
    """
    B, T, Hq, D = q.shape
    Hkv = keys.shape[2]
    nums, dens = [], []
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        k0, k1 = max(0, first + t0 - window + 1), first + t1
        qb = q[:, t0:t1].reshape(B, t1 - t0, Hkv, Hq // Hkv, D)
        s = torch.einsum("bihgd,bjhd->bhgij", qb, keys[:, k0:k1].to(q.dtype)) * scale
        i = torch.arange(first + t0, first + t1, device=q.device).view(-1, 1)
        j = torch.arange(k0, k1, device=q.device).view(1, -1)
        seen = (j <= i) & (j > i - window)
        visible = seen.view(1, 1, 1, *seen.shape) & (key_valid[:, k0:k1].view(B, 1, 1, 1, -1) | (j == i).view(1, 1, 1, *seen.shape))
        s = s.masked_fill(~visible, float("-inf"))
        p = (s - s.amax(-1, keepdim=True)).exp()
        nums.append(torch.einsum("bhgij,bjhv->bihgv", p, values[:, k0:k1].to(q.dtype)).reshape(B, t1 - t0, Hq, -1))
        dens.append(p.sum(-1).permute(0, 3, 1, 2).reshape(B, t1 - t0, Hq, 1))
    return torch.cat(nums, dim=1), torch.cat(dens, dim=1)


class MixerCacheLayer(CacheLayerMixin):
    """A converted layer's decode state: the recurrent state (fixed size), for window hybrids the last `window`
    keys and values with their padding flags, for mamba2 the short convolution's last inputs. Counts the tokens
    it has seen so that generation's positions and masks work as with a KV cache."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self):
        super().__init__()
        self.state = None
        self.valid = None
        self.conv = None
        self.seen = 0

    def lazy_initialization(self, *args, **kwargs):
        self.is_initialized = True

    def update(self, *args, **kwargs):
        raise NotImplementedError("a linearized layer keeps a recurrent state, not a KV cache")

    def get_mask_sizes(self, query_length):
        return self.seen + query_length, 0

    def get_seq_length(self):
        return self.seen

    def get_max_length(self):
        return -1

    def tensors(self):
        return [t for t in (self.state, self.keys, self.values, self.valid, self.conv) if t is not None]

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def _map(self, fn):
        self.state, self.keys, self.values, self.valid, self.conv = (
            None if t is None else fn(t) for t in (self.state, self.keys, self.values, self.valid, self.conv))

    def reset(self):
        self._map(lambda t: None)
        self.seen = 0
        self.is_initialized = False

    def reorder_cache(self, beam_idx):
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats):
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices):
        self._map(lambda t: t[indices])

    def crop(self, tokens_to_remove):
        if tokens_to_remove != 0:
            raise RuntimeError("a recurrent state cannot be cropped: generate without assisted decoding")

    def offload(self):
        self._map(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self):
        pass


class LinearizeCache(Cache):
    """One layer cache per decoder layer: `MixerCacheLayer` for converted layers, the source's own dynamic (full or
    sliding-window) KV layer for layers kept as softmax attention."""

    def __init__(self, config):
        source = config.source_config()
        layer_types, layer_kwargs = get_layer_types_and_kwargs(source)
        layers = [
            DYNAMIC_LAYER_TYPE_MAPPING[kind](**kwargs) if i in config.softmax_layers else MixerCacheLayer()
            for i, (kind, kwargs) in enumerate(zip(layer_types, layer_kwargs))
        ]
        super().__init__(layers=layers)

    def mixer_bytes(self):
        """Bytes the converted layers hold: constant once the window is full."""
        return sum(layer.nbytes() for layer in self.layers if isinstance(layer, MixerCacheLayer))


class Parameters(nn.Module):
    """Holds a recipe tensor under its Linearize name (<scope>.weight, <scope>.bias)."""

    def __init__(self, weight_shape, bias_shape=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(weight_shape))
        if bias_shape is not None:
            self.bias = nn.Parameter(torch.zeros(bias_shape))


class LinearizedAttention(nn.Module):
    """A converted layer's attention: the source's q/k/v/o projections (and q/k norms) plus a recipe's mixer."""

    def __init__(self, source_attn, config, params, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = source_attn.head_dim
        self.params = params
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            source_attn.q_proj, source_attn.k_proj, source_attn.v_proj, source_attn.o_proj)
        self.q_norm = getattr(source_attn, "q_norm", None)
        self.k_norm = getattr(source_attn, "k_norm", None)

    def project(self, x):
        """q [B, T, H, D], k and v [B, T, Hkv, D]: after the family's q/k norm, before RoPE."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)
        v = self.v_proj(x).view(B, T, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                linearize_padding_mask=None, **kwargs):
        B, T, _ = hidden_states.shape
        cache = past_key_values.layers[self.layer_idx] if past_key_values is not None else None
        if linearize_padding_mask is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=hidden_states.device)
        else:
            valid = linearize_padding_mask[:, -T:].to(device=hidden_states.device, dtype=torch.bool)
        o = self.mix(hidden_states, position_embeddings, valid, cache)
        if cache is not None:
            cache.seen += T
            cache.is_initialized = True
        return self.o_proj(o.to(hidden_states.dtype).reshape(B, T, -1)), None

    def mix(self, x, position_embeddings, valid, cache):
        """[B, T, H, V]: the mixer's output per head before o_proj; advances `cache` when given."""
        raise NotImplementedError

    def window_branch(self, q, k, v, valid, cache):
        """Window keys: the cached ones then these; returns num, den of `window_attention` and updates the cache."""
        B = q.shape[0]
        window = self.params["window"]
        if cache is not None and cache.keys is not None:
            keys, values = torch.cat([cache.keys, k], 1), torch.cat([cache.values, v], 1)
            key_valid = torch.cat([cache.valid, valid], 1)
            first = cache.keys.shape[1]
        else:
            keys, values, key_valid, first = k, v, valid, 0
        num, den = window_attention(q, keys, values, key_valid, first, window, self.head_dim ** -0.5)
        if cache is not None:
            cache.keys, cache.values, cache.valid = keys[:, -window:], values[:, -window:], key_valid[:, -window:]
        return num, den, keys, values, key_valid, first


class HedgehogAttention(LinearizedAttention):
    """Hedgehog (Zhang et al. 2024): o_n = sum_j phi(q_n).phi(k_j) v_j / sum_j phi(q_n).phi(k_j), phi the learned
    Hedgehog map per query head on RoPE'd q, k (converter/recipes/hedgehog.cpp)."""

    def __init__(self, source_attn, config, params, layer_idx):
        super().__init__(source_attn, config, params, layer_idx)
        f = params.get("feature_dim") or self.head_dim // 2
        self.feature_map_q = Parameters((self.heads, self.head_dim, f))
        self.feature_map_k = Parameters((self.heads, self.head_dim, f))

    def mix(self, x, position_embeddings, valid, cache):
        q, k, v = self.project(x)
        cos, sin = position_embeddings
        phi_q = hedgehog(wide(rope(q, cos, sin)), self.feature_map_q.weight)
        phi_k = hedgehog(repeat_heads(wide(rope(k, cos, sin)), self.heads), self.feature_map_k.weight)
        v = repeat_heads(wide(v), self.heads)
        # The normaliser rides along as a column of ones: the state's last column is z = sum phi(k).
        v = torch.cat([v, torch.ones_like(v[..., :1])], -1)
        o, state = gated_linear_attention(phi_q, zero_where_padded(phi_k, valid), v, None,
                                          cache.state if cache is not None else None, CHUNK)
        if cache is not None:
            cache.state = state
        return o[..., :-1] / (o[..., -1:] + 1e-10)  # fla's normaliser epsilon, as Linearize


class LolcatsAttention(LinearizedAttention):
    """LoLCATs (converter/recipes/lolcats.cpp): exact softmax over the last `window` keys and Hedgehog linear
    attention over the keys that left it, sharing one normaliser, the window weighted by sigmoid(w_h):
    y_n = (g_h num_n + phi_q(q_n)^T S_{n-window}) / (g_h den_n + phi_q(q_n).z_{n-window}). A key enters the
    state when it leaves the window, so prefill and decode agree."""

    def __init__(self, source_attn, config, params, layer_idx):
        super().__init__(source_attn, config, params, layer_idx)
        f = params.get("feature_dim") or self.head_dim // 2
        self.feature_map_q = Parameters((self.heads, self.head_dim, f))
        self.feature_map_k = Parameters((self.heads, self.head_dim, f))
        self.window_factors = nn.Parameter(torch.zeros(self.heads))

    def mix(self, x, position_embeddings, valid, cache):
        q, k, v = self.project(x)
        cos, sin = position_embeddings
        q, k, v = wide(rope(q, cos, sin)), wide(rope(k, cos, sin)), wide(v)
        T, window = q.shape[1], self.params["window"]
        num, den, keys, values, key_valid, first = self.window_branch(q, k, v, valid, cache)
        # The key leaving the window at query t (key index first + t - window) enters the linear state.
        leaving = torch.arange(T, device=q.device) + first - window
        index = leaving.clamp(min=0)
        enters = (leaving >= 0).unsqueeze(0) & key_valid[:, index]
        phi_k = hedgehog(repeat_heads(keys[:, index], self.heads), self.feature_map_k.weight)
        v_in = repeat_heads(values[:, index], self.heads)
        v_in = torch.cat([v_in, torch.ones_like(v_in[..., :1])], -1)
        lin, state = gated_linear_attention(hedgehog(q, self.feature_map_q.weight), zero_where_padded(phi_k, enters),
                                            v_in, None, cache.state if cache is not None else None, CHUNK)
        if cache is not None:
            cache.state = state
        g = torch.sigmoid(self.window_factors.to(q.dtype)).view(1, 1, -1, 1)
        return (g * num + lin[..., :-1]) / (g * den + lin[..., -1:])


class LigerGlaAttention(LinearizedAttention):
    """Liger-GLA (converter/recipes/liger_gla.cpp): o = 0.5 softmax-window(RoPE'd q, k) + 0.5 GLA(softmax_d(q),
    softmax_d(k), v) with log a_t = logsigmoid(k_t) / gate_normalizer per key channel, no RoPE in the GLA."""

    def mix(self, x, position_embeddings, valid, cache):
        q, k, v = self.project(x)
        cos, sin = position_embeddings
        kw, v = wide(k), wide(v)
        log_decay = zero_where_padded(F.logsigmoid(kw) / self.params["gate_normalizer"], valid)
        o_lin, state = gated_linear_attention(wide(q).softmax(-1), zero_where_padded(kw.softmax(-1), valid), v,
                                              log_decay, cache.state if cache is not None else None, CHUNK_PER_CHANNEL)
        num, den, *_ = self.window_branch(wide(rope(q, cos, sin)), wide(rope(k, cos, sin)), v, valid, cache)
        if cache is not None:
            cache.state = state
        return 0.5 * num / den + 0.5 * o_lin


def alibi_slopes(n):
    """ALiBi slopes (Press et al. 2022), as converter/recipes/supra.cpp."""
    def power_of_two(m):
        start = 2.0 ** (-8.0 / m)
        return [start ** (i + 1) for i in range(m)]
    closest = 2 ** math.floor(math.log2(n))
    slopes = power_of_two(closest)
    if closest != n:
        slopes += power_of_two(2 * closest)[0::2][: n - closest]
    return slopes


class SupraAttention(LinearizedAttention):
    """SUPRA (converter/recipes/supra.cpp): phi(x) = RoPE(ReLU(xW + b)), S_t = gamma_h S_{t-1} + phi(k_t) v_t^T
    with gamma_h = exp(-ALiBi slope), o_t = GroupNorm_h(phi(q_t) S_t / sqrt(d)), no denominator."""

    def __init__(self, source_attn, config, params, layer_idx):
        super().__init__(source_attn, config, params, layer_idx)
        nq, nk = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.feature_map_q = Parameters((nq, nq), nq)
        self.feature_map_k = Parameters((nk, nk), nk)
        # A plain list, not a buffer: from_pretrained leaves buffers absent from the checkpoint uninitialised.
        self.log_gamma = [-s for s in alibi_slopes(self.heads)]

    def mix(self, x, position_embeddings, valid, cache):
        q, k, v = self.project(x)
        cos, sin = position_embeddings
        B, T = x.shape[:2]

        def phi(heads, layer):
            a = wide(heads).reshape(B, T, -1)
            mapped = F.relu(F.linear(a, layer.weight.to(a.dtype), layer.bias.to(a.dtype)))
            return rope(mapped.view(B, T, -1, self.head_dim), cos, sin)

        phi_q, phi_k = phi(q, self.feature_map_q), repeat_heads(phi(k, self.feature_map_k), self.heads)
        log_gamma = torch.tensor(self.log_gamma, dtype=phi_q.dtype, device=phi_q.device)
        log_decay = zero_where_padded(log_gamma.view(1, 1, -1, 1).expand(B, T, -1, 1), valid)
        o, state = gated_linear_attention(phi_q * self.head_dim ** -0.5, zero_where_padded(phi_k, valid),
                                          repeat_heads(wide(v), self.heads), log_decay,
                                          cache.state if cache is not None else None, CHUNK)
        if cache is not None:
            cache.state = state
        mean = o.mean(-1, keepdim=True)
        var = (o - mean).pow(2).mean(-1, keepdim=True)
        return (o - mean) * torch.rsqrt(var + self.params["groupnorm_eps"])


class GatedDeltaNetAttention(LinearizedAttention):
    """Gated DeltaNet (arXiv 2412.06464 eq. 10; converter/recipes/gated_deltanet.cpp) on the source's q, k, v:
    S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = S_t q_t, q, k = L2norm(SiLU(.)) per head,
    beta = sigmoid(x.w + b), log a = -exp(A_log) softplus(x.w + dt_bias), scale 1, no RoPE. The kernels are
    transformers' own (Qwen3-Next's torch forms); they take one head count, so kv heads are repeated per query
    head and the state is [B, H, D, D]."""

    def __init__(self, source_attn, config, params, layer_idx):
        super().__init__(source_attn, config, params, layer_idx)
        self.beta_proj = Parameters((self.kv_heads, config.hidden_size), self.kv_heads)
        self.decay_proj = Parameters((self.kv_heads, config.hidden_size), self.kv_heads)
        self.A_log = nn.Parameter(torch.zeros(self.kv_heads))

    def mix(self, x, position_embeddings, valid, cache):
        q, k, v = self.project(x)

        def unit(t):  # fla's l2norm: eps 1e-6 under the root
            s = F.silu(wide(t))
            return s * torch.rsqrt(s.pow(2).sum(-1, keepdim=True) + 1e-6)

        xw = wide(x)

        def project_heads(layer):  # the recipe's small projections, in fp32 whatever the model's dtype
            return F.linear(xw, layer.weight.to(xw.dtype), layer.bias.to(xw.dtype))

        beta = zero_where_padded(torch.sigmoid(project_heads(self.beta_proj)), valid)
        log_decay = zero_where_padded(-wide(self.A_log).exp() * F.softplus(project_heads(self.decay_proj)), valid)
        H = self.heads
        # The kernels scale q by D^-1/2; Linearize's scale is 1.
        args = (unit(q) * self.head_dim ** 0.5, repeat_heads(zero_where_padded(unit(k), valid), H),
                repeat_heads(wide(v), H), repeat_heads(log_decay, H), repeat_heads(beta, H))
        initial = cache.state if cache is not None else None
        if x.shape[1] == 1 and initial is not None:
            o, state = torch_recurrent_gated_delta_rule(*args, initial_state=initial, output_final_state=True)
        else:
            o, state = torch_chunk_gated_delta_rule(*args, chunk_size=CHUNK, initial_state=initial,
                                                    output_final_state=True)
        if cache is not None:
            cache.state = state
        return o


class Mamba2Attention(LinearizedAttention):
    """Mamba-2 from attention, Mamba-in-the-Llama's mapping (converter/recipes/mamba2.cpp): x, B, C from W_V, W_K,
    W_Q through a short causal conv (SiLU), x and B repeated to the query heads; dt = softplus(x_in.w + dt_bias),
    S_t = exp(-exp(A_log) dt_t) S_{t-1} + B_t (dt_t x_t)^T, y = C_t^T S_t + D x_t; RMSNorm(y * silu(z)) w."""

    def __init__(self, source_attn, config, params, layer_idx):
        super().__init__(source_attn, config, params, layer_idx)
        H, d, hidden = self.heads, self.head_dim, config.hidden_size
        channels = 2 * self.kv_heads * d + H * d
        self.z_proj = Parameters((H * d, hidden))
        self.dt_proj = Parameters((H, hidden))
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.A_log = nn.Parameter(torch.zeros(H))
        self.D = nn.Parameter(torch.zeros(H))
        self.conv1d = Parameters((channels, params["conv_kernel"]), channels)
        self.norm = Parameters((H * d,))

    def mix(self, x, position_embeddings, valid, cache):
        q, k, v = self.project(x)
        B, T = x.shape[:2]
        H, d, kv = self.heads, self.head_dim, self.kv_heads * self.head_dim
        xw = wide(x)
        # A padded token feeds zeros to the conv, as the positions before the first token do.
        channels = zero_where_padded(wide(torch.cat([v.reshape(B, T, -1), k.reshape(B, T, -1), q.reshape(B, T, -1)], -1)), valid)
        weight, bias = self.conv1d.weight.to(channels.dtype), self.conv1d.bias.to(channels.dtype)
        taps = weight.shape[1]
        past = cache.conv if cache is not None and cache.conv is not None else channels.new_zeros(B, taps - 1, channels.shape[-1])
        padded = torch.cat([past, channels], 1)
        y = F.silu(F.conv1d(padded.transpose(1, 2), weight.unsqueeze(1), bias, groups=channels.shape[-1])).transpose(1, 2)
        xs = repeat_heads(y[..., :kv].reshape(B, T, -1, d), H)
        bs = repeat_heads(y[..., kv:2 * kv].reshape(B, T, -1, d), H)
        cs = y[..., 2 * kv:].reshape(B, T, H, d)
        dt = zero_where_padded(F.softplus(F.linear(xw, self.dt_proj.weight.to(xw.dtype), self.dt_bias.to(xw.dtype))), valid)
        log_decay = (-wide(self.A_log).exp() * dt).unsqueeze(-1)
        o, state = gated_linear_attention(cs, bs, xs * dt.unsqueeze(-1), log_decay,
                                          cache.state if cache is not None else None, CHUNK)
        if cache is not None:
            cache.state, cache.conv = state, padded[:, padded.shape[1] - (taps - 1):]
        out = (o + wide(self.D).view(1, 1, H, 1) * xs).reshape(B, T, H * d) * F.silu(F.linear(xw, self.z_proj.weight.to(xw.dtype)))
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + self.params["norm_eps"]) * self.norm.weight.to(xw.dtype)
        return out.view(B, T, H, d)


# The recipes by their Linearize names (converter/recipes/registry.cpp).
MIXERS = {
    "hedgehog": HedgehogAttention,
    "lolcats": LolcatsAttention,
    "liger-gla": LigerGlaAttention,
    "supra": SupraAttention,
    "gated-deltanet": GatedDeltaNetAttention,
    "mamba2": Mamba2Attention,
}


class LinearizePreTrainedModel(PreTrainedModel):
    config_class = LinearizeConfig
    config: LinearizeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _skip_keys_device_placement = ["past_key_values"]


class LinearizeForCausalLM(LinearizePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        if config.recipe not in MIXERS:
            raise ValueError(f"config.json: linearize.recipe '{config.recipe}' is not one this file implements "
                             f"({', '.join(MIXERS)})")
        source = config.source_config()
        self.model = AutoModel.from_config(source, attn_implementation=config._attn_implementation or "sdpa")
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.logit_softcap = getattr(source, "final_logit_softcapping", None)
        mixer = MIXERS[config.recipe]
        for i, layer in enumerate(self.model.layers):
            if i not in config.softmax_layers:
                layer.self_attn = mixer(layer.self_attn, source, config.recipe_params, i)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # forward makes a LinearizeCache: converted layers keep states, not keys

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = LinearizeCache(self.config)
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # Positions count real tokens only, so a left-padded row is the row alone (the feature maps of
            # hedgehog and lolcats see absolute RoPE phases, unlike softmax attention).
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values if use_cache else None, inputs_embeds=inputs_embeds,
                             use_cache=use_cache, linearize_padding_mask=attention_mask, **kwargs)
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)


__all__ = ["LinearizeForCausalLM", "LinearizePreTrainedModel", "LinearizeCache"]
