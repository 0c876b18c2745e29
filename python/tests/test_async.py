"""AsyncArrowQuantV2: awaitables that leave the event loop free and can be cancelled."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pyarrow as pa
import pytest

from arrow_quant_v2 import AsyncArrowQuantV2


def table(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(4096).astype(np.float32) for _ in range(4)]
    return pa.table(
        {
            "layer_name": [f"l{i}" for i in range(4)],
            "weights": pa.array(weights, pa.list_(pa.float32())),
        }
    )


def test_32_concurrent_calls_and_a_free_event_loop(bundled_model, tmp_path):
    async def main():
        quantizer = AsyncArrowQuantV2()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        calls = [quantizer.quantize_batch_arrow_async(table(i), bit_width=8) for i in range(30)]
        calls += [
            quantizer.quantize_diffusion_model_async(bundled_model, tmp_path / f"out{i}")
            for i in range(2)
        ]
        started = time.perf_counter()
        results = await asyncio.gather(*calls)
        elapsed = time.perf_counter() - started
        ticking.cancel()
        return results, ticks, elapsed

    results, ticks, elapsed = asyncio.run(main())
    assert len(results) == 32
    assert all(r.num_rows == 4 for r in results[:30])
    assert all(r["tensors"] == 212 for r in results[30:])
    # The loop kept running while the work went on: about one tick per 5 ms.
    assert ticks >= 0.3 * elapsed / 0.005, (ticks, elapsed)


def test_cancel_a_model_run(bundled_model, tmp_path):
    async def main():
        quantizer = AsyncArrowQuantV2()
        task = asyncio.create_task(
            quantizer.quantize_diffusion_model_async(bundled_model, tmp_path / "out")
        )
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # The worker thread finishes its cancellation shortly after; nothing is left half-written.
    for _ in range(200):
        leftovers = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
        if not leftovers:
            break
        time.sleep(0.05)
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_async_errors_are_python_exceptions(tmp_path):
    async def main():
        with pytest.raises(FileNotFoundError):
            await AsyncArrowQuantV2().quantize_diffusion_model_async(
                tmp_path / "none", tmp_path / "o"
            )
        with pytest.raises(ValueError):
            await AsyncArrowQuantV2().quantize_batch_arrow_async(table(0), bit_width=9)

    asyncio.run(main())
