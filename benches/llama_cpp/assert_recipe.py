"""Exits non-zero unless ArrowQuant's bit allocation beats llama-quantize's recipe at its size:
for each recipe R with both files in a compare.json ("llama.cpp R", llama.cpp's quantizer, not
pure; "arrowquant-alloc R", ArrowQuant --max-size at that file's tensor bytes), ArrowQuant's
tensor bytes must be at most llama.cpp's + 0.5 % and its embeddings nearer the F32 model's (mean
1 - cosine over the 512 inputs). What CI holds the allocation to (scripts/llama_check.sh). The 64
hand-written sentences' figure is printed too, but does not decide (see assert_closer.py).

    .venv-llama/bin/python benches/llama_cpp/assert_recipe.py WORK/compare.json [--recipe Q4_K_M]

With --recipe (repeatable) only those recipes are checked, and each must be there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SIZE_SLACK = 0.005


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("compare_json", type=Path)
    ap.add_argument("--recipe", action="append", default=[], help="check only this recipe")
    args = ap.parse_args()
    by = {r["label"]: r for r in json.loads(args.compare_json.read_text())["models"]}
    present = [lb.split(" ", 1)[1] for lb in by if lb.startswith("arrowquant-alloc ")]
    recipes = args.recipe or [r for r in present if f"llama.cpp {r}" in by]
    failures = []
    if not recipes:
        failures.append("no recipe with both a llama.cpp and an ArrowQuant allocated file")
    for r in recipes:
        ours, theirs = by.get(f"arrowquant-alloc {r}"), by.get(f"llama.cpp {r}")
        if ours is None or theirs is None:
            failures.append(f"{r}: missing {'arrowquant-alloc' if ours is None else 'llama.cpp'}")
            continue
        bad = [(m["label"], m.get("error")) for m in (ours, theirs) if "output" not in m]
        if bad:
            failures.append(f"{r}: did not run in llama.cpp: {bad}")
            continue
        ob, tb = ours["totals"]["tensor_bytes"], theirs["totals"]["tensor_bytes"]
        od, td = ours["output"]["mean_1_minus_cos"], theirs["output"]["mean_1_minus_cos"]
        os_, ts = (m["output"]["sentences_mean_1_minus_cos"] for m in (ours, theirs))
        size_ok = ob <= tb * (1 + SIZE_SLACK)
        print(
            f"{r}: tensor bytes: arrowquant {ob} <= llama.cpp {tb} + {100 * SIZE_SLACK:g} % "
            f"({100 * (ob / tb - 1):+.2f} %): {size_ok}"
        )
        print(
            f"{r}: mean 1-cos (512 inputs): arrowquant {od:.4g} < llama.cpp {td:.4g} "
            f"(ratio {od / td:.3f}): {od < td}"
        )
        print(
            f"{r}: mean 1-cos (64 sentences, not deciding): arrowquant {os_:.4g}, llama.cpp {ts:.4g}"
        )
        if not size_ok:
            failures.append(f"{r}: {ob} tensor bytes, more than llama.cpp's {tb} + 0.5 %")
        if not od < td:
            failures.append(f"{r}: mean 1-cos {od:.4g} not < llama.cpp's {td:.4g}")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
