"""L5 and L6 over the registries: every registered recipe converts a fixture family (`--family tiny-llama`); the
export's transformers files pass scripts/check_hf_export.py and its `linearize export-onnx` graph passes
scripts/check_onnx_export.py (onnxruntime), both against `linearize forward` / `generate`; so does a hybrid
(layer 0 kept as softmax attention, a 16-key window), and the source checkpoint's own graph passes L6; where a
recipe's recurrence has ONNX's LinearAttention operator, the graph with it equals the Scan graph. On
tiny-llama a planted change fails each: in the modeling file (L5) and in the graph (L6). Driven by ctest with
LINEARIZE_BINARY and LINEARIZE_FIXTURES set.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import check_hf_export  # noqa: E402
import check_onnx_export  # noqa: E402

BINARY = os.environ["LINEARIZE_BINARY"]
FIXTURES = os.environ["LINEARIZE_FIXTURES"]


def registered_recipes():
    """The recipe registry, as `linearize convert --help` lists it."""
    text = subprocess.run([BINARY, "convert", "--help"], check=True, capture_output=True, text=True).stdout
    return re.search(r"Recipe: ([^\n]+)", text).group(1).replace(" ", "").split(",")


def convert(source, recipe, out, params=()):
    """The export directory (every fixture family takes every recipe: a refusal is a failure here)."""
    args = [BINARY, "--log-level", "warn", "convert", "--model", source, "--recipe", recipe, "--out", out]
    for p in params:
        args += ["--set", p]
    run = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if run.returncode != 0:
        raise RuntimeError(f"convert {recipe} failed ({run.returncode}): {run.stderr}")
    return out


def export_onnx(model_dir, extra=()):
    """The graph's path: --out in `extra`, else MODEL/model.onnx."""
    run = subprocess.run([BINARY, "--log-level", "warn", "export-onnx", "--model", model_dir, *extra],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if run.returncode != 0:
        raise RuntimeError(f"export-onnx {model_dir} failed ({run.returncode}): {run.stderr}")
    extra = list(extra)
    return extra[extra.index("--out") + 1] if "--out" in extra else os.path.join(model_dir, "model.onnx")


def check(model_dir, label, hf=True, onnx_args=()):
    """L5 (when the directory is an export) then L6; True when both pass."""
    linearize = check_hf_export.Linearize(BINARY, model_dir)
    passed = True
    if hf:
        print(f"-- {label}: transformers", flush=True)
        passed &= check_hf_export.check(model_dir, BINARY, check_hf_export.Report(), linearize=linearize).passed
    print(f"-- {label}: onnxruntime", flush=True)
    onnx_path = export_onnx(model_dir, onnx_args)
    report = check_onnx_export.check(model_dir, onnx_path, BINARY, check_hf_export.Report("L6"), linearize=linearize)
    # The same model through ONNX's LinearAttention operator where the recipe's recurrence has one.
    operator_path = export_onnx(model_dir, ["--linear-attention-op", "--out", os.path.join(model_dir, "operator.onnx")])
    if uses_linear_attention(operator_path):
        check_onnx_export.compare_graphs(model_dir, onnx_path, operator_path, report, "LinearAttention graph == Scan graph")
    return passed and report.passed


def uses_linear_attention(path):
    import onnx
    return any(n.op_type == "LinearAttention" for n in onnx.load(path, load_external_data=False).graph.node)


def logits_rows_all_fail(report):
    """A planted change in the gates must fail every logits row but the 1-token prompt's, which no decay has
    acted on yet."""
    rows = [r for r in report.rows if r["check"].startswith("logits") and not r["check"].startswith("logits 1 ")]
    return bool(rows) and not any(r["pass"] for r in rows)


def plant_in_graph(model_dir):
    """A copy of the liger-gla export whose model.onnx has the gate normaliser's constant (16) doubled."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    planted = model_dir + "-planted-onnx"
    shutil.copytree(model_dir, planted)
    path = os.path.join(planted, "model.onnx")
    model = onnx.load(path)
    sixteen = [t for t in model.graph.initializer if t.dims == [] and t.data_type == onnx.TensorProto.FLOAT
               and numpy_helper.to_array(t) == np.float32(16)]
    assert len(sixteen) == 1, "the planted change's anchor (the constant 16) is not in the graph once"
    sixteen[0].CopyFrom(numpy_helper.from_array(np.array(32, dtype=np.float32), sixteen[0].name))
    onnx.save(model, path)
    return planted


def plant(model_dir, old, new):
    """A copy of the export whose modeling file has `old` replaced by `new` (the L0 hash would catch the edit;
    this checks that L5 does too)."""
    planted = model_dir + "-planted"
    shutil.copytree(model_dir, planted)
    path = os.path.join(planted, "modeling_linearize.py")
    with open(path) as f:
        text = f.read()
    assert old in text, f"the planted change's anchor {old!r} is no longer in modeling_linearize.py"
    with open(path, "w") as f:
        f.write(text.replace(old, new))
    return planted


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", required=True, help="fixture directory name, e.g. tiny-llama")
    parser.add_argument("--recipes", help="comma-separated subset of the registry (default: every recipe; empty: none, "
                                          "the hybrid and source rows only)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # ctest runs two tests at once on two cores
    source = os.path.join(FIXTURES, args.family)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        recipes = registered_recipes()
        if args.recipes is not None:
            chosen = [r for r in args.recipes.split(",") if r]
            unknown = set(chosen) - set(recipes)
            if unknown:
                raise SystemExit(f"--recipes: not registered: {', '.join(sorted(unknown))}")
            recipes = chosen
        for recipe in recipes:
            out = convert(source, recipe, os.path.join(tmp, recipe))
            if not check(out, f"{args.family} {recipe}"):
                failed.append(recipe)
        hybrid = convert(source, "lolcats", os.path.join(tmp, "hybrid"), ["softmax_layers=[0]", "window=16"])
        # Its weights in model.onnx.data: onnxruntime reads the external-data layout too.
        if not check(hybrid, f"{args.family} hybrid (layer 0 softmax), external data", onnx_args=["--external-data-above", "0"]):
            failed.append("hybrid")
        if args.family == "tiny-gemma3":
            # An attention scale other than head_dim^-1/2 (Gemma 3 27B's query_pre_attn_scalar): the window
            # branches score with the source's, in the modeling file and the graph alike.
            import json
            scaled = os.path.join(tmp, "source-scaled")
            shutil.copytree(source, scaled)
            with open(os.path.join(scaled, "config.json")) as f:
                config = json.load(f)
            config["query_pre_attn_scalar"] = 8
            with open(os.path.join(scaled, "config.json"), "w") as f:
                json.dump(config, f, indent=2)
            for recipe in ("liger-gla", "lolcats"):
                out = convert(scaled, recipe, os.path.join(tmp, recipe + "-scaled"))
                if not check(out, f"{args.family} query_pre_attn_scalar 8, {recipe}"):
                    failed.append(recipe + " with another attention scale")
        plain = os.path.join(tmp, "source")
        shutil.copytree(source, plain)
        if not check(plain, f"{args.family} source checkpoint", hf=False):
            failed.append("source")
        if args.family == "tiny-llama":
            # Halving the GLA gate's strength (a decay bug) must fail the logits rows, in either export.
            # (liger-gla's only division: the program's log gate / gate_normalizer)
            planted = plant(os.path.join(tmp, "liger-gla"), 'return a / op["divisor"]', 'return a / (2 * op["divisor"])')
            print("-- planted change: the division of the recorded program doubled in modeling_linearize.py", flush=True)
            if not logits_rows_all_fail(check_hf_export.check(planted, BINARY, check_hf_export.Report())):
                failed.append("planted change in the modeling file not caught")
            # --dtype fp16: runs, finite, fixed states; its agreement with fp32 is reported.
            for recipe in ("liger-gla", "gated-deltanet"):
                model_dir = os.path.join(tmp, recipe)
                path = export_onnx(model_dir, ["--dtype", "fp16", "--out", os.path.join(model_dir, "fp16.onnx")])
                print(f"-- {args.family} {recipe}: fp16 graph", flush=True)
                if not check_onnx_export.check(model_dir, path, BINARY, check_hf_export.Report("L6")).passed:
                    failed.append(f"{recipe} fp16 graph")
            planted = plant_in_graph(os.path.join(tmp, "liger-gla"))
            print("-- planted change: liger-gla gate normaliser doubled in model.onnx", flush=True)
            report = check_onnx_export.check(planted, os.path.join(planted, "model.onnx"), BINARY, check_hf_export.Report("L6"))
            if not logits_rows_all_fail(report):
                failed.append("planted change in the graph not caught")
    print("failed: " + ", ".join(failed) if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
