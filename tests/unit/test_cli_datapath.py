"""`yunhan host datapath`: which path each host forwards with and why, from what its
agent last reported (the real API app and store; cli_fixtures.Region)."""

from __future__ import annotations

import json
from typing import Any

from cli_fixtures import ADMIN, Region, region

__all__ = ["region"]  # the fixture, re-exported for pytest

FAST: dict[str, Any] = {
    "mode": "fast",
    "reason": "tcx programs on every instance port and vxlan0 (per instance: below)",
    "instances": {"inst-00000001": "fast", "inst-00000002": "kernel: security groups"},
    "packets": {"local": 5, "encap": 7, "decap": 11, "slow": 3},
    "errors": [],
}
KERNEL: dict[str, Any] = {
    "mode": "kernel",
    "reason": "clang is not installed",
    "instances": {},
    "packets": {},
}


def _report(region: Region, host: str, dp: dict[str, Any]) -> None:
    body = {"applied_revision": 0, "instances": {}, "volumes": {}, "datapath": dp}
    region.api("POST", f"/v1/agent/hosts/{host}/status", json=body)


def test_each_host_s_path_and_why(region: Region) -> None:
    region.stop.set()  # the played agents would report without a data path
    _report(region, "az1-h1", FAST)
    _report(region, "az2-h1", KERNEL)
    out = region.ok("host", "datapath").stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows["az1-h1"].split()[2:7] == ["fast", "1", "1", "23", "3"], out
    assert "kernel" in rows["az2-h1"] and "clang is not installed" in rows["az2-h1"], out

    one = region.ok("host", "datapath", "--host", "az1-h1").stdout
    assert "az2-h1" not in one
    assert "security groups" in one and "inst-00000001" in one, one

    objs = json.loads(region.ok("host", "datapath", "-o", "json").stdout)
    assert {o["host"]: o["mode"] for o in objs} == {"az1-h1": "fast", "az2-h1": "kernel"}
    assert objs[0]["packets"] == FAST["packets"] or objs[1]["packets"] == FAST["packets"]


def test_a_tenant_sees_the_mode_but_no_instance_of_others(region: Region) -> None:
    region.stop.set()
    _report(region, "az1-h1", FAST)
    r = region.http.post("/v1/projects", json={"name": "alpha"}, headers=ADMIN)
    token = r.json()["status"]["token"] if "status" in r.json() else r.json()["token"]
    h = region.http.get("/v1/hosts/az1-h1", headers={"Authorization": f"Bearer {token}"})
    assert h.status_code == 200, h.text
    dp = h.json()["status"]["datapath"]
    assert (dp["mode"], dp["reason"]) == ("fast", FAST["reason"])
    assert (dp["instances"], dp["packets"], dp["errors"]) == (None, None, None)
