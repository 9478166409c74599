"""`yunhan patch …` against the real API app, with a real .yhp: the issue's forms as
written, tables for people, JSON for scripts, one-line errors, and `--wait` until the
rollout stops (agents and the controller played by a thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from cli_fixtures import Region, region

from yunhan.controller import Controller

if TYPE_CHECKING:
    from patch_fixtures import Yhps

__all__ = ["region"]  # the fixture, re-exported for pytest
pytest_plugins = ["patch_fixtures"]


class PatchAgents:
    """Every host's agent does what it is asked at once (two processes each; hosts in
    `failing` cannot use the file), and the controller takes a pass, every 20 ms."""

    def __init__(self, reg: Region) -> None:
        self.reg = reg
        self.controller = Controller(reg.http.app.state.yunhan.store)
        self.failing: set[str] = set()
        self.stop = threading.Event()

    def play(self) -> None:
        for h in list(self.reg.hosts):
            for p in self.reg.api("GET", f"/v1/agent/hosts/{h}/patches")["patches"]:
                apply = p["want"] == "apply"
                state = "applied" if apply else "rolled_back"
                if h in self.failing and apply:
                    state = "failed"
                procs = [
                    {"pid": pid, "start": 7, "comm": "pricesvc", "instance": None,
                     "result": "applied" if apply else "rolled_back", "at": time.time()}
                    for pid in (4242, 4243)
                ] if state != "failed" else []  # fmt: skip
                rep = {"patch": p["id"], "state": state, "processes": procs}
                if state == "failed":
                    rep["message"] = "the patch file's sha256 is not its digest"
                body = {"reports": [rep]}
                self.reg.api("POST", f"/v1/agent/hosts/{h}/patch-reports", json=body)
        self.controller.reconcile_once()

    def loop(self) -> None:
        while not self.stop.wait(0.02):
            self.play()


@pytest.fixture
def agents(region: Region) -> Iterator[PatchAgents]:
    a = PatchAgents(region)
    t = threading.Thread(target=a.loop, name="test-patch-agents")
    t.start()
    try:
        yield a
    finally:
        a.stop.set()
        t.join()


def test_patch_lifecycle(region: Region, agents: PatchAgents, yhp: Yhps) -> None:
    r = region
    p = r.cli("patch", "create", "fix-price", "--file", str(yhp.price.path), "--canary", "1",
              "--max-parallel", "2", "--health-window", "0", "--wait", "--json").json()  # fmt: skip
    assert p["status"]["phase"] == "done" and p["spec"]["functions"] == ["price"]
    assert p["status"]["counts"]["applied"] == 4 and len(p["processes"]) == 4
    assert p["status"]["targets"] == ["az1-h1", "az2-h1"]
    out = r.ok("patch", "list").stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "TARGET", "FUNCTIONS", "HOSTS", "APPLIED",
                              "REFUSED", "DIED", "BUSY", "ROLLED_BACK"]  # fmt: skip
    assert out[1].split()[:6] == ["fix-price", "done", "a", "price", "2/2", "4"]
    text = r.ok("patch", "show", "fix-price").stdout
    assert "phase" in text and "done" in text
    assert "HOST" in text and "az1-h1" in text and "CANARY" in text
    assert "PID" in text and "4242" in text and "pricesvc" in text
    shown = r.cli("patch", "show", "fix-price", "-o", "json").json()
    assert {"spec", "status", "processes"} <= set(shown)
    bad = r.cli("patch", "delete", "fix-price")
    assert bad.code != 0 and "roll it back first" in bad.stderr
    back = r.cli("patch", "rollback", "fix-price", "--wait", "--json").json()
    assert back["status"]["phase"] == "rolled_back"
    assert back["status"]["counts"]["rolled_back"] == 4
    assert "deleted patch fix-price" in r.ok("patch", "delete", "fix-price").stdout
    assert r.ok("patch", "list").stdout == "no patches\n"


def test_wait_fails_unless_the_rollout_got_there(
    region: Region, agents: PatchAgents, yhp: Yhps
) -> None:
    r = region
    agents.failing.add("az1-h1")
    bad = r.cli("patch", "create", "fix", "--file", str(yhp.price.path), "--health-window", "0",
                "--wait")  # fmt: skip
    assert bad.code != 0
    assert "patch fix is rolled_back, not done" in bad.stderr
    assert "host az1-h1 failed: the patch file's sha256 is not its digest" in bad.stderr
    shown = r.cli("patch", "show", "fix", "--json").json()
    assert shown["status"]["hosts"]["az2-h1"]["want"] is None  # the canary stopped it


def test_patch_errors_are_one_line(region: Region, yhp: Yhps) -> None:
    r = region
    bad = r.cli("patch", "create", "x", "--file", str(yhp.target))
    assert bad.code != 0 and "not a .yhp patch" in bad.stderr and len(bad.stderr.splitlines()) == 1
    bad = r.cli("patch", "create", "x", "--file", "/nonexistent.yhp")
    assert bad.code != 0 and "cannot read /nonexistent.yhp" in bad.stderr
    bad = r.cli("patch", "create", "x", "--file", str(yhp.price.path), "--zone", "az9")
    assert bad.code != 0 and "no zone 'az9'" in bad.stderr
    bad = r.cli("patch", "create", "x", "--file", str(yhp.price.path), "--label", "tier")
    assert bad.code != 0 and "KEY=VALUE" in bad.stderr
    none = r.cli("patch", "create", "x", "--file", str(yhp.price.path), "--label", "tier=none",
                 "--json")  # fmt: skip
    assert none.code == 0 and "no host matches" in none.stderr
    assert none.json()["status"]["targets"] == []
    r.ok("patch", "create", "y", "--file", str(yhp.tax.path), "--zone", "az2", "--canary", "0")
    paused = r.cli("patch", "pause", "y", "--wait", "--json").json()
    assert paused["status"]["phase"] == "paused"
    bad = r.cli("patch", "rollback", "y")
    assert bad.code != 0 and "not applied" in bad.stderr
    bad = r.cli("patch", "create", "z", "--file", str(yhp.tax.path))
    assert bad.code != 0 and "patch y (paused) also replaces tax" in bad.stderr
