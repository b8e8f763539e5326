#!/usr/bin/env python3
"""Compares two training runs with the Python standard library only.

  compare_runs.py models A.safetensors B.safetensors TOL
      the same tensor names, shapes and dtypes; prints the largest norm-wise relative
      difference over the F32/F64 tensors, max|a - b| / max|b| (docs/engine.md), and fails if
      it is above TOL
  compare_runs.py losses A.events B.events TOL
      the `progress` events (JSON lines, docs/worker-protocol.md) report the same steps; prints
      the largest relative difference of their losses and fails if it is above TOL

Exit status: 0 within tolerance, 1 otherwise (with the reason on stderr)."""
import json
import struct
import sys
from array import array


def read_tensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    data = blob[8 + n :]
    codes = {"F32": "f", "F64": "d"}
    out = {}
    for name, t in header.items():
        begin, end = t["data_offsets"]
        values = array(codes[t["dtype"]], data[begin:end]) if t["dtype"] in codes else data[begin:end]
        out[name] = (t["dtype"], tuple(t["shape"]), values)
    return out


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def compare_models(a_path, b_path, tol):
    a, b = read_tensors(a_path), read_tensors(b_path)
    if sorted(a) != sorted(b):
        fail(f"tensor names differ: {sorted(set(a) ^ set(b))}")
    worst, worst_name = 0.0, ""
    for name in sorted(a):
        (da, sa, va), (db, sb, vb) = a[name], b[name]
        if (da, sa) != (db, sb):
            fail(f"{name}: {da}{list(sa)} vs {db}{list(sb)}")
        if not isinstance(va, array):
            continue
        scale = max((abs(x) for x in vb), default=0.0)
        diff = max((abs(x - y) for x, y in zip(va, vb)), default=0.0)
        rel = diff / scale if scale > 0 else diff
        if rel > worst:
            worst, worst_name = rel, name
    print(f"weights: max relative difference {worst:.3g} ({worst_name or 'all equal'})")
    if not worst <= tol:
        fail(f"weights differ by {worst:.3g} > {tol:g} in {worst_name}")


def progress_losses(path):
    losses = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            e = json.loads(line)
            if e.get("event") == "progress":
                losses[e["step"]] = e["loss"]
    return losses


def compare_losses(a_path, b_path, tol):
    a, b = progress_losses(a_path), progress_losses(b_path)
    if not a or sorted(a) != sorted(b):
        fail(f"progress steps differ: {len(a)} vs {len(b)} events")
    worst, worst_step = 0.0, 0
    for step in sorted(a):
        rel = abs(a[step] - b[step]) / max(abs(b[step]), 1e-30)
        if rel > worst:
            worst, worst_step = rel, step
    print(f"losses: {len(a)} steps, max relative difference {worst:.3g} (step {worst_step})")
    if not worst <= tol:
        fail(f"losses differ by {worst:.3g} > {tol:g} at step {worst_step}")


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ("models", "losses"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    what, a_path, b_path, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    (compare_models if what == "models" else compare_losses)(a_path, b_path, tol)
