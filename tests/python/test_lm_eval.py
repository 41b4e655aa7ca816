"""lm-evaluation-harness runs on an export through its transformers files:

    lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True --tasks linearize_corpus

with a local rolling-loglikelihood task over paragraphs of the bundled corpus. The oracle is the source model:
a lolcats export whose window (256 keys) covers every document computes exactly the source attention (L3), so
its perplexities must equal the source checkpoint's, evaluated by the same harness through transformers' own
LlamaForCausalLM. Exit 77 (skipped) where lm_eval is not installed. Driven by ctest with LINEARIZE_BINARY and
LINEARIZE_FIXTURES set.
"""
import glob
import json
import math
import os
import subprocess
import sys
import tempfile

try:
    import lm_eval  # noqa: F401
except ImportError:
    print("lm_eval is not installed: skipped")
    sys.exit(77)

BINARY = os.environ["LINEARIZE_BINARY"]
FIXTURES = os.environ["LINEARIZE_FIXTURES"]
SOURCE = os.path.join(FIXTURES, "tiny-llama")
DOCUMENTS = 12

TASK = """task: linearize_corpus
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def evaluate(model_args, tasks_dir, out_dir):
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args, "--tasks", "linearize_corpus",
                    "--include_path", tasks_dir, "--device", "cpu", "--batch_size", "1", "--output_path", out_dir],
                   check=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    (path,) = glob.glob(os.path.join(out_dir, "**", "results_*.json"), recursive=True)
    with open(path) as f:
        return json.load(f)["results"]["linearize_corpus"]


def main():
    with open(os.path.join(FIXTURES, "corpus", "corpus.txt"), encoding="utf-8") as f:
        paragraphs = [line.strip() for line in f if 80 < len(line.strip()) < 300][:DOCUMENTS]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "corpus.jsonl")
        with open(data, "w") as f:
            for p in paragraphs:
                f.write(json.dumps({"text": p}) + "\n")
        tasks = os.path.join(tmp, "tasks")
        os.makedirs(tasks)
        with open(os.path.join(tasks, "linearize_corpus.yaml"), "w") as f:
            f.write(TASK.format(data=data))
        export = os.path.join(tmp, "export")
        subprocess.run([BINARY, "--log-level", "warn", "convert", "--model", SOURCE, "--recipe", "lolcats", "--out", export,
                        "--set", "window=256"], check=True)
        ours = evaluate(f"pretrained={export},trust_remote_code=True,dtype=float32", tasks, os.path.join(tmp, "ours"))
        source = evaluate(f"pretrained={SOURCE},dtype=float32", tasks, os.path.join(tmp, "source"))
    failed = []
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        a, b = ours[metric], source[metric]
        # Both fp32 on one CPU: the window branch sums the same exp(s - c) v as softmax attention in another order
        # (~1e-6 relative per logit); the sums of a dozen documents' log-likelihoods keep that scale. 1e-4 is far
        # below what a wrong mask or a missing document would change (percent level).
        ok = math.isfinite(a) and abs(a - b) <= 1e-4 * abs(b)
        print(f"{metric:<22} export {a:.6f} source {b:.6f} {'PASS' if ok else 'FAIL'}")
        if not ok:
            failed.append(metric)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
