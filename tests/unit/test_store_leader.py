"""Controller leadership with fencing (yunhan.store.leader), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, text, update
from sqlalchemy import select as sql_select

from tests.polling import wait_for
from yunhan.errors import Fenced
from yunhan.store import schema as s
from yunhan.store.leader import Leader, fence


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    eng = create_engine(store_url)
    with eng.begin() as conn:
        s.migrate(conn)
    yield eng
    eng.dispose()


def _stored_epoch(engine: Engine) -> int:
    with engine.connect() as conn:
        value = conn.execute(sql_select(s.meta.c.value).where(s.meta.c.key == "leader_epoch"))
        return int(value.scalar_one())


def _write_token(engine: Engine, epoch: int, token: str) -> None:
    """A controller's write: fenced by its epoch."""
    with engine.begin() as conn:
        conn.execute(insert(s.tokens).values(hash=token, project="p", created_at="now"))
        fence(conn, epoch)


def _tokens(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sql_select(s.tokens.c.hash)).scalars())


def test_one_leader_at_a_time_and_each_new_leader_bumps_the_epoch(engine: Engine) -> None:
    a, b = Leader(engine, name="a"), Leader(engine, name="b")
    try:
        assert a.try_acquire() == 1
        assert b.try_acquire() is None
        assert a.check() and not b.check()
        assert a.try_acquire() == 1  # already leading: same token, no bump
        assert _stored_epoch(engine) == 1
        a.release()
        assert not a.check()
        assert b.try_acquire() == 2
        assert a.try_acquire() is None
    finally:
        a.release()
        b.release()


def test_a_deposed_leaders_late_write_is_refused(engine: Engine) -> None:
    a, b = Leader(engine, name="a"), Leader(engine, name="b")
    try:
        old = a.try_acquire()
        assert old is not None
        _write_token(engine, old, "by-a-while-leading")
        a.release()  # or paused, or lost its connection: it may not have noticed yet
        new = b.try_acquire()
        assert new == old + 1
        with pytest.raises(Fenced) as err:
            _write_token(engine, old, "by-a-too-late")
        assert err.value.details == {"epoch": old, "current": new}
        _write_token(engine, new, "by-b")
        assert _tokens(engine) == {"by-a-while-leading", "by-b"}
    finally:
        a.release()
        b.release()


def test_check_fails_when_the_epoch_moved_under_us(engine: Engine) -> None:
    """Someone else bumped the token (an operator forcing a hand-over): stop leading."""
    a = Leader(engine, name="a")
    try:
        assert a.try_acquire() == 1
        with engine.begin() as conn:
            conn.execute(
                update(s.meta)
                .where(s.meta.c.key == "leader_epoch")
                .values(value=s.meta.c.value + 1)
            )
        assert not a.check()
        assert a.epoch is None
        assert a.try_acquire() == 3  # it can stand again
    finally:
        a.release()


def test_wait_lost_returns_when_leadership_is_lost(engine: Engine) -> None:
    a = Leader(engine, name="a")
    try:
        assert a.try_acquire() == 1

        async def main() -> float:
            watcher = asyncio.create_task(a.wait_lost(interval=0.02))
            await asyncio.sleep(0.1)
            assert not watcher.done()
            await asyncio.to_thread(a.release)
            start = time.monotonic()
            await asyncio.wait_for(watcher, timeout=5)
            return time.monotonic() - start

        assert asyncio.run(main()) < 2
    finally:
        a.release()


def test_sqlite_lock_file_removed_under_the_leader_ends_its_leadership(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/yunhan.db")
    with engine.begin() as conn:
        s.migrate(conn)
    a, b = Leader(engine, name="a"), Leader(engine, name="b")
    try:
        assert a.try_acquire() == 1
        lock = tmp_path / "yunhan.db.leader"
        assert "yunhan-leader a" in lock.read_text()
        lock.unlink()
        assert b.try_acquire() == 2  # a new file: b can lock it ...
        assert not a.check()  # ... and a learns it no longer leads
    finally:
        a.release()
        b.release()
        engine.dispose()


def _backend_pid(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        pid = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE application_name LIKE :n"),
            {"n": f"yunhan-leader {name} %"},
        ).scalar_one()
        return int(pid)


def test_pg_terminated_connection_hands_leadership_over(pg_url: str) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        s.migrate(conn)
    a, b = Leader(engine, name="a"), Leader(engine, name="b")
    try:
        old = a.try_acquire()
        assert old is not None and b.try_acquire() is None
        with engine.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": _backend_pid(engine, "a")}
            )
        assert not a.check()  # the first check after the loss reports it
        # The backend releases the lock as it exits, just after pg_terminate_backend returns.
        new = wait_for(b.try_acquire, timeout=10, what="b to take over")
        assert new == old + 1
        with pytest.raises(Fenced):
            _write_token(engine, old, "late")
        assert _tokens(engine) == set()
    finally:
        a.release()
        b.release()
        engine.dispose()


def test_pg_new_leader_waits_for_a_fenced_write_in_flight(pg_url: str) -> None:
    """The fence holds the epoch row: the deposed leader's transaction that passed it
    commits BEFORE the new leader's bump, never after."""
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        s.migrate(conn)
    a, b = Leader(engine, name="a"), Leader(engine, name="b")
    try:
        old = a.try_acquire()
        assert old is not None
        got: list[int | None] = []
        with engine.begin() as conn:
            fence(conn, old)
            conn.execute(insert(s.tokens).values(hash="in-flight", project="p", created_at="t"))
            a.release()
            taker = threading.Thread(
                target=lambda: got.append(wait_for(b.try_acquire, timeout=10, what="b leads"))
            )
            taker.start()
            wait_for(
                lambda: _waiting_on_lock(engine), timeout=10, what="b's bump to wait on the row"
            )
            assert not got
        taker.join(timeout=10)
        assert got == [old + 1]
        assert _tokens(engine) == {"in-flight"}
    finally:
        a.release()
        b.release()
        engine.dispose()


def _waiting_on_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        n = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
        return int(n) > 0


_CHILD = """
import sys, time
from sqlalchemy import create_engine
from yunhan.store.leader import Leader
leader = Leader(create_engine(sys.argv[1]), name="child")
epoch = leader.try_acquire()
print(epoch, flush=True)
sys.stdin.read()  # lead until killed
"""


def test_leader_process_killed_another_takes_over(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    b = Leader(engine, name="b")
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "the child did not report"
        old = int(child.stdout.readline())
        assert b.try_acquire() is None
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        start = time.monotonic()
        new = wait_for(b.try_acquire, timeout=10, what="b to take over from the killed child")
        assert new == old + 1
        assert time.monotonic() - start < 10
        with pytest.raises(Fenced):
            _write_token(engine, old, "late")
    finally:
        b.release()
        if child.poll() is None:
            child.kill()
            child.wait()
