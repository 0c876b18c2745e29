"""Quantizes an F32 GGUF with llama.cpp's own quantizer (llama_model_quantize through
llama-cpp-python). With --type, pure: every tensor llama.cpp allows to be quantized gets the
type's base ggml type (no per-tensor mixture), and only the shape fallback applies. With --ftype,
any of llama.cpp's file types (LLAMA_FTYPE_MOSTLY_*), pure unless --no-pure: then llama.cpp's
own per-tensor mixture, the file llama-quantize writes for that file type.

    .venv-llama/bin/python benches/llama_cpp/quantize_llama.py F32.gguf OUT.gguf --type q4_K
    .venv-llama/bin/python benches/llama_cpp/quantize_llama.py F32.gguf OUT.gguf \
        --ftype Q4_K_M --no-pure
    [--threads 2] [--json TIMING.json]

Types: q4_K (LLAMA_FTYPE_MOSTLY_Q4_K_M; with pure, _S and _M both mean Q4_K), q6_K, iq4_xs,
q3_K (LLAMA_FTYPE_MOSTLY_Q3_K_M; with pure, S/M/L all mean Q3_K), and the 32-block types
q4_0, q5_0, q8_0, iq4_nl for reference. File types: Q4_K_M, Q3_K_S, IQ4_XS, ... (the name after
LLAMA_FTYPE_MOSTLY_, or the whole constant name). The timing record holds the
llama_model_quantize call's seconds and the output's tensor data bytes (sum over its tensors).
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
FTYPE_PREFIX = "LLAMA_FTYPE_MOSTLY_"


def ftype_constant(name: str) -> str:
    """Q4_K_M or LLAMA_FTYPE_MOSTLY_Q4_K_M -> the llama_cpp constant's name, checked to exist."""
    import llama_cpp

    const = name if name.startswith(FTYPE_PREFIX) else FTYPE_PREFIX + name
    if not hasattr(llama_cpp, const):
        known = sorted(n[len(FTYPE_PREFIX) :] for n in dir(llama_cpp) if n.startswith(FTYPE_PREFIX))
        raise SystemExit(f"unknown file type {name}; known: {', '.join(known)}")
    return const


def tensor_bytes(path: Path) -> int:
    """The sum of the data bytes of every tensor in a GGUF."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def quantize(
    src: Path,
    dst: Path,
    qtype: str,
    threads: int = 2,
    pure: bool = True,
    ftype_name: str | None = None,
) -> dict:
    """Runs llama_model_quantize(src -> dst) with the bench type qtype's file type (or the file
    type constant ftype_name, when given); returns the timing and the ftype used."""
    import llama_cpp

    if ftype_name is None:
        if qtype not in FTYPES:
            raise SystemExit(f"unknown type {qtype}; known: {', '.join(FTYPES)}")
        ftype_name = FTYPES[qtype]
    ftype = int(getattr(llama_cpp, ftype_name))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.pure = pure
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
        "pure": pure,
        "nthread": threads,
        "seconds": seconds,
        "path": str(dst),
        "quantizer": f"llama.cpp (llama-cpp-python {getattr(llama_cpp, '__version__', '?')})",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--type", choices=sorted(FTYPES), help="a bench type, always pure")
    which.add_argument("--ftype", help="a llama.cpp file type: Q4_K_M, IQ4_XS, ...")
    ap.add_argument(
        "--no-pure",
        action="store_true",
        help="with --ftype: llama.cpp's per-tensor mixture instead of one type",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the timing record here")
    args = ap.parse_args()
    if args.type is not None:
        if args.no_pure:
            ap.error("--no-pure goes with --ftype (--type is always pure)")
        rec = quantize(args.src, args.dst, args.type, args.threads)
        name = args.type
    else:
        const = ftype_constant(args.ftype)
        name = const[len(FTYPE_PREFIX) :]
        rec = quantize(
            args.src, args.dst, name, args.threads, pure=not args.no_pure, ftype_name=const
        )
        rec["tensor_bytes"] = tensor_bytes(args.dst)
    print(
        f"quantize_llama: {name} ({rec['ftype']}, {'pure' if rec['pure'] else 'not pure'}, "
        f"{args.threads} threads) {rec['seconds']:.2f} s -> {args.dst} "
        f"({args.dst.stat().st_size} bytes)"
    )
    if args.json:
        args.json.write_text(json.dumps(rec, indent=2) + "\n")


if __name__ == "__main__":
    main()
