"""Leadership of the controller, with fencing (ARCHITECTURE §6).

Several API replicas may run; the controller must be active on exactly one. A candidate
calls `try_acquire()` now and then; the one that gets the lock is the leader until it
releases it or loses it, and `check()` (or `wait_lost()`) tells it promptly when it has.

* PostgreSQL: a session-level advisory lock on one dedicated connection. The server drops
  it when that connection ends for any reason (process killed, backend terminated, network
  gone), so losing the connection is losing leadership; `check()` runs one cheap query on
  it, and fails as soon as the connection is dead.
* SQLite (one machine): an exclusive flock on a file beside the database. flock rather
  than POSIX record locks: a record lock belongs to the process, so two candidates in one
  process would both "hold" it, and closing any descriptor of the file would drop it.

A lock alone does not stop a deposed leader that has not noticed yet (a paused process, a
slow network): its late writes could land after the new leader has started. So each new
leader bumps meta "leader_epoch" and keeps the new value, its fencing token; every write
transaction of the controller runs `fence(conn, epoch)`, which refuses the transaction
(`Fenced`) unless the epoch is still current. The fence takes the row lock of the epoch:
a new leader's bump waits for a fenced transaction in flight, and a fenced transaction
that comes after the bump sees it, so no deposed write commits after the bump.

The dedicated PostgreSQL connection comes from the engine's pool and is kept for the life
of the Leader (standbys keep theirs between attempts). How fast a network partition is
noticed depends on the engine's connect arguments (libpq `tcp_user_timeout`, `keepalives_*`)
and the server's tcp_keepalives_* settings; a killed process or a terminated backend is
noticed at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from contextlib import suppress
from pathlib import Path

from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy.exc import DBAPIError

from yunhan.errors import Fenced, YunhanError
from yunhan.store import schema as s

# Advisory lock keys share one 64-bit space per database: ours are "YH" + a tag
# (schema.MIGRATE_LOCK_KEY is tag 1).
LEADER_LOCK_KEY = 0x5948_0000_0000_0002
EPOCH_KEY = "leader_epoch"
# How long a new leader's epoch bump waits for a deposed leader's fenced transaction still
# in flight; past it the attempt gives up (returns None) and the candidate tries later.
BUMP_LOCK_TIMEOUT_MS = 5000

_epoch_row = s.meta.c.key == EPOCH_KEY


def fence(conn: Connection, epoch: int) -> None:
    """Run inside a write transaction: raise `Fenced` (and so roll the transaction back)
    unless meta "leader_epoch" is still `epoch`.

    It is a write of the epoch row (to itself): it takes the row's lock until the
    transaction ends, so it cannot interleave with a new leader's bump (see the module doc).
    """
    try:
        matched = conn.execute(
            update(s.meta).where(_epoch_row, s.meta.c.value == epoch).values(value=s.meta.c.value)
        ).rowcount
    except DBAPIError as exc:
        # Under REPEATABLE READ or SERIALIZABLE, a bump committed since the snapshot is a
        # serialization failure on this row: that too means another leader came.
        if _sqlstate(exc) == "40001":
            raise Fenced(
                f"leader epoch {epoch} was superseded during this transaction; write refused",
                epoch=epoch,
            ) from exc
        raise
    if matched != 1:
        current = conn.execute(select(s.meta.c.value).where(_epoch_row)).scalar_one_or_none()
        raise Fenced(
            f"leader epoch {epoch} is no longer current (now {current}): another controller "
            "has taken over, so this one's write is refused",
            epoch=epoch,
            current=current,
        )


class Leader:
    """One candidate for leadership, called `name` (shown in pg_stat_activity and in the lock
    file, for a person asking who leads).

    `lock_path` is for SQLite only: by default the database file + ".leader". Methods are
    thread-safe; `release()` when done (a process that exits releases anyway).
    """

    def __init__(self, engine: Engine, *, name: str, lock_path: Path | None = None) -> None:
        self._engine = engine
        self.name = name
        self._mutex = threading.Lock()
        self._epoch: int | None = None
        self._conn: Connection | None = None  # PostgreSQL: the dedicated connection
        self._fd: int | None = None  # SQLite: the locked file
        self._dialect = engine.dialect.name
        if self._dialect == "sqlite":
            if lock_path is None:
                db = engine.url.database
                if not db or db == ":memory:" or db.startswith("file:"):
                    raise ValueError("an SQLite leader needs lock_path for this database URL")
                lock_path = Path(db + ".leader")
            self.lock_path: Path | None = Path(lock_path)
        elif self._dialect == "postgresql":
            self.lock_path = None
        else:
            raise ValueError(f"leadership is not implemented for {self._dialect}")

    @property
    def epoch(self) -> int | None:
        """The fencing token while leading (as last checked), else None."""
        return self._epoch

    def try_acquire(self) -> int | None:
        """Become the leader if nobody is; returns the new epoch, or None if another
        candidate leads. Does not wait for the lock. Already leading: the same epoch, if
        `check()` still holds. A database that cannot be reached raises (SQLAlchemy's
        DBAPIError): that is not the same answer as "another candidate leads"."""
        with self._mutex:
            if self._epoch is not None:
                return self._epoch if self._check_locked() else None
            got = self._pg_lock() if self._dialect == "postgresql" else self._file_lock()
            if not got:
                return None
            try:
                self._epoch = self._bump()
                if self._epoch is None:
                    self._drop()
                    return None
                self._describe()
            except BaseException:
                self._drop()
                raise
            return self._epoch

    def check(self) -> bool:
        """Still the leader? One cheap query: the lock is still held (on PostgreSQL: its
        connection answers) and the epoch is still ours. Once False, stays False until a
        new `try_acquire()`."""
        with self._mutex:
            return self._check_locked()

    def release(self) -> None:
        """Stop leading (or stop being a candidate). The next leader bumps the epoch, so our
        token is dead even if a transaction of ours is still running."""
        with self._mutex:
            self._drop()

    async def wait_lost(self, interval: float = 1.0) -> None:
        """Return when leadership is lost (checked every `interval` seconds, off the event
        loop). Run it beside the controller and stop the controller when it returns."""
        while await asyncio.to_thread(self.check):
            await asyncio.sleep(interval)

    # -- PostgreSQL ------------------------------------------------------------------------

    def _pg_lock(self) -> bool:
        try:
            if self._conn is None:
                # Autocommit: the lock is per session; a transaction left open would hold
                # back vacuum for as long as we lead.
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            return bool(
                self._conn.execute(select(func.pg_try_advisory_lock(LEADER_LOCK_KEY))).scalar()
            )
        except DBAPIError:
            self._drop()
            raise

    # -- SQLite ----------------------------------------------------------------------------

    def _file_lock(self) -> bool:
        assert self.lock_path is not None
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def _file_still_ours(self) -> bool:
        # A lock file removed (or replaced) under us locks nothing: the next candidate
        # would lock a new file and lead beside us.
        assert self.lock_path is not None and self._fd is not None
        try:
            return os.stat(self.lock_path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    # -- both ------------------------------------------------------------------------------

    def _bump(self) -> int | None:
        try:
            with self._engine.begin() as conn:
                if self._dialect == "postgresql":
                    conn.execute(text(f"SET LOCAL lock_timeout = {BUMP_LOCK_TIMEOUT_MS}"))
                bumped = conn.execute(
                    update(s.meta).where(_epoch_row).values(value=s.meta.c.value + 1)
                ).rowcount
                if bumped != 1:
                    raise YunhanError(
                        'no "leader_epoch" in table meta: migrate the schema first (version 3)'
                    )
                return int(conn.execute(select(s.meta.c.value).where(_epoch_row)).scalar_one())
        except DBAPIError as exc:
            if _sqlstate(exc) == "55P03":  # lock_not_available: a fenced write in flight
                return None
            raise

    def _describe(self) -> None:
        who = f"yunhan-leader {self.name} pid={os.getpid()} epoch={self._epoch}"
        if self._conn is not None:
            self._conn.execute(select(func.set_config("application_name", who[:63], False)))
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (who + "\n").encode(), 0)

    def _check_locked(self) -> bool:
        if self._epoch is None:
            return False
        if self._conn is not None:
            try:
                current = self._conn.execute(select(s.meta.c.value).where(_epoch_row)).scalar()
            except DBAPIError:
                self._drop()
                return False
        else:
            if not self._file_still_ours():
                self._drop()
                return False
            try:
                with self._engine.connect() as conn:
                    current = conn.execute(select(s.meta.c.value).where(_epoch_row)).scalar()
            except DBAPIError:
                # A busy SQLite database says nothing about leadership, which is the flock
                # we still hold; our writes are fenced anyway.
                return True
        if current != self._epoch:
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        """Give up the lock and forget the epoch; never raises."""
        self._epoch = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            # Unlock first, so that the lock is free when release() returns (a closed
            # session's locks go only when its backend has exited, a moment later); then
            # close the physical connection, which ends the lock whatever state it is in.
            with suppress(Exception):
                conn.execute(select(func.pg_advisory_unlock_all()))
            with suppress(Exception):
                conn.invalidate()
                conn.close()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # drops the flock


def _sqlstate(exc: DBAPIError) -> str | None:
    code = getattr(exc.orig, "sqlstate", None)
    return code if isinstance(code, str) else None
