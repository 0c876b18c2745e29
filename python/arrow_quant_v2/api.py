"""``ArrowQuantV2``: whole-model quantization with the engine's SQL pipeline."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from . import _native
from .config import DiffusionQuantConfig

ProgressCallback = Callable[[float, str], Any]


def _config_dict(config: DiffusionQuantConfig | dict[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return DiffusionQuantConfig.resolve().to_dict()
    if isinstance(config, DiffusionQuantConfig):
        return config.to_dict()
    if isinstance(config, dict):
        return DiffusionQuantConfig.resolve(**config).to_dict()
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
        if progress_callback is not None and not callable(progress_callback):
            raise TypeError("progress_callback must be callable(fraction, message)")
        settings = _config_dict(config if config is not None else self.config)
        summary = _native.quantize(
            _path(model_path, "model_path"),
            _path(output_path, "output_path"),
            settings,
            force,
            progress_callback,
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
