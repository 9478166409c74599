"""netcompile: 2 zones, 3 hosts, 2 VPCs with identical CIDRs; determinism; publishing."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from yunhan.controller.netcompile import HostIn, InstanceIn, SubnetIn, VpcIn, compile_hosts
from yunhan.net.desired import (
    HostDesired,
    InstanceDesired,
    Peer,
    Port,
    Route,
    VpcDesired,
    vtep_mac,
    vtep_nexthop,
)
from yunhan.net.docentries import Delta, assemble

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]

# h1, h2 in az1 and h3 in az2 (zones matter to the scheduler, not to the compiler).
HOSTS = [
    HostIn("h1", 1, "198.18.1.11"),
    HostIn("h2", 2, "198.18.1.12"),
    HostIn("h3", 3, "198.18.2.13", mtu=9000),
]
VPCS = [
    VpcIn("vpc-aaaaaaaa", 1, ("10.0.0.0/16",)),
    VpcIn("vpc-bbbbbbbb", 2, ("10.0.0.0/16",)),
]
SUBNETS = [
    SubnetIn("subnet-a2000000", "vpc-aaaaaaaa", "10.0.2.0/24"),
    SubnetIn("subnet-a1000000", "vpc-aaaaaaaa", "10.0.1.0/24"),
    SubnetIn("subnet-b1000000", "vpc-bbbbbbbb", "10.0.1.0/24"),
]
MAC = "fa:16:3e:00:00:0"
INSTANCES = [
    InstanceIn("inst-a1000000", "a1", "subnet-a1000000", "10.0.1.2", MAC + "1", "h1"),
    InstanceIn(
        "inst-a2000000", "a2", "subnet-a2000000", "10.0.2.2", MAC + "2", "h3", ("sleep", "1d")
    ),
    # Same address as a1, other VPC: the VPCs never see each other.
    InstanceIn("inst-b1000000", "b1", "subnet-b1000000", "10.0.1.2", MAC + "3", "h1"),
    InstanceIn("inst-b2000000", "b2", "subnet-b1000000", "10.0.1.3", MAC + "4", "h2"),
    # Not placed yet: left out everywhere.
    InstanceIn("inst-c0000000", "c", "subnet-b1000000", "10.0.1.4", MAC + "5", None),
]


def peer(name: str, idx: int, ip: str) -> Peer:
    return Peer(
        host=name, vtep_index=idx, underlay_ip=ip, mac=vtep_mac(idx), nexthop=vtep_nexthop(idx)
    )


def port(iid: str, ip: str, prefixlen: int, gw: str, mac: str) -> Port:
    return Port(
        instance_id=iid, ifname="p-" + iid[5:], ip=ip, prefixlen=prefixlen, gateway=gw, mac=mac
    )


def test_three_hosts_two_vpcs_same_cidrs() -> None:
    docs = compile_hosts(HOSTS, VPCS, SUBNETS, INSTANCES)
    assert sorted(docs) == ["h1", "h2", "h3"]

    h1 = docs["h1"]
    assert [v.id for v in h1.vpcs] == ["vpc-aaaaaaaa", "vpc-bbbbbbbb"]
    a, b = h1.vpcs
    assert a.vni == 1 and a.cidrs == ("10.0.0.0/16",)
    assert a.gateways == ("10.0.1.1/24", "10.0.2.1/24")
    assert a.ports == (port("inst-a1000000", "10.0.1.2", 24, "10.0.1.1", MAC + "1"),)
    assert a.peers == (peer("h3", 3, "198.18.2.13"),)
    assert a.routes == (
        Route(dst="10.0.0.0/16", kind="unreachable"),
        Route(dst="10.0.1.2/32", kind="local", port="p-a1000000"),
        Route(dst="10.0.2.2/32", kind="remote", peer="h3"),
    )
    assert b.vni == 2 and b.gateways == ("10.0.1.1/24",)
    assert b.ports == (port("inst-b1000000", "10.0.1.2", 24, "10.0.1.1", MAC + "3"),)
    assert b.peers == (peer("h2", 2, "198.18.1.12"),)
    assert b.routes == (
        Route(dst="10.0.0.0/16", kind="unreachable"),
        Route(dst="10.0.1.2/32", kind="local", port="p-b1000000"),
        Route(dst="10.0.1.3/32", kind="remote", peer="h2"),
    )
    assert [(i.id, i.vpc_id, i.vni, i.port) for i in h1.instances] == [
        ("inst-a1000000", "vpc-aaaaaaaa", 1, "p-a1000000"),
        ("inst-b1000000", "vpc-bbbbbbbb", 2, "p-b1000000"),
    ]

    h2 = docs["h2"]
    assert [v.id for v in h2.vpcs] == ["vpc-bbbbbbbb"]  # carries only what its instances need
    assert h2.vpcs[0].peers == (peer("h1", 1, "198.18.1.11"),)
    assert h2.vpcs[0].routes == (
        Route(dst="10.0.0.0/16", kind="unreachable"),
        Route(dst="10.0.1.2/32", kind="remote", peer="h1"),
        Route(dst="10.0.1.3/32", kind="local", port="p-b2000000"),
    )

    h3 = docs["h3"]
    assert h3.underlay_mtu == 9000 and h3.instance_mtu == 8950 and h3.vtep_index == 3
    assert [v.id for v in h3.vpcs] == ["vpc-aaaaaaaa"]
    assert h3.vpcs[0].peers == (peer("h1", 1, "198.18.1.11"),)
    assert h3.instances[0].command == ("sleep", "1d") and h3.instances[0].name == "a2"
    assert all("inst-c0000000" not in d.model_dump_json() for d in docs.values())


def test_host_without_instances_gets_an_empty_document() -> None:
    docs = compile_hosts([*HOSTS, HostIn("h4", 4, "198.18.2.14")], VPCS, SUBNETS, INSTANCES)
    assert docs["h4"] == HostDesired(host="h4", underlay_ip="198.18.2.14", vtep_index=4)


def test_deterministic_whatever_the_input_order() -> None:
    want = {
        h: d.model_dump_json() for h, d in compile_hosts(HOSTS, VPCS, SUBNETS, INSTANCES).items()
    }
    rng = random.Random(7)
    for _ in range(20):
        shuffled = [list(x) for x in (HOSTS, VPCS, SUBNETS, INSTANCES)]
        for x in shuffled:
            rng.shuffle(x)
        got = compile_hosts(*shuffled)  # type: ignore[arg-type]
        assert {h: d.model_dump_json() for h, d in got.items()} == want


def test_documents_round_trip_through_json() -> None:
    for doc in compile_hosts(HOSTS, VPCS, SUBNETS, INSTANCES).values():
        assert HostDesired.model_validate_json(doc.model_dump_json()) == doc


# -- publishing through the store ---------------------------------------------------------


def _docs(cloud: Cloud) -> dict[str, dict[str, Any]]:
    """Every host's whole document as its agent assembles it (revision included)."""
    out = {}
    for h in ("h1", "h2", "h3"):
        r = cloud.client.get(f"/v1/agent/hosts/{h}/desired", headers=cloud.admin)
        d = Delta.from_json(r.json())
        out[h] = {**assemble(d.entries, h).model_dump(mode="json"), "revision": d.revision}
    return out


def test_publishes_only_changed_documents(cloud: Cloud) -> None:
    cloud.zone("az1", "198.18.1.0/24")
    cloud.zone("az2", "198.18.2.0/24")
    cloud.host("h1", "az1", "198.18.1.11")
    cloud.host("h2", "az1", "198.18.1.12")
    cloud.host("h3", "az2", "198.18.2.13")
    t = cloud.project("tenant")
    for v in ("a", "b"):
        cloud.call("POST", "/v1/vpcs", t, json={"name": v, "cidrs": ["10.0.0.0/16"]})
        cloud.call(
            "POST", "/v1/subnets", t, json={"name": f"{v}1", "vpc": v, "cidr": "10.0.1.0/24"}
        )
    cloud.call("POST", "/v1/instances", t, json={"name": "a1", "subnet": "a1", "zone": "az2"})
    cloud.reconcile()
    before = _docs(cloud)
    assert [v["id"] for v in before["h3"]["vpcs"]] == [cloud.call("GET", "/v1/vpcs/a", t)["id"]]

    # A change in VPC b on az1 touches h1 or h2 only; h3's document keeps its revision.
    b1 = cloud.call("POST", "/v1/instances", t, json={"name": "b1", "subnet": "b1", "zone": "az1"})
    cloud.reconcile()
    after = _docs(cloud)
    assert after["h3"] == before["h3"]
    changed = b1["status"]["host"]
    assert after[changed]["revision"] == b1["revision"]  # changed by that write, at it
    other = ({"h1", "h2"} - {changed}).pop()
    assert after[other] == before[other]

    # Apply/revert: deleting b1 gives back the earlier content (at a new revision).
    gone = cloud.call("DELETE", "/v1/instances/b1", t)
    reverted = _docs(cloud)
    assert {**reverted[changed], "revision": 0} == {**before[changed], "revision": 0}
    assert reverted[changed]["revision"] == gone["revision"] > after[changed]["revision"]


def test_unplaced_instance_is_scheduled_when_a_host_appears(cloud: Cloud) -> None:
    cloud.zone("az1", "198.18.1.0/24")
    cloud.zone("az2", "198.18.2.0/24")
    cloud.host("h1", "az1", "198.18.1.11")
    t = cloud.project("tenant")
    cloud.call("POST", "/v1/vpcs", t, json={"name": "a", "cidrs": ["10.0.0.0/16"]})
    cloud.call("POST", "/v1/subnets", t, json={"name": "s", "vpc": "a", "cidr": "10.0.1.0/24"})
    inst = cloud.call("POST", "/v1/instances", t, json={"name": "i", "subnet": "s", "zone": "az1"})
    # Simulate an instance that lost its host (e.g. created before hosts could vanish).
    with cloud.store.transaction() as tx:
        res = tx.get("instance", inst["id"])
        assert res is not None
        tx.update(res, status={**res.status, "host": None, "phase": "pending"})
    cloud.reconcile()
    got = cloud.call("GET", "/v1/instances/i", t)["status"]
    assert (got["host"], got["phase"]) == ("h1", "scheduled")


# -- differential oracle: the compiler against a literal reading of the rules -----------------


def _reference(
    hosts: list[HostIn], vpcs: list[VpcIn], subnets: list[SubnetIn], instances: list[InstanceIn]
) -> dict[str, HostDesired]:
    """ARCHITECTURE §2 read word by word, one host at a time, no sharing, no cleverness."""
    import ipaddress

    names = {h.name for h in hosts}
    vpc_of = {s.id: s.vpc for s in subnets}
    sub_by_id = {s.id: s for s in subnets}
    vpc_ids = {v.id for v in vpcs}
    placed = [
        i
        for i in instances
        if i.ip and i.mac and i.host in names and vpc_of.get(i.subnet) in vpc_ids
    ]

    def addr(cidr: str) -> tuple[int, int]:
        n = ipaddress.IPv4Network(cidr)
        return (int(n.network_address), n.prefixlen)

    out = {}
    for h in hosts:
        vds, ids = [], []
        for v in sorted(vpcs, key=lambda v: v.id):
            members = [i for i in placed if vpc_of[i.subnet] == v.id]
            if not any(i.host == h.name for i in members):
                continue
            ports, routes = [], []
            for i in members:
                if i.host == h.name:
                    n = ipaddress.IPv4Network(sub_by_id[i.subnet].cidr)
                    ports.append(
                        Port(
                            instance_id=i.id,
                            ifname=f"p-{i.id.split('-')[1]}",
                            ip=i.ip or "",
                            prefixlen=n.prefixlen,
                            gateway=str(n.network_address + 1),
                            mac=i.mac or "",
                        )
                    )
                    routes.append(Route(dst=f"{i.ip}/32", kind="local", port=ports[-1].ifname))
                    ids.append((i, v))
                else:
                    routes.append(Route(dst=f"{i.ip}/32", kind="remote", peer=i.host))
            routes += [Route(dst=c, kind="unreachable") for c in v.cidrs]
            others = sorted({i.host for i in members if i.host != h.name} - {None})
            by_name = {x.name: x for x in hosts}
            vds.append(
                VpcDesired(
                    id=v.id,
                    vni=v.vni,
                    cidrs=tuple(sorted(v.cidrs, key=addr)),
                    gateways=tuple(
                        f"{ipaddress.IPv4Network(s.cidr).network_address + 1}/"
                        f"{ipaddress.IPv4Network(s.cidr).prefixlen}"
                        for s in sorted(subnets, key=lambda s: addr(s.cidr))
                        if s.vpc == v.id
                    ),
                    ports=tuple(sorted(ports, key=lambda p: p.ifname)),
                    peers=tuple(
                        peer(o, by_name[o].vtep_index, by_name[o].underlay_ip)
                        for o in others
                        if o is not None
                    ),
                    routes=tuple(sorted(routes, key=lambda r: addr(r.dst))),
                )
            )
        out[h.name] = HostDesired(
            host=h.name,
            underlay_ip=h.underlay_ip,
            vtep_index=h.vtep_index,
            underlay_mtu=h.mtu,
            vpcs=tuple(vds),
            instances=tuple(
                InstanceDesired(
                    id=i.id,
                    name=i.name,
                    vpc_id=v.id,
                    vni=v.vni,
                    port=f"p-{i.id.split('-')[1]}",
                    command=i.command,
                )
                for i, v in sorted(ids, key=lambda p: p[0].id)
            ),
        )
    return out


def _random_region(rng: random.Random) -> tuple[list[Any], ...]:
    hosts = [HostIn(f"h{n}", n + 1, f"198.18.0.{n + 1}") for n in range(rng.randint(1, 6))]
    vpcs, subnets, instances = [], [], []
    for v in range(rng.randint(1, 4)):
        blocks = ("10.0.0.0/16",) if rng.random() < 0.7 else ("10.0.0.0/16", "10.1.0.0/16")
        vpc = VpcIn(f"vpc-{v:08x}", v + 1, blocks)
        vpcs.append(vpc)
        for s in range(rng.randint(1, 3)):
            sub = SubnetIn(f"subnet-{v:04x}{s:04x}", vpc.id, f"10.{s % len(blocks)}.{s}.0/24")
            subnets.append(sub)
            for n in range(rng.randint(0, 5)):
                host = rng.choice([*[h.name for h in hosts], None])
                instances.append(
                    InstanceIn(
                        f"inst-{v:02x}{s:02x}{n:04x}",
                        f"i{v}-{s}-{n}",
                        sub.id,
                        f"10.{s % len(blocks)}.{s}.{n + 2}",
                        f"fa:16:3e:{v:02x}:{s:02x}:{n:02x}",
                        host,
                    )
                )
    return hosts, vpcs, subnets, instances


def test_compiler_agrees_with_the_reference_on_random_regions() -> None:
    rng = random.Random(2026)
    for _ in range(200):
        region = _random_region(rng)
        assert compile_hosts(*region) == _reference(*region)
