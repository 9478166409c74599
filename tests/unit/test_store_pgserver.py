"""Throwaway PostgreSQL clusters (yunhan.store.pgserver) and the schema on PostgreSQL."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.polling import wait_for
from yunhan.errors import PgServerError
from yunhan.store import pgserver, schema


def _server_processes(tag: str) -> list[str]:
    """Command lines (titles) of live processes that mention `tag`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if tag in cmdline and "pytest" not in cmdline and "-c" not in cmdline.split():
            found.append(cmdline)
    return found


def test_a_cluster_carries_the_prefix_serves_and_leaves_nothing(
    uniq: Callable[[str], str],
) -> None:
    tag = uniq("pgs")
    directory = Path("/tmp") / tag
    with pgserver.PgServer(directory, prefix=tag) as pg:
        titles = _server_processes(tag)
        assert any(f"{tag}-pg: checkpointer" in t for t in titles), titles
        assert (directory / ".s.PGSQL.5432").exists()
        url = pg.create_database("one")
        assert url.startswith("postgresql+psycopg://postgres@/one?")
        engine = create_engine(url)
        with engine.connect() as conn:
            # A unix socket only: no TCP listener.
            assert conn.execute(text("SHOW listen_addresses")).scalar_one() == ""
            assert conn.execute(text("SHOW fsync")).scalar_one() == "off"
        engine.dispose()
    assert not directory.exists()
    wait_for(lambda: not _server_processes(tag), timeout=10, what="server processes to exit")


def test_start_failure_is_reported_and_cleaned_up(
    uniq: Callable[[str], str], tmp_path: Path
) -> None:
    tag = uniq("pgf")
    directory = Path("/tmp") / tag
    (tmp_path / "bin").mkdir()
    with pytest.raises(PgServerError, match="initdb could not run"):
        pgserver.PgServer(directory, prefix=tag, bindir=tmp_path / "bin").start()
    assert not directory.exists()


def test_a_socket_path_too_long_is_refused_up_front() -> None:
    with pytest.raises(PgServerError, match="longer than a unix socket path"):
        pgserver.PgServer(Path("/tmp") / ("x" * 100), prefix="x")


_ORPHAN = """
import sys
from pathlib import Path
from yunhan.store.pgserver import PgServer
PgServer(Path(sys.argv[1]), prefix=sys.argv[2]).start()
print("up", flush=True)
sys.stdin.read()
"""


def test_sweep_removes_what_a_killed_run_left(uniq: Callable[[str], str]) -> None:
    tag = uniq("pgk")
    directory = Path("/tmp") / tag
    owner = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN, str(directory), tag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert owner.stdout is not None
        ready, _, _ = select.select([owner.stdout], [], [], 60)
        assert ready and owner.stdout.readline().strip() == "up"
        assert pgserver.sweep(tag) == []  # its owner is alive: not an orphan
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert _server_processes(tag)  # the server outlived its owner ...
        assert pgserver.sweep(tag) == [directory]  # ... until the sweep
        assert not directory.exists()
        wait_for(lambda: not _server_processes(tag), timeout=10, what="orphan server to exit")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        pgserver.sweep(tag)


def test_schema_migrates_on_postgresql_from_scratch_and_step_by_step(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            assert schema.migrate(conn, 1) == 1
            conn.execute(text("INSERT INTO doc_history VALUES ('h1', 5)"))
        with engine.begin() as conn:
            assert schema.migrate(conn, 2) == 2
            rows = conn.execute(text("SELECT host, revision, input_revision FROM doc_history"))
            assert rows.all() == [("h1", 5, 4)]
        with engine.begin() as conn:
            assert schema.migrate(conn) == schema.LATEST
            assert schema.migrate(conn) == schema.LATEST  # nothing left to do
            meta = {k: v for k, v in conn.execute(text("SELECT key, value FROM meta"))}
            assert meta == {"revision": 0, "leader_epoch": 0, "log_horizon": 0, "tokens_rev": 0}
            types = conn.execute(
                text(
                    "SELECT table_name || '.' || column_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND data_type = 'bigint'"
                )
            ).scalars()
            assert {
                "meta.value",
                "resources.revision",
                "liveness.applied_revision",
                "events.revision",
            } <= set(types)
    finally:
        engine.dispose()


def test_schema_migrates_on_sqlite_from_scratch(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/yunhan.db")
    with engine.begin() as conn:
        assert schema.migrate(conn) == schema.LATEST
    engine.dispose()


def test_the_fixture_fails_rather_than_skips_without_postgresql(
    uniq: Callable[[str], str],
) -> None:
    """CI must run the PostgreSQL tests: a missing server is an error, never a skip."""
    env = {k: v for k, v in os.environ.items() if k != "YUNHAN_TEST_PG_URL"}
    env.update(YUNHAN_PG_BINDIR="/nonexistent", YUNHAN_TEST_PREFIX=uniq("nopg").replace("-", ""))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "test_schema_migrates_on_postgresql"],
        cwd=Path(__file__).parents[2], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout
    assert "could not start PostgreSQL for the tests" in run.stdout
    assert "1 error" in run.stdout and "skipped" not in run.stdout
