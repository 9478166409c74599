"""The security group and ACL table of a VPC namespace, pure: what a document compiles to,
what the nft batch holds, reading it back, and member changes as element changes."""

from __future__ import annotations

from typing import Any

from yunhan.net import nftsg
from yunhan.net.desired import (
    AclDesired,
    AclRuleDesired,
    HostDesired,
    Port,
    SecurityGroupDesired,
    SgRuleDesired,
    VpcDesired,
)
from yunhan.net.naming import Naming
from yunhan.net.state import Firewall, compile_state

WEB = SgRuleDesired(id="r-1", direction="ingress", proto="tcp", port_min=80, port_max=80,
                    group="sg-b")  # fmt: skip
DENY = SgRuleDesired(id="r-2", direction="ingress", proto="tcp", port_min=80, port_max=90,
                     cidr="10.0.9.0/24", action="deny")  # fmt: skip
OUT = SgRuleDesired(id="r-3", direction="egress", cidr="0.0.0.0/0")


def _doc(members: tuple[str, ...] = ("10.0.1.6",), acl: bool = False) -> HostDesired:
    ports = (
        Port(instance_id="inst-1", ifname="p-1", ip="10.0.1.5", prefixlen=24,
             gateway="10.0.1.1", mac="02:00:00:00:00:01", sgs=("sg-a", "sg-b")),
        Port(instance_id="inst-2", ifname="p-2", ip="10.0.2.5", prefixlen=24,
             gateway="10.0.2.1", mac="02:00:00:00:00:02"),
    )  # fmt: skip
    groups = (
        SecurityGroupDesired(id="sg-a", rules=(WEB, OUT), members=("10.0.1.5",)),
        SecurityGroupDesired(id="sg-b", rules=(DENY,), members=members),
    )
    acls = (
        (
            AclDesired(
                id="acl-1",
                rules=(AclRuleDesired(number=1, direction="ingress"),),
                subnets=("10.0.2.0/24",),
            ),
        )
        if acl
        else ()
    )
    vpc = VpcDesired(id="vpc-1", vni=7, cidrs=("10.0.0.0/16",), gateways=(), ports=ports,
                     groups=groups, acls=acls)  # fmt: skip
    return HostDesired(host="h1", underlay_ip="198.18.0.1", vtep_index=1, vpcs=(vpc,))


def _firewall(doc: HostDesired) -> Firewall:
    (fw,) = [o for o in compile_state(doc, Naming("t-")).values() if isinstance(o, Firewall)]
    return fw


def _as_listing(batch: dict[str, Any]) -> dict[str, Any]:
    """What `nft list table` gives back for a batch of ours (the kernel lists our forms)."""
    items = []
    for cmd in batch["nftables"]:
        for kind, body in cmd.get("add", {}).items():
            if kind in ("set", "chain", "rule"):
                items.append({kind: body})
    return {"nftables": items}


def test_a_port_gets_all_its_groups_rules_in_one_order() -> None:
    fw = _firewall(_doc())
    assert fw.zone == nftsg.zone_of(7)
    (port,) = fw.ports  # p-2 has no groups: not filtered
    assert port.ifname == "p-1"
    assert [r.id for r in port.ingress] == ["r-2", "r-1"]  # deny first at one priority
    assert [r.id for r in port.egress] == ["r-3"]
    assert fw.groups == (("sg-b", ("10.0.1.6",)),)  # only the groups rules name as peers


def test_the_batch_reads_back_as_written_and_a_changed_rule_as_broken() -> None:
    fw = _firewall(_doc(acl=True))
    assert [a.ifname for a in fw.acls] == ["p-2"]
    batch = nftsg.table_batch(fw.zone, fw.groups, fw.ports, fw.acls)
    assert nftsg.parse(_as_listing(batch)) == (fw.zone, fw.groups, fw.ports, fw.acls)
    listing = _as_listing(batch)
    for item in listing["nftables"]:
        r = item.get("rule")
        if r is not None and r["chain"] == "i_p-1" and r["comment"].startswith("r-2"):
            r["expr"][-1] = {"accept": None}  # a deny turned into an accept by hand
    assert nftsg.parse(listing)[0] == nftsg.BROKEN_ZONE


def test_a_member_change_is_element_changes_and_keeps_the_generation() -> None:
    old, new = _firewall(_doc(("10.0.1.6",))), _firewall(_doc(("10.0.1.7", "10.0.1.8")))
    assert (old.ports, old.acls) == (new.ports, new.acls)
    batch = nftsg.members_batch(old.groups, new.groups)
    assert batch == {
        "nftables": [
            {"delete": {"element": {"family": "ip", "table": "yunhan_sg", "name": "m_sg-b",
                                    "elem": ["10.0.1.6"]}}},
            {"add": {"element": {"family": "ip", "table": "yunhan_sg", "name": "m_sg-b",
                                 "elem": ["10.0.1.7", "10.0.1.8"]}}},
        ]
    }  # fmt: skip
    assert nftsg.generation(old.zone, old.ports) == nftsg.generation(new.zone, new.ports)
    assert nftsg.members_batch(old.groups, ()) is None  # a set that goes: rewrite the table
