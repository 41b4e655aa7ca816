"""Our safetensors reader and writer against the reference implementation (Python `safetensors`).

Python writes files in every loadable dtype (special values included) and our reader must see identical
values; our writer writes files that Python must read back with identical values and metadata.
Driven by ctest with SAFETENSORS_PROBE pointing at the C++ probe tool.
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PROBE = os.environ["SAFETENSORS_PROBE"]

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def sample(dtype: torch.dtype, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    n = math.prod(shape)
    if dtype == torch.bool:
        return (torch.rand(n, generator=g) > 0.5).reshape(shape)
    if dtype.is_floating_point:
        t = (torch.randn(n, generator=g, dtype=torch.float64) * 100).to(dtype)
        if n >= 6:  # special values: signed zero, infinities, NaN, the smallest subnormal
            t[:6] = torch.tensor([-0.0, float("inf"), float("-inf"), float("nan"), 0.0, 0.0], dtype=dtype)
            t[4] = torch.finfo(dtype).smallest_normal / 2
            t[5] = torch.finfo(dtype).max
        return t.reshape(shape)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -(2**52)), min(info.max, 2**52)  # doubles carry the probe's values exactly
    t = torch.randint(lo, hi, (n,), generator=g, dtype=torch.int64).to(dtype)
    t[0], t[-1] = lo, hi
    return t.reshape(shape)


def to_json_values(t: torch.Tensor):
    out = []
    for v in t.flatten().to(torch.float64).tolist():
        out.append("nan" if math.isnan(v) else ("inf" if v == math.inf else ("-inf" if v == -math.inf else v)))
    return out


def from_json_values(values):
    return [float(v) if isinstance(v, str) else v for v in values]


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (so -0.0 != 0.0), except that any NaN matches any NaN: the values travel
    through JSON as doubles, which keep every value of these dtypes but not NaN payloads."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    if a.dtype.is_floating_point:
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        if not torch.equal(nan_a, nan_b):
            return False
        a, b = a[~nan_a], b[~nan_b]
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


class Interop(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.dir.cleanup()

    def test_python_written_files_read_identically(self):
        tensors = {f"t.{name}": sample(dtype, (3, 7)) for name, dtype in DTYPES.items()}
        tensors["scalar"] = torch.tensor(2.5, dtype=torch.float32)
        tensors["empty"] = torch.zeros((0, 5), dtype=torch.bfloat16)
        path = os.path.join(self.dir.name, "py.safetensors")
        save_file(tensors, path, metadata={"format": "pt", "note": "written by safetensors"})
        dump = json.loads(subprocess.run([PROBE, "dump", path], check=True, capture_output=True, text=True).stdout)
        self.assertEqual(dump["__metadata__"], {"format": "pt", "note": "written by safetensors"})
        self.assertEqual(sorted(dump["tensors"]), sorted(tensors))
        for name, expected in tensors.items():
            got = dump["tensors"][name]
            self.assertEqual(got["dtype"], next(k for k, v in DTYPES.items() if v == expected.dtype), name)
            self.assertEqual(got["shape"], list(expected.shape), name)
            rebuilt = torch.tensor(from_json_values(got["values"]), dtype=torch.float64).reshape(expected.shape)
            self.assertTrue(same_values(rebuilt.to(expected.dtype), expected), name)

    def test_our_files_read_identically_by_python(self):
        tensors = {f"t.{name}": sample(dtype, (4, 5)) for name, dtype in DTYPES.items()}
        tensors["scalar"] = torch.tensor(-1.25, dtype=torch.float64)
        spec = {"__metadata__": {"format": "pt", "linearize.format_version": "1"},
                "tensors": {n: {"dtype": next(k for k, v in DTYPES.items() if v == t.dtype), "shape": list(t.shape),
                                "values": to_json_values(t)} for n, t in tensors.items()}}
        spec_path = os.path.join(self.dir.name, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        path = os.path.join(self.dir.name, "ours.safetensors")
        subprocess.run([PROBE, "write", path, spec_path], check=True)
        with safe_open(path, framework="pt") as f:
            self.assertEqual(f.metadata(), spec["__metadata__"])
            self.assertEqual(sorted(f.keys()), sorted(tensors))
            for name, expected in tensors.items():
                self.assertTrue(same_values(f.get_tensor(name), expected), name)
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
        self.assertEqual((8 + header_len) % 8, 0, "data must start 8-byte aligned")


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
