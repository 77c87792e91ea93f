"""Shared fixtures: real SQLite, a throwaway PostgreSQL 15 cluster, shared data, Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxrlabel.config import shared_data_dir
from cxrlabel.storage.db import Database
from live_server import free_port as _free_port

ARTIFACTS = Path(os.environ.get("CXRLABEL_TEST_ARTIFACTS", "test-artifacts")).resolve()


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temp dir, run as an unprivileged user when root."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH")
        self.dir = Path(tempfile.mkdtemp(prefix="cxrlabel-pg-"))
        self.port = _free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_root:
            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{a}'" for a in args)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        if self.as_root:
            shutil.chown(self.dir, "postgres")
        data = str(self.dir / "data")
        self._run(self.initdb, "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8")
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=300"
        )
        self._run(self.pg_ctl, "-D", data, "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    if os.environ.get("CXRLABEL_SKIP_POSTGRES") == "1":
        pytest.skip("CXRLABEL_SKIP_POSTGRES=1: PostgreSQL tests disabled")
    try:
        cluster = PostgresCluster()
        cluster.start()
    except (RuntimeError, subprocess.CalledProcessError, FileNotFoundError) as exc:
        if os.environ.get("CI"):
            raise  # CI must run the PostgreSQL tests for real
        pytest.skip(f"cannot start a throwaway PostgreSQL cluster: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return pg_cluster.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a test on both backends: a SQLite file and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite3'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated ``Database`` on each backend of ``db_url``, disposed after the test."""
    database = Database(db_url)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "kermany" / "manifest.csv").exists():
        pytest.skip(f"shared data not found at {root} (set CXRLABEL_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser():
    """A real headless Chromium (Debian package) driven by Playwright; skips locally if absent.

    Module-scoped on purpose: Playwright's sync API keeps an asyncio loop running in the main
    thread while it is open, which would make every later ``asyncio.run()`` (the load tests)
    fail with "cannot be called from a running event loop"."""
    exe = chromium_path()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (apt-get install chromium)")
        pytest.skip("Chromium not installed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()
