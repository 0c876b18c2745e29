"""The seed's Python API: ArrowQuantV2 and DiffusionQuantConfig."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import arrow_quant_v2 as aq
from arrow_quant_v2 import ArrowQuantV2, DiffusionQuantConfig, QuantizationError


def test_profiles_environment_and_yaml(monkeypatch, tmp_path):
    assert DiffusionQuantConfig.from_profile("edge").bit_width == 2
    assert DiffusionQuantConfig.from_profile("cloud").bit_width == 8
    # The seed's snippet: ARROW_QUANT_BIT_WIDTH=2 overrides the local profile.
    monkeypatch.setenv("ARROW_QUANT_BIT_WIDTH", "2")
    assert DiffusionQuantConfig.from_profile("local").bit_width == 2
    monkeypatch.delenv("ARROW_QUANT_BIT_WIDTH")
    path = tmp_path / "config.yaml"
    path.write_text("profile: edge\ngroup_size: 64\nsmoothing: cubic\n")
    config = DiffusionQuantConfig.from_yaml(path)
    assert (config.profile, config.bit_width, config.group_size, config.smoothing) == (
        "edge",
        2,
        "64",
        "cubic",
    )
    # Explicit settings win over the file.
    assert DiffusionQuantConfig.from_yaml(path, bit_width=4).bit_width == 4
    assert config.replace(min_cosine=0.5).min_cosine == 0.5


def test_config_errors_name_the_key(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'tiny'"):
        DiffusionQuantConfig.from_profile("tiny")
    with pytest.raises(ValueError, match="key 'bit_width': 7 bits is not supported"):
        DiffusionQuantConfig.resolve(bit_width=7)
    with pytest.raises(ValueError, match="unknown configuration key"):
        DiffusionQuantConfig.resolve(bits=4)
    with pytest.raises(TypeError, match="configuration key 'min_cosine'"):
        DiffusionQuantConfig.resolve(min_cosine=[0.9])
    monkeypatch.setenv("ARROW_QUANT_GROUPING", "spiral")
    with pytest.raises(ValueError, match="environment: key 'grouping'"):
        DiffusionQuantConfig.from_profile("local")
    monkeypatch.delenv("ARROW_QUANT_GROUPING")
    with pytest.raises(FileNotFoundError):
        DiffusionQuantConfig.from_yaml(tmp_path / "missing.yaml")


def test_quantize_diffusion_model(bundled_model, tmp_path):
    calls = []
    result = ArrowQuantV2().quantize_diffusion_model(
        model_path=str(bundled_model),
        output_path=str(tmp_path / "out"),
        config=DiffusionQuantConfig.from_profile("local"),
        progress_callback=lambda fraction, message: calls.append((fraction, message)),
    )
    assert result["tensors"] == 212 and result["quantized"] == 76
    assert result["min_cosine"] >= 0.99
    assert result["compression_ratio"] > 6
    assert calls and calls[-1] == (1.0, "done")
    assert all(0.0 <= f <= 1.0 for f, _ in calls)
    assert pq.read_table(tmp_path / "out" / "report.parquet").num_rows == 212
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["profile"] == "local"


def test_quantize_to_gguf_with_encoders(tmp_path):
    """format="gguf" writes one GGUF file (as `arrowquant quantize -o OUT.gguf`), which gguf-py
    reads; the encoder is a key of its own or a suffix of the scheme; the config round-trips."""
    import gguf

    model = Path(__file__).resolve().parents[2] / "tests/data/gguf/llama-f32.gguf"
    config = DiffusionQuantConfig.resolve(scheme="q4_K", format="gguf", pure=True)
    assert (config.scheme, config.encoder, config.bit_width) == ("q4_K", "search", 4)
    result = ArrowQuantV2(config).quantize_diffusion_model(model, tmp_path / "out.gguf")
    assert result["quantized"] > 0
    reader = gguf.GGUFReader(tmp_path / "out.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_K"
    reference = DiffusionQuantConfig.resolve(scheme="q4_0", encoder="reference")
    assert reference.replace(min_cosine=0.98).encoder == "reference"
    assert (reference.scheme, reference.encoder) == ("q4_0", "reference")
    assert DiffusionQuantConfig.resolve(scheme="q8_0:reference").encoder == "reference"
    with pytest.raises(ValueError, match="no 'reference' encoder"):
        DiffusionQuantConfig.resolve(scheme="q4_K", encoder="reference")
    with pytest.raises(ValueError, match="a GGUF model is written as GGUF"):
        ArrowQuantV2().quantize_diffusion_model(model, tmp_path / "out")
    with pytest.raises(ValueError, match="pure: applies to GGUF output only"):
        ArrowQuantV2({"pure": True}).quantize_diffusion_model(
            Path(__file__).resolve().parents[2] / "examples/models/tiny-unet", tmp_path / "o2"
        )
    with pytest.raises(ValueError, match="gguf_target: applies to GGUF output only"):
        ArrowQuantV2({"gguf_target": "sd.cpp"}).quantize_diffusion_model(
            Path(__file__).resolve().parents[2] / "examples/models/tiny-unet", tmp_path / "o3"
        )


def test_bit_allocation_recipes_and_overrides_from_python(tmp_path):
    """The allocation keys as fields of DiffusionQuantConfig: a budget in bytes or bits a weight,
    the candidates, overrides and a recipe; the result carries the allocation's summary, the
    config round-trips, and the combinations that cannot be are refused by name."""
    import gguf

    model = Path(__file__).resolve().parents[2] / "tests/data/gguf/llama-f32.gguf"
    config = DiffusionQuantConfig.resolve(
        format="gguf",
        target_bpw=7.5,
        candidates="q4_K,q8_0",
        tensor_type="^output\\.weight$=q8_0",
    )
    assert config.replace(min_cosine=0.98).tensor_type == "^output\\.weight$=q8_0"
    assert config.candidates == "q4_K,q8_0"
    result = ArrowQuantV2(config).quantize_diffusion_model(model, tmp_path / "mixed.gguf")
    allocation = result["allocation"]
    assert allocation["bits_per_weight"] <= 7.5
    assert allocation["candidates"] == ["q4_K", "q8_0"]
    assert allocation["lower_bound"] <= allocation["error"] * (1 + 1e-12)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "mixed.gguf").tensors}
    assert types["output.weight"] == "Q8_0"
    sized = DiffusionQuantConfig.resolve(format="gguf", max_size="20KB")
    assert sized.max_size == 20000
    recipe = DiffusionQuantConfig.resolve(format="gguf", recipe="Q4_K_M")
    ArrowQuantV2(recipe).quantize_diffusion_model(model, tmp_path / "recipe.gguf")
    reader = gguf.GGUFReader(tmp_path / "recipe.gguf")
    assert int(reader.fields["general.file_type"].parts[-1][0]) == 15
    with pytest.raises(ValueError, match="give one of them"):
        DiffusionQuantConfig.resolve(format="gguf", recipe="Q4_K_M", target_bpw=5)
    with pytest.raises(ValueError, match="recipe: "):
        ArrowQuantV2({"format": "gguf", "recipe": "Q9_K"}).quantize_diffusion_model(
            model, tmp_path / "bad.gguf"
        )
    with pytest.raises(ValueError, match="max_size: applies to GGUF output only"):
        ArrowQuantV2({"max_size": "1MB"}).quantize_diffusion_model(
            Path(__file__).resolve().parents[2] / "examples/models/tiny-unet", tmp_path / "o4"
        )


def test_quantize_from_safetensors_with_calibration(bundled_model, calibration, tmp_path):
    result = ArrowQuantV2().quantize_from_safetensors(
        safetensors_path=bundled_model / "diffusion_pytorch_model.safetensors",
        output_path=tmp_path / "out",
        config={"profile": "cloud", "calibration": str(calibration), "optimize": True},
    )
    assert result["activations"]["layers"] == 76
    assert (
        result["activations"]["markov_violations_after"]
        <= result["activations"]["markov_violations_before"]
    )
    params = pq.read_table(tmp_path / "out" / "activation_params.parquet")
    assert params.num_rows == 76 * 20


def test_bad_input_raises_python_exceptions(bundled_model, tmp_path):
    quantizer = ArrowQuantV2()
    with pytest.raises(FileNotFoundError):
        quantizer.quantize_diffusion_model(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(TypeError, match="model_path must be a path"):
        quantizer.quantize_diffusion_model(42, tmp_path / "out")
    with pytest.raises(TypeError, match="config must be"):
        quantizer.quantize_diffusion_model(bundled_model, tmp_path / "out", config=3)
    with pytest.raises(ValueError, match="bit_width"):
        quantizer.quantize_diffusion_model(bundled_model, tmp_path / "out", config={"bit_width": 9})
    with pytest.raises(TypeError, match="progress_callback"):
        quantizer.quantize_diffusion_model(bundled_model, tmp_path / "out", progress_callback=5)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(QuantizationError):
        quantizer.quantize_from_safetensors(broken, tmp_path / "out2")
    assert broken.read_bytes().startswith(b"\x10")
    assert not (tmp_path / "out2").exists()
    # An existing output is refused without force.
    (tmp_path / "taken").mkdir()
    with pytest.raises((ValueError, QuantizationError), match="exists"):
        quantizer.quantize_diffusion_model(bundled_model, tmp_path / "taken")


def test_version():
    assert aq.__version__


def test_a_failing_progress_callback_stops_the_run_and_is_raised(bundled_model, tmp_path):
    quantizer = ArrowQuantV2()

    def fails(fraction, message):
        raise RuntimeError("callback gave up")

    with pytest.raises(RuntimeError, match="callback gave up"):
        quantizer.quantize_diffusion_model(bundled_model, tmp_path / "out", progress_callback=fails)
    # The run stopped: no output, and no partial directory beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # A callback of the wrong arity fails the same way, with Python's own TypeError.
    with pytest.raises(TypeError):
        quantizer.quantize_diffusion_model(
            bundled_model, tmp_path / "out", progress_callback=lambda: None
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_batch_rows_with_misleading_shapes_are_refused_by_layer():
    quantizer = ArrowQuantV2()
    weights = pa.array([[1.0, 2.0, 3.0, 4.0]], pa.list_(pa.float32()))
    table = pa.table(
        {"layer_name": ["w"], "weights": weights, "shape": pa.array([[3, 7]], pa.list_(pa.int64()))}
    )
    with pytest.raises(QuantizationError, match=r"layer 'w' \(input row 0\): shape \[3, 7\]"):
        quantizer.quantize_batch_arrow(table)
    nulls = pa.table({"layer_name": pa.array([None], pa.string()), "weights": weights})
    with pytest.raises(QuantizationError, match="layer_name is NULL"):
        quantizer.quantize_batch_arrow(nulls)
