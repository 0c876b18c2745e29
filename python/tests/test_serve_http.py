"""`arrowquant serve`'s HTTP API against the real binary, over loopback.

Jobs end to end (the bundled UNet, and a synthetic model large enough to watch its progress
move), cancellation, Prometheus metrics, the refusals with their messages, and SIGTERM while a
job runs. The binary is the dev build `cargo build` makes (or `$ARROWQUANT_BIN`).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyarrow import flight
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"
# Small enough that a test of it needs no large body.
MAX_REQUEST = 4096
# Every metric family the server keeps (prometheus_client drops a counter's `_total`).
METRICS = [
    "arrowquant_query_duration_seconds",
    "arrowquant_job_duration_seconds",
    "arrowquant_job_input_bytes",
    "arrowquant_job_output_bytes",
    "arrowquant_flight_bytes_out",
    "arrowquant_request_bytes_in",
    "arrowquant_job_compression_ratio",
    "arrowquant_job_mean_cosine",
    "arrowquant_errors",
    "arrowquant_jobs_queued",
    "arrowquant_jobs_running",
    "arrowquant_jobs_finished",
    "arrowquant_queries_running",
    "arrowquant_flight_requests",
    "arrowquant_http_requests",
    "process_resident_memory_bytes",
    "process_cpu_seconds",
]
# A configuration that makes the synthetic model take a few passes: every tensor misses the
# threshold at 2 and 4 bits, so it is redone wider twice.
SLOW = {"bit_width": 2, "min_cosine": 0.9999}


def binary() -> Path:
    if "ARROWQUANT_BIN" in os.environ:
        return Path(os.environ["ARROWQUANT_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / "arrowquant"


class Server:
    """A running `arrowquant serve`, its HTTP address read from its first line."""

    def __init__(self, root: Path, *flags: str, env: dict[str, str] | None = None):
        exe = binary()
        if not exe.exists():
            pytest.skip(f"{exe} is not built (cargo build)")
        self.process = subprocess.Popen(
            [
                str(exe),
                "serve",
                "--flight",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--root",
                str(root),
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        # Both pipes are drained all along, so the server never blocks on a full one.
        threading.Thread(
            target=self._drain, args=(self.process.stdout, self.stdout), daemon=True
        ).start()
        threading.Thread(
            target=self._drain, args=(self.process.stderr, self.stderr), daemon=True
        ).start()
        try:
            first = self.lines.get(timeout=30)
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"no start line; stderr: {''.join(self.stderr)}") from None
        assert first.startswith("arrowquant serve: Flight SQL on grpc://"), first
        self.url = first.split("HTTP on ")[1].split(",")[0]
        assert self.url.startswith("http://127.0.0.1:"), first

    def _drain(self, pipe, into: list[str]) -> None:
        for line in pipe:
            into.append(line)
            if into is self.stdout:
                self.lines.put(line)

    def call(
        self, method: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None
    ):
        """(status, decoded JSON or text, headers)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        if token is not None:
            request.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                status, headers, payload = response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            status, headers, payload = e.code, e.headers, e.read()
        kind = headers.get("content-type", "")
        return (
            status,
            json.loads(payload) if kind.startswith("application/json") else payload.decode(),
            headers,
        )

    def ok(self, method: str, path: str, body=None, status: int = 200, **kw):
        got, answer, _ = self.call(method, path, body, **kw)
        assert got == status, (method, path, got, answer)
        return answer

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def wait_for(server: Server, job: str, states=("done", "failed", "cancelled"), timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = server.ok("GET", f"/v1/jobs/{job}")
        if answer["state"] in states:
            return answer
        time.sleep(0.02)
    raise AssertionError(f"job {job} still {answer['state']} after {timeout} s: {answer}")


def leftovers(root: Path, name: str) -> list[str]:
    """The output and any partial of it (`.NAME.partial-PID`)."""
    return sorted(
        p.name for p in root.iterdir() if p.name == name or p.name.startswith(f".{name}.")
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("serve")
    root = base / "root"
    root.mkdir()
    # A copy: a link to the bundled model would point outside the root, and be refused.
    shutil.copytree(ROOT / "examples" / "models" / "tiny-unet", root / "tiny-unet")
    rng = np.random.default_rng(7)
    tensors = {
        f"blocks.{i}.proj.weight": rng.standard_normal((1024, 1024), dtype=np.float32)
        for i in range(12)
    }
    (root / "big").mkdir()
    save_file(tensors, str(root / "big" / "model.safetensors"))
    outside = base / "outside"
    outside.mkdir()
    shutil.copy(
        root / "tiny-unet" / "diffusion_pytorch_model.safetensors", outside / "model.safetensors"
    )
    (root / "link").symlink_to(outside)
    (root / "taken").mkdir()
    return root


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    s = Server(
        root,
        "--auth-token-file",
        str(token_file),
        "--max-request-size",
        str(MAX_REQUEST),
        # A job's configuration is its client's: the server's environment must not apply.
        env={"ARROW_QUANT_BIT_WIDTH": "8", "ARROW_QUANT_PROFILE": "cloud"},
    )
    yield s
    code = s.stop()
    assert code == 0, "".join(s.stderr)


def test_health_checks_are_open_and_everything_else_needs_the_token(server):
    assert server.ok("GET", "/healthz", token=None) == {"status": "ok"}
    assert server.ok("GET", "/readyz", token=None) == {"status": "ready"}
    for method, path in [
        ("GET", "/metrics"),
        ("GET", "/v1/jobs"),
        ("GET", "/openapi.json"),
        ("GET", "/nowhere"),
    ]:
        status, answer, headers = server.call(method, path, token=None)
        assert (status, answer) == (
            401,
            {"error": "no token: send 'authorization: Bearer TOKEN'"},
        ), path
        assert headers["www-authenticate"] == "Bearer"
        status, answer, _ = server.call(method, path, token="not-the-token-at-all")
        assert (status, answer) == (401, {"error": "wrong token"}), path
    status, answer, _ = server.call(
        "POST", "/v1/jobs", {"model": "tiny-unet", "output": "x"}, token=None
    )
    assert status == 401 and "no token" in answer["error"]
    assert not (server_root(server) / "x").exists()


def server_root(server: Server) -> Path:
    return Path(server.stdout[0].rsplit(", root ", 1)[1].strip())


def test_openapi_describes_the_routes(server):
    spec = server.ok("GET", "/openapi.json")
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) == {
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/jobs",
        "/v1/jobs/{id}",
    }
    assert set(spec["paths"]["/v1/jobs/{id}"]) == {"parameters", "get", "delete"}


def test_a_job_on_the_bundled_model_end_to_end(server, root):
    created = server.ok(
        "POST", "/v1/jobs", {"model": "tiny-unet", "output": "tiny-out"}, status=201
    )
    job = wait_for(server, created["id"])
    assert job["state"] == "done", job
    assert job["progress"]["fraction"] == 1.0 and job["error"] is None
    # The server's ARROW_QUANT_PROFILE=cloud and ARROW_QUANT_BIT_WIDTH=8 did not apply.
    assert (job["config"]["profile"], job["config"]["bit_width"]) == ("local", 4)
    summary = job["summary"]
    assert (summary["tensors"], summary["quantized"], summary["kept"]) == (212, 76, 136)
    assert summary["bytes_before"] > summary["bytes_after"] > 0
    assert len(job["report"]) == 212
    row = next(r for r in job["report"] if r["layer"] == "conv_in.weight")
    assert (row["action"], row["bits"], row["shape"]) == ("quantize", 8, [32, 3, 3, 3])
    assert row["cosine"] > 0.999
    assert sorted(p.name for p in (root / "tiny-out").iterdir()) == [
        "manifest.json",
        "report.parquet",
        "weights.parquet",
    ]
    listed = server.ok("GET", "/v1/jobs")["jobs"]
    brief = next(j for j in listed if j["id"] == created["id"])
    assert set(brief) == {"id", "state", "model", "output", "progress"}
    assert (brief["model"], brief["output"], brief["state"]) == ("tiny-unet", "tiny-out", "done")
    # Done: an output is never replaced, and a finished job cannot be cancelled.
    status, answer, _ = server.call(
        "POST", "/v1/jobs", {"model": "tiny-unet", "output": "tiny-out"}
    )
    assert status == 409 and answer["error"].startswith("output 'tiny-out' exists"), answer
    status, answer, _ = server.call("DELETE", f"/v1/jobs/{created['id']}")
    assert (status, answer) == (
        409,
        {"error": f"job {created['id']} is done: only queued and running jobs can be cancelled"},
    )


def test_progress_moves_through_the_passes_of_a_larger_model(server, root):
    created = server.ok(
        "POST",
        "/v1/jobs",
        {"model": "big/model.safetensors", "output": "big-out", "config": SLOW},
        status=201,
    )
    seen = []
    while True:
        job = server.ok("GET", f"/v1/jobs/{created['id']}")
        if job["state"] in ("done", "failed", "cancelled"):
            break
        if job["state"] == "running":
            progress = job["progress"]
            seen.append((progress["step"], progress["fraction"], progress["phase"]))
        time.sleep(0.01)
    assert job["state"] == "done", job
    steps = sorted({step for step, _, _ in seen})
    assert len(steps) >= 2, seen
    assert any(0 < fraction < 1 for _, fraction, _ in seen), seen
    for step in steps:
        fractions = [f for s, f, _ in seen if s == step]
        assert fractions == sorted(fractions), (step, seen)
    phases = {phase for _, _, phase in seen}
    assert "quantizing" in phases and any(p.startswith("redoing") for p in phases), phases
    assert job["summary"]["fallbacks"] > 0
    assert (root / "big-out" / "weights.parquet").exists()


def test_cancelling_a_running_job_leaves_no_output(server, root):
    created = server.ok(
        "POST",
        "/v1/jobs",
        {"model": "big/model.safetensors", "output": "cancelled-out", "config": SLOW},
        status=201,
    )
    # Queued behind it (--max-jobs 1): cancelled out of the queue, never run.
    queued = server.ok(
        "POST", "/v1/jobs", {"model": "tiny-unet", "output": "queued-out"}, status=201
    )
    status, answer, _ = server.call(
        "POST", "/v1/jobs", {"model": "tiny-unet", "output": "queued-out"}
    )
    assert (
        status == 409
        and answer["error"] == f"output 'queued-out': job {queued['id']} (queued) is writing it"
    ), answer
    assert server.ok("GET", f"/v1/jobs/{queued['id']}")["state"] == "queued"
    wait_for(server, created["id"], states=("running",))
    job = server.ok("DELETE", f"/v1/jobs/{queued['id']}")
    assert job["state"] == "cancelled" and job["seconds"] is None, job
    assert job["progress"] == {"fraction": 0.0, "phase": "queued", "step": 0}
    deadline = time.monotonic() + 10
    while not leftovers(root, "cancelled-out") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leftovers(root, "cancelled-out"), "the job never started writing"
    job = server.ok("DELETE", f"/v1/jobs/{created['id']}")
    assert job["state"] == "cancelled", job
    # The answer comes once the partial output is gone.
    assert leftovers(root, "cancelled-out") == []
    status, answer, _ = server.call("DELETE", f"/v1/jobs/{created['id']}")
    assert status == 409 and "is cancelled" in answer["error"]
    assert leftovers(root, "queued-out") == []


def scrape(server: Server) -> dict[str, dict]:
    status, text, headers = server.call("GET", "/metrics")
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4"
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families, name: str, suffix: str = "", **labels) -> float:
    for sample in families[name].samples:
        if sample.name == name + suffix and all(
            sample.labels.get(k) == v for k, v in labels.items()
        ):
            return sample.value
    return 0.0


def flight_sql(server: Server, sql: str, token: str = TOKEN) -> int:
    """Rows of `sql` over Flight SQL (CommandStatementQuery, encoded by hand: pyarrow has no
    Flight SQL client), so that the query metrics have a sample."""

    def field(number: int, payload: bytes) -> bytes:
        key, size, out = number << 3 | 2, len(payload), bytearray()
        out.append(key)
        while True:
            out.append(size & 0x7F | (0x80 if size > 0x7F else 0))
            size >>= 7
            if not size:
                return bytes(out) + payload

    command = field(1, sql.encode())
    type_url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    descriptor = flight.FlightDescriptor.for_command(field(1, type_url) + field(2, command))
    address = server.stdout[0].split("grpc://")[1].split(",")[0]
    options = flight.FlightCallOptions(
        headers=[(b"authorization", f"Bearer {token}".encode())], timeout=20
    )
    with flight.connect(f"grpc://{address}") as client:
        info = client.get_flight_info(descriptor, options)
        return sum(client.do_get(e.ticket, options).read_all().num_rows for e in info.endpoints)


def test_metrics_count_jobs_requests_and_errors(server):
    assert flight_sql(server, "SELECT 1 AS one") == 1
    before = scrape(server)
    created = server.ok(
        "POST", "/v1/jobs", {"model": "tiny-unet", "output": "metrics-out"}, status=201
    )
    job = wait_for(server, created["id"])
    assert job["state"] == "done"
    server.call("GET", "/v1/jobs/424242")
    server.call("GET", "/metrics", token="wrong-token-wrong-token")
    after = scrape(server)
    assert [name for name in METRICS if name not in after] == []

    def grew(name, suffix="", **labels):
        return value(after, name, suffix, **labels) - value(before, name, suffix, **labels)

    summary = job["summary"]
    assert grew("arrowquant_jobs_finished", "_total", state="done") == 1
    assert grew("arrowquant_job_duration_seconds", "_count", state="done") == 1
    assert grew("arrowquant_job_input_bytes", "_total") == summary["bytes_before"]
    assert grew("arrowquant_job_output_bytes", "_total") == summary["bytes_after"]
    assert grew("arrowquant_job_compression_ratio", "_count") == 1
    assert grew("arrowquant_job_mean_cosine", "_count") == 1
    assert grew("arrowquant_errors", "_total", kind="not_found") == 1
    assert grew("arrowquant_errors", "_total", kind="auth") == 1
    assert grew("arrowquant_http_requests", "_total", route="/v1/jobs", status="201") == 1
    assert grew("arrowquant_http_requests", "_total", route="/v1/jobs/{id}", status="404") == 1
    assert grew("arrowquant_request_bytes_in", "_total") > 0
    assert (
        value(after, "arrowquant_jobs_running") == 0 and value(after, "arrowquant_jobs_queued") == 0
    )
    assert value(after, "process_resident_memory_bytes") > 0
    kinds = {s.labels["kind"] for s in after["arrowquant_errors"].samples}
    assert {"auth", "path", "limit", "bad_request", "not_found", "job"} <= kinds


REFUSALS = [
    # (body, status, the start of the message)
    (
        {"model": "../outside/model.safetensors", "output": "o"},
        403,
        "model '../outside/model.safetensors': it resolves to",
    ),
    (
        {"model": "/etc/passwd", "output": "o"},
        403,
        "model '/etc/passwd': it resolves to /etc/passwd",
    ),
    (
        {"model": "link/model.safetensors", "output": "o"},
        403,
        "model 'link/model.safetensors': it resolves to",
    ),
    ({"model": "tiny-unet", "output": "../o"}, 403, "output '../o': it resolves to"),
    ({"model": "tiny-unet", "output": "link/o"}, 403, "output 'link/o': it resolves to"),
    (
        {"model": "s3://bucket/model", "output": "o"},
        403,
        "model 's3://bucket/model': 's3://' is not a local path",
    ),
    ({"model": "missing", "output": "o"}, 400, "model 'missing': no such file or directory"),
    ({"model": "tiny-unet", "output": "taken"}, 409, "output 'taken' exists"),
    (
        {"model": "tiny-unet", "output": "no/such/dir"},
        400,
        "output 'no/such/dir': the directory to write it in does not exist",
    ),
    ({"output": "o"}, 400, "missing field 'model'"),
    ({"model": "tiny-unet"}, 400, "missing field 'output'"),
    (
        {"model": 7, "output": "o"},
        400,
        "field 'model' must be a string (a path under the server's root), got a number",
    ),
    (
        {"model": "tiny-unet", "output": "o", "config": "edge"},
        400,
        "field 'config' must be an object",
    ),
    (
        {"model": "tiny-unet", "output": "o", "extra": 1},
        400,
        "unknown field 'extra': a job takes model, output, config",
    ),
    (
        {"model": "tiny-unet", "output": "o", "config": {"bits": 4}},
        400,
        "config: unknown key 'bits' (known keys: profile, bit_width",
    ),
    (
        {"model": "tiny-unet", "output": "o", "config": {"bit_width": 7}},
        400,
        "config: key 'bit_width': 7 bits",
    ),
    (
        {"model": "tiny-unet", "output": "o", "config": {"profile": None}},
        400,
        "config: key 'profile': expected a profile name",
    ),
    (
        {"model": "tiny-unet", "output": "o", "config": {"calibration": "../acts.parquet"}},
        403,
        "calibration '../acts.parquet': it resolves to",
    ),
    (
        {"model": "tiny-unet", "output": "o", "config": {"recipe": "Q4_K_M"}},
        400,
        "config: recipe: applies to GGUF output only",
    ),
    ([1, 2], 400, "the request body must be a JSON object"),
]


@pytest.mark.parametrize(("body", "status", "message"), REFUSALS, ids=[r[2][:40] for r in REFUSALS])
def test_refusals_name_what_is_wrong(server, root, body, status, message):
    got, answer, _ = server.call("POST", "/v1/jobs", body)
    assert got == status, answer
    assert answer["error"].startswith(message), answer
    assert not (root / "o").exists()


def test_refusals_of_bodies_ids_and_routes(server):
    for raw, message in [
        (b'{"model": ', "the request body is not JSON (EOF while parsing"),
        (b"", "the request body is empty"),
    ]:
        status, answer, _ = server.call("POST", "/v1/jobs", raw=raw)
        assert status == 400 and answer["error"].startswith(message), answer
    big = json.dumps({"model": "m" * MAX_REQUEST, "output": "o"}).encode()
    status, answer, _ = server.call("POST", "/v1/jobs", raw=big)
    assert (status, answer) == (
        413,
        {
            "error": f"the request body is over the server's limit of {MAX_REQUEST} bytes (--max-request-size)"
        },
    )
    for method in ("GET", "DELETE"):
        status, answer, _ = server.call(method, "/v1/jobs/no-such-job")
        assert (status, answer) == (404, {"error": "no job with id 'no-such-job'"})
    status, answer, _ = server.call("PUT", "/v1/jobs")
    assert status == 405 and answer["error"].startswith("PUT is not a method of /v1/jobs")
    status, answer, _ = server.call("GET", "/v2/jobs")
    assert (status, answer) == (
        404,
        {"error": "no route GET /v2/jobs: the routes are described at /openapi.json"},
    )


def test_sigterm_while_a_job_runs_exits_0_and_leaves_no_output(root):
    server = Server(root)
    try:
        created = server.ok(
            "POST",
            "/v1/jobs",
            {"model": "big/model.safetensors", "output": "stopped-out", "config": SLOW},
            status=201,
        )
        wait_for(server, created["id"], states=("running",))
        deadline = time.monotonic() + 10
        while not leftovers(root, "stopped-out") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert leftovers(root, "stopped-out"), "the job never started writing"
        assert server.stop() == 0, "".join(server.stderr)
    finally:
        server.kill()
    assert leftovers(root, "stopped-out") == []
    assert "arrowquant serve: SIGTERM: stopping\n" in server.stdout
    assert server.stdout[-1] == "arrowquant serve: stopped\n"
