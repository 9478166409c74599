"""The traffic reporter (docs/cutover.md): counts where the document says, posts what moved,
keeps what it could not post, and neither loses nor doubles counts across a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from yunhan.agent.trafficstats import TrafficReporter, targets
from yunhan.errors import DriverError
from yunhan.net import nftstats
from yunhan.net.desired import HostDesired, HybridGwDesired, HybridReplicaDesired, VpcDesired
from yunhan.net.naming import Naming

NAMING = Naming("t-")
A, B = "192.168.100.0/24", "192.168.101.0/24"


def _doc(prefixes: tuple[str, ...], replica: bool = True) -> HostDesired:
    rep = HybridReplicaDesired(
        index=2, line_vni=7, line_vtep="198.19.16.1", line_ip="198.19.33.12/24",
        peer_ip="198.19.33.1", peer_asn=65001, asn=64512,
    )  # fmt: skip
    g = HybridGwDesired(
        id="hgw-0000abcd", index=1, ifname="h-0000abcd", replica=rep if replica else None,
        prefixes=prefixes,
    )  # fmt: skip
    vpc = VpcDesired(id="vpc-1", vni=5, cidrs=("10.0.0.0/16",), gateways=(), hybrids=(g,))
    return HostDesired(host="h1", underlay_ip="198.18.1.11", vtep_index=1, vpcs=(vpc,))


class Kernel:
    """nft in namespaces, as far as the reporter uses it: tables of named counters."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list[int]]] = {}
        self.scripts = 0

    def run(self, ns: str, cmd: str) -> dict[str, Any]:
        if cmd.startswith("list counters"):
            if ns not in self.tables:
                raise DriverError("No such file or directory", errno=2)
            return {"nftables": [
                {"counter": {"table": nftstats.TABLE, "name": n, "packets": v[0], "bytes": v[1]}}
                for n, v in self.tables[ns].items()
            ]}  # fmt: skip
        self.scripts += 1
        names = [ln.split()[1] for ln in cmd.splitlines() if ln.strip().startswith("counter ")]
        if names:
            self.tables[ns] = {n: [0, 0] for n in names}
        else:
            self.tables.pop(ns, None)
        return {}

    def send(self, ns: str, name: str, packets: int, size: int) -> None:
        c = self.tables[ns][name]
        c[0] += packets
        c[1] += packets * size


class Rig:
    def __init__(self, tmp: Path, doc: HostDesired | None) -> None:
        self.doc = doc
        self.kernel = Kernel()
        self.posts: list[dict[str, Any]] = []
        self.up = True
        self.now = 1000.0
        self.state = tmp / "traffic.json"
        self.rep = self.make()

    def make(self) -> TrafficReporter:
        return TrafficReporter(
            NAMING, "h1", lambda: self.doc, self.post, state_file=self.state,
            clock=lambda: self.now, nft_run=self.kernel.run,
        )  # fmt: skip

    def post(self, body: dict[str, Any]) -> bool:
        if not self.up:
            return False
        self.posts.append(body)
        return True

    def round(self) -> int:
        self.now += 2.0
        return self.rep.once()

    def posted(self) -> dict[tuple[str, str, str, str], tuple[int, int]]:
        out: dict[tuple[str, str, str, str], tuple[int, int]] = {}
        for body in self.posts:
            for s in body["samples"]:
                k = (s["prefix"], s["point"], s["source"], s["direction"])
                p, b = out.get(k, (0, 0))
                out[k] = (p + s["packets"], b + s["bytes"])
        return out


VPC_NS, REP_NS = "t-v5", "t-h-0000abcd"


def test_targets_are_the_vpc_namespace_and_the_local_replica() -> None:
    t = targets(_doc((A, B)), NAMING, "h1")
    assert t[VPC_NS].kind == "vpc" and t[VPC_NS].prefixes == (A, B) and t[VPC_NS].source == "h1"
    assert t[REP_NS].kind == "replica" and t[REP_NS].source == "hgw-0000abcd/2"
    assert set(targets(_doc((A,), replica=False), NAMING, "h1")) == {VPC_NS}
    assert targets(_doc(()), NAMING, "h1") == {}
    assert targets(None, NAMING, "h1") == {}


def test_posts_what_moved_and_keeps_what_it_could_not_post(tmp_path: Path) -> None:
    r = Rig(tmp_path, _doc((A, B)))
    assert r.round() == 0 and r.kernel.scripts == 2  # tables made, nothing moved
    r.kernel.send(VPC_NS, "sent_in_192_168_101_0_24", 10, 128)
    r.kernel.send(REP_NS, "replica_in_192_168_101_0_24", 10, 128)
    assert r.round() == 2
    (body,) = r.posts
    s = body["samples"][0]
    assert s["vpc"] == "vpc-1" and s["start"] == 1002.0 and s["end"] == 1004.0
    r.up = False  # the API away for two rounds: nothing lost, summed per key
    r.kernel.send(VPC_NS, "sent_in_192_168_101_0_24", 5, 128)
    assert r.round() == 0
    r.kernel.send(VPC_NS, "sent_in_192_168_101_0_24", 5, 128)
    assert r.round() == 0
    r.up = True
    assert r.round() == 1
    assert r.posts[-1]["samples"][0]["start"] == 1004.0  # the whole span, merged
    assert r.posted() == {
        (B, "host-sent", "h1", "in"): (20, 2560),
        (B, "replica", "hgw-0000abcd/2", "in"): (10, 1280),
    }
    assert r.kernel.scripts == 2  # tables are replaced only when their prefixes change


def test_a_restarted_agent_neither_loses_nor_doubles(tmp_path: Path) -> None:
    r = Rig(tmp_path, _doc((A,)))
    r.round()
    r.kernel.send(VPC_NS, "delivered_out_192_168_100_0_24", 4, 100)
    r.up = False
    r.round()  # read, not posted: kept in the state file
    assert json.loads(r.state.read_text())["pending"]
    r.kernel.send(VPC_NS, "delivered_out_192_168_100_0_24", 6, 100)  # while the agent is down
    r.up = True
    r.rep = r.make()
    r.round()
    r.round()
    assert r.posted() == {(A, "host-delivered", "h1", "out"): (10, 1000)}


def test_new_prefixes_replace_the_table_after_reading_it_and_gone_ones_remove_it(
    tmp_path: Path,
) -> None:
    r = Rig(tmp_path, _doc((A,)))
    r.round()
    r.kernel.send(VPC_NS, "sent_in_192_168_100_0_24", 3, 100)
    r.doc = _doc((A, B))
    r.round()
    assert "sent_in_192_168_101_0_24" in r.kernel.tables[VPC_NS]
    assert r.posted() == {(A, "host-sent", "h1", "in"): (3, 300)}  # read before the swap
    r.doc = _doc(())
    r.round()
    assert r.kernel.tables == {}
