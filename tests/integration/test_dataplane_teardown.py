"""DataPlane.teardown on real namespaces: idempotent, and blind to a nested prefix (root)."""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Callable

import pytest

from tests.integration import netlab
from tests.worlds import WHost, WInstance, WVpc, documents
from yunhan.agent.dataplane import DataPlane
from yunhan.compute import netns_sandbox
from yunhan.net import nsutil
from yunhan.net.naming import Naming

pytestmark = pytest.mark.root


def test_teardown_twice_spares_a_host_whose_prefix_extends_ours(
    uniq: Callable[[str], str], tmp_path: pathlib.Path
) -> None:
    # Host "h1" of region "<r>" and host "h1" of a region "<r>-h1" (a valid prefix): the
    # second's names all start with the first's prefix "<r>-h1-".
    r = uniq("td")
    namings = [Naming(f"{r}-h1-"), Naming(f"{r}-h1-h1-")]
    hosts = [WHost("h1", "198.18.1.11", 1)]
    vpcs = [WVpc("vpc-a", 100, ("10.1.0.0/16",), ("10.1.1.0/24",))]
    doc = documents(hosts, vpcs, [WInstance("inst-0000a001", "h1", "vpc-a", "10.1.1.10")])["h1"]
    dps: list[DataPlane] = []
    try:
        for i, n in enumerate(namings):
            host_ns = f"{r}-u{i}"  # one underlay each: one VNI per local address
            netlab.sh("ip", "netns", "add", host_ns)
            netlab.ip(host_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
            netlab.ip(host_ns, "addr", "add", "198.18.1.11/24", "dev", "eth0")
            netlab.ip(host_ns, "link", "set", "eth0", "up")
            dp = DataPlane(naming=n, host_netns=host_ns, state_dir=tmp_path / str(i))
            dps.append(dp)
            assert dp.apply(doc).errors == []
        other = dps[1].observe()
        assert ("uts", namings[1].instance_netns("inst-0000a001")) in other
        dps[0].teardown()
        dps[0].teardown()  # nothing left: nothing to do
        assert dps[0].observe() == {}
        assert dps[1].observe() == other
        assert dps[1].plan(doc) == []
    finally:
        for dp in dps:
            dp.teardown()
        netlab.teardown(r)
        for p in nsutil.UTS_DIR.glob(f"{r}-*"):
            nsutil.remove_ns_file(p)
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert [n for n in netlab.list_netns() if netlab.owned(n, r)] == []
    assert list(nsutil.UTS_DIR.glob(f"{r}-*")) == []
    assert netns_sandbox.list_uts(f"{r}-") == {}
