"""Flow log records (docs/flowlogs.md): written in batches, queried, aggregated, pruned.

Records live in their own table (`schema.flow_records`), outside the model and the change
log, as notices and leases do: agents post a batch every few seconds, and a batch must cost
one database transaction, move no revision and wake no watcher. Readers go to the database
(the model never holds records).

Retention keeps the table bounded whatever the agents send: records received longer ago
than `Retention.max_age` go, and beyond `Retention.max_rows` the oldest go. Pruning runs
from `add` at most once per `Retention.every` seconds and deletes at most
`Retention.batch` rows per rule per run, so no single ingest pays for a backlog; a backlog
is worked off over the following runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Table, delete, desc, func, insert, select
from sqlalchemy.sql.elements import ColumnElement

from yunhan.store import schema as s

Action = Literal["ACCEPT", "REJECT"]
TopBy = Literal["pair", "instance", "port"]

DEFAULT_MAX_AGE = 24 * 3600.0
DEFAULT_MAX_ROWS = 2_000_000


@dataclass(frozen=True)
class Retention:
    """How long and how many records are kept, and how pruning is paced."""

    max_age: float = DEFAULT_MAX_AGE  # seconds after receipt
    max_rows: int = DEFAULT_MAX_ROWS
    every: float = 60.0  # seconds between two prune runs (of one process)
    batch: int = 100_000  # rows deleted at most per rule per run


def prune_rows(
    conn: Connection, t: Table, now: float, max_age: float, max_rows: int, batch: int
) -> int:
    """Delete rows of `t` (an `id` that grows with receipt, a `received_at`) received more
    than `max_age` seconds ago, then the oldest beyond `max_rows`, at most `batch` per
    rule; returns how many went. Oldest first by id: a bounded run takes the oldest rows,
    and one range delete by the primary key removes them."""
    gone = 0
    aged = (
        select(t.c.id)
        .where(t.c.received_at < now - max_age)
        .order_by(t.c.id)
        .limit(batch)
        .subquery()
    )
    cut = conn.execute(select(func.max(aged.c.id))).scalar()
    if cut is not None:
        horizon = t.c.received_at < now - max_age
        gone += conn.execute(delete(t).where(t.c.id <= cut, horizon)).rowcount or 0
    excess = int(conn.execute(select(func.count()).select_from(t)).scalar_one()) - max_rows
    if excess > 0:
        cut = conn.execute(
            select(t.c.id).order_by(t.c.id).offset(min(excess, batch) - 1).limit(1)
        ).scalar()
        if cut is not None:
            gone += conn.execute(delete(t).where(t.c.id <= cut)).rowcount or 0
    return gone


@dataclass(frozen=True)
class FlowRecord:
    """One stored record: the agent's fields plus what the server knows of the instance.

    A SKIPDATA record (`log_status`) stands for `packets` records the agent dropped; its
    addresses, ports, protocol, direction and action are None.
    """

    project: str
    vpc: str
    subnet: str
    instance: str
    interface: str | None
    host: str
    flow_direction: str | None
    srcaddr: str | None
    dstaddr: str | None
    srcport: int | None
    dstport: int | None
    protocol: int | None
    packets: int
    bytes: int
    start: float
    end: float
    action: str | None
    log_status: str
    received_at: float


@dataclass(frozen=True)
class Query:
    """Which records: every filter given must hold (None: any). `projects` None is every
    project (the admin's view)."""

    projects: Collection[str] | None = None
    vpc: str | None = None
    subnet: str | None = None
    instance: str | None = None
    action: Action | None = None
    since: float | None = None  # on `start`, inclusive
    until: float | None = None  # on `start`, exclusive


class FlowRecords:
    """The flow_records table of one store's database. Thread-safe."""

    def __init__(
        self, engine: Engine, clock: Callable[[], float], retention: Retention | None = None
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.retention = retention or Retention()
        self._lock = threading.Lock()
        self._last_prune: float | None = None
        # Totals of this process since it started (metrics): records posted, of those
        # discarded (not of an instance on the posting host), records agents reported
        # dropped (stored as SKIPDATA), and rows pruned.
        self.received = 0
        self.discarded = 0
        self.skipped = 0
        self.pruned = 0

    def add(self, records: Sequence[FlowRecord]) -> None:
        """Store `records` in one transaction; prune first when a prune is due."""
        now = self.clock()
        with self._lock:
            due = self._last_prune is None or now - self._last_prune >= self.retention.every
            if due:
                self._last_prune = now
        if not records and not due:
            return
        conn: Connection
        with self.engine.connect().execution_options(yunhan_immediate=True) as conn, conn.begin():
            if due:
                self.pruned += self._prune(conn, now)
            if records:
                conn.execute(insert(s.flow_records), [asdict(r) for r in records])

    def prune(self, now: float | None = None) -> int:
        """Prune now (whatever the pace); returns the rows deleted."""
        now = self.clock() if now is None else now
        conn: Connection
        with self.engine.connect().execution_options(yunhan_immediate=True) as conn, conn.begin():
            n = self._prune(conn, now)
        with self._lock:
            self._last_prune = now
        self.pruned += n
        return n

    def _prune(self, conn: Connection, now: float) -> int:
        ret = self.retention
        return prune_rows(conn, s.flow_records, now, ret.max_age, ret.max_rows, ret.batch)

    def count(self) -> int:
        """Records kept (all projects)."""
        with self.engine.connect() as conn:
            n = int(conn.execute(select(func.count()).select_from(s.flow_records)).scalar_one())
            conn.rollback()
        return n

    @staticmethod
    def _where(q: Query) -> list[ColumnElement[bool]]:
        t = s.flow_records
        conds: list[ColumnElement[bool]] = []
        if q.projects is not None:
            conds.append(t.c.project.in_(sorted(q.projects)))
        for col, value in (("vpc", q.vpc), ("subnet", q.subnet), ("instance", q.instance)):
            if value is not None:
                conds.append(t.c[col] == value)
        if q.action is not None:
            conds.append(t.c.action == q.action)
        if q.since is not None:
            conds.append(t.c.start >= q.since)
        if q.until is not None:
            conds.append(t.c.start < q.until)
        return conds

    def query(self, q: Query, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """The newest `limit` records matching `q` (by start, then id: newest first), and
        whether more matched."""
        t = s.flow_records
        stmt = (
            select(t)
            .where(*self._where(q))
            .order_by(desc(t.c.start), desc(t.c.id))
            .limit(limit + 1)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            conn.rollback()
        return [dict(r._mapping) for r in rows[:limit]], len(rows) > limit

    def top(self, q: Query, by: TopBy, limit: int) -> list[dict[str, Any]]:
        """Top talkers among the records matching `q` (accepted and rejected; SKIPDATA
        records carry no traffic and are left out): bytes, packets and records summed per
        key, most bytes first. Keys: `pair` (srcaddr, dstaddr), `instance`, `port`
        (protocol, dstport)."""
        t = s.flow_records
        keys = {
            "pair": (t.c.srcaddr, t.c.dstaddr),
            "instance": (t.c.instance,),
            "port": (t.c.protocol, t.c.dstport),
        }[by]
        total = func.sum(t.c.bytes).label("bytes")
        stmt = (
            select(
                *keys,
                total,
                func.sum(t.c.packets).label("packets"),
                func.count().label("flows"),
            )
            .where(*self._where(q), t.c.log_status == "OK")
            .group_by(*keys)
            .order_by(desc(total), *keys)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            conn.rollback()
        out = []
        for r in rows:
            m = dict(r._mapping)
            out.append({**m, "bytes": int(m["bytes"]), "packets": int(m["packets"])})
        return out
