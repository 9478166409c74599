"""NAT gateways in the host data plane: what is compiled, the NAT table's rendering and
reading back, and the fake driver carrying a gateway, moving it and removing it."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from tests.worlds import WGateway, WHost, WInstance, WVpc, documents
from yunhan.agent.dataplane import DataPlane
from yunhan.net.desired import NATGW_INNER_IP, NATGW_LINK_IP, HostDesired
from yunhan.net.fake import FakeFabric
from yunhan.net.linux import _pairs
from yunhan.net.naming import Naming
from yunhan.net.natgw import (
    BROKEN,
    HOST_NETNS,
    Announce,
    NatTable,
    Uplink,
    VethPair,
    gw_mac,
    nat_batch,
    parse_nat,
)
from yunhan.net.state import (
    Address,
    KRoute,
    Neigh,
    Netns,
    Op,
    Sysctl,
    after,
    compile_state,
    plan,
)

HOSTS = [WHost("h1", "198.18.1.11", 1), WHost("h2", "198.18.2.11", 2)]
VPC = WVpc("vpc-a", 100, ("10.1.0.0/16",), ("10.1.1.0/24", "10.1.2.0/24"))
INSTS = [
    WInstance("inst-0000a001", "h1", "vpc-a", "10.1.1.10"),
    WInstance("inst-0000a002", "h2", "vpc-a", "10.1.2.10"),
]
GW = "ngw-0000c001"
PUBLIC = "198.19.128.1"
EIP = "198.19.128.9"


def gateway(host: str | None = "h1", **kw: Any) -> WGateway:
    return WGateway(
        GW,
        "vpc-a",
        host,
        PUBLIC,
        ("10.1.1.0/24", "10.1.2.0/24"),
        forwards=kw.get("forwards", (("tcp", 8080, "inst-0000a002", 80),)),
        eips=kw.get("eips", (("inst-0000a001", EIP),)),
    )


def docs(gw: WGateway | None) -> dict[str, HostDesired]:
    return documents(HOSTS, [VPC], INSTS, [] if gw is None else [gw])


def naming(host: str) -> Naming:
    return Naming(f"u-{host}-")


def fake_dp(fabric: FakeFabric, host: str, uplink: bool = True) -> DataPlane:
    return DataPlane(
        naming=naming(host),
        host_netns=f"lab-{host}",
        driver="fake",
        state_dir=pathlib.Path("/nonexistent"),
        fabric=fabric,
        uplink=Uplink("lab-core", "198.18.1.11") if uplink else None,
    )


def test_a_local_gateway_compiles_to_its_namespace_links_routes_and_nat() -> None:
    n = naming("h1")
    want = compile_state(docs(gateway())["h1"], n, uplink=True)
    gw_ns, vpc_ns = n.natgw_netns(GW), n.vpc_netns(100)
    assert gw_ns == "u-h1-g-0000c001"
    assert want[("netns", gw_ns)] == Netns(gw_ns, "natgw")
    vpc_link = want[("link", gw_ns, "vpc0")]
    pub_link = want[("link", gw_ns, "pub0")]
    assert isinstance(vpc_link, VethPair) and isinstance(pub_link, VethPair)
    assert (vpc_link.peer_netns, vpc_link.peer_ifname) == (vpc_ns, "g-0000c001")
    assert (pub_link.peer_netns, pub_link.peer_ifname) == (HOST_NETNS, "n-0000c001")
    assert len({vpc_link.mac, vpc_link.peer_mac, pub_link.mac, pub_link.peer_mac}) == 4
    # Both sides of each link hold the other's MAC: no ARP across them.
    assert want[("neigh", gw_ns, "vpc0", NATGW_LINK_IP)] == Neigh(
        gw_ns, "vpc0", NATGW_LINK_IP, vpc_link.peer_mac
    )
    assert want[("neigh", vpc_ns, "g-0000c001", NATGW_INNER_IP)] == Neigh(
        vpc_ns, "g-0000c001", NATGW_INNER_IP, vpc_link.mac
    )
    assert want[("neigh", gw_ns, "pub0", NATGW_LINK_IP)].mac == pub_link.peer_mac  # type: ignore[union-attr]
    assert want[("neigh", HOST_NETNS, "n-0000c001", PUBLIC)].mac == pub_link.mac  # type: ignore[union-attr]
    assert ("addr", gw_ns, "vpc0", f"{NATGW_INNER_IP}/32") in want
    assert ("addr", gw_ns, "pub0", f"{PUBLIC}/32") in want
    routes = {(r.netns, r.dst): r for r in want.values() if isinstance(r, KRoute)}
    assert routes[(gw_ns, "10.1.0.0/16")] == KRoute(
        gw_ns, "10.1.0.0/16", "gateway", "vpc0", NATGW_LINK_IP, onlink=True
    )
    assert routes[(gw_ns, "0.0.0.0/0")] == KRoute(
        gw_ns, "0.0.0.0/0", "gateway", "pub0", NATGW_LINK_IP, onlink=True
    )
    assert routes[(HOST_NETNS, f"{PUBLIC}/32")] == KRoute(
        HOST_NETNS, f"{PUBLIC}/32", "local", "n-0000c001"
    )
    assert routes[(HOST_NETNS, f"{EIP}/32")] == KRoute(
        HOST_NETNS, f"{EIP}/32", "gateway", "n-0000c001", PUBLIC, onlink=True
    )
    assert want[("nat", gw_ns)] == NatTable(
        gw_ns,
        PUBLIC,
        ("10.1.1.0/24", "10.1.2.0/24"),
        (("10.1.1.10", EIP),),
        (("tcp", 8080, "10.1.2.10", 80),),
    )
    assert want[("sysctl", gw_ns, "net/ipv4/ip_forward")] == Sysctl(
        gw_ns, "net/ipv4/ip_forward", "1"
    )
    assert ("sysctl", HOST_NETNS, "net/ipv4/ip_forward") in want
    assert {o for o in want.values() if isinstance(o, Announce)} == {
        Announce(PUBLIC),
        Announce(EIP),
    }


def test_only_the_host_running_the_gateway_builds_it_and_only_an_uplink_announces() -> None:
    d = docs(gateway())
    other = compile_state(d["h2"], naming("h2"), uplink=True)
    assert not [o for o in other.values() if isinstance(o, VethPair | NatTable | Announce)]
    assert not [k for k in other if HOST_NETNS in k]
    quiet = compile_state(d["h1"], naming("h1"), uplink=False)
    assert not [o for o in quiet.values() if isinstance(o, Announce)]
    assert ("nat", naming("h1").natgw_netns(GW)) in quiet


def _listing(batch: dict[str, Any]) -> dict[str, Any]:
    """What `nft -j list table` answers after `batch` (handles added, as nft does)."""
    out: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}}]
    for i, cmd in enumerate(batch["nftables"]):
        add = cmd.get("add", {})
        if "chain" in add:
            out.append({"chain": {**add["chain"], "handle": i}})
        elif "rule" in add:
            out.append({"rule": {**add["rule"], "handle": i}})
    return {"nftables": out}


def test_the_nat_table_renders_eips_before_snat_and_reads_back() -> None:
    t = NatTable(
        "g",
        PUBLIC,
        ("10.1.1.0/24", "10.1.9.9/32"),
        (("10.1.1.10", EIP),),
        (("tcp", 8080, "10.1.2.10", 80), ("udp", 53, "10.1.2.10", 5353)),
    )
    batch = nat_batch(t)
    # One transaction: the table made, emptied by deletion and made again with its rules.
    assert [next(iter(c)) for c in batch["nftables"][:3]] == ["add", "delete", "add"]
    rules = [c["add"]["rule"] for c in batch["nftables"] if "rule" in c.get("add", {})]
    post = [r["comment"].split()[0] for r in rules if r["chain"] == "post"]
    assert post == ["eip-out", "snat", "snat"]  # an EIP's own address wins over the SNAT
    snat_32 = next(r for r in rules if r["comment"].startswith("snat 10.1.9.9/32"))
    assert snat_32["expr"][1]["match"]["right"] == "10.1.9.9"  # nft lists a /32 as an address
    assert parse_nat("g", _listing(batch)) == t
    assert parse_nat("g", _listing(nat_batch(NatTable("g", "")))) == NatTable("g", "")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: r["expr"].__setitem__(-1, {"accept": None}),  # verdict changed by hand
        lambda r: r.__setitem__("comment", "snat 10.9.0.0/16 198.19.128.1"),  # comment lies
        lambda r: r.__setitem__("comment", "something else"),
    ],
)
def test_a_nat_table_changed_by_hand_reads_as_broken(tamper: Any) -> None:
    t = NatTable("g", PUBLIC, ("10.1.1.0/24",), (("10.1.1.10", EIP),))
    listing = _listing(nat_batch(t))
    rule = next(
        i["rule"] for i in listing["nftables"] if "rule" in i and i["rule"]["chain"] == "post"
    )
    tamper(rule)
    assert parse_nat("g", listing).public_ip == BROKEN


def test_a_missing_rule_or_chain_reads_as_broken() -> None:
    t = NatTable("g", PUBLIC, ("10.1.1.0/24",), (("10.1.1.10", EIP),))
    listing = _listing(nat_batch(t))
    items = listing["nftables"]
    without_chain = {"nftables": [i for i in items if i.get("chain", {}).get("name") != "pre"]}
    assert parse_nat("g", without_chain).public_ip == BROKEN
    eip_in = [i for i in items if i.get("rule", {}).get("comment", "").startswith("eip-in")]
    without_rule = {"nftables": [i for i in items if i not in eip_in]}
    assert parse_nat("g", without_rule) != t


def test_the_fake_carries_moves_and_removes_a_gateway() -> None:
    fabric = FakeFabric()
    dps = {h.name: fake_dp(fabric, h.name) for h in HOSTS}
    for h, d in docs(gateway("h1")).items():
        assert dps[h].apply(d).errors == []
        assert dps[h].plan(d) == []  # round trip: nothing left to do
    h1 = dps["h1"].observe()
    gw_ns = naming("h1").natgw_netns(GW)
    assert ("nat", gw_ns) in h1 and ("announce", PUBLIC) in h1
    assert not [k for k in dps["h2"].observe() if k[0] in ("nat", "announce")]

    # The gateway moves to h2: h1 removes all of it (the host side included), h2 builds it.
    for h, d in docs(gateway("h2")).items():
        assert dps[h].apply(d).errors == []
        assert dps[h].plan(d) == []
    h1 = dps["h1"].observe()
    assert not [k for k in h1 if k[0] in ("nat", "announce") or k[:2] == ("route", HOST_NETNS)]
    assert not [k for k in h1 if k[0] in ("link", "neigh", "up") and HOST_NETNS in k]
    assert ("netns", gw_ns) not in h1
    h2 = dps["h2"].observe()
    assert ("nat", naming("h2").natgw_netns(GW)) in h2
    assert ("route", HOST_NETNS, "254", f"{EIP}/32", "0") in h2

    # Deleted: nothing of it is left anywhere (the host's ip_forward stays, an attribute).
    for h, d in docs(None).items():
        assert dps[h].apply(d).errors == []
    for dp in dps.values():
        left = [k for k in dp.observe() if k[0] != "sysctl" and (HOST_NETNS in k or "g-" in k[1])]
        assert left == []


def test_announcements_come_last_and_go_first() -> None:
    n = naming("h1")
    want = compile_state(docs(gateway())["h1"], n, uplink=True)
    ops = plan(want, {})
    assert all(isinstance(op.obj, Announce) for op in ops[-2:])
    gone = plan({}, want)
    assert all(isinstance(op.obj, Announce) for op in gone[:2])
    # The rest of it goes with the gateway namespace (the host end of its link included).
    gw_ns = n.natgw_netns(GW)
    rest = [
        op.obj
        for op in gone[2:]
        if getattr(op.obj, "netns", None) in (gw_ns, HOST_NETNS) or op.obj == Netns(gw_ns, "natgw")
    ]
    assert rest == [Netns(gw_ns, "natgw")]


def test_incremental_equals_full_for_gateway_changes() -> None:
    """after() predicts what the fake holds after each change (no re-observation needed)."""
    fabric = FakeFabric()
    dp = fake_dp(fabric, "h1")
    n = naming("h1")
    steps = [
        gateway(),
        gateway(eips=()),
        gateway(forwards=(), eips=(("inst-0000a001", EIP), ("inst-0000a002", "198.19.128.10"))),
        None,
        gateway(),
    ]
    for g in steps:
        d = docs(g)["h1"]
        have = dp.driver.observe()
        ops = plan(compile_state(d, n, uplink=True), have)
        for op in ops:
            dp.driver.apply(op)
        predicted = after(have, ops)
        assert predicted == dp.driver.observe()
        assert plan(compile_state(d, n, uplink=True), dp.driver.observe()) == []


def test_the_fake_refuses_a_gateway_link_without_its_namespaces() -> None:
    fabric = FakeFabric()
    drv = fake_dp(fabric, "h1").driver
    pair = VethPair("nope", "vpc0", gw_mac(GW, "vpc0"), "nope-v", "g-x", gw_mac(GW, "port"), 1450)
    with pytest.raises(Exception) as exc:
        drv.apply(Op("create", new=pair))
    assert getattr(exc.value, "errno", None) == 2
    assert Address("x", "pub0", "1.2.3.4/32") not in drv.observe().values()


def test_gateway_links_are_paired_by_name_and_indices() -> None:
    gw = "u-h1-g-0000c001"
    near = [
        (gw, "vpc0", 2, 7, "02:00:00:00:00:01", 1450),
        (gw, "pub0", 3, 9, "02:00:00:00:00:02", 1450),
    ]
    far = [
        # Same indices in another VPC namespace, under another name: not ours.
        ("u-h1-v200", "g-0000c002", 7, 2, "02:00:00:00:00:09", 1450),
        ("u-h1-v100", "g-0000c001", 7, 2, "02:00:00:00:00:03", 1450),
        (HOST_NETNS, "n-0000c001", 9, 3, "02:00:00:00:00:04", 1400),
    ]
    assert _pairs(near, far) == [
        VethPair(
            gw, "vpc0", "02:00:00:00:00:01", "u-h1-v100", "g-0000c001", "02:00:00:00:00:03", 1450
        ),
        # MTUs that differ read as -1: never wanted, so the pair is made again.
        VethPair(
            gw, "pub0", "02:00:00:00:00:02", HOST_NETNS, "n-0000c001", "02:00:00:00:00:04", -1
        ),
    ]
    # The other end gone (its namespace removed by hand): peer None, never wanted either.
    assert _pairs(near[:1], far[2:]) == [
        VethPair(gw, "vpc0", "02:00:00:00:00:01", None, "", "", 1450)
    ]


def test_a_gateway_on_a_host_without_members_of_its_vpc() -> None:
    hosts = [*HOSTS, WHost("h3", "198.18.3.11", 3)]
    fabric = FakeFabric()
    dps = {h.name: fake_dp(fabric, h.name) for h in hosts}
    docs3 = documents(hosts, [VPC], INSTS, [gateway("h3")])
    assert not docs3["h3"].vpcs[0].ports  # it carries the VPC for the gateway alone
    for h, d in docs3.items():
        assert dps[h].apply(d).errors == []
        assert dps[h].plan(d) == []
    h3 = dps["h3"].observe()
    assert ("nat", naming("h3").natgw_netns(GW)) in h3
    assert ("link", naming("h3").vpc_netns(100), "vxlan0") in h3
