"""PostgreSQL for tests (imported by tests/conftest.py).

* `pg_admin_url` (session): a throwaway cluster (yunhan.store.pgserver), started on first
  use in /tmp/<run prefix>-pg-*, listening on a unix socket only, removed at the end of
  the session even when tests failed. Leftovers of an earlier killed run with the same
  prefix are swept first. YUNHAN_TEST_PG_URL=<SQLAlchemy URL of a superuser's database>
  uses an existing server instead (databases are created and dropped on it).
* `pg_url`: a fresh database for one test, dropped after it.
* `store_url`: the same test on both backends, ["sqlite", "postgresql"]. On PostgreSQL
  it is one database per session, emptied before each test (its other sessions ended,
  schema public dropped and made again): ~30 ms instead of ~0.6 s for a new database.

PostgreSQL that cannot be started is a FAILURE, never a skip: CI must run these tests.
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from yunhan.errors import PgServerError
from yunhan.store import pgserver

PG_URL_ENV = "YUNHAN_TEST_PG_URL"
BACKENDS = ["sqlite", "postgresql"]
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_admin_url(run_prefix: str) -> Iterator[str]:
    """The URL of a superuser's database on the test server, for creating databases."""
    existing = os.environ.get(PG_URL_ENV)
    if existing:
        yield existing
        return
    prefix = run_prefix
    pgserver.sweep(prefix)
    directory = Path(tempfile.mkdtemp(prefix=f"{prefix}-pg-"))
    directory.rmdir()  # PgServer creates it, owned by the server's user
    server = pgserver.PgServer(directory, prefix=prefix, fsync=False)
    try:
        server.start()
    except PgServerError as exc:
        pytest.fail(
            f"could not start PostgreSQL for the tests: {exc.message}\n"
            f"(scripts/install.sh installs it; or set {PG_URL_ENV} to an existing server)",
            pytrace=False,
        )
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_admin_url: str, run_prefix: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database for this test (named <run prefix>_<n>_<test>), dropped after."""
    yield from _database(pg_admin_url, f"{run_prefix}_{next(_counter)}_{request.node.name}")


@pytest.fixture(scope="session")
def _pg_shared_url(pg_admin_url: str, run_prefix: str) -> Iterator[str]:
    yield from _database(pg_admin_url, f"{run_prefix}_stores", drop_first=True)


def _database(admin_url: str, name: str, *, drop_first: bool = False) -> Iterator[str]:
    """Create database `name` (made a valid identifier), yield its URL, drop it after."""
    name = re.sub(r"[^a-z0-9]+", "_", name.lower())[:63].strip("_")
    if drop_first:
        pgserver.drop_database(admin_url, name)  # a leftover of a killed run
    try:
        url = pgserver.create_database(admin_url, name)
    except Exception as exc:
        pytest.fail(f"could not create database {name} on the test server: {exc}", pytrace=False)
    try:
        yield url
    finally:
        pgserver.drop_database(admin_url, name)


def _empty_database(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            # A session left by the last test (a killed child's, a leaked pool's) could
            # hold an advisory lock (leadership) or a table lock: end it first, waiting
            # up to 5 s for it to be gone, as DROP DATABASE ... WITH (FORCE) would.
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/yunhan.db"
    url = str(request.getfixturevalue("_pg_shared_url"))
    _empty_database(url)
    return url
