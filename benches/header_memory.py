"""Memory and time of reading hostile safetensors headers (the release CLI, real processes).

Crafts, in a scratch folder: a header describing TENSORS one-value tensors (default 1,000,000,
about 60 MB of JSON: under the format's 100 MB header limit), a tensor whose shape has 45 million
dimensions, and a header nested 10 million levels deep; and a one-tensor file, the baseline of
the same commands measured in the same run. For each case it runs `arrowquant sql` over
`safetensors_info('FILE')` and `arrowquant inspect FILE --header-only` and prints the peak
resident memory (the child's own, from wait4) and the wall time, medians of RUNS runs, and the
memory per tensor described above the baseline.

    .venv/bin/python benches/header_memory.py          (TENSORS=…, RUNS=… to change)

Needs the release binary (cargo build --release --bin arrowquant); ARROWQUANT_BIN=PATH runs
another build instead.
"""

import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("ARROWQUANT_BIN", ROOT / "target" / "release" / "arrowquant"))
TENSORS = int(os.environ.get("TENSORS", "1000000"))
RUNS = int(os.environ.get("RUNS", "3"))


def write_safetensors(path: Path, header: bytes, data: bytes) -> None:
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def many_tensors(path: Path, n: int) -> None:
    entries = ",".join(
        f'"t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}'
        for i in range(n)
    )
    write_safetensors(path, ("{" + entries + "}").encode(), bytes(4 * n))


def long_shape(path: Path, dims: int) -> None:
    shape = ",".join(["1"] * dims)
    header = f'{{"t":{{"dtype":"F32","shape":[{shape}],"data_offsets":[0,4]}}}}'
    write_safetensors(path, header.encode(), bytes(4))


def deep_nesting(path: Path, depth: int) -> None:
    write_safetensors(path, b'{"t":' + b"[" * depth + b"]" * depth + b"}", b"")


def one_tensor(path: Path) -> None:
    header = json.dumps({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    write_safetensors(path, header.encode(), bytes(4))


CASES = {
    "one tensor (baseline)": one_tensor,
    f"{TENSORS:,} tensors": lambda p: many_tensors(p, TENSORS),
    "a 45,000,000-dimension shape": lambda p: long_shape(p, 45_000_000),
    "nested 10,000,000 deep": lambda p: deep_nesting(p, 10_000_000),
}


def run(args: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, exit code) of one run. Linux carries the peak of the
    process that execs into the child's, so this process stays small: the files are made by
    a child of their own (`--make`)."""
    start = time.monotonic()
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, wall, child.returncode


def measure(args: list[str]) -> tuple[float, float, int]:
    runs = [run(args) for _ in range(RUNS)]
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        runs[-1][2],
    )


def main() -> int:
    if not BIN.exists():
        print(f"{BIN} is missing: cargo build --release --bin arrowquant", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.safetensors"
        print(f"{RUNS} runs each, medians; {os.cpu_count()} cores; {BIN}")
        baseline = {}
        for name in CASES:
            subprocess.run([sys.executable, __file__, "--make", name, str(path)], check=True)
            size = path.stat().st_size / 1e6
            commands = {
                "sql safetensors_info": [
                    str(BIN),
                    "sql",
                    "-c",
                    f"SELECT count(*) FROM safetensors_info('{path}')",
                ],
                "inspect --header-only": [str(BIN), "inspect", str(path), "--header-only"],
            }
            for label, args in commands.items():
                rss, wall, code = measure(args)
                outcome = "read" if code == 0 else f"refused (exit {code})"
                line = f"{name} ({size:.1f} MB): {label}: {outcome}, peak RSS {rss:.0f} MB, {wall:.2f} s"
                if name.startswith("one tensor"):
                    baseline[label] = rss
                elif name.endswith(" tensors") and label in baseline:
                    per = (rss - baseline[label]) * 1024 * 1024 / TENSORS
                    line += f", {per:.0f} bytes a tensor above the baseline"
                print(line, flush=True)
            path.unlink()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--make":
        CASES[sys.argv[2]](Path(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
