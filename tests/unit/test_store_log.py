"""What the store promises beyond one transaction, on SQLite and PostgreSQL (`store_url`):
the change log, subscribers, reads inside transactions and batches, group commit,
replicas (two Store objects on one database), restart, log pruning, fencing, indexes.

Two Store objects on one database stand for two processes: nothing crosses between them
in memory, only through the database.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as strat
from sqlalchemy import Engine, event, func, select

from tests.polling import wait_for
from yunhan.errors import Conflict, Fenced
from yunhan.store import Event, Reader, Resource, Store, Tx
from yunhan.store import schema as s
from yunhan.store import store as store_module
from yunhan.store.leader import Leader

OpenStore = Callable[[], Store]


@pytest.fixture
def open_store(store_url: str) -> Iterator[OpenStore]:
    """Opens Store objects on the test's database (each one a "process"); closes them."""
    opened: list[Store] = []

    def make() -> Store:
        st = Store.connect(store_url, poll_interval=0.02)
        opened.append(st)
        return st

    yield make
    for st in opened:
        st.close()


@pytest.fixture
def store(open_store: OpenStore) -> Store:
    return open_store()


# -- helpers ------------------------------------------------------------------------------


def _log(st: Store) -> list[tuple[int, int, str, str, str, dict[str, Any]]]:
    """The events table, in order: (revision, seq, kind, id, op, obj)."""
    with st.engine.connect() as conn:
        rows = conn.execute(select(s.events).order_by(s.events.c.revision, s.events.c.seq))
        return [(int(r.revision), r.seq, r.kind, r.id, r.op, json.loads(r.obj)) for r in rows]


def _db_revision(st: Store) -> int:
    with st.engine.connect() as conn:
        value = conn.execute(select(s.meta.c.value).where(s.meta.c.key == "revision"))
        return int(value.scalar_one())


def _snapshot(st: Store) -> dict[str, Any]:
    """Everything a Store's model holds, to compare two models."""
    with st.read():
        m = st.model
        return {
            "revision": m.revision,
            "objs": dict(m.objs),
            "names": dict(m.names),
            "tokens": {h: t.project for h, t in m.tokens.items()},
            "index": {k: {v: set(ids) for v, ids in b.items()} for k, b in m.index.items()},
        }


def _vpc(tx: Tx, n: int, project: str = "p1") -> Resource:
    return tx.create("vpc", f"vpc-{n:08x}", project, f"v{n}", {"cidrs": ["10.0.0.0/16"]})


class _HoldAfterCommit:
    """Holds the thread that committed a batch right after its database commit, when the
    batch's connection goes back to the pool: that thread still has the store's turn to
    commit, so the next batch opens, gathers companions and cannot commit until `release()`.

    Uses SQLAlchemy's public pool events on the store's engine; nothing of the store's."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._thread: threading.Thread | None = None
        self.held = threading.Event()
        self._go = threading.Event()
        event.listen(engine, "checkin", self._on_checkin)

    def arm(self, thread: threading.Thread) -> None:
        self._thread = thread

    def _on_checkin(self, *_args: Any) -> None:
        if threading.current_thread() is self._thread and not self.held.is_set():
            self.held.set()
            assert self._go.wait(30), "never released"

    def release(self) -> None:
        self._go.set()


def _in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    return threading.Thread(target=run), errors


# -- the change log -------------------------------------------------------------------------


def test_every_committed_write_is_an_event_in_order(store: Store) -> None:
    with store.transaction() as tx:
        a = _vpc(tx, 1)
        b = _vpc(tx, 2)
    with store.transaction() as tx:
        a2 = tx.update(a, status={"vni": 7})
        tx.delete(b)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        _vpc(tx, 3)
        raise RuntimeError("rejected by the caller")
    with pytest.raises(Conflict), store.transaction() as tx:
        _vpc(tx, 4)
        tx.create("vpc", "vpc-00000005", "p1", "v1", {})  # name taken
    with store.transaction() as tx:
        tx.update(a2, status={"vni": 7})  # unchanged: nothing to log
    assert store.revision() == _db_revision(store) == 2

    log = _log(store)
    assert [e[:5] for e in log] == [
        (1, 0, "vpc", a.id, "put"),
        (1, 1, "vpc", b.id, "put"),
        (2, 0, "vpc", a.id, "put"),
        (2, 1, "vpc", b.id, "delete"),
    ]
    assert log[0][5] == {
        "project": "p1",
        "name": "v1",
        "spec": {"cidrs": ["10.0.0.0/16"]},
        "status": {},
        "revision": 1,
        "created_at": a.created_at,
    }
    assert log[2][5]["status"] == {"vni": 7} and log[2][5]["revision"] == 2
    # A delete logs the object as it was last, with the delete's revision.
    assert log[3][5]["name"] == "v2" and log[3][5]["revision"] == 2


def test_bookkeeping_writes_no_event_and_no_revision(store: Store) -> None:
    from yunhan.store import Liveness

    with store.transaction() as tx:
        tx.add_token("t" * 64, "p1")
        tx.set_liveness(Liveness("h1", 0, 1.0, None))
    assert store.revision() == _db_revision(store) == 0
    assert _log(store) == []
    with store.read() as r:
        assert r.token_project("t" * 64) == "p1"


def test_a_subscriber_sees_load_first_then_every_event_once_in_order(
    open_store: OpenStore,
) -> None:
    a, b = open_store(), open_store()
    with a.transaction() as tx:
        _vpc(tx, 1)
    calls: list[tuple[str, int, list[Any]]] = []
    a.subscribe(
        lambda rev, evs: calls.append(("events", rev, list(evs))),
        load=lambda rev, objs: calls.append(("load", rev, list(objs))),
    )
    # Writes of this process from several threads, and of another process (seen by a
    # refresh, and by a write of this process that first catches up under the lock).
    threads = [threading.Thread(target=_create_many(a, 100 + 10 * t, 10)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _create_many(b, 200, 5)()
    a.refresh()
    _create_many(b, 300, 3)()
    _create_many(a, 400, 2)()
    a.refresh()  # nothing new: no second delivery

    assert calls[0][0] == "load" and calls[0][1] == 1
    assert [o.id for o in calls[0][2]] == ["vpc-00000001"]
    assert all(kind == "events" for kind, _r, _e in calls[1:])
    revisions = [rev for _k, rev, _e in calls[1:]]
    assert revisions == list(range(2, a.revision() + 1))
    delivered = [(e.revision, e.id, e.op) for _k, _r, evs in calls[1:] for e in evs]
    assert delivered == [(r, i, op) for r, _seq, _kind, i, op, _o in _log(a)][1:]
    for _k, rev, evs in calls[1:]:
        assert all(isinstance(e, Event) and e.revision == rev for e in evs)


def _create_many(st: Store, first: int, n: int) -> Callable[[], None]:
    def run() -> None:
        for i in range(first, first + n):
            with st.transaction() as tx:
                _vpc(tx, i)

    return run


# -- reads inside transactions and batches --------------------------------------------------


def _world(tx: Tx) -> tuple[Resource, Resource]:
    vpc = _vpc(tx, 1)
    sub = tx.create("subnet", "subnet-00000001", "p1", "s1", {"vpc": vpc.id, "cidr": "10.0.1.0/24"})
    return vpc, sub


def test_a_transaction_reads_its_own_writes(store: Store) -> None:
    with store.transaction() as tx:
        vpc, sub = _world(tx)
        placed = tx.create("instance", "instance-00000001", "p1", "i1", {"subnet": sub.id})
    with store.transaction() as tx:
        i2 = tx.create("instance", "instance-00000002", "p1", "i2", {"subnet": sub.id})
        assert tx.get("instance", i2.id) == i2
        assert tx.get("vpc", i2.id) is None  # another kind
        assert tx.by_name("instance", "p1", "i2") == i2
        assert [o.name for o in tx.list("instance")] == ["i1", "i2"]
        assert [o.name for o in tx.find("instance", "subnet", sub.id)] == ["i1", "i2"]
        assert tx.count_of("instance", "unplaced", "yes") == 2

        moved = tx.update(placed, status={"host": "h1", "mac": "02:00:00:00:00:01"})
        assert tx.find("instance", "host", "h1") == [moved]
        assert tx.find("instance", "mac", "02:00:00:00:00:01") == [moved]
        assert [o.name for o in tx.find("instance", "unplaced", "yes")] == ["i2"]
        moved = tx.update(moved, status={"host": "h2"})
        assert (
            tx.find("instance", "host", "h1") == [] and tx.count_of("instance", "host", "h1") == 0
        )
        assert tx.find("instance", "host", "h2") == [moved]

        tx.delete(sub)
        assert tx.get("subnet", sub.id) is None and tx.by_name("subnet", "p1", "s1") is None
        assert tx.list("subnet") == [] and tx.find("subnet", "vpc", vpc.id) == []
        again = tx.create("subnet", "subnet-00000002", "p1", "s1", {"vpc": vpc.id})
        assert tx.by_name("subnet", "p1", "s1") == again
        assert tx.find("subnet", "vpc", vpc.id) == [again]
    with store.read() as r:
        assert r.find("instance", "host", "h2") == [moved]
        assert r.find("subnet", "vpc", vpc.id) == [again]
        assert r.by_name("subnet", "p1", "s1") == again


def test_a_batch_member_reads_earlier_members_writes_and_outsiders_see_only_commits(
    store: Store,
) -> None:
    """Batch 1 commits and its thread is held with the commit turn; batch 2 then gathers:
    T2 writes X; the main thread's transaction sees X, and fails; T4 writes Y. Outside
    readers never see X before its batch commits; X and Y commit in one database commit,
    each at its own revision; the failed member writes nothing."""
    hold = _HoldAfterCommit(store.engine)
    t1, err1 = _in_thread(_create_many(store, 1, 1))
    hold.arm(t1)
    t1.start()
    assert hold.held.wait(30)

    x_written = threading.Event()

    def write_x() -> None:
        with store.transaction() as tx:
            vpc = tx.get("vpc", "vpc-00000001")
            assert vpc is not None  # batch 1 is durable: the new batch caught up to it
            tx.create("subnet", "subnet-0000000a", "p1", "x", {"vpc": vpc.id})
            x_written.set()

    t2, err2 = _in_thread(write_x)
    t2.start()
    assert x_written.wait(30)

    with pytest.raises(RuntimeError), store.transaction() as tx:
        x = tx.by_name("subnet", "p1", "x")
        assert x is not None and tx.get("subnet", x.id) == x
        assert [o.name for o in tx.list("subnet")] == ["x"]
        assert tx.find("subnet", "vpc", "vpc-00000001") == [x]
        assert tx.revision == 2  # X takes revision 2; this one would be 3
        tx.create("subnet", "subnet-0000000f", "p1", "failed", {"vpc": "vpc-00000001"})
        raise RuntimeError("this member fails")

    with store.read() as r:  # X is not committed: nobody outside sees it
        assert r.by_name("subnet", "p1", "x") is None and r.list("subnet") == []

    def write_y() -> None:
        with store.transaction() as tx:
            assert tx.by_name("subnet", "p1", "failed") is None
            tx.create("subnet", "subnet-0000000b", "p1", "y", {"vpc": "vpc-00000001"})

    t4, err4 = _in_thread(write_y)
    t4.start()
    hold.release()
    for t in (t1, t2, t4):
        t.join(30)
    assert err1 == err2 == err4 == []

    assert store.batches == 2  # batch 1; then X and Y in one database commit
    with store.read() as r:
        assert [(o.name, o.revision) for o in r.list("subnet")] == [("x", 2), ("y", 3)]
    assert store.revision() == _db_revision(store) == 3
    assert [e[0] for e in _log(store)] == [1, 2, 3]


# -- group commit ---------------------------------------------------------------------------


def test_group_commit_under_many_writers(store: Store) -> None:
    threads_n, per_thread = 8, 50
    revisions: list[int] = []
    failed_names: list[str] = []
    lock = threading.Lock()

    def writer(t: int) -> None:
        for i in range(per_thread):
            name = f"t{t}-{i}"
            if i % 10 == 7:  # one in ten fails in the middle of a busy batch
                with pytest.raises(RuntimeError), store.transaction() as tx:
                    tx.create("vpc", f"vpc-{t:02x}{i:06x}", "p1", name, {})
                    raise RuntimeError("rejected")
                with lock:
                    failed_names.append(name)
                continue
            with store.transaction() as tx:
                created = tx.create("vpc", f"vpc-{t:02x}{i:06x}", "p1", name, {})
            with lock:
                revisions.append(created.revision)

    runs = [_in_thread(lambda t=t: writer(t)) for t in range(threads_n)]  # type: ignore[misc]
    batches_before = store.batches
    for thread, _e in runs:
        thread.start()
    for thread, _e in runs:
        thread.join(120)
    assert [e for _t, errs in runs for e in errs] == []

    committed = threads_n * per_thread - len(failed_names)
    assert sorted(revisions) == list(range(1, committed + 1))  # no gap, no duplicate
    assert store.revision() == _db_revision(store) == committed
    assert [e[0] for e in _log(store)] == list(range(1, committed + 1))
    assert store.batches - batches_before < committed  # several per database commit
    with store.read() as r:
        names = {o.name for o in r.list("vpc")}
    assert len(names) == committed and not names & set(failed_names)


def test_a_fenced_member_does_not_take_its_batch_down(store: Store) -> None:
    leader = Leader(store.engine, name="a")
    try:
        epoch = leader.try_acquire()
        assert epoch is not None
        hold = _HoldAfterCommit(store.engine)
        t1, err1 = _in_thread(_create_many(store, 1, 1))
        hold.arm(t1)
        t1.start()
        assert hold.held.wait(30)
        t2, err2 = _in_thread(_create_many(store, 2, 1))
        t2.start()
        # The model reaches 1 only when batch 2 opens (and catches up): t1 is held before.
        wait_for(lambda: store.revision() >= 1, 30, "batch 2 to open")
        with pytest.raises(Fenced), store.transaction(fence=epoch + 1) as tx:
            _vpc(tx, 3)
        t3, err3 = _in_thread(_create_many(store, 4, 1))
        t3.start()
        hold.release()
        for t in (t1, t2, t3):
            t.join(30)
        assert err1 == err2 == err3 == []
        with store.read() as r:
            assert [o.name for o in r.list("vpc")] == ["v1", "v2", "v4"]
        assert store.revision() == 3
    finally:
        leader.release()


# -- replicas -------------------------------------------------------------------------------


def test_a_replica_sees_writes_after_refresh_and_by_polling(open_store: OpenStore) -> None:
    a, b = open_store(), open_store()
    with a.transaction() as tx:
        v = _vpc(tx, 1)
    with b.read() as r:
        assert r.get("vpc", v.id) is None  # nothing crosses in memory
    b.refresh()
    with b.read() as r:
        assert r.get("vpc", v.id) == v and r.revision == 1
    assert b.wait_revision(1, 0.05) is None
    got: list[int | None] = []
    waiter = threading.Thread(target=lambda: got.append(b.wait_revision(1, 30)))
    waiter.start()
    with a.transaction() as tx:
        tx.update(v, status={"vni": 5})
    waiter.join(30)
    assert got == [2]
    with b.read() as r:
        assert [(o.id, o.revision) for o in r.find("vpc", "vni", "5")] == [(v.id, 2)]


def test_names_stay_unique_across_replicas(open_store: OpenStore) -> None:
    a, b = open_store(), open_store()
    with a.transaction() as tx:
        tx.create("vpc", "vpc-00000001", "p1", "x", {})
    b.refresh()
    with pytest.raises(Conflict, match="already exists"), b.transaction() as tx:
        tx.create("vpc", "vpc-00000002", "p1", "x", {})
    # Without a refresh too: a writer catches up under the database's write lock first.
    with a.transaction() as tx:
        tx.create("vpc", "vpc-00000003", "p1", "y", {})
    with pytest.raises(Conflict, match="already exists"), b.transaction() as tx:
        tx.create("vpc", "vpc-00000004", "p1", "y", {})
    assert a.revision() == b.revision() == _db_revision(a) == 2


def test_replicas_writing_in_turn_keep_one_gapless_revision_sequence(
    open_store: OpenStore,
) -> None:
    a, b = open_store(), open_store()
    revisions = []
    for i in range(1, 21):
        writer = a if i % 3 else b
        with writer.transaction() as tx:
            revisions.append(_vpc(tx, i).revision)
            if i % 4 == 0:
                revisions.append(-1)  # several objects, still one revision
                _vpc(tx, 1000 + i)
    assert [r for r in revisions if r > 0] == list(range(1, 21))
    a.refresh()
    b.refresh()
    assert _snapshot(a) == _snapshot(b)
    assert sorted({e[0] for e in _log(a)}) == list(range(1, 21))


def test_a_token_created_on_one_replica_is_known_to_the_other(open_store: OpenStore) -> None:
    # A token is added alone (POST /v1/projects/{ref}/tokens): no event, no revision.
    a, b = open_store(), open_store()
    with a.transaction() as tx:
        tx.create("project", "project-00000001", "", "p", {})
        tx.add_token("1" * 64, "project-00000001")
    b.refresh()
    with a.transaction() as tx:
        tx.add_token("2" * 64, "project-00000001")
    b.refresh()
    with b.read() as r:
        assert r.token_project("1" * 64) == "project-00000001"
        assert r.token_project("2" * 64) == "project-00000001"


def test_a_revocation_reaches_another_replica_when_it_follows_the_log(
    open_store: OpenStore,
) -> None:
    a, b = open_store(), open_store()
    with a.transaction() as tx:
        info = tx.add_token("1" * 64, "p1")
    b.refresh()
    with a.transaction() as tx:
        tx.revoke_token(info, 5.0)
    b.refresh()  # what a NOTIFY (or the poll) makes a replica do
    with b.read() as r:
        t = r.token("1" * 64)
        assert t is not None and t.revoked_at == 5.0 and not t.valid_at(6.0)


# -- restart and pruning --------------------------------------------------------------------


def _busy_history(st: Store) -> None:
    with st.transaction() as tx:
        vpc, sub = _world(tx)
        tx.update(vpc, status={"vni": 11})
        tx.create("host", "host-00000001", "", "h1", {"underlay_ip": "192.0.2.1"})
        tx.add_token("a" * 64, "p1")
    for i in range(6):
        with st.transaction() as tx:
            tx.create(
                "instance",
                f"instance-{i:08x}",
                "p1",
                f"i{i}",
                {"subnet": sub.id, "zone": "z1"},
                {"host": "h1", "mac": f"02:00:00:00:00:{i:02x}"} if i % 2 else {},
            )
    with st.transaction() as tx:
        doomed = tx.get("instance", "instance-00000003")
        assert doomed is not None
        tx.delete(doomed)
        tx.create("instance", "instance-00000010", "p1", "i3", {"subnet": sub.id})


def test_a_reopened_store_loads_the_same_model(open_store: OpenStore) -> None:
    first = open_store()
    _busy_history(first)
    before = _snapshot(first)
    first.close()
    again = open_store()
    assert _snapshot(again) == before
    assert before["revision"] == 8 and before["tokens"] == {"a" * 64: "p1"}


def test_a_replica_behind_the_pruned_log_reloads_whole(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "LOG_KEEP", 3)
    monkeypatch.setattr(store_module, "PRUNE_EVERY", 4)
    a, behind, writer = open_store(), open_store(), open_store()
    loads: list[int] = []
    behind.subscribe(lambda _r, _e: None, load=lambda rev, _objs: loads.append(rev))
    _busy_history(a)
    for i in range(10):
        with a.transaction() as tx:
            _vpc(tx, 100 + i)
    with a.engine.connect() as conn:
        oldest = conn.execute(select(func.min(s.events.c.revision))).scalar_one()
    assert oldest > 1  # pruned: `behind` (at 0) cannot follow the log
    behind.refresh()
    assert _snapshot(behind) == _snapshot(a)
    assert loads == [0, a.revision()]
    # A writer that fell behind reloads too before it writes.
    for i in range(10):
        with a.transaction() as tx:
            _vpc(tx, 200 + i)
    with writer.transaction() as tx:
        _vpc(tx, 300)
    a.refresh()
    assert _snapshot(writer) == _snapshot(a)


def test_a_replica_refreshing_while_the_log_is_pruned_does_not_skip_events(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The horizon moves between the replica's look at it and its read of the events:
    it must notice the hole and reload, not apply what is left of the log."""
    monkeypatch.setattr(store_module, "LOG_KEEP", 2)
    monkeypatch.setattr(store_module, "PRUNE_EVERY", 1)
    a, b = open_store(), open_store()
    with a.transaction() as tx:
        _vpc(tx, 1)
    b.refresh()
    for i in range(2, 4):
        with a.transaction() as tx:
            _vpc(tx, i)  # b (at 1) is still within the log: horizon 1

    state = {"done": False}

    def prune_first(_conn: Any, _cur: Any, statement: str, *_args: Any) -> None:
        if not state["done"] and "FROM events" in statement:
            state["done"] = True
            with a.transaction() as tx:  # moves the horizon to 2: revision 2 is gone
                _vpc(tx, 4)

    event.listen(b.engine, "before_cursor_execute", prune_first)
    b.refresh()
    event.remove(b.engine, "before_cursor_execute", prune_first)
    assert state["done"]
    b.refresh()
    assert _snapshot(b) == _snapshot(a)


# -- fencing --------------------------------------------------------------------------------


def test_a_deposed_leaders_transaction_is_fenced_and_writes_nothing(store: Store) -> None:
    old, new = Leader(store.engine, name="old"), Leader(store.engine, name="new")
    try:
        epoch = old.try_acquire()
        assert epoch is not None
        with store.transaction(fence=epoch) as tx:
            _vpc(tx, 1)
        old.release()
        taken = new.try_acquire()
        assert taken == epoch + 1
        body_ran = False
        with pytest.raises(Fenced), store.transaction(fence=epoch) as tx:
            body_ran = True
            _vpc(tx, 2)
        assert not body_ran
        assert store.revision() == _db_revision(store) == 1
        assert [e[3] for e in _log(store)] == ["vpc-00000001"]
        with store.transaction(fence=taken) as tx:
            _vpc(tx, 3)
        assert store.revision() == 2
    finally:
        old.release()
        new.release()


# -- indexes --------------------------------------------------------------------------------

_HOSTS = ["h1", "h2", "h3"]
_SUBNETS = ["subnet-00000001", "subnet-00000002"]
_VPCS = ["vpc-00000001", "vpc-00000002"]


def _brute(r: Reader, kind: str, field: str, key: str) -> list[Resource]:
    fn = store_module.INDEXES[(kind, field)]
    return sorted((o for o in r.list(kind) if fn(o) == key), key=lambda o: (o.name, o.id))


def _check_indexes(r: Reader) -> None:
    keys: dict[tuple[str, str], list[str]] = {
        ("instance", "subnet"): _SUBNETS,
        ("instance", "host"): _HOSTS,
        ("instance", "mac"): [f"02:00:00:00:00:{i:02x}" for i in range(4)],
        ("instance", "zone"): ["z1", "z2"],
        ("instance", "unplaced"): ["yes"],
        ("subnet", "vpc"): _VPCS,
        ("vpc", "vni"): ["1", "2"],
    }
    for (kind, field), values in keys.items():
        for value in values:
            want = _brute(r, kind, field, value)
            assert r.find(kind, field, value) == want, (kind, field, value)
            assert r.count_of(kind, field, value) == len(want), (kind, field, value)


_op = strat.one_of(
    strat.tuples(
        strat.just("instance"),
        strat.integers(0, 7),
        strat.sampled_from(_SUBNETS),
        strat.sampled_from(["z1", "z2"]),
        strat.one_of(strat.none(), strat.sampled_from(_HOSTS)),
        strat.integers(0, 3),
    ),
    strat.tuples(strat.just("subnet"), strat.integers(0, 1), strat.sampled_from(_VPCS)),
    strat.tuples(strat.just("vpc"), strat.integers(0, 1), strat.integers(0, 2)),
    strat.tuples(strat.just("delete"), strat.integers(0, 7)),
)


def _apply(tx: Tx, op: tuple[Any, ...]) -> None:
    if op[0] == "instance":
        _k, n, subnet, zone, host, mac = op
        status = {"host": host, "mac": f"02:00:00:00:00:{mac:02x}"} if host else {}
        spec = {"subnet": subnet, "zone": zone}
        current = tx.get("instance", f"instance-{n:08x}")
        if current is None:
            tx.create("instance", f"instance-{n:08x}", "p1", f"i{n}", spec, status)
        else:
            tx.update(current, spec=spec, status=status)
    elif op[0] == "subnet":
        _k, n, vpc = op
        current = tx.get("subnet", _SUBNETS[n])
        if current is None:
            tx.create("subnet", _SUBNETS[n], "p1", f"s{n}", {"vpc": vpc})
        else:
            tx.update(current, spec={"vpc": vpc})
    elif op[0] == "vpc":
        _k, n, vni = op
        current = tx.get("vpc", _VPCS[n])
        status = {"vni": vni} if vni else {}
        if current is None:
            tx.create("vpc", _VPCS[n], "p1", f"v{n}", {}, status)
        else:
            tx.update(current, status=status)
    else:
        gone = tx.get("instance", f"instance-{op[1]:08x}")
        if gone is not None:
            tx.delete(gone)


def test_indexes_agree_with_a_scan_after_random_writes(open_store: OpenStore) -> None:
    st_ = open_store()

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(strat.lists(strat.lists(_op, min_size=1, max_size=6), min_size=1, max_size=4))
    def run(transactions: list[list[tuple[Any, ...]]]) -> None:
        # Each example goes on from the state the last one left: the store is shared.
        for ops in transactions:
            with st_.transaction() as tx:
                for op in ops:
                    _apply(tx, op)
                    _check_indexes(tx)  # the transaction's overlay
            with st_.read() as r:
                _check_indexes(r)  # the model

    run()
    assert _snapshot(open_store()) == _snapshot(st_)  # and a reload files them the same
