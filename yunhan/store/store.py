"""A revisioned object store on SQLite (SQLAlchemy Core), with transactions and a watch.

* Every resource has kind, id, project, name, spec, status and the revision of its last
  write. Each committed transaction that writes anything moves ONE global revision by one,
  and every object it wrote carries that revision: a multi-object change is one revision.
* `transaction()` is all or nothing: raise inside it and nothing is written, the revision
  does not move. Writers are serialised (a process lock plus `BEGIN IMMEDIATE`), so a
  check-then-write inside one transaction (name free? address free?) cannot race.
* Watch: `wait_for(predicate, timeout)` re-evaluates a predicate whenever this process
  commits (in-process notification, threads and asyncio alike) and at least every
  `poll_interval` seconds, so writes by another process are seen too.
* `update` writes nothing when spec and status are unchanged, so idempotent reconcilers do
  not churn revisions.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from yunhan.errors import Conflict, NotFound
from yunhan.store import schema as s

T = TypeVar("T")
Channel = Literal["revision", "any"]
DB_NAME = "yunhan.db"
DOC_HISTORY_KEEP = 64


@dataclass(frozen=True)
class Resource:
    """One stored object. Immutable: `Tx.update` returns the new version."""

    kind: str
    id: str
    project: str
    name: str
    spec: dict[str, Any]
    status: dict[str, Any]
    revision: int
    created_at: str

    def envelope(self) -> dict[str, Any]:
        """The JSON shape of docs/api.md."""
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "project": self.project,
            "revision": self.revision,
            "created_at": self.created_at,
            "spec": self.spec,
            "status": self.status,
        }


def _row_to_resource(row: Any) -> Resource:
    return Resource(
        kind=row.kind,
        id=row.id,
        project=row.project,
        name=row.name,
        spec=json.loads(row.spec) if "spec" in row._fields else {},
        status=json.loads(row.status),
        revision=row.revision,
        created_at=row.created_at,
    )


def _dump(d: dict[str, Any]) -> str:
    # Sorted keys: equal content gives equal text, so "unchanged" is a string compare.
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Liveness:
    host: str
    applied_revision: int
    heartbeat_at: float
    error: str | None


class Reader:
    """Read access inside one database transaction (a consistent snapshot)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def revision(self) -> int:
        """The revision committed before this transaction began."""
        return self._meta("revision")

    @property
    def compiled_revision(self) -> int:
        return self._meta("compiled_revision")

    def _meta(self, key: str) -> int:
        return int(
            self._conn.execute(select(s.meta.c.value).where(s.meta.c.key == key)).scalar_one()
        )

    def get(self, kind: str, id: str) -> Resource | None:
        row = self._conn.execute(
            select(s.resources).where(s.resources.c.id == id, s.resources.c.kind == kind)
        ).first()
        return _row_to_resource(row) if row else None

    def by_name(self, kind: str, project: str, name: str) -> Resource | None:
        row = self._conn.execute(
            select(s.resources).where(
                s.resources.c.kind == kind,
                s.resources.c.project == project,
                s.resources.c.name == name,
            )
        ).first()
        return _row_to_resource(row) if row else None

    def list(self, kind: str, project: str | None = None, *, spec: bool = True) -> list[Resource]:
        """Resources of `kind` (of one project if given), ordered by name.

        `spec=False` leaves every spec empty ({}): decoding large specs (host documents) is
        the expensive part when only their status is needed.
        """
        cols = list(s.resources.c) if spec else [c for c in s.resources.c if c.name != "spec"]
        q = select(*cols).where(s.resources.c.kind == kind)
        if project is not None:
            q = q.where(s.resources.c.project == project)
        rows = self._conn.execute(q.order_by(s.resources.c.name, s.resources.c.id))
        return [_row_to_resource(r) for r in rows]

    def token_project(self, token_hash: str) -> str | None:
        return self._conn.execute(
            select(s.tokens.c.project).where(s.tokens.c.hash == token_hash)
        ).scalar_one_or_none()

    def liveness(self) -> dict[str, Liveness]:
        rows = self._conn.execute(select(s.liveness))
        return {r.host: Liveness(r.host, r.applied_revision, r.heartbeat_at, r.error) for r in rows}

    def first_doc_including(self, host: str, revision: int) -> int | None:
        """The revision of `host`'s first desired document compiled from a store state that
        includes write `revision`, or None if none was written since."""
        return self._conn.execute(
            select(s.doc_history.c.revision)
            .where(s.doc_history.c.host == host, s.doc_history.c.input_revision >= revision)
            .order_by(s.doc_history.c.revision)
            .limit(1)
        ).scalar_one_or_none()


@dataclass
class _Pending:
    wrote: bool = False
    touched: bool = False  # a non-revisioned write (liveness, tokens, counters)
    created: set[str] = field(default_factory=set)


class Tx(Reader):
    """A write transaction. Objects written in it get revision `self.next_revision`."""

    def __init__(self, conn: Connection, now: str) -> None:
        super().__init__(conn)
        self._base = self.revision
        self.next_revision = self._base + 1
        self._now = now
        self._p = _Pending()

    @property
    def wrote(self) -> bool:
        return self._p.wrote

    def create(
        self,
        kind: str,
        id: str,
        project: str,
        name: str,
        spec: dict[str, Any],
        status: dict[str, Any] | None = None,
    ) -> Resource:
        """Insert a resource; a name taken in the project (per kind) is a Conflict."""
        if self.by_name(kind, project, name) is not None:
            raise Conflict(f"a {kind} named {name!r} already exists", kind=kind, name=name)
        if self._conn.execute(select(s.resources.c.id).where(s.resources.c.id == id)).first():
            raise Conflict(f"id {id} is already taken", id=id)
        res = Resource(kind, id, project, name, spec, status or {}, self.next_revision, self._now)
        self._conn.execute(
            insert(s.resources).values(
                id=id,
                kind=kind,
                project=project,
                name=name,
                spec=_dump(res.spec),
                status=_dump(res.status),
                revision=res.revision,
                created_at=res.created_at,
            )
        )
        self._p.wrote = True
        return res

    def update(
        self,
        res: Resource,
        *,
        spec: dict[str, Any] | None = None,
        status: dict[str, Any] | None = None,
    ) -> Resource:
        """Replace spec and/or status; writes nothing (same revision) when both are equal."""
        current = self.get(res.kind, res.id)
        if current is None:
            raise NotFound(f"{res.kind} {res.name} ({res.id}) no longer exists", id=res.id)
        new_spec = current.spec if spec is None else spec
        new_status = current.status if status is None else status
        if _dump(new_spec) == _dump(current.spec) and _dump(new_status) == _dump(current.status):
            return current
        self._conn.execute(
            update(s.resources)
            .where(s.resources.c.id == res.id)
            .values(spec=_dump(new_spec), status=_dump(new_status), revision=self.next_revision)
        )
        self._p.wrote = True
        return replace(current, spec=new_spec, status=new_status, revision=self.next_revision)

    def delete(self, res: Resource) -> Resource:
        """Delete `res`; returns it as of the deletion (its revision is the delete's, so a
        client can wait for the delete to converge)."""
        self._conn.execute(delete(s.resources).where(s.resources.c.id == res.id))
        self._p.wrote = True
        return replace(res, revision=self.next_revision)

    def add_token(self, token_hash: str, project: str) -> None:
        self._conn.execute(
            insert(s.tokens).values(hash=token_hash, project=project, created_at=self._now)
        )
        self._p.touched = True

    def set_compiled_revision(self, revision: int) -> None:
        self._conn.execute(
            update(s.meta).where(s.meta.c.key == "compiled_revision").values(value=revision)
        )
        self._p.touched = True

    def record_doc(self, host: str, input_revision: int) -> None:
        """Note that `host`'s desired document changes at this transaction's revision, as
        compiled from the store at `input_revision`. Keeps the last few per host."""
        self._conn.execute(
            insert(s.doc_history).values(
                host=host, revision=self.next_revision, input_revision=input_revision
            )
        )
        old = (
            select(s.doc_history.c.revision)
            .where(s.doc_history.c.host == host)
            .order_by(s.doc_history.c.revision.desc())
            .offset(DOC_HISTORY_KEEP)
        )
        self._conn.execute(
            delete(s.doc_history).where(
                s.doc_history.c.host == host, s.doc_history.c.revision.in_(old)
            )
        )

    def set_liveness(self, lv: Liveness) -> None:
        self._conn.execute(delete(s.liveness).where(s.liveness.c.host == lv.host))
        self._conn.execute(
            insert(s.liveness).values(
                host=lv.host,
                applied_revision=lv.applied_revision,
                heartbeat_at=lv.heartbeat_at,
                error=lv.error,
            )
        )
        self._p.touched = True

    def _finish(self) -> int:
        if self._p.wrote:
            self._conn.execute(
                update(s.meta).where(s.meta.c.key == "revision").values(value=self.next_revision)
            )
            return self.next_revision
        return self._base


class Store:
    """The store. Open with `Store.open(state_dir)`; thread-safe; close with `close()`."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.5,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.poll_interval = poll_interval
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._seq: dict[Channel, int] = {"revision": 0, "any": 0}  # commits of this process
        self._async_waiters: dict[Channel, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]]
        self._async_waiters = {"revision": set(), "any": set()}
        self._known_revision = 0  # the highest revision this process has seen committed
        self._last_poll = 0.0
        self._interrupted = False
        with self._connect(immediate=True) as conn, conn.begin():
            s.migrate(conn)

    @classmethod
    def open(cls, state_dir: Path, **kw: Any) -> Store:
        """Open (creating and migrating if needed) state_dir/yunhan.db in WAL mode."""
        state_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            f"sqlite:///{state_dir / DB_NAME}",
            connect_args={"check_same_thread": False, "timeout": 30},
            # One connection per API worker thread plus the long polls' reads on the event
            # loop: the default 5 + 10 would make requests queue for a connection.
            pool_size=16,
            max_overflow=48,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
            # Take transaction control from the sqlite3 module so that BEGIN is ours.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a power cut may lose the last commits, never consistency; the
            # control plane's truth is re-derived by reconcilers and re-reported by agents.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front: read-check-write cannot interleave.
            immediate = conn.get_execution_options().get("yunhan_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return cls(engine, **kw)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _connect(self, immediate: bool) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn.execution_options(yunhan_immediate=immediate)

    def _now_iso(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Reader]:
        """A consistent read-only snapshot."""
        with self._connect(immediate=False) as conn, conn.begin():
            yield Reader(conn)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """All-or-nothing write. Raising inside rolls back; the revision does not move."""
        with self._write_lock, self._connect(immediate=True) as conn:
            trans = conn.begin()
            try:
                tx = Tx(conn, self._now_iso())
                yield tx
                tx._finish()
            except IntegrityError as exc:
                # The checks in `create` come first; this is the database's last word.
                trans.rollback()
                raise Conflict(f"conflicting write: {exc.orig}") from exc
            except BaseException:
                trans.rollback()
                raise
            trans.commit()
        if tx.wrote:
            with self._cond:
                self._known_revision = max(self._known_revision, tx.next_revision)
        if tx.wrote or tx._p.touched:
            self._notify(tx.wrote)

    def revision(self) -> int:
        with self.read() as r:
            return r.revision

    # -- watch --------------------------------------------------------------------------
    #
    # Two channels: "revision" wakes on commits that moved the revision (what long polls on
    # documents and the controller wait for); "any" also wakes on bookkeeping writes such
    # as heartbeats (what `converged` waits for). Keeping them apart matters at scale: a
    # thousand agents heartbeating must not wake a thousand document long polls.

    def _notify(self, wrote: bool) -> None:
        channels: tuple[Channel, ...] = ("any", "revision") if wrote else ("any",)
        with self._cond:
            for ch in channels:
                self._seq[ch] += 1
            self._cond.notify_all()
            waiters = [w for ch in channels for w in self._async_waiters[ch]]
        for loop, ev in waiters:
            with suppress(RuntimeError):  # loop closed: its waiter is gone
                loop.call_soon_threadsafe(ev.set)

    def interrupt_waits(self) -> None:
        """End every wait now and from now on (as if timed out): the process is stopping,
        and a long poll must not hold the shutdown for its whole timeout."""
        with self._cond:
            self._interrupted = True
        self._notify(wrote=True)

    def _poll_external(self) -> None:
        """Did another process write? Asked at most once per poll interval, for everyone."""
        now = time.monotonic()
        with self._cond:
            if now - self._last_poll < self.poll_interval:
                return
            self._last_poll = now
        rev = self.revision()
        with self._cond:
            moved = rev > self._known_revision
            self._known_revision = max(self._known_revision, rev)
        if moved:
            self._notify(wrote=True)

    def wait_for(
        self, predicate: Callable[[], T | None], timeout: float, on: Channel = "revision"
    ) -> T | None:
        """Block until predicate() returns non-None (returned) or `timeout` s pass (None).

        The predicate runs once at first, then whenever channel `on` signals a change.
        """
        deadline = time.monotonic() + timeout
        seen: int | None = None
        while True:
            with self._cond:
                current = self._seq[on]
            if current != seen:
                seen = current
                result = predicate()
                if result is not None:
                    return result
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._interrupted:
                return None
            with self._cond:
                if self._seq[on] == seen:
                    self._cond.wait(min(remaining, self.poll_interval))
                woken = self._seq[on] != seen
            if not woken:
                self._poll_external()
                if on == "any":
                    seen = None  # bookkeeping of other processes has no signal: re-check

    async def wait_for_async(
        self, predicate: Callable[[], T | None], timeout: float, on: Channel = "revision"
    ) -> T | None:
        """`wait_for` for coroutines: waits without holding a thread."""
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        key = (loop, ev)
        with self._cond:
            self._async_waiters[on].add(key)
        try:
            deadline = loop.time() + timeout
            seen: int | None = None
            while True:
                with self._cond:
                    current = self._seq[on]
                if current != seen:
                    seen = current
                    ev.clear()
                    result = predicate()
                    if result is not None:
                        return result
                remaining = deadline - loop.time()
                if remaining <= 0 or self._interrupted:
                    return None
                with suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), min(remaining, self.poll_interval))
                if not ev.is_set():
                    self._poll_external()
                    if on == "any":
                        seen = None
        finally:
            with self._cond:
                self._async_waiters[on].discard(key)

    def wait_revision(self, after: int, timeout: float) -> int | None:
        """Wait until the store revision exceeds `after`; returns it, or None on timeout."""
        return self.wait_for(lambda: r if (r := self.revision()) > after else None, timeout)

    async def wait_revision_async(self, after: int, timeout: float) -> int | None:
        return await self.wait_for_async(
            lambda: r if (r := self.revision()) > after else None, timeout
        )
