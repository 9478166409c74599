"""End to end: fleet hot patching (issue 13) through the CLI, on a lab region of 2 zones x 2
hosts, as an SRE would use it: `yunhan hotpatch build` then `yunhan patch create …`.

The test builds a shared library (salted: its build-id is this run's own) and a TCP service
linked against it (tests/e2e/fleetsvc.py), and runs the service as the `--command` of one
instance per host (s1, s2 in az1; s3, s4 in az2). A client instance `cl` speaks to them
(tests/e2e/fleetload.py): the traffic stays inside the lab's namespaces. Every check is by
behaviour: the answer of each service process to a request.

In order, on the same region (each step starts from the state the previous one left):
1. fix-v1, a library patch everywhere under load (canary 1, max-parallel 2): done; every
   process answers x*1000, one started after the rollout began too; 0 failed requests.
2. crash, a patch whose function writes to NULL: the canary's process dies in its health
   window, the rollout rolls the canary back, no other host is asked anything.
3. fix-v3 (x*3000): the server (and the controller in it) is killed mid-rollout; the
   supervisor revives it and the rollout ends done.
4. `patch rollback fix-v3 --wait`, then fix-v1: every process answers as built again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fleetsvc
import pytest
from region import CliError, Region, netns_names

from bench.traffic import supervised
from tests.polling import wait_for

pytestmark = pytest.mark.root

LOAD = Path(__file__).with_name("fleetload.py")
PORT = 7100
SERVICES = {"s1": "az1", "s2": "az1", "s3": "az2", "s4": "az2"}
LATE = ("s5", "az1")  # started while fix-v1 rolls out
HOSTS = ("az1-h1", "az1-h2", "az2-h1", "az2-h2")


@dataclass
class Lab:
    region: Region
    rundir: Path
    lib: Path
    svc: Path
    ips: dict[str, str]  # instance -> address
    hosts: dict[str, str]  # instance -> host
    crashed: set[str] = field(default_factory=set)  # services the crash patch killed

    def target(self, name: str) -> str:
        return f"{self.ips[name]}:{PORT}"

    def ask(self, x: int, names: list[str] | None = None) -> dict[str, tuple[int, int] | None]:
        """name -> (pid, answer) of one request `x` from cl to each service (None: none)."""
        names = names if names is not None else sorted(self.ips.keys() - {"cl"})
        p = self.region.exec("cl", sys.executable, str(LOAD), "ask", str(x),
                             *(self.target(n) for n in names), check=True)  # fmt: skip
        got = json.loads(p.stdout)
        return {n: (tuple(got[self.target(n)]) if got[self.target(n)] else None) for n in names}  # type: ignore[misc]

    def answers(self, x: int) -> dict[str, int]:
        """name -> answer to `x` of every service that answers, each answer checked
        against the others: a crashed one may still wait for its restart."""
        got = self.ask(x)
        missing = {n for n, a in got.items() if a is None}
        assert missing <= self.crashed, f"services not answering: {missing}"
        return {n: a[1] for n, a in got.items() if a is not None}

    def build(self, name: str, source: str) -> Path:
        src = self.rundir / f"{name}.c"
        src.write_text(source)
        out = self.rundir / f"{name}.yhp"
        self.region.run("hotpatch", "build", str(src), "--target", str(self.lib), "-o", str(out))
        return out

    def patch(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.region.json("patch", "show", name)
        return data

    def host_states(self, name: str) -> list[str]:
        """Its hosts' states ([] while `patch create` has not made it yet)."""
        try:
            return [h["state"] for h in self.patch(name)["status"]["hosts"].values()]
        except CliError as exc:
            if "no patch" in exc.stderr:
                return []
            raise

    def instance(self, name: str, zone: str) -> None:
        self.region.run("instance", "create", name, "--subnet", "web", "--zone", zone,
                        "--command", f"{self.svc} {PORT}", "--wait")  # fmt: skip
        inst = self.region.instance(name)
        self.ips[name], self.hosts[name] = inst["ip"], inst["host"]


def _ours(rundir: Path) -> dict[int, str]:
    """pid -> command line of every process whose command line names `rundir`."""
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if str(rundir) in cmd:
                out[int(entry)] = cmd
    return out


@pytest.fixture(scope="module")
def lab(run_prefix: str) -> Iterator[Lab]:
    home = Path(tempfile.mkdtemp(prefix="yunhan-e2e-fleet-"))
    rundir = home / "run"  # the builds, the load's results; instances share it
    rundir.mkdir()
    r = Region(home)
    prefix = f"{run_prefix}-fpe"
    try:
        svc, lib = fleetsvc.build(rundir)
        r.run("up", "--detach", "--prefix", prefix, "--zones", "2", "--hosts-per-zone", "2",
              timeout=300)  # fmt: skip
        r.run("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
        r.run("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
        lab = Lab(r, rundir, lib, svc, {}, {})
        for name, zone in SERVICES.items():
            lab.instance(name, zone)
        r.run("instance", "create", "cl", "--subnet", "web", "--zone", "az2", "--wait")
        lab.ips["cl"] = r.instance("cl")["ip"]
        assert sorted(lab.hosts.values()) == list(HOSTS), lab.hosts  # one service per host
        wait_for(lambda: set(lab.ask(1).values()) != {None} and None not in lab.ask(1).values(),
                 30, "every service answering")  # fmt: skip
        assert set(lab.answers(5).values()) == {fleetsvc.old_value(5)}
        yield lab
    finally:
        r.run("down", check=False, timeout=300)
        left = _ours(rundir)
        for pid in left:  # whatever `down` missed must not outlive the test
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            leftovers = {n for n in netns_names() if n.startswith(f"{prefix}-")}
            assert not leftovers, f"yunhan down left namespaces behind: {leftovers}"
            assert not left, f"processes of the test outlived the region: {left}"
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _popen(region: Region, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([region.bin, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=region.env)  # fmt: skip


def test_a_library_patch_reaches_every_process_under_load(lab: Lab) -> None:
    yhp = lab.build("fix-v1", fleetsvc.PATCH_V1)
    out, stop = lab.rundir / "load.json", lab.rundir / "load.stop"
    load = _popen(lab.region, "instance", "exec", "cl", "--", sys.executable, str(LOAD), "load",
                  str(out), str(stop), *(lab.target(n) for n in SERVICES))  # fmt: skip
    try:
        create = _popen(lab.region, "patch", "create", "fix-v1", "--file", str(yhp), "--canary",
                        "1", "--max-parallel", "2", "--health-window", "2", "--wait")  # fmt: skip
        # The canary applied: the rollout is under way. A service started now is found by
        # its host's agent (the process-event connector, or its scan when asked to apply).
        wait_for(lambda: "applied" in lab.host_states("fix-v1"), 30, "the canary applied")
        lab.instance(*LATE)
        _out, stderr = create.communicate(timeout=120)
        assert create.returncode == 0, stderr
        name = LATE[0]
        wait_for(lambda: (lab.ask(7, [name])[name] or (0, 0))[1] == 7000, 15,
                 "the late service patched")  # fmt: skip
    finally:
        stop.touch()
        load.communicate(timeout=30)
    st = lab.patch("fix-v1")
    assert st["status"]["phase"] == "done", st["status"]
    assert {n: a for n, a in lab.answers(7).items()} == dict.fromkeys(lab.hosts, 7000)
    pids = {n: a[0] for n, a in lab.ask(7).items() if a}
    rows = {(p["host"], p["pid"]): p["result"] for p in st["processes"]}
    assert {(lab.hosts[n], pid): "applied" for n, pid in pids.items()}.items() <= rows.items()
    assert st["status"]["counts"]["died"] == 0 and st["status"]["counts"]["refused"] == 0
    results = json.loads(out.read_text())
    for target, r in results.items():
        assert r["failed"] == 0, f"{target}: {r['errors']}"
        assert r["ok"] > 50, f"{target}: only {r['ok']} answers"
        values = {int(v.split()[1]) for v in r["values"]}
        # Both behaviours were seen by the load: the old until the patch, then the new.
        assert any(v >= 1000 for v in values) and any(v < 1000 for v in values), values
    print(f"load during fix-v1: {sum(r['ok'] for r in results.values())} answers, 0 failed; "
          f"late service on {lab.hosts[LATE[0]]}")  # fmt: skip


def test_a_crashing_canary_stops_the_rollout_and_is_rolled_back(lab: Lab) -> None:
    before = lab.ask(3)
    assert {n: a[1] for n, a in before.items() if a} == dict.fromkeys(lab.hosts, 3000)
    yhp = lab.build("crash", fleetsvc.PATCH_CRASH)
    lab.region.run("patch", "create", "crash", "--file", str(yhp), "--canary", "1",
                   "--max-parallel", "4", "--health-window", "30")  # fmt: skip
    canary = lab.patch("crash")["status"]["canary_hosts"]
    assert len(canary) == 1
    on_canary = [n for n, h in lab.hosts.items() if h == canary[0]]
    lab.crashed.update(on_canary)

    def stopped() -> str | None:
        st = lab.patch("crash")["status"]
        if st["hosts"][canary[0]]["state"] == "applied":
            lab.ask(3, on_canary)  # the patched function called: the process dies
        return st["phase"] if st["phase"] in ("rolled_back", "failed", "paused") else None

    assert wait_for(stopped, 40, "the rollout stopped") == "rolled_back"
    shown = lab.patch("crash")
    st = shown["status"]
    assert st["counts"]["died"] >= 1 and "died" in (st["message"] or ""), st
    for host in HOSTS:
        if host != canary[0]:
            assert (st["hosts"][host]["want"], st["hosts"][host]["state"]) == (None, "waiting")
    assert {p["host"] for p in shown["processes"]} == {canary[0]}
    # The other hosts' processes: untouched, the same pids, fix-v1's answers.
    after = lab.ask(3)
    for name, answer in after.items():
        if name not in on_canary:
            assert answer == before[name], name
        elif answer is not None:  # restarted by its agent already: fix-v1 reached it
            assert answer[1] == 3000 and answer[0] != before[name][0]  # type: ignore[index]
    # The crashed services are replaced (their agent would restart them at its next resync,
    # up to 30 s): new processes on the canary host, where fix-v1 (done) reaches them.
    for name in on_canary:
        lab.region.run("instance", "delete", name)
        del lab.ips[name], lab.hosts[name]
        lab.instance(f"{name}r", "az1")
        assert lab.hosts[f"{name}r"] == canary[0]
    lab.crashed.clear()
    wait_for(lambda: set(lab.answers(3).values()) == {3000}, 20, "the new services on fix-v1")


def test_a_restarted_controller_continues_the_rollout(lab: Lab) -> None:
    yhp = lab.build("fix-v3", fleetsvc.PATCH_V3)
    lab.region.run("patch", "create", "fix-v3", "--file", str(yhp), "--canary", "1",
                   "--max-parallel", "3", "--health-window", "5")  # fmt: skip
    first = lab.patch("fix-v3")["status"]
    canary = first["canary_hosts"][0]
    wait_for(lambda: lab.patch("fix-v3")["status"]["hosts"][canary]["state"] == "applied", 30,
             "the canary applied")  # fmt: skip
    server = supervised(lab.region.state)["server"]
    os.kill(int(server["pid"]), signal.SIGKILL)  # mid health window: the controller with it

    def revived() -> bool:
        p = supervised(lab.region.state)["server"]
        return bool(p["restarts"] > server["restarts"] and p["state"] == "running")

    wait_for(revived, 30, "the server restarted")

    def done() -> dict[str, Any] | None:
        try:
            st: dict[str, Any] = lab.patch("fix-v3")["status"]
        except CliError as exc:  # the revived server may not listen yet
            if "cannot reach" in exc.stderr:
                return None
            raise
        return st if st["phase"] in ("done", "rolling_back", "rolled_back", "failed") else None

    st = wait_for(done, 60, "fix-v3 stopped")
    assert st["phase"] == "done", st
    assert (st["started_at"], st["canary_hosts"]) == (first["started_at"], first["canary_hosts"])
    assert {h: v["state"] for h, v in st["hosts"].items()} == dict.fromkeys(HOSTS, "applied")
    assert set(lab.answers(2).values()) == {6000}


def test_a_manual_rollback_restores_every_process(lab: Lab) -> None:
    lab.region.run("patch", "rollback", "fix-v3", "--wait")
    assert set(lab.answers(2).values()) == {2000}  # fix-v1 again
    lab.region.run("patch", "rollback", "fix-v1", "--wait")
    assert set(lab.answers(2).values()) == {fleetsvc.old_value(2)}
    for name in ("fix-v3", "fix-v1"):
        st = lab.patch(name)["status"]
        assert st["phase"] == "rolled_back", st
        assert st["counts"]["rolled_back"] == len(lab.hosts), st["counts"]
