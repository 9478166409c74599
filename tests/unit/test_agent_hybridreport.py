"""The replica reporter posts what changed, all of it when due, and retries a lost post."""

from __future__ import annotations

from typing import Any

from yunhan.agent.hybridreport import HybridReporter
from yunhan.net.desired import (
    HostDesired,
    HybridGwDesired,
    HybridReplicaDesired,
    VpcDesired,
)
from yunhan.net.naming import Naming


def _doc(*gws: str) -> HostDesired:
    hybrids = tuple(
        HybridGwDesired(
            id=g,
            index=i + 1,
            ifname=f"h-{g[-8:]}",
            replica=HybridReplicaDesired(
                index=i + 1,
                line_vni=7,
                line_vtep="198.19.16.1",
                line_ip=f"198.19.33.{11 + i}/24",
                peer_ip="198.19.33.1",
                peer_asn=65001,
                asn=64512,
            ),
        )
        for i, g in enumerate(gws)
    )
    vpc = VpcDesired(id="vpc-1", vni=5, cidrs=("10.0.0.0/16",), gateways=(), hybrids=hybrids)
    return HostDesired(host="h1", underlay_ip="198.18.1.11", vtep_index=1, vpcs=(vpc,))


class Rig:
    def __init__(self, doc: HostDesired | None) -> None:
        self.doc = doc
        self.now = 0.0
        self.states: dict[str, str] = {}
        self.posts: list[dict[str, Any]] = []
        self.accept = True
        self.asked: list[tuple[str, str]] = []
        self.r = HybridReporter(
            Naming("p-"),
            lambda: self.doc,
            self.post,
            status_of=self.status,
            refresh=30.0,
            clock=lambda: self.now,
        )

    def status(self, ns: str, peer: str) -> dict[str, Any]:
        self.asked.append((ns, peer))
        if ns not in self.states:
            raise RuntimeError("vtysh: no such daemon")
        return {"state": self.states[ns], "reason": ""}

    def post(self, body: dict[str, Any]) -> bool:
        self.posts.append(body)
        return self.accept


def test_only_changes_are_posted_between_full_reports() -> None:
    rig = Rig(_doc("hgw-0000000a", "hgw-0000000b"))
    rig.states = {"p-h-0000000a": "Established", "p-h-0000000b": "Active"}
    assert rig.r.once() == 2  # the first round is a full one
    assert ("p-h-0000000a", "198.19.33.1") in rig.asked
    rig.now = 1.0
    assert rig.r.once() == 0 and len(rig.posts) == 1
    rig.states["p-h-0000000b"] = "Established"
    rig.now = 2.0
    assert rig.r.once() == 1
    assert rig.posts[-1]["replicas"] == [
        {"gateway": "hgw-0000000b", "index": 2, "state": "Established", "reason": ""}
    ]
    rig.now = 40.0
    assert rig.r.once() == 2  # due again: everything


def test_a_refused_post_is_retried_and_a_broken_reading_is_a_down_state() -> None:
    rig = Rig(_doc("hgw-0000000a"))
    rig.accept = False
    assert rig.r.once() == 0
    rig.accept = True
    rig.now = 1.0
    assert rig.r.once() == 1
    (rep,) = rig.posts[-1]["replicas"]
    assert rep["state"] == "down" and "no such daemon" in rep["reason"]


def test_a_host_without_replicas_posts_nothing() -> None:
    rig = Rig(None)
    assert rig.r.once() == 0 and rig.posts == []
