"""The agent's fleet patching without a kernel: scope, assignments, digest checks, busy
retries, refusals, health, new processes, rollback, report batching, and the connector's
wire format from crafted bytes.

The machine is `FakeMachine`: processes with a start time, a network namespace, the
build-ids they map, and the patches their journal carries; its `apply` and `rollback`
answer as the engine does (NotFound for a gone process, HotpatchError with `reasons` for a
function that stays active, Conflict for a patch already there). The control plane is an
`httpx.MockTransport` serving the assignments, the .yhp bytes and taking reports. The
engine itself is tested against real processes in tests/integration/hotpatch and the
whole worker in tests/integration/test_fleetpatch_agent_linux.py.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.polling import wait_for
from yunhan import hotpatch
from yunhan.agent import procevents
from yunhan.agent.patches import (
    BATCH_DELAY,
    BUSY_TRIES,
    EXEC_CHECKS,
    MAX_BACKOFF,
    MAX_REPORTS,
    Patches,
    ProcInfo,
    Reports,
    Scope,
    busy_delay,
    classify,
    next_delay,
    own_helper,
    scope_of,
)
from yunhan.errors import Conflict, HotpatchError, NotFound
from yunhan.hotpatch.manifest import SECTION, Manifest, Replacement
from yunhan.net.naming import Naming

NAMING = Naming("t-h1-")
HOST_NS, INST_NS, NEW_INST_NS, OTHER_NS, VPC_NS, ROOT_NS = 100, 101, 102, 103, 104, 1
NAMED = {
    "t-h1-host": HOST_NS,
    "t-h1-i-0000a001": INST_NS,
    "t-h1-i-0000a009": NEW_INST_NS,  # not in the document yet
    "t-h2-i-0000b001": OTHER_NS,  # another agent's instance
    "t-h1-v340": VPC_NS,
}
INSTANCES = ["inst-0000a001"]
BUILD_ID = "ab" * 20
AGENT_PID = 50


def make_yhp(patch_id: str = "fix-1", build_id: str = BUILD_ID) -> bytes:
    """A minimal ELF64 file holding only a .yunhan.manifest section: what read_manifest
    reads (the engine is faked here, so no code is needed)."""
    m = Manifest(
        patch_id=patch_id,
        target_path="/usr/lib/libdemo.so",
        target_name="libdemo.so",
        build_id=build_id,
        replacements=(Replacement("demo_value", "demo_value_v2", 0x1100, 40),),
        digest="00" * 32,
    )
    content = m.to_json().encode()
    shstr = b"\0.shstrtab\0" + SECTION.encode() + b"\0"
    off_shstr = 64
    off_content = off_shstr + len(shstr)
    off_sh = (off_content + len(content) + 7) & ~7
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, off_sh, 0, 64, 56, 0, 64, 3, 1)
    sh = struct.Struct("<IIQQQQIIQQ")
    sections = (
        sh.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        + sh.pack(1, 3, 0, 0, off_shstr, len(shstr), 0, 0, 1, 0)
        + sh.pack(11, 1, 0, 0, off_content, len(content), 0, 0, 1, 0)
    )
    body = header + shstr + content
    return body + b"\0" * (off_sh - len(body)) + sections


@dataclass
class FakeProc:
    start: int
    comm: str
    netns: int
    build_ids: set[str]
    ppid: int = 1
    busy: int = 0  # applies/rollbacks that find the function active, first
    refuse: str | None = None
    patches: dict[str, float] = field(default_factory=dict)  # patch id -> applied at
    loads: int = 0  # patches loaded into it (a second load of one patch is a bug)
    maps_from: float = 0.0  # the dynamic loader maps the library at this time
    alive: bool = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMachine:
    """Processes and the engine, behaving as the real ones answer."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.procs: dict[int, FakeProc] = {}
        self.named = dict(NAMED)
        self.lock = threading.Lock()

    def add(self, pid: int, netns: int = HOST_NS, build: bool = True, **kw: Any) -> FakeProc:
        kw.setdefault("build_ids", {BUILD_ID} if build else set())
        p = FakeProc(start=pid * 10, comm=f"svc{pid}", netns=netns, **kw)
        self.procs[pid] = p
        return p

    def pids(self) -> list[int]:
        return sorted(self.procs)

    def info(self, pid: int) -> ProcInfo | None:
        p = self.procs.get(pid)
        if p is None:
            return None
        return ProcInfo(pid, p.start, p.comm, p.ppid, p.netns, p.alive)

    def namespaces(self) -> dict[str, int]:
        return dict(self.named)

    def maps_target(self, pid: int, manifest: Manifest) -> bool:
        p = self.procs.get(pid)
        return p is not None and self.clock.now >= p.maps_from and manifest.build_id in p.build_ids

    def carries(self, pid: int, start: int, patch_id: str) -> float | None:
        p = self.procs.get(pid)
        return p.patches.get(patch_id) if p is not None and p.start == start else None

    def carriers(self, patch_id: str) -> list[tuple[int, int]]:
        return [(pid, p.start) for pid, p in self.procs.items() if patch_id in p.patches]

    def _engine(self, pid: int) -> FakeProc:
        p = self.procs.get(pid)
        if p is None or not p.alive:
            raise NotFound(f"process {pid} does not exist", pid=pid)
        if p.refuse:
            raise HotpatchError(p.refuse, pid=pid)
        if p.busy:
            p.busy -= 1
            raise HotpatchError(
                "patched functions stayed active after 10 attempts: thread 7 in demo_value",
                reasons=["thread 7 in demo_value"],
            )
        return p

    def apply(self, pid: int, path: Path) -> None:
        patch_id = hotpatch.read_manifest(str(path)).patch_id
        p = self._engine(pid)
        if patch_id in p.patches:
            raise Conflict(f"patch {patch_id} is already applied to process {pid}")
        p.patches[patch_id] = self.clock.now
        p.loads += 1

    def rollback(self, pid: int, patch_id: str) -> None:
        p = self._engine(pid)
        if patch_id not in p.patches:
            raise NotFound(f"patch {patch_id} is not applied to process {pid}", pid=pid)
        del p.patches[patch_id]


class FakeApi:
    """The agent routes of the control plane for host h1."""

    def __init__(self, yhp: bytes) -> None:
        self.files = {hashlib.sha256(yhp).hexdigest(): yhp}
        self.digest = hashlib.sha256(yhp).hexdigest()
        self.want = "apply"
        self.serve: bytes | None = None  # other bytes to serve for the digest
        self.reports: list[dict[str, Any]] = []
        self.fetches = 0
        self.polls: list[dict[str, str]] = []  # the query of each poll
        self.etag = ""  # given with the list (a control plane with the long poll)
        self.fail: list[int | Exception] = []  # answers to give report posts, first
        self.lock = threading.Lock()

    def assignment(self) -> dict[str, Any]:
        return {"id": "hp-1", "name": "fix", "digest": self.digest, "patch_id": "fix-1",
                "build_id": BUILD_ID, "want": self.want, "health_window": 30}  # fmt: skip

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        with self.lock:
            if path == "/v1/agent/hosts/h1/patches":
                self.polls.append(dict(request.url.params))
                body: dict[str, Any] = {"patches": [self.assignment()]}
                if self.etag:
                    body["etag"] = self.etag
                return httpx.Response(200, json=body)
            if path.startswith("/v1/agent/patches/"):
                self.fetches += 1
                data = self.files.get(path.rsplit("/", 1)[1])
                if data is None:
                    return httpx.Response(404, json={"error": {"message": "no such file"}})
                return httpx.Response(200, content=self.serve or data)
            assert path == "/v1/agent/hosts/h1/patch-reports", path
            if self.fail:
                f = self.fail.pop(0)
                if isinstance(f, Exception):
                    raise f
                return httpx.Response(f, json={"error": {"message": "no"}})
            self.reports.extend(json.loads(request.content)["reports"])
            return httpx.Response(204)

    def results(self) -> dict[int, list[str]]:
        """pid -> the results reported for it, in order."""
        out: dict[int, list[str]] = {}
        for r in self.reports:
            for p in r["processes"]:
                out.setdefault(p["pid"], []).append(p["result"])
        return out

    def states(self) -> list[str]:
        return [r["state"] for r in self.reports]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def machine(clock: Clock) -> FakeMachine:
    return FakeMachine(clock)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi(make_yhp())


def make(api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path, **kw: Any) -> Patches:
    return Patches(
        naming=NAMING,
        client=httpx.Client(transport=httpx.MockTransport(api.handle)),
        api=lambda tail: f"http://api{tail}",
        host_name="h1",
        host_netns=kw.pop("host_netns", "t-h1-host"),
        cache_dir=tmp_path / "cache",
        instances=lambda: INSTANCES,
        processes=machine,
        connector=None,
        agent_pid=AGENT_PID,
        clock=clock,
        **kw,
    )


def settle(w: Patches, clock: Clock, seconds: float = 0.0) -> None:
    """Run the patcher's passes until `seconds` of fake time have passed and nothing is
    due, jumping the clock to each due time (no real waiting)."""
    end = clock.now + seconds
    for _ in range(1000):
        wait = w.work_once()
        if clock.now >= end and wait > 0.0:
            return
        clock.now = min(clock.now + max(wait, 0.001), max(end, clock.now + 0.001))
    raise AssertionError("the worker never settled")


def report(w: Patches) -> None:
    assert w.flush_once()


# -- scope ----------------------------------------------------------------------------


def test_scope_in_the_lab_is_the_host_namespace_and_own_instance_namespaces() -> None:
    s = scope_of("t-h1-host", NAMING, NAMED, INSTANCES)
    assert [ns for ns in (HOST_NS, INST_NS, NEW_INST_NS, OTHER_NS, VPC_NS, ROOT_NS, None)
            if s.admits(ns)] == [HOST_NS, INST_NS, NEW_INST_NS]  # fmt: skip
    assert s.instance(INST_NS) == "inst-0000a001"
    assert s.instance(HOST_NS) is None
    assert s.in_instance(INST_NS) and s.in_instance(NEW_INST_NS)
    assert not s.in_instance(HOST_NS)
    # A path to the host namespace names the same one.
    assert scope_of("/run/netns/t-h1-host", NAMING, NAMED, INSTANCES) == s


def test_scope_on_a_real_host_is_everything_with_instances_named() -> None:
    s = scope_of(None, Naming("yh-"), {"yh-i-0000a001": 7, "other": 8}, INSTANCES)
    assert all(s.admits(ns) for ns in (7, 8, 12345, None))
    assert s.instance(7) == "inst-0000a001" and s.instance(8) is None


def test_own_helpers_are_the_agent_and_its_descendants_outside_instances() -> None:
    scope = scope_of("t-h1-host", NAMING, NAMED, INSTANCES)
    parents = {60: AGENT_PID, 70: 60, 80: AGENT_PID, 90: 1}

    def proc(pid: int, netns: int = HOST_NS) -> ProcInfo:
        return ProcInfo(pid, 1, "x", parents.get(pid, 1), netns, True)

    def own(p: ProcInfo) -> bool:
        return own_helper(p, AGENT_PID, parents.get, scope)

    assert own(proc(AGENT_PID))
    assert own(proc(60))  # a helper the agent started
    assert own(proc(70))  # and its child
    assert not own(proc(80, INST_NS))  # an instance's workload, started by the agent
    assert not own(proc(90))


# -- applying -------------------------------------------------------------------------


def test_applies_to_every_matching_process_of_its_scope_and_reports(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(11)
    machine.add(12)
    machine.add(13, netns=INST_NS, ppid=AGENT_PID)  # an instance's workload
    machine.add(14, netns=OTHER_NS)  # another host's instance (lab): not ours
    machine.add(15, netns=ROOT_NS)  # the lab machine itself: not ours
    machine.add(16, build=False)  # does not map the build
    machine.add(AGENT_PID)  # the agent maps it too, and is never patched
    machine.add(17, ppid=AGENT_PID)  # nor its helpers
    w = make(api, machine, clock, tmp_path)
    assert w.poll_once()
    settle(w, clock)
    report(w)
    patched = sorted(pid for pid, p in machine.procs.items() if "fix-1" in p.patches)
    assert patched == [11, 12, 13]
    assert api.results() == {11: ["applied"], 12: ["applied"], 13: ["applied"]}
    assert api.states()[-1] == "applied"
    rows = {p["pid"]: p for r in api.reports for p in r["processes"]}
    assert rows[13]["instance"] == "inst-0000a001" and rows[11]["instance"] is None
    assert rows[11] == {"pid": 11, "start": 110, "comm": "svc11", "instance": None,
                        "result": "applied", "at": clock.now}  # fmt: skip
    assert (tmp_path / "cache" / f"{api.digest}.yhp").read_bytes() == make_yhp()
    # Polling again fetches nothing and applies nothing twice.
    assert w.poll_once()
    settle(w, clock, 11.0)  # a rescan included
    assert api.fetches == 1
    assert all(p.loads <= 1 for p in machine.procs.values())


def test_on_a_real_host_every_process_is_in_scope(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(14, netns=OTHER_NS)
    machine.add(15, netns=ROOT_NS)
    machine.add(AGENT_PID)
    w = make(api, machine, clock, tmp_path, host_netns=None)
    w.poll_once()
    settle(w, clock)
    assert sorted(p for p, x in machine.procs.items() if x.patches) == [14, 15]


def test_zero_targets_is_applied_at_once(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(16, build=False)
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    settle(w, clock)
    report(w)
    assert api.states()[-1] == "applied" and api.results() == {}


def test_a_file_whose_digest_does_not_match_fails_and_is_never_applied(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(11)
    api.serve = make_yhp(patch_id="evil")
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    settle(w, clock)
    report(w)
    assert machine.procs[11].patches == {}
    assert api.states() == ["failed"]
    assert "not the digest" in api.reports[0]["message"]
    assert not (tmp_path / "cache" / f"{api.digest}.yhp").exists()
    w.poll_once()  # failed stays failed: not fetched again
    assert api.fetches == 1


def test_a_file_for_another_build_fails(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    other = make_yhp(build_id="cd" * 20)
    api.files = {hashlib.sha256(other).hexdigest(): other}
    api.digest = hashlib.sha256(other).hexdigest()
    machine.add(11, build_ids={"cd" * 20})
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    settle(w, clock)
    report(w)
    assert api.states() == ["failed"] and "for build-id" in api.reports[0]["message"]
    assert machine.procs[11].patches == {}


def test_a_busy_process_is_retried_with_backoff_then_reported_busy(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(11, busy=2)  # free on the third try
    machine.add(12, busy=100)  # never free
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    t0 = clock.now
    settle(w, clock, 2.0)
    report(w)
    assert api.states()[-1] == "applying"  # 12 is still being retried
    assert "fix-1" in machine.procs[11].patches
    settle(w, clock, sum(busy_delay(n) for n in range(1, BUSY_TRIES)) + 1)
    report(w)
    assert machine.procs[12].busy == 100 - BUSY_TRIES  # tried exactly BUSY_TRIES times
    assert clock.now - t0 >= 7.0
    assert api.results() == {11: ["applied"], 12: ["busy"]}
    busy = next(p for r in api.reports for p in r["processes"] if p["pid"] == 12)
    assert "stayed active" in busy["reason"]
    assert api.states()[-1] == "applied"  # every process has a final result
    assert machine.procs[12].patches == {}  # never forced


def test_a_refusal_is_reported_with_the_engines_reason(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(11, refuse="thread 3 of process 11 is already traced by process 9")
    machine.add(12)
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    settle(w, clock)
    report(w)
    refused = next(p for r in api.reports for p in r["processes"] if p["pid"] == 11)
    assert refused["result"] == "refused" and "already traced" in refused["reason"]
    assert api.states()[-1] == "applied"


def test_a_process_already_carrying_the_patch_is_not_patched_again(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(11, patches={"fix-1": clock.now - 5})  # a restarted agent finds it so
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    settle(w, clock)
    report(w)
    assert machine.procs[11].loads == 0
    assert api.results() == {11: ["applied"]}
    # Its health window runs from the journal's time: 25 s left, not 30.
    machine.procs[11].alive = False
    settle(w, clock, 1.0)
    report(w)
    assert api.results() == {11: ["applied", "died"]}


def test_a_process_dying_in_its_health_window_is_reported_once(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(11)
    machine.add(12)
    machine.add(13)
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    settle(w, clock)
    report(w)
    del machine.procs[11]  # crashed
    machine.procs[12].start += 1  # pid reused by another process
    settle(w, clock, 2.0)
    report(w)
    assert api.results() == {11: ["applied", "died"], 12: ["applied", "died"], 13: ["applied"]}
    settle(w, clock, 40.0)  # past the window: 13 exiting now is no news
    del machine.procs[13]
    settle(w, clock, 2.0)
    report(w)
    assert api.results()[13] == ["applied"]
    assert api.states()[-1] == "applied"


def test_a_process_started_later_is_checked_after_its_exec(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(11)
    w = make(api, machine, clock, tmp_path, rescan_interval=3600.0)
    w.poll_once()
    settle(w, clock)
    # Exec'ed now; the dynamic loader maps the library a little later.
    machine.add(20, maps_from=clock.now + 0.2)
    machine.add(21, build=False)  # never maps it
    w.exec_seen(20)
    w.exec_seen(21)
    settle(w, clock, EXEC_CHECKS[-1] + 0.5)
    report(w)
    assert "fix-1" in machine.procs[20].patches
    assert api.results() == {11: ["applied"], 20: ["applied"]}
    assert api.states()[-1] == "applied"  # stays applied
    assert w.exec_checks == 0  # every check done, none left behind


def test_the_rescan_finds_what_the_connector_missed(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    w = make(api, machine, clock, tmp_path, rescan_interval=10.0)
    w.poll_once()
    settle(w, clock)
    machine.add(30)  # no exec event
    settle(w, clock, 5.0)
    assert machine.procs[30].patches == {}
    settle(w, clock, 6.0)
    assert "fix-1" in machine.procs[30].patches


# -- rolling back ---------------------------------------------------------------------


def test_rollback_restores_every_carrier_and_reports(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(11)
    machine.add(12)
    machine.add(13)
    machine.add(14, netns=OTHER_NS, patches={"fix-1": 1.0})  # another host's: not ours
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    settle(w, clock)
    report(w)
    machine.procs[12].busy = 100  # its rollback never finds the function inactive
    del machine.procs[13]  # died meanwhile: simply gone
    api.want = "rollback"
    w.poll_once()
    settle(w, clock)
    report(w)
    assert api.states()[-1] == "rolling_back"  # 12 is being retried
    settle(w, clock, 15.0)
    report(w)
    assert machine.procs[11].patches == {}
    assert "fix-1" in machine.procs[14].patches
    res = api.results()
    assert res[11][-1] == "rolled_back" and res[12][-1] == "rollback_failed"
    assert res[13] == ["applied"]  # no rollback, no news: it is simply gone
    assert api.states()[-1] == "rolled_back"


def test_rollback_with_nothing_applied_is_rolled_back_at_once(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    api.want = "rollback"
    machine.add(11)
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    settle(w, clock)
    report(w)
    assert api.states() == ["rolled_back"] and api.fetches == 0  # no file needed


# -- reports --------------------------------------------------------------------------


def row(pid: int, result: str = "applied", at: float = 1.0) -> dict[str, Any]:
    return {"pid": pid, "start": pid, "comm": "x", "instance": None, "result": result, "at": at}


def test_reports_keep_the_newest_row_per_process_and_what_changed_while_posting() -> None:
    q = Reports()
    q.put("hp-1", "applying", [row(1), row(2)])
    q.put("hp-1", "applying", [row(1, "died")])
    sent = q.batch()
    assert [(p["pid"], p["result"]) for p in sent[0]["processes"]] == [(2, "applied"), (1, "died")]
    q.put("hp-1", "applied", [row(3)])  # while the post is in flight
    q.done(sent)
    left = q.batch()
    assert left == [{"patch": "hp-1", "state": "applied", "processes": [row(3)]}]
    q.done(left)
    assert q.batch() == [] and len(q) == 0


def test_reports_are_bounded_dropping_the_oldest_rows() -> None:
    q = Reports(limit=3)
    q.put("hp-1", "applying", [row(1, at=1), row(2, at=2)])
    q.put("hp-2", "applying", [row(3, at=3), row(4, at=4)])
    assert q.dropped == 1
    pids = [p["pid"] for b in q.batch() for p in b["processes"]]
    assert pids == [2, 3, 4]


def test_batches_are_at_most_max_rows_and_a_patch_is_split_only_when_alone() -> None:
    q = Reports()
    q.put("hp-1", "applying", [row(i) for i in range(5)])
    q.put("hp-2", "applied", [row(i) for i in range(10, 13)])
    first = q.batch(max_rows=6)
    assert [b["patch"] for b in first] == ["hp-1"]  # hp-2 does not fit whole: next post
    q.done(first)
    assert [len(b["processes"]) for b in q.batch(max_rows=2)] == [2]  # alone: split
    many = Reports()
    for i in range(MAX_REPORTS + 5):
        many.put(f"hp-{i}", "applying", message="x" * 5000)
    sent = many.batch()
    assert len(sent) == MAX_REPORTS and len(sent[0]["message"]) == 1000  # the server's bounds
    many.done(sent)
    assert len(many) == 5


def test_a_failed_post_is_retried_and_nothing_is_lost(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(11)
    api.fail = [httpx.ConnectError("refused"), 503]
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    settle(w, clock)
    assert not w.flush_once()
    assert not w.flush_once()
    assert w.failures == 2
    assert w.flush_once()
    assert api.results() == {11: ["applied"]} and api.states() == ["applied"]
    assert next_delay(BATCH_DELAY, False) == 0.5
    assert next_delay(20.0, False) == MAX_BACKOFF
    assert next_delay(8.0, True) == BATCH_DELAY


def test_a_report_refused_for_good_is_dropped_and_counted(
    api: FakeApi, machine: FakeMachine, clock: Clock, tmp_path: Path
) -> None:
    machine.add(11)
    api.fail = [422]
    w = make(api, machine, clock, tmp_path)
    w.poll_once()
    settle(w, clock)
    assert w.flush_once()
    assert w.refused == 1 and len(w.reports) == 0


def test_the_threads_run_until_stopped(api: FakeApi, tmp_path: Path) -> None:
    """The real loops and a fake connector: a process exec'ed after start is patched."""
    events: list[procevents.Exec] = []
    lock = threading.Lock()

    class Source:
        def receive(self, timeout: float) -> list[procevents.Exec]:
            with lock:
                out = list(events)
                events.clear()
            if not out:
                threading.Event().wait(min(timeout, 0.02))
            return out

        def close(self) -> None:
            pass

    clock = Clock()
    clock.now = time.time()
    real = FakeMachine(clock)
    real.add(11)
    w = Patches(
        naming=NAMING,
        client=httpx.Client(transport=httpx.MockTransport(api.handle)),
        api=lambda tail: f"http://api{tail}",
        host_name="h1",
        host_netns="t-h1-host",
        cache_dir=tmp_path / "cache",
        interval=0.05,
        instances=lambda: INSTANCES,
        processes=real,
        connector=Source,
        rescan_interval=3600.0,
        agent_pid=AGENT_PID,
    )
    w.start()
    try:
        wait_for(lambda: api.results().get(11) == ["applied"], 5.0, "the first process")
        clock.now = time.time()
        real.add(20)
        with lock:
            events.append(procevents.Exec(20, 20))
        wait_for(lambda: api.results().get(20) == ["applied"], 5.0, "the new process")
    finally:
        w.stop(timeout=5.0)
    assert not w.running


# -- the engine's answers, the connector's bytes --------------------------------------


def test_engine_errors_are_classified() -> None:
    assert classify(NotFound("process 9 does not exist", pid=9)) == "gone"
    busy = HotpatchError("patched functions stayed active after 10 attempts", reasons=["x"])
    assert classify(busy) == "busy"
    assert classify(Conflict("patch p is already applied to process 9")) == "applied"
    assert classify(Conflict("patch q (f) overlaps the jump of patch p")) == "refused"
    assert classify(HotpatchError("build-id mismatch: ...")) == "refused"
    assert classify(RuntimeError("a bug")) == "refused"


def nlmsg(payload: bytes, mtype: int = procevents.NLMSG_DONE) -> bytes:
    msg = procevents.NLMSGHDR.pack(16 + len(payload), mtype, 0, 0, 0) + payload
    return msg + b"\0" * (-len(msg) % 4)


def cn(event: bytes, idx: int = procevents.CN_IDX_PROC) -> bytes:
    return procevents.CN_MSG.pack(idx, procevents.CN_VAL_PROC, 7, 0, len(event), 0) + event


def proc_event(what: int, data: bytes) -> bytes:
    return procevents.PROC_EVENT.pack(what, 3, 123456789) + data


def test_connector_messages_are_parsed_from_their_bytes() -> None:
    exec_ev = nlmsg(cn(proc_event(procevents.PROC_EVENT_EXEC, struct.pack("=ii", 4242, 4240))))
    fork_ev = nlmsg(cn(proc_event(1, struct.pack("=iiii", 1, 1, 4242, 4242))))
    ack = nlmsg(cn(proc_event(procevents.PROC_EVENT_NONE, struct.pack("=I", 0))))
    other = nlmsg(cn(proc_event(procevents.PROC_EVENT_EXEC, struct.pack("=ii", 9, 9)), idx=7))
    odd = nlmsg(cn(proc_event(procevents.PROC_EVENT_EXEC, struct.pack("=ii", 5, 5)) + b"\1"))
    data = ack + exec_ev + fork_ev + other + odd
    assert procevents.parse(data) == [
        procevents.Ack(0),
        procevents.Exec(4242, 4240),
        procevents.Exec(5, 5),  # an odd length is padded to 4 before the next message
    ]
    # A truncated tail is dropped, not misread.
    assert procevents.parse(exec_ev + exec_ev[:20]) == [procevents.Exec(4242, 4240)]
    assert procevents.parse(b"") == []


def test_the_subscription_message_layout() -> None:
    msg = procevents.subscribe_message(procevents.PROC_CN_MCAST_LISTEN, port=77)
    assert len(msg) == 16 + 20 + 4
    length, mtype, _flags, _seq, port = procevents.NLMSGHDR.unpack_from(msg)
    assert (length, mtype, port) == (40, procevents.NLMSG_DONE, 77)
    idx, val, _s, _a, clen, _f = procevents.CN_MSG.unpack_from(msg, 16)
    assert (idx, val, clen) == (procevents.CN_IDX_PROC, procevents.CN_VAL_PROC, 4)
    assert struct.unpack_from("=I", msg, 36) == (procevents.PROC_CN_MCAST_LISTEN,)


def test_scope_dataclass_is_plain_data() -> None:
    s = Scope(everything=False, namespaces={1: None})
    assert s.admits(1) and not s.admits(2) and not s.in_instance(1)


def test_only_an_agent_on_the_kernel_patches(tmp_path: Path) -> None:
    from yunhan.agent.dataplane import DataPlane
    from yunhan.agent.main import Agent, AgentConfig
    from yunhan.errors import ValidationError

    def agent(driver: str, interval: float = 2.0) -> Agent:
        cfg = AgentConfig(api_url="http://cp/", token="t", host_name="h1", zone="z",
                          underlay_ip="198.18.0.1", mtu=1500, host_netns="t-h1-host",
                          prefix="t-h1-", driver=driver, state_dir=tmp_path / driver,
                          patch_interval=interval)  # fmt: skip
        dp = DataPlane(naming=NAMING, host_netns=None, driver=driver, state_dir=cfg.state_dir)
        return Agent(cfg, dp, transport=httpx.MockTransport(lambda r: httpx.Response(404)))

    assert agent("fake").patches is None
    w = agent("linux", 0.5).patches
    assert w is not None and w.interval == 0.5 and w.host_netns == "t-h1-host"
    assert w.cache_dir == tmp_path / "linux" / "patches"
    with pytest.raises(ValidationError, match="patch interval"):
        agent("fake", 0.0)


def test_the_poll_is_a_long_poll_once_the_control_plane_gives_an_etag(tmp_path: Path) -> None:
    clock = Clock()
    api = FakeApi(make_yhp())
    p = make(api, FakeMachine(clock), clock, tmp_path)
    assert p.poll_once(20.0)  # no etag known yet: a plain poll
    assert api.polls[-1] == {}
    assert p.poll_once(20.0)  # an old control plane gives none: still plain
    assert api.polls[-1] == {}
    api.etag = "e1"
    assert p.poll_once(20.0)
    assert p.poll_once(20.0)  # now it waits for a change of the list it has
    assert api.polls[-1] == {"etag": "e1", "timeout": "20.0"}
