"""Native layouts (docs/verification.md#native-layouts): `linearize export-native` writes conversions as
architectures serving runtimes implement, and each runtime computes what `linearize` computes on the conversion
(scripts/check_native_export.py). Driven by ctest (label `runtimes`) with LINEARIZE_BINARY and LINEARIZE_FIXTURES.

qwen3_5, through transformers' own Qwen3_5ForCausalLM and through llama.cpp (its own convert_hf_to_gguf.py to an
f32 and a bf16 GGUF, run by llama-cpp-python, which scripts/setup.sh builds): gated-deltanet conversions of every fixture family
Qwen3.5 can hold (pure, and for Qwen3 a hybrid with `softmax_layers: auto:1`), with the recipe tensors moved off
their conversion values first (the identity conv, beta = 1/2 and the zero projections would hide a wrong tap
order, row repeat or projection: a trained model has none of them); a planted change in the written checkpoint
(a conv tap, the gate's sign, a norm stored as w instead of w - 1) fails the logits rows; what Qwen3.5 cannot hold
is refused by name (exit 2, nothing written) and `--allow-inexact` writes it anyway.
"""
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

BINARY = os.environ["LINEARIZE_BINARY"]
FIXTURES = os.environ["LINEARIZE_FIXTURES"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args):
    return subprocess.run([BINARY, "--log-level", "warn", *args], capture_output=True, text=True, env=ENV)


def convert(family, out, params=()):
    sets = [a for p in params for a in ("--set", p)]
    done = run("convert", "--model", os.path.join(FIXTURES, family), "--recipe", "gated-deltanet", "--out", out, *sets)
    if done.returncode != 0:
        raise RuntimeError(f"convert {family} failed ({done.returncode}): {done.stderr}")
    return out


def as_if_trained(conversion, seed):
    """The recipe tensors set to seeded values of a trained layer's scale (every tap, row and head distinct)."""
    path = os.path.join(conversion, "model.safetensors")
    tensors = load_file(path)
    g = torch.Generator().manual_seed(seed)
    scales = {"conv1d.weight": 0.5, "beta_proj.weight": 0.2, "decay_proj.weight": 0.2, "decay_proj.bias": 0.5,
              "A_log": 0.5, "z_proj.weight": 0.2, "norm.weight": 0.2}
    for name in sorted(tensors):
        part = name.split("self_attn.")[-1]
        if part in scales:
            t = tensors[name]
            tensors[name] = (t.float() + scales[part] * torch.randn(t.shape, generator=g)).to(t.dtype)
    save_file(tensors, path, metadata={"format": "pt"})


def export_native(conversion, out, *extra):
    return run("export-native", "--model", conversion, "--layout", "qwen3_5", "--out", out, *extra)


def parity(conversion, native, label):
    """transformers' and llama.cpp's rows (scripts/check_native_export.py)."""
    report = check_hf_export.Report(f"{label:<18}")
    linearize = check_hf_export.Linearize(BINARY, conversion)
    for runtime in check_native_export.RUNTIMES.values():
        runtime(conversion, native, linearize, report)
    return report


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
    name = next(n for n in sorted(t) if n.endswith("linear_attn.conv1d.weight"))
    t[name] = t[name].clone()
    t[name][:, 0, [0, -1]] = t[name][:, 0, [-1, 0]]  # the oldest and the newest tap swapped


def negate_gate(t):
    name = next(n for n in sorted(t) if n.endswith("linear_attn.in_proj_z.weight"))
    t[name] = -t[name]


def norm_as_weight(t):
    t["model.norm.weight"] = t["model.norm.weight"] + 1  # w stored where Qwen3.5 expects w - 1


def main():
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(family, []) for family in ("tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "deep-llama")]
        cases.append(("tiny-qwen3", ["softmax_layers=auto:1"]))
        for i, (family, params) in enumerate(cases):
            label = family + (" hybrid" if params else "")
            conversion = convert(family, os.path.join(tmp, f"c{i}"), params)
            as_if_trained(conversion, seed=i)
            native = os.path.join(tmp, f"n{i}")
            done = export_native(conversion, native)
            if done.returncode != 0:
                failures.append(f"{label}: export-native exit {done.returncode}: {done.stderr.strip()}")
                continue
            if not parity(conversion, native, label).passed:
                failures.append(f"{label}: a parity row failed")
            if i == 5:  # the hybrid: each planted change fails its logits rows
                for name, change in (("conv tap", flip_conv_tap), ("gate sign", negate_gate), ("norm w - 1", norm_as_weight)):
                    planted = plant(native, change)
                    report = parity(conversion, planted, f"planted {name}")
                    logits = [r for r in report.rows if "logits" in r["check"] and "bf16" not in r["check"]]
                    if any(r["pass"] for r in logits):
                        failures.append(f"planted {name}: a logits row still passes")
                    shutil.rmtree(planted)

        # Refusals: one line naming the file, the field and the layer; nothing written.
        refusals = [("tiny-llama", ["softmax_layers=[1]"], "self_attn.q_norm: layer 1:"),
                    ("tiny-gemma3", [], "pre_feedforward_layernorm:"),
                    ("tiny-qwen3", ["norm_eps=1e-5"], "linearize.params.norm_eps:")]
        for j, (family, params, expected) in enumerate(refusals):
            conversion = convert(family, os.path.join(tmp, f"r{j}"), params)
            out = os.path.join(tmp, f"rn{j}")
            done = export_native(conversion, out)
            line = done.stderr.strip()
            print(f"refusal {family} {params}: exit {done.returncode}: {line}")
            if done.returncode != 2 or expected not in line or "config.json" not in line or os.path.exists(out):
                failures.append(f"refusal {family} {params}: expected exit 2 naming {expected!r}, got {done.returncode}: {line}")
        allowed = export_native(os.path.join(tmp, "r0"), os.path.join(tmp, "allowed"), "--allow-inexact")
        text = open(os.path.join(tmp, "allowed", "config.json")).read() if allowed.returncode == 0 else ""
        if allowed.returncode != 0 or "self_attn.q_norm" not in text:
            failures.append(f"--allow-inexact: exit {allowed.returncode}, config.json lists the inexact layer: {'self_attn.q_norm' in text}")
        wrong = run("export-native", "--model", os.path.join(FIXTURES, "tiny-llama"), "--layout", "qwen3_5", "--out",
                    os.path.join(tmp, "never"))
        if wrong.returncode != 2 or "linearize: not a conversion" not in wrong.stderr:
            failures.append(f"a source checkpoint: expected exit 2 'not a conversion', got {wrong.returncode}: {wrong.stderr}")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
