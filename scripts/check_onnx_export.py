#!/usr/bin/env python3
"""L6 of the verification contract (DESIGN section 6): an export's model.onnx (from `linearize export-onnx`)
run by onnxruntime computes what `linearize` computes.

    .venv/bin/python scripts/check_onnx_export.py --model DST [--onnx DST/model.onnx] [--linearize build/cli/linearize] [--json out.json]

onnxruntime is the oracle here: the project has no onnxruntime C/C++ headers (the wheel ships libonnxruntime.so
without them), and `verify`'s own L6 rows (checker, shape inference, weights byte-identical to
model.safetensors) run in C++. On prompts cut from real text, from empty states:
  logits        one call (the chunked prefill) vs `linearize forward` for 1, 63, 64, 65, window-1, window+1 and
                600 tokens;
  decode        a prefill of 137 tokens, then 64 decode steps fed with the returned states and the tokens
                `linearize generate` picked: each step's logits vs `linearize forward` of the whole sequence at
                that position, and onnxruntime's greedy token == linearize's at every step;
  state size    every present.* of the converted layers has the same shape after the 64 steps.
Tolerance: logits within 1e-4 x max|logit| (the issue's and L5's bound: both sides fp32 on one CPU, only the
order of sums differs, ~1e-6 relative measured; a wrong gate, window or normaliser moves logits by 1e-2 to 1).
Prints one row per check; exit 0 if every check passes, 1 if one fails, 2 on bad input.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_hf_export import TOLERANCE, Linearize, Report, text_tokens  # noqa: E402

DECODE_PROMPT, DECODE_STEPS = 137, 64


class OnnxModel:
    """model.onnx in onnxruntime (CPU), its states carried between calls as numpy arrays."""

    def __init__(self, path):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0"))  # 0: onnxruntime's default
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.state_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past")]

    def empty_states(self, batch=1):
        """Zero recurrent states and empty caches: named dims are the batch or a cache length (0)."""
        states = {}
        for i in self.state_inputs:
            shape = [batch if d == "batch" else (0 if isinstance(d, str) else d) for d in i.shape]
            states[i.name] = np.zeros(shape, dtype=np.float32)
        return states

    def run(self, ids, states, past=0):
        """Logits [S, vocab] of ids (one row) at positions past.., and the states after them."""
        n = len(ids)
        feed = dict(states)
        feed["input_ids"] = np.array([ids], dtype=np.int64)
        feed["attention_mask"] = np.ones((1, past + n), dtype=np.int64)
        feed["position_ids"] = np.arange(past, past + n, dtype=np.int64)[None]
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, feed)))
        next_states = {past_name(k): v for k, v in outputs.items() if k.startswith("present.")}
        return outputs["logits"][0], next_states


def past_name(present):
    """present.{i}.key -> past_key_values.{i}.key (onnxruntime-genai's cache names); present.{i}.<state> -> past.{i}.<state>."""
    rest = present[len("present."):]
    return ("past_key_values." if rest.endswith((".key", ".value")) else "past.") + rest


def relative_error(ours, reference):
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - reference).max() / np.abs(reference).max())


def check(model_dir, onnx_path, binary, report, linearize=None):
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    window = (config.get("linearize") or {}).get("params", {}).get("window")
    linearize = linearize or Linearize(binary, model_dir)
    model = OnnxModel(onnx_path)
    tokens = text_tokens(model_dir, 600 + 3 * 64)
    lengths = sorted({1, 63, 64, 65, 600} | ({window - 1, window + 1} if window else set()))
    for n in lengths:
        ids = tokens[n % 64: n % 64 + n]
        ours, _ = model.run(ids, model.empty_states())
        err = relative_error(ours, linearize.logits(ids).numpy())
        report.add(f"logits {n} tokens vs linearize forward", err, TOLERANCE, err <= TOLERANCE)

    prompt = tokens[:DECODE_PROMPT]
    generated, _ = linearize.generate(prompt, DECODE_STEPS)
    reference = linearize.logits(prompt + generated[:-1]).numpy()  # positions P-1 .. P+62 predict the 64 tokens
    logits, states = model.run(prompt, model.empty_states())
    first_shapes = {k: v.shape for k, v in states.items() if not k.startswith("past_key_values.")}
    rows, picked = [logits[-1]], [int(logits[-1].argmax())]
    for t in range(DECODE_STEPS - 1):
        logits, states = model.run([generated[t]], states, past=DECODE_PROMPT + t)
        rows.append(logits[-1])
        picked.append(int(logits[-1].argmax()))
    err = relative_error(np.stack(rows), reference[DECODE_PROMPT - 1:])
    report.add(f"prefill {DECODE_PROMPT} + {DECODE_STEPS} decode steps vs linearize", err, TOLERANCE, err <= TOLERANCE)
    same = next((i for i, (a, b) in enumerate(zip(picked, generated)) if a != b), len(picked))
    report.add(f"greedy {DECODE_STEPS} tokens == linearize generate", DECODE_STEPS - same, 0, same == len(picked),
               "identical" if same == len(picked) else f"first difference at step {same}: {picked[same]} vs {generated[same]}")
    grown = [k for k, shape in first_shapes.items() if states[k].shape != shape]
    report.add(f"recurrent states: shapes changed in {DECODE_STEPS} steps", len(grown), 0, not grown,
               ", ".join(grown) or f"{len(first_shapes)} states")
    return report


def compare_graphs(model_dir, first, second, report, label):
    """Two graphs of one model (the Scan form and the LinearAttention operator) give the same logits over a
    600-token prefill and 16 decode steps from their own states."""
    tokens = text_tokens(model_dir, 600 + 16)
    outputs = []
    for path in (first, second):
        model = OnnxModel(path)
        logits, states = model.run(tokens[:600], model.empty_states())
        rows = [logits]
        for t in range(600, 616):
            step, states = model.run([tokens[t]], states, past=t)
            rows.append(step)
        outputs.append(np.concatenate(rows))
    err = relative_error(outputs[1], outputs[0])
    report.add(label, err, TOLERANCE, err <= TOLERANCE)
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--onnx", help="the graph (default: MODEL/model.onnx)")
    parser.add_argument("--linearize", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "cli", "linearize"))
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--compare", metavar="OTHER_ONNX", help="also: this graph's logits == OTHER_ONNX's (prefill + decode)")
    args = parser.parse_args()
    onnx_path = args.onnx or os.path.join(args.model, "model.onnx")
    if not os.path.isfile(onnx_path):
        print(f"error: {onnx_path}: missing (run linearize export-onnx first)", file=sys.stderr)
        return 2
    report = check(args.model, onnx_path, args.linearize, Report("L6"))
    if args.compare:
        compare_graphs(args.model, onnx_path, args.compare, report, f"{os.path.basename(args.compare)} == {os.path.basename(onnx_path)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.rows, f, indent=1)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
