"""GGUF files from gguf-py (the `gguf` package on PyPI, llama.cpp's own Python reader and
writer) read through ArrowQuant's table functions in a DataFusion Python session: fresh random
data every run, the values compared bit for bit with `gguf.quants.dequantize`, and the tensor
and metadata listings with `GGUFReader`'s."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from datafusion import SessionContext
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFWriter
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

import arrow_quant_v2 as aq

DECODED = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
# The i-quants, ternary and FP4 types (kernels::iquants).
IQUANTS = [
    T.IQ2_XXS,
    T.IQ2_XS,
    T.IQ2_S,
    T.IQ3_XXS,
    T.IQ3_S,
    T.IQ1_S,
    T.IQ1_M,
    T.TQ1_0,
    T.TQ2_0,
    T.MXFP4,
    T.NVFP4,
]
# gguf-py has no quantizer for these: their blocks are random bytes (any bytes are a block).
RANDOM_BLOCKS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS, *IQUANTS]
# Where the f16 super-scale of a block lies (IQ1_M's is spread over four nibbles; MXFP4 and
# NVFP4 have 8-bit scales, no f16).
F16_SCALE_AT = {
    T.IQ2_XXS: 0,
    T.IQ2_XS: 0,
    T.IQ2_S: 0,
    T.IQ3_XXS: 0,
    T.IQ3_S: 0,
    T.IQ1_S: 0,
    T.TQ1_0: 52,
    T.TQ2_0: 64,
}
# ±65504, ±smallest subnormal, ±0, ±inf, a quiet NaN, a NaN with a payload, a negative one.
F16_EXTREMES = [
    0x7BFF,
    0xFBFF,
    0x0001,
    0x8001,
    0x0000,
    0x8000,
    0x7C00,
    0xFC00,
    0x7E00,
    0x7E55,
    0xFD55,
]


@pytest.fixture
def ctx() -> SessionContext:
    return aq.register(SessionContext())


@pytest.fixture
def random_gguf(tmp_path):
    """A file of every type ArrowQuant decodes, from fresh random data, and the arrays gguf-py
    holds for each tensor (its bytes for block types)."""
    rng = np.random.default_rng()
    path = tmp_path / "random.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_custom_alignment(int(rng.choice([32, 64, 256])))
    w.add_uint32("test.seed_free", int(rng.integers(0, 2**32)))
    w.add_array("test.values", [float(v) for v in rng.standard_normal(5).astype(np.float32)])
    stored = {}
    for kind in DECODED + RANDOM_BLOCKS:
        rows = int(rng.integers(1, 5))
        block, size = GGML_QUANT_SIZES[kind]
        cols = block * int(rng.integers(1, 9 if block == 32 else 3))
        x = (rng.standard_normal((rows, cols)) * rng.choice([1e-3, 1.0, 300.0])).astype(np.float32)
        name = f"blk.{kind.name.lower()}.weight"
        if kind == T.F32:
            data = x
        elif kind == T.F16:
            data = x.astype(np.float16)
        elif kind in RANDOM_BLOCKS:
            data = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
        else:
            data = quantize(x, kind)
        w.add_tensor(name, data, raw_dtype=None if kind in (T.F32, T.F16) else kind)
        stored[name] = (kind, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, stored


def table(ctx: SessionContext, sql: str) -> pa.Table:
    return pa.Table.from_batches(ctx.sql(sql).collect())


# Random blocks have NaN and infinite scales (and MXFP4's may overflow f32), which numpy warns
# about in gguf-py's decoder.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_every_decoded_type_equals_gguf_py_bit_for_bit(ctx, random_gguf):
    path, stored = random_gguf
    got = table(
        ctx, f"SELECT layer, row, weights, data FROM read_gguf('{path}') ORDER BY layer, row"
    )
    by_layer: dict[str, list] = {}
    for layer, weights, data in zip(
        got.column("layer").to_pylist(),
        got.column("weights").to_pylist(),
        got.column("data").to_pylist(),
    ):
        by_layer.setdefault(layer, []).append((weights, data))
    assert sorted(by_layer) == sorted(stored)
    for name, (kind, data) in stored.items():
        rows = by_layer[name]
        want = data.astype(np.float32) if kind in (T.F32, T.F16) else dequantize(data, kind)
        ours = np.array([w for w, _ in rows], dtype=np.float32)
        assert ours.shape == want.shape, name
        # Bit patterns, NaN payloads included (random blocks have NaN and ±inf scales).
        assert np.array_equal(ours.view(np.uint32), want.astype(np.float32).view(np.uint32)), name
        # data holds each row's bytes as gguf-py stored them.
        assert b"".join(d for _, d in rows) == data.tobytes(), name


# inf·0 (a ternary zero under an infinite scale), NaN scales and MXFP4's largest scale times
# its largest levels (beyond f32) are expected.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_i_quants_with_extreme_scales_equal_gguf_py_bit_for_bit(ctx, tmp_path):
    """Every i-quant, ternary and FP4 type through a real session, in a file gguf-py wrote:
    random blocks whose f16 scales are f16's extremes, infinities and NaNs (IQ1_M's assembled
    from its four nibbles), and for MXFP4 and NVFP4 every 8-bit scale, in random order."""
    rng = np.random.default_rng()
    path = tmp_path / "iquants.gguf"
    w = GGUFWriter(str(path), "llama")
    stored = {}
    for kind in IQUANTS:
        size = GGML_QUANT_SIZES[kind][1]
        if kind in (T.MXFP4, T.NVFP4):
            per_block = 1 if kind == T.MXFP4 else 4
            data = rng.integers(0, 256, size=(256 // per_block, size), dtype=np.uint8)
            data[:, :per_block] = rng.permutation(256).reshape(-1, per_block)
        else:
            data = rng.integers(0, 256, size=(len(F16_EXTREMES) + 1, size), dtype=np.uint8)
            for k, bits in enumerate(F16_EXTREMES):
                if kind == T.IQ1_M:
                    for j in range(4):  # nibble j: the top nibble of the u16 at 48 + 2j
                        at = 48 + 2 * j + 1
                        data[k, at] = (data[k, at] & 0x0F) | (((bits >> (4 * j)) & 0x0F) << 4)
                else:
                    at = F16_SCALE_AT[kind]
                    data[k, at : at + 2] = [bits & 0xFF, bits >> 8]
        rows = data.reshape(-1, 2 * size)  # two blocks a row
        name = f"blk.{kind.name.lower()}.weight"
        w.add_tensor(name, rows, raw_dtype=kind)
        stored[name] = (kind, rows)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    for name, (kind, rows) in stored.items():
        sql = f"SELECT weights FROM read_gguf('{path}') WHERE layer = '{name}' ORDER BY row"
        got = table(ctx, sql).column("weights").combine_chunks()
        assert len(got) == rows.shape[0], name
        ours = got.flatten().to_numpy()
        want = dequantize(rows, kind).reshape(-1)
        assert ours.dtype == np.float32 and ours.shape == want.shape, name
        # Bit patterns, NaN payloads and signs included.
        assert np.array_equal(ours.view(np.uint32), want.view(np.uint32)), name
        if kind not in (T.MXFP4, T.NVFP4):
            assert np.isnan(want).any() and np.isinf(want).any(), name


def test_the_tensor_listing_is_gguf_py_s(ctx, random_gguf):
    path, _ = random_gguf
    reader = GGUFReader(str(path))
    info = table(
        ctx, f"SELECT layer, dtype, ggml_type, dims, bytes, file_offset FROM gguf_info('{path}')"
    )
    assert info.column("layer").to_pylist() == [t.name for t in reader.tensors]
    assert info.column("dtype").to_pylist() == [t.tensor_type.name for t in reader.tensors]
    assert info.column("ggml_type").to_pylist() == [int(t.tensor_type) for t in reader.tensors]
    assert info.column("dims").to_pylist() == [[int(d) for d in t.shape] for t in reader.tensors]
    assert info.column("bytes").to_pylist() == [int(t.n_bytes) for t in reader.tensors]
    assert info.column("file_offset").to_pylist() == [int(t.data_offset) for t in reader.tensors]


def test_the_metadata_is_gguf_py_s(ctx, random_gguf):
    path, _ = random_gguf
    reader = GGUFReader(str(path))
    meta = table(ctx, f"SELECT key, value_type, json FROM gguf_metadata('{path}')")
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert meta.column("key").to_pylist() == keys
    for key, value_type, text in zip(
        *(meta.column(c).to_pylist() for c in ("key", "value_type", "json"))
    ):
        field = reader.fields[key]
        want = field.contents()
        if isinstance(want, float) or (
            isinstance(want, list) and want and isinstance(want[0], float)
        ):
            # FLOAT32 values print as their shortest f32 form: equal once read as f32.
            width = np.float32 if "FLOAT32" in value_type else np.float64
            assert np.array_equal(np.asarray(json.loads(text), width), np.asarray(want, width)), key
        else:
            assert json.loads(text) == want, key
        assert value_type.split("[")[0] == field.types[0].name, key


def test_a_corrupt_file_is_refused_by_name(ctx, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    with pytest.raises(Exception, match="bad.gguf: not a GGUF file: the tensor count is"):
        ctx.sql(f"SELECT * FROM gguf_info('{bad}')").collect()
