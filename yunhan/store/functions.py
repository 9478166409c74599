"""Functions' side tables (docs/functions.md): code by sha256, immutable versions, usage.

None is a resource. A deploy writes its code and its version row with the function's
resource, in the same database transaction (`put_code`, `put_version` through
`Tx.write_rows`); a delete drops the versions and the code no other version names
(`drop_function`). Usage is written by the meter (`FunctionRows.add_usage`: one
transaction per flush, added to what a row already holds, no revision) and kept after
its function is deleted: it is what was used, and billed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Engine, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from yunhan.functions.catalog import traffic_of
from yunhan.functions.metering import UsageRow
from yunhan.store import schema as s
from yunhan.store.resource import Resource
from yunhan.store.store import Notice

__all__ = [
    "FunctionRows",
    "UsageRow",
    "UsageTotal",
    "VersionRow",
    "drop_function",
    "effective_traffic",
    "notice",
    "put_code",
    "put_version",
]

UsageBy = Literal["function", "day"]


@dataclass(frozen=True)
class VersionRow:
    """One immutable version of a function: its code and the config it was deployed with."""

    function: str  # the function's id
    version: int
    code_sha256: str
    handler: str
    memory_mb: int
    timeout_s: float
    env: dict[str, str]
    created: float  # unix seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.code_sha256,
            "handler": self.handler,
            "memory_mb": self.memory_mb,
            "timeout_s": self.timeout_s,
            "env": dict(self.env),
            "created": self.created,
        }


@dataclass(frozen=True)
class UsageTotal:
    """Usage summed over a group: one function (`key` its name) or one UTC day (`key`
    YYYY-MM-DD), of one project."""

    project: str
    key: str
    function: str | None  # the function's id when grouped by function
    requests: int
    errors: int
    cold_starts: int
    billed_ms: int
    gb_ms: int

    @property
    def gb_seconds(self) -> float:
        return self.gb_ms / 1024 / 1000


def _insert(conn: Connection, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def put_code(sha256: str, content: bytes, now: float) -> Callable[[Connection], None]:
    """A writer (for `Tx.write_rows`) that stores `content` under its sha256 unless it is
    there already (the same bytes)."""

    def write(conn: Connection) -> None:
        stmt = _insert(conn, s.function_code).values(
            sha256=sha256, content=content, size=len(content), created=now
        )
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["sha256"]))

    return write


def put_version(row: VersionRow) -> Callable[[Connection], None]:
    """A writer (for `Tx.write_rows`) of a new version row (a version is never rewritten:
    a second write of the same key fails the transaction)."""

    def write(conn: Connection) -> None:
        values = asdict(row)
        values["env"] = json.dumps(row.env, sort_keys=True)
        conn.execute(s.function_versions.insert().values(**values))

    return write


def drop_function(function_id: str) -> Callable[[Connection], None]:
    """A writer (for `Tx.write_rows`) that deletes a function's versions and the code that
    no other function's version names. Usage stays."""

    def write(conn: Connection) -> None:
        v = s.function_versions
        shas = set(
            conn.execute(select(v.c.code_sha256).where(v.c.function == function_id)).scalars()
        )
        conn.execute(delete(v).where(v.c.function == function_id))
        if shas:
            used = set(
                conn.execute(select(v.c.code_sha256).where(v.c.code_sha256.in_(shas))).scalars()
            )
            if shas - used:
                c = s.function_code
                conn.execute(delete(c).where(c.c.sha256.in_(sorted(shas - used))))

    return write


def notice(fn: Resource, reason: str, message: str, at: float) -> Notice:
    """An event about function `fn` (`yunhan events --for function/NAME`), for
    `Tx.add_notices`; outside a transaction use `AppState.journal.notice(fn.project,
    fn.id, reason, message)`."""
    return Notice(fn.project, fn.id, reason, message, at)


def effective_traffic(fn: Resource) -> dict[int, int]:
    """Where function `fn`'s requests go: version -> percent (summing to 100; only the
    versions that get some; empty before its first version)."""
    return traffic_of(fn.spec, int(fn.status.get("latest_version", 0)))


def _version(r: Any) -> VersionRow:
    return VersionRow(
        function=r.function,
        version=int(r.version),
        code_sha256=r.code_sha256,
        handler=r.handler,
        memory_mb=int(r.memory_mb),
        timeout_s=float(r.timeout_s),
        env=dict(json.loads(r.env)),
        created=float(r.created),
    )


def _day(minute: int) -> str:
    return dt.datetime.fromtimestamp(minute * 60, dt.UTC).strftime("%Y-%m-%d")


class FunctionRows:
    """The function tables of one store's database. Thread-safe (one connection per call)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def version(self, function_id: str, version: int) -> VersionRow | None:
        v = s.function_versions
        stmt = select(v).where(v.c.function == function_id, v.c.version == version)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
            conn.rollback()
        return None if row is None else _version(row)

    def versions(self, function_id: str) -> list[VersionRow]:
        """Every version of the function, oldest first."""
        v = s.function_versions
        stmt = select(v).where(v.c.function == function_id).order_by(v.c.version)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            conn.rollback()
        return [_version(r) for r in rows]

    def code(self, sha256: str) -> bytes | None:
        """The tar.gz stored under `sha256`, or None."""
        c = s.function_code
        with self.engine.connect() as conn:
            data = conn.execute(select(c.c.content).where(c.c.sha256 == sha256)).scalar()
            conn.rollback()
        return None if data is None else bytes(data)

    def add_usage(self, rows: Sequence[UsageRow]) -> None:
        """Add `rows` to what is stored (one transaction; rows of one key are summed
        first, so that one statement never upserts a key twice)."""
        if not rows:
            return
        merged: dict[tuple[str, str, int, int], UsageRow] = {}
        for row in rows:
            have = merged.get(row.key)
            merged[row.key] = row if have is None else have.plus(row)
        conn: Connection
        with self.engine.connect().execution_options(yunhan_immediate=True) as conn, conn.begin():
            stmt = _insert(conn, s.function_usage)
            t = s.function_usage
            counters = ("requests", "errors", "cold_starts", "billed_ms", "gb_ms")
            set_: dict[str, Any] = {c: t.c[c] + stmt.excluded[c] for c in counters}
            set_["function_name"] = stmt.excluded["function_name"]
            stmt = stmt.on_conflict_do_update(
                index_elements=["project", "function", "version", "minute"], set_=set_
            )
            conn.execute(stmt, [asdict(r) for r in merged.values()])

    def usage(
        self, project: str | None, since: float | None = None, by: UsageBy = "function"
    ) -> list[UsageTotal]:
        """Usage of `project` (None: every project) from the minute of `since` on, summed by
        function (ordered by project, name) or by UTC day (by project, day)."""
        t = s.function_usage
        sums = [
            func.sum(t.c.requests),
            func.sum(t.c.errors),
            func.sum(t.c.cold_starts),
            func.sum(t.c.billed_ms),
            func.sum(t.c.gb_ms),
        ]
        if by == "function":
            group: list[Any] = [t.c.project, t.c.function]
            cols: list[Any] = [t.c.project, t.c.function, func.max(t.c.function_name)]
        else:
            day = t.c.minute // 1440
            group = [t.c.project, day]
            cols = [t.c.project, day]
        stmt = select(*cols, *sums).group_by(*group)
        if project is not None:
            stmt = stmt.where(t.c.project == project)
        if since is not None:
            stmt = stmt.where(t.c.minute >= int(since // 60))
        with self.engine.connect() as conn:
            found = conn.execute(stmt).all()
            conn.rollback()
        out = []
        for r in found:
            if by == "function":
                proj, fid, key = str(r[0]), str(r[1]), str(r[2])
                nums = r[3:]
            else:
                proj, fid, key = str(r[0]), None, _day(int(r[1]) * 1440)
                nums = r[2:]
            out.append(UsageTotal(proj, key, fid, *(int(n or 0) for n in nums)))
        return sorted(out, key=lambda u: (u.project, u.key, u.function or ""))
