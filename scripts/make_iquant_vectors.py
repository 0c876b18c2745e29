"""Writes the i-quant, ternary and FP4 reference vectors the Rust decoder tests compare against.

The reference is `gguf.quants.dequantize` from the `gguf` package on PyPI (llama.cpp's own
Python port of its decoders). Run from the repository root:

    .venv/bin/python scripts/make_iquant_vectors.py

Output, under udfs/tests/data/iquants/, for each of iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s,
iq1_s, iq1_m, tq1_0, tq2_0, mxfp4 and nvfp4: `<name>.bin`, whole blocks of seeded random bytes,
and `<name>.f32`, their decoded values as little-endian f32 (one value per weight, in block
order).

Any bytes are a valid block, so grid indices, signs, sub-block scales and codes are left random.
The formats with an f16 scale get it written on purpose (as scripts/make_kquant_vectors.py does
for the k-quants): the extremes of f16 (±65504, the smallest subnormal, ±0, the smallest
normal), ±inf and NaNs with payloads first, then a few blocks whose f16 bits stay random, then
realistic scales; IQ1_M's scale is spread over the top nibbles of its four scale words, which
get the same values. The 8-bit scales of MXFP4 (one a block) and NVFP4 (four a block) run
through all 256 values. The last block is all zero bytes.
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

OUT = Path(__file__).resolve().parent.parent / "udfs" / "tests" / "data" / "iquants"

# name -> (type, blocks to write, where the scale lives: the byte offset of an f16, "iq1_m"
# for IQ1_M's split f16, or "e8" for 8-bit scales at the block's start, this many a block)
FORMATS = {
    "iq2_xxs": (T.IQ2_XXS, 20, 0),
    "iq2_xs": (T.IQ2_XS, 20, 0),
    "iq2_s": (T.IQ2_S, 20, 0),
    "iq3_xxs": (T.IQ3_XXS, 20, 0),
    "iq3_s": (T.IQ3_S, 20, 0),
    "iq1_s": (T.IQ1_S, 20, 0),
    "iq1_m": (T.IQ1_M, 20, "iq1_m"),
    "tq1_0": (T.TQ1_0, 20, 52),
    "tq2_0": (T.TQ2_0, 20, 64),
    "mxfp4": (T.MXFP4, 257, ("e8", 1)),
    "nvfp4": (T.NVFP4, 65, ("e8", 4)),
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
RAW = 2  # blocks after the extremes whose f16 scale keeps its random bits


def set_f16(block: np.ndarray, scale, bits: int) -> None:
    if scale == "iq1_m":
        # Nibble j of the f16 is the top nibble of the scale word at bytes 48 + 2j.
        for j in range(4):
            at = 48 + 2 * j + 1
            block[at] = (block[at] & 0x0F) | (((bits >> (4 * j)) & 0x0F) << 4)
    else:
        block[scale : scale + 2] = np.frombuffer(np.uint16(bits).astype("<u2").tobytes(), np.uint8)


def blocks(rng: np.random.Generator, n: int, size: int, scale) -> np.ndarray:
    data = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    if isinstance(scale, tuple):
        _, per_block = scale
        # Scale bytes 0, 1, …, 255 in order, over the first 256 / per_block blocks.
        data[: 256 // per_block, :per_block] = np.arange(256, dtype=np.uint8).reshape(-1, per_block)
    else:
        for k in range(n - 1):
            if k < len(EXTREMES):
                bits = int(EXTREMES[k])
            elif k < len(EXTREMES) + RAW:
                continue
            else:
                value = rng.standard_normal() * 10.0 ** rng.uniform(-4, 1)
                bits = int(np.float16(value).view(np.uint16))
            set_f16(data[k], scale, bits)
    data[n - 1] = 0
    return data


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261202)
    total = 0
    for name, (qtype, n, scale) in FORMATS.items():
        values, size = GGML_QUANT_SIZES[qtype]
        data = blocks(rng, n, size, scale).reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):  # inf·0 and NaN are expected
            decoded = dequantize(data, qtype)
        assert decoded.dtype == np.float32 and decoded.size == n * values
        (OUT / f"{name}.bin").write_bytes(data.tobytes())
        (OUT / f"{name}.f32").write_bytes(decoded.astype("<f4").tobytes())
        total += data.size + 4 * decoded.size
        nan = int(np.isnan(decoded).sum())
        inf = int(np.isinf(decoded).sum())
        print(f"{name}: {n} blocks of {size} bytes, {decoded.size} values ({nan} NaN, {inf} inf)")
    print(f"{total} bytes in {OUT}")


if __name__ == "__main__":
    main()
