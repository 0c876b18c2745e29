"""CI check: a GGUF loads in llama.cpp and its output is close to the F32 model's.

    .venv-llama/bin/python benches/llama_cpp/check_loads.py MODEL.gguf F32.gguf --max-distance X
        [--threads 2] [--json RESULT.json]

Loads MODEL.gguf in llama.cpp (llama-cpp-python) as an embedding model, embeds the fixed
sentences of common.SENTENCES, does the same with F32.gguf, and exits 0 only if the mean
(1 - cosine) between the two sets of embeddings is below X. Exit 1: too far; exit 2: the model
did not load or run.

For all-MiniLM-L6-v2 with llama.cpp's own pure quantizations (llama-cpp-python 0.3.36) the
measured means are 6.3e-4 (q6_K), 9.8e-3 (q4_K), 2.1e-2 (iq4_xs) and 4.1e-2 (q3_K); see
benches/llama_cpp.sh. A limit of about 1.5x llama.cpp's own number for the type is a fair gate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SENTENCES, embed, output_distance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("f32", type=Path)
    ap.add_argument(
        "--max-distance",
        type=float,
        required=True,
        help="largest mean (1 - cosine) against F32 that passes",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    for p in (args.model, args.f32):
        if not p.is_file():
            print(f"check_loads: FAILED: {p} does not exist", file=sys.stderr)
            sys.exit(2)
    ref = embed(args.f32, SENTENCES, args.threads)
    try:
        got = embed(args.model, SENTENCES, args.threads)
    except Exception as e:  # noqa: BLE001 (any failure to load or run is the finding)
        print(
            f"check_loads: FAILED: {args.model} did not load/run in llama.cpp: "
            f"{type(e).__name__}: {e}",
            file=sys.stderr,
        )
        sys.exit(2)
    d = output_distance(ref, got)
    ok = d["mean_1_minus_cos"] < args.max_distance
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": str(args.model),
                    "f32": str(args.f32),
                    "max_distance": args.max_distance,
                    "ok": ok,
                    **d,
                },
                indent=1,
            )
            + "\n"
        )
    print(
        f"check_loads: {args.model} loads in llama.cpp; over {d['n_sentences']} sentences mean "
        f"1-cos vs F32 {d['mean_1_minus_cos']:.3e} (max {d['max_1_minus_cos']:.3e}, mean "
        f"squared distance normalised {d['mean_sq_dist_normalised']:.3e}); limit "
        f"{args.max_distance:g} -> {'OK' if ok else 'FAILED'}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
