"""Writes a synthetic sharded checkpoint for the end-to-end benchmark.

    python benches/make_synthetic_model.py SIZE_GB OUT_DIR

Tensors are f32 [4096, 4096] (64 MiB) weights with Gaussian values and their 1-D biases, in
shards of at most 2 GiB with a `model.safetensors.index.json`, plus a `config.json`. The files
are streamed to disk chunk by chunk, so an 8 GB model needs little memory. The safetensors
layout (an 8-byte header length, a JSON header, then the data) is written directly because the
`safetensors` package would need every tensor in memory at once.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np

ROWS = COLS = 4096
SHARD_BYTES = 2 << 30


def main():
    size_gb = float(sys.argv[1])
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    weight_bytes = ROWS * COLS * 4
    count = max(1, round(size_gb * 1e9 / weight_bytes))
    per_shard = max(1, SHARD_BYTES // weight_bytes)
    shards = [list(range(i, min(i + per_shard, count))) for i in range(0, count, per_shard)]
    rng = np.random.default_rng(7)
    weight_map = {}
    for s, layers in enumerate(shards):
        name = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for i in layers:
            for suffix, shape in (("weight", [ROWS, COLS]), ("bias", [ROWS])):
                size = int(np.prod(shape)) * 4
                key = f"layers.{i}.proj.{suffix}"
                header[key] = {
                    "dtype": "F32",
                    "shape": shape,
                    "data_offsets": [offset, offset + size],
                }
                weight_map[key] = name
                offset += size
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(out / name, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for i in layers:
                f.writelines(
                    rng.standard_normal((512, COLS), dtype=np.float32).tobytes()
                    for _ in range(ROWS // 512)
                )
                f.write((rng.standard_normal(ROWS, dtype=np.float32) * 0.01).tobytes())
    index = {
        "metadata": {"total_size": count * (weight_bytes + ROWS * 4)},
        "weight_map": weight_map,
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (out / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    )
    print(
        f"{out}: {count} weights of {ROWS}x{COLS} f32 in {len(shards)} shards, "
        f"{count * (weight_bytes + ROWS * 4) / 1e9:.2f} GB"
    )


if __name__ == "__main__":
    main()
