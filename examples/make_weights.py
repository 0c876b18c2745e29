"""Makes examples/data/weights.parquet: the small weights table the quickstart queries.

Seeded, so the file is the same on every run. Layers are initialised as PyTorch initialises
them (Kaiming-uniform for linear and conv weights, uniform(±1/sqrt(fan_in)) for biases,
ones for norm weights), one row per output channel, as the weights table of DESIGN.md lays
them out. Run from the repository root:

    .venv/bin/python examples/make_weights.py
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "data" / "weights.parquet"

# name, shape
LAYERS = [
    ("encoder.conv_in.weight", (32, 3, 3, 3)),
    ("encoder.conv_in.bias", (32,)),
    ("encoder.block.0.norm.weight", (32,)),
    ("encoder.block.0.conv.weight", (64, 32, 3, 3)),
    ("encoder.block.0.conv.bias", (64,)),
    ("mid.attn.to_q.weight", (128, 128)),
    ("mid.attn.to_k.weight", (128, 128)),
    ("mid.attn.to_v.weight", (128, 128)),
    ("mid.ff.proj.weight", (512, 128)),
    ("mid.ff.out.weight", (128, 512)),
    ("decoder.conv_out.weight", (3, 32, 3, 3)),
]


def init(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name.endswith("norm.weight"):
        return np.ones(shape, dtype=np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    if name.endswith(".bias"):
        bound = 1.0 / np.sqrt(fan_in)
    else:
        # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in)
        bound = np.sqrt(2.0 / 6.0) * np.sqrt(3.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def main() -> None:
    rng = np.random.default_rng(42)
    layer, row, shape_col, dtype, weights = [], [], [], [], []
    for name, shape in LAYERS:
        w = init(rng, name, shape)
        rows = w.reshape(shape[0], -1) if len(shape) > 1 else w.reshape(1, -1)
        for i, r in enumerate(rows):
            layer.append(name)
            row.append(i)
            shape_col.append(list(shape))
            dtype.append("F32")
            weights.append(r)
    table = pa.table(
        {
            "layer": pa.array(layer, pa.string()),
            "row": pa.array(row, pa.int64()),
            "shape": pa.array(shape_col, pa.list_(pa.int64())),
            "dtype": pa.array(dtype, pa.string()),
            "weights": pa.array(weights, pa.list_(pa.float32())),
        }
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, OUT, compression="zstd")
    print(f"{OUT}: {table.num_rows} rows, {sum(len(w) for w in weights)} weights")


if __name__ == "__main__":
    main()
