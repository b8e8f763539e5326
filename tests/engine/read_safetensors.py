#!/usr/bin/env python3
"""Reads a slim model file with the Python standard library only, as any safetensors reader
would: 8-byte little-endian header size, JSON header, raw little-endian tensor data. Checks the
layout and prints one line per tensor; exits non-zero on any violation."""
import json
import struct
import sys
from array import array

path = sys.argv[1]
with open(path, "rb") as f:
    blob = f.read()
(n,) = struct.unpack("<Q", blob[:8])
header = json.loads(blob[8 : 8 + n])
data = blob[8 + n :]
assert (8 + n) % 8 == 0, "data is not 8-byte aligned"
meta = header.pop("__metadata__")
assert meta["format"] == "slim", meta
sizes = {"F32": 4, "F64": 8, "BF16": 2}
end = 0
for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    begin, stop = t["data_offsets"]
    assert begin == end, f"{name}: gap or overlap at {begin}"
    count = 1
    for d in t["shape"]:
        count *= d
    assert stop - begin == count * sizes[t["dtype"]], f"{name}: size"
    end = stop
    if t["dtype"] == "F32":
        first = array("f", data[begin : begin + 4])[0]
        print(f"{name} {t['dtype']} {t['shape']} first={first!r}")
assert end == len(data), "trailing bytes"
print(f"ok: {len(header)} tensors, d_model={meta['d_model']}")
