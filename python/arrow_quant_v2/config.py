"""``DiffusionQuantConfig``: the same keys, profiles and rules as the Rust configuration."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from . import _native


@dataclass(frozen=True)
class DiffusionQuantConfig:
    """A resolved configuration. Build one with :meth:`from_profile`, :meth:`from_yaml` or
    :meth:`resolve`; ``ARROW_QUANT_<KEY>`` environment variables override the profile's
    defaults, and explicit settings override everything. Every value is validated by the
    engine: a bad one raises ``ValueError`` naming the key and where it came from."""

    profile: str = "local"
    bit_width: int = 4
    group_size: str = "64"
    scheme: str = "asym"
    encoder: str = "search"
    min_cosine: float = 0.99
    sensitive_bit_width: int = 8
    fallback: bool = True
    calibration: str | None = None
    activation_bits: int = 8
    timestep_groups: int = 10
    num_timesteps: int = 1000
    grouping: str = "uniform"
    smoothing: str = "none"
    optimize: bool = False
    lambda_markov: float = 1.0
    lambda_entropy: float = 0.01
    format: str = "parquet"
    pure: bool = False
    gguf_target: str = "comfyui"
    max_size: int | None = None
    target_bpw: float | None = None
    candidates: str | None = None
    tensor_type: str | None = None
    recipe: str | None = None
    imatrix: str | None = None

    @classmethod
    def resolve(
        cls, yaml: str | os.PathLike[str] | None = None, **settings: Any
    ) -> DiffusionQuantConfig:
        """Settings > YAML file > ``ARROW_QUANT_*`` environment > profile defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(
                f"unknown configuration key(s) {', '.join(unknown)} "
                f"(known keys: {', '.join(sorted(known))})"
            )
        resolved = json.loads(_native.resolve_config(settings, yaml))
        return cls(**resolved)

    @classmethod
    def from_profile(cls, profile: str, **settings: Any) -> DiffusionQuantConfig:
        """A profile (``edge``, ``local``, ``cloud``) with the environment's overrides."""
        return cls.resolve(profile=profile, **settings)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **settings: Any) -> DiffusionQuantConfig:
        """A YAML file of configuration keys, over the environment and the profile."""
        return cls.resolve(yaml=path, **settings)

    def replace(self, **settings: Any) -> DiffusionQuantConfig:
        """A copy with some keys changed, validated again."""
        return DiffusionQuantConfig.resolve(**{**self.to_dict(), **settings})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
