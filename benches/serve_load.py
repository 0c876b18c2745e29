"""Load test of `arrowquant serve` over loopback, and what a SIGKILL in the middle of a job leaves.

1. Starts the server on free loopback ports with a fresh root, target/serve-load/root, holding a
   copy of the bundled model (tiny-unet) and a synthetic ~200 MB safetensors model (big/).
2. Warm-up: every kind of request a few times from one client; the server's RSS after it is the
   reference of the memory bound.
3. For each level (1, 8 and 32 clients by default; threads, each with its own ADBC Flight SQL
   connection) a fixed count of requests (--requests, default 200) of mixed SQL taken in turn:
   cheap (`SELECT $1 + 1` prepared with a parameter, `adbc_get_objects`), medium (a count of the
   model's rows, `safetensors_info`), heavy (`quantize` over three tensors picked by layer,
   `quant_error` over the mid block). Every answer is checked against the warm-up's. Per level:
   errors, throughput, p50/p95/p99 latency, the server's RSS before and after (VmRSS).
4. Crash test: an HTTP job on the synthetic model, SIGKILL of the server while the job runs and
   its partial output exists, then the output is checked to look unfinished, and a new server
   given the same job to the same output must clean the dead process's partial and finish.

Exits non-zero on any failed request, a wrong answer, the memory bound broken, or a crash-test
check failing. Prints a Markdown table and writes it, with the machine, binary, date and the
command, to benches/serve_load.md (--markdown). Every wait is bounded; the servers it started
are killed on the way out whatever happens, and the root removed (--keep keeps it; the servers'
output stays in target/serve-load/logs).

    .venv/bin/python benches/serve_load.py [--requests 200] [--levels 1,8,32]

ARROWQUANT_BIN=PATH runs another build than target/release/arrowquant.
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from adbc_driver_flightsql import DatabaseOptions
from adbc_driver_flightsql import dbapi as flightsql
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("ARROWQUANT_BIN", REPO / "target" / "release" / "arrowquant"))
WORK = REPO / "target" / "serve-load"
MIB = 1 << 20

# The memory bound: RSS after every level at most RSS_FACTOR x the RSS after the warm-up plus
# RSS_SLACK. The warm-up runs one query at a time; 32 clients run up to
# --max-concurrent-queries (8) at once, each holding its own batches, and 32 HTTP/2
# connections hold their own buffers; the allocator keeps freed pages for reuse. None of
# that grows with the count of requests, a leak does: 1.5x + 64 MiB leaves room for the first
# and catches a leak of some 200 KB a request over the default 600 requests (the Markdown
# says what it catches over the run's own count).
RSS_FACTOR = 1.5
RSS_SLACK = 64 * MIB

# Heavy requests: three of tiny-unet's largest conv and attention weights, 145 rows.
QUANTIZE_LAYERS = (
    "up_blocks.0.resnets.0.conv1.weight",
    "up_blocks.0.resnets.1.conv1.weight",
    "mid_block.attentions.0.to_k.weight",
)
QUANTIZE_SQL = (
    "SELECT layer, row, quantize(weights, 4) AS q FROM read_safetensors('tiny-unet') "
    "WHERE layer IN ({})".format(", ".join(f"'{layer}'" for layer in QUANTIZE_LAYERS))
)
QUANT_ERROR_SQL = (
    "SELECT layer, min(quant_error(weights, 4, 32, 'q4_0')['cosine']) AS worst "
    "FROM read_safetensors('tiny-unet') WHERE layer LIKE 'mid_block.%weight' "
    "GROUP BY layer ORDER BY layer"
)
COUNT_SQL = "SELECT count(*) AS n FROM read_safetensors('tiny-unet')"
INFO_SQL = (
    "SELECT count(*) AS tensors, sum(bytes) AS bytes, sum(rows) AS rows "
    "FROM safetensors_info('tiny-unet')"
)

# The crash test's job: iq4_xs with a cosine no 4-bit format reaches, so every tensor is
# redone wider until kept: about 2.5 s for 200 MB in a release build (a first pass of some
# 0.8 s and five more), time to catch it running.
CRASH_CONFIG = {"scheme": "iq4_xs", "min_cosine": 0.99999}


class Failure(Exception):
    """A check of the run failed: the message says which."""


def rss_bytes(pid: int) -> dict:
    """VmRSS and VmHWM of `pid`, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class Server:
    """One `arrowquant serve` process, its stdout and stderr in files under `logs`."""

    def __init__(self, root: Path, logs: Path, name: str, extra: list[str]):
        self.name = name
        self.out_path = logs / f"{name}.stdout"
        self.err_path = logs / f"{name}.stderr"
        self.cmd = [
            str(BIN),
            "serve",
            "--flight",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--root",
            str(root),
            *extra,
        ]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        try:
            self.grpc, self.http = self._addresses(timeout=60)
        except BaseException:
            self.kill()
            raise

    def _addresses(self, timeout: float) -> tuple[str, str]:
        pattern = re.compile(r"Flight SQL on (grpc://\S+), HTTP on (http://\S+), root")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text(errors="replace")
            found = pattern.search(text)
            if found:
                return found.group(1), found.group(2)
            if self.proc.poll() is not None:
                raise Failure(f"{self.name} exited {self.proc.returncode}: {self.stderr()}")
            time.sleep(0.05)
        raise Failure(f"{self.name} printed no address line within {timeout} s")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace").strip()

    def rss(self) -> dict:
        return rss_bytes(self.pid)

    def request(self, method: str, path: str, body=None, timeout: float = 10) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.http + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.http + "/metrics", timeout=10) as answer:
            return answer.read().decode()

    def kill(self, sig: int = signal.SIGKILL, wait: float = 20) -> int | None:
        """Sends `sig` unless it has exited, then reaps it (a zombie would still look running
        to the next server's stale-partial check); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=wait)


def connect(uri: str, timeout: float):
    options = {
        DatabaseOptions.TIMEOUT_QUERY.value: str(timeout),
        DatabaseOptions.TIMEOUT_FETCH.value: str(timeout),
    }
    return flightsql.connect(uri, db_kwargs=options, autocommit=True)


class Client:
    """One connection and cursor; each request kind returns what is checked."""

    def __init__(self, uri: str, timeout: float):
        self.conn = connect(uri, timeout)
        self.cur = self.conn.cursor()

    def close(self):
        for thing in (self.cur, self.conn):
            with contextlib.suppress(flightsql.Error, RuntimeError):
                thing.close()

    def query(self, sql: str, params=None):
        self.cur.execute(sql, params)
        return self.cur.fetch_arrow_table()

    def param(self, i: int):
        value = self.query("SELECT $1 + 1 AS v", (i,)).column(0).to_pylist()
        return value == [i + 1] or f"SELECT $1 + 1 with $1 = {i}: got {value}"

    def objects(self, _i: int):
        return self.conn.adbc_get_objects(depth="all").read_all().to_pylist()

    def count(self, _i: int):
        return self.query(COUNT_SQL).to_pylist()

    def info(self, _i: int):
        return self.query(INFO_SQL).to_pylist()

    def quantize(self, _i: int):
        table = self.query(QUANTIZE_SQL)
        # The rows and the bytes of codes: the same answer every time, in any row order.
        codes = table.column("q").combine_chunks().field("codes")
        return [table.num_rows, pc.sum(pc.binary_length(codes)).as_py()]

    def quant_error(self, _i: int):
        return self.query(QUANT_ERROR_SQL).to_pylist()


# (name, class); request i is KINDS[i % len(KINDS)].
KINDS = [
    ("param", "cheap"),
    ("objects", "cheap"),
    ("count", "medium"),
    ("info", "medium"),
    ("quantize", "heavy"),
    ("quant_error", "heavy"),
]


def first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:400] if text else type(e).__name__


def run_one(client: Client, kind: str, i: int, expected: dict):
    """One request: (seconds, error or None)."""
    start = time.perf_counter()
    try:
        got = getattr(client, kind)(i)
    except Exception as e:  # noqa: BLE001 (every failure is a result of the run)
        return time.perf_counter() - start, first_line(e)
    seconds = time.perf_counter() - start
    if got is True:
        return seconds, None
    if isinstance(got, str):
        return seconds, got
    if kind in expected and got != expected[kind]:
        return seconds, f"{kind}: answer differs from the warm-up's: {str(got)[:200]}"
    return seconds, None


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_level(server: Server, clients: int, requests: int, expected: dict, args) -> dict:
    """`requests` requests from `clients` threads, each with its own connection."""
    lock = threading.Lock()
    next_index = [0]
    results: list[tuple[str, float, str | None]] = []
    ready = threading.Barrier(clients + 1, timeout=60)
    deadline = [math.inf]
    setup_errors: list[str] = []

    def worker():
        client = None
        try:
            client = Client(server.grpc, args.request_timeout)
        except Exception as e:  # noqa: BLE001 (counted as an error of the level)
            setup_errors.append(f"connect: {first_line(e)}")
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            if client:
                client.close()
            return
        try:
            while client is not None:
                with lock:
                    i = next_index[0]
                    if i >= requests or time.monotonic() > deadline[0]:
                        return
                    next_index[0] += 1
                kind = KINDS[i % len(KINDS)][0]
                seconds, error = run_one(client, kind, i, expected)
                with lock:
                    results.append((kind, seconds, error))
        finally:
            if client:
                client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    rss_before = server.rss()
    cpu_before = cpu_seconds(server.pid), own_cpu_seconds()
    for t in threads:
        t.start()
    ready.wait()
    start = time.monotonic()
    limit = max(1.0, min(args.level_timeout, args.ends - start))
    deadline[0] = start + limit
    for t in threads:
        t.join(timeout=max(0.0, deadline[0] + args.request_timeout + 10 - time.monotonic()))
    wall = time.monotonic() - start
    stuck = sum(t.is_alive() for t in threads)
    rss_after = server.rss()
    server_cpu = cpu_seconds(server.pid) - cpu_before[0]
    client_cpu = own_cpu_seconds() - cpu_before[1]

    with lock:
        done = list(results)
        issued = next_index[0]
    errors = [e for _, _, e in done if e] + setup_errors
    if issued < requests:
        errors.append(f"only {issued} of {requests} requests issued in {limit:.0f} s")
    if stuck:
        errors.append(f"{stuck} client threads still waiting on an answer at the time limit")
    latencies = sorted(s for _, s, e in done if e is None)
    by_kind = {}
    for kind, _ in KINDS:
        ks = sorted(s for k, s, e in done if k == kind and e is None)
        by_kind[kind] = (len(ks), percentile(ks, 50), percentile(ks, 95))
    return {
        "clients": clients,
        "requests": len(done),
        "errors": errors,
        "wall": wall,
        "throughput": len(done) / wall if wall > 0 else math.nan,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "max": latencies[-1] if latencies else math.nan,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "rss_before": rss_before["VmRSS"],
        "rss_after": rss_after["VmRSS"],
        "hwm_after": rss_after["VmHWM"],
        "by_kind": by_kind,
    }


def warm_up(server: Server, rounds: int, args) -> dict:
    """Every kind `rounds` times from one client; the answers later requests must give."""
    client = Client(server.grpc, args.request_timeout)
    expected = {}
    try:
        for r in range(rounds):
            for kind, _ in KINDS:
                got = getattr(client, kind)(r)
                if isinstance(got, str):
                    raise Failure(f"warm-up: {got}")
                if kind in expected and expected[kind] != got:
                    raise Failure(f"warm-up: {kind} answered differently: {got} / {expected[kind]}")
                if got is not True:
                    expected[kind] = got
    finally:
        client.close()
    return expected


def make_root(root: Path, big_mb: int) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    shutil.copytree(REPO / "examples" / "models" / "tiny-unet", root / "tiny-unet")
    # Gaussian f32 tensors of 2048 x 2048 (16 MiB each); written from one reused array.
    (root / "big").mkdir()
    rng = np.random.default_rng(7)
    tensors = {}
    for i in range(max(1, round(big_mb * MIB / (16 * MIB)))):
        tensors[f"blocks.{i}.weight"] = rng.standard_normal((2048, 2048), dtype=np.float32)
    save_file(tensors, str(root / "big" / "model.safetensors"))


def partials_of(root: Path, name: str) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith(f".{name}.partial-"))


def describe(path: Path) -> str:
    if not path.exists():
        return f"{path.name}: absent"
    if path.is_dir():
        files = sorted(path.rglob("*"))
        listing = (
            ", ".join(f"{f.relative_to(path)} ({f.stat().st_size} B)" for f in files) or "empty"
        )
        return f"{path.name}/: {listing}"
    return f"{path.name}: {path.stat().st_size} B"


def wait_job(server: Server, job_id: str, until, timeout: float, poll: float = 0.02) -> dict:
    deadline = time.monotonic() + timeout
    view = {}
    while time.monotonic() < deadline:
        status, view = server.request("GET", f"/v1/jobs/{job_id}")
        if status != 200:
            raise Failure(f"GET /v1/jobs/{job_id}: {status} {view}")
        if until(view) or view.get("state") in ("done", "failed", "cancelled"):
            return view
        time.sleep(poll)
    raise Failure(f"job {job_id} did not get there in {timeout} s: {view}")


def crash_test(server: Server, root: Path, logs: Path, args) -> tuple[list[str], list[str]]:
    """SIGKILL in the middle of a job: (findings, failures). Kills `server`."""
    findings, failures = [], []
    out_name = "crash-out"
    out = root / out_name
    body = {"model": "big", "output": out_name, "config": CRASH_CONFIG}
    status, answer = server.request("POST", "/v1/jobs", body)
    if status != 201:
        raise Failure(f"POST /v1/jobs {body}: {status} {answer}")
    job = answer["id"]
    submitted = time.monotonic()

    deadline = submitted + args.crash_timeout
    view, partial, seen = {}, [], {}
    # How long requests take while the job runs: they share the server's runtime with it.
    get_job = f"GET /v1/jobs/{job}"
    probes = {get_job: [], "GET /healthz": [], "SELECT $1 + 1": []}
    probe_errors = []

    def look():
        nonlocal view, partial
        start = time.perf_counter()
        status, view = server.request("GET", f"/v1/jobs/{job}", timeout=args.request_timeout)
        probes[get_job].append(time.perf_counter() - start)
        if status != 200:
            raise Failure(f"{get_job}: {status} {view}")
        partial = partials_of(root, out_name)
        now = time.monotonic() - submitted
        if view.get("state") == "running":
            seen.setdefault("running", now)
        if partial:
            seen.setdefault("partial", now)
        if view.get("state") in ("done", "failed", "cancelled"):
            raise Failure(
                f"crash job ended ({view.get('state')}: {view.get('error')}) before it was "
                "caught running with a partial output: give a bigger model (--big-mb)"
            )

    while time.monotonic() < deadline:
        look()
        if view.get("state") == "running" and partial:
            break
        time.sleep(0.02)
    else:
        raise Failure(f"crash job not running with a partial in {args.crash_timeout} s: {view}")
    # Then probes, for --crash-delay seconds or until the job is past its first pass.
    client = Client(server.grpc, args.request_timeout)
    try:
        until = min(time.monotonic() + args.crash_delay, deadline)
        i = 0
        while time.monotonic() < until:
            start = time.perf_counter()
            try:
                status, _ = server.request("GET", "/healthz", timeout=args.request_timeout)
                if status != 200:
                    probe_errors.append(f"/healthz answered {status}")
            except OSError as e:
                probe_errors.append(f"/healthz: {first_line(e)}")
            probes["GET /healthz"].append(time.perf_counter() - start)
            seconds, error = run_one(client, "param", i, {})
            if error:
                probe_errors.append(error)
            probes["SELECT $1 + 1"].append(seconds)
            look()
            i += 1
            if view.get("progress", {}).get("step", 0) >= 2:
                break
    finally:
        client.close()
    during = ", ".join(
        f"{name} {len(v)} x: median {ms(statistics.median(v))} ms, max {ms(max(v))} ms"
        for name, v in probes.items()
        if v
    )
    failures += [f"probe during the job: {e}" for e in probe_errors]
    look()
    progress = view.get("progress", {})
    findings.append(
        f"job {job} seen running {seen.get('running', math.nan):.2f} s after it was submitted, "
        f"its partial {seen.get('partial', math.nan):.2f} s after; killed at "
        f"{time.monotonic() - submitted:.2f} s, in phase '{progress.get('phase')}' (pass "
        f"{progress.get('step')}, {100 * progress.get('fraction', 0):.0f} %), partial "
        + "; ".join(describe(p) for p in partial)
    )
    findings.append(f"requests while the job ran: {during}")
    killed_pid = server.pid
    code = server.kill(signal.SIGKILL)
    findings.append(f"server {killed_pid} SIGKILLed (exit status {code})")

    # What a reader of the root sees now.
    leftovers = sorted(p.name for p in root.iterdir() if out_name in p.name)
    findings.append(f"entries naming {out_name} after the kill: {leftovers}")
    if out.exists() or out.is_symlink():
        failures.append(f"{out} exists after the kill: {describe(out)}")
    if (out / "manifest.json").exists():
        failures.append(f"{out}/manifest.json exists after the kill")
    for p in partials_of(root, out_name):
        if not p.name.startswith(f".{out_name}.partial-{killed_pid}"):
            failures.append(f"a partial not named after the killed server's pid: {p.name}")
    if not partials_of(root, out_name):
        findings.append("no partial left behind (it was removed or never written)")

    # A new server on the same root: the job starts afresh (jobs live in memory), and the
    # same output must be accepted and the dead server's partial cleaned.
    second = Server(root, logs, "server-after-kill", args.server_args)
    try:
        status, listing = second.request("GET", "/v1/jobs")
        findings.append(f"new server {second.pid}: GET /v1/jobs -> {status} {listing}")
        body = {"model": "big", "output": out_name, "config": {}}
        status, answer = second.request("POST", "/v1/jobs", body)
        if status != 201:
            failures.append(f"new server refused the same output: {status} {answer}")
        else:
            final = wait_job(
                second, answer["id"], lambda v: v.get("state") == "done", args.crash_timeout, 0.1
            )
            findings.append(
                f"same output resubmitted (config {{}}): {final.get('state')} in "
                f"{final.get('seconds') or 0:.2f} s"
                + (f", error: {final.get('error')}" if final.get("error") else "")
            )
            if final.get("state") != "done":
                failures.append(f"resubmitted job {final.get('state')}: {final.get('error')}")
            if not (out / "manifest.json").is_file():
                failures.append(f"{out}/manifest.json missing after the resubmitted job")
            stale = [p.name for p in partials_of(root, out_name)]
            if stale:
                failures.append(f"partials still there after the new run: {stale}")
            findings.append(f"after it: {describe(out)}; partials left: {stale}")
        said = [line for line in second.stderr().splitlines() if "partial" in line]
        findings.append("new server's stderr about partials: " + (" | ".join(said) or "nothing"))
        code = second.kill(signal.SIGTERM)
        stopped = "arrowquant serve: stopped" in second.out_path.read_text()
        findings.append(f"new server SIGTERM: exit status {code}, 'stopped' printed: {stopped}")
        if code != 0:
            failures.append(f"new server exited {code} on SIGTERM: {second.stderr()[-500:]}")
    finally:
        second.kill()
    return findings, failures


def machine() -> dict:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    head = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h %ct"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    built = BIN.stat().st_mtime
    mtime = datetime.datetime.fromtimestamp(built, datetime.timezone.utc)
    commit = head[0] if head else "unknown"
    if len(head) == 2:
        when = datetime.datetime.fromtimestamp(int(head[1]), datetime.timezone.utc)
        commit += f" (committed {when:%Y-%m-%d %H:%M} UTC)"
        if built < int(head[1]):
            commit += ", newer than the binary"
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "load": " ".join(load),
        "nproc": os.cpu_count(),
        "cpu": model,
        "commit": commit,
        "binary": f"{BIN} (modified {mtime:%Y-%m-%d %H:%M} UTC)",
    }


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{1000 * seconds:.1f}"


def mib(n: int) -> str:
    return f"{n / MIB:.1f}"


def tables(levels: list[dict]) -> str:
    header = (
        "| clients | requests | errors | req/s | p50 ms | p95 ms | p99 ms | max ms "
        "| server CPU s | client CPU s | RSS before MiB | RSS after MiB |"
    )
    rows = [header, "| --- " * 12 + "|"]
    for lv in levels:
        rows.append(
            f"| {lv['clients']} | {lv['requests']} | {len(lv['errors'])} | "
            f"{lv['throughput']:.1f} | {ms(lv['p50'])} | {ms(lv['p95'])} | {ms(lv['p99'])} | "
            f"{ms(lv['max'])} | {lv['server_cpu']:.1f} | {lv['client_cpu']:.1f} | "
            f"{mib(lv['rss_before'])} | {mib(lv['rss_after'])} |"
        )
    rows += [
        "",
        "p50 / p95 ms by kind of request:",
        "",
        "| clients | " + " | ".join(f"{k} ({c})" for k, c in KINDS) + " |",
        "| --- |" + " --- |" * len(KINDS),
    ]
    for lv in levels:
        cells = [f"{ms(lv['by_kind'][k][1])} / {ms(lv['by_kind'][k][2])}" for k, _ in KINDS]
        rows.append(f"| {lv['clients']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_markdown(path: Path, report: dict) -> None:
    m = report["machine"]
    total = sum(lv["requests"] for lv in report["levels"])
    leak = (report["rss_bound"] - report["rss_warm"]) / max(1, total)
    memory = (
        f"Server RSS after the warm-up: {mib(report['rss_warm'])} MiB; bound for every level: "
        f"{RSS_FACTOR}x that + {RSS_SLACK // MIB} MiB = {mib(report['rss_bound'])} MiB; "
        f"peak (VmHWM) {mib(report.get('hwm', 0))} MiB. The warm-up runs one query at a time, "
        "the 32-client level up to `--max-concurrent-queries` (8) at once over 32 HTTP/2 "
        "connections, and the allocator keeps freed pages for reuse: none of that grows with "
        f"the count of requests, a leak does, and one of {leak / 1024:.0f} KiB a request over "
        f"these {total} requests breaks the bound."
    )
    crash = (
        f"A job on a synthetic {report['big_mb']} MB model (config "
        f"`{json.dumps(CRASH_CONFIG)}`: every tensor redone wider until kept, a few seconds of "
        "work), the server killed with SIGKILL once the job is running and its partial output "
        "exists:"
    )
    lines = [
        "# `arrowquant serve` under load",
        "",
        "Written by `benches/serve_load.py` (do not edit by hand: run it again). Loopback only;",
        "the clients are threads of one Python process, each with its own ADBC Flight SQL",
        "connection, on the same cores as the server. Requests are taken in turn from: "
        + ", ".join(f"`{k}` ({c})" for k, c in KINDS)
        + ". Latency is from the call to the last batch received (nearest-rank percentiles). "
        "Server CPU is the server process's user + system time during the level, client CPU "
        "this script's: where the client's is as large as the server's, the clients, not the "
        "server, bound the throughput.",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}, total time {report['seconds']:.0f} s",
        f"- machine: {m['nproc']} cores, {m['cpu']}; load average at the start {m['load']}",
        f"- binary: {m['binary']}; the work tree's HEAD at the run: {m['commit']}",
        f"- server flags: `{' '.join(report['server_args']) or '(defaults)'}`",
        "",
        tables(report["levels"]),
        "",
        memory,
        "",
        "Requests the server counted (`/metrics`): " + report.get("server_counts", "not read"),
        "",
        "## SIGKILL during a job",
        "",
        crash,
        "",
        *[f"- {f}" for f in report["crash_findings"]],
        "",
        "Result: " + ("; ".join(report["crash_failures"]) or "every check passed."),
        "",
    ]
    if report["failures"]:
        lines += ["## Failures", "", *[f"- {f}" for f in report["failures"]], ""]
    path.write_text("\n".join(lines))


def server_counts(server: Server) -> str:
    wanted = ("arrowquant_flight_requests_total", "arrowquant_errors_total")
    found = []
    for line in server.metrics().splitlines():
        if line.startswith(wanted) and not line.endswith(" 0"):
            found.append(line)
    return "; ".join(f"`{line}`" for line in found) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per level")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--warmup-rounds", type=int, default=3)
    parser.add_argument("--level-timeout", type=float, default=120, help="seconds per level")
    parser.add_argument(
        "--time-limit", type=float, default=360, help="seconds for all the levels together"
    )
    parser.add_argument("--request-timeout", type=float, default=60, help="seconds a request")
    parser.add_argument("--big-mb", type=int, default=200, help="the crash test's model size")
    parser.add_argument("--crash-timeout", type=float, default=120)
    parser.add_argument(
        "--crash-delay", type=float, default=1, help="seconds of probes while the job runs"
    )
    parser.add_argument("--no-crash", action="store_true", help="skip the crash test")
    parser.add_argument("--keep", action="store_true", help=f"keep the root ({WORK}/root)")
    parser.add_argument("--markdown", type=Path, default=REPO / "benches" / "serve_load.md")
    parser.add_argument(
        "--server-arg",
        dest="server_args",
        action="append",
        default=[],
        help="one more flag for the server (repeat), e.g. --server-arg=--max-concurrent-queries=16",
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",") if n.strip()]
    if not BIN.is_file():
        print(f"no binary at {BIN}: cargo build --release --bin arrowquant, or ARROWQUANT_BIN")
        return 2

    began = time.monotonic()
    args.ends = began + args.time_limit
    root, logs = WORK / "root", WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"root {root}: tiny-unet and a {args.big_mb} MB synthetic model", flush=True)
    make_root(root, args.big_mb)

    failures: list[str] = []
    report = {
        "command": " ".join(
            (
                [f"ARROWQUANT_BIN={shlex.quote(os.environ['ARROWQUANT_BIN'])}"]
                if "ARROWQUANT_BIN" in os.environ
                else []
            )
            + [".venv/bin/python", "benches/serve_load.py", *map(shlex.quote, sys.argv[1:])]
        ),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "server_args": args.server_args,
        "big_mb": args.big_mb,
        "levels": [],
        "crash_findings": [],
        "crash_failures": [],
    }
    server = Server(root, logs, "server", args.server_args)
    try:
        print(f"server {server.pid}: {server.grpc}, {server.http}", flush=True)
        expected = warm_up(server, args.warmup_rounds, args)
        warm = server.rss()
        report["rss_warm"] = warm["VmRSS"]
        report["rss_bound"] = RSS_FACTOR * warm["VmRSS"] + RSS_SLACK
        print(f"warm-up done, RSS {mib(warm['VmRSS'])} MiB", flush=True)
        for clients in levels:
            lv = run_level(server, clients, args.requests, expected, args)
            report["levels"].append(lv)
            print(
                f"{clients} clients: {lv['requests']} requests in {lv['wall']:.1f} s, "
                f"{len(lv['errors'])} errors, p50 {ms(lv['p50'])} ms, p99 {ms(lv['p99'])} ms, "
                f"RSS {mib(lv['rss_before'])} -> {mib(lv['rss_after'])} MiB",
                flush=True,
            )
            distinct = {}
            for e in lv["errors"]:
                distinct[e] = distinct.get(e, 0) + 1
            for e, n in distinct.items():
                failures.append(f"{clients} clients: {n} x {e}")
            if lv["rss_after"] > report["rss_bound"]:
                failures.append(
                    f"{clients} clients: RSS {mib(lv['rss_after'])} MiB over the bound "
                    f"{mib(report['rss_bound'])} MiB"
                )
            if server.proc.poll() is not None:
                raise Failure(f"the server exited {server.proc.returncode}: {server.stderr()}")
        report["hwm"] = server.rss()["VmHWM"]
        report["server_counts"] = server_counts(server)
        if not args.no_crash:
            print("crash test", flush=True)
            findings, crash_failures = crash_test(server, root, logs, args)
            report["crash_findings"], report["crash_failures"] = findings, crash_failures
            failures += crash_failures
            for f in findings:
                print(f"  {f}", flush=True)
        else:
            report["crash_findings"] = ["skipped (--no-crash)"]
    except (Failure, OSError, flightsql.Error) as e:
        failures.append(first_line(e) if not isinstance(e, Failure) else str(e))
    finally:
        server.kill()
        if not args.keep:
            # The synthetic model and the outputs: some 230 MB of a shared disk.
            shutil.rmtree(root, ignore_errors=True)
    report["failures"] = failures
    report["seconds"] = time.monotonic() - began

    print()
    print(tables(report["levels"]))
    if "rss_warm" in report:
        write_markdown(args.markdown, report)
        print(f"\nwritten: {args.markdown}")
    print(f"total {report['seconds']:.0f} s")
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
