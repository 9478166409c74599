"""The two halves of fleet patching against each other: the agent's `Patches` worker
(processes and engine faked by test_agent_patches.FakeMachine) talking HTTP to the real
API app and controller, with a real .yhp, on SQLite and PostgreSQL. What one half sends,
the other must take: assignments, the file by digest, reports, rollback."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.testclient import TestClient
from test_agent_patches import AGENT_PID, INSTANCES, NAMING, FakeMachine, settle

from yunhan.agent.patches import Patches

if TYPE_CHECKING:
    from cp_fixtures import Cloud
    from patch_fixtures import Yhps

pytest_plugins = ["cp_fixtures", "patch_fixtures"]


def test_the_agent_applies_reports_and_rolls_back_through_the_real_api(
    cloud: Cloud, net: dict[str, Any], yhp: Yhps, tmp_path: Path
) -> None:
    body = yhp.price.body("fix", hosts=["h1"], health_window=0)
    p = cloud.call("POST", "/v1/patches", json=body)
    machine = FakeMachine(cloud.clock)
    for pid in (201, 202):
        machine.add(pid, build_ids={yhp.price.build_id})
    machine.add(203, build_ids={yhp.other.build_id})  # another build: not a target
    w = Patches(
        naming=NAMING,
        client=TestClient(cloud.client.app, headers=cloud.admin),
        api=lambda tail: tail,
        host_name="h1",
        host_netns="t-h1-host",
        cache_dir=tmp_path / "cache",
        instances=lambda: INSTANCES,
        processes=machine,
        connector=None,
        agent_pid=AGENT_PID,
        clock=cloud.clock,
    )
    assert w.poll_once()
    settle(w, cloud.clock)
    assert w.flush_once()
    assert sorted(pid for pid, x in machine.procs.items() if "fix-price" in x.patches) == [
        201,
        202,
    ]
    cloud.reconcile()
    shown = cloud.call("GET", "/v1/patches/fix")
    st = shown["status"]
    assert st["phase"] == "done" and st["hosts"]["h1"]["state"] == "applied"
    assert st["counts"]["applied"] == 2 and w.refused == 0
    assert sorted((x["pid"], x["comm"], x["result"]) for x in shown["processes"]) == [
        (201, "svc201", "applied"),
        (202, "svc202", "applied"),
    ]
    cloud.call("POST", f"/v1/patches/{p['id']}/rollback")
    assert w.poll_once()
    settle(w, cloud.clock)
    assert w.flush_once()
    cloud.reconcile()
    st = cloud.call("GET", "/v1/patches/fix")["status"]
    assert st["phase"] == "rolled_back" and st["counts"]["rolled_back"] == 2
    assert not any(x.patches for x in machine.procs.values())
