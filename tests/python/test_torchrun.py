"""`torchrun --nproc-per-node 2 --no-python linearize distill ...`: the launch the README shows. torchrun's
agent serves the store itself (TORCHELASTIC_USE_AGENT_STORE), so both ranks must join it as clients; the job
trains both stages on two Gloo ranks, rank 1 works in <out>/rank1, rank 0 exports an export that verifies,
and its adapter equals the one of a single-process run of the same file (fp32 all-reduce rounding: 1e-4 of
each factor's largest value, as tests/distill DistillDistributed.TwoRanksTrainWhatOneProcessTrains argues).
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

BINARY = os.environ["LINEARIZE_BINARY"]
FIXTURES = Path(os.environ["LINEARIZE_FIXTURES"])
TORCHRUN = Path(sys.executable).parent / "torchrun"

RUN = """model: {fixtures}/tiny-llama
out: {out}
recipe: {{name: lolcats, params: {{window: 16}}}}
data: {{files: [{fixtures}/corpus/corpus.txt], seq_len: 64, batch_size: 4, validation_fraction: 0}}
stage1: {{lr: 0.01, schedule: constant, grad_accum: 2, steps: 3, mode: layerwise}}
stage2: {{steps: 4, lr: 0.003, schedule: constant, grad_accum: 2, loss: ce+kl, lora: {{r: 4, alpha: 8, dropout: 0}}}}
log_every: 1
device: {{timeout_s: 60}}
"""


def run(cmd, env):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def main():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("one", "two"):
            (tmp / f"{name}.yaml").write_text(RUN.format(fixtures=FIXTURES, out=tmp / name))
        run([BINARY, "distill", "--config", str(tmp / "one.yaml")], env)
        port = 29500 + os.getpid() % 1000
        out = run([str(TORCHRUN), "--nproc-per-node", "2", "--master-port", str(port), "--no-python", BINARY, "distill",
                   "--config", str(tmp / "two.yaml")], env)
        assert "verify: PASS" in out, out[-3000:]
        assert (tmp / "two" / "rank1" / "metrics.jsonl").exists(), "rank 1 did not work in <out>/rank1"
        a = load_file(tmp / "one" / "model" / "adapter" / "adapter_model.safetensors")
        b = load_file(tmp / "two" / "model" / "adapter" / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            worst = (a[name] - b[name]).abs().max().item()
            scale = a[name].abs().max().item()
            assert worst <= 1e-4 * scale, f"{name}: {worst} > 1e-4 x {scale}"
        print(f"PASS: torchrun 2 ranks == 1 process ({len(a)} adapter tensors)")


if __name__ == "__main__":
    main()
