"""The tables and the plot of benches/llama_cpp_recipes.sh: llama-quantize's recipes against
ArrowQuant's --recipe and its bit allocation at the same size, from WORK/compare.json and the
.timing.json / .summary.json / .log files next to the GGUFs.

    .venv-llama/bin/python benches/llama_cpp/recipe_table.py WORK [--sweep "0.55 0.6 ..."]

compare.json's labels name the files: "llama.cpp R" (llama.cpp's quantizer, recipe R, not pure),
"arrowquant R" (ArrowQuant --recipe R), "arrowquant-alloc R" (ArrowQuant --max-size at llama.cpp
R's tensor bytes) and "arrowquant-sweep F" (--max-size at F times llama.cpp Q4_K_M's bytes);
with benches/llama_cpp_recipes.sh's IMATRIX=1 also "arrowquant-imatrix-alloc R" and
"arrowquant-imatrix-sweep F", the same with --imatrix (a second curve, its own table and
crossing; without them the output is as before).
A sweep fraction that made no file (below the smallest mixture ArrowQuant's candidates reach) is
read from its .log.

Writes WORK/recipes.md (the tables), WORK/recipes.json (the same numbers) and WORK/recipes.svg
(size against mean 1 - cos on a log axis, plain SVG text) and prints the markdown. Distances are
mean 1 - cos of llama.cpp's embeddings against the F32 model's over the 512 inputs of
common.corpus() (and, where said, over the 64 hand-written sentences alone).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
from pathlib import Path

REFERENCE = "Q4_K_M"  # the recipe the sweep and the size goal are measured against
TOP = "Q6_K"  # llama.cpp's reference point for ArrowQuant at REFERENCE's size
SIZE_SLACK = 0.005  # ArrowQuant's allocated bytes may exceed llama.cpp's by this fraction
SIZE_GOAL = 0.70  # goal: ArrowQuant matches llama.cpp REFERENCE's distance at <= this fraction


def load(work: Path) -> dict[str, dict]:
    """compare.json's models by label, each with its timing record and ArrowQuant summary."""
    models = json.loads((work / "compare.json").read_text())["models"]
    out = {}
    for m in models:
        summary = Path(m["path"] + ".summary.json")
        if summary.is_file():
            try:
                m["summary"] = json.loads(summary.read_text())
            except json.JSONDecodeError:
                pass
        out[m["label"]] = m
    return out


def point(m: dict | None) -> dict | None:
    """The figures of one file: tensor bytes, distances, times."""
    if m is None:
        return None
    o = m.get("output") or {}
    rec = m.get("quantize_record") or {}
    alloc = (m.get("summary") or {}).get("allocation") or {}
    return {
        "label": m["label"],
        "path": m["path"],
        "tensor_bytes": m["totals"]["tensor_bytes"],
        "file_size": m["file_size"],
        "bits_per_weight": 8.0 * m["totals"]["tensor_bytes"] / m["totals"]["all"]["n_elements"],
        "types": m["totals"]["types"],
        "rel_mse": m["totals"]["all"]["rel_mse"],
        "mean_1_minus_cos": o.get("mean_1_minus_cos"),
        "sentences_mean_1_minus_cos": o.get("sentences_mean_1_minus_cos"),
        "max_1_minus_cos": o.get("max_1_minus_cos"),
        "error": m.get("error"),
        "seconds": rec.get("seconds"),
        "process_seconds": rec.get("process_seconds"),
        "arrowquant_seconds": (m.get("summary") or {}).get("seconds"),
        "budget_bytes": alloc.get("budget_bytes"),
        "allocation_error": alloc.get("error"),
        "allocation_lower_bound": alloc.get("lower_bound"),
    }


def crossing(curve: list[dict], target: float) -> dict:
    """The smallest size at which the curve (points sorted by bytes) reaches target distance,
    log-linear between the points around the first one at or below it."""
    pts = [p for p in curve if p["mean_1_minus_cos"] is not None]
    if not pts:
        return {"status": "no points", "bytes": None}
    if pts[0]["mean_1_minus_cos"] <= target:
        return {"status": "below the smallest sweep point", "bytes": None, "at_most": pts[0]}
    for a, b in itertools.pairwise(pts):
        if b["mean_1_minus_cos"] <= target:
            la, lb, lt = (
                math.log(p) for p in (a["mean_1_minus_cos"], b["mean_1_minus_cos"], target)
            )
            t = (la - lt) / (la - lb)
            size = a["tensor_bytes"] + t * (b["tensor_bytes"] - a["tensor_bytes"])
            return {"status": "interpolated", "bytes": size, "between": [a["label"], b["label"]]}
    return {"status": "not reached", "bytes": None}


def match(curve: list[dict], ref: dict) -> dict:
    """Where the curve reaches the reference file's distance, as a fraction of its bytes."""
    c = crossing(curve, ref["mean_1_minus_cos"])
    c["target_mean_1_minus_cos"] = ref["mean_1_minus_cos"]
    c["reference_bytes"] = ref["tensor_bytes"]
    if c["bytes"] is not None:
        c["fraction"] = c["bytes"] / ref["tensor_bytes"]
        c["goal_met"] = c["fraction"] <= SIZE_GOAL
    elif c["status"] == "below the smallest sweep point":
        c["fraction_at_most"] = c["at_most"]["tensor_bytes"] / ref["tensor_bytes"]
        c["at_most"] = c["at_most"]["label"]
        c["goal_met"] = c["fraction_at_most"] <= SIZE_GOAL
    else:
        c["goal_met"] = False
    c["goal_fraction"] = SIZE_GOAL
    return c


def sweep_failures(work: Path, fractions: list[str], have: set[str]) -> list[dict]:
    """The sweep fractions that made no file, with the reason from their log."""
    out = []
    for f in fractions:
        if f"arrowquant-sweep {f}" in have:
            continue
        log = work / f"arrowquant-sweep-{f}.gguf.log"
        text = log.read_text().strip() if log.is_file() else "no log"
        reason = text.splitlines()[-1] if text else "no output"
        m = re.search(r"reach (\d+) to (\d+) bytes", reason)
        out.append(
            {
                "fraction": float(f),
                "reason": reason.removeprefix("arrowquant: "),
                "smallest_mixture_bytes": int(m.group(1)) if m else None,
            }
        )
    return out


def fmt_mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e6:.3f} MB"


def fmt_d(x: float | None) -> str:
    return "–" if x is None else f"{x:.3e}"


def fmt_s(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def build(work: Path, fractions: list[str]) -> dict:
    by = load(work)
    recipes = [lb.split(" ", 1)[1] for lb in by if lb.startswith("arrowquant-alloc ")]
    rows = []
    for r in recipes:
        ll, rec, al = (
            point(by.get(f"{k} {r}")) for k in ("llama.cpp", "arrowquant", "arrowquant-alloc")
        )
        if ll is None:
            continue
        row = {"recipe": r, "llama.cpp": ll, "arrowquant_recipe": rec, "arrowquant_alloc": al}
        if al is not None:
            row["alloc_bytes_over_llama"] = al["tensor_bytes"] / ll["tensor_bytes"] - 1.0
            row["alloc_within_size"] = al["tensor_bytes"] <= ll["tensor_bytes"] * (1 + SIZE_SLACK)
            row["alloc_over_llama_distance"] = ratio(al["mean_1_minus_cos"], ll["mean_1_minus_cos"])
            row["alloc_closer"] = bool(
                row["alloc_within_size"]
                and al["mean_1_minus_cos"] is not None
                and ll["mean_1_minus_cos"] is not None
                and al["mean_1_minus_cos"] < ll["mean_1_minus_cos"]
            )
            row["alloc_over_llama_time"] = ratio(al["process_seconds"], ll["process_seconds"])
        if rec is not None:
            row["recipe_over_llama_distance"] = ratio(
                rec["mean_1_minus_cos"], ll["mean_1_minus_cos"]
            )
        rows.append(row)

    ref = point(by.get(f"llama.cpp {REFERENCE}"))
    top = point(by.get(f"llama.cpp {TOP}"))
    sweep = [
        point(m) | {"fraction": float(lb.split(" ", 1)[1])}
        for lb, m in by.items()
        if lb.startswith("arrowquant-sweep ")
    ]
    sweep.sort(key=lambda p: p["fraction"])
    curve = sorted(
        [p for p in sweep] + [row["arrowquant_alloc"] for row in rows if row["arrowquant_alloc"]],
        key=lambda p: p["tensor_bytes"],
    )
    imatrix = [
        point(m) | {"fraction": float(lb.split(" ", 1)[1])}
        for lb, m in by.items()
        if lb.startswith("arrowquant-imatrix-sweep ")
    ]
    imatrix += [
        point(m) | {"recipe": lb.split(" ", 1)[1]}
        for lb, m in by.items()
        if lb.startswith("arrowquant-imatrix-alloc ")
    ]
    imatrix.sort(key=lambda p: p["tensor_bytes"])
    out = {
        "work": str(work),
        "reference": REFERENCE,
        "size_slack": SIZE_SLACK,
        "rows": rows,
        "sweep": sweep,
        "sweep_failed": sweep_failures(work, fractions, set(by)),
        "curve": [p["label"] for p in curve],
        "llama_cpp_top": top,
    }
    if ref is not None and ref["mean_1_minus_cos"] is not None:
        c = match(curve, ref)
        out["match_reference"] = c
        if imatrix:
            out["imatrix_curve"] = imatrix
            out["imatrix_match_reference"] = match(imatrix, ref)
        at_ref = point(by.get(f"arrowquant-alloc {REFERENCE}"))
        if at_ref is not None and top is not None:
            out["at_reference_size"] = {
                "arrowquant_alloc": at_ref,
                "llama_cpp_top": top,
                "arrowquant_over_top": ratio(at_ref["mean_1_minus_cos"], top["mean_1_minus_cos"]),
                "goal_met": (at_ref["mean_1_minus_cos"] or math.inf)
                <= (top["mean_1_minus_cos"] or -math.inf),
            }
    return out


def match_sentence(c: dict, curve: str) -> str:
    goal = f"goal ≤ {100 * SIZE_GOAL:.0f} %: {'met' if c['goal_met'] else 'not met'}"
    target = fmt_d(c["target_mean_1_minus_cos"])
    if c["bytes"] is not None:
        return (
            f"{curve} reaches llama.cpp {REFERENCE}'s distance "
            f"({target}) at {fmt_mb(c['bytes'])} of tensor data, "
            f"{100 * c['fraction']:.1f} % of {REFERENCE}'s {fmt_mb(c['reference_bytes'])} "
            f"(log-linear between {c['between'][0]} and {c['between'][1]}; {goal})."
        )
    if c["status"] == "below the smallest sweep point":
        return (
            f"{curve} is at or below llama.cpp {REFERENCE}'s distance "
            f"({target}) already at its smallest point, {c['at_most']} "
            f"({100 * c['fraction_at_most']:.1f} % of {REFERENCE}'s bytes): the match is "
            f"below the smallest sweep point ({goal})."
        )
    return (
        f"{curve} does not reach llama.cpp {REFERENCE}'s distance "
        f"({target}) in the sizes measured ({c['status']}; {goal})."
    )


def imatrix_markdown(res: dict) -> list[str]:
    """The --imatrix curve's table and crossing, against the data-free curve's points."""
    pts = res.get("imatrix_curve")
    if not pts:
        return []
    plain = {p["fraction"]: p for p in res["sweep"]}
    plain |= {row["recipe"]: row["arrowquant_alloc"] for row in res["rows"]}
    lines = [
        "",
        "### ArrowQuant's allocation with the importance matrix (--imatrix, make_imatrix.py)",
        "",
        (
            "| point | budget bytes | tensor bytes | bits/weight | 1−cos (512 inputs) "
            "| 1−cos (64 sentences) | without --imatrix 1−cos (512) | ratio | ArrowQuant s |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in pts:
        key = p.get("fraction", p.get("recipe"))
        name = f"{key:g} of {REFERENCE}" if "fraction" in p else f"{key}'s bytes"
        twin = plain.get(key) or {}
        r = ratio(p["mean_1_minus_cos"], twin.get("mean_1_minus_cos"))
        lines.append(
            f"| {name} | {p['budget_bytes'] or 0:,} | {p['tensor_bytes']:,} "
            f"| {p['bits_per_weight']:.3f} | {fmt_d(p['mean_1_minus_cos'])} "
            f"| {fmt_d(p['sentences_mean_1_minus_cos'])} | {fmt_d(twin.get('mean_1_minus_cos'))} "
            f"| {'–' if r is None else f'{r:.3f}'} | {fmt_s(p['process_seconds'])} |"
        )
    c = res.get("imatrix_match_reference")
    if c:
        lines += ["", match_sentence(c, "ArrowQuant's allocated curve with --imatrix")]
    return lines


def markdown(res: dict) -> str:
    head = (
        "| recipe | llama.cpp tensor bytes | llama.cpp 1−cos (512 inputs) | llama.cpp 1−cos "
        "(64 sentences) | ArrowQuant --recipe 1−cos (512) | ArrowQuant allocated tensor bytes "
        "(vs llama.cpp) | ArrowQuant allocated 1−cos (512) | ArrowQuant allocated 1−cos (64) "
        "| allocated ÷ llama.cpp distance | --recipe ÷ llama.cpp distance "
        "| llama.cpp s (call / process) | ArrowQuant allocated s | ArrowQuant --recipe s "
        "| time ratio (allocated ÷ llama.cpp process) |"
    )
    lines = [
        (
            "Distances: mean 1 − cos of llama.cpp's embeddings against the F32 model's. Times: "
            "llama.cpp's llama_model_quantize call / its whole process; ArrowQuant's whole process "
            "(file to file). Both quantizers on the same threads."
        ),
        "",
        head,
        "|" + "|".join(["---"] * (head.count("|") - 1)) + "|",
    ]
    for row in res["rows"]:
        ll, rec, al = row["llama.cpp"], row["arrowquant_recipe"], row["arrowquant_alloc"]
        rec = rec or {}
        al = al or {}
        over = row.get("alloc_bytes_over_llama")
        bytes_cell = "–"
        if al:
            bytes_cell = f"{al['tensor_bytes']:,} ({100 * over:+.2f} %)"
        r_d, r_rd, r_t = (
            row.get("alloc_over_llama_distance"),
            row.get("recipe_over_llama_distance"),
            row.get("alloc_over_llama_time"),
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    row["recipe"],
                    f"{ll['tensor_bytes']:,}",
                    fmt_d(ll["mean_1_minus_cos"]),
                    fmt_d(ll["sentences_mean_1_minus_cos"]),
                    fmt_d(rec.get("mean_1_minus_cos")),
                    bytes_cell,
                    fmt_d(al.get("mean_1_minus_cos")),
                    fmt_d(al.get("sentences_mean_1_minus_cos")),
                    "–" if r_d is None else f"{r_d:.3f}",
                    "–" if r_rd is None else f"{r_rd:.3f}",
                    f"{fmt_s(ll['seconds'])} / {fmt_s(ll['process_seconds'])}",
                    fmt_s(al.get("process_seconds")),
                    fmt_s(rec.get("process_seconds")),
                    "–" if r_t is None else f"{r_t:.1f}×",
                ]
            )
            + " |"
        )
    top = res.get("llama_cpp_top")
    if top:
        lines += [
            "",
            (
                f"llama.cpp {TOP} (reference point): {top['tensor_bytes']:,} tensor bytes, "
                f"1−cos {fmt_d(top['mean_1_minus_cos'])} (512 inputs), "
                f"{fmt_d(top['sentences_mean_1_minus_cos'])} (64 sentences)."
            ),
        ]
    lines += ["", f"### ArrowQuant's allocation at fractions of llama.cpp {REFERENCE}'s bytes", ""]
    lines += [
        (
            "| fraction | budget bytes | tensor bytes | bits/weight | 1−cos (512 inputs) "
            "| 1−cos (64 sentences) | ArrowQuant s |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    ref_bytes = (res.get("match_reference") or {}).get("reference_bytes")
    rows = [(p["fraction"], p) for p in res["sweep"]]
    rows += [(f["fraction"], f) for f in res["sweep_failed"]]
    for frac, p in sorted(rows, key=lambda fp: fp[0]):
        if "reason" in p:
            small = p["smallest_mixture_bytes"]
            why = p["reason"]
            if small is not None:
                why = f"below the smallest mixture of the candidates, {small:,} bytes"
                if ref_bytes:
                    why += f" ({small / ref_bytes:.3f} of {REFERENCE})"
            lines.append(
                f"| {frac:g} | {int(frac * ref_bytes) if ref_bytes else 0:,} | no file: {why} | | | | |"
            )
            continue
        lines.append(
            f"| {frac:g} | {p['budget_bytes'] or 0:,} | {p['tensor_bytes']:,} "
            f"| {p['bits_per_weight']:.3f} | {fmt_d(p['mean_1_minus_cos'])} "
            f"| {fmt_d(p['sentences_mean_1_minus_cos'])} | {fmt_s(p['process_seconds'])} |"
        )
    c = res.get("match_reference")
    if c:
        lines.append("")
        lines.append(match_sentence(c, "ArrowQuant's allocated curve"))
    a = res.get("at_reference_size")
    if a:
        ours, top = a["arrowquant_alloc"], a["llama_cpp_top"]
        lines.append(
            f"At {REFERENCE}'s size ({fmt_mb(ours['tensor_bytes'])}) ArrowQuant's allocation has "
            f"1−cos {fmt_d(ours['mean_1_minus_cos'])}; llama.cpp {TOP} "
            f"({fmt_mb(top['tensor_bytes'])}) has {fmt_d(top['mean_1_minus_cos'])}: ratio "
            f"{a['arrowquant_over_top']:.3f} (goal ≤ 1: {'met' if a['goal_met'] else 'not met'})."
        )
    lines += imatrix_markdown(res)
    return "\n".join(lines)


# ---- the plot: plain SVG text ----------------------------------------------------------------

W, H = 760, 460
ML, MR, MT, MB = 78, 24, 40, 58
COLOURS = {"llama": "#d95f02", "alloc": "#1b6ac9", "recipe": "#1b9e77", "imatrix": "#7b3fb5"}


def _nice_step(span: float, n: int = 6) -> float:
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def svg(res: dict) -> str:
    ll_pts = [row["llama.cpp"] for row in res["rows"]]
    if res.get("llama_cpp_top") and all(
        p["label"] != res["llama_cpp_top"]["label"] for p in ll_pts
    ):
        ll_pts.append(res["llama_cpp_top"])
    rec_pts = [row["arrowquant_recipe"] for row in res["rows"] if row["arrowquant_recipe"]]
    curve = sorted(
        res["sweep"] + [row["arrowquant_alloc"] for row in res["rows"] if row["arrowquant_alloc"]],
        key=lambda p: p["tensor_bytes"],
    )
    imat = [p for p in res.get("imatrix_curve") or [] if p["mean_1_minus_cos"]]
    everything = [p for p in ll_pts + rec_pts + curve + imat if p["mean_1_minus_cos"]]
    xs = [p["tensor_bytes"] / 1e6 for p in everything]
    ys = [p["mean_1_minus_cos"] for p in everything]
    step = _nice_step(max(xs) - min(xs) or 1.0)
    x0 = math.floor(min(xs) / step - 0.25) * step
    x1 = math.ceil(max(xs) / step + 0.25) * step
    ly0, ly1 = math.log10(min(ys)), math.log10(max(ys))
    pad = 0.08 * max(ly1 - ly0, 0.3)
    ly0, ly1 = ly0 - pad, ly1 + pad
    pw, ph = W - ML - MR, H - MT - MB

    def X(mb: float) -> float:
        return ML + (mb - x0) / (x1 - x0) * pw

    def Y(d: float) -> float:
        return MT + (ly1 - math.log10(d)) / (ly1 - ly0) * ph

    o = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="12">'
        ),
        f'<rect width="{W}" height="{H}" fill="white"/>',
        (
            f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
            "all-MiniLM-L6-v2 in llama.cpp: size against distance from F32</text>"
        ),
    ]
    # y grid and ticks: 1, 2, 5 per decade (only the decades' labels when the span is wide)
    span = ly1 - ly0
    mults = (1, 2, 5) if span < 2.5 else (1,)
    for e in range(math.floor(ly0), math.ceil(ly1) + 1):
        for m in mults:
            v = m * 10.0**e
            if not (ly0 <= math.log10(v) <= ly1):
                continue
            y = Y(v)
            o.append(f'<line x1="{ML}" y1="{y:.1f}" x2="{ML + pw}" y2="{y:.1f}" stroke="#e3e3e3"/>')
            o.append(f'<line x1="{ML - 5}" y1="{y:.1f}" x2="{ML}" y2="{y:.1f}" stroke="#333"/>')
            label = f"{m}e{e}" if m != 1 else f"1e{e}"
            o.append(f'<text x="{ML - 8}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    # x grid and ticks
    n = round((x1 - x0) / step)
    for i in range(n + 1):
        v = x0 + i * step
        x = X(v)
        o.append(f'<line x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{MT + ph}" stroke="#e3e3e3"/>')
        o.append(
            f'<line x1="{x:.1f}" y1="{MT + ph}" x2="{x:.1f}" y2="{MT + ph + 5}" stroke="#333"/>'
        )
        o.append(f'<text x="{x:.1f}" y="{MT + ph + 19}" text-anchor="middle">{v:g}</text>')
    o.append(f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    o.append(
        f'<text x="{ML + pw / 2}" y="{H - 14}" text-anchor="middle" font-size="13">'
        "tensor data (MB)</text>"
    )
    o.append(
        f'<text transform="translate(18 {MT + ph / 2}) rotate(-90)" text-anchor="middle" '
        'font-size="13">mean 1 − cos vs F32 (512 inputs, log)</text>'
    )
    # llama.cpp's reference distance, dotted
    c = res.get("match_reference")
    if c:
        y = Y(c["target_mean_1_minus_cos"])
        o.append(
            f'<line x1="{ML}" y1="{y:.1f}" x2="{ML + pw}" y2="{y:.1f}" '
            f'stroke="{COLOURS["llama"]}" stroke-dasharray="3 4" stroke-width="1"/>'
        )
    # ArrowQuant's allocated curve
    cp = [p for p in curve if p["mean_1_minus_cos"]]
    path = " ".join(f"{X(p['tensor_bytes'] / 1e6):.1f},{Y(p['mean_1_minus_cos']):.1f}" for p in cp)
    o.append(
        f'<polyline points="{path}" fill="none" stroke="{COLOURS["alloc"]}" stroke-width="2"/>'
    )
    for p in cp:
        o.append(
            f'<circle cx="{X(p["tensor_bytes"] / 1e6):.1f}" cy="{Y(p["mean_1_minus_cos"]):.1f}" '
            f'r="3.5" fill="{COLOURS["alloc"]}"/>'
        )
    # ArrowQuant's allocated curve with --imatrix, dashed
    if imat:
        path = " ".join(
            f"{X(p['tensor_bytes'] / 1e6):.1f},{Y(p['mean_1_minus_cos']):.1f}" for p in imat
        )
        o.append(
            f'<polyline points="{path}" fill="none" stroke="{COLOURS["imatrix"]}" '
            'stroke-width="2" stroke-dasharray="6 3"/>'
        )
        for p in imat:
            o.append(
                f'<circle cx="{X(p["tensor_bytes"] / 1e6):.1f}" '
                f'cy="{Y(p["mean_1_minus_cos"]):.1f}" r="3.5" fill="{COLOURS["imatrix"]}"/>'
            )
    # ArrowQuant --recipe: diamonds
    for p in rec_pts:
        if not p["mean_1_minus_cos"]:
            continue
        x, y = X(p["tensor_bytes"] / 1e6), Y(p["mean_1_minus_cos"])
        o.append(
            f'<path d="M{x:.1f} {y - 6:.1f}L{x + 6:.1f} {y:.1f}L{x:.1f} {y + 6:.1f}'
            f'L{x - 6:.1f} {y:.1f}Z" fill="none" stroke="{COLOURS["recipe"]}" '
            'stroke-width="1.8"/>'
        )
    # llama.cpp: squares, named; each label in the first of four places beside its point that
    # overlaps no label placed before it and no other marker (text width guessed at 7 px a letter)
    placed = sorted(
        (X(p["tensor_bytes"] / 1e6), Y(p["mean_1_minus_cos"]), p["label"].split(" ", 1)[1])
        for p in ll_pts
        if p["mean_1_minus_cos"]
    )
    markers = [(X(p["tensor_bytes"] / 1e6), Y(p["mean_1_minus_cos"])) for p in everything]
    boxes: list[tuple[float, float, float, float]] = []
    for x, y, name in placed:
        o.append(
            f'<rect x="{x - 4.5:.1f}" y="{y - 4.5:.1f}" width="9" height="9" '
            f'fill="{COLOURS["llama"]}"/>'
        )
        tw = 7.0 * len(name)
        best = None
        for dx, dy in ((7, -7), (-7, -7), (7, 15), (-7, 15)):
            bx0 = x + dx if dx > 0 else x + dx - tw
            box = (bx0, y + dy - 11, bx0 + tw, y + dy + 2)
            inside = ML <= box[0] and box[2] <= ML + pw and MT <= box[1] and box[3] <= MT + ph
            hit = any(
                box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes
            ) or any(
                box[0] - 5 < mx < box[2] + 5 and box[1] - 5 < my < box[3] + 5
                for mx, my in markers
                if (mx, my) != (x, y)
            )
            if inside and not hit:
                best = (dx, dy, box)
                break
        dx, dy, box = best or (7, -7, (x + 7, y - 18, x + 7 + tw, y - 5))
        boxes.append(box)
        o.append(
            f'<text x="{x + dx:.1f}" y="{y + dy:.1f}" '
            f'text-anchor="{"start" if dx > 0 else "end"}" fill="{COLOURS["llama"]}">{name}</text>'
        )
    # legend, in the corner of the plot that covers the fewest points and curve samples
    lw, lh = (282, 103) if imat else (282, 84)
    dense = [(X(p["tensor_bytes"] / 1e6), Y(p["mean_1_minus_cos"])) for p in everything]
    for a, b in [*itertools.pairwise(cp), *itertools.pairwise(imat)]:
        xa, ya = X(a["tensor_bytes"] / 1e6), Y(a["mean_1_minus_cos"])
        xb, yb = X(b["tensor_bytes"] / 1e6), Y(b["mean_1_minus_cos"])
        dense += [(xa + t / 20 * (xb - xa), ya + t / 20 * (yb - ya)) for t in range(21)]
    # labels count by their corners and centre, so a legend never hides one
    dense += [(x, y) for b in boxes for x in (b[0], (b[0] + b[2]) / 2, b[2]) for y in (b[1], b[3])]
    corners = [
        (ML + pw - lw - 8, MT + 8),
        (ML + 8, MT + ph - lh - 8),
        (ML + pw - lw - 8, MT + ph - lh - 8),
        (ML + 8, MT + 8),
    ]

    def covered(c: tuple[float, float]) -> int:
        return sum(
            c[0] - 12 <= x <= c[0] + lw + 12 and c[1] - 12 <= y <= c[1] + lh + 12 for x, y in dense
        )

    bx, by = min(corners, key=covered)
    o.append(
        f'<rect x="{bx}" y="{by}" width="{lw}" height="{lh}" fill="white" '
        'fill-opacity="0.9" stroke="#bbb"/>'
    )
    lx, ly = bx + 18, by + 14
    o.append(
        f'<rect x="{lx - 4.5}" y="{ly - 4.5}" width="9" height="9" fill="{COLOURS["llama"]}"/>'
        f'<text x="{lx + 16}" y="{ly + 4}">llama.cpp (llama-quantize recipes)</text>'
    )
    ly += 19
    o.append(
        f'<line x1="{lx - 9}" y1="{ly}" x2="{lx + 9}" y2="{ly}" '
        f'stroke="{COLOURS["alloc"]}" stroke-width="2"/>'
        f'<circle cx="{lx}" cy="{ly}" r="3.5" fill="{COLOURS["alloc"]}"/>'
        f'<text x="{lx + 16}" y="{ly + 4}">ArrowQuant, bit allocation (--max-size)</text>'
    )
    if imat:
        ly += 19
        o.append(
            f'<line x1="{lx - 9}" y1="{ly}" x2="{lx + 9}" y2="{ly}" '
            f'stroke="{COLOURS["imatrix"]}" stroke-width="2" stroke-dasharray="6 3"/>'
            f'<circle cx="{lx}" cy="{ly}" r="3.5" fill="{COLOURS["imatrix"]}"/>'
            f'<text x="{lx + 16}" y="{ly + 4}">ArrowQuant, bit allocation + --imatrix</text>'
        )
    ly += 19
    o.append(
        f'<path d="M{lx} {ly - 6}L{lx + 6} {ly}L{lx} {ly + 6}L{lx - 6} {ly}Z" fill="none" '
        f'stroke="{COLOURS["recipe"]}" stroke-width="1.8"/>'
        f'<text x="{lx + 16}" y="{ly + 4}">ArrowQuant --recipe (same tensor types)</text>'
    )
    ly += 19
    o.append(
        f'<line x1="{lx - 9}" y1="{ly}" x2="{lx + 9}" y2="{ly}" stroke="{COLOURS["llama"]}" '
        'stroke-dasharray="3 4"/>'
        f'<text x="{lx + 16}" y="{ly + 4}">llama.cpp {REFERENCE}\'s distance</text>'
    )
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="the bench's WORK_DIR (holds compare.json)")
    ap.add_argument("--sweep", default="", help="the sweep fractions asked for, space-separated")
    args = ap.parse_args()
    res = build(args.work, args.sweep.split())
    md = markdown(res)
    (args.work / "recipes.md").write_text(
        f"## llama-quantize's recipes against ArrowQuant\n\n{md}\n\n![plot](recipes.svg)\n"
    )
    (args.work / "recipes.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.work / "recipes.svg").write_text(svg(res))
    print(md)


if __name__ == "__main__":
    main()
