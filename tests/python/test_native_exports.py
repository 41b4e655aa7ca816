"""Native layouts (docs/verification.md#native-layouts): `linearize export-native` writes conversions as
architectures serving runtimes implement, and each runtime computes what `linearize` computes on the conversion
(scripts/check_native_export.py). Driven by ctest (label `runtimes`) with LINEARIZE_BINARY and LINEARIZE_FIXTURES.

Each case converts a fixture, moves the recipe tensors off their conversion values (an identity conv, beta = 1/2
and zero projections would hide a wrong tap order, row repeat or projection: a trained model has none of them),
exports it and runs the parity rows of the runtimes that can load it:
  qwen3_5 (gated-deltanet): pure conversions of tiny-llama, tiny-mistral, tiny-qwen2, tiny-qwen3 and deep-llama in
    transformers; a Qwen3 hybrid (`auto:1`) in transformers and llama.cpp; a Llama and a Qwen3 with head_dim 64
    (made here with transformers' own classes: vLLM's CPU Gated DeltaNet kernel takes head dims 64 and 128 only),
    pure and hybrid, in vLLM too, and a Mistral and a Qwen2 of head_dim 64, pure, in vLLM.
  granitehybrid (mamba2): pure tiny-mistral and tiny-qwen2 (Qwen2's q/k/v biases moved into the conv bias) and a
    Llama with head_dim 32 (vLLM's CPU attention takes no 16 or 24), pure and hybrid, in vLLM, the hybrid in
    llama.cpp (which aborts on a model with no attention layer; transformers' class normalises over all of d_inner).
onnxruntime-genai runs the conversion's own `export-onnx` graph (not a native layout: it has no Mamba-2 or Gated
DeltaNet graph of its own to load) for a pure tiny-llama and the Qwen3 hybrid (gated-deltanet), and the pure
tiny-mistral and hybrid llama-d32 (mamba2).
A planted change in a written checkpoint (a conv tap, the gate's sign, a norm stored as w instead of w - 1) fails
the logits rows of transformers and llama.cpp (Qwen3.5), a conv tap swapped in the Granite hybrid fails llama.cpp's
and vLLM's, and one swapped in model.onnx fails genai's; what a layout
cannot hold is refused by name (exit 2, nothing written) and `--allow-inexact` writes it anyway.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import check_hf_export  # noqa: E402
import check_native_export  # noqa: E402
import check_onnx_export  # noqa: E402

BINARY = os.environ["LINEARIZE_BINARY"]
FIXTURES = os.environ["LINEARIZE_FIXTURES"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args):
    return subprocess.run([BINARY, "--log-level", "warn", *args], capture_output=True, text=True, env=ENV)


def source_dir(family, tmp):
    """A fixture directory, or one made here with transformers' own classes (`llama-d64`: a Llama of head_dim 64)."""
    if not family.endswith(("-d32", "-d64")):
        return os.path.join(FIXTURES, family)
    out = os.path.join(tmp, family)
    if os.path.isdir(out):
        return out
    import transformers
    kind, d = family.rsplit("-d", 1)
    d = int(d)
    config_class, model_class = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                                 "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
                                 "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                                 "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[kind]
    torch.manual_seed(d)
    config = config_class(vocab_size=768, hidden_size=4 * d if d < 64 else 2 * d, intermediate_size=256, num_hidden_layers=3,
                          num_attention_heads=4 if d < 64 else 2, num_key_value_heads=2 if d < 64 else 1, head_dim=d,
                          max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False,
                          bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model = model_class(config)
    with torch.no_grad():  # norms off 1, as a trained model's are
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIXTURES, "tiny-llama", name), out)
    return out


def convert(source, recipe, out, params=()):
    sets = [a for p in params for a in ("--set", p)]
    done = run("convert", "--model", source, "--recipe", recipe, "--out", out, *sets)
    if done.returncode != 0:
        raise RuntimeError(f"convert {source} failed ({done.returncode}): {done.stderr}")
    return out


def as_if_trained(conversion, seed):
    """The recipe tensors set to seeded values of a trained layer's scale (every tap, row and head distinct)."""
    path = os.path.join(conversion, "model.safetensors")
    tensors = load_file(path)
    g = torch.Generator().manual_seed(seed)
    scales = {"conv1d.weight": 0.5, "conv1d.bias": 0.2, "beta_proj.weight": 0.2, "decay_proj.weight": 0.2,
              "decay_proj.bias": 0.5, "A_log": 0.5, "z_proj.weight": 0.2, "norm.weight": 0.2, "dt_proj.weight": 0.2,
              "dt_bias": 0.5, "D": 0.5}
    for name in sorted(tensors):
        part = name.split("self_attn.")[-1]
        if part in scales:
            t = tensors[name]
            tensors[name] = (t.float() + scales[part] * torch.randn(t.shape, generator=g)).to(t.dtype)
    save_file(tensors, path, metadata={"format": "pt"})


def export_native(conversion, out, *extra, layout="qwen3_5"):
    return run("export-native", "--model", conversion, "--layout", layout, "--out", out, *extra)


def parity(conversion, native, label, runtimes=("transformers", "llama.cpp")):
    """The runtimes' rows (scripts/check_native_export.py); onnxruntime-genai's run on the conversion's own
    `export-onnx` graph (scripts/check_onnx_export.py), which genai loads with the genai_config.json written beside it."""
    report = check_hf_export.Report(f"{label:<22}")
    linearize = check_hf_export.Linearize(BINARY, conversion)
    for runtime in runtimes:
        if runtime == GENAI:
            genai(conversion, linearize, report)
        else:
            check_native_export.RUNTIMES[runtime](conversion, native, linearize, report)
    return report


GENAI = "onnxruntime-genai"


def genai(conversion, linearize, report):
    graph = os.path.join(conversion, "model.onnx")
    if not os.path.isfile(graph):
        done = run("export-onnx", "--model", conversion)
        if done.returncode != 0 or not check_onnx_export.genai_config_of(graph):
            report.add("genai: export-onnx wrote genai_config.json", done.returncode, 0, False, done.stderr.strip())
            return
    check_onnx_export.check_genai(conversion, graph, linearize, report)


def flip_graph_conv_tap(conversion):
    """A copy of the conversion whose model.onnx has one layer's conv taps swapped (oldest <-> newest)."""
    import onnx
    from onnx import numpy_helper
    planted = conversion + "-planted-onnx"
    shutil.copytree(conversion, planted)
    path = os.path.join(planted, "model.onnx")
    model = onnx.load(path)
    weight = next(t for t in model.graph.initializer if t.name.endswith("conv1d.weight"))
    taps = numpy_helper.to_array(weight).copy()
    taps[:, [0, -1]] = taps[:, [-1, 0]]
    weight.CopyFrom(numpy_helper.from_array(taps, weight.name))
    onnx.save(model, path)
    return planted


def plant(native, change):
    """A copy of `native` with one tensor changed."""
    planted = native + "-planted"
    shutil.copytree(native, planted)
    path = os.path.join(planted, "model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return planted


def flip_conv_tap(t):
    name = next(n for n in sorted(t) if n.endswith("conv1d.weight"))  # linear_attn. (Qwen3.5) or mamba. (Granite)
    t[name] = t[name].clone()
    t[name][:, 0, [0, -1]] = t[name][:, 0, [-1, 0]]  # the oldest and the newest tap swapped


def negate_gate(t):
    name = next(n for n in sorted(t) if n.endswith("linear_attn.in_proj_z.weight"))
    t[name] = -t[name]


def norm_as_weight(t):
    t["model.norm.weight"] = t["model.norm.weight"] + 1  # w stored where Qwen3.5 expects w - 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", default="0/1", help="K/N: the cases whose index is K mod N, and with K = 0 the refusals")
    part, parts = (int(x) for x in parser.parse_args().part.split("/"))
    failures = []
    everywhere = ("transformers", "llama.cpp", "vllm")
    cases = [("qwen3_5", "gated-deltanet", family, [], ("transformers",))
             for family in ("tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "deep-llama")]
    cases[0] = cases[0][:4] + (("transformers", GENAI),)
    cases += [("qwen3_5", "gated-deltanet", "tiny-qwen3", ["softmax_layers=auto:1"], ("transformers", "llama.cpp", GENAI)),
              ("qwen3_5", "gated-deltanet", "llama-d64", [], everywhere),
              ("qwen3_5", "gated-deltanet", "qwen3-d64", ["softmax_layers=auto:1"], everywhere),
              ("qwen3_5", "gated-deltanet", "mistral-d64", [], ("vllm",)),
              ("qwen3_5", "gated-deltanet", "qwen2-d64", [], ("vllm",)),
              ("granitehybrid", "mamba2", "tiny-mistral", [], ("vllm", GENAI)),
              ("granitehybrid", "mamba2", "tiny-qwen2", [], ("vllm",)),
              ("granitehybrid", "mamba2", "llama-d32", [], ("vllm",)),
              ("granitehybrid", "mamba2", "llama-d32", ["softmax_layers=[1]"], ("llama.cpp", "vllm", GENAI))]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (layout, recipe, family, params, runtimes) in enumerate(cases):
            if i % parts != part:
                continue
            label = f"{layout} {family}" + (" hybrid" if params else "")
            conversion = convert(source_dir(family, tmp), recipe, os.path.join(tmp, f"c{i}"), params)
            as_if_trained(conversion, seed=i)
            native = os.path.join(tmp, f"n{i}")
            done = export_native(conversion, native, layout=layout)
            if done.returncode != 0:
                failures.append(f"{label}: export-native exit {done.returncode}: {done.stderr.strip()}")
                continue
            if not parity(conversion, native, label, runtimes).passed:
                failures.append(f"{label}: a parity row failed")
            if i == 5:  # the Qwen3 hybrid: each planted change fails its logits rows
                for name, change in (("conv tap", flip_conv_tap), ("gate sign", negate_gate), ("norm w - 1", norm_as_weight)):
                    planted = plant(native, change)
                    report = parity(conversion, planted, f"planted {name}")
                    logits = [r for r in report.rows if "logits" in r["check"] and "bf16" not in r["check"]]
                    if any(r["pass"] for r in logits):
                        failures.append(f"planted {name}: a logits row still passes")
                    shutil.rmtree(planted)
                planted = flip_graph_conv_tap(conversion)  # and in the conversion's graph, genai's rows
                report = check_hf_export.Report("planted graph conv tap")
                genai(planted, check_hf_export.Linearize(BINARY, conversion), report)
                if any(r["pass"] for r in report.rows if "logits" in r["check"]):
                    failures.append("planted conv tap in model.onnx: genai's logits row still passes")
                shutil.rmtree(planted)
            if i == len(cases) - 1:  # the Granite hybrid: a conv tap swapped fails vLLM's and llama.cpp's rows
                planted = plant(native, flip_conv_tap)
                report = parity(conversion, planted, "planted conv tap", ("llama.cpp", "vllm"))
                compared = [r for r in report.rows if ("logits" in r["check"] or "logprobs" in r["check"]) and "bf16" not in r["check"]]
                if len(compared) < 2 or any(r["pass"] for r in compared):
                    failures.append("planted conv tap in granitehybrid: a llama.cpp or vLLM row still passes")
                shutil.rmtree(planted)

        if part != 0:
            return report_failures(failures)
        # Refusals: one line naming the file, the field and the layer; nothing written. What no layout has a slot for
        # (experts, fused projections) is refused with --allow-inexact too (it once failed inside the writer, exit 3).
        refusals = [("qwen3_5", "llama-d64", ["softmax_layers=[1]"], "self_attn.q_norm: layer 1:", []),
                    ("qwen3_5", "tiny-gemma3", [], "pre_feedforward_layernorm:", []),
                    ("qwen3_5", "tiny-olmo2", [], "post_feedforward_layernorm:", []),
                    ("qwen3_5", "tiny-qwen3", ["norm_eps=1e-5"], "linearize.params.norm_eps:", []),
                    ("qwen3_5", "tiny-gpt-oss", [], "num_experts:", ["--allow-inexact"]),
                    ("qwen3_5", "tiny-phi3", [], "self_attn.qkv_proj:", ["--allow-inexact"]),
                    ("granitehybrid", "tiny-llama", [], "head_dim: llama.cpp's granitehybrid needs d_inner = 2 x hidden_size", []),
                    ("granitehybrid", "tiny-qwen2", ["softmax_layers=[1]"], "self_attn.q_proj.bias: layer 1:", []),
                    ("granitehybrid", "tiny-mistral", ["softmax_layers=[0]"], "sliding_window: layer 0:", []),
                    ("granitehybrid", "tiny-smollm3", ["softmax_layers=[1]"], "no_rope_layers: layer 1:", [])]
        recipes = {"qwen3_5": "gated-deltanet", "granitehybrid": "mamba2"}
        for j, (layout, family, params, expected, extra) in enumerate(refusals):
            conversion = convert(source_dir(family, tmp), recipes[layout], os.path.join(tmp, f"r{j}"), params)
            out = os.path.join(tmp, f"rn{j}")
            done = export_native(conversion, out, *extra, layout=layout)
            line = done.stderr.strip()
            print(f"refusal {layout} {family} {params} {extra}: exit {done.returncode}: {line}")
            if done.returncode != 2 or expected not in line or "config.json" not in line or os.path.exists(out):
                failures.append(f"refusal {family} {params} {extra}: expected exit 2 naming {expected!r}, got {done.returncode}: {line}")
        allowed = export_native(os.path.join(tmp, "r0"), os.path.join(tmp, "allowed"), "--allow-inexact")
        text = open(os.path.join(tmp, "allowed", "config.json")).read() if allowed.returncode == 0 else ""
        if allowed.returncode != 0 or "self_attn.q_norm" not in text:
            failures.append(f"--allow-inexact: exit {allowed.returncode}, config.json lists the inexact layer: {'self_attn.q_norm' in text}")
        else:  # its rows report the distance instead of claiming parity
            report = parity(os.path.join(tmp, "r0"), os.path.join(tmp, "allowed"), "inexact", ("transformers",))
            if [r["check"] for r in report.rows if "inexact export" in r["check"]] != [r["check"] for r in report.rows] or \
                    not report.passed or "KL(conversion || export)" not in report.rows[0]["detail"]:
                failures.append(f"--allow-inexact: expected one passing KL row, got {report.rows}")
        wrong = run("export-native", "--model", os.path.join(FIXTURES, "tiny-llama"), "--layout", "qwen3_5", "--out",
                    os.path.join(tmp, "never"))
        if wrong.returncode != 2 or "linearize: not a conversion" not in wrong.stderr:
            failures.append(f"a source checkpoint: expected exit 2 'not a conversion', got {wrong.returncode}: {wrong.stderr}")
    return report_failures(failures)


def report_failures(failures):
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
