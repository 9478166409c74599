"""The revisioned store: revisions, atomicity, watch, migrations, restart.

Every test runs on both backends (`store_url`: SQLite and PostgreSQL) except those about
SQLite itself (WAL mode, `Store.open` on a state directory).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from yunhan.errors import Conflict
from yunhan.store import DB_NAME, Store
from yunhan.store import schema as s


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    st = Store.connect(store_url, poll_interval=0.05)
    yield st
    st.close()


def test_every_transaction_bumps_one_revision(store: Store) -> None:
    assert store.revision() == 0
    with store.transaction() as tx:
        a = tx.create("vpc", "vpc-00000001", "p1", "a", {"cidrs": ["10.0.0.0/16"]})
        b = tx.create("vpc", "vpc-00000002", "p1", "b", {"cidrs": ["10.1.0.0/16"]})
    assert store.revision() == 1
    assert a.revision == b.revision == 1
    with store.transaction() as tx:
        a2 = tx.update(a, status={"vni": 1})
    assert a2.revision == 2 and store.revision() == 2
    with store.read() as r:
        assert r.get("vpc", a.id) == a2
        assert r.get("vpc", b.id).revision == 1


def test_unchanged_update_writes_nothing(store: Store) -> None:
    with store.transaction() as tx:
        a = tx.create("vpc", "vpc-00000001", "p1", "a", {"k": [1, 2]}, {"s": 1})
    with store.transaction() as tx:
        same = tx.update(a, spec={"k": [1, 2]}, status={"s": 1})
    assert same.revision == 1 and store.revision() == 1


def test_failed_transaction_changes_nothing(store: Store) -> None:
    with store.transaction() as tx:
        tx.create("vpc", "vpc-00000001", "p1", "a", {})
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.create("vpc", "vpc-00000002", "p1", "b", {})
        tx.create("subnet", "subnet-00000002", "p1", "s", {})
        raise RuntimeError("rejected")
    assert store.revision() == 1
    with store.read() as r:
        assert [x.name for x in r.list("vpc")] == ["a"]
        assert r.list("subnet") == []


def test_names_unique_per_project_and_kind(store: Store) -> None:
    with store.transaction() as tx:
        tx.create("vpc", "vpc-00000001", "p1", "a", {})
        tx.create("vpc", "vpc-00000002", "p2", "a", {})
        tx.create("subnet", "subnet-00000001", "p1", "a", {})
    with pytest.raises(Conflict, match="already exists"), store.transaction() as tx:
        tx.create("vpc", "vpc-00000003", "p1", "a", {})
    assert store.revision() == 1


def test_delete_bumps_revision(store: Store) -> None:
    with store.transaction() as tx:
        a = tx.create("vpc", "vpc-00000001", "p1", "a", {})
    with store.transaction() as tx:
        tx.delete(a)
    assert store.revision() == 2
    with store.read() as r:
        assert r.get("vpc", a.id) is None


def test_restart_keeps_data_and_revision(store_url: str) -> None:
    st = Store.connect(store_url)
    with st.transaction() as tx:
        tx.create("vpc", "vpc-00000001", "p1", "a", {"cidrs": ["10.0.0.0/16"]})
    with st.transaction() as tx:
        tx.add_token("h" * 64, "p1")
    st.close()
    st2 = Store.connect(store_url)
    try:
        assert st2.revision() == 1
        with st2.read() as r:
            assert r.get("vpc", "vpc-00000001").spec == {"cidrs": ["10.0.0.0/16"]}
            assert r.token_project("h" * 64) == "p1"
        with st2.transaction() as tx:
            tx.create("vpc", "vpc-00000002", "p1", "b", {})
        assert st2.revision() == 2
    finally:
        st2.close()


def test_sqlite_open_creates_the_state_directory_in_wal_mode(tmp_path: Path) -> None:
    st = Store.open(tmp_path / "state")
    try:
        assert (tmp_path / "state" / DB_NAME).is_file()
        with st.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        st.close()


def test_migrations_from_empty(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        assert s.current_version(conn) == 0
        assert s.migrate(conn) == s.LATEST
    with engine.begin() as conn:
        assert s.current_version(conn) == s.LATEST
        assert s.migrate(conn) == s.LATEST  # idempotent
        names = set(inspect(conn).get_table_names())
        assert {"schema_version", "meta", "resources", "tokens", "liveness"} <= names
        assert conn.execute(text("SELECT value FROM meta WHERE key='revision'")).scalar() == 0
    engine.dispose()


def test_refuses_newer_schema(store_url: str) -> None:
    Store.connect(store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = 999"))
    engine.dispose()
    with pytest.raises(RuntimeError, match="newer"):
        Store.connect(store_url)


def test_watch_wakes_thread_on_commit(store: Store) -> None:
    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(store.wait_revision(0, 30)))
    t.start()
    with store.transaction() as tx:
        tx.create("vpc", "vpc-00000001", "p1", "a", {})
    t.join(30)
    assert got == [1]


def test_watch_times_out_without_change(store: Store) -> None:
    assert store.wait_revision(0, 0.05) is None


def test_watch_async_wakes_on_commit_from_thread(store: Store) -> None:
    async def main() -> int | None:
        waiter = asyncio.create_task(store.wait_revision_async(0, 30))
        await asyncio.to_thread(_write, store)
        return await waiter

    assert asyncio.run(main()) == 1


def test_watch_sees_writes_of_another_process(store_url: str) -> None:
    # Two Store objects on one database stand for two processes: no in-process
    # notification crosses between them, only the poll fallback.
    a = Store.connect(store_url, poll_interval=0.02)
    b = Store.connect(store_url, poll_interval=0.02)
    try:
        got: list[int | None] = []
        t = threading.Thread(target=lambda: got.append(a.wait_revision(0, 30)))
        t.start()
        _write(b)
        t.join(30)
        assert got == [1]
    finally:
        a.close()
        b.close()


def _write(st: Store) -> None:
    with st.transaction() as tx:
        tx.create("vpc", "vpc-00000001", "p1", "a", {})


def test_migration_v1_to_v2_keeps_document_history(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        assert s.migrate(conn, target=1) == 1
        conn.execute(text("INSERT INTO doc_history (host, revision) VALUES ('h1', 7)"))
    with engine.begin() as conn:
        assert s.migrate(conn, target=2) == 2
        row = conn.execute(text("SELECT revision, input_revision FROM doc_history")).one()
        assert tuple(row) == (7, 6)  # v1 compiled and wrote in one transaction
    with engine.begin() as conn:
        # v3: documents are compiled in memory from the change log, no longer stored.
        assert s.migrate(conn) == s.LATEST
        names = set(inspect(conn).get_table_names())
        assert "doc_history" not in names and "events" in names
    engine.dispose()


def test_bookkeeping_writes_wake_only_the_any_channel(store: Store) -> None:
    from yunhan.store import Liveness

    calls: list[int] = []

    first_call = threading.Event()

    def revision_moved() -> int | None:
        calls.append(1)
        r = store.revision()
        first_call.set()
        return r if r > 0 else None

    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(store.wait_for(revision_moved, 30)))
    t.start()
    assert first_call.wait(30)
    for n in range(5):  # heartbeats: no revision, must not re-run the predicate
        with store.transaction() as tx:
            tx.set_liveness(Liveness("h1", n, float(n), None))
    assert store.revision() == 0
    _write(store)
    t.join(30)
    assert got == [1] and len(calls) == 2  # once at first, once for the real write

    def heartbeat_seen() -> float | None:
        lv = store.liveness().get("h2")
        return lv.heartbeat_at if lv else None

    t = threading.Thread(target=lambda: got.append(store.wait_for(heartbeat_seen, 30, on="any")))
    t.start()
    with store.transaction() as tx:
        tx.set_liveness(Liveness("h2", 0, 42.0, None))
    t.join(30)
    assert got[-1] == 42.0


def test_migration_v5_to_v6_adds_flow_records(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        assert s.migrate(conn, target=5) == 5
        conn.execute(
            text(
                "INSERT INTO resources (id, kind, project, name, spec, status, revision, "
                "created_at) VALUES ('vpc-00000001', 'vpc', 'p1', 'a', '{}', '{}', 1, 'x')"
            )
        )
        conn.execute(text("UPDATE meta SET value = 1 WHERE key = 'revision'"))
        assert "flow_records" not in inspect(conn).get_table_names()
    with engine.begin() as conn:
        assert s.migrate(conn, target=6) == 6
        cols = {c["name"] for c in inspect(conn).get_columns("flow_records")}
        assert set(s.flow_records.c.keys()) == cols
        indexes = {tuple(i["column_names"]) for i in inspect(conn).get_indexes("flow_records")}
        assert {("vpc", "start"), ("instance", "start")} <= indexes
    engine.dispose()
    # The store opens the migrated database with what it held, and records can be written
    # (ids assigned by the database).
    st = Store.connect(store_url)
    try:
        assert st.revision() == 1
        with st.read() as r:
            assert r.get("vpc", "vpc-00000001") is not None
        from yunhan.store.flows import FlowRecord, FlowRecords, Query

        flows = FlowRecords(st.engine, lambda: 100.0)
        rec = FlowRecord("p1", "vpc-00000001", "subnet-1", "inst-1", "p-1", "h1", "egress",
                         "10.0.0.1", "10.0.0.2", 1, 2, 6, 3, 30, 99.0, 99.5, "ACCEPT", "OK",
                         100.0)  # fmt: skip
        flows.add([rec, rec])
        items, more = flows.query(Query(vpc="vpc-00000001"), 10)
        assert [x["id"] for x in items] == [2, 1] and more is False
    finally:
        st.close()
