"""Hybrid traffic samples (issue 16; docs/cutover.md): written in batches, binned, pruned.

A sample is what moved at one counting point (a host's VPC namespace, a gateway replica)
for one IDC prefix and direction between two readings of its counters; agents post only
samples that moved. They live in their own table, outside the model and the change log,
as flow records do: an ingest costs one transaction, moves no revision and wakes no
watcher. Retention keeps the table bounded (by age and by rows), pruned from `add` at
most once per `every` seconds.

Binning is done here, in Python, over the rows of the asked range: a range is a
cut-over's minutes to hours, a few samples per host and replica every couple of seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.sql.elements import ColumnElement

from yunhan.model.trafficstats import Series, bin_samples
from yunhan.store import schema as s
from yunhan.store.flows import Retention, prune_rows

# Flow records' retention rules, with a cut-over's week of samples by default.
DEFAULT_RETENTION = Retention(max_age=7 * 24 * 3600.0, max_rows=2_000_000)


@dataclass(frozen=True)
class Sample:
    project: str
    vpc: str
    prefix: str
    point: str
    source: str
    direction: str
    packets: int
    bytes: int
    start: float
    end: float
    received_at: float


@dataclass(frozen=True)
class Query:
    """`projects` None: every project (the admin's). A sample belongs to the bin of its
    `end` (when it was read)."""

    since: float
    until: float
    window: float
    projects: Collection[str] | None = None
    vpc: str | None = None
    prefix: str | None = None


class TrafficSamples:
    """The traffic_samples table of one store's database. Thread-safe."""

    def __init__(
        self, engine: Engine, clock: Callable[[], float], retention: Retention | None = None
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.retention = retention or DEFAULT_RETENTION
        self._lock = threading.Lock()
        self._last_prune: float | None = None
        self.pruned = 0

    def add(self, samples: Sequence[Sample]) -> None:
        now = self.clock()
        with self._lock:
            due = self._last_prune is None or now - self._last_prune >= self.retention.every
            if due:
                self._last_prune = now
        if not samples and not due:
            return
        conn: Connection
        with self.engine.connect().execution_options(yunhan_immediate=True) as conn, conn.begin():
            if due:
                self.pruned += self._prune(conn, now)
            if samples:
                conn.execute(insert(s.traffic_samples), [asdict(x) for x in samples])

    def _prune(self, conn: Connection, now: float) -> int:
        ret = self.retention
        return prune_rows(conn, s.traffic_samples, now, ret.max_age, ret.max_rows, ret.batch)

    def rows(self, q: Query) -> list[dict[str, Any]]:
        t = s.traffic_samples
        conds: list[ColumnElement[bool]] = [t.c.end >= q.since, t.c.end < q.until]
        if q.projects is not None:
            conds.append(t.c.project.in_(sorted(q.projects)))
        if q.vpc is not None:
            conds.append(t.c.vpc == q.vpc)
        if q.prefix is not None:
            conds.append(t.c.prefix == q.prefix)
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(*conds).order_by(t.c.id)).all()
            conn.rollback()
        return [dict(r._mapping) for r in rows]

    def series(self, q: Query) -> list[Series]:
        return bin_samples(self.rows(q), q.since, q.until, q.window)
