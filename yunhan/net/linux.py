"""The real data plane: netlink through pyroute2, nftables through libnftables.

The agent stays in the root namespace and programs every namespace of its host through a
netlink socket opened inside that namespace (see `_ipr`). What counts as ours:

* namespaces named `<prefix>v<vni>` (VPC), `<prefix>i-<id>` (instance), `<prefix>g-<id>`
  (NAT gateway) and `<prefix>h-<id>` (hybrid gateway replica);
* inside them: vxlan0, the veth ports (`p-`, and the gateways' `g-` and `h-`), `lo`/`eth0`
  state, every IPv4 address except 127.0.0.1, permanent neighbours, vxlan FDB entries with
  a destination, routes and ip rules whose rtnetlink protocol is RTPROT_YUNHAN, the
  `netdev yunhan` and `ip yunhan` nft tables (VPC: port filters and routing marks;
  gateway: its NAT); in a replica namespace `vpc0`, the line (`line0`, a VXLAN device)
  and its FRR instance (`yunhan.net.frr`, pathspace = the namespace's name);
* in the host namespace (`host_netns`, None: the agent's own): the gateways' veth ends
  `n-<id>` and what is on them (routes of RTPROT_YUNHAN, permanent neighbours), and
  net.ipv4.ip_forward;
* in the uplink namespace, if any: /32 routes of RTPROT_YUNHAN via the uplink's `via`
  (our announcements; one that points at another host is no longer ours);
* UTS namespace files under /run/yunhan/uts and process records in the state dir, both
  under the prefix.

Every netlink or OS error leaves as DriverError(errno=...) `from` the original.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from yunhan.errors import DriverError, ValidationError
from yunhan.net import frr, nft, nftroute, nftsg, nsutil
from yunhan.net.desired import HYBRID_LINE_IFNAME
from yunhan.net.driver import Sandbox
from yunhan.net.naming import INSTANCE_IFNAME, VXLAN_IFNAME, Naming
from yunhan.net.natgw import (
    GW_PUB_IFNAME,
    GW_VPC_IFNAME,
    HOST_NETNS,
    NAT_FAMILY,
    NAT_TABLE,
    UPLINK_NETNS,
    Announce,
    NatTable,
    Uplink,
    VethPair,
    delete_nat_cmd,
    nat_batch,
    parse_nat,
)
from yunhan.net.state import (
    CONNTRACK_ACCOUNTING,
    CONNTRACK_TIMEOUTS,
    FASTPATH_VPC_SYSCTLS,
    HOST_SYSCTLS,
    HYBRID_SYSCTLS,
    HYBRID_VPC_SYSCTLS,
    INSTANCE_SYSCTLS,
    NATGW_SYSCTLS,
    RTPROT_YUNHAN,
    VPC_SYSCTLS,
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
    as_state,
    port_sysctls,
)

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
IFF_UP = 0x1
RTNH_F_ONLINK = 0x4
RTN_UNICAST, RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_THROW = 1, 6, 7, 9
_RTN_OF_KIND = {"unreachable": RTN_UNREACHABLE, "blackhole": RTN_BLACKHOLE, "throw": RTN_THROW}
_KIND_OF_RTN = {v: k for k, v in _RTN_OF_KIND.items()}
FR_ACT_TO_TBL, FR_ACT_GOTO, FR_ACT_BLACKHOLE = 1, 2, 6
_RULE_ACTIONS = {FR_ACT_TO_TBL: "lookup", FR_ACT_GOTO: "goto", FR_ACT_BLACKHOLE: "blackhole"}
_GONE = {errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL}
ETH_P_ARP = 0x0806
RT_TABLE_MAIN = 254
# A gateway's end in the host namespace ("n-<short id>", naming.natgw_host_ifname).
_HOST_END_RE = re.compile(r"n-[A-Za-z0-9]+$")
# One end of a gateway link, for pairing: (netns, ifname, index, peer index, mac, mtu).
_End = tuple[str, str, int, int, str, int]

log = logging.getLogger("yunhan.net.linux")


def _netlink_fd() -> int:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE).detach()


@contextmanager
def _errors(what: str, **details: Any) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        raise DriverError(f"{what}: {exc}", errno=exc.code, **details) from exc
    except OSError as exc:
        raise DriverError(f"{what}: {exc}", errno=exc.errno, **details) from exc


def _gone_ok(fn: Callable[[], object]) -> None:
    """Run a delete; ENOENT/ENODEV/ESRCH mean it is already gone, which is what we want."""
    try:
        fn()
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise
    except DriverError as exc:
        if exc.errno not in _GONE:
            raise


def garp_frame(mac: str, ip: str) -> bytes:
    """A broadcast gratuitous ARP request: `ip` is at `mac` (sender and target IP both `ip`)."""
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = socket.inet_aton(ip)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, hw, addr, bytes(6), addr)
    return b"\xff" * 6 + hw + struct.pack("!H", ETH_P_ARP) + arp


def _pairs(near: list[_End], far: list[_End], kind: str = "g") -> list[VethPair]:
    """The gateway links, from their gateway ends (`near`) and the VPC and host ends.

    The other end of a gateway's vpc0 is "g-<id>" in some VPC namespace (a hybrid
    gateway's, `kind` "h": "h-<id>"), of its pub0 "n-<id>" in the host namespace;
    interface indices are per namespace, so a candidate is the one whose index is our peer
    index and whose peer index is ours, and whose name carries our id. Not found:
    peer_netns None (never wanted, so the pair is re-made).
    """
    out = []
    for ns, ifname, idx, peer, mac, mtu in near:
        short = ns.rsplit(f"{kind}-", 1)[-1]
        want = f"{kind}-{short}" if ifname == GW_VPC_IFNAME else f"n-{short}"
        match = next(
            (e for e in far if e[1] == want and e[2] == peer and e[3] == idx),
            None,
        )
        if match is None:
            out.append(VethPair(ns, ifname, mac, None, "", "", mtu))
        else:
            pns, pname, _i, _p, pmac, pmtu = match
            out.append(VethPair(ns, ifname, mac, pns, pname, pmac, mtu if pmtu == mtu else -1))
    return out


def _vxlan_of(ns: str, link: Any) -> Vxlan:
    data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    return Vxlan(
        ns,
        link.get_attr("IFLA_IFNAME"),
        int(data.get_attr("IFLA_VXLAN_ID")),
        str(data.get_attr("IFLA_VXLAN_LOCAL")),
        link.get_attr("IFLA_ADDRESS"),
        int(link.get_attr("IFLA_MTU")),
        int(data.get_attr("IFLA_VXLAN_PORT")),
        bool(data.get_attr("IFLA_VXLAN_LEARNING")),
        bool(data.get_attr("IFLA_VXLAN_GBP")),
    )


class LinuxDriver:
    """Observe and program this host's namespaces; see the module docstring."""

    def __init__(
        self,
        *,
        naming: Naming,
        host_netns: str | None,
        sandbox: Sandbox,
        uplink: Uplink | None = None,
    ) -> None:
        self.naming = naming
        self.host_netns = host_netns
        self.sandbox = sandbox  # instances' UTS namespaces and processes
        self.uplink = uplink  # where gateways' public addresses are announced, if anywhere
        self._vpc_re = re.compile(re.escape(naming.prefix) + r"v\d+$")
        self._inst_re = re.compile(re.escape(naming.prefix) + r"i-[A-Za-z0-9]+$")
        self._gw_re = re.compile(re.escape(naming.prefix) + r"g-[A-Za-z0-9]+$")
        self._hybrid_re = re.compile(re.escape(naming.prefix) + r"h-[A-Za-z0-9]+$")
        self._socks: dict[str | None, IPRoute] = {}
        # ns -> ifname -> (index, mac, kind): filled by observation, or by one dump on a
        # miss, and dropped whenever we add or remove a link there. Without it every op on
        # a device would dump and decode all the namespace's links (pyroute2's
        # link_lookup), the largest CPU cost of an apply.
        self._links: dict[str | None, dict[str, tuple[int, str, str | None]]] = {}
        self._packet: dict[str, socket.socket] = {}
        self._workers: dict[str, nsutil.NsWorker] = {}
        self.unobserved: dict[str, DriverError] = {}

    # -- sockets ---------------------------------------------------------------------------

    def _real(self, ns: str | None) -> str | None:
        """The namespace a marker stands for (HOST_NETNS, UPLINK_NETNS; None: our own)."""
        if ns == HOST_NETNS:
            return self.host_netns
        if ns == UPLINK_NETNS:
            if self.uplink is None:
                raise DriverError("this agent has no uplink to announce on", errno=errno.ENOENT)
            return self.uplink.netns
        return ns

    def _ipr(self, ns: str | None) -> IPRoute:
        ns = self._real(ns)
        s = self._socks.get(ns)
        if s is None:
            # A netlink socket belongs to the namespace it was created in. Opening it on a
            # thread that entered `ns` costs a thread, where pyroute2's own
            # IPRoute(netns=...) forks a helper process (4x slower, and a fork of a
            # threaded agent); a missing namespace fails with ENOENT, never creates one.
            with _errors(f"netlink socket in {ns or 'root'}", netns=ns):
                s = IPRoute() if ns is None else IPRoute(fileno=self._runner(ns)(_netlink_fd))
            self._socks[ns] = s
        return s

    def _runner(self, ns: str | None) -> Callable[[Callable[[], Any]], Any]:
        """Run a function inside `ns` on this apply's worker thread there (made on first use)."""

        real = self._real(ns)
        if real is None:
            return lambda fn: fn()  # the agent's own namespace (a real host's root)

        def run(fn: Callable[[], Any]) -> Any:
            w = self._workers.get(real)
            if w is None:
                w = nsutil.NsWorker(real)
                self._workers[real] = w
            return w.call(fn)

        return run

    def _drop_sock(self, ns: str) -> None:
        w = self._workers.pop(ns, None)
        if w is not None:
            w.close()
        s = self._socks.pop(ns, None)
        if s is not None:
            s.close()
        p = self._packet.pop(ns, None)
        if p is not None:
            p.close()
        self._links.pop(ns, None)

    def links(self, ns: str) -> dict[str, tuple[int, str]]:
        """ifname -> (ifindex, MAC) of every link in `ns` (for the fast path's maps)."""
        with _errors(f"list links in {ns}", netns=ns):
            table = self._remember_links(ns, self._ipr(ns).get_links())
        return {name: (index, mac) for name, (index, mac, _kind) in table.items()}

    def run_in(self, ns: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` on this apply's thread inside `ns` (bpf(2) resolves ifindexes there)."""
        return self._runner(ns)(fn)

    def close(self) -> None:
        for w in self._workers.values():
            w.close()
        self._workers.clear()
        for s in self._socks.values():
            s.close()
        self._socks.clear()
        for p in self._packet.values():
            p.close()
        self._packet.clear()
        self._links.clear()

    def _remember_links(self, ns: str | None, links: Any) -> dict[str, tuple[int, str, str | None]]:
        ns = self._real(ns)
        table: dict[str, tuple[int, str, str | None]] = {}
        for link in links:
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            table[link.get_attr("IFLA_IFNAME")] = (
                int(link["index"]),
                str(link.get_attr("IFLA_ADDRESS") or ""),
                kind,
            )
        self._links[ns] = table
        return table

    def _link(self, ns: str, ifname: str) -> tuple[int, str, str | None]:
        table = self._links.get(self._real(ns))
        if table is None or ifname not in table:
            table = self._remember_links(ns, self._ipr(ns).get_links())
        found = table.get(ifname)
        if found is None:
            raise DriverError(f"no {ifname} in {ns}", errno=errno.ENODEV, netns=ns)
        return found

    def _index(self, ns: str, ifname: str) -> int:
        return self._link(ns, ifname)[0]

    def _forget_links(self, *namespaces: str | None) -> None:
        for ns in namespaces:
            if ns is not None:
                self._links.pop(self._real(ns), None)

    # -- observation -----------------------------------------------------------------------

    def namespaces(self) -> dict[str, str]:
        """Our namespaces that exist: name -> "vpc" | "instance" | "natgw" | "hybrid"."""
        out: dict[str, str] = {}
        for name in netns.listnetns():
            if self._vpc_re.match(name):
                out[name] = "vpc"
            elif self._inst_re.match(name):
                out[name] = "instance"
            elif self._gw_re.match(name):
                out[name] = "natgw"
            elif self._hybrid_re.match(name):
                out[name] = "hybrid"
        return out

    def observe(self) -> State:
        objs: list[Obj] = []
        self.unobserved = {}
        nss = self.namespaces()
        veths: dict[str, list[tuple[str, int, int, int]]] = {}  # vpc ns -> (name, idx, peer, mtu)
        # (idx, peer idx) -> every instance eth0 with those: (ns, mac, mtu, link netnsid)
        eth0s: dict[tuple[int, int], list[tuple[str, str, int, int | None]]] = {}
        near: list[_End] = []  # gateway links, gateway ends
        hnear: list[_End] = []  # hybrid gateway replicas' vpc0
        far: list[_End] = []  # gateway links, VPC and host ends
        for name, role in sorted(nss.items()):
            try:
                if role == "natgw":
                    inner = self._observe_gw(name, near)
                elif role == "hybrid":
                    inner = self._observe_hybrid(name, hnear)
                else:
                    inner = self._observe_ns(name, role, veths, eth0s, far)
            except DriverError as exc:
                if exc.errno == errno.EINVAL:  # setns: the file is not a namespace
                    objs.append(Netns(name, "stale"))
                    continue
                if exc.errno not in _GONE:
                    # Not fatal for the others: the caller leaves this one as it is.
                    self.unobserved[name] = exc
                inner = []
            objs.append(Netns(name, role))  # type: ignore[arg-type]
            objs.extend(inner)
        for ns, ports in veths.items():
            for ifname, idx, peer, mtu in ports:
                found = self._peer_end(ns, eth0s.get((peer, idx), []))
                if found is None:
                    objs.append(Veth(ns, ifname, None, "", mtu))
                else:
                    pns, mac, pmtu = found
                    objs.append(Veth(ns, ifname, pns, mac, mtu if pmtu == mtu else -1))
        gateways = any(role == "natgw" for role in nss.values())
        objs.extend(self._observe_host(far, gateways))
        objs.extend(_pairs(near, far))
        objs.extend(_pairs(hnear, far, "h"))
        objs.extend(self._observe_uplink())
        # Listed by prefix, kept by exact name: "<p>i-…" of a longer prefix is not ours.
        for ns, host in self.sandbox.list_uts(self.naming.prefix).items():
            if self._inst_re.match(ns):
                objs.append(Uts(ns, host))
        for ns, argv in self.sandbox.running(self.naming.prefix).items():
            if self._inst_re.match(ns):
                objs.append(Process(ns, argv))
        return as_state(objs)

    def _peer_end(
        self, vpc_ns: str, candidates: list[tuple[str, str, int, int | None]]
    ) -> tuple[str, str, int] | None:
        """The instance end of a port of `vpc_ns`, among the eth0s with matching indices.

        Interface indices are per namespace: eth0 (index 2) of two instances can both
        point to index 3, each in another VPC namespace. The eth0 whose peer namespace
        (its IFLA_LINK_NETNSID) is `vpc_ns` is the one; a kernel that does not say keeps
        the match by indices alone.
        """
        for pns, mac, mtu, netnsid in candidates:
            if netnsid is None or self._nsid_of(pns, vpc_ns) in (netnsid, None):
                return pns, mac, mtu
        return None

    def _nsid_of(self, ns: str, other: str) -> int | None:
        """The id namespace `ns` knows `other` by (RTM_GETNSID); None if it cannot say."""
        try:
            fd = os.open(nsutil.netns_path(other), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            got = self._ipr(ns).get_netnsid(fd=fd)
            nsid = got.get("nsid") if got else None
            return None if nsid is None else int(nsid)
        except (NetlinkError, OSError, DriverError):
            return None
        finally:
            os.close(fd)

    def _observe_ns(
        self,
        ns: str,
        role: str,
        veths: dict[str, list[tuple[str, int, int, int]]],
        eth0s: dict[tuple[int, int], list[tuple[str, str, int, int | None]]],
        far: list[_End] | None = None,
    ) -> list[Obj]:
        ipr = self._ipr(ns)
        objs: list[Obj] = []
        names: dict[int, str] = {}
        managed: set[str] = {"lo"}
        with _errors(f"observe {ns}", netns=ns):
            links = ipr.get_links()
            self._remember_links(ns, links)
            for link in links:
                idx = int(link["index"])
                ifname = link.get_attr("IFLA_IFNAME")
                names[idx] = ifname
                info = link.get_attr("IFLA_LINKINFO")
                kind = info.get_attr("IFLA_INFO_KIND") if info else None
                mtu = int(link.get_attr("IFLA_MTU"))
                mac = link.get_attr("IFLA_ADDRESS")
                if role == "vpc" and kind == "vxlan" and ifname == VXLAN_IFNAME:
                    objs.append(_vxlan_of(ns, link))
                    managed.add(ifname)
                elif role == "vpc" and kind == "veth" and ifname.startswith(("g-", "h-")):
                    # A NAT or hybrid gateway's port: the VPC end of a pair observed from
                    # the gateway.
                    if far is not None:
                        peer = int(link.get_attr("IFLA_LINK") or 0)
                        far.append((ns, ifname, idx, peer, mac, mtu))
                    managed.add(ifname)
                elif role == "vpc" and kind == "veth":
                    peer = int(link.get_attr("IFLA_LINK") or 0)
                    veths.setdefault(ns, []).append((ifname, idx, peer, mtu))
                    managed.add(ifname)
                elif role == "instance" and ifname == INSTANCE_IFNAME and kind == "veth":
                    peer = int(link.get_attr("IFLA_LINK") or 0)
                    netnsid = link.get_attr("IFLA_LINK_NETNSID")
                    eth0s.setdefault((idx, peer), []).append(
                        (ns, mac, mtu, None if netnsid is None else int(netnsid))
                    )
                    managed.add(ifname)
                if ifname in managed and int(link["flags"]) & IFF_UP:
                    objs.append(LinkUp(ns, ifname))
            for a in ipr.get_addr(family=socket.AF_INET):
                addr = a.get_attr("IFA_ADDRESS")
                dev = names.get(int(a["index"]), "?")
                if addr == "127.0.0.1":
                    continue
                objs.append(Address(ns, dev, f"{addr}/{a['prefixlen']}"))
            for r in ipr.get_routes(family=socket.AF_INET):
                if int(r["proto"]) != RTPROT_YUNHAN:
                    continue
                objs.append(self._route_of(ns, r, names))
            if role == "vpc":
                for rule in ipr.get_rules(family=socket.AF_INET):
                    if rule.get_attr("FRA_PROTOCOL") == RTPROT_YUNHAN:
                        objs.append(self._rule_of(ns, rule))
                for n in ipr.get_neighbours(family=socket.AF_INET):
                    ndev = names.get(int(n["ifindex"]))
                    if ndev is not None and ndev in managed and int(n["state"]) & NUD_PERMANENT:
                        objs.append(
                            Neigh(ns, ndev, n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"))
                        )
                objs.extend(self._observe_fdb(ns, ipr, names, VXLAN_IFNAME))
        if role == "vpc":
            paths = [*VPC_SYSCTLS, *CONNTRACK_TIMEOUTS, *CONNTRACK_ACCOUNTING, *HYBRID_VPC_SYSCTLS]
            paths += list(FASTPATH_VPC_SYSCTLS)
            ports = [p[0] for p in veths.get(ns, [])]
            devsys = [s for p in ports for s in port_sysctls(ns, p)]
            values = nsutil.read_sysctls(ns, paths + [s.path for s in devsys], self._runner(ns))
            objs.extend(Sysctl(ns, p, v) for p in paths if (v := values[p]) is not None)
            objs.extend(
                Sysctl(ns, s.path, v, s.dev) for s in devsys if (v := values[s.path]) is not None
            )
            objs.extend(self._observe_nft(ns))
        else:
            values = nsutil.read_sysctls(ns, list(INSTANCE_SYSCTLS), self._runner(ns))
            objs.extend(Sysctl(ns, p, v) for p, v in values.items() if v is not None)
        return objs

    @staticmethod
    def _route_of(ns: str, r: Any, names: dict[int, str]) -> KRoute:
        dst = f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
        table = int(r.get_attr("RTA_TABLE") or r["table"])
        metric = int(r.get_attr("RTA_PRIORITY") or 0)
        rtype = int(r["type"])
        if rtype in _KIND_OF_RTN:
            return KRoute(ns, dst, _KIND_OF_RTN[rtype], table=table, metric=metric)  # type: ignore[arg-type]
        multipath = r.get_attr("RTA_MULTIPATH")
        if multipath:
            # Read back as written: (via, dev) per next hop, sorted. A next hop that is not
            # onlink, or on a device we cannot name, reads as one that was never wanted.
            hops = sorted(
                (
                    str(nh.get_attr("RTA_GATEWAY")),
                    names.get(int(nh["oif"]), "?")
                    + ("" if int(nh["flags"]) & RTNH_F_ONLINK else " (not onlink)"),
                )
                for nh in multipath
            )
            return KRoute(ns, dst, "multipath", table=table, metric=metric, nexthops=tuple(hops))
        oif = r.get_attr("RTA_OIF")
        dev = names.get(int(oif)) if oif is not None else None
        via = r.get_attr("RTA_GATEWAY")
        realm = int(r.get_attr("RTA_FLOW") or 0)
        onlink = bool(int(r["flags"]) & RTNH_F_ONLINK)
        if via is None:
            return KRoute(ns, dst, "local", dev, None, table, metric, realm=realm)
        if dev == VXLAN_IFNAME and onlink:
            return KRoute(ns, dst, "remote", dev, via, table, metric, realm=realm)
        return KRoute(ns, dst, "gateway", dev, via, table, metric, onlink, realm)

    @staticmethod
    def _rule_of(ns: str, r: Any) -> Rule:
        def net(attr: str, plen: int) -> str | None:
            addr = r.get_attr(attr)
            return None if addr is None else f"{addr}/{plen}"

        dport = r.get_attr("FRA_DPORT_RANGE")
        lo_hi = None if dport is None else tuple(int(x) for x in str(dport).split(":"))
        proto = r.get_attr("FRA_IP_PROTO")
        action = _RULE_ACTIONS.get(int(r["action"]), f"action {r['action']}")
        return Rule(
            ns,
            int(r.get_attr("FRA_PRIORITY") or 0),
            int(r.get_attr("FRA_FWMARK") or 0),
            int(r.get_attr("FRA_FWMASK") or 0),
            action,  # type: ignore[arg-type]  # an unknown action never equals a wanted rule
            table=int(r.get_attr("FRA_TABLE") or r["table"]) if action == "lookup" else 0,
            goto=int(r.get_attr("FRA_GOTO") or 0),
            iif=r.get_attr("FRA_IIFNAME"),
            src=net("FRA_SRC", int(r["src_len"])),
            dst=net("FRA_DST", int(r["dst_len"])),
            ipproto=None if proto is None else int(proto),
            dport=lo_hi,  # type: ignore[arg-type]
        )

    @staticmethod
    def _rule_args(o: Rule) -> dict[str, Any]:
        args: dict[str, Any] = {
            "family": socket.AF_INET,
            "priority": o.pref,
            "fwmark": o.mark,
            "fwmask": o.mask,
            "protocol": RTPROT_YUNHAN,
        }
        if o.action == "lookup":
            args["table"] = o.table
        elif o.action == "goto":
            args["action"] = FR_ACT_GOTO
            args["goto"] = o.goto
        elif o.action == "blackhole":
            args["action"] = FR_ACT_BLACKHOLE
        else:  # observed only ("action N", a rule of ours changed by hand): to delete it
            args["action"] = int(str(o.action).rsplit(" ", 1)[-1])
        if o.iif is not None:
            args["iifname"] = o.iif
        for side in ("src", "dst"):
            cidr = getattr(o, side)
            if cidr is not None:
                addr, plen = cidr.split("/")
                args[side] = addr
                args[f"{side}_len"] = int(plen)
        if o.ipproto is not None:
            args["ip_proto"] = o.ipproto
        if o.dport is not None:
            args["dport_range"] = f"{o.dport[0]}:{o.dport[1]}"
        return args

    def _observe_nft(self, ns: str) -> list[Obj]:
        """Port filters (`netdev yunhan`) and routing marks (`ip yunhan`), from one listing
        of the namespace's ruleset (one libnftables call per namespace, not one per table)."""
        listing = nft.run(ns, "list ruleset", self._runner(ns))
        tables: dict[tuple[str, str], list[Any]] = {}
        for item in listing.get("nftables", []):
            body = next(iter(item.values()), None) if isinstance(item, dict) else None
            if isinstance(body, dict) and "family" in body:
                name = body["table"] if "table" in body else body.get("name", "")
                tables.setdefault((body["family"], name), []).append(item)
        objs: list[Obj] = []
        filters = tables.get((nft.FAMILY, nft.TABLE))
        if filters:
            parsed = nft.parse_table({"nftables": filters})
            objs.extend(Filter(ns, n, mac, ips, fwd) for n, (mac, ips, fwd) in parsed.items())
        marks = tables.get((nftroute.FAMILY, nftroute.TABLE))
        if marks:
            ports, sources = nftroute.parse({"nftables": marks})
            objs.append(Marks(ns, ports, sources))
        fw = tables.get((nftsg.FAMILY, nftsg.TABLE))
        if fw:
            zone, groups, fports, acls = nftsg.parse({"nftables": fw})
            objs.append(Firewall(ns, zone, groups, fports, acls))
        return objs

    def _observe_links(
        self, ns: str, ipr: IPRoute, mine: Callable[[str, str | None], bool], ends: list[_End]
    ) -> tuple[list[Obj], dict[int, str], set[str]]:
        """LinkUp of the links `mine(ifname, kind)` selects (their veths into `ends`), the
        index -> name map, and the set of selected names."""
        objs: list[Obj] = []
        names: dict[int, str] = {}
        managed: set[str] = set()
        links = ipr.get_links()
        self._remember_links(ns, links)
        for link in links:
            idx = int(link["index"])
            ifname = link.get_attr("IFLA_IFNAME")
            names[idx] = ifname
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            if not mine(ifname, kind):
                continue
            managed.add(ifname)
            if kind == "veth":
                peer = int(link.get_attr("IFLA_LINK") or 0)
                mac = str(link.get_attr("IFLA_ADDRESS") or "")
                ends.append((ns, ifname, idx, peer, mac, int(link.get_attr("IFLA_MTU"))))
            elif kind == "vxlan":
                objs.append(_vxlan_of(ns, link))
            if int(link["flags"]) & IFF_UP:
                objs.append(LinkUp(ns, ifname))
        return objs, names, managed

    def _observe_on(
        self, ns: str, ipr: IPRoute, names: dict[int, str], managed: set[str]
    ) -> list[Obj]:
        """Addresses (but 127.0.0.1), our routes and permanent neighbours on `managed`."""
        objs: list[Obj] = []
        for a in ipr.get_addr(family=socket.AF_INET):
            addr = a.get_attr("IFA_ADDRESS")
            dev = names.get(int(a["index"]))
            if dev in managed and addr != "127.0.0.1":
                objs.append(Address(ns, dev, f"{addr}/{a['prefixlen']}"))
        for r in ipr.get_routes(family=socket.AF_INET):
            oif = r.get_attr("RTA_OIF")
            if int(r["proto"]) == RTPROT_YUNHAN and names.get(int(oif or 0)) in managed:
                objs.append(self._route_of(ns, r, names))
        for n in ipr.get_neighbours(family=socket.AF_INET):
            ndev = names.get(int(n["ifindex"]))
            if ndev in managed and int(n["state"]) & NUD_PERMANENT:
                objs.append(Neigh(ns, ndev, n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")))
        return objs

    def _observe_gw(self, ns: str, near: list[_End]) -> list[Obj]:
        """A NAT gateway's namespace: its links' gateway ends, what is on them, sysctls
        and the NAT table (its links themselves are paired up by `observe`)."""
        ipr = self._ipr(ns)
        with _errors(f"observe {ns}", netns=ns):
            gw_ifs = (GW_VPC_IFNAME, GW_PUB_IFNAME)
            objs, names, managed = self._observe_links(
                ns, ipr, lambda n, k: n == "lo" or (n in gw_ifs and k == "veth"), near
            )
            objs.extend(self._observe_on(ns, ipr, names, managed))
        run = self._runner(ns)
        values = nsutil.read_sysctls(ns, list(NATGW_SYSCTLS), run)
        objs.extend(Sysctl(ns, p, v) for p, v in values.items() if v is not None)
        try:
            listing = nft.run(ns, f"list table {NAT_FAMILY} {NAT_TABLE}", run)
            objs.append(parse_nat(ns, listing))
        except DriverError as exc:
            if exc.errno != errno.ENOENT:
                raise
        return objs

    def _observe_hybrid(self, ns: str, near: list[_End]) -> list[Obj]:
        """A hybrid gateway replica's namespace: vpc0's near end (paired up by `observe`),
        the line, what is on both, sysctls, and its FRR instance."""
        ipr = self._ipr(ns)
        with _errors(f"observe {ns}", netns=ns):
            objs, names, managed = self._observe_links(
                ns,
                ipr,
                lambda n, k: (
                    n == "lo"
                    or (n == GW_VPC_IFNAME and k == "veth")
                    or (n == HYBRID_LINE_IFNAME and k == "vxlan")
                ),
                near,
            )
            objs.extend(self._observe_on(ns, ipr, names, managed))
            objs.extend(self._observe_fdb(ns, ipr, names, HYBRID_LINE_IFNAME))
        values = nsutil.read_sysctls(ns, list(HYBRID_SYSCTLS), self._runner(ns))
        objs.extend(Sysctl(ns, p, v) for p, v in values.items() if v is not None)
        bgp = self._observe_bgp(ns)
        if bgp is not None:
            objs.append(bgp)
        return objs

    @staticmethod
    def _observe_fdb(ns: str, ipr: IPRoute, names: dict[int, str], ifname: str) -> list[Fdb]:
        """The FDB entries with a destination on `ifname` (the device also lists its own
        MAC and the kernel's local entries). The all-zeros entry may hold several
        destinations (each frame is sent to all): they read as one entry whose `dst`
        lists them, which never equals a wanted one unless it is exactly that one."""
        dsts: dict[str, list[str]] = {}
        for n in ipr.get_neighbours(family=socket.AF_BRIDGE):
            dst = n.get_attr("NDA_DST")
            if names.get(int(n["ifindex"])) == ifname and dst:
                dsts.setdefault(str(n.get_attr("NDA_LLADDR")), []).append(str(dst))
        return [Fdb(ns, ifname, mac, ",".join(sorted(d))) for mac, d in dsts.items()]

    def _observe_host(self, far: list[_End], gateways: bool) -> list[Obj]:
        """The gateways' ends in the host namespace and what is on them, and ip_forward
        while a gateway runs here (the host forwards for them). Nothing else there is
        ours: other links, and their routes, are never read."""
        try:
            ipr = self._ipr(HOST_NETNS)
            with _errors("observe the host namespace", netns=self.host_netns):
                objs, names, managed = self._observe_links(
                    HOST_NETNS, ipr, lambda n, k: k == "veth" and bool(_HOST_END_RE.match(n)), far
                )
                if managed:
                    objs.extend(self._observe_on(HOST_NETNS, ipr, names, managed))
            if not (gateways or managed):
                return objs
            values = nsutil.read_sysctls(
                self.host_netns or "", list(HOST_SYSCTLS), self._runner(HOST_NETNS)
            )
        except DriverError as exc:
            self.unobserved[HOST_NETNS] = exc
            return []
        objs.extend(Sysctl(HOST_NETNS, p, v) for p, v in values.items() if v is not None)
        return objs

    def _observe_uplink(self) -> list[Obj]:
        """Our announcements: /32 routes of ours in the uplink that still point at us."""
        if self.uplink is None:
            return []
        try:
            with _errors("observe the uplink", netns=self.uplink.netns):
                routes = self._ipr(UPLINK_NETNS).get_routes(family=socket.AF_INET)
        except DriverError as exc:
            self.unobserved[UPLINK_NETNS] = exc
            return []
        return [
            Announce(str(r.get_attr("RTA_DST")))
            for r in routes
            if int(r["proto"]) == RTPROT_YUNHAN
            and r["dst_len"] == 32
            and int(r.get_attr("RTA_TABLE") or r["table"]) == RT_TABLE_MAIN
            and r.get_attr("RTA_GATEWAY") == self.uplink.via
        ]

    # -- applying ---------------------------------------------------------------------------

    def apply(self, op: Op) -> None:
        o = op.obj
        try:
            with _errors(str(op), netns=getattr(o, "netns", getattr(o, "name", None))):
                if op.action == "delete":
                    assert op.old is not None
                    self._delete(op.old)
                elif op.action == "replace":
                    assert op.old is not None and op.new is not None
                    self._replace(op.old, op.new)
                else:
                    assert op.new is not None
                    self._create(op.new)
        finally:
            if isinstance(o, Vxlan | Veth | VethPair):
                self._forget_links(
                    o.netns, o.peer_netns if isinstance(o, Veth | VethPair) else None
                )

    def _create(self, o: Obj) -> None:
        match o:
            case Netns():
                # A socket cached under this name belongs to a namespace that was deleted
                # by hand: the new one is another namespace.
                self._drop_sock(o.name)
                try:
                    nsutil.create_netns(o.name)
                except OSError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
            case Sysctl():
                nsutil.write_sysctls(o.netns, {o.path: o.value}, self._runner(o.netns))
            case Vxlan():
                self._create_vxlan(o)
            case Veth():
                self._create_veth(o)
            case LinkUp():
                self._ipr(o.netns).link("set", index=self._index(o.netns, o.ifname), state="up")
            case Address():
                ip, plen = o.cidr.split("/")
                try:
                    self._ipr(o.netns).addr(
                        "add", index=self._index(o.netns, o.ifname), address=ip, prefixlen=int(plen)
                    )
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:  # the key is the address: same thing
                        raise
            case Neigh():
                self._ipr(o.netns).neigh(
                    "replace",
                    ifindex=self._index(o.netns, o.ifname),
                    dst=o.ip,
                    lladdr=o.mac,
                    state=NUD_PERMANENT,
                )
            case Fdb():
                # The kernel refuses NLM_F_REPLACE for the all-zeros (default) entry
                # (EOPNOTSUPP: it is a list of destinations): append, which is a no-op for
                # one already listed. A changed one is replaced by `_replace`.
                self._ipr(o.netns).fdb(
                    "append" if o.mac == ZERO_MAC else "replace",
                    ifindex=self._index(o.netns, o.ifname),
                    lladdr=o.mac,
                    dst=o.dst,
                    state=NUD_PERMANENT,
                    flags=NTF_SELF,
                )
            case KRoute():
                # "replace" is add-or-update on the route's key (table, dst, metric): the
                # ensure semantics in one call.
                self._ipr(o.netns).route("replace", **self._route_args(o))
                if (
                    o.kind in ("local", "remote")
                    and o.dst.endswith("/32")
                    and o.table == 254
                    and o.netns != HOST_NETNS
                ):
                    self._announce(o.netns, o.dst.split("/", 1)[0], o.dev)
            case Filter():
                try:
                    nft.run(
                        o.netns,
                        nft.chain_batch(
                            o.ifname, o.mac, o.ips, exists=False, forwarder=o.forwarder
                        ),
                        self._runner(o.netns),
                    )
                except DriverError as exc:
                    if "File exists" not in exc.message:
                        raise
                    nft.run(
                        o.netns,
                        nft.chain_batch(o.ifname, o.mac, o.ips, exists=True, forwarder=o.forwarder),
                        self._runner(o.netns),
                    )
            case Rule():
                try:
                    self._ipr(o.netns).rule("add", **self._rule_args(o))
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:  # the same rule, attribute for attribute
                        raise
            case Marks():
                nft.run(o.netns, nftroute.table_batch(o.ports, o.sources), self._runner(o.netns))
            case Firewall():
                nft.run(
                    o.netns,
                    nftsg.table_batch(o.zone, o.groups, o.ports, o.acls),
                    self._runner(o.netns),
                )
            case Uts():
                self.sandbox.ensure_uts(o.netns, o.hostname)
            case Process():
                self.sandbox.start(o.netns, o.argv)
            case VethPair():
                self._create_pair(o)
            case NatTable():
                nft.run(o.netns, nat_batch(o), self._runner(o.netns))
            case Announce():
                self._ipr(UPLINK_NETNS).route("replace", **self._announce_args(o))
            case Bgp():
                self._replace_bgp(None, o)

    def _replace(self, old: Obj, new: Obj) -> None:
        match new:
            case Firewall():
                assert isinstance(old, Firewall)
                rules_same = (old.zone, old.ports, old.acls) == (new.zone, new.ports, new.acls)
                batch = nftsg.members_batch(old.groups, new.groups) if rules_same else None
                if batch is None:
                    self._create(new)  # the whole table, in one transaction
                elif batch["nftables"]:
                    nft.run(new.netns, batch, self._runner(new.netns))
            case Vxlan():
                assert isinstance(old, Vxlan)
                same = (old.vni, old.local, old.port, old.gbp)
                if same == (new.vni, new.local, new.port, new.gbp):
                    self._ipr(new.netns).link(
                        "set", index=self._index(new.netns, new.ifname), mtu=new.mtu,
                        address=new.mac,
                    )  # fmt: skip
                    if old.learning != new.learning:
                        self._ipr(new.netns).link(
                            "set", index=self._index(new.netns, new.ifname), kind="vxlan",
                            vxlan_learning=int(new.learning),
                        )  # fmt: skip
                else:
                    self._delete(old)
                    self._create(new)
            case Veth():
                assert isinstance(old, Veth)
                if old.peer_netns is not None and old.peer_netns == new.peer_netns:
                    self._ipr(new.netns).link(
                        "set", index=self._index(new.netns, new.ifname), mtu=new.mtu
                    )
                    peer = self._ipr(new.peer_netns)
                    peer.link(
                        "set", index=self._index(new.peer_netns, new.peer_ifname), mtu=new.mtu,
                        address=new.peer_mac,
                    )  # fmt: skip
                else:
                    self._delete(old)
                    self._create(new)
            case Filter():
                nft.run(
                    new.netns,
                    nft.chain_batch(
                        new.ifname, new.mac, new.ips, exists=True, forwarder=new.forwarder
                    ),
                    self._runner(new.netns),
                )
            case Process():
                self.sandbox.stop(new.netns)
                self._create(new)
            case VethPair():
                self._delete(old)
                self._create(new)
            case Rule():
                # A rule has no identity but its attributes: the old one goes, the new
                # one comes (a packet between the two takes the next rule).
                self._delete(old)
                self._create(new)
            case Netns():
                assert isinstance(old, Netns)
                if old.role == "stale":  # a file that is no namespace: make a real one
                    self._delete(old)
                    self._create(new)
                # otherwise a role is only our reading of the name
            case Fdb() if new.mac == ZERO_MAC:
                # Appending would keep the old destination beside the new one.
                self._delete(old)
                self._create(new)
            case Bgp():
                assert isinstance(old, Bgp)
                self._replace_bgp(old, new)
            case _:
                # Sysctl, neighbours, FDB, routes: set / replace in place; the rest have
                # no attribute outside their key.
                self._create(new)

    def _delete(self, o: Obj) -> None:
        match o:
            case Netns():
                self._drop_sock(o.name)
                if o.role == "hybrid":
                    # FRR first (its run dirs go with it): its daemons would otherwise
                    # keep the namespace alive, still speaking BGP from nowhere.
                    frr.stop(o.name)
                if o.role in ("instance", "hybrid"):
                    nsutil.end_all(o.name)
                try:
                    netns.remove(o.name)
                except OSError as exc:
                    if exc.errno not in _GONE:
                        raise
            case Sysctl():
                pass
            case Vxlan() | Veth():
                _gone_ok(
                    lambda: self._ipr(o.netns).link("del", index=self._index(o.netns, o.ifname))
                )
            case LinkUp():
                _gone_ok(
                    lambda: self._ipr(o.netns).link(
                        "set", index=self._index(o.netns, o.ifname), state="down"
                    )
                )
            case Address():
                ip, plen = o.cidr.split("/")
                _gone_ok(
                    lambda: self._ipr(o.netns).addr(
                        "del", index=self._index(o.netns, o.ifname), address=ip, prefixlen=int(plen)
                    )
                )
            case Neigh():
                _gone_ok(
                    lambda: self._ipr(o.netns).neigh(
                        "del", ifindex=self._index(o.netns, o.ifname), dst=o.ip
                    )
                )
            case Fdb() if o.mac == ZERO_MAC:
                # Without a destination: the whole entry, every destination it lists.
                _gone_ok(
                    lambda: self._ipr(o.netns).fdb(
                        "del", ifindex=self._index(o.netns, o.ifname), lladdr=o.mac
                    )
                )
            case Fdb():
                _gone_ok(
                    lambda: self._ipr(o.netns).fdb(
                        "del", ifindex=self._index(o.netns, o.ifname), lladdr=o.mac, dst=o.dst
                    )
                )
            case KRoute() if o.kind == "multipath":
                # By its key alone: a next hop's device may be gone already, and the route
                # (table, dst, metric) is ours whatever its next hops.
                dst, plen = o.dst.split("/")
                key = {"dst": dst, "dst_len": int(plen), "table": o.table, "priority": o.metric}
                _gone_ok(lambda: self._ipr(o.netns).route("del", proto=RTPROT_YUNHAN, **key))
            case KRoute():
                _gone_ok(lambda: self._ipr(o.netns).route("del", **self._route_args(o)))
            case Filter():
                _gone_ok(
                    lambda: nft.run(o.netns, nft.delete_chain_cmd(o.ifname), self._runner(o.netns))
                )
            case Rule():
                _gone_ok(lambda: self._ipr(o.netns).rule("del", **self._rule_args(o)))
            case Marks():
                _gone_ok(lambda: nft.run(o.netns, nftroute.delete_cmd(), self._runner(o.netns)))
            case Firewall():
                _gone_ok(lambda: nft.run(o.netns, nftsg.delete_cmd(), self._runner(o.netns)))
            case Uts():
                self.sandbox.remove_uts(o.netns)
            case Process():
                self.sandbox.stop(o.netns)
            case Bgp():
                frr.stop(o.netns)
            case VethPair():
                _gone_ok(
                    lambda: self._ipr(o.netns).link("del", index=self._index(o.netns, o.ifname))
                )
            case NatTable():
                _gone_ok(lambda: nft.run(o.netns, delete_nat_cmd(), self._runner(o.netns)))
            case Announce():
                # With the gateway given, the kernel deletes the route only while it still
                # points at us (ESRCH otherwise: another host announces it now).
                _gone_ok(lambda: self._ipr(UPLINK_NETNS).route("del", **self._announce_args(o)))

    @staticmethod
    def _observe_bgp(ns: str) -> Bgp | None:
        """The replica's FRR instance: whether its daemons all live, and the session last
        applied to it, read from the config `frr` keeps in its run dir (None: no config
        there, or one that holds no session). Not read back from bgpd (a vtysh run per
        replica at every observation): a change made by hand through vtysh is not seen."""
        running = frr.running(ns)
        try:
            config = frr.applied_config(ns)
            session = None if config is None else frr.parse_session(config)
        except (OSError, ValueError, ValidationError) as exc:  # unreadable: as if none
            log.warning("reading the FRR config of %s: %s", ns, exc)
            session = None
        if not running and session is None:
            return None
        return Bgp(ns, session, running)

    @staticmethod
    def _replace_bgp(old: Bgp | None, new: Bgp) -> None:
        """Start the replica's FRR with the whole session, or, while it runs, apply only
        the difference (a change of what is announced must not reset the session: the
        route switch relies on it)."""
        assert new.session is not None, "a wanted Bgp has a session"
        if old is not None and old.running:
            # Started whole by frr itself if its daemons died since.
            frr.apply_session(new.netns, old.session, new.session)
        else:
            # Not running: what is left of a dead instance is cleared first by `start`.
            frr.start(new.netns, frr.render_session(new.session))

    def _announce_args(self, o: Announce) -> dict[str, Any]:
        assert self.uplink is not None
        ipr = self._ipr(UPLINK_NETNS)
        # The uplink's own port toward us: where it routes our underlay address (in the
        # lab, the core's end of this host's link).
        found = ipr.route("get", dst=self.uplink.via)
        oif = found[0].get_attr("RTA_OIF") if found else None
        if oif is None:
            raise DriverError(
                f"the uplink has no route to {self.uplink.via}",
                errno=errno.ENETUNREACH,
                netns=self.uplink.netns,
            )
        return {
            "dst": o.ip,
            "dst_len": 32,
            "table": RT_TABLE_MAIN,
            "proto": RTPROT_YUNHAN,
            "gateway": self.uplink.via,
            "oif": int(oif),
            "flags": RTNH_F_ONLINK,
        }

    def _create_pair(self, o: VethPair) -> None:
        # Made from the peer's side, the gateway end placed into the gateway namespace by
        # name: the peer may be the agent's own namespace, which has no name.
        if o.peer_netns is None:
            raise DriverError(f"link {o.ifname} in {o.netns} has no peer", errno=errno.EINVAL)
        pns = o.peer_netns
        peer = self._ipr(pns)
        args = dict(
            ifname=o.peer_ifname,
            kind="veth",
            address=o.peer_mac,
            mtu=o.mtu,
            peer={"ifname": o.ifname, "net_ns_fd": o.netns, "address": o.mac, "mtu": o.mtu},
        )
        try:
            peer.link("add", **args)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            # An end left from an earlier pair (a namespace still being destroyed, a
            # link made by hand): remove both names, then add.
            self._forget_links(pns, o.netns)
            _gone_ok(lambda: peer.link("del", index=self._index(pns, o.peer_ifname)))
            gw = self._ipr(o.netns)
            _gone_ok(lambda: gw.link("del", index=self._index(o.netns, o.ifname)))
            peer.link("add", **args)

    def _announce(self, ns: str, ip: str, route_dev: str | None) -> None:
        """Tell the instances of `ns` that `ip` is now reachable (gratuitous ARP, best effort).

        An instance that sent to `ip` before it existed holds an INCOMPLETE or FAILED
        neighbour entry, and the kernel asks again only once a second (retrans_time): the
        new instance would stay unreachable for up to a second after its route is in place.
        A gratuitous ARP request from each port, sender `ip` with the port's own MAC (what
        proxy ARP answers with), updates such an entry at once (arp_process updates an
        existing entry from any ARP it receives) and creates none where there is none. A
        frame that cannot be sent changes nothing: the kernel's own retry still comes.
        """
        try:
            table = self._links.get(ns) or self._remember_links(ns, self._ipr(ns).get_links())
            ports = [
                (name, mac)
                for name, (_idx, mac, kind) in table.items()
                if kind == "veth" and name != route_dev and mac
            ]
            if not ports:
                return
            sock = self._packet.get(ns)
            if sock is None:
                sock = self._runner(ns)(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
                self._packet[ns] = sock
            for name, mac in ports:
                with contextlib.suppress(OSError):  # a port that is down: nobody to tell
                    sock.sendto(garp_frame(mac, ip), (name, ETH_P_ARP))
        except (OSError, NetlinkError, DriverError) as exc:
            log.debug("announcing %s in %s failed: %s", ip, ns, exc)

    def _route_args(self, o: KRoute) -> dict[str, Any]:
        dst, plen = o.dst.split("/")
        args: dict[str, Any] = {
            "dst": dst,
            "dst_len": int(plen),
            "table": o.table,
            "priority": o.metric,
            "proto": RTPROT_YUNHAN,
        }
        if o.kind in _RTN_OF_KIND:
            args["type"] = _RTN_OF_KIND[o.kind]
            return args
        if o.kind == "multipath":
            # Every next hop onlink: link-local next hops (vxlan0) or a replica's address
            # on its port, each resolved by its permanent neighbour.
            args["family"] = socket.AF_INET  # pyroute2 does not infer it from the hops
            args["multipath"] = [
                {"gateway": via, "oif": self._index(o.netns, dev), "flags": RTNH_F_ONLINK}
                for via, dev in o.nexthops
            ]
            return args
        assert o.dev is not None
        args["oif"] = self._index(o.netns, o.dev)
        if o.realm:
            args["flow"] = o.realm
        if o.kind == "local":
            args["scope"] = 253  # link: the destination is directly on the port
        else:
            args["gateway"] = o.via
            if o.kind == "remote" or o.onlink:
                # The next hop is a link-local address that exists nowhere (remote), or an
                # instance's address on its port (the VPC namespace has no subnet): onlink
                # tells the kernel to take it as reachable on the device, where its
                # permanent neighbour entry resolves it.
                args["flags"] = RTNH_F_ONLINK
        return args

    def _create_vxlan(self, o: Vxlan) -> None:
        # Created by a socket in the HOST namespace with IFLA_NET_NS_FD naming the VPC
        # namespace: the kernel registers the device directly in the VPC namespace (no
        # temporary name in the host namespace) while the device's own net, where its UDP
        # socket is opened on link up, stays the host's, next to the underlay.
        host = self._ipr(self.host_netns)
        args = dict(
            ifname=o.ifname,
            kind="vxlan",
            vxlan_id=o.vni,
            vxlan_port=o.port,
            vxlan_local=o.local,
            vxlan_learning=int(o.learning),
            address=o.mac,
            mtu=o.mtu,
            net_ns_fd=o.netns,
        )
        if o.gbp:  # a netlink flag: present means on
            args["vxlan_gbp"] = True
        try:
            host.link("add", **args)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            # Something named vxlan0 is there but observation did not take it for ours
            # (wrong kind) or it changed since: replace it.
            _gone_ok(lambda: self._ipr(o.netns).link("del", index=self._index(o.netns, o.ifname)))
            host.link("add", **args)

    def _create_veth(self, o: Veth) -> None:
        if o.peer_netns is None:
            raise DriverError(
                f"port {o.ifname} in {o.netns} has no instance on this host",
                errno=errno.ENOENT,
                netns=o.netns,
            )
        args = dict(
            ifname=o.ifname,
            kind="veth",
            mtu=o.mtu,
            peer={
                "ifname": o.peer_ifname,
                "net_ns_fd": o.peer_netns,
                "address": o.peer_mac,
                "mtu": o.mtu,
            },
        )
        ipr = self._ipr(o.netns)
        try:
            ipr.link("add", **args)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            # One end exists without being a pair of ours: remove both names, then add.
            _gone_ok(lambda: ipr.link("del", index=self._index(o.netns, o.ifname)))
            pns = o.peer_netns
            peer = self._ipr(pns)
            _gone_ok(lambda: peer.link("del", index=self._index(pns, o.peer_ifname)))
            ipr.link("add", **args)
