from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundled_model() -> Path:
    return ROOT / "examples" / "models" / "tiny-unet"


@pytest.fixture
def tiny_gguf() -> Path:
    """The GGUF test file scripts/make_gguf_files.py writes with gguf-py."""
    return ROOT / "tests" / "data" / "gguf" / "tiny.gguf"


@pytest.fixture
def calibration() -> Path:
    return ROOT / "examples" / "calibration" / "tiny-unet-ddpm.parquet"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Tests start without the caller's ARROW_QUANT_* settings."""
    import os

    for key in list(os.environ):
        if key.startswith("ARROW_QUANT_"):
            monkeypatch.delenv(key)
