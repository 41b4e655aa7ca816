#!/usr/bin/env python3
"""An export's ONNX graph in onnxruntime vs `linearize generate` (scripts/bench.sh section `onnx_export`), fp32 CPU:

  export   `linearize export-onnx` wall time, graph bytes, and the external-data layout (weights inline, and the
           same graph with every weight in model.onnx.data);
  decode   tokens/s of greedy decode with the graph (prefill, then one session.run per token feeding the
           returned states) and of `linearize generate`, same prompt, same threads, each in a fresh process,
           with peak RSS; with --linear-attention-op too where the recipe's recurrence has the operator.

    onnx_export_bench.py --linearize BIN --source DIR --recipes lolcats,gated-deltanet --work DIR [--tokens 256] --out F.json
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from hf_export_bench import PROMPT_TOKENS, convert, decode_in_linearize, prompt_ids  # noqa: E402


def export(binary, model_dir, out, extra=()):
    start = time.perf_counter()
    subprocess.run([binary, "--log-level", "warn", "export-onnx", "--model", model_dir, "--out", out, *extra], check=True)
    seconds = time.perf_counter() - start
    data = out + ".data"
    import onnx
    graph = onnx.load(out, load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in external]
    return {"seconds": seconds, "graph_bytes": os.path.getsize(out), "data_bytes": os.path.getsize(data) if os.path.exists(data) else 0,
            "initializers": len(graph.graph.initializer), "external_initializers": len(external),
            "offsets_page_aligned": all(o % 4096 == 0 for o in offsets),
            "linear_attention_nodes": sum(n.op_type == "LinearAttention" for n in graph.graph.node),
            "scan_nodes": sum(n.op_type == "Scan" for n in graph.graph.node)}


def decode_in_onnxruntime(path, tokens, prompt):
    """Runs in a fresh process (`--child`): greedy decode tokens/s of the graph and the process's peak RSS."""
    import numpy as np
    from check_onnx_export import OnnxModel
    model = OnnxModel(path)
    start = time.perf_counter()
    logits, states = model.run(prompt, model.empty_states())
    prefill = time.perf_counter() - start
    token, position = int(logits[-1].argmax()), len(prompt)
    start = time.perf_counter()
    for _ in range(tokens - 1):
        logits, states = model.run([token], states, past=position)
        token, position = int(np.argmax(logits[-1])), position + 1
    decode = time.perf_counter() - start
    return {"tokens": tokens, "prefill_s": prefill, "decode_tokens_per_s": (tokens - 1) / decode,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child(path, tokens, prompt):
    print(json.dumps(decode_in_onnxruntime(path, tokens, [int(t) for t in prompt.split(",")])))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--linearize", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--recipes", default="lolcats,gated-deltanet")
    parser.add_argument("--work", required=True)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    prompt = prompt_ids(args.source, PROMPT_TOKENS)
    result = {"source": args.source, "threads": os.environ.get("OMP_NUM_THREADS"), "recipes": []}
    for recipe in args.recipes.split(","):
        model_dir = convert(args.linearize, args.source, recipe, os.path.join(args.work, f"{os.path.basename(args.source)}-{recipe}"))
        graphs = {"scan": export(args.linearize, model_dir, os.path.join(model_dir, "model.onnx")),
                  "external": export(args.linearize, model_dir, os.path.join(model_dir, "external.onnx"), ["--external-data-above", "0"]),
                  "operator": export(args.linearize, model_dir, os.path.join(model_dir, "operator.onnx"), ["--linear-attention-op"])}
        row = {"recipe": recipe, "graphs": graphs, "decode": {}}
        row["decode"]["linearize"] = decode_in_linearize(args.linearize, model_dir, args.tokens, prompt)
        kinds = ["scan"] + (["operator"] if graphs["operator"]["linear_attention_nodes"] else [])
        for kind in kinds:
            out = subprocess.run([sys.executable, __file__, "--child", os.path.join(model_dir, "model.onnx" if kind == "scan" else "operator.onnx"),
                                  str(args.tokens), ",".join(map(str, prompt))], capture_output=True, text=True, check=True)
            row["decode"][kind] = json.loads(out.stdout.strip().splitlines()[-1])
        result["recipes"].append(row)
        g, e, d = graphs["scan"], graphs["external"], row["decode"]
        ours = d["linearize"]["decode_tokens_per_s"]
        print(f"{recipe}: export-onnx {g['seconds']:.1f} s; model.onnx {g['graph_bytes'] / 2**20:.1f} MiB inline "
              f"({g['initializers']} initializers); external layout: model.onnx {e['graph_bytes'] / 2**10:.0f} KiB + model.onnx.data "
              f"{e['data_bytes'] / 2**20:.1f} MiB ({e['external_initializers']} weights, page-aligned: {e['offsets_page_aligned']})", flush=True)
        for kind in kinds:
            r = d[kind]
            print(f"  decode {args.tokens} tokens: onnxruntime ({kind}) {r['decode_tokens_per_s']:.1f} tokens/s (peak RSS "
                  f"{r['peak_rss'] / 2**20:.0f} MiB) vs linearize generate {ours:.1f} tokens/s (peak RSS "
                  f"{d['linearize']['peak_rss'] / 2**20:.0f} MiB): ratio {r['decode_tokens_per_s'] / ours:.2f}", flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:  # one onnxruntime decode in a fresh process: --child GRAPH TOKENS IDS
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
