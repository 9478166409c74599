"""Hybrid gateway "replicas" for tests against an IDC site router: a namespace with a
routed link into a core (like a lab host) and its end of the site's line, as a host's
agent builds a replica (VXLAN, nolearning, one FDB entry to the site router's VTEP), with
one FRR instance holding its BGP session. Used by test_frr_linux.py and test_lab_idc.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from yunhan.lab import cleanup, idc
from yunhan.lab.cleanup import run
from yunhan.net import frr
from yunhan.net.desired import HYBRID_LINE_IFNAME, HYBRID_LINE_PORT
from yunhan.nsexec import NETNS_DIR

CLOUD_ASN = 64512
ZONE_GW = "198.18.1.1"  # the core's address on zone 1's links


@dataclass(frozen=True)
class Replica:
    netns: str
    core_port: str  # its link's end in the core
    underlay_ip: str
    session: frr.Session


def replica(
    site: idc.SiteSpec,
    netns: str,
    n: int,
    underlay_ip: str,
    secret: str | None,
    announce: tuple[str, ...],
) -> Replica:
    """The plan of replica `n` of a gateway on `site`'s line: line address .(10+n)."""
    line_ip = f"198.19.{32 + site.index}.{10 + n}"
    return Replica(
        netns=netns,
        core_port=f"r{n}",
        underlay_ip=underlay_ip,
        session=frr.Session(
            router_id=line_ip,
            asn=CLOUD_ASN,
            peer_ip=site.router_ip,
            peer_asn=site.asn,
            md5_secret=secret,
            bfd=True,
            announce=announce,
        ),
    )


def build(site: idc.SiteSpec, r: Replica) -> None:
    """Create the replica's namespace, its links and its FRR instance."""
    mtu, core = site.mtu, site.core_netns
    run(["ip", "netns", "add", r.netns])
    run(["ip", "-n", core, "link", "add", r.core_port, "type", "veth",
         "peer", "name", "eth0", "netns", r.netns])  # fmt: skip
    run(["ip", "-n", core, "-batch", "-"], input=(
        f"link set {r.core_port} mtu {mtu} up\n"
        f"addr replace {ZONE_GW}/32 dev {r.core_port}\n"
        f"route replace {r.underlay_ip}/32 dev {r.core_port}\n"
    ))  # fmt: skip
    line_ip = f"{r.session.router_id}/{site.line_cidr.split('/')[1]}"
    run(["ip", "-n", r.netns, "link", "add", HYBRID_LINE_IFNAME, "mtu", str(site.line_mtu),
         "type", "vxlan", "id", str(site.line_vni), "local", r.underlay_ip,
         "dstport", str(HYBRID_LINE_PORT), "nolearning"])  # fmt: skip
    run(["ip", "-n", r.netns, "-batch", "-"], input=(
        "link set lo up\n"
        f"link set eth0 mtu {mtu} up\n"
        f"addr replace {r.underlay_ip}/32 dev eth0\n"
        f"route replace default via {ZONE_GW} dev eth0 onlink\n"
        f"addr replace {line_ip} dev {HYBRID_LINE_IFNAME}\n"
        f"link set {HYBRID_LINE_IFNAME} up\n"
    ))  # fmt: skip
    run(["bridge", "-n", r.netns, "fdb", "append", "00:00:00:00:00:00",
         "dev", HYBRID_LINE_IFNAME, "dst", site.wan_ip])  # fmt: skip
    frr.start(r.netns, frr.render_session(r.session))


def remove(site: idc.SiteSpec, r: Replica) -> None:
    """Remove the replica (its FRR, its namespace, its link in the core); idempotent."""
    frr.stop(r.netns)
    if (NETNS_DIR / r.netns).exists():
        cleanup.kill(cleanup.pids_in_netns([r.netns]))
        cleanup.delete_netns([r.netns])
    if (NETNS_DIR / site.core_netns).exists():
        run(["ip", "-n", site.core_netns, "link", "del", r.core_port], check=False)


def nexthops(ns: str, prefix: str) -> list[str]:
    """The gateways of `prefix` in the kernel's main table of `ns` (ECMP: several)."""
    out = json.loads(run(["ip", "-n", ns, "-j", "route", "show", "exact", prefix]) or "[]")
    hops: list[str] = []
    for route in out:
        if "gateway" in route:
            hops.append(route["gateway"])
        hops += [h["gateway"] for h in route.get("nexthops", []) if "gateway" in h]
    if not hops and out and "nhid" in out[0]:
        # zebra installs nexthop objects: read the group behind the route's id.
        hops = _group(ns, int(out[0]["nhid"]))
    return sorted(hops)


def routes_to(ns: str, prefix: str, hops: list[str]) -> bool:
    return nexthops(ns, prefix) == hops


def _group(ns: str, nhid: int) -> list[str]:
    nh = json.loads(run(["ip", "-n", ns, "-j", "nexthop", "show", "id", str(nhid)]))[0]
    if "gateway" in nh:
        return [nh["gateway"]]
    return [g for member in nh.get("group", []) for g in _group(ns, int(member["id"]))]


def fetch(ns: str, ip: str, port: int) -> str:
    """An HTTP GET from namespace `ns` (the lab echo server's answer), "" on failure."""
    return run(["ip", "netns", "exec", ns, "curl", "-s", "--max-time", "5",
                f"http://{ip}:{port}/"], check=False)  # fmt: skip
