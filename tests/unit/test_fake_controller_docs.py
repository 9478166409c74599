"""The controller's documents, applied to fake hosts, give a VPC that routes (contract check).

`controller.netcompile` and the data plane meet only at `HostDesired`; this test feeds
the controller's own output to the fake data plane and traces packets through it.
"""

from __future__ import annotations

import pathlib

from yunhan.agent.dataplane import DataPlane
from yunhan.controller.netcompile import HostIn, InstanceIn, SubnetIn, VpcIn, compile_hosts
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import Naming


def test_controller_documents_route_on_the_fake_fabric() -> None:
    hosts = [HostIn("h1", 1, "198.18.1.11"), HostIn("h2", 2, "198.18.2.12")]
    vpcs = [VpcIn("vpc-1", 4001, ("10.8.0.0/16",))]
    subnets = [
        SubnetIn("subnet-1", "vpc-1", "10.8.1.0/24"),
        SubnetIn("subnet-2", "vpc-1", "10.8.2.0/24"),
    ]
    insts = [
        InstanceIn("inst-00000001", "a", "subnet-1", "10.8.1.5", "02:00:00:00:01:05", "h1"),
        InstanceIn("inst-00000002", "b", "subnet-2", "10.8.2.5", "02:00:00:00:02:05", "h2"),
        InstanceIn("inst-00000003", "c", "subnet-1", "10.8.1.6", "02:00:00:00:01:06", "h2"),
    ]
    fabric = FakeFabric()
    for name, doc in compile_hosts(hosts, vpcs, subnets, insts).items():
        dp = DataPlane(
            naming=Naming(f"c-{name}-"),
            host_netns=None,
            driver="fake",
            state_dir=pathlib.Path("/nonexistent"),
            fabric=fabric,
        )
        r = dp.apply(doc)
        assert r.errors == []
        assert {i.phase for i in r.instances.values()} == {"running"}
        assert dp.plan(doc) == []
    assert fabric.trace("inst-00000001", "10.8.2.5").to_netns == "c-h2-i-00000002"
    assert fabric.trace("inst-00000001", "10.8.1.6").to_netns == "c-h2-i-00000003"
    assert fabric.trace("inst-00000003", "10.8.1.1").delivered
    assert fabric.trace("inst-00000002", "10.8.1.7").verdict == "unreachable"
