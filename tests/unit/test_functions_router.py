"""The router against an in-memory function host (the real host is in the integration and
e2e tests): activator, placement, version copy, scaling, metering."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

from yunhan.errors import Throttled, Unreachable, WorkerGone
from yunhan.functions.autoscaler import Policy
from yunhan.functions.hostclient import VersionMissing
from yunhan.functions.router import Code, HostSlot, Result, Router, Target


class FakeHost:
    def __init__(self, name: str = "h1", *, fail: str | None = None) -> None:
        self.name = name
        self.fail = fail
        self.versions: set[tuple[str, int]] = set()
        self.workers: dict[str, tuple[str, int]] = {}
        self.stopped: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.exit_next = False
        self.vanished: set[str] = set()
        self.lock = threading.Lock()
        self.n = 0

    def put_version(self, function: str, version: int, **code: Any) -> None:
        assert code["sha256"] == "abc" and code["tar_gz"] == b"tgz"
        self.versions.add((function, version))

    def spawn(
        self, function: str, version: int, owner: str, netns: str | None = None
    ) -> tuple[str, float]:
        if self.fail:
            raise Unreachable(self.fail)
        if (function, version) not in self.versions:
            raise VersionMissing("version not deployed")
        with self.lock:
            self.n += 1
            wid = f"{self.name}-w{self.n}"
            self.workers[wid] = (function, version)
        return wid, 1.0

    def invoke(self, wid: str, request_id: str, event: Any, timeout_s: float) -> dict[str, Any]:
        if wid in self.vanished:
            raise WorkerGone(f"no worker {wid}")
        self.gate.wait(5)
        exited = self.exit_next
        self.exit_next = False
        if exited:
            self.workers.pop(wid, None)
        return {
            "request_id": request_id,
            "ok": not exited,
            "result": {"echo": event, "worker": wid},
            "error": "out of memory (limit 128 MB)" if exited else None,
            "duration_ms": 2.4,
            "billed_ms": 3,
            "worker_exited": exited,
        }

    def stop(self, wid: str) -> None:
        self.stopped.append(wid)
        self.workers.pop(wid, None)


def target(version: int = 1, **kw: Any) -> Target:
    policy = kw.pop("policy", Policy(target=1.0, stable_window=6, panic_window=2, idle_grace=1))
    return Target(
        function="fn-00000001",
        name="hello",
        project="proj-1",
        version=version,
        memory_mb=kw.pop("memory_mb", 128),
        timeout_s=kw.pop("timeout_s", 3.0),
        concurrency=1,
        policy=policy,
        code=lambda: Code("hello", "main.handler", 128, 3.0, {}, b"tgz", "abc"),
    )


class Rig:
    def __init__(self, hosts: list[FakeHost], **kw: Any) -> None:
        self.now = 0.0
        self.events: list[tuple[str, str]] = []
        self.metered: list[tuple[Result, bool]] = []
        self.hosts = hosts
        self.router = Router(
            lambda: [HostSlot(h.name, 1024, h) for h in self.hosts],
            emit=lambda _p, _f, reason, msg: self.events.append((reason, msg)),
            meter=lambda _t, r, err: self.metered.append((r, err)),
            clock=lambda: self.now,
            **kw,
        )

    def settle(self, timeout: float = 10.0) -> None:
        """Until every spawn and stop submitted so far is done. (A no-op job run to its end
        is not enough: the router's pool runs jobs side by side, so a spawn submitted
        before it may still be under way, which made the scaling test flaky in CI.)"""
        jobs = self.router._jobs
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs.submit(lambda: None).result()
            with jobs._shutdown_lock:  # the executor's own count of idle threads
                idle = jobs._work_queue.empty() and jobs._idle_semaphore._value >= len(
                    jobs._threads
                )
            if idle:
                return
            time.sleep(0.01)
        raise AssertionError("the router's jobs did not settle")


@pytest.fixture
def rig() -> Any:
    made: list[Rig] = []

    def make(hosts: list[FakeHost] | None = None, **kw: Any) -> Rig:
        made.append(Rig(hosts or [FakeHost()], **kw))
        return made[-1]

    yield make
    for r in made:
        r.router.stop()


def test_a_request_at_zero_starts_a_worker_after_copying_the_version(rig: Any) -> None:
    r = rig()
    host = r.hosts[0]
    first = r.router.invoke(target(), {"x": 1})
    assert first.ok and first.cold_start and first.cold_start_ms is not None
    assert first.result == {"echo": {"x": 1}, "worker": "h1-w1"}
    assert host.versions == {("fn-00000001", 1)}
    second = r.router.invoke(target(), {"x": 2})
    assert not second.cold_start and second.result["worker"] == "h1-w1"
    assert [m[0].billed_ms for m in r.metered] == [3, 3]


def test_a_worker_that_exits_is_replaced_and_the_error_is_metered(rig: Any) -> None:
    r = rig()
    host = r.hosts[0]
    r.router.invoke(target(), {})
    host.exit_next = True
    bad = r.router.invoke(target(), {})
    assert not bad.ok and "out of memory" in (bad.error or "")
    assert r.metered[-1][1] is True
    again = r.router.invoke(target(), {})
    assert again.ok and again.cold_start and again.result["worker"] == "h1-w2"


def test_a_worker_gone_before_it_ran_the_request_is_replaced_and_the_request_runs(
    rig: Any,
) -> None:
    r = rig()
    r.router.invoke(target(), {})
    r.hosts[0].vanished.add("h1-w1")  # its host reaped or lost it meanwhile
    res = r.router.invoke(target(), {"again": True})
    assert res.ok and res.result == {"echo": {"again": True}, "worker": "h1-w2"}
    assert len(r.metered) == 2  # the lost attempt is not billed


def test_no_host_fails_fast_with_the_reason(rig: Any) -> None:
    r = rig([FakeHost(fail="connection refused")])
    with pytest.raises(Unreachable, match="connection refused"):
        r.router.invoke(target(), {})
    assert any(reason == "WorkerFailed" for reason, _ in r.events)


def test_the_activator_holds_up_to_its_queue_then_throttles(rig: Any) -> None:
    r = rig(queue=2)
    host = r.hosts[0]
    r.router.invoke(target(), {})  # one warm worker
    host.gate.clear()  # its invocations now hang until the gate opens
    done: list[Result] = []
    threads = [
        threading.Thread(target=lambda: done.append(r.router.invoke(target(), {})))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    pool = r.router.pool(target())
    for _ in range(500):  # one in flight, two held
        with pool.cond:
            if pool.held == 2:
                break
        threading.Event().wait(0.01)
    with pytest.raises(Throttled, match="already held"):
        r.router.invoke(target(), {})
    host.gate.set()
    for t in threads:
        t.join(10)
    assert len(done) == 3 and all(d.ok for d in done)


def test_load_scales_up_then_down_to_zero_with_events(rig: Any) -> None:
    r = rig([FakeHost("h1"), FakeHost("h2")])
    r.router.invoke(target(), {})
    pool = r.router.pool(target())
    with pool.cond:  # four requests in flight for three seconds
        pool.gauge.add(4, r.now)
    for _ in range(6):
        r.now += 0.5
        r.router.tick()
    r.settle()
    assert len(pool.workers) == 4
    assert {w.host.name for w in pool.workers} == {"h1", "h2"}  # spread by memory placed
    with pool.cond:
        pool.gauge.add(-4, r.now)
    for _ in range(40):  # 20 s of nothing: a stable window, the grace, then zero
        r.now += 0.5
        r.router.tick()
    r.settle()
    assert pool.workers == []
    reasons = [e[0] for e in r.events]
    assert "ScaledUp" in reasons and reasons[-1] == "ScaledToZero"
    assert sorted(r.hosts[0].stopped + r.hosts[1].stopped) == sorted(
        ["h1-w1", "h1-w2", "h2-w1", "h2-w2"]
    )


def test_placement_refuses_when_no_host_has_the_memory(rig: Any) -> None:
    r = rig()
    with pytest.raises(Unreachable, match="MB free"):
        r.router.invoke(target(memory_mb=2048), {})


def test_traffic_split_follows_the_weights() -> None:
    router = Router(lambda: [], emit=lambda *a: None, meter=lambda *a: None, rng=random.Random(7))
    picks = Counter(router.choose({1: 90, 2: 10}) for _ in range(2000))
    assert abs(picks[2] / 2000 - 0.10) < 0.03
    router.stop()
