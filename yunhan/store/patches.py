"""Fleet hot patches' side tables (docs/fleetpatch.md): the .yhp files, by digest, and what
agents report of each process a patch touched.

Neither is a resource. A patch file is written with the patch that uploads it, in the same
database transaction (`put_file`, through `Tx.write_rows`), and goes with the last patch
that names it (`drop_patch`). Per-process rows are upserted by agents' reports
(`PatchRows.report`: one transaction per report, no revision); the patch's status keeps
the counters computed from them (`PatchRows.results`), so a lost status write is repaired
by the host's next report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, desc, func, select
from sqlalchemy.dialects import postgresql, sqlite

from yunhan.store import schema as s

MAX_ROWS = 1000  # rows of one patch a read returns at most


@dataclass(frozen=True)
class ProcessRow:
    """One process on one host as its agent last reported it for one patch; (patch, host,
    pid, start) is the key, so a reused pid is another row."""

    patch: str
    host: str
    pid: int
    start: int  # the process's start time, clock ticks since boot (/proc/PID/stat)
    comm: str
    instance: str | None
    result: str  # applied | refused | busy | died | rolled_back | rollback_failed
    reason: str | None
    at: float  # unix seconds, the agent's


def _insert(conn: Connection, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def put_file(digest: str, content: bytes, now: float) -> Callable[[Connection], None]:
    """A writer (for `Tx.write_rows`) that stores `content` under `digest` unless it is
    there already (the same bytes: the key is their sha256)."""

    def write(conn: Connection) -> None:
        stmt = _insert(conn, s.patch_files).values(
            digest=digest, size=len(content), content=content, created_at=now
        )
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["digest"]))

    return write


def drop_patch(patch: str, unused_digest: str | None) -> Callable[[Connection], None]:
    """A writer (for `Tx.write_rows`) that deletes a patch's process rows, and its file
    when `unused_digest` says no other patch names it."""

    def write(conn: Connection) -> None:
        conn.execute(delete(s.patch_targets).where(s.patch_targets.c.patch == patch))
        if unused_digest is not None:
            conn.execute(delete(s.patch_files).where(s.patch_files.c.digest == unused_digest))

    return write


class PatchRows:
    """The patch tables of one store's database. Thread-safe (one connection per call)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ignored = 0  # reports of hosts that are not a patch's target (metrics)

    def file(self, digest: str) -> bytes | None:
        """The bytes stored under `digest`, or None."""
        t = s.patch_files
        with self.engine.connect() as conn:
            data = conn.execute(select(t.c.content).where(t.c.digest == digest)).scalar()
            conn.rollback()
        return None if data is None else bytes(data)

    def report(self, rows: Sequence[ProcessRow]) -> None:
        """Upsert `rows` in one transaction (the last report of a process wins)."""
        if not rows:
            return
        conn: Connection
        with self.engine.connect().execution_options(yunhan_immediate=True) as conn, conn.begin():
            stmt = _insert(conn, s.patch_targets)
            stmt = stmt.on_conflict_do_update(
                index_elements=["patch", "host", "pid", "start"],
                set_={c: stmt.excluded[c] for c in ("comm", "instance", "result", "reason", "at")},
            )
            conn.execute(stmt, [asdict(r) for r in rows])

    def results(self, patch: str, host: str) -> Counter[str]:
        """How many processes of `patch` on `host` are in each result."""
        t = s.patch_targets
        stmt = (
            select(t.c.result, func.count())
            .where(t.c.patch == patch, t.c.host == host)
            .group_by(t.c.result)
        )
        with self.engine.connect() as conn:
            out: Counter[str] = Counter({str(r): int(n) for r, n in conn.execute(stmt).all()})
            conn.rollback()
        return out

    def rows(
        self, patch: str, host: str | None = None, limit: int = MAX_ROWS
    ) -> tuple[list[dict[str, Any]], bool]:
        """The newest `limit` rows of `patch` (of one host if given), newest report first,
        and whether there are more."""
        t = s.patch_targets
        stmt = select(t).where(t.c.patch == patch)
        if host is not None:
            stmt = stmt.where(t.c.host == host)
        stmt = stmt.order_by(desc(t.c.at), t.c.host, t.c.pid).limit(limit + 1)
        with self.engine.connect() as conn:
            found = [dict(r._mapping) for r in conn.execute(stmt).all()]
            conn.rollback()
        return found[:limit], len(found) > limit
