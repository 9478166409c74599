"""What the fast path takes and what it hands to the kernel path, from the host document
alone (yunhan.net.fastpath.plan_vpc): every reason a packet must meet the kernel path
keeps it off the maps, so the kernel path decides it as before."""

from __future__ import annotations

import socket
import struct

from yunhan.net import nftsg
from yunhan.net.desired import (
    AclDesired,
    FlowLogDesired,
    HostDesired,
    HybridGwDesired,
    NextHop,
    Peer,
    PolicyDesired,
    Port,
    Route,
    RouteTableDesired,
    SecurityGroupDesired,
    SgRuleDesired,
    SubnetDesired,
    TableRoute,
    VipDesired,
    VpcDesired,
    vtep_mac,
)
from yunhan.net.fastpath import FROM_TUNNEL, Hop, cfg_value, counted_keys, encode, plan_vpc
from yunhan.net.state import compile_firewall


def _port(n: int, ip: str, **kw: object) -> Port:
    return Port(
        instance_id=f"inst-{n:08x}", ifname=f"p-{n:08x}", ip=ip, prefixlen=24,
        gateway=ip.rsplit(".", 1)[0] + ".1", mac=f"02:00:00:00:00:{n:02x}", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


PEER = Peer(host="h2", vtep_index=2, underlay_ip="198.18.1.12", mac=vtep_mac(2), nexthop="x")
A = _port(1, "10.1.1.10")
B = _port(2, "10.1.2.10")
REMOTE = "10.1.1.20"  # an instance on h2


def _vpc(ports: tuple[Port, ...] = (A, B), **kw: object) -> VpcDesired:
    routes = tuple(Route(dst=f"{p.ip}/32", kind="local", port=p.ifname) for p in ports)
    routes += (Route(dst=f"{REMOTE}/32", kind="remote", peer="h2"),)
    base: dict[str, object] = {
        "id": "vpc-1", "vni": 1, "cidrs": ("10.1.0.0/16",),
        "gateways": ("10.1.1.1/24", "10.1.2.1/24"), "ports": ports, "peers": (PEER,),
        "routes": routes,
        "subnets": (SubnetDesired(id="s1", cidr="10.1.1.0/24", index=1, table=1),
                    SubnetDesired(id="s2", cidr="10.1.2.0/24", index=2, table=2)),
        "tables": (RouteTableDesired(id="rt1", index=1), RouteTableDesired(id="rt2", index=2)),
    }  # fmt: skip
    base.update(kw)
    return VpcDesired(**base)  # type: ignore[arg-type]


def _doc(vpc: VpcDesired) -> HostDesired:
    return HostDesired(host="h1", underlay_ip="198.18.1.11", vtep_index=1, vpcs=(vpc,))


def test_instances_without_filters_are_taken_both_ways() -> None:
    vpc = _vpc()
    p = plan_vpc(_doc(vpc), vpc)
    assert p.slow == {}
    assert p.sources == {(A.ifname, A.ip): (A.mac, 1, False), (B.ifname, B.ip): (B.mac, 2, False)}
    assert p.firewall is None
    for t in (1, 2):
        assert p.dests[(t, A.ip)] == Hop(port=A.ifname, mac=A.mac)
        assert p.dests[(t, REMOTE)] == Hop(mac=PEER.mac)
    assert p.dests[(FROM_TUNNEL, B.ip)] == Hop(port=B.ifname, mac=B.mac)
    assert (FROM_TUNNEL, REMOTE) not in p.dests  # the tunnel delivers only to ports here


def test_a_port_with_security_groups_is_taken_for_the_flows_conntrack_let_through() -> None:
    sg = SecurityGroupDesired(id="sg-1", rules=(SgRuleDesired(id="r1", direction="egress"),))
    a = A.model_copy(update={"sgs": ("sg-1",)})
    vpc = _vpc((a, B), groups=(sg,))
    p = plan_vpc(_doc(vpc), vpc)
    assert p.slow == {}
    assert p.sources[(a.ifname, a.ip)] == (a.mac, 1, True)
    assert p.sources[(B.ifname, B.ip)] == (B.mac, 2, False)
    assert p.dests[(2, a.ip)] == Hop(port=a.ifname, mac=a.mac, ct=True)
    assert p.dests[(FROM_TUNNEL, a.ip)] == Hop(port=a.ifname, mac=a.mac, ct=True)
    # The zone and generation the `fwd` chain stamps flows with (yunhan.net.nftsg).
    fw = compile_firewall("", vpc)
    assert p.firewall == (fw.zone, nftsg.generation(fw.zone, fw.ports, fw.acls))
    assert p.path_of(a.instance_id, True).startswith("fast: flows its security groups")
    # A new rule: a new generation, so every flow is checked again by the kernel path.
    sg2 = sg.model_copy(update={"rules": (*sg.rules, SgRuleDesired(id="r2", direction="ingress"))})
    vpc2 = _vpc((a, B), groups=(sg2,))
    assert plan_vpc(_doc(vpc2), vpc2).firewall != p.firewall


def test_acls_flow_logs_and_appliances_send_a_port_to_the_kernel() -> None:
    cases = {
        "next hop": _vpc((A.model_copy(update={"forwarder": True}), B)),
        "network ACL": _vpc(acls=(AclDesired(id="acl-1", subnets=("10.1.1.0/24",)),)),
        "flow logs": _vpc(
            flowlogs=(FlowLogDesired(id="fl-1", scope="instance", target=A.instance_id),)
        ),
    }
    for why, vpc in cases.items():
        p = plan_vpc(_doc(vpc), vpc)
        assert why in p.slow[A.instance_id], (why, p.slow)
        assert B.instance_id not in p.slow
        assert (A.ifname, A.ip) not in p.sources
        # Nobody reaches it by the fast path either: its ingress checks are the kernel's.
        assert not [k for k, h in p.dests.items() if h.port == A.ifname], why
        assert p.dests[(2, REMOTE)] == Hop(mac=PEER.mac)  # the others keep theirs


def test_a_vpc_wide_flow_log_sends_every_port_to_the_kernel() -> None:
    vpc = _vpc(flowlogs=(FlowLogDesired(id="fl-1", scope="vpc", target="vpc-1"),))
    p = plan_vpc(_doc(vpc), vpc)
    assert set(p.slow) == {A.instance_id, B.instance_id} and p.sources == {}
    assert [k for k in p.dests if k[0] == FROM_TUNNEL] == []


def test_policy_routes_keep_their_subnet_s_senders_on_the_kernel_path() -> None:
    pol = PolicyDesired(id="pr-1", table=1, index=1, priority=10, proto="tcp", action="drop")
    vpc = _vpc(policies=(pol,))
    p = plan_vpc(_doc(vpc), vpc)
    assert "policy routes" in p.slow[A.instance_id]
    assert (A.ifname, A.ip) not in p.sources and (B.ifname, B.ip) in p.sources
    assert [k for k in p.dests if k[0] == 1] == []  # no sender of table 1 is taken
    # A is still a destination: its own port has nothing the kernel must see.
    assert p.dests[(2, A.ip)] == Hop(port=A.ifname, mac=A.mac)
    assert p.dests[(FROM_TUNNEL, A.ip)] == Hop(port=A.ifname, mac=A.mac)


def test_a_custom_route_as_long_as_the_block_or_longer_takes_its_destinations() -> None:
    fw = NextHop(kind="remote", ip="10.1.1.20", peer="h2", target="instance:fw")
    rt1 = RouteTableDesired(
        id="rt1", index=1,
        routes=(TableRoute(dst="10.1.2.0/24", nexthop=fw, route_id="r1", priority=10),
                TableRoute(dst="0.0.0.0/0", nexthop=fw, route_id="r2", priority=10)),
    )  # fmt: skip
    vpc = _vpc(tables=(rt1, RouteTableDesired(id="rt2", index=2)))
    p = plan_vpc(_doc(vpc), vpc)
    assert (1, B.ip) not in p.dests  # 10.1.2.0/24 goes to the appliance: the kernel's
    assert p.dests[(1, REMOTE)] == Hop(mac=PEER.mac)  # 0.0.0.0/0 is shorter than the block
    assert p.dests[(2, B.ip)] == Hop(port=B.ifname, mac=B.mac)  # other tables: direct
    same_as_block = rt1.model_copy(
        update={"routes": (TableRoute(dst="10.1.0.0/16", nexthop=fw, route_id="r3", priority=1),)}
    )
    vpc = _vpc(tables=(same_as_block, RouteTableDesired(id="rt2", index=2)))
    p = plan_vpc(_doc(vpc), vpc)
    assert [k for k in p.dests if k[0] == 1] == []


def test_vips_are_left_to_the_kernel_path_as_sources_and_destinations() -> None:
    a = A.model_copy(update={"allowed_ips": ("10.1.1.100",)})
    vpc = _vpc(
        (a, B),
        vips=(VipDesired(id="vip-1", ip="10.1.1.100", allowed=(a.instance_id,)),),
        routes=(
            Route(dst=f"{A.ip}/32", kind="local", port=A.ifname),
            Route(dst="10.1.1.100/32", kind="local", port=A.ifname),
            Route(dst=f"{B.ip}/32", kind="local", port=B.ifname),
        ),
    )
    p = plan_vpc(_doc(vpc), vpc)
    assert [k for k in p.dests if k[1] == "10.1.1.100"] == []
    assert (a.ifname, "10.1.1.100") not in p.sources and (a.ifname, a.ip) in p.sources


def test_encode_uses_the_kernel_s_ifindexes_and_skips_ports_not_there_yet() -> None:
    vpc = _vpc()
    p = plan_vpc(_doc(vpc), vpc)
    links = {A.ifname: (7, "02:aa:00:00:00:07"), "vxlan0": (3, vtep_mac(1))}
    src, dst = encode(p, links)
    ip = socket.inet_aton
    assert src == {struct.pack("<I", 7) + ip(A.ip): bytes.fromhex("020000000001")
                   + struct.pack("<HI", 0, 1)}  # fmt: skip
    local = dst[struct.pack("<I", 2) + ip(A.ip)]
    assert local[:8] == struct.pack("<II", 7, 1)  # into the peer of ifindex 7
    assert local[8:14] == bytes.fromhex("020000000001")  # to the instance's MAC
    assert local[14:] == bytes.fromhex("02aa00000007")  # from its port's own
    remote = dst[struct.pack("<I", 1) + ip(REMOTE)]
    assert remote[:8] == struct.pack("<II", 3, 0)
    assert remote[8:14] == bytes.fromhex(PEER.mac.replace(":", ""))
    assert remote[14:] == bytes.fromhex(vtep_mac(1).replace(":", ""))
    assert not [k for k in dst if k.endswith(ip(B.ip))]  # B's port is not in the kernel yet


def test_addresses_of_a_counted_idc_prefix_are_left_to_the_kernel_path() -> None:
    # Instances that took over an IDC subnet's addresses: hosts count that traffic in nft.
    gw = HybridGwDesired(id="hgw-1", index=1, ifname="h-1", prefixes=("10.1.2.0/24",))
    vpc = _vpc(hybrids=(gw,))
    p = plan_vpc(_doc(vpc), vpc)
    assert "traffic statistics" in p.slow[B.instance_id] and A.instance_id not in p.slow
    assert [k for k in p.dests if k[1] == B.ip] == []
    assert p.dests[(1, A.ip)] == Hop(port=A.ifname, mac=A.mac)
    # ... and a packet from the prefix (an IDC server, through the tunnel) too: yh_counted.
    assert counted_keys(p) == {struct.pack("<I", 24) + socket.inet_aton("10.1.2.0"): b"\1\0\0\0"}


def test_encode_flags_ports_with_security_groups_and_cfg_carries_the_firewall() -> None:
    sg = SecurityGroupDesired(id="sg-1")
    a = A.model_copy(update={"sgs": ("sg-1",)})
    vpc = _vpc((a, B), groups=(sg,))
    p = plan_vpc(_doc(vpc), vpc)
    links = {a.ifname: (7, "02:aa:00:00:00:07"), B.ifname: (8, "02:aa:00:00:00:08")}
    src, dst = encode(p, links)
    ip = socket.inet_aton
    assert src[struct.pack("<I", 7) + ip(a.ip)][6:8] == struct.pack("<H", 1)  # NEEDS_CT
    assert src[struct.pack("<I", 8) + ip(B.ip)][6:8] == struct.pack("<H", 0)
    assert dst[struct.pack("<I", 2) + ip(a.ip)][4:8] == struct.pack("<I", 1 | 2)
    assert dst[struct.pack("<I", 1) + ip(B.ip)][4:8] == struct.pack("<I", 1)
    assert p.firewall is not None
    zone, gen, tcp_ms, udp_ms = struct.unpack("<IIII", cfg_value(p.firewall))
    assert (zone, gen) == p.firewall and tcp_ms == 3_600_000 and udp_ms == 120_000
    assert struct.unpack("<IIII", cfg_value(None))[:2] == (0, 0)
