"""A Linearize export in transformers: the source family's own decoder (its norms, MLP, RoPE, embeddings, taken
from transformers) with the converted layers' attention replaced by the recipe's mixer, in plain PyTorch.

Each converted layer runs the recipe's mixer program, which the export records in config.json (linearize.program):
the same program Linearize's LibTorch and ONNX backends instantiate (converter/recipes/mixer_program.h), run here
primitive by primitive (ProgramRun), so this file holds no recipe. Prefill runs a chunked form, decode one token on
the carried state, both through the same functions, so the two agree by construction. The state lives in `LinearizeCache`, a transformers Cache: a recurrent state
(fixed size) plus, for the window hybrids, the last `window` keys; layers kept as softmax attention keep their
source KV cache. A padded token (attention_mask 0) is an exact no-op on the state: its key and write are zeroed
and its decay is 1, so a left-padded row computes what the row alone computes. Kept in the Linearize repository
(converter/hf/) and copied, with its sha256 recorded, into every export; tests/python/test_exports.py checks it
against `linearize forward` and `linearize generate`.
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, Cache, CacheLayerMixin, get_layer_types_and_kwargs
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.auto.modeling_auto import MODEL_MAPPING
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
    """RoPE on [B, T, H, D] with the family's cos, sin [B, T, R] (transformers' rotary embedding of this layer): the
    first R channels rotate, the rest pass (a partial rotary factor, Phi-4-mini's 0.75)."""
    rotary = cos.shape[-1]
    rotated, passed = x[..., :rotary], x[..., rotary:]
    out = rotated * cos.unsqueeze(2).to(x.dtype) + rotate_half(rotated) * sin.unsqueeze(2).to(x.dtype)
    return out if rotary == x.shape[-1] else torch.cat([out, passed], -1)


def rotary_dim(config, head_dim):
    """The channels of a head RoPE rotates: head_dim times the family's partial rotary factor (Phi-4-mini's 0.75)."""
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get("full_attention", params)  # one object per layer type (Gemma 3): the factor is shared
    return int(head_dim * params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0))


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


def add_parameter(module, name, shape):
    """Registers a recipe tensor under its Linearize name ("feature_map_q.weight": a submodule's weight)."""
    *path, leaf = name.split(".")
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    module.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))


class LinearizedAttention(nn.Module):
    """A converted layer's attention: the source's q/k/v/o projections (and q/k norms) plus the recipe's mixer, run
    from the program the export records (config.json linearize.program, written by Linearize's ProgramRecorder
    from the same program its LibTorch and ONNX backends instantiate: converter/recipes/mixer_program.h)."""

    def __init__(self, source_attn, config, program, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = source_attn.head_dim
        self.scaling = source_attn.scaling  # of q.k in the window branch: the source's (Gemma 3's query_pre_attn_scalar)
        self.program = program
        self.o_proj = source_attn.o_proj
        # Phi-3 stores [q; k; v] as one qkv_proj; the others three projections.
        self.qkv_proj = getattr(source_attn, "qkv_proj", None)
        if self.qkv_proj is None:
            self.q_proj, self.k_proj, self.v_proj = source_attn.q_proj, source_attn.k_proj, source_attn.v_proj
        self.q_norm = getattr(source_attn, "q_norm", None)
        self.k_norm = getattr(source_attn, "k_norm", None)
        # OLMo 2's q/k norms span the whole projection (all heads at once), the others' each head.
        self.qk_norm_full_width = self.q_norm is not None and self.q_norm.weight.shape[0] != self.head_dim
        self.use_rope = getattr(source_attn, "use_rope", True)  # SmolLM3's NoPE layers: False
        self.rotary_dim = rotary_dim(config, self.head_dim)
        # gpt-oss's attention sinks stay in the checkpoint (it holds the source's tensors), but a converted layer has
        # none: the recipe's normaliser replaces the softmax's (README, the gpt-oss row). Kept, unused, so that the
        # checkpoint loads without unexpected keys.
        if hasattr(source_attn, "sinks"):
            self.sinks = source_attn.sinks
        for name, shape in program["tensors"].items():
            add_parameter(self, name, shape)

    def project(self, x):
        """q [B, T, H, D], k and v [B, T, Hkv, D]: after the family's q/k norm, before RoPE."""
        B, T, _ = x.shape
        q, k, v = self.linear_qkv(x)
        if self.qk_norm_full_width:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape(B, T, -1, self.head_dim) for t in (q, k, v))
        if self.q_norm is not None and not self.qk_norm_full_width:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def linear_qkv(self, x, with_bias=True):
        """q, k, v of x [B, T, hidden], flat: three projections, or Phi-3's fused one split; without biases on request."""
        def apply(proj):
            y = proj(x)
            return y if with_bias or proj.bias is None else y - proj.bias
        if self.qkv_proj is None:
            return apply(self.q_proj), apply(self.k_proj), apply(self.v_proj)
        kv = self.kv_heads * self.head_dim
        return apply(self.qkv_proj).split([self.heads * self.head_dim, kv, kv], -1)

    def project_weights(self, x):
        """q, k, v through the weights alone (a PEFT adapter's delta included): no biases, no q/k norm."""
        B, T, _ = x.shape
        return tuple(t.reshape(B, T, -1, self.head_dim) for t in self.linear_qkv(x, with_bias=False))

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                linearize_padding_mask=None, **kwargs):
        B, T, _ = hidden_states.shape
        cache = past_key_values.layers[self.layer_idx] if past_key_values is not None else None
        if linearize_padding_mask is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=hidden_states.device)
        else:
            valid = linearize_padding_mask[:, -T:].to(device=hidden_states.device, dtype=torch.bool)
        out = ProgramRun(self, hidden_states, position_embeddings, valid, cache).run(self.program)
        if cache is not None:
            cache.seen += T
            cache.is_initialized = True
        return out, None

    def window_branch(self, q, k, v, valid, cache, window):
        """Window keys: the cached ones then these; returns num, den of `window_attention` and updates the cache."""
        if cache is not None and cache.keys is not None:
            keys, values = torch.cat([cache.keys, k], 1), torch.cat([cache.values, v], 1)
            key_valid = torch.cat([cache.valid, valid], 1)
            first = cache.keys.shape[1]
        else:
            keys, values, key_valid, first = k, v, valid, 0
        num, den = window_attention(q, keys, values, key_valid, first, window, self.scaling)
        if cache is not None:
            cache.keys, cache.values, cache.valid = keys[:, -window:], values[:, -window:], key_valid[:, -window:]
        return num, den, keys, values, key_valid, first


class ProgramRun:
    """One call of a converted layer: the recorded program's primitives on tensors in the sequence-first layout
    ([B, T, H, D]; one value per head and token [B, T, H, 1]), as Linearize's TorchMixerOps computes them
    (converter/recipes/torch_mixer_ops.cpp). The recurrences carry their state in `cache` and skip padded tokens:
    a padded token's key, write and conv input are zeroed and its decay is 1, so a left-padded row computes what
    the row alone computes."""

    def __init__(self, layer, x, position_embeddings, valid, cache):
        self.layer, self.x, self.valid, self.cache = layer, x, valid, cache
        self.cos, self.sin = position_embeddings if position_embeddings is not None else (None, None)
        if self.cos is not None and 2 * self.cos.shape[-1] == layer.rotary_dim:
            # gpt-oss's rotary embedding gives each frequency once (its rotation takes the halves); `rope` takes them
            # over both halves, as every other family gives them.
            self.cos, self.sin = torch.cat([self.cos, self.cos], -1), torch.cat([self.sin, self.sin], -1)
        self.compute = wide(x).dtype
        self.B, self.T = x.shape[:2]

    def run(self, program, values=None):
        values = dict(values or {program["input"]: self.x})
        for op in program["ops"]:
            result = getattr(self, op["op"])(op, *[values.get(i) for i in op["in"]])
            outs = op["out"] if isinstance(op["out"], list) else [op["out"]]
            values.update(zip(outs, result if isinstance(op["out"], list) else [result]))
        return values[program["output"]]

    def tensor(self, name):
        return self.layer.get_parameter(name)

    def state(self):
        return self.cache.state if self.cache is not None else None

    def set_state(self, state):
        if self.cache is not None:
            self.cache.state = state

    # Shapes and layouts.
    def project_heads(self, op, x):
        return self.layer.project(x)

    def project_weights(self, op, x):
        return self.layer.project_weights(x)

    def rope(self, op, v):
        return rope(v, self.cos, self.sin) if self.layer.use_rope else v

    def repeat_kv(self, op, v):
        return repeat_heads(v, self.layer.heads)

    def fp32(self, op, v):
        return wide(v)

    def merge_heads(self, op, v):
        return v.reshape(self.B, self.T, -1)

    def split_heads(self, op, v):
        return v.reshape(self.B, self.T, -1, op["dim"])

    # Recipe tensors (cast to the dtype of what they act on, as the C++ backend).
    def linear(self, op, v):
        bias = self.tensor(op["bias"]).to(v.dtype) if op["bias"] else None
        return F.linear(v, self.tensor(op["weight"]).to(v.dtype), bias)

    def per_head(self, op, x):
        return self.linear(op, x).unsqueeze(-1)

    def param(self, op):
        return self.tensor(op["tensor"]).to(self.compute)

    def head_param(self, op):
        return self.param(op).view(1, 1, -1, 1)

    def hedgehog(self, op, v):
        return hedgehog(v, self.tensor(op["weight"]))

    # Elementwise and norms.
    def softmax_d(self, op, v):
        return v.softmax(-1)

    def silu(self, op, v):
        return F.silu(v)

    def sigmoid(self, op, v):
        return torch.sigmoid(v)

    def softplus(self, op, v):
        return F.softplus(v)

    def log_sigmoid(self, op, v):
        return F.logsigmoid(v)

    def relu(self, op, v):
        return F.relu(v)

    def exp(self, op, v):
        return v.exp()

    def neg(self, op, v):
        return -v

    def add(self, op, a, b):
        return a + b

    def mul(self, op, a, b):
        return a * b

    def div(self, op, a):
        return a / op["divisor"]

    def l2_normalize(self, op, v):
        return v * torch.rsqrt(v.pow(2).sum(-1, keepdim=True) + op["eps"])

    def rms_normalize(self, op, v):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + op["eps"])

    def layer_normalize(self, op, v):
        mean = v.mean(-1, keepdim=True)
        return (v - mean) * torch.rsqrt((v - mean).pow(2).mean(-1, keepdim=True) + op["eps"])

    # The recurrences.
    def log_decay(self, r, decay):
        """The decay as gated_linear_attention takes it ([B, T, H, K or 1] or None), 0 where padded."""
        if r["decay"] == "none":
            return None
        if r["decay"] == "fixed":
            decay = torch.tensor(r["fixed_log_decay"], dtype=self.compute, device=self.x.device).view(1, 1, -1, 1)
            decay = decay.expand(self.B, self.T, -1, 1)
        return zero_where_padded(decay, self.valid)

    def linear_attention(self, op, q, k, v, decay):
        """Linearize kernels/linear_attention.h: S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t
        (normalised: / (scale q_t.z_t + eps), z riding along as a column of ones in v)."""
        r = op["recurrence"]
        q, k, v = wide(q) * r["scale"], zero_where_padded(wide(k), self.valid), wide(v)
        if r["normalize"]:
            v = torch.cat([v, torch.ones_like(v[..., :1])], -1)
        chunk = CHUNK_PER_CHANNEL if r["decay"] == "per_channel" else CHUNK
        o, state = gated_linear_attention(q, k, v, self.log_decay(r, decay), self.state(), chunk)
        self.set_state(state)
        return o[..., :-1] / (o[..., -1:] + 1e-10) if r["normalize"] else o  # fla's normaliser epsilon

    def delta_rule(self, op, q, k, v, beta, decay):
        """Linearize kernels/delta_rule.h on transformers' own kernels (Qwen3-Next's torch forms), which take one head
        count: kv heads are repeated per query head and the state is [B, H, K, V]; they scale q by K^-1/2."""
        r, H = op["recurrence"], q.shape[2]
        g = zero_where_padded(decay[..., 0], self.valid)  # one log decay per head and token, as beta
        args = (wide(q) * r["scale"] * q.shape[-1] ** 0.5, repeat_heads(zero_where_padded(wide(k), self.valid), H),
                repeat_heads(wide(v), H), repeat_heads(g, H),
                repeat_heads(zero_where_padded(beta[..., 0], self.valid), H))
        initial = self.state()
        if self.T == 1 and initial is not None:
            o, state = torch_recurrent_gated_delta_rule(*args, initial_state=initial, output_final_state=True)
        else:
            o, state = torch_chunk_gated_delta_rule(*args, chunk_size=CHUNK, initial_state=initial, output_final_state=True)
        self.set_state(state)
        return o

    def short_conv(self, op, *heads):
        """y_t = silu(b + sum_i w_i x_{t-K+1+i}) per channel over the heads concatenated per token; the state is the
        last K-1 inputs. A padded token feeds zeros, as the positions before the first token do."""
        flat = [h.reshape(self.B, self.T, -1) for h in heads]
        channels = zero_where_padded(wide(torch.cat(flat, -1)), self.valid)
        weight = self.tensor(op["weight"]).to(channels.dtype)
        bias = self.tensor(op["bias"]).to(channels.dtype) if op["bias"] else None
        taps = weight.shape[1]
        cache = self.cache
        past = cache.conv if cache is not None and cache.conv is not None else channels.new_zeros(self.B, taps - 1, channels.shape[-1])
        padded = torch.cat([past, channels], 1)
        y = F.silu(F.conv1d(padded.transpose(1, 2), weight.unsqueeze(1), bias, groups=channels.shape[-1])).transpose(1, 2)
        if cache is not None:
            cache.conv = padded[:, padded.shape[1] - (taps - 1):]
        return [part.reshape(self.B, self.T, count, -1)
                for part, count in zip(y.split([f.shape[-1] for f in flat], -1), op["heads"])]

    def liger_hybrid(self, op, q, k, v, phi_q, phi_k, log_decay):
        """Liger: 0.5 softmax window (RoPE'd q, k) + 0.5 GLA on the maps, each with its own normaliser."""
        v = wide(v)
        o_lin, state = gated_linear_attention(phi_q, zero_where_padded(phi_k, self.valid), v,
                                              zero_where_padded(log_decay, self.valid), self.state(), CHUNK_PER_CHANNEL)
        num, den, *_ = self.layer.window_branch(wide(q), wide(k), v, self.valid, self.cache, op["window"])
        self.set_state(state)
        return 0.5 * num / den + 0.5 * o_lin

    def lolcats_hybrid(self, op, q, k, v, phi_q):
        """LoLCATs: exact softmax over the last `window` keys and the linear attention over the keys that left it,
        one shared normaliser, the window weighted by sigmoid(w_h):
        y_n = (g_h num_n + phi_q(q_n)^T S_{n-window}) / (g_h den_n + phi_q(q_n).z_{n-window}). A key enters the state
        when it leaves the window (through the recorded phi_k), so prefill and decode agree."""
        q, k, v = wide(q), wide(k), wide(v)
        window = op["window"]
        num, den, keys, values, key_valid, first = self.layer.window_branch(q, k, v, self.valid, self.cache, window)
        # The key leaving the window at query t (key index first + t - window) enters the linear state.
        leaving = torch.arange(self.T, device=q.device) + first - window
        index = leaving.clamp(min=0)
        enters = (leaving >= 0).unsqueeze(0) & key_valid[:, index]
        feature_map = op["phi_k"]
        phi_k = self.run(feature_map, {feature_map["input"]: keys[:, index]})
        v_in = repeat_heads(values[:, index], phi_k.shape[2])
        v_in = torch.cat([v_in, torch.ones_like(v_in[..., :1])], -1)
        lin, state = gated_linear_attention(phi_q, zero_where_padded(phi_k, enters), v_in, None, self.state(), CHUNK)
        self.set_state(state)
        g = torch.sigmoid(self.tensor(op["window_factors"]).to(q.dtype)).view(1, 1, -1, 1)
        return (g * num + lin[..., :-1]) / (g * den + lin[..., -1:])

    def project_output(self, op, v):
        return self.layer.o_proj(v.to(self.x.dtype).reshape(self.B, self.T, -1))


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
        if "program" not in config.linearize:
            raise ValueError(f"config.json: linearize.program is missing: the export of recipe '{config.recipe}' "
                             "does not record its mixer program (convert it again with this Linearize)")
        source = config.source_config()
        attention = config._attn_implementation or "sdpa"
        # gpt-oss's sinks have no SDPA form in transformers: its kept layers run its own eager attention.
        if attention == "sdpa" and not MODEL_MAPPING[type(source)]._supports_sdpa:
            attention = "eager"
        self.model = AutoModel.from_config(source, attn_implementation=attention)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.logit_softcap = getattr(source, "final_logit_softcapping", None)
        self.logits_scaling = getattr(source, "logits_scaling", 1.0)  # Granite divides its logits
        for i, layer in enumerate(self.model.layers):
            if i not in config.softmax_layers:
                layer.self_attn = LinearizedAttention(layer.self_attn, source, config.linearize["program"], i)
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
        if self.logits_scaling != 1.0:
            logits = logits / self.logits_scaling
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)


__all__ = ["LinearizeForCausalLM", "LinearizePreTrainedModel", "LinearizeCache"]
