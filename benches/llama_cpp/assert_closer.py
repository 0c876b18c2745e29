"""Exits non-zero unless every ArrowQuant file in a compare.json is closer to F32 than
llama.cpp's file of the same type: lower relative MSE over all tensors, and embeddings nearer the
F32 model's (mean 1 - cosine over the 512 inputs), at no more tensor bytes. What CI holds the
encoder to (scripts/llama_check.sh). The 64 hand-written sentences' figure is printed too, but
does not decide: over so few inputs (a few hundred token rows of the embedding table) two files
of nearly equal error can swap places.

    .venv-llama/bin/python benches/llama_cpp/assert_closer.py WORK/compare.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    results = json.loads(Path(sys.argv[1]).read_text())["models"]
    by_label = {r["label"]: r for r in results}
    failures, checked = [], 0
    for r in results:
        kind, _, qtype = r["label"].partition(" ")
        if kind != "arrowquant":
            continue
        theirs = by_label.get(f"llama.cpp {qtype}")
        if theirs is None:
            failures.append(f"{qtype}: no llama.cpp file to compare with")
            continue
        if "output" not in r:
            failures.append(f"{qtype}: ArrowQuant's file did not run: {r.get('error')}")
            continue
        checked += 1
        ours_t, theirs_t = r["totals"], theirs["totals"]
        pairs = [
            ("tensor bytes", ours_t["tensor_bytes"], theirs_t["tensor_bytes"], "<="),
            ("rel MSE", ours_t["all"]["rel_mse"], theirs_t["all"]["rel_mse"], "<"),
            (
                "mean 1-cos (512 inputs)",
                r["output"]["mean_1_minus_cos"],
                theirs["output"]["mean_1_minus_cos"],
                "<",
            ),
            (
                "mean 1-cos (64 sentences)",
                r["output"]["sentences_mean_1_minus_cos"],
                theirs["output"]["sentences_mean_1_minus_cos"],
                "<",
            ),
        ]
        for what, ours, other, op in pairs:
            ok = ours <= other if op == "<=" else ours < other
            print(f"{qtype}: {what}: arrowquant {ours:.4g} {op} llama.cpp {other:.4g}: {ok}")
            if not ok and "sentences" not in what:
                failures.append(f"{qtype}: {what} {ours:.4g} not {op} {other:.4g}")
    if checked == 0:
        failures.append("no ArrowQuant file was compared")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
