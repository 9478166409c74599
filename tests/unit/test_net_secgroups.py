"""The security group and ACL table of a VPC namespace, pure: what a document compiles to,
what the nft batch holds, reading it back, and member changes as element changes."""

from __future__ import annotations

import copy
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


def _rules(batch: dict[str, Any], chain: str) -> list[tuple[str, Any]]:
    return [
        (c["add"]["rule"]["comment"], c["add"]["rule"]["expr"])
        for c in batch["nftables"]
        if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain
    ]


def test_every_drop_goes_through_a_rate_limited_logging_chain_of_its_port() -> None:
    fw = _firewall(_doc(acl=True))
    batch = nftsg.table_batch(fw.zone, fw.groups, fw.ports, fw.acls)
    # The deny rule and the end of each port chain go to that port's reject chain.
    i_rules = _rules(batch, "i_p-1")
    assert i_rules[0][1][-1] == {"goto": {"target": "xi_p-1"}}  # r-2, a deny
    assert i_rules[-1] == ("end", [{"goto": {"target": "xi_p-1"}}])
    assert _rules(batch, "e_p-1")[-1] == ("end", [{"goto": {"target": "xe_p-1"}}])
    assert _rules(batch, "ai_p-2")[-1] == ("end", [{"goto": {"target": "xai_p-2"}}])
    assert _rules(batch, "ae_p-2")[-1] == ("end", [{"goto": {"target": "xae_p-2"}}])
    # No verdict anywhere drops without logging first.
    drops = [
        chain
        for c in batch["nftables"]
        if "rule" in c.get("add", {})
        for chain, expr in [(c["add"]["rule"]["chain"], c["add"]["rule"]["expr"])]
        if {"drop": None} in expr
    ]
    assert sorted(drops) == ["xae_p-2", "xai_p-2", "xe_p-1", "xi_p-1"]
    # Each reject chain: one limiter of its own, logging to the group, then the drop.
    for chain, (prefix, check, direction) in {
        "xi_p-1": ("yh sg i ", "sg", "ingress"),
        "xe_p-1": ("yh sg e ", "sg", "egress"),
        "xai_p-2": ("yh acl i ", "acl", "ingress"),
        "xae_p-2": ("yh acl e ", "acl", "egress"),
    }.items():
        assert _rules(batch, chain) == [
            ("log", [
                {"limit": {"rate": nftsg.LOG_RATE, "burst": nftsg.LOG_BURST, "per": "second"}},
                {"log": {"prefix": prefix, "group": nftsg.LOG_GROUP}},
            ]),
            ("drop", [{"drop": None}]),
        ]  # fmt: skip
        assert nftsg.LOG_PREFIXES[prefix] == (check, direction)


def test_a_reject_chain_changed_by_hand_reads_as_drift() -> None:
    fw = _firewall(_doc(acl=True))
    batch = nftsg.table_batch(fw.zone, fw.groups, fw.ports, fw.acls)
    assert nftsg.parse(_as_listing(batch))[0] == fw.zone
    for chain, change in (
        ("xi_p-1", lambda e: e[0]["limit"].update(rate=1000)),  # a limit raised by hand
        ("xae_p-2", lambda e: e.pop(0)),  # the limiter removed
        ("xe_p-1", lambda e: e[1]["log"].update(group=9)),  # logged elsewhere
    ):
        listing = copy.deepcopy(_as_listing(batch))
        for item in listing["nftables"]:
            r = item.get("rule")
            if r is not None and r["chain"] == chain and r["comment"] == "log":
                change(r["expr"])
        assert nftsg.parse(listing)[0] == nftsg.BROKEN_ZONE, chain
    # A reject chain deleted by hand (with the rules that went to it) is drift too.
    listing = _as_listing(batch)
    listing["nftables"] = [
        i for i in listing["nftables"]
        if (i.get("chain") or i.get("rule") or {}).get("name", "") != "xi_p-1"
        and (i.get("rule") or {}).get("chain") != "xi_p-1"
    ]  # fmt: skip
    assert nftsg.parse(listing)[0] == nftsg.BROKEN_ZONE


def test_cidr_peers_live_in_interval_sets_named_by_what_they_hold() -> None:
    doc = _doc(acl=True)
    fw = _firewall(doc)
    batch = nftsg.table_batch(fw.zone, fw.groups, fw.ports, fw.acls)
    sets = {c["add"]["set"]["name"]: c["add"]["set"] for c in batch["nftables"]
            if "set" in c.get("add", {})}  # fmt: skip
    # DENY's 10.0.9.0/24 is one interval set; 0.0.0.0/0 (OUT, the ACL's rule) needs none.
    name = nftsg.cidr_set("10.0.9.0/24")
    assert name == "c_0a000900_24"
    assert sets[name]["flags"] == ["interval"]
    assert sets[name]["elem"] == [{"prefix": {"addr": "10.0.9.0", "len": 24}}]
    assert sorted(n for n in sets if n.startswith("c_")) == [name]
    deny = [e for _t, e in _rules(batch, "i_p-1") if {"goto": {"target": "xi_p-1"}} in e]
    assert any(m.get("match", {}).get("right") == "@" + name for e in deny for m in e)
    # read back as written; an element changed by hand, or the set gone, is drift
    assert nftsg.parse(_as_listing(batch)) == (fw.zone, fw.groups, fw.ports, fw.acls)
    listing = _as_listing(batch)
    for item in listing["nftables"]:
        if item.get("set", {}).get("name") == name:
            item["set"] = {**item["set"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 16}}]}
    assert nftsg.parse(listing)[0] == nftsg.BROKEN_ZONE
    listing = _as_listing(batch)
    listing["nftables"] = [i for i in listing["nftables"] if i.get("set", {}).get("name") != name]
    assert nftsg.parse(listing)[0] == nftsg.BROKEN_ZONE
