"""``ArrowQuantV2``: whole-model quantization with the engine's SQL pipeline."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from . import _native
from .config import DiffusionQuantConfig

ProgressCallback = Callable[[float, str], Any]


def _config_dict(config: DiffusionQuantConfig | dict[str, Any] | None) -> dict[str, Any]:
    """The settings handed to the engine as explicit: only what the caller set. The engine puts
    them over ``ARROW_QUANT_*`` and the profile itself, so that keys left unset still take their
    defaults there (a GGUF scheme's block size among them)."""
    if config is None:
        DiffusionQuantConfig.resolve()  # the environment's errors, raised here
        return {}
    if isinstance(config, DiffusionQuantConfig):
        return config.to_dict()
    if isinstance(config, dict):
        DiffusionQuantConfig.resolve(**config)  # unknown keys and bad values, raised here
        return dict(config)
    raise TypeError(
        f"config must be a DiffusionQuantConfig, a dict or None, got {type(config).__name__}"
    )


def _path(value: Any, argument: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{argument} must be a path (str or os.PathLike), got {type(value).__name__}"
        )
    return os.fspath(value)


class ArrowQuantV2:
    """Quantizes models into an output directory (``weights.parquet``, ``report.parquet``,
    ``manifest.json``; with a calibration set also ``activation_params.parquet``).

    >>> quantizer = ArrowQuantV2()
    >>> result = quantizer.quantize_diffusion_model("model/", "model-int4/")
    >>> result["compression_ratio"], result["min_cosine"]
    """

    def __init__(self, config: DiffusionQuantConfig | dict[str, Any] | None = None):
        self.config = config

    def quantize_diffusion_model(
        self,
        model_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        config: DiffusionQuantConfig | dict[str, Any] | None = None,
        progress_callback: ProgressCallback | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Quantizes a model folder (diffusers pipeline or model folder), a safetensors file or
        a sharded checkpoint. Returns the run's summary: tensors, sizes, compression ratio,
        cosine similarities, timings, and the activation calibration when configured."""
        return self._quantize(model_path, output_path, config, progress_callback, force, None)

    def _quantize(self, model_path, output_path, config, progress_callback, force, cancel):
        if progress_callback is not None and not callable(progress_callback):
            raise TypeError("progress_callback must be callable(fraction, message)")
        settings = _config_dict(config if config is not None else self.config)
        summary = _native.quantize(
            _path(model_path, "model_path"),
            _path(output_path, "output_path"),
            settings,
            force,
            progress_callback,
            cancel,
        )
        return json.loads(summary)

    def quantize_from_safetensors(
        self,
        safetensors_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        config: DiffusionQuantConfig | dict[str, Any] | None = None,
        progress_callback: ProgressCallback | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Quantizes one safetensors file or a sharded folder (``*.safetensors.index.json``)."""
        return self.quantize_diffusion_model(
            safetensors_path, output_path, config, progress_callback, force
        )

    def quantize_batch_arrow(
        self,
        table: Any,
        config: DiffusionQuantConfig | dict[str, Any] | None = None,
        *,
        bit_width: int | None = None,
        group_size: int | str | None = None,
        scheme: str | None = None,
    ) -> pa.Table:
        """Quantizes every layer of an Arrow table in one call, the GIL released and the layers
        spread over the cores.

        Input: any Arrow table or stream (``__arrow_c_stream__``: pyarrow, polars, DuckDB, ...;
        read without a copy) with ``layer_name`` (string), ``weights`` (list of floats, one
        layer per row) and optionally ``shape`` (list of integers).

        Output, one row per layer in input order: the seed's ``layer_name``,
        ``quantized_weights`` (list<int8>: signed codes, code − 2^(bits−1)), ``scale`` and
        ``zero_point`` (when the layer is one group, i.e. ``group_size="row"``; NULL otherwise),
        ``original_shape``, ``compression_ratio``, ``cosine_similarity``; then what group-wise
        quantization needs: ``scales``, ``zero_points`` (nearest integer, in signed code units)
        and ``offsets`` (exact: value = offset + (code + 2^(bits−1)) · scale) per group,
        ``bits``, ``group_size``, ``scheme``. GGUF schemes keep their scales inside the blocks:
        ``quantized_weights`` is NULL for them (use the SQL ``quantize`` for the block bytes).
        """
        settings = _config_dict(config if config is not None else self.config)
        for key, value in (
            ("bit_width", bit_width),
            ("group_size", group_size),
            ("scheme", scheme),
        ):
            if value is not None:
                settings[key] = str(value) if key == "group_size" else value
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        stream = _native.quantize_batch(table, settings)
        return pa.RecordBatchReader.from_stream(stream).read_all()
