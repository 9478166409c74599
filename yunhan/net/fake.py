"""The in-memory data plane: the same objects and ops as the kernel, and packets that move.

`FakeDriver` keeps one host's namespaces, links, addresses, neighbours, FDB entries,
routes and filters and applies the same `Op`s the linux driver does, with the kernel's
rules where they matter to the planner: a link lives in a namespace (ENOENT without it),
an address, route or neighbour on a device needs the device (ENODEV), a gateway route
needs its gateway on-link (ENETUNREACH), deleting a namespace or a veth takes everything
on it along (both ends for a veth), deletes of missing things are no-ops for the caller.
`refuse()` makes it fail chosen ops with an errno, to test partial failure.

`FakeFabric` joins the fake hosts of a simulation as if by an underlay and answers "where
does a packet from instance X to address Y go?" by walking those objects the way the
kernel would: instance routing and ARP (proxy ARP on ports, gateways on `lo`), the port's
anti-spoof filter, longest-prefix match in the VPC namespace, the neighbour and FDB entry
of a remote next hop, the receiving VTEP's MAC and VNI, and the delivery port. A packet
routed to a hybrid gateway's replica leaves through its line toward the IDC (the fake has
no BGP: a replica with its session object sends what it does not route into the VPC out
of the line, standing for the routes that session learns). A multipath route takes one of
its next hops by a hash of the flow, as the kernel does (not the kernel's hash).
"""

from __future__ import annotations

import errno
import ipaddress
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from yunhan.errors import DriverError
from yunhan.net import sgeval
from yunhan.net.desired import HYBRID_LINE_IFNAME, MARK_ROUTED, ROUTED_REALM
from yunhan.net.naming import INSTANCE_IFNAME, VXLAN_IFNAME, Naming
from yunhan.net.natgw import (
    GW_PUB_IFNAME,
    GW_VPC_IFNAME,
    HOST_NETNS,
    UPLINK_NETNS,
    Announce,
    NatTable,
    VethPair,
)
from yunhan.net.state import (
    ZERO_MAC,
    Address,
    Bgp,
    Fdb,
    Filter,
    Firewall,
    KRoute,
    LinkUp,
    Marks,
    Neigh,
    Netns,
    Obj,
    Op,
    Process,
    Rule,
    State,
    Sysctl,
    Uts,
    Veth,
    Vxlan,
)


def _fail(msg: str, code: int, ns: str | None = None) -> DriverError:
    return DriverError(msg, errno=code, netns=ns)


class FakeDriver:
    """One host's data plane in memory (see the module docstring)."""

    def __init__(self, *, naming: Naming, host_netns: str | None = None) -> None:
        self.naming = naming
        self.host_netns = host_netns
        self.objs: State = {}
        self._refusals: list[tuple[Callable[[Op], bool], int]] = []
        self.unobserved: dict[str, DriverError] = {}  # a memory never fails to be read

    # -- the Driver interface ---------------------------------------------------------------

    def observe(self) -> State:
        return dict(self.objs)

    def close(self) -> None:
        pass

    def refuse(self, match: Callable[[Op], bool], code: int = errno.EPERM) -> None:
        """Fail every later op for which `match(op)` is true with errno `code`."""
        self._refusals.append((match, code))

    def apply(self, op: Op) -> None:
        for match, code in self._refusals:
            if match(op):
                raise _fail(f"refused: {op}", code)
        if op.action == "delete":
            assert op.old is not None
            self._delete(op.old)
            return
        assert op.new is not None
        if op.action == "replace" and isinstance(op.new, Vxlan | Veth | VethPair):
            old = self.objs.get(op.new.key)
            if old is not None and not self._set_in_place(old, op.new):
                self._delete(old)
        self._create(op.new)

    # -- kernel rules ------------------------------------------------------------------------

    def _has_ns(self, ns: str | None) -> bool:
        # The host namespace and the uplink are there before us and outlive us.
        return ns in (HOST_NETNS, UPLINK_NETNS) or (ns is not None and ("netns", ns) in self.objs)

    def _link(self, ns: str, ifname: str) -> Vxlan | Veth | VethPair | None:
        o = self.objs.get(("link", ns, ifname))
        if isinstance(o, Vxlan | Veth | VethPair):
            return o
        for p in self.objs.values():
            if isinstance(p, VethPair) and (p.peer_netns, p.peer_ifname) == (ns, ifname):
                return p
        return self._peer_end(ns, ifname)

    def _peer_end(self, ns: str, ifname: str) -> Veth | None:
        for o in self.objs.values():
            if isinstance(o, Veth) and o.peer_netns == ns and o.peer_ifname == ifname:
                return o
        return None

    def _has_dev(self, ns: str, ifname: str) -> bool:
        return self._has_ns(ns) and (ifname == "lo" or self._link(ns, ifname) is not None)

    def _need_dev(self, ns: str, ifname: str) -> None:
        if not self._has_ns(ns):
            raise _fail(f"no namespace {ns}", errno.ENOENT, ns)
        if not self._has_dev(ns, ifname):
            raise _fail(f"no device {ifname} in {ns}", errno.ENODEV, ns)

    def _set_in_place(self, old: Obj, new: Obj) -> bool:
        if isinstance(old, Vxlan) and isinstance(new, Vxlan):
            return (old.vni, old.local, old.port, old.gbp) == (
                new.vni,
                new.local,
                new.port,
                new.gbp,
            )
        if isinstance(old, Veth) and isinstance(new, Veth):
            return old.peer_netns is not None and old.peer_netns == new.peer_netns
        return False

    def _create(self, o: Obj) -> None:
        match o:
            case Netns():
                pass
            case Uts():
                pass
            case Sysctl():
                if o.dev is not None:
                    self._need_dev(o.netns, o.dev)
                elif not self._has_ns(o.netns):
                    raise _fail(f"no namespace {o.netns}", errno.ENOENT, o.netns)
            case Vxlan():
                if not self._has_ns(o.netns):
                    raise _fail(f"no namespace {o.netns}", errno.ENOENT, o.netns)
                for other in self.objs.values():
                    if (
                        isinstance(other, Vxlan)
                        and other.key != o.key
                        and (other.vni, other.local, other.port) == (o.vni, o.local, o.port)
                    ):
                        raise _fail("a VXLAN device with this VNI exists", errno.EEXIST, o.netns)
            case Veth():
                if not self._has_ns(o.netns) or not self._has_ns(o.peer_netns):
                    raise _fail(f"port {o.ifname}: namespace missing", errno.ENOENT, o.netns)
                assert o.peer_netns is not None
                cur = self.objs.get(o.key)
                end = self._peer_end(o.peer_netns, o.peer_ifname)
                if end is not None and end.key != o.key:
                    self._delete(end)  # a stale pair holding the instance-side name
                if isinstance(cur, Veth) and cur != o and not self._set_in_place(cur, o):
                    self._delete(cur)
            case VethPair():
                if not self._has_ns(o.netns) or not self._has_ns(o.peer_netns):
                    raise _fail(f"link {o.ifname}: namespace missing", errno.ENOENT, o.netns)
                assert o.peer_netns is not None
                for stale in (
                    self._link(o.netns, o.ifname),
                    self._link(o.peer_netns, o.peer_ifname),
                ):
                    if stale is not None and stale != o:
                        self._delete(stale)  # a stale link holding one of the names
            case NatTable():
                if not self._has_ns(o.netns):
                    raise _fail(f"no namespace {o.netns}", errno.ENOENT, o.netns)
            case Announce():
                pass
            case LinkUp() | Address() | Neigh() | Fdb() | Filter():
                self._need_dev(o.netns, o.ifname)
                vx = self.objs.get(("link", o.netns, o.ifname))
                if isinstance(o, LinkUp) and isinstance(vx, Vxlan):
                    self._need_socket(vx)
            case Rule() | Marks() | Firewall() | Bgp():
                if not self._has_ns(o.netns):
                    raise _fail(f"no namespace {o.netns}", errno.ENOENT, o.netns)
            case KRoute():
                if not self._has_ns(o.netns):
                    raise _fail(f"no namespace {o.netns}", errno.ENOENT, o.netns)
                for dev in o.devs:
                    self._need_dev(o.netns, dev)
                if (
                    o.kind == "gateway"
                    and not o.onlink
                    and not self._on_link(o.netns, o.dev, o.via)
                ):
                    raise _fail(f"gateway {o.via} not on-link", errno.ENETUNREACH, o.netns)
            case Process():
                if not self._has_ns(o.netns) or ("uts", o.netns) not in self.objs:
                    raise _fail(f"no sandbox {o.netns}", errno.ENOENT, o.netns)
        self.objs[o.key] = o

    def _need_socket(self, vx: Vxlan) -> None:
        """Bringing a VXLAN device up opens (or shares) the host's UDP socket of its port;
        the kernel shares it only between devices of the same GBP setting."""
        for o in self.objs.values():
            if (
                isinstance(o, Vxlan)
                and o.key != vx.key
                and o.port == vx.port
                and o.gbp != vx.gbp
                and ("up", o.netns, o.ifname) in self.objs
            ):
                raise _fail("UDP port in use by a VXLAN of other GBP", errno.EADDRINUSE, vx.netns)

    def _on_link(self, ns: str, dev: str | None, ip: str | None) -> bool:
        if ip is None or dev is None:
            return False
        addr = ipaddress.IPv4Address(ip)
        return any(
            isinstance(a, Address)
            and a.netns == ns
            and a.ifname == dev
            and addr in ipaddress.IPv4Interface(a.cidr).network
            for a in self.objs.values()
        )

    def _delete(self, o: Obj) -> None:
        if o.key not in self.objs:
            return  # ENOENT: already what the caller wants
        del self.objs[o.key]
        if isinstance(o, Netns):
            # Everything in the namespace goes with it, and a veth pair dies as a whole.
            for x in list(self.objs.values()):
                if isinstance(x, Uts | Process | Netns):
                    continue
                if x.netns == o.name or (isinstance(x, Veth | VethPair) and x.peer_netns == o.name):
                    self._delete(x)
        elif isinstance(o, Vxlan | Veth | VethPair):
            ends = {(o.netns, o.ifname)}
            if isinstance(o, Veth | VethPair) and o.peer_netns:
                ends.add((o.peer_netns, o.peer_ifname))
            for k, x in list(self.objs.items()):
                if isinstance(x, KRoute):
                    devs: tuple[str | None, ...] = x.devs  # multipath: any of its devices
                elif isinstance(x, Sysctl):
                    devs = (x.dev,)
                else:
                    devs = (getattr(x, "ifname", None),)
                if isinstance(x, Filter):
                    continue  # a netdev chain outlives its device and re-binds by name
                if not isinstance(x, Vxlan | Veth | VethPair) and any(
                    (getattr(x, "netns", None), dev) in ends for dev in devs
                ):
                    del self.objs[k]


# -- the fabric ----------------------------------------------------------------------------


@dataclass
class Trace:
    """The fate of one packet: verdict, the hops it took, and where it ended."""

    verdict: str  # "delivered" | "unreachable" | "dropped-by-antispoof" | "dropped"
    hops: list[str] = field(default_factory=list)
    reason: str = ""
    to_netns: str | None = None  # where it was delivered (None: out to the internet)
    source: str = ""  # the source address the receiver sees (after NAT)
    forwarded_by: list[str] = field(default_factory=list)  # instance netns that forwarded it

    @property
    def delivered(self) -> bool:
        return self.verdict == "delivered"


MAX_HOPS = 16


class FakeFabric:
    """The underlay joining fake hosts, and a packet tracer over their objects."""

    def __init__(self) -> None:
        self.drivers: list[FakeDriver] = []

    def attach(self, driver: FakeDriver) -> None:
        self.drivers.append(driver)

    def host(self, naming: Naming, host_netns: str | None) -> FakeDriver:
        """The fake kernel of the host with this prefix, created on first use.

        Kernel state outlives an agent: a second DataPlane for the same host (an agent
        restart) gets the same objects back, which is what adoption is tested against.
        """
        for d in self.drivers:
            if d.naming == naming and d.host_netns == host_netns:
                return d
        d = FakeDriver(naming=naming, host_netns=host_netns)
        self.attach(d)
        return d

    def _find_instance(self, instance_id: str) -> tuple[FakeDriver, str]:
        for d in self.drivers:
            ns = d.naming.instance_netns(instance_id)
            if ("netns", ns) in d.objs:
                return d, ns
        raise KeyError(f"no instance {instance_id} on any host")

    def trace(
        self,
        src_instance_id: str,
        dst_ip: str,
        *,
        src_ip: str | None = None,
        src_mac: str | None = None,
        proto: str = "icmp",
        port: int | None = None,
    ) -> Trace:
        """Follow an IPv4 packet (`proto` tcp|udp|icmp, destination `port`) from an instance
        to `dst_ip` (optionally with a forged source IP or MAC, as a spoofing instance
        would send). Instances with ip_forward=1 forward what is not theirs (appliances)."""
        d, ns = self._find_instance(src_instance_id)
        t = Trace("dropped", [f"{d.naming.prefix}:{ns}"])
        own = _instance_addr(d, ns)
        if own is None:
            return _end(t, "dropped", "instance has no address")
        pkt = _Packet(
            ipaddress.IPv4Address(src_ip or str(own.ip)), ipaddress.IPv4Address(dst_ip), proto, port
        )
        return self._from_instance(t, d, ns, pkt, src_mac, forwarded=False)

    def _from_instance(
        self,
        t: Trace,
        d: FakeDriver,
        ns: str,
        pkt: _Packet,
        src_mac: str | None = None,
        *,
        forwarded: bool,
    ) -> Trace:
        """The packet leaves instance `ns` by its own routing and enters the VPC namespace."""
        port = d._peer_end(ns, INSTANCE_IFNAME)
        if port is None:
            return _end(t, "dropped", "instance has no port")
        own = _instance_addr(d, ns)
        if own is None:
            return _end(t, "dropped", "instance has no address")
        sip = str(pkt.src)
        smac = src_mac or port.peer_mac
        if ("up", ns, INSTANCE_IFNAME) not in d.objs or ("up", port.netns, port.ifname) not in (
            d.objs
        ):
            return _end(t, "dropped", "port down")
        dst = pkt.dst
        # The instance's own routing: its subnet is on-link (ARP for dst itself), anything
        # else goes to its default gateway (ARP for the gateway).
        if dst in own.network:
            arp_for = str(dst)
        else:
            gw = [
                r
                for r in d.objs.values()
                if isinstance(r, KRoute) and r.netns == ns and r.dst == "0.0.0.0/0"
            ]
            if not gw or gw[0].via is None:
                return _end(t, "unreachable", "instance has no route")
            arp_for = gw[0].via
        # ARP request leaves through the port filter, then the VPC namespace answers it. It
        # carries the packet's source when that is the instance's (a forged one included:
        # the forger configured it), its own address when it forwards another's packet.
        verdict = _filter_verdict(d, port, smac, str(own.ip) if forwarded else sip, arp=True)
        if verdict:
            return _end(t, "dropped-by-antispoof", f"ARP: {verdict}")
        if not _answers_arp(d, port, arp_for):
            return _end(t, "unreachable", f"no ARP reply for {arp_for}")
        t.hops.append(f"{d.naming.prefix}:{port.netns}:{port.ifname}")
        verdict = _filter_verdict(d, port, smac, sip, arp=False)
        if verdict:
            return _end(t, "dropped-by-antispoof", verdict)
        t.source = sip
        return self._route(t, d, port.netns, pkt, port.ifname, 0)

    def _route(self, t: Trace, d: FakeDriver, ns: str, pkt: _Packet, iif: str, gbp: int) -> Trace:
        dst = pkt.dst
        for _ in range(MAX_HOPS):
            if _is_local(d, ns, dst):
                t.to_netns = ns
                return _end(t, "delivered", "local address (gateway)")
            mark = _ingress_mark(d, ns, iif, pkt, gbp)
            r = _decide(d, ns, pkt, iif, mark)
            if r is None:
                return _end(t, "unreachable", f"no route to {dst} in {ns}")
            if isinstance(r, str):
                return _end(t, "dropped", f"{r} in {ns}")
            if r.kind == "multipath":
                r = _one_path(r, pkt)
            if r.kind not in ("unreachable", "blackhole"):
                why = _firewall_verdict(d, ns, iif, r.dev, pkt)
                if why:
                    return _end(t, "dropped", f"{why} in {ns}")
            pair = _gateway_port(d, ns, r.dev)
            if pair is not None and r.kind not in ("unreachable", "blackhole"):
                if r.via is not None and ("neigh", ns, r.dev, r.via) not in d.objs:
                    return _end(t, "unreachable", f"no neighbour for {r.via} on {r.dev}")
                if _role(d, pair.netns) == "hybrid":
                    return self._out_line(t, d, pair, dst)
                return self._out_through(t, d, pair, dst)
            if r.kind in ("unreachable", "blackhole"):
                return _end(t, "unreachable", f"{r.kind} route {r.dst} in {ns}")
            if r.kind == "gateway" and r.onlink and r.dev != VXLAN_IFNAME:
                # A next hop on a port: the instance there gets the packet (to its MAC) and
                # keeps it if it is its own address, forwards it if it forwards.
                assert r.dev is not None and r.via is not None
                port = d.objs.get(("link", ns, r.dev))
                if not isinstance(port, Veth) or port.peer_netns is None:
                    return _end(t, "dropped", f"route {r.dst} to missing port {r.dev}")
                n = d.objs.get(("neigh", ns, r.dev, r.via))
                if not isinstance(n, Neigh) or n.mac != port.peer_mac:
                    return _end(t, "dropped", f"no neighbour for next hop {r.via} on {r.dev}")
                up = ("up", port.peer_netns, port.peer_ifname)
                if ("up", ns, r.dev) not in d.objs or up not in d.objs:
                    return _end(t, "dropped", f"port {r.dev} down")
                t.hops.append(f"{d.naming.prefix}:{ns}:{r.dev}")
                t.hops.append(f"{d.naming.prefix}:{port.peer_netns}")
                if _is_local(d, port.peer_netns, dst):
                    t.to_netns = port.peer_netns
                    return _end(t, "delivered", "")
                fwd = d.objs.get(("sysctl", port.peer_netns, "net/ipv4/ip_forward"))
                if not isinstance(fwd, Sysctl) or fwd.value != "1":
                    return _end(t, "dropped", f"next hop {r.via} does not forward")
                t.forwarded_by.append(port.peer_netns)
                return self._from_instance(t, d, port.peer_netns, pkt, forwarded=True)
            if r.kind == "local":
                assert r.dev is not None
                port = d.objs.get(("link", ns, r.dev))
                if not isinstance(port, Veth) or port.peer_netns is None:
                    return _end(t, "dropped", f"route {r.dst} to missing port {r.dev}")
                if ("up", ns, r.dev) not in d.objs or (
                    "up",
                    port.peer_netns,
                    INSTANCE_IFNAME,
                ) not in d.objs:
                    return _end(t, "dropped", f"port {r.dev} down")
                n = d.objs.get(("neigh", ns, r.dev, str(dst)))
                if isinstance(n, Neigh) and n.mac != port.peer_mac:
                    return _end(t, "dropped", f"neighbour of {dst} has a wrong MAC")
                has = any(
                    isinstance(a, Address)
                    and a.netns == port.peer_netns
                    and a.ifname == INSTANCE_IFNAME
                    and ipaddress.IPv4Interface(a.cidr).ip == dst
                    for a in d.objs.values()
                )
                t.hops.append(f"{d.naming.prefix}:{ns}:{r.dev}")
                if not has:
                    return _end(t, "dropped", f"{dst} not configured behind {r.dev}")
                t.to_netns = port.peer_netns
                t.hops.append(f"{d.naming.prefix}:{port.peer_netns}")
                return _end(t, "delivered", "")
            if r.kind in ("remote", "gateway"):
                vx = d.objs.get(("link", ns, VXLAN_IFNAME))
                if r.dev != VXLAN_IFNAME or not isinstance(vx, Vxlan):
                    return _end(t, "dropped", f"route {r.dst} via a device we do not model")
                if ("up", ns, VXLAN_IFNAME) not in d.objs:
                    return _end(t, "dropped", "vxlan0 down")
                n = d.objs.get(("neigh", ns, VXLAN_IFNAME, str(r.via)))
                if not isinstance(n, Neigh):
                    return _end(t, "unreachable", f"no neighbour for next hop {r.via}")
                f = d.objs.get(("fdb", ns, VXLAN_IFNAME, n.mac))
                if not isinstance(f, Fdb):
                    return _end(t, "dropped", f"no FDB entry for {n.mac} (no flooding)")
                t.hops.append(f"{d.naming.prefix}:{ns}:vxlan0->{f.dst}")
                nxt = self._vtep(f.dst, vx.vni, vx.port)
                if nxt is None:
                    return _end(t, "dropped", f"no VTEP {f.dst} vni {vx.vni}")
                d2, vx2 = nxt
                if vx2.mac != n.mac:
                    return _end(t, "dropped", f"VTEP {f.dst} has MAC {vx2.mac}, not {n.mac}")
                if ("up", vx2.netns, VXLAN_IFNAME) not in d2.objs:
                    return _end(t, "dropped", f"vxlan0 down at {f.dst}")
                gbp = _egress_mark(d, ns, r) if vx.gbp else 0
                # A receiver without GBP drops a frame that carries a policy id.
                if gbp and not vx2.gbp:
                    return _end(t, "dropped", f"GBP frame to a VTEP without GBP at {f.dst}")
                d, ns, iif = d2, vx2.netns, VXLAN_IFNAME
                continue
        return _end(t, "dropped", "TTL exceeded")

    def _out_line(
        self, t: Trace, d: FakeDriver, pair: VethPair, dst: ipaddress.IPv4Address
    ) -> Trace:
        """A packet the VPC namespace sends to a hybrid gateway's port: the replica
        forwards it out of its line to the site router (delivered: to the IDC)."""
        hy = pair.netns
        if not _up(d, hy, pair.ifname) or not _up(d, pair.peer_netns, pair.peer_ifname):
            return _end(t, "dropped", f"replica link {pair.ifname} down")
        t.hops.append(f"{d.naming.prefix}:{hy}")
        fwd = d.objs.get(("sysctl", hy, "net/ipv4/ip_forward"))
        if not isinstance(fwd, Sysctl) or fwd.value != "1":
            return _end(t, "dropped", f"{hy} does not forward")
        r = _lookup(d, hy, dst)
        if r is not None:
            return _end(t, "dropped", f"{hy} routes {dst} by {r.kind} {r.dst}, not to the line")
        if not isinstance(d.objs.get(("bgp", hy)), Bgp):
            return _end(t, "unreachable", f"{hy} has no BGP session: nothing learned")
        line = d.objs.get(("link", hy, HYBRID_LINE_IFNAME))
        if not isinstance(line, Vxlan) or not _up(d, hy, HYBRID_LINE_IFNAME):
            return _end(t, "dropped", f"{hy} has no line up")
        on_line = [
            a
            for a in d.objs.values()
            if isinstance(a, Address) and a.netns == hy and a.ifname == HYBRID_LINE_IFNAME
        ]
        if not on_line:
            return _end(t, "dropped", f"{hy} has no address on its line")
        fdb = d.objs.get(("fdb", hy, HYBRID_LINE_IFNAME, ZERO_MAC))
        if not isinstance(fdb, Fdb):
            return _end(t, "dropped", f"{hy}'s line has no FDB entry to the site router")
        t.hops.append(f"{d.naming.prefix}:{hy}:{HYBRID_LINE_IFNAME}->{fdb.dst}")
        t.to_netns = None
        return _end(t, "delivered", f"to the IDC over the line (vni {line.vni})")

    def _out_through(
        self, t: Trace, d: FakeDriver, pair: VethPair, dst: ipaddress.IPv4Address
    ) -> Trace:
        """A packet the VPC namespace sends to a NAT gateway's port: NAT, then out to the
        internet through the host. It only counts as delivered when the reply can come
        back: the uplink routes the translated source to this host."""
        gw = pair.netns
        if not _up(d, gw, pair.ifname) or not _up(d, pair.peer_netns, pair.peer_ifname):
            return _end(t, "dropped", f"gateway link {pair.ifname} down")
        t.hops.append(f"{d.naming.prefix}:{gw}")
        nat = d.objs.get(("nat", gw))
        src = t.source
        if isinstance(nat, NatTable):
            addr = ipaddress.IPv4Address(src)
            eip = dict(nat.eips).get(src)
            if eip is not None:
                src = eip
            elif any(addr in ipaddress.IPv4Network(c) for c in nat.snat):
                src = nat.public_ip
        r = _lookup(d, gw, dst)
        if r is None or r.dev != GW_PUB_IFNAME:
            return _end(t, "unreachable", f"no route to {dst} out of {gw}")
        pub = d.objs.get(("link", gw, GW_PUB_IFNAME))
        if not isinstance(pub, VethPair) or not _up(d, gw, GW_PUB_IFNAME):
            return _end(t, "dropped", f"{gw} has no way out")
        if ("neigh", gw, GW_PUB_IFNAME, str(r.via)) not in d.objs:
            return _end(t, "unreachable", f"no neighbour for {r.via} in {gw}")
        t.hops.append(f"{d.naming.prefix}:{pub.peer_netns}:{pub.peer_ifname}")
        t.source = src
        if ("announce", src) not in d.objs:
            return _end(t, "unreachable", f"replies to {src} are not routed to this host")
        return _end(t, "delivered", "to the internet")

    def trace_inbound(
        self, dst_ip: str, proto: str = "tcp", port: int = 0, *, src_ip: str = "203.0.113.1"
    ) -> Trace:
        """Follow a packet from the internet to public address `dst_ip` (proto, port): the
        uplink's announcement, the host's route, the gateway's DNAT, and the VPC. (Its
        reply takes the path `trace` follows from the instance to the internet.)"""
        t = Trace("dropped", ["internet"], source="internet")
        d = next((d for d in self.drivers if ("announce", dst_ip) in d.objs), None)
        if d is None:
            return _end(t, "unreachable", f"the uplink has no route to {dst_ip}")
        dst = ipaddress.IPv4Address(dst_ip)
        r = _lookup(d, HOST_NETNS, dst)
        if r is None or r.dev is None:
            return _end(t, "unreachable", f"the host has no route to {dst_ip}")
        hop = str(r.via) if r.kind == "gateway" else dst_ip
        n = d.objs.get(("neigh", HOST_NETNS, r.dev, hop))
        pair = _gateway_port(d, HOST_NETNS, r.dev)
        if pair is None or not isinstance(n, Neigh) or n.mac != pair.mac:
            return _end(t, "unreachable", f"no gateway behind {r.dev} for {dst_ip}")
        if not _up(d, HOST_NETNS, r.dev) or not _up(d, pair.netns, pair.ifname):
            return _end(t, "dropped", f"gateway link {r.dev} down")
        gw = pair.netns
        t.hops.append(f"{d.naming.prefix}:{gw}")
        nat = d.objs.get(("nat", gw))
        to: str | None = None
        dport = port
        if isinstance(nat, NatTable):
            to = next((inst for inst, eip in nat.eips if eip == dst_ip), None)
            if to is None and dst_ip == nat.public_ip:
                fwd = next((f for f in nat.forwards if (f[0], f[1]) == (proto, port)), None)
                if fwd is not None:
                    to, dport = fwd[2], fwd[3]
        if to is None:
            if _is_local(d, gw, dst):
                return _end(t, "dropped", f"nothing listens on {dst_ip}:{port} (the gateway)")
            return _end(t, "unreachable", f"{gw} does not route {dst_ip}")
        inner = ipaddress.IPv4Address(to)
        r = _lookup(d, gw, inner)
        if r is None or r.dev != GW_VPC_IFNAME:
            return _end(t, "unreachable", f"no route to {to} in {gw}")
        vpc = d.objs.get(("link", gw, GW_VPC_IFNAME))
        if not isinstance(vpc, VethPair) or vpc.peer_netns is None:
            return _end(t, "dropped", f"{gw} has no link to its VPC")
        if ("neigh", gw, GW_VPC_IFNAME, str(r.via)) not in d.objs:
            return _end(t, "unreachable", f"no neighbour for {r.via} in {gw}")
        pkt = _Packet(ipaddress.IPv4Address(src_ip), inner, proto, dport)
        t = self._route(t, d, vpc.peer_netns, pkt, vpc.peer_ifname, 0)
        if not t.delivered or t.to_netns is None:
            return t
        # The reply must leave by the same gateway (where conntrack undoes the NAT): an
        # instance whose subnet the gateway does not serve has no way back.
        back = _Packet(inner, pkt.src, proto, None)
        there = next(x for x in self.drivers if ("netns", t.to_netns) in x.objs)
        reply = self._from_instance(Trace("dropped", []), there, t.to_netns, back, forwarded=False)
        if (
            not reply.delivered
            or reply.to_netns is not None
            or f"{d.naming.prefix}:{gw}" not in (reply.hops)
        ):
            return _end(t, "dropped", f"the reply does not go back through {gw}: {reply.reason}")
        return t

    def _vtep(self, underlay: str, vni: int, port: int) -> tuple[FakeDriver, Vxlan] | None:
        for d in self.drivers:
            for o in d.objs.values():
                if isinstance(o, Vxlan) and o.local == underlay and o.vni == vni and o.port == port:
                    return d, o
        return None


@dataclass(frozen=True)
class _Packet:
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    proto: str  # tcp | udp | icmp
    dport: int | None


_IPPROTO = {"tcp": 6, "udp": 17, "icmp": 1}


def _instance_addr(d: FakeDriver, ns: str) -> ipaddress.IPv4Interface | None:
    for a in d.objs.values():
        if isinstance(a, Address) and a.netns == ns and a.ifname == INSTANCE_IFNAME:
            return ipaddress.IPv4Interface(a.cidr)
    return None


def _ingress_mark(d: FakeDriver, ns: str, iif: str, pkt: _Packet, gbp: int) -> int:
    """skb->mark after the `ip yunhan` prerouting chain (see nftroute)."""
    m = d.objs.get(("marks", ns))
    mark = gbp if iif == VXLAN_IFNAME else 0
    if not isinstance(m, Marks):
        return mark
    if iif != VXLAN_IFNAME:
        return next((v for name, v in m.ports if name == iif), mark)
    if mark & MARK_ROUTED:
        for cidr, v in m.sources:
            if pkt.src in ipaddress.IPv4Network(cidr):
                return v
    return mark


def _egress_mark(d: FakeDriver, ns: str, r: KRoute) -> int:
    """The mark a packet leaves vxlan0 with by route `r` (the `post` chain), low 16 bits
    being what VXLAN-GBP carries."""
    if not isinstance(d.objs.get(("marks", ns)), Marks):
        return 0  # no post chain: the mark of a packet from a port is 0
    return MARK_ROUTED if r.realm == ROUTED_REALM else 0


def _rule_matches(r: Rule, pkt: _Packet, iif: str, mark: int) -> bool:
    if r.iif is not None and r.iif != iif:
        return False
    if mark & r.mask != r.mark:
        return False
    if r.src is not None and pkt.src not in ipaddress.IPv4Network(r.src):
        return False
    if r.dst is not None and pkt.dst not in ipaddress.IPv4Network(r.dst):
        return False
    if r.ipproto is not None and _IPPROTO.get(pkt.proto) != r.ipproto:
        return False
    if r.dport is not None:
        return pkt.dport is not None and r.dport[0] <= pkt.dport <= r.dport[1]
    return True


def _decide(d: FakeDriver, ns: str, pkt: _Packet, iif: str, mark: int) -> KRoute | str | None:
    """The kernel's fib rules walk: our rules by pref, then main (32766). A table lookup
    that finds nothing or a throw route goes on to the next rule; a blackhole rule drops."""
    rules = sorted(
        (r for r in d.objs.values() if isinstance(r, Rule) and r.netns == ns),
        key=lambda r: (r.pref, r.key),
    )
    floor = 0
    for rule in rules:
        if rule.pref < floor or not _rule_matches(rule, pkt, iif, mark):
            continue
        if rule.action == "blackhole":
            return f"blackhole rule {rule.pref}"
        if rule.action == "goto":
            floor = rule.goto
            continue
        found = _lookup(d, ns, pkt.dst, rule.table)
        if found is not None and found.kind != "throw":
            return found
    found = _lookup(d, ns, pkt.dst)
    return None if found is None or found.kind == "throw" else found


def _firewall_verdict(
    d: FakeDriver, ns: str, iif: str, oif: str | None, pkt: _Packet
) -> str | None:
    """Why the security groups and ACLs of the VPC namespace drop a new flow forwarded from
    `iif` to `oif` (None: they let it through), as `net.sgeval` reads them."""
    fw = d.objs.get(("firewall", ns))
    if not isinstance(fw, Firewall):
        return None
    refused = sgeval.verdict(fw, iif, oif, sgeval.Packet(pkt.src, pkt.dst, pkt.proto, pkt.dport))
    return None if refused is None else refused.detail


def _end(t: Trace, verdict: str, reason: str) -> Trace:
    return replace(t, verdict=verdict, reason=reason)


def _up(d: FakeDriver, ns: str | None, ifname: str) -> bool:
    return ("up", ns or "", ifname) in d.objs


def _role(d: FakeDriver, ns: str) -> str:
    n = d.objs.get(("netns", ns))
    return n.role if isinstance(n, Netns) else ""


def _one_path(r: KRoute, pkt: _Packet) -> KRoute:
    """The next hop of multipath route `r` that a flow takes: chosen by a hash of its
    addresses, protocol and port (policy 1 hashes L4), the same for every packet of it."""
    flow = f"{pkt.src}>{pkt.dst}/{pkt.proto}/{pkt.dport}".encode()
    via, dev = r.nexthops[zlib.crc32(flow) % len(r.nexthops)]
    if dev == VXLAN_IFNAME:
        return replace(r, kind="remote", dev=dev, via=via, nexthops=())
    return replace(r, kind="gateway", dev=dev, via=via, onlink=True, nexthops=())


def _gateway_port(d: FakeDriver, ns: str, dev: str | None) -> VethPair | None:
    """The gateway link whose far end is `dev` in `ns` (a VPC's g-… or the host's n-…)."""
    if dev is None:
        return None
    for o in d.objs.values():
        if isinstance(o, VethPair) and (o.peer_netns, o.peer_ifname) == (ns, dev):
            return o
    return None


def _filter_verdict(d: FakeDriver, port: Veth, smac: str, sip: str, *, arp: bool) -> str:
    f = d.objs.get(("filter", port.netns, port.ifname))
    if not isinstance(f, Filter):
        return ""  # no chain: the port is unfiltered (the planner never brings it up so)
    if smac.lower() != f.mac.lower():
        return f"source MAC {smac} is not the port's"
    if f.forwarder and not arp:
        return ""  # a next hop of routes: any IPv4 source
    allowed = set(f.ips) | ({"0.0.0.0"} if arp else set())
    if sip not in allowed:
        return f"source IP {sip} is not allowed on the port"
    return ""


def _is_local(d: FakeDriver, ns: str, ip: ipaddress.IPv4Address) -> bool:
    return any(
        isinstance(a, Address) and a.netns == ns and ipaddress.IPv4Interface(a.cidr).ip == ip
        for a in d.objs.values()
    )


def _lookup(d: FakeDriver, ns: str, ip: ipaddress.IPv4Address, table: int = 254) -> KRoute | None:
    best: KRoute | None = None
    best_key = (-1, 0)
    for r in d.objs.values():
        if isinstance(r, KRoute) and r.netns == ns and r.table == table:
            net = ipaddress.IPv4Network(r.dst)
            key = (net.prefixlen, -r.metric)
            if ip in net and key > best_key:
                best, best_key = r, key
    return best


def _answers_arp(d: FakeDriver, port: Veth, target: str) -> bool:
    """Does the VPC namespace answer, on `port`, an ARP request for `target`?

    A local address (a gateway on `lo`) is answered on any interface (arp_ignore=0). Any
    other address only by proxy ARP: when proxy_arp is on for the port and the route to
    the target is a unicast route leaving by another device; an unreachable route, no
    route, or a route back out of the same port gets no answer.
    """
    ip = ipaddress.IPv4Address(target)
    if _is_local(d, port.netns, ip):
        return True
    s = d.objs.get(("sysctl", port.netns, f"net/ipv4/conf/{port.ifname}/proxy_arp"))
    if not isinstance(s, Sysctl) or s.value != "1":
        return False
    r = _lookup(d, port.netns, ip)
    if r is None or r.kind not in ("local", "remote", "gateway", "multipath"):
        return False
    return port.ifname not in r.devs
