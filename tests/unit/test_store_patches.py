"""The fleet patch side tables (yunhan.store.patches) on SQLite and PostgreSQL: the v6 -> v7
migration, files written with a transaction's resources or not at all, per-process rows
upserted by key and read newest first, bounded."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from yunhan.store import Store
from yunhan.store import schema as s
from yunhan.store.patches import PatchRows, ProcessRow, drop_patch, put_file


def test_migration_v6_to_v7_adds_the_patch_tables(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        assert s.migrate(conn, target=6) == 6
        assert "patch_files" not in inspect(conn).get_table_names()
    with engine.begin() as conn:
        assert s.migrate(conn) == s.LATEST >= 7
        for table in (s.patch_files, s.patch_targets):
            cols = {c["name"] for c in inspect(conn).get_columns(table.name)}
            assert set(table.c.keys()) == cols
    engine.dispose()


def test_files_go_with_their_transaction_and_rows_upsert(store_url: str) -> None:
    store = Store.connect(store_url)
    rows = PatchRows(store.engine)
    try:
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.write_rows(put_file("a" * 64, b"\x7fELF-1", 1.0))
            raise RuntimeError("refused")
        assert rows.file("a" * 64) is None  # nothing written
        before = store.revision()
        for _ in range(2):  # the same bytes twice: one row
            with store.transaction() as tx:
                tx.write_rows(put_file("a" * 64, b"\x7fELF-1", 1.0))
        assert rows.file("a" * 64) == b"\x7fELF-1"
        assert store.revision() == before  # side rows move no revision

        def row(pid: int, result: str, at: float, host: str = "h1") -> ProcessRow:
            return ProcessRow("hp-1", host, pid, 100, "svc", None, result, None, at)

        rows.report([row(1, "busy", 1.0), row(2, "applied", 2.0), row(3, "refused", 3.0)])
        rows.report([row(1, "applied", 4.0), row(9, "applied", 5.0, "h2")])
        assert rows.results("hp-1", "h1") == {"applied": 2, "refused": 1}
        got, more = rows.rows("hp-1")
        assert [(r["host"], r["pid"], r["result"]) for r in got] == [
            ("h2", 9, "applied"), ("h1", 1, "applied"), ("h1", 3, "refused"),
            ("h1", 2, "applied"),
        ]  # fmt: skip
        assert not more
        got, more = rows.rows("hp-1", "h1", limit=2)
        assert [r["pid"] for r in got] == [1, 3] and more
        with store.transaction() as tx:
            tx.write_rows(drop_patch("hp-1", "a" * 64))
        assert rows.rows("hp-1") == ([], False) and rows.file("a" * 64) is None
    finally:
        store.close()
