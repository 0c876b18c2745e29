"""GGUF files written by `arrowquant quantize … -o OUT.gguf` read by gguf-py (llama.cpp's own
Python reader): every tensor it decodes with `gguf.quants.dequantize` equals, bit for bit, what
ArrowQuant's dequantize kernels give for the same rows (read_gguf), for every GGUF scheme the
binary knows, and the metadata of the input is carried."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from datafusion import SessionContext
from gguf import GGUFReader
from gguf.quants import dequantize

import arrow_quant_v2 as aq

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "data" / "gguf" / "llama-f32.gguf"
# The dev binary `cargo build` makes (scripts/test.sh builds it before pytest).
BINARY = Path(os.environ.get("ARROWQUANT_BIN", ROOT / "target" / "debug" / "arrowquant"))
SCHEMES = [
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q8_0",
    "q2_K",
    "q3_K",
    "q4_K",
    "q5_K",
    "q6_K",
    "iq4_nl",
    "iq4_xs",
]


def quantize(out: Path, scheme: str, *extra: str) -> subprocess.CompletedProcess:
    assert BINARY.exists(), f"{BINARY} is missing: run cargo build first"
    return subprocess.run(
        [str(BINARY), "quantize", "-q", str(MODEL), "-o", str(out), "--scheme", scheme, *extra],
        check=False,
        capture_output=True,
        text=True,
    )


def ours(path: Path) -> dict[str, np.ndarray]:
    ctx = aq.register(SessionContext())
    batches = ctx.sql(
        f"SELECT layer, row, weights FROM read_gguf('{path}') ORDER BY layer, row"
    ).collect()
    table = pa.Table.from_batches(batches)
    rows: dict[str, list] = {}
    for layer, weights in zip(
        table.column("layer").to_pylist(), table.column("weights").to_pylist()
    ):
        rows.setdefault(layer, []).append(weights)
    return {k: np.array(v, dtype=np.float32) for k, v in rows.items()}


@pytest.mark.parametrize("pure", [True, False])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_gguf_py_reads_what_we_write_and_decodes_it_as_we_do(tmp_path, scheme, pure):
    out = tmp_path / f"{scheme}.gguf"
    run = quantize(out, scheme, *(["--pure"] if pure else []))
    if "unknown scheme" in run.stderr:
        pytest.skip(f"this build has no scheme {scheme}")
    assert run.returncode == 0, run.stderr
    reader = GGUFReader(str(out))
    source = GGUFReader(str(MODEL))
    decoded = ours(out)
    assert [t.name for t in reader.tensors] == [t.name for t in source.tensors]
    for t, s in zip(reader.tensors, source.tensors):
        assert list(t.shape) == list(s.shape), t.name
        want = dequantize(t.data, t.tensor_type).astype(np.float32)
        got = decoded[t.name].reshape(want.shape)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (
            t.name,
            t.tensor_type.name,
        )
        if len(s.shape) == 1 or s.name.endswith("_norm.weight"):
            assert t.tensor_type.name == "F32", t.name
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    for key, field in source.fields.items():
        if key.startswith("GGUF.") or key == "general.file_type":
            continue
        assert fields[key].contents() == field.contents(), key
    assert fields["quantize.tool"].contents() == "arrowquant"
    assert fields["quantize.scheme"].contents().lower() == scheme.lower()
    assert fields["quantize.pure"].contents() is pure
