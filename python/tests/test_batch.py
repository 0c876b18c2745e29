"""quantize_batch_arrow: the seed's input and output schemas, one call for the whole table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from arrow_quant_v2 import ArrowQuantV2, QuantizationError


def layers(rng: np.random.Generator, sizes=(512, 256, 1024), shape=True) -> pa.Table:
    columns = {
        "layer_name": [f"layer.{i}.weight" for i in range(len(sizes))],
        "weights": pa.array(
            [rng.standard_normal(n).astype(np.float32) for n in sizes], pa.list_(pa.float32())
        ),
    }
    if shape:
        columns["shape"] = pa.array([[n // 16, 16] for n in sizes], pa.list_(pa.int64()))
    return pa.table(columns)


def rebuild(row: dict) -> np.ndarray:
    """value = offset + (code + 2^(bits-1)) * scale, group by group."""
    codes = np.asarray(row["quantized_weights"], dtype=np.float64) + 2 ** (row["bits"] - 1)
    group = row["group_size"]
    out = np.empty_like(codes)
    for g, (scale, offset) in enumerate(zip(row["scales"], row["offsets"], strict=True)):
        out[g * group : (g + 1) * group] = offset + codes[g * group : (g + 1) * group] * scale
    return out


def test_seed_schema_per_layer_scale():
    table = layers(np.random.default_rng(1))
    out = ArrowQuantV2().quantize_batch_arrow(table, bit_width=8, group_size="row")
    seed = [
        ("layer_name", pa.string()),
        ("quantized_weights", pa.list_(pa.int8())),
        ("scale", pa.float32()),
        ("zero_point", pa.int8()),
        ("original_shape", pa.list_(pa.int64())),
        ("compression_ratio", pa.float32()),
        ("cosine_similarity", pa.float32()),
    ]
    for name, dtype in seed:
        assert out.schema.field(name).type == dtype, name
    assert out.column_names[:7] == [n for n, _ in seed]
    rows = out.to_pylist()
    assert [r["layer_name"] for r in rows] == table.column("layer_name").to_pylist()
    for row, weights, shape in zip(
        rows, table.column("weights").to_pylist(), table.column("shape").to_pylist(), strict=True
    ):
        assert row["original_shape"] == shape
        assert len(row["quantized_weights"]) == len(weights)
        assert row["scale"] is not None and row["scale"] == pytest.approx(row["scales"][0])
        # The seed's formula with its one scale and (nearest) zero point.
        approx = (np.asarray(row["quantized_weights"]) - row["zero_point"]) * row["scale"]
        assert np.corrcoef(approx, weights)[0, 1] > 0.999
        exact = rebuild(row)
        cos = exact @ weights / np.linalg.norm(exact) / np.linalg.norm(weights)
        assert row["cosine_similarity"] == pytest.approx(cos, abs=1e-5)
        assert row["cosine_similarity"] > 0.9999
        assert row["compression_ratio"] > 3.5


def test_group_wise_and_gguf_and_streams():
    rng = np.random.default_rng(2)
    table = layers(rng, shape=False)
    out = ArrowQuantV2().quantize_batch_arrow(table.to_reader(), bit_width=4, group_size=64)
    for row, weights in zip(out.to_pylist(), table.column("weights").to_pylist(), strict=True):
        assert row["scale"] is None and row["zero_point"] is None
        assert len(row["scales"]) == len(weights) // 64
        assert row["original_shape"] == [len(weights)]
        exact = rebuild(row)
        assert exact @ weights / np.linalg.norm(exact) / np.linalg.norm(weights) > 0.99
    gguf = ArrowQuantV2().quantize_batch_arrow(table.to_batches()[0], bit_width=4, scheme="q4_0")
    assert gguf.column("quantized_weights").null_count == gguf.num_rows
    assert min(gguf.column("cosine_similarity").to_pylist()) > 0.99
    assert gguf.column("scheme").to_pylist() == ["q4_0"] * 3


def test_k_quants_and_encoders():
    """The k-quant and IQ4 schemes through the batch API, wider formats closer; q4_0's search
    (the default) at least as close as llama.cpp's rule (':reference')."""
    table = layers(np.random.default_rng(5), shape=False)
    cosines = {}
    for scheme, bits in [("q3_K", 3), ("iq4_xs", 4), ("q4_K", 4), ("q6_K", 6)]:
        out = ArrowQuantV2().quantize_batch_arrow(table, bit_width=bits, scheme=scheme)
        assert out.column("scheme").to_pylist() == [scheme] * 3
        assert out.column("group_size").to_pylist() == [256] * 3
        cosines[scheme] = min(out.column("cosine_similarity").to_pylist())
    assert 0.98 < cosines["q3_K"] < cosines["iq4_xs"] < cosines["q4_K"] < cosines["q6_K"]
    ours, llama = (
        ArrowQuantV2()
        .quantize_batch_arrow(table, bit_width=4, scheme=s)
        .column("cosine_similarity")
        .to_pylist()
        for s in ("q4_0", "q4_0:reference")
    )
    assert all(a >= b for a, b in zip(ours, llama, strict=True))
    with pytest.raises(ValueError, match="no 'reference' encoder"):
        ArrowQuantV2().quantize_batch_arrow(table, bit_width=4, scheme="q4_K:reference")


def test_bad_batches():
    quantizer = ArrowQuantV2()
    with pytest.raises(TypeError, match="__arrow_c_stream__"):
        quantizer.quantize_batch_arrow([1, 2, 3])
    with pytest.raises(ValueError, match="no column 'layer_name'"):
        quantizer.quantize_batch_arrow(pa.table({"weights": [[1.0]]}))
    with pytest.raises(ValueError, match="column 'weights' is Utf8"):
        quantizer.quantize_batch_arrow(pa.table({"layer_name": ["a"], "weights": ["x"]}))
    with pytest.raises(ValueError, match="column 'shape'"):
        quantizer.quantize_batch_arrow(
            pa.table({"layer_name": ["a"], "weights": [[1.0]], "shape": ["1"]})
        )
    with pytest.raises(ValueError, match="bit_width"):
        quantizer.quantize_batch_arrow(layers(np.random.default_rng(3)), bit_width=7)
    nan = pa.table(
        {"layer_name": ["a"], "weights": pa.array([[1.0, float("nan")]], pa.list_(pa.float32()))}
    )
    with pytest.raises(QuantizationError, match="non-finite value NaN at index 1"):
        quantizer.quantize_batch_arrow(nan, group_size="row")
    empty = quantizer.quantize_batch_arrow(layers(np.random.default_rng(4)).slice(0, 0))
    assert empty.num_rows == 0 and empty.column_names[0] == "layer_name"
