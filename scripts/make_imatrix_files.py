"""Writes the llama.cpp importance-matrix files the `read_imatrix` tests read: the same
statistics in both layouts llama-imatrix writes, by the layouts' specification (the GGUF one
with gguf-py's `GGUFWriter`, the legacy one with `struct`), and what they must read as. Run
from the repository root:

    .venv/bin/python scripts/make_imatrix_files.py

Output, under tests/data/imatrix/:
- `tiny.imatrix.gguf`: `general.type` = imatrix, `imatrix.datasets`, `imatrix.chunk_count`,
  `imatrix.chunk_size`, and per weight tensor NAME the F32 tensors `NAME.in_sum2` (ne =
  [channels, matrices]: the sums of squares) and `NAME.counts` (ne = [1, matrices]: rows per
  matrix). A dense tensor's pair is 1-D as llama.cpp writes it (it drops trailing dimensions
  of 1) for `attn_q`, 2-D as gguf-py keeps it for the router; `attn_q` also has the plain sums
  `NAME.in_sum` of the newest llama.cpp. Two merged-expert tensors of 2 experts, each expert
  with its own count.
- `tiny.imatrix.dat`: the legacy layout of the same statistics, as `save_imatrix_legacy`
  stores them: per entry its chunk count ncall (the largest count over its matrices divided by
  the chunk size, rounded up) and (sum / count) x ncall per value, the experts one after the
  other; then the chunk count and the dataset's name.
- `expected.json`: per (tensor, matrix) the channels, the count each layout records (rows in
  GGUF, ncall in legacy) and the importance (mean square per channel). Every value is a small
  multiple of 1/16, so both layouts read to exactly these numbers.
"""

import json
import math
import struct
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, Keys

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "imatrix"

CHUNK_SIZE = 16
CHUNK_COUNT = 4
DATASET = "calibration.txt"

# name, channels, rows seen by each matrix (one matrix: dense; more: experts), how to write the
# GGUF pair of a dense tensor ("1d" as llama.cpp, "2d" as gguf-py).
TENSORS = [
    ("blk.0.attn_q.weight", 8, [64], "1d"),
    ("blk.0.ffn_down_exps.weight", 12, [40, 24], "2d"),
    ("blk.0.ffn_gate_exps.weight", 8, [40, 24], "2d"),
    ("blk.0.ffn_gate_inp.weight", 8, [64], "2d"),
]


def importance(seed: int, channels: int) -> np.ndarray:
    """Mean squares k/16, k in 1..13: exact in float32 after any of the products below."""
    k = (np.arange(channels) * 5 + seed) % 13 + 1
    return (k / 16.0).astype(np.float32)


def statistics():
    """Per tensor: (name, channels, counts, style, importance of shape [matrices, channels])."""
    out = []
    for i, (name, channels, counts, style) in enumerate(TENSORS):
        imp = np.stack([importance(7 * i + m, channels) for m in range(len(counts))])
        out.append((name, channels, counts, style, imp))
    return out


def write_gguf(path: Path, stats) -> None:
    w = GGUFWriter(str(path), "imatrix")
    # llama-imatrix writes no general.architecture; GGUFWriter always adds one.
    w.kv_data[0].pop(Keys.General.ARCHITECTURE)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [DATASET])
    w.add_uint32("imatrix.chunk_count", CHUNK_COUNT)
    w.add_uint32("imatrix.chunk_size", CHUNK_SIZE)
    for name, channels, counts, style, imp in stats:
        n = np.array(counts, dtype=np.float32)
        in_sum2 = imp * n[:, None]
        counts_t = n[:, None]
        if len(counts) == 1 and style == "1d":
            in_sum2, counts_t = in_sum2[0], counts_t[0]
        w.add_tensor(f"{name}.in_sum2", in_sum2.astype(np.float32))
        w.add_tensor(f"{name}.counts", counts_t.astype(np.float32))
        if name.endswith("attn_q.weight"):
            # The newest llama.cpp also stores the plain sums; readers of importance skip them.
            w.add_tensor(f"{name}.in_sum", np.full(in_sum2.shape, -0.5, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def ncall(counts) -> int:
    return math.ceil(max(counts) / CHUNK_SIZE)


def write_legacy(path: Path, stats) -> None:
    out = bytearray(struct.pack("<i", len(stats)))
    for name, channels, counts, _, imp in sorted(stats, key=lambda s: s[0]):
        calls = ncall(counts)
        values = (imp * np.float32(calls)).astype("<f4").reshape(-1)
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw
        out += struct.pack("<ii", calls, values.size) + values.tobytes()
    out += struct.pack("<i", CHUNK_COUNT)
    out += struct.pack("<i", len(DATASET)) + DATASET.encode()
    path.write_bytes(bytes(out))


def write_expected(path: Path, stats) -> None:
    rows = []
    for name, channels, counts, _, imp in stats:
        for m, c in enumerate(counts):
            rows.append(
                {
                    "layer": name,
                    "matrix": m,
                    "channels": channels,
                    "count_gguf": c,
                    "count_legacy": ncall(counts),
                    "importance": [float(v) for v in imp[m]],
                }
            )
    doc = {
        "chunk_count": CHUNK_COUNT,
        "chunk_size": CHUNK_SIZE,
        "datasets": [DATASET],
        "rows": rows,
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    stats = statistics()
    write_gguf(OUT / "tiny.imatrix.gguf", stats)
    write_legacy(OUT / "tiny.imatrix.dat", stats)
    write_expected(OUT / "expected.json", stats)


if __name__ == "__main__":
    main()
