"""Writes the GGUF reference vectors the Rust tests compare against, bit for bit.

The reference is `gguf.quants.quantize` from the `gguf` package on PyPI (llama.cpp's own
Python port of its reference quantizers). Run from the repository root:

    .venv/bin/python scripts/make_gguf_vectors.py

Output, under udfs/tests/data/gguf/: `input.f32` (rows of 256 little-endian f32 values) and one
`<scheme>.bin` per format with the quantized bytes of every row, concatenated.
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize

ROW = 256
OUT = Path(__file__).resolve().parent.parent / "udfs" / "tests" / "data" / "gguf"
SCHEMES = {
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
    "q5_0": GGMLQuantizationType.Q5_0,
    "q5_1": GGMLQuantizationType.Q5_1,
    "q8_0": GGMLQuantizationType.Q8_0,
}


def rows() -> np.ndarray:
    rng = np.random.default_rng(20261126)
    out = [
        rng.standard_normal(ROW),  # typical weights
        rng.standard_normal(ROW) * 1e-3,  # small weights (f16 subnormal scales nearby)
        rng.standard_normal(ROW) * 300.0,  # large weights
        rng.standard_t(df=3, size=ROW),  # heavy tails
        rng.uniform(-1.0, 1.0, ROW),
        rng.uniform(0.5, 2.0, ROW),  # all positive: min is not near zero
        -rng.uniform(0.5, 2.0, ROW),  # all negative
        np.zeros(ROW),  # zero blocks: scale 0
        np.full(ROW, 0.375),  # constant blocks
        np.round(rng.standard_normal(ROW) * 8) / 8,  # values on a grid: rounding ties
        np.tile(np.linspace(-1, 1, 32), ROW // 32),  # exact extremes in every block
    ]
    spikes = rng.standard_normal(ROW) * 0.02
    spikes[::37] = 5.0  # one outlier per block or so
    out.append(spikes)
    return np.stack(out).astype(np.float32)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data = rows()
    (OUT / "input.f32").write_bytes(data.astype("<f4").tobytes())
    for name, qtype in SCHEMES.items():
        q = quantize(data, qtype)
        (OUT / f"{name}.bin").write_bytes(np.ascontiguousarray(q).tobytes())
        print(f"{name}: {data.shape[0]} rows, {q.shape[1]} bytes a row")


if __name__ == "__main__":
    main()
