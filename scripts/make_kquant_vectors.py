"""Writes the k-quant and IQ4 reference vectors the Rust decoder tests compare against.

The reference is `gguf.quants.dequantize` from the `gguf` package on PyPI (llama.cpp's own
Python port of its decoders). Run from the repository root:

    .venv/bin/python scripts/make_kquant_vectors.py

Output, under udfs/tests/data/kquants/, for each of q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl and
iq4_xs: `<name>.bin`, whole blocks of seeded random bytes, and `<name>.f32`, their decoded
values as little-endian f32 (one value per weight, in block order).

Any bytes are a valid block, so the sub-scales and codes are left random. The f16 super-scales
(and minima) are written on purpose: the extremes of f16 (±65504, the smallest subnormal, ±0,
the smallest normal), ±inf and NaNs with payloads come first, then a few blocks whose f16 bits
stay random, then realistic scales; the last block is all zero bytes.
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

OUT = Path(__file__).resolve().parent.parent / "udfs" / "tests" / "data" / "kquants"

# name -> (type, blocks to write, byte offsets of the block's f16 fields: scale, then minimum)
FORMATS = {
    "q2_K": (GGMLQuantizationType.Q2_K, 32, (80, 82)),
    "q3_K": (GGMLQuantizationType.Q3_K, 32, (108,)),
    "q4_K": (GGMLQuantizationType.Q4_K, 32, (0, 2)),
    "q5_K": (GGMLQuantizationType.Q5_K, 32, (0, 2)),
    "q6_K": (GGMLQuantizationType.Q6_K, 32, (208,)),
    "iq4_nl": (GGMLQuantizationType.IQ4_NL, 128, (0,)),
    "iq4_xs": (GGMLQuantizationType.IQ4_XS, 32, (0,)),
}

# f16 bit patterns: 65504, -65504, smallest subnormal (6e-8) and its negative, +0, -0,
# smallest normal, +inf, -inf, quiet NaN, NaN with a payload, signalling NaN, negative NaN.
EXTREMES = np.array(
    [
        0x7BFF,
        0xFBFF,
        0x0001,
        0x8001,
        0x0000,
        0x8000,
        0x0400,
        0x7C00,
        0xFC00,
        0x7E00,
        0x7E55,
        0x7C01,
        0xFD55,
    ],
    dtype=np.uint16,
)
RAW = 4  # blocks after the extremes whose f16 fields keep their random bits


def blocks(rng: np.random.Generator, n: int, size: int, offsets: tuple[int, ...]) -> np.ndarray:
    data = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for k in range(n - 1):
        for f, at in enumerate(offsets):
            if k < len(EXTREMES):
                # The minimum takes the extreme two places on: blocks 9 and 10 get two NaNs
                # with different payloads, which tell whose NaN survives `d·q − m`.
                bits = EXTREMES[(k + 2 * f) % len(EXTREMES)]
            elif k < len(EXTREMES) + RAW:
                continue
            else:
                scale = rng.standard_normal() * 10.0 ** rng.uniform(-4, 1)
                bits = np.float16(scale).view(np.uint16)
            data[k, at : at + 2] = np.frombuffer(np.uint16(bits).astype("<u2").tobytes(), np.uint8)
    data[n - 1] = 0
    return data


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261201)
    for name, (qtype, n, offsets) in FORMATS.items():
        values, size = GGML_QUANT_SIZES[qtype]
        data = blocks(rng, n, size, offsets).reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):  # inf·0 and NaN are expected
            decoded = dequantize(data, qtype)
        assert decoded.dtype == np.float32 and decoded.size == n * values
        (OUT / f"{name}.bin").write_bytes(data.tobytes())
        (OUT / f"{name}.f32").write_bytes(decoded.astype("<f4").tobytes())
        nan = int(np.isnan(decoded).sum())
        print(f"{name}: {n} blocks of {size} bytes, {decoded.size} values ({nan} NaN)")


if __name__ == "__main__":
    main()
