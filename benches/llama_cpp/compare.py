"""Compares quantized GGUFs of one model with its F32 GGUF, in the file and in llama.cpp.

    .venv-llama/bin/python benches/llama_cpp/compare.py F32.gguf \
        --model "llama.cpp q4_K=OUT/llama-q4_K.gguf" --model "arrowquant q4_K=OUT/aq-q4_K.gguf" \
        [--json OUT/compare.json] [--markdown OUT/compare.md] [--threads 2]

For every model: file size, tensor data bytes (and bits per weight over all elements), the
ggml type of every tensor, per-tensor MSE against the F32 tensor (dequantized with
gguf.quants.dequantize) and relative MSE (MSE / mean(x^2)), with element-weighted totals over
all tensors and over the tensors whose type changed; and the output distance: llama.cpp's
embeddings of common.corpus() (the 64 hand-written sentences of common.SENTENCES and 448 word
sequences drawn from the vocabulary with a fixed seed) against the F32 model's, as mean (and
max) 1 - cosine over all 512 inputs, the mean over the 64 sentences alone, and the mean
squared distance of the L2-normalised embeddings.

A file OUT.gguf.timing.json next to a model (written by benches/llama_cpp.sh) adds the
quantizer's wall seconds to its row. A model that fails to load or run in llama.cpp gets its
error in the table instead of the output numbers, and the run goes on.

Prints the markdown summary, writes the JSON (all numbers, per-tensor rows included) and the
markdown (summary + per-tensor tables side by side).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, embed, output_distance


def _f32_tensors(path: Path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise SystemExit(f"{path}: reference tensor {t.name} is {t.tensor_type.name}, not F32")
        out[t.name] = np.asarray(t.data, dtype=np.float32)
    return out


def tensor_rows(path: Path, ref: dict[str, np.ndarray]) -> tuple[list[dict], dict]:
    """Per-tensor rows (type, shape, bytes, MSE, relative MSE) and the file's totals."""
    r = gguf.GGUFReader(str(path))
    rows = []
    names = set()
    for t in r.tensors:
        names.add(t.name)
        if t.name not in ref:
            raise SystemExit(f"{path}: tensor {t.name} is not in the F32 reference")
        x = ref[t.name].astype(np.float64)
        q = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64).reshape(x.shape)
        sq = float(np.sum((q - x) ** 2))
        energy = float(np.sum(x * x))
        n = int(x.size)
        rows.append(
            {
                "name": t.name,
                "type": t.tensor_type.name,
                "shape_ne": [int(v) for v in t.shape],
                "n_elements": n,
                "n_bytes": int(t.n_bytes),
                "bits_per_weight": 8.0 * int(t.n_bytes) / n,
                "mse": sq / n,
                "rel_mse": sq / energy if energy > 0 else 0.0,
                "max_abs_err": float(np.max(np.abs(q - x))) if n else 0.0,
                "sha256": hashlib.sha256(np.asarray(t.data).tobytes()).hexdigest(),
                "_sq": sq,
                "_energy": energy,
            }
        )
    missing = sorted(set(ref) - names)
    if missing:
        raise SystemExit(f"{path}: tensors missing against the F32 reference: {missing}")
    rows.sort(key=lambda row: _tensor_order(row["name"]))

    def total(sel: list[dict]) -> dict:
        n = sum(x["n_elements"] for x in sel)
        sq = sum(x["_sq"] for x in sel)
        en = sum(x["_energy"] for x in sel)
        return {
            "n_tensors": len(sel),
            "n_elements": n,
            "n_bytes": sum(x["n_bytes"] for x in sel),
            "mse": sq / n if n else 0.0,
            "rel_mse": sq / en if en else 0.0,
        }

    totals = {
        "all": total(rows),
        "quantized": total([x for x in rows if x["type"] not in ("F32",)]),
        "types": dict(Counter(x["type"] for x in rows)),
        "tensor_bytes": sum(x["n_bytes"] for x in rows),
        "data_offset": int(r.data_offset),
    }
    for x in rows:
        del x["_sq"], x["_energy"]
    return rows, totals


def _tensor_order(name: str) -> tuple:
    parts = name.split(".")
    if parts[0] == "blk":
        return (1, int(parts[1]), ".".join(parts[2:]))
    return (0, 0, name)


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _fmt_types(types: dict) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(types.items(), key=lambda kv: -kv[1]))


def summary_markdown(results: list[dict]) -> str:
    head = (
        "| model | quantizer s | file size | tensor bytes | bits/weight | tensor types | "
        "MSE (all) | rel MSE (all) | rel MSE (quantized tensors) | mean 1−cos (512 inputs) | "
        "max 1−cos | mean 1−cos (64 sentences) | same as llama.cpp (type / bytes) |"
    )
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    by_label = {r["label"]: r for r in results}
    for r in results:
        t = r["totals"]
        same = "–"
        kind, _, qtype = r["label"].partition(" ")
        twin = by_label.get(f"llama.cpp {qtype}")
        if kind != "llama.cpp" and twin is not None:
            theirs = {x["name"]: x for x in twin["tensors"]}
            n_type = sum(x["type"] == theirs[x["name"]]["type"] for x in r["tensors"])
            n_bytes = sum(x["sha256"] == theirs[x["name"]]["sha256"] for x in r["tensors"])
            same = f"{n_type}/{len(r['tensors'])} / {n_bytes}/{len(r['tensors'])}"
        o = r.get("output") or {}
        secs = r.get("quantize_seconds")
        err = r.get("error")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    f"{secs:.2f}" if secs is not None else "–",
                    _fmt_bytes(r["file_size"]),
                    _fmt_bytes(t["tensor_bytes"]),
                    f"{8.0 * t['tensor_bytes'] / t['all']['n_elements']:.3f}",
                    _fmt_types(t["types"]),
                    f"{t['all']['mse']:.3e}",
                    f"{t['all']['rel_mse']:.3e}",
                    f"{t['quantized']['rel_mse']:.3e}",
                    f"{o['mean_1_minus_cos']:.3e}" if o else f"error: {err}",
                    f"{o['max_1_minus_cos']:.3e}" if o else "–",
                    f"{o['sentences_mean_1_minus_cos']:.3e}" if o else "–",
                    same,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def per_tensor_markdown(results: list[dict]) -> str:
    """One row per tensor, each model's type and relative MSE side by side (F32-kept rows of
    every model are folded into one line)."""
    labels = [r["label"] for r in results if r["label"] != "F32"]
    by = {r["label"]: {x["name"]: x for x in r["tensors"]} for r in results}
    names = [x["name"] for x in results[0]["tensors"]]
    head = "| tensor | ne | " + " | ".join(f"{lb} type | {lb} rel MSE" for lb in labels) + " |"
    lines = [head, "|" + "|".join(["---"] * (2 + 2 * len(labels))) + "|"]
    kept = []
    for n in names:
        cells = [by[lb][n] for lb in labels]
        if all(c["type"] == "F32" for c in cells):
            kept.append(n)
            continue
        shape = "×".join(str(v) for v in cells[0]["shape_ne"])
        lines.append(
            f"| {n} | {shape} | "
            + " | ".join(f"{c['type']} | {c['rel_mse']:.3e}" for c in cells)
            + " |"
        )
    lines.append("")
    lines.append(f"Kept F32 in every model ({len(kept)} tensors): " + ", ".join(kept))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("f32", type=Path, help="the F32 GGUF (reference)")
    ap.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a quantized GGUF to compare (repeat)",
    )
    ap.add_argument("--json", type=Path, help="write all numbers here")
    ap.add_argument("--markdown", type=Path, help="write the summary and per-tensor tables here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-run", action="store_true", help="file numbers only, skip llama.cpp")
    args = ap.parse_args()

    models = []
    for spec in args.model:
        label, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--model wants LABEL=PATH, got {spec!r}")
        models.append((label, Path(path)))

    t0 = time.perf_counter()
    ref = _f32_tensors(args.f32)
    ref_emb = None
    inputs = corpus()
    if not args.no_run:
        ref_emb = embed(args.f32, inputs, args.threads)

    results = []
    for label, path in [("F32", args.f32), *models]:
        rows, totals = tensor_rows(path, ref)
        res = {
            "label": label,
            "path": str(path),
            "file_size": path.stat().st_size,
            "tensors": rows,
            "totals": totals,
        }
        timing = Path(str(path) + ".timing.json")
        if timing.is_file():
            tj = json.loads(timing.read_text())
            res["quantize_seconds"] = tj.get("seconds")
            res["quantizer"] = tj.get("quantizer")
            res["quantize_record"] = tj
        if ref_emb is not None:
            if label == "F32":
                res["output"] = output_distance(ref_emb, ref_emb)
            else:
                try:
                    res["output"] = output_distance(ref_emb, embed(path, inputs, args.threads))
                except Exception as e:  # noqa: BLE001 (a model that fails is reported, not fatal)
                    res["error"] = f"{type(e).__name__}: {e}"
        results.append(res)
        o = res.get("output")
        print(
            f"compare: {label}: {totals['types']}, rel MSE {totals['all']['rel_mse']:.3e}"
            + (
                f", mean 1-cos {o['mean_1_minus_cos']:.3e}"
                if o
                else f", {res.get('error', 'not run')}"
            ),
            file=sys.stderr,
        )

    summary = summary_markdown(results)
    print(summary)
    if args.markdown:
        args.markdown.write_text(
            "## Summary\n\n"
            + summary
            + "\n\n## Per tensor\n\n"
            + per_tensor_markdown(results)
            + "\n"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "f32": str(args.f32),
                    "inputs": inputs,
                    "threads": args.threads,
                    "seconds": time.perf_counter() - t0,
                    "models": results,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
