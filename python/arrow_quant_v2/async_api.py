"""``AsyncArrowQuantV2``: the same calls as awaitables. The work runs in a worker thread with the
GIL released, so the event loop never blocks; cancelling the awaiting task stops a model run at
its next step and removes its partial output."""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

import pyarrow as pa

from . import _native
from .api import ArrowQuantV2, ProgressCallback
from .config import DiffusionQuantConfig


class AsyncArrowQuantV2:
    """>>> result = await AsyncArrowQuantV2().quantize_diffusion_model_async("model/", "out/")"""

    def __init__(self, config: DiffusionQuantConfig | dict[str, Any] | None = None):
        self._sync = ArrowQuantV2(config)

    async def _model_run(self, model_path, output_path, config, progress_callback, force):
        loop = asyncio.get_running_loop()
        cancel = _native.CancelToken()
        if progress_callback is not None and asyncio.iscoroutinefunction(progress_callback):
            raise TypeError("progress_callback must be a plain callable, not a coroutine function")
        call = functools.partial(
            self._sync._quantize, model_path, output_path, config, progress_callback, force, cancel
        )
        future = loop.run_in_executor(None, call)
        # After a cancellation nobody awaits the run's own result ("cancelled"): collect it.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.cancel()
            raise

    async def quantize_diffusion_model_async(
        self,
        model_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        config: DiffusionQuantConfig | dict[str, Any] | None = None,
        progress_callback: ProgressCallback | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """``ArrowQuantV2.quantize_diffusion_model`` as an awaitable."""
        return await self._model_run(model_path, output_path, config, progress_callback, force)

    async def quantize_from_safetensors_async(
        self,
        safetensors_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        config: DiffusionQuantConfig | dict[str, Any] | None = None,
        progress_callback: ProgressCallback | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """``ArrowQuantV2.quantize_from_safetensors`` as an awaitable."""
        return await self._model_run(
            safetensors_path, output_path, config, progress_callback, force
        )

    async def quantize_batch_arrow_async(
        self, table: Any, config: DiffusionQuantConfig | dict[str, Any] | None = None, **kwargs: Any
    ) -> pa.Table:
        """``ArrowQuantV2.quantize_batch_arrow`` as an awaitable."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self._sync.quantize_batch_arrow, table, config, **kwargs)
        return await loop.run_in_executor(None, call)
