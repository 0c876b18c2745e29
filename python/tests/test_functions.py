"""Every ArrowQuant function from an ordinary DataFusion Python session (PyPI datafusion 55),
registered through datafusion-ffi capsules."""

from __future__ import annotations

import math
from pathlib import Path

import datafusion
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import SessionContext, col, lit

import arrow_quant_v2 as aq

# The importance matrix scripts/make_imatrix_files.py writes in llama.cpp's GGUF layout.
IMATRIX = Path(__file__).resolve().parents[2] / "tests" / "data" / "imatrix" / "tiny.imatrix.gguf"


@pytest.fixture
def ctx() -> SessionContext:
    return aq.register(SessionContext())


def one(ctx: SessionContext, sql: str):
    batches = ctx.sql(sql).collect()
    table = pa.Table.from_batches(batches)
    assert table.num_rows == 1, table
    return table.column(0)[0].as_py()


def test_datafusion_major_version_matches():
    assert datafusion.__version__.split(".")[0] == aq.DATAFUSION_VERSION.split(".")[0]


def test_mission_query_over_parquet_written_by_pyarrow(ctx, tmp_path):
    rng = [((i * 7919) % 1000) / 500.0 - 1.0 for i in range(256)]
    table = pa.table(
        {
            "layer": ["a.weight"] * 4 + ["b.weight"] * 2,
            "row": [0, 1, 2, 3, 0, 1],
            "weights": pa.array(
                [rng[i * 32 : i * 32 + 64] for i in range(6)], pa.list_(pa.float32())
            ),
        }
    )
    path = tmp_path / "layers.parquet"
    pq.write_table(table, path)
    ctx.register_parquet("layers", str(path))
    out = pa.Table.from_batches(
        ctx.sql(
            "SELECT layer, row, quantize(weights, 4) AS q FROM layers ORDER BY layer, row"
        ).collect()
    )
    assert out.num_rows == 6
    q = out.column("q")[0].as_py()
    assert q["bits"] == 4 and q["len"] == 64 and q["scheme"] == "asym"
    cos = pa.Table.from_batches(
        ctx.sql(
            "SELECT layer, tensor_cosine(weights, dequantize(quantize(weights, 8))) AS c "
            "FROM layers GROUP BY layer ORDER BY layer"
        ).collect()
    )
    assert all(c > 0.9999 for c in cos.column("c").to_pylist())


# One query per function: every registered function is called at least once.
QUERIES = {
    "quantize": "SELECT quantize([1.0, 2.0, 3.0, 4.0], 4, 'row')['bits']",
    "dequantize": "SELECT dequantize(quantize([0.0, 1.0, 2.0, 3.0], 8, 'row'))[4]",
    "quantize_measured": "SELECT quantize_measured([1.0, 2.0, 3.0, 4.0], 8, 'row')['error_sums']['n']",
    "quantized_codes": "SELECT quantized_codes(quantize([0.0, 1.0, 2.0, 3.0], 2, 'row', 'asym_minmax'))[4]",
    "cosine_similarity": "SELECT cosine_similarity([1.0, 0.0], [1.0, 0.0])",
    "mse": "SELECT mse([1.0, 2.0], [1.0, 4.0])",
    "sqnr_db": "SELECT round(sqnr_db([1.0, 1.0], [1.0, 0.9]), 2)",
    "max_abs_error": "SELECT max_abs_error([1.0, 2.0], [1.5, 2.0])",
    "compression_ratio": "SELECT compression_ratio(quantize(make_array(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0), 4, 'row')) > 1",
    "quant_error": "SELECT quant_error([1.0, 2.0, 3.0, 4.0], 8, 'row')['cosine'] > 0.999",
    "error_sums": "SELECT error_sums([1.0, 2.0], [1.0, 2.0])['err_sq']",
    "sums_cosine": "SELECT sums_cosine(error_sums([1.0, 0.0], [0.5, 0.0]))",
    "stored_bytes": "SELECT stored_bytes(quantize([1.0, 2.0, 3.0, 4.0], 8, 'row'))",
    "weight_stats": "SELECT weight_stats([1.0, -3.0])['absmax']",
    "timestep_group": "SELECT timestep_group(999, 1000, 10)",
    "quant_mse": "SELECT quant_mse([0.0, 0.5, 1.0, 1.5], 0.5, 0.0, 2)",
    "smooth_scales": "SELECT smooth_scales([16.0], [1.0])[1]",
    "equalize": "SELECT equalize([1.0, 2.0], [2.0])[2]",
    "clip_outliers": "SELECT array_length(clip_outliers([1.0, 2.0, 3.0]))",
    "tensor_cosine": "SELECT tensor_cosine(a, a) FROM (VALUES ([1.0, 2.0]), ([3.0, 4.0])) t(a)",
    "tensor_mse": "SELECT tensor_mse(a, a) FROM (VALUES ([1.0, 2.0])) t(a)",
    "quant_params": "SELECT quant_params(a, 8)['max'] FROM (VALUES ([1.0, 2.0]), ([3.0, 4.0])) t(a)",
    "weight_stats_agg": "SELECT weight_stats_agg(a)['count'] FROM (VALUES ([1.0, 2.0]), ([3.0])) t(a)",
    "column_absmax": "SELECT column_absmax(a)[1] FROM (VALUES ([1.0, 2.0]), ([-3.0, 0.0])) t(a)",
    "timestep_group_adaptive": "SELECT max(g) FROM (SELECT timestep_group_adaptive(x, 2) OVER (ORDER BY t) AS g FROM (VALUES (0, 1.0), (1, 1.0), (2, 5.0)) v(t, x))",
    "markov_smoothness": "SELECT max(s) FROM (SELECT markov_smoothness(x) OVER (ORDER BY t) AS s FROM (VALUES (0, 1.0), (1, 1.5)) v(t, x))",
    "markov_violation": "SELECT bool_or(v) FROM (SELECT markov_violation(x) OVER (ORDER BY t) AS v FROM (VALUES (0, 1.0), (1, 1.5)) v(t, x))",
    "thermo_smooth": "SELECT max(s) FROM (SELECT thermo_smooth(x, 'cubic') OVER (ORDER BY t) AS s FROM (VALUES (0, 1.0), (1, 2.0)) v(t, x))",
    "thermo_optimize": "SELECT max(p['scale']) > 0 FROM (SELECT thermo_optimize(a, 4) OVER (ORDER BY t) AS p FROM (VALUES (0, [0.0, 1.0]), (1, [0.0, 2.0])) v(t, a))",
    "thermo_objective": "SELECT max(o) > 0 FROM (SELECT thermo_objective(a, 0.1, 0.0, 4) OVER (ORDER BY t) AS o FROM (VALUES (0, [0.0, 1.0]), (1, [0.0, 2.0])) v(t, a))",
    "read_safetensors": "SELECT count(*) FROM read_safetensors('{model}') WHERE layer = 'conv_in.weight'",
    "safetensors_info": "SELECT count(*) FROM safetensors_info('{model}')",
    "read_gguf": "SELECT count(*) FROM read_gguf('{gguf}') WHERE dtype = 'Q8_0'",
    "gguf_info": "SELECT sum(bytes) FROM gguf_info('{gguf}')",
    "gguf_metadata": "SELECT value FROM gguf_metadata('{gguf}') WHERE key = 'general.architecture'",
    "read_imatrix": "SELECT sum(channels) FROM read_imatrix('{imatrix}')",
    "allocate_bits": "SELECT max(s) FROM (SELECT t, s, allocate_bits(t, b, e, 30) OVER () AS a FROM (VALUES ('x', 'q4', 10, 5.0), ('x', 'q8', 20, 1.0), ('y', 'q4', 10, 3.0), ('y', 'q8', 20, 2.0)) v(t, s, b, e)) WHERE a['chosen'] AND t = 'x'",
}

EXPECTED = {
    "quantize": 4,
    "dequantize": 3.0,
    "quantize_measured": 4,
    "quantized_codes": 1,
    "cosine_similarity": 1.0,
    "mse": 2.0,
    "sqnr_db": 23.01,
    "max_abs_error": 0.5,
    "compression_ratio": True,
    "quant_error": True,
    "error_sums": 0.0,
    "sums_cosine": 1.0,
    "stored_bytes": 8,
    "weight_stats": 3.0,
    "timestep_group": 9,
    "quant_mse": 0.0,
    "smooth_scales": 4.0,
    "equalize": 4.0,
    "clip_outliers": 3,
    "tensor_cosine": 1.0,
    "tensor_mse": 0.0,
    "quant_params": 4.0,
    "weight_stats_agg": 3,
    "column_absmax": 3.0,
    "timestep_group_adaptive": 1,
    "markov_smoothness": 0.5,
    "markov_violation": True,
    "thermo_smooth": 2.0,
    "thermo_optimize": True,
    "thermo_objective": True,
    "read_safetensors": 32,
    "safetensors_info": 212,
    "read_gguf": 2,
    "gguf_info": 2198,
    "gguf_metadata": "llama",
    "read_imatrix": 56,
    "allocate_bits": "q8",
}


def test_every_function_is_registered_and_covered():
    names = [n for kind in aq.function_names().values() for n in kind]
    assert sorted(names) == sorted(QUERIES), "a function without a test, or a test without one"


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_each_function_from_python(ctx, bundled_model, tiny_gguf, name):
    value = one(ctx, QUERIES[name].format(model=bundled_model, gguf=tiny_gguf, imatrix=IMATRIX))
    expected = EXPECTED[name]
    if isinstance(expected, float):
        # Scales and offsets are stored as f16: rebuilt values are exact to about 1e-4.
        assert math.isclose(value, expected, rel_tol=1e-4, abs_tol=1e-9), value
    else:
        assert value == expected


def test_dataframe_api(ctx):
    quantize = aq.scalar_function("quantize")
    dequantize = aq.scalar_function("dequantize")
    cosine = aq.scalar_function("cosine_similarity")
    df = ctx.from_pydict({"w": [[0.5, -1.0, 2.0, 0.25]]})
    out = df.select(cosine(col("w"), dequantize(quantize(col("w"), lit(8), lit("row")))).alias("c"))
    assert out.to_pydict()["c"][0] > 0.9999
    tensor_cosine = aq.aggregate_function("tensor_cosine")
    agg = df.aggregate([], [tensor_cosine(col("w"), col("w")).alias("t")])
    assert agg.to_pydict()["t"] == [1.0]


def test_functions_one_by_one(bundled_model):
    ctx = SessionContext()
    ctx.register_udwf(aq.window_function("markov_violation"))
    ctx.register_udtf(aq.table_function("safetensors_info", ctx))
    assert one(ctx, f"SELECT count(*) FROM safetensors_info('{bundled_model}')") == 212
    assert (
        one(
            ctx,
            "SELECT count(*) FROM (SELECT markov_violation(x) OVER (ORDER BY x) AS v "
            "FROM (VALUES (1.0), (2.0)) t(x)) WHERE v",
        )
        == 1
    )


def test_errors_cross_the_boundary(ctx):
    with pytest.raises(Exception, match="quantize: argument 'bits'"):
        ctx.sql("SELECT quantize([1.0], 7)").collect()
    with pytest.raises(Exception, match="non-finite value NaN"):
        ctx.sql("SELECT quantize(['NaN'::float, 1.0], 4, 'row')").collect()
    with pytest.raises(Exception, match="markov_violation: argument 'threshold'"):
        ctx.sql(
            "SELECT markov_violation(x, -1.0) OVER (ORDER BY x) FROM (VALUES (1.0)) v(x)"
        ).collect()
    with pytest.raises(Exception, match="no such file|No such file"):
        ctx.sql("SELECT * FROM read_safetensors('/nonexistent/model.safetensors')").collect()


def test_unknown_names_and_wrong_context():
    with pytest.raises(ValueError, match="no scalar function named 'quantise'"):
        aq.scalar_function("quantise")
    with pytest.raises(ValueError, match="no aggregate function named 'quantize'"):
        aq.aggregate_function("quantize")
    with pytest.raises(ValueError, match="no window function named 'thermo'"):
        aq.window_function("thermo")
    with pytest.raises(ValueError, match="no table function named 'read_parquet'"):
        aq.table_function("read_parquet", SessionContext())
    with pytest.raises(TypeError, match="datafusion.SessionContext"):
        aq.register(object())


GGUF = {
    "q4_0": (4, "Q4_0"),
    "q4_1": (4, "Q4_1"),
    "q5_0": (5, "Q5_0"),
    "q5_1": (5, "Q5_1"),
    "q8_0": (8, "Q8_0"),
}


@pytest.mark.parametrize("scheme", sorted(GGUF))
def test_gguf_schemes_match_gguf_py_bit_for_bit(ctx, scheme):
    """Fresh random data each run (the seed is printed on failure): the reference encoder
    (`NAME:reference`) compared with llama.cpp's Python reference quantizer from the PyPI gguf
    package, and our search (the default) never further from the row in any block."""
    import random

    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as gguf_quantize

    seed = random.randrange(2**32)
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((8, 256)).astype(np.float32) * rng.uniform(
        0.01, 10.0, (8, 1)
    ).astype(np.float32)
    rows[0, :32] = 0.0  # an all-zero block
    bits, name = GGUF[scheme]
    expected = gguf_quantize(rows, getattr(GGMLQuantizationType, name))
    ctx.from_arrow(
        pa.table({"i": range(len(rows)), "w": pa.array(list(rows), pa.list_(pa.float32()))}),
        name="t",
    )
    got = pa.Table.from_batches(
        ctx.sql(
            f"SELECT quantize(w, {bits}, 32, '{scheme}:reference')['codes'] AS c FROM t ORDER BY i"
        ).collect()
    ).column("c")
    for i, row in enumerate(got.to_pylist()):
        assert row == expected[i].tobytes(), f"{scheme} row {i}, seed {seed}"
    errors = pa.Table.from_batches(
        ctx.sql(
            f"SELECT quant_error(w, {bits}, 32, '{scheme}:reference')['mse'] AS reference, "
            f"quant_error(w, {bits}, 32, '{scheme}')['mse'] AS search FROM t ORDER BY i"
        ).collect()
    ).to_pylist()
    for i, e in enumerate(errors):
        assert e["search"] <= e["reference"] * (1 + 1e-6), f"{scheme} row {i}, seed {seed}: {e}"


def test_quantize_measured_runs_once_with_the_documented_setting():
    # DataFusion 55's leaf-expression pushdown calls quantize_measured once per field read;
    # the README tells Python users to turn it off, as ArrowQuant's own sessions do.
    config = datafusion.SessionConfig().set(
        "datafusion.optimizer.enable_leaf_expression_pushdown", "false"
    )
    ctx = aq.register(SessionContext(config))
    ctx.sql("CREATE TABLE t AS SELECT [1.0, 2.0, 3.0, 4.0] AS w").collect()
    query = (
        "SELECT m['quantized'] AS q, m['error_sums'] AS e "
        "FROM (SELECT quantize_measured(w, 4, 'row') AS m FROM t)"
    )
    plan = pa.Table.from_batches(ctx.sql(f"EXPLAIN {query}").collect())
    physical = [
        p
        for t, p in zip(plan.column(0).to_pylist(), plan.column(1).to_pylist())
        if t == "physical_plan"
    ]
    assert physical[0].count("quantize_measured(") == 1, physical[0]
    row = pa.Table.from_batches(ctx.sql(query).collect()).to_pylist()[0]
    assert row["e"]["n"] == 4 and row["q"]["len"] == 4
