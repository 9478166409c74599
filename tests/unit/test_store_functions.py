"""The function side tables (yunhan.store.functions) and the meter on SQLite and
PostgreSQL: the v7 -> v8 migration, code and versions written with a transaction or not
at all, usage added up per minute and summed by function or day, and a meter whose stop
writes everything it holds, read back by a new Store (a server restart loses no usage)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import create_engine, inspect

from yunhan.functions.metering import Meter, UsageRow
from yunhan.store import Store
from yunhan.store import schema as s
from yunhan.store.functions import FunctionRows, VersionRow, drop_function, put_code, put_version

DAY = 86_400.0
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def test_migration_v7_to_v8_adds_the_function_tables(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        assert s.migrate(conn, target=7) == 7
        assert "function_usage" not in inspect(conn).get_table_names()
    with engine.begin() as conn:
        assert s.migrate(conn) == s.LATEST >= 8
        for table in (s.function_code, s.function_versions, s.function_usage):
            cols = {c["name"] for c in inspect(conn).get_columns(table.name)}
            assert set(table.c.keys()) == cols
    engine.dispose()


def _row(fn: str, version: int, sha: str, memory: int = 128) -> VersionRow:
    return VersionRow(fn, version, sha, "main.handler", memory, 3.0, {"K": "v"}, T0)


def test_versions_and_code_go_with_their_transaction(store_url: str) -> None:
    store = Store.connect(store_url)
    rows = FunctionRows(store.engine)
    try:
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.write_rows(put_code("a" * 64, b"tgz-1", T0))
            tx.write_rows(put_version(_row("fn-1", 1, "a" * 64)))
            raise RuntimeError("refused")
        assert rows.code("a" * 64) is None and rows.versions("fn-1") == []
        for fn, v, sha in (("fn-1", 1, "a"), ("fn-1", 2, "b"), ("fn-2", 1, "a")):
            with store.transaction() as tx:
                tx.write_rows(put_code(sha * 64, f"tgz-{sha}".encode(), T0))  # "a" twice: one row
                tx.write_rows(put_version(_row(fn, v, sha * 64, 128 * v)))
        assert [(r.version, r.memory_mb) for r in rows.versions("fn-1")] == [(1, 128), (2, 256)]
        assert rows.version("fn-1", 2) == _row("fn-1", 2, "b" * 64, 256)
        assert rows.version("fn-1", 3) is None
        assert rows.code("a" * 64) == b"tgz-a"
        with store.transaction() as tx:
            tx.write_rows(drop_function("fn-1"))
        assert rows.versions("fn-1") == []
        assert rows.code("b" * 64) is None  # only fn-1 had it
        assert rows.code("a" * 64) == b"tgz-a"  # fn-2 still names it
    finally:
        store.close()


def _usage(project: str, fn: str, version: int, at: float, **kw: int) -> UsageRow:
    return UsageRow(project, fn, f"name-{fn}", version, int(at // 60), **kw)


def test_usage_adds_up_per_minute_and_sums_by_function_and_day(store_url: str) -> None:
    store = Store.connect(store_url)
    rows = FunctionRows(store.engine)
    try:
        rows.add_usage(
            [
                _usage("p1", "fn-a", 1, T0, requests=1, billed_ms=10, gb_ms=1280),
                _usage("p1", "fn-a", 1, T0 + 5, requests=2, errors=1, billed_ms=20, gb_ms=2560),
            ]
        )
        rows.add_usage(
            [
                _usage(
                    "p1", "fn-a", 1, T0 + 30, requests=3, cold_starts=1, billed_ms=30, gb_ms=3840
                ),
                _usage("p1", "fn-a", 2, T0 + 90, requests=1, billed_ms=5, gb_ms=640),
                _usage("p1", "fn-b", 1, T0 + DAY, requests=4, billed_ms=40, gb_ms=5120),
                _usage("p2", "fn-c", 1, T0, requests=7, billed_ms=70, gb_ms=8960),
            ]
        )
        by_fn = rows.usage("p1", by="function")
        assert [(u.key, u.function, u.requests, u.errors, u.cold_starts, u.billed_ms, u.gb_ms)
                for u in by_fn] == [("name-fn-a", "fn-a", 7, 1, 1, 65, 8320),
                                    ("name-fn-b", "fn-b", 4, 0, 0, 40, 5120)]  # fmt: skip
        by_day = rows.usage("p1", by="day")
        assert [(u.key, u.requests, u.gb_ms) for u in by_day] == [
            ("2027-01-15", 7, 8320),
            ("2027-01-16", 4, 5120),
        ]
        assert [u.key for u in rows.usage("p1", since=T0 + DAY)] == ["name-fn-b"]
        everyone = rows.usage(None)
        assert [(u.project, u.requests) for u in everyone] == [
            ("p1", 7),
            ("p1", 4),
            ("p2", 7),
        ]
        assert by_fn[0].gb_seconds == pytest.approx(8320 / 1024 / 1000)
    finally:
        store.close()


class _Flaky:
    """A sink that fails its first write, then writes to the real rows."""

    def __init__(self, rows: FunctionRows) -> None:
        self.rows = rows
        self.failed = False

    def add_usage(self, rows: Sequence[UsageRow]) -> None:
        if not self.failed:
            self.failed = True
            raise OSError("database unreachable")
        self.rows.add_usage(rows)


def test_meter_aggregates_and_a_restart_loses_no_usage(store_url: str) -> None:
    store = Store.connect(store_url)
    meter = Meter(FunctionRows(store.engine), flush_every=3600)  # only stop() flushes
    meter.start()
    for i in range(100):
        meter.record("p1", "fn-a", "hello", 1, 3 + i % 2, 256, cold=i == 0, error=i % 10 == 0,
                     at=T0 + i)  # fmt: skip
    assert len(meter.pending()) == 2  # minutes of T0 .. T0+99
    meter.stop()
    store.close()

    again = Store.connect(store_url)
    try:
        (u,) = FunctionRows(again.engine).usage("p1")
        assert (u.requests, u.errors, u.cold_starts, u.billed_ms) == (100, 10, 1, 350)
        assert u.gb_ms == 350 * 256
    finally:
        again.close()


def test_a_failed_flush_keeps_its_rows_for_the_next(store_url: str) -> None:
    store = Store.connect(store_url)
    rows = FunctionRows(store.engine)
    meter = Meter(_Flaky(rows))
    try:
        meter.record("p1", "fn-a", "hello", 1, 7, 128, cold=False, error=False, at=T0)
        with pytest.raises(OSError):
            meter.flush()
        meter.record("p1", "fn-a", "hello", 1, 3, 128, cold=False, error=False, at=T0 + 1)
        assert meter.flush() == 1
        (u,) = rows.usage("p1")
        assert (u.requests, u.billed_ms) == (2, 10)
        assert meter.flush() == 0
    finally:
        store.close()
