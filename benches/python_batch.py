"""quantize_batch_arrow from Python: 100 layers of 4 MB (1,048,576 f32 Gaussian values each) in
one call, medians of RUNS calls per setting, against a plain copy of the same 400 MB measured in
the same run, and against the same work driven from Rust (`_native.bench_engine`: the table
imported once, the engine timed inside Rust, no boundary crossing per run).
`cargo bench --bench batch` runs the engine from a Rust benchmark binary too.

Build the extension in release first, then run from the repository root:

    PROFILE=release scripts/build-python.sh
    RUNS=15 .venv/bin/python benches/python_batch.py
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import numpy as np
import pyarrow as pa

from arrow_quant_v2 import ArrowQuantV2, _native

LAYERS = 100
LAYER_VALUES = 1 << 20
RUNS = int(os.environ.get("RUNS", "15"))
SETTINGS = [
    ("q4_0", 4, 32, "q4_0"),
    ("int4_g64_minmax", 4, 64, "asym_minmax"),
    ("int4_g64_search", 4, 64, "asym"),
    ("int8_g64_search", 8, 64, "asym"),
]


def median_ms(call) -> float:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main():
    rng = np.random.default_rng(7)
    values = (rng.standard_normal(LAYERS * LAYER_VALUES) * 0.02).astype(np.float32)
    offsets = pa.array(np.arange(0, LAYERS + 1) * LAYER_VALUES, pa.int32())
    weights = pa.ListArray.from_arrays(offsets, pa.array(values))
    table = pa.table(
        {"layer_name": [f"layer.{i}.weight" for i in range(LAYERS)], "weights": weights}
    )
    quantizer = ArrowQuantV2()
    copy = median_ms(lambda: values.copy())
    print(f"{LAYERS} layers x {LAYER_VALUES * 4 / 1e6:.1f} MB, medians of {RUNS} runs")
    print(f"baseline/copy          {copy:8.1f} ms")
    for name, bits, group, scheme in SETTINGS:
        out = quantizer.quantize_batch_arrow(table, bit_width=bits, group_size=group, scheme=scheme)
        assert out.num_rows == LAYERS
        call = functools.partial(
            quantizer.quantize_batch_arrow, table, bit_width=bits, group_size=group, scheme=scheme
        )
        ms = median_ms(call)
        settings = {"bit_width": bits, "group_size": str(group), "scheme": scheme}
        rust = statistics.median(_native.bench_engine(table, settings, RUNS)) * 1e3
        cosine = min(out.column("cosine_similarity").to_pylist())
        print(
            f"{name:22s} python {ms:7.1f} ms  rust {rust:7.1f} ms  "
            f"(python/rust {ms / rust:5.3f}, {ms / copy:4.1f}x copy, min cosine {cosine:.5f})"
        )


if __name__ == "__main__":
    main()
