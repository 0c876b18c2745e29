"""``python -m arrow_quant_v2.server`` as a real process, reached by a client nobody here wrote:
the ADBC Flight SQL driver from PyPI (through ``arrow_quant_v2.connect``)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import arrow_quant_v2 as aq

TOKEN = "a-python-test-token-0123456789"


class Server:
    """A server process on free loopback ports, rooted at ``root``."""

    def __init__(self, root: Path, *flags: str) -> None:
        self.root = root
        self.process = subprocess.Popen(
            [sys.executable, "-m", "arrow_quant_v2.server", "--flight", "127.0.0.1:0"]
            + ["--http", "127.0.0.1:0", "--root", str(root), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        assert "grpc://" in line, line + self.process.stderr.read()
        self.flight = "grpc://" + line.split("grpc://")[1].split(",")[0]
        # Keep reading, so the server's later lines have somewhere to go.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def root(tmp_path: Path, bundled_model: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(bundled_model, root / "tiny-unet")
    (tmp_path / "outside").mkdir()
    shutil.copy(
        bundled_model / "diffusion_pytorch_model.safetensors",
        tmp_path / "outside" / "model.safetensors",
    )
    return root


@pytest.fixture
def server(root: Path):
    server = Server(root)
    yield server
    assert server.stop() == 0


def test_quantize_prepared_parameters_and_the_catalogue_over_adbc(server: Server):
    with aq.connect(server.flight) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM read_safetensors('tiny-unet')")
        (n,) = cur.fetchone()
        assert n > 10
        cur.execute(
            "SELECT layer, quantize(weights, 4)['bits'] AS bits FROM read_safetensors('tiny-unet')"
        )
        table = cur.fetch_arrow_table()
        assert table.num_rows == n
        assert set(table.column("bits").to_pylist()) == {4}

        # A prepared statement, its parameter bound by the driver.
        cur.execute(
            "SELECT count(*) FROM read_safetensors('tiny-unet') WHERE layer = $1",
            ("conv_in.weight",),
        )
        (rows,) = cur.fetchone()
        assert 0 < rows < n
        cur.execute("SELECT $1 + 1 AS x", (41,))
        assert cur.fetchone() == (42,)

        # DDL has taken effect when execute returns; the catalogue lists the table.
        cur.execute("COPY (SELECT 7 AS a) TO 'seven.parquet'")
        cur.execute("CREATE EXTERNAL TABLE seven STORED AS PARQUET LOCATION 'seven.parquet'")
        cur.execute("SELECT a FROM seven")
        assert cur.fetchall() == [(7,)]
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = [
            t["table_name"]
            for catalog in objects
            for schema in catalog["catalog_db_schemas"]
            for t in schema["db_schema_tables"]
        ]
        assert "seven" in tables
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "ArrowQuant"
        assert info["vendor_version"] == aq.__version__


def test_paths_outside_the_root_are_refused(server: Server):
    outside = server.root.parent / "outside"
    (server.root / "link-out").symlink_to(outside)
    with aq.connect(server.flight) as conn, conn.cursor() as cur:
        for sql, says in [
            (
                "SELECT count(*) FROM read_safetensors('../outside/model.safetensors')",
                "read_safetensors path '../outside/model.safetensors'",
            ),
            (
                f"SELECT count(*) FROM read_safetensors('{outside / 'model.safetensors'}')",
                "read_safetensors path",
            ),
            (
                "SELECT count(*) FROM read_safetensors('link-out/model.safetensors')",
                "read_safetensors path 'link-out/model.safetensors'",
            ),
            ("COPY (SELECT 1 AS a) TO '../outside/x.parquet'", "COPY TO '../outside/x.parquet'"),
        ]:
            with pytest.raises(Exception) as refused:
                cur.execute(sql)
                cur.fetchall()
            message = str(refused.value)
            assert says in message, message
            assert "under the server's root" in message, message
    assert not (outside / "x.parquet").exists()


def test_the_token_is_required_and_accepted(root: Path, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = Server(root, "--auth-token-file", str(token_file))
    try:
        wrong = "a-wrong-token-of-enough-length"
        for token, says in [(None, "no token"), (wrong, "wrong token")]:
            with (
                aq.connect(server.flight, token=token) as conn,
                conn.cursor() as cur,
                pytest.raises(Exception, match=says),
            ):
                cur.execute("SELECT 1")
        with aq.connect(server.flight, token=TOKEN) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 AS one")
            assert cur.fetchall() == [(1,)]
    finally:
        assert server.stop() == 0


def test_bad_flags_exit_with_clap_message():
    done = subprocess.run(
        [sys.executable, "-m", "arrow_quant_v2.server", "--max-jobs", "0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--max-jobs" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "arrow_quant_v2.server", "--root", "/no/such/dir"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "--root /no/such/dir" in done.stderr
