"""Writes the tensors of a safetensors model folder as one F32 GGUF file with gguf-py, tensor
by tensor (one in memory at a time), for benches/gguf_scan.sh.

    .venv/bin/python benches/safetensors_to_gguf.py MODEL_DIR OUT.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from safetensors import safe_open


def main() -> None:
    model, out = Path(sys.argv[1]), Path(sys.argv[2])
    files = sorted(model.glob("*.safetensors"))
    w = GGUFWriter(str(out), "llama")
    names = []
    for f in files:
        with safe_open(f, framework="numpy") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                shape = st.get_slice(name).get_shape()
                names.append((f, name))
                w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for f, name in names:
        with safe_open(f, framework="numpy") as st:
            w.write_tensor_data(st.get_tensor(name).astype(np.float32, copy=False))
    w.close()
    print(f"{out}: {out.stat().st_size} bytes, {len(names)} tensors")


if __name__ == "__main__":
    main()
