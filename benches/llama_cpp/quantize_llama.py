"""Quantizes an F32 GGUF with llama.cpp's own quantizer (llama_model_quantize through
llama-cpp-python), pure: every tensor llama.cpp allows to be quantized gets the type's base ggml
type (no per-tensor mixture), and only the shape fallback applies.

    .venv-llama/bin/python benches/llama_cpp/quantize_llama.py F32.gguf OUT.gguf --type q4_K
    [--threads 2] [--json TIMING.json]

Types: q4_K (LLAMA_FTYPE_MOSTLY_Q4_K_M; with pure, _S and _M both mean Q4_K), q6_K, iq4_xs,
q3_K (LLAMA_FTYPE_MOSTLY_Q3_K_M; with pure, S/M/L all mean Q3_K), and the 32-block types
q4_0, q5_0, q8_0, iq4_nl for reference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# bench type name -> name of the llama_ftype constant in llama_cpp (values are looked up there)
FTYPES = {
    "q4_K": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
    "q3_K": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
}


def quantize(src: Path, dst: Path, qtype: str, threads: int = 2) -> dict:
    """Runs llama_model_quantize(src -> dst) pure; returns the timing and the ftype used."""
    import llama_cpp

    if qtype not in FTYPES:
        raise SystemExit(f"unknown type {qtype}; known: {', '.join(FTYPES)}")
    ftype_name = FTYPES[qtype]
    ftype = int(getattr(llama_cpp, ftype_name))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.pure = True
    dst.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src} -> {dst}, {ftype_name}) returned {rc}")
    return {
        "type": qtype,
        "ftype": ftype_name,
        "ftype_value": ftype,
        "pure": True,
        "nthread": threads,
        "seconds": seconds,
        "path": str(dst),
        "quantizer": f"llama.cpp (llama-cpp-python {getattr(llama_cpp, '__version__', '?')})",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--type", required=True, choices=sorted(FTYPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the timing record here")
    args = ap.parse_args()
    rec = quantize(args.src, args.dst, args.type, args.threads)
    print(
        f"quantize_llama: {args.type} ({rec['ftype']}, pure, {args.threads} threads) "
        f"{rec['seconds']:.2f} s -> {args.dst} ({args.dst.stat().st_size} bytes)"
    )
    if args.json:
        args.json.write_text(json.dumps(rec, indent=2) + "\n")


if __name__ == "__main__":
    main()
