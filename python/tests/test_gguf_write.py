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


def export_dir(tmp_path: Path, scheme: str) -> tuple[Path, subprocess.CompletedProcess]:
    """A small llama-like checkpoint quantized with `scheme` into an output directory
    (Parquet), then `arrowquant export`ed."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(7)
    model = tmp_path / "m"
    model.mkdir()
    save_file(
        {
            "token_embd.weight": rng.standard_normal((16, 256)).astype(np.float32),
            "blk.0.attn_norm.weight": rng.standard_normal(256).astype(np.float32),
            "blk.0.attn_q.weight": rng.standard_normal((32, 256)).astype(np.float32),
            "blk.0.ffn_down.weight": rng.standard_normal((8, 512)).astype(np.float16),
            "output_norm.weight": rng.standard_normal(256).astype(np.float16),
        },
        str(model / "model.safetensors"),
    )
    out = tmp_path / "out"
    run = subprocess.run(
        [str(BINARY), "quantize", "-q", str(model), "-o", str(out), "--scheme", scheme],
        check=False,
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        return out, run
    gguf = tmp_path / "out.gguf"
    run = subprocess.run(
        [str(BINARY), "export", str(out), "-o", str(gguf)],
        check=False,
        capture_output=True,
        text=True,
    )
    return gguf, run


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gguf_py_reads_an_export_and_decodes_it_as_we_decode_the_directory(tmp_path, scheme):
    gguf, run = export_dir(tmp_path, scheme)
    if "unknown scheme" in run.stderr:
        pytest.skip(f"this build has no scheme {scheme}")
    assert run.returncode == 0, run.stderr
    ctx = aq.register(SessionContext())
    ctx.register_parquet("weights", str(tmp_path / "out" / "weights.parquet"))
    table = pa.Table.from_batches(
        ctx.sql(
            "SELECT layer, row, q['codes'] AS codes, dequantize(q) AS values, data, dtype "
            "FROM weights ORDER BY layer, row"
        ).collect()
    )
    rows: dict[str, list[dict]] = {}
    for r in table.to_pylist():
        rows.setdefault(r["layer"], []).append(r)
    reader = GGUFReader(str(gguf))
    assert sorted(t.name for t in reader.tensors) == sorted(rows)
    for t in reader.tensors:
        mine = rows[t.name]
        want = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        if mine[0]["codes"] is not None:
            # The blocks are the directory's codes, and decode as ours do, bit for bit.
            assert t.data.tobytes() == b"".join(r["codes"] for r in mine), t.name
            got = np.array([v for r in mine for v in r["values"]], dtype=np.float32)
        else:
            stored = np.frombuffer(
                b"".join(r["data"] for r in mine),
                dtype={"F32": np.float32, "F16": np.float16}[mine[0]["dtype"]],
            )
            # 1-D kept tensors are F32, widened exactly.
            assert t.tensor_type.name == "F32", t.name
            got = stored.astype(np.float32)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (
            t.name,
            t.tensor_type.name,
        )
    fields = reader.fields
    assert fields["general.name"].contents() == "m"
    assert "general.architecture" not in fields
    assert fields["general.quantization_version"].contents() == 2
    assert fields["quantize.tool"].contents() == "arrowquant"
    assert fields["quantize.scheme"].contents().lower() == scheme.lower()


# The types ComfyUI-GGUF's dequant.py decodes (besides F32 and F16, which torch takes as they are).
COMFY_TYPES = {
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q5_1",
    "Q5_0",
    "Q4_1",
    "Q4_0",
    "Q6_K",
    "Q5_K",
    "Q4_K",
    "Q3_K",
    "Q2_K",
    "IQ4_NL",
    "IQ4_XS",
}


@pytest.mark.parametrize("scheme", ["q8_0", "q4_K"])
def test_a_unet_loads_as_comfyui_ggufs_loader_reads_it(tmp_path, scheme):
    """The bundled tiny UNet (sd1) read as city96/ComfyUI-GGUF's loader.py reads a GGUF UNet:
    `comfy.gguf.orig_shape.NAME` an ARRAY of INT32 (get_orig_shape refuses anything else) giving
    the torch shape, outermost first, else the reversed GGUF shape; every tensor of a type its
    dequant.py decodes; decoded by gguf-py and viewed in that shape, each equals the
    checkpoint's tensor within its type's error, and equals ArrowQuant's own decoding bit for
    bit."""
    from gguf import GGUFValueType
    from safetensors.numpy import load_file

    unet = ROOT / "examples" / "models" / "tiny-unet"
    want = load_file(str(unet / "diffusion_pytorch_model.safetensors"))
    out = tmp_path / "unet.gguf"
    run = subprocess.run(
        [str(BINARY), "quantize", "-q", str(unet), "-o", str(out), "--scheme", scheme, "--pure"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    reader = GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() == "sd1"
    decoded = ours(out)
    assert sorted(t.name for t in reader.tensors) == sorted(want)
    reshaped = 0
    for t in reader.tensors:
        field = reader.get_field(f"comfy.gguf.orig_shape.{t.name}")
        if field is None:
            shape = tuple(int(v) for v in reversed(t.shape))
        else:
            assert field.types == [GGUFValueType.ARRAY, GGUFValueType.INT32], t.name
            shape = tuple(int(field.parts[i][0]) for i in field.data)
            assert [int(v) for v in t.shape] == [256, int(np.prod(shape)) // 256], t.name
            reshaped += 1
        assert shape == want[t.name].shape, t.name
        assert t.tensor_type.name in COMFY_TYPES, (t.name, t.tensor_type.name)
        got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        ref = want[t.name].astype(np.float32)
        kind = t.tensor_type.name
        if kind == "F32":
            assert np.array_equal(got, ref), t.name
        elif kind == "F16":
            assert np.allclose(got, ref, rtol=2**-11, atol=1e-7), t.name
        else:
            assert kind == scheme.upper(), (t.name, kind)
            cos = float((got * ref).sum() / np.sqrt((got * got).sum() * (ref * ref).sum()))
            assert cos > (0.9999 if scheme == "q8_0" else 0.99), (t.name, cos)
        mine = decoded[t.name].reshape(-1)
        assert np.array_equal(mine.view(np.uint32), got.reshape(-1).view(np.uint32)), t.name
    assert reshaped == 74
    assert {
        t.tensor_type.name
        for t in reader.tensors
        if "time_embedding" in t.name and len(t.shape) > 1
    } == {"F16"}


def test_a_unet_for_stable_diffusion_cpp_keeps_its_shapes_and_decodes_as_we_do(tmp_path):
    """`--gguf-target sd.cpp`: gguf-py reads the file; no tensor is reshaped and no
    `comfy.gguf.*` key is written (sd.cpp's loader refuses a shape that differs from the
    model's); every name is an original-layout name under `model.diffusion_model.`; the shapes
    are the checkpoint's; every tensor gguf-py decodes equals ArrowQuant's decoding bit for
    bit."""
    from safetensors.numpy import load_file

    unet = ROOT / "examples" / "models" / "tiny-unet"
    want = load_file(str(unet / "diffusion_pytorch_model.safetensors"))
    out = tmp_path / "unet.gguf"
    run = subprocess.run(
        [
            str(BINARY),
            "quantize",
            "-q",
            str(unet),
            "-o",
            str(out),
            "--scheme",
            "q8_0",
            "--pure",
            "--gguf-target",
            "sd.cpp",
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    reader = GGUFReader(str(out))
    assert not [k for k in reader.fields if k.startswith("comfy.")]
    assert all(t.name.startswith("model.diffusion_model.") for t in reader.tensors)
    assert any(".input_blocks." in t.name for t in reader.tensors)
    assert not any("down_blocks" in t.name for t in reader.tensors)
    shapes = sorted(tuple(int(v) for v in reversed(t.shape)) for t in reader.tensors)
    assert shapes == sorted(v.shape for v in want.values())
    decoded = ours(out)
    types = set()
    for t in reader.tensors:
        types.add(t.tensor_type.name)
        got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        mine = decoded[t.name].reshape(-1)
        assert np.array_equal(mine.view(np.uint32), got.view(np.uint32)), t.name
    assert "Q8_0" in types
