"""`vip move` end to end on the fake fabric: the API's documents, applied by the agents'
data plane to fake hosts, deliver the VIP to its new holder and not the old one, from
every host; a VIP's address as a source passes the holder's port only.

Both candidates have the address configured (what a keepalived split brain looks like):
which one gets the traffic is decided by the hosts alone, never by anyone's ARP cache.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

from yunhan.agent.dataplane import DataPlane
from yunhan.net.docentries import Delta, assemble
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import INSTANCE_IFNAME, Naming
from yunhan.net.state import Address, Op

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]

VIP = "10.0.1.100"


class _Hosts:
    def __init__(self, cloud: Cloud, names: list[str]) -> None:
        self.cloud = cloud
        self.fabric = FakeFabric()
        self.namings = {h: Naming(f"v-{h}-") for h in names}
        self.dps = {
            h: DataPlane(
                naming=n,
                host_netns=None,
                driver="fake",
                state_dir=pathlib.Path("/nonexistent"),
                fabric=self.fabric,
            )
            for h, n in self.namings.items()
        }

    def sync(self) -> None:
        """Every agent applies its host's current document."""
        for h, dp in self.dps.items():
            r = self.cloud.client.get(
                f"/v1/agent/hosts/{h}/desired",
                params={"after": 0, "timeout": 0},
                headers=self.cloud.admin,
            )
            report = dp.apply(assemble(Delta.from_json(r.json()).entries, h))
            assert report.errors == []

    def netns(self, host: str, inst: dict[str, Any]) -> str:
        return self.namings[host].instance_netns(inst["id"])

    def configure(self, host: str, inst: dict[str, Any], cidr: str) -> None:
        """The tenant adds an address inside its instance (as keepalived does)."""
        ns = self.netns(host, inst)
        self.fabric.host(self.namings[host], None).apply(
            Op("create", new=Address(ns, INSTANCE_IFNAME, cidr))
        )


def test_after_vip_move_traffic_reaches_the_new_holder_not_the_old(
    cloud: Cloud, net: dict[str, Any]
) -> None:
    t = net["t"]
    make = {"name": "", "subnet": "web", "zone": ""}
    a = cloud.call("POST", "/v1/instances", t, json={**make, "name": "a", "zone": "az1"})
    b = cloud.call("POST", "/v1/instances", t, json={**make, "name": "b", "zone": "az2"})
    c = cloud.call("POST", "/v1/instances", t, json={**make, "name": "c", "zone": "az1"})
    d = cloud.call("POST", "/v1/instances", t, json={**make, "name": "d", "zone": "az2"})
    assert (a["status"]["host"], b["status"]["host"]) == ("h1", "h2")
    cloud.call("POST", "/v1/vips", t,
               json={"name": "v", "subnet": "web", "ip": VIP, "allowed": ["a", "b"]})  # fmt: skip
    hosts = _Hosts(cloud, ["h1", "h2"])
    hosts.sync()
    hosts.configure("h1", a, f"{VIP}/24")
    hosts.configure("h2", b, f"{VIP}/24")
    f = hosts.fabric
    assert f.trace(c["id"], VIP).verdict == "unreachable"  # held by nobody yet

    cloud.call("POST", "/v1/vips/v/move", t, json={"instance": "b"})
    hosts.sync()
    for client in (c, d):  # from b's zone and from the other one
        tr = f.trace(client["id"], VIP, proto="tcp", port=80)
        assert tr.delivered and tr.to_netns == hosts.netns("h2", b), tr
    assert f.trace(b["id"], c["status"]["ip"], src_ip=VIP).delivered  # replies from the VIP
    assert f.trace(a["id"], c["status"]["ip"], src_ip=VIP).verdict == "dropped-by-antispoof"

    cloud.call("POST", "/v1/vips/v/move", t, json={"instance": "a"})
    hosts.sync()
    for client in (c, d):
        tr = f.trace(client["id"], VIP, proto="tcp", port=80)
        assert tr.delivered and tr.to_netns == hosts.netns("h1", a), tr
    assert f.trace(a["id"], d["status"]["ip"], src_ip=VIP).delivered
    # the old holder, and a stranger, can no longer send from the VIP
    assert f.trace(b["id"], d["status"]["ip"], src_ip=VIP).verdict == "dropped-by-antispoof"
    assert f.trace(d["id"], c["status"]["ip"], src_ip=VIP).verdict == "dropped-by-antispoof"
    # every agent is converged: applying the same documents again changes nothing
    for h, dp in hosts.dps.items():
        r = cloud.client.get(
            f"/v1/agent/hosts/{h}/desired", params={"after": 0, "timeout": 0}, headers=cloud.admin
        )
        assert dp.plan(assemble(Delta.from_json(r.json()).entries, h)) == []
