"""The real data plane: netlink through pyroute2, nftables through libnftables.

The agent stays in the root namespace and programs every namespace of its host through a
netlink socket opened inside that namespace (see `_ipr`). What counts as ours:

* namespaces named `<prefix>v<vni>` (VPC) and `<prefix>i-<id>` (instance);
* inside them: vxlan0, the veth ports, `lo`/`eth0` state, every IPv4 address except
  127.0.0.1, permanent neighbours, vxlan FDB entries with a destination, routes whose
  rtnetlink protocol is RTPROT_YUNHAN, the `netdev yunhan` nft table;
* UTS namespace files under /run/yunhan/uts and process records in the state dir, both
  under the prefix.

Every netlink or OS error leaves as DriverError(errno=...) `from` the original.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from yunhan.errors import DriverError
from yunhan.net import nft, nsutil
from yunhan.net.driver import Sandbox
from yunhan.net.naming import INSTANCE_IFNAME, VXLAN_IFNAME, Naming
from yunhan.net.state import (
    INSTANCE_SYSCTLS,
    RTPROT_YUNHAN,
    VPC_SYSCTLS,
    Address,
    Fdb,
    Filter,
    KRoute,
    LinkUp,
    Neigh,
    Netns,
    Obj,
    Op,
    Process,
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
RTN_UNICAST, RTN_BLACKHOLE, RTN_UNREACHABLE = 1, 6, 7
_RTN_OF_KIND = {"unreachable": RTN_UNREACHABLE, "blackhole": RTN_BLACKHOLE}
_GONE = {errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL}


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


class LinuxDriver:
    """Observe and program this host's namespaces; see the module docstring."""

    def __init__(self, *, naming: Naming, host_netns: str | None, sandbox: Sandbox) -> None:
        self.naming = naming
        self.host_netns = host_netns
        self.sandbox = sandbox  # instances' UTS namespaces and processes
        self._vpc_re = re.compile(re.escape(naming.prefix) + r"v\d+$")
        self._inst_re = re.compile(re.escape(naming.prefix) + r"i-[A-Za-z0-9]+$")
        self._socks: dict[str | None, IPRoute] = {}
        self.unobserved: dict[str, DriverError] = {}

    # -- sockets ---------------------------------------------------------------------------

    def _ipr(self, ns: str | None) -> IPRoute:
        s = self._socks.get(ns)
        if s is None:
            # A netlink socket belongs to the namespace it was created in. Opening it on a
            # thread that entered `ns` costs a thread, where pyroute2's own
            # IPRoute(netns=...) forks a helper process (4x slower, and a fork of a
            # threaded agent); a missing namespace fails with ENOENT, never creates one.
            with _errors(f"netlink socket in {ns or 'root'}", netns=ns):
                s = IPRoute() if ns is None else IPRoute(fileno=nsutil.run_in(_netlink_fd, net=ns))
            self._socks[ns] = s
        return s

    def _drop_sock(self, ns: str) -> None:
        s = self._socks.pop(ns, None)
        if s is not None:
            s.close()

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()

    def _index(self, ns: str, ifname: str) -> int:
        idx = self._ipr(ns).link_lookup(ifname=ifname)
        if not idx:
            raise DriverError(f"no {ifname} in {ns}", errno=errno.ENODEV, netns=ns)
        return int(idx[0])

    # -- observation -----------------------------------------------------------------------

    def namespaces(self) -> dict[str, str]:
        """Our namespaces that exist: name -> "vpc" | "instance"."""
        out: dict[str, str] = {}
        for name in netns.listnetns():
            if self._vpc_re.match(name):
                out[name] = "vpc"
            elif self._inst_re.match(name):
                out[name] = "instance"
        return out

    def observe(self) -> State:
        objs: list[Obj] = []
        self.unobserved = {}
        nss = self.namespaces()
        veths: dict[str, list[tuple[str, int, int, int]]] = {}  # vpc ns -> (name, idx, peer, mtu)
        eth0s: dict[tuple[int, int], tuple[str, str, int]] = {}  # (idx, peer) -> ns, mac, mtu
        for name, role in sorted(nss.items()):
            try:
                inner = self._observe_ns(name, role, veths, eth0s)
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
                found = eth0s.get((peer, idx))
                if found is None:
                    objs.append(Veth(ns, ifname, None, "", mtu))
                else:
                    pns, mac, pmtu = found
                    objs.append(Veth(ns, ifname, pns, mac, mtu if pmtu == mtu else -1))
        # Listed by prefix, kept by exact name: "<p>i-…" of a longer prefix is not ours.
        for ns, host in self.sandbox.list_uts(self.naming.prefix).items():
            if self._inst_re.match(ns):
                objs.append(Uts(ns, host))
        for ns, argv in self.sandbox.running(self.naming.prefix).items():
            if self._inst_re.match(ns):
                objs.append(Process(ns, argv))
        return as_state(objs)

    def _observe_ns(
        self,
        ns: str,
        role: str,
        veths: dict[str, list[tuple[str, int, int, int]]],
        eth0s: dict[tuple[int, int], tuple[str, str, int]],
    ) -> list[Obj]:
        ipr = self._ipr(ns)
        objs: list[Obj] = []
        names: dict[int, str] = {}
        managed: set[str] = {"lo"}
        with _errors(f"observe {ns}", netns=ns):
            links = ipr.get_links()
            for link in links:
                idx = int(link["index"])
                ifname = link.get_attr("IFLA_IFNAME")
                names[idx] = ifname
                info = link.get_attr("IFLA_LINKINFO")
                kind = info.get_attr("IFLA_INFO_KIND") if info else None
                mtu = int(link.get_attr("IFLA_MTU"))
                mac = link.get_attr("IFLA_ADDRESS")
                if role == "vpc" and kind == "vxlan" and ifname == VXLAN_IFNAME:
                    data = info.get_attr("IFLA_INFO_DATA")
                    objs.append(
                        Vxlan(
                            ns,
                            ifname,
                            int(data.get_attr("IFLA_VXLAN_ID")),
                            str(data.get_attr("IFLA_VXLAN_LOCAL")),
                            mac,
                            mtu,
                            int(data.get_attr("IFLA_VXLAN_PORT")),
                            bool(data.get_attr("IFLA_VXLAN_LEARNING")),
                        )
                    )
                    managed.add(ifname)
                elif role == "vpc" and kind == "veth":
                    peer = int(link.get_attr("IFLA_LINK") or 0)
                    veths.setdefault(ns, []).append((ifname, idx, peer, mtu))
                    managed.add(ifname)
                elif role == "instance" and ifname == INSTANCE_IFNAME and kind == "veth":
                    peer = int(link.get_attr("IFLA_LINK") or 0)
                    eth0s[(idx, peer)] = (ns, mac, mtu)
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
                for n in ipr.get_neighbours(family=socket.AF_INET):
                    ndev = names.get(int(n["ifindex"]))
                    if ndev is not None and ndev in managed and int(n["state"]) & NUD_PERMANENT:
                        objs.append(
                            Neigh(ns, ndev, n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"))
                        )
                for n in ipr.get_neighbours(family=socket.AF_BRIDGE):
                    # Only entries with a remote destination: the vxlan device also lists
                    # its own MAC and the kernel's local entries.
                    dst = n.get_attr("NDA_DST")
                    if names.get(int(n["ifindex"])) == VXLAN_IFNAME and dst:
                        objs.append(Fdb(ns, VXLAN_IFNAME, n.get_attr("NDA_LLADDR"), dst))
        if role == "vpc":
            paths = list(VPC_SYSCTLS)
            ports = [p[0] for p in veths.get(ns, [])]
            devsys = [s for p in ports for s in port_sysctls(ns, p)]
            values = nsutil.read_sysctls(ns, paths + [s.path for s in devsys])
            objs.extend(Sysctl(ns, p, v) for p in paths if (v := values[p]) is not None)
            objs.extend(
                Sysctl(ns, s.path, v, s.dev) for s in devsys if (v := values[s.path]) is not None
            )
            objs.extend(self._observe_filters(ns))
        else:
            values = nsutil.read_sysctls(ns, list(INSTANCE_SYSCTLS))
            objs.extend(Sysctl(ns, p, v) for p, v in values.items() if v is not None)
        return objs

    @staticmethod
    def _route_of(ns: str, r: Any, names: dict[int, str]) -> KRoute:
        dst = f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
        table = int(r.get_attr("RTA_TABLE") or r["table"])
        metric = int(r.get_attr("RTA_PRIORITY") or 0)
        rtype = int(r["type"])
        if rtype == RTN_UNREACHABLE:
            return KRoute(ns, dst, "unreachable", table=table, metric=metric)
        if rtype == RTN_BLACKHOLE:
            return KRoute(ns, dst, "blackhole", table=table, metric=metric)
        oif = r.get_attr("RTA_OIF")
        dev = names.get(int(oif)) if oif is not None else None
        via = r.get_attr("RTA_GATEWAY")
        if via is None:
            return KRoute(ns, dst, "local", dev, None, table, metric)
        if dev == VXLAN_IFNAME and int(r["flags"]) & RTNH_F_ONLINK:
            return KRoute(ns, dst, "remote", dev, via, table, metric)
        return KRoute(ns, dst, "gateway", dev, via, table, metric)

    def _observe_filters(self, ns: str) -> list[Obj]:
        try:
            listing = nft.run(ns, f"list table {nft.FAMILY} {nft.TABLE}")
        except DriverError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise
        return [Filter(ns, name, mac, ips) for name, (mac, ips) in nft.parse_table(listing).items()]

    # -- applying ---------------------------------------------------------------------------

    def apply(self, op: Op) -> None:
        o = op.obj
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

    def _create(self, o: Obj) -> None:
        match o:
            case Netns():
                # A socket cached under this name belongs to a namespace that was deleted
                # by hand: the new one is another namespace.
                self._drop_sock(o.name)
                try:
                    netns.create(o.name)
                except OSError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
            case Sysctl():
                nsutil.write_sysctls(o.netns, {o.path: o.value})
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
                self._ipr(o.netns).fdb(
                    "replace",
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
            case Filter():
                try:
                    nft.run(o.netns, nft.chain_batch(o.ifname, o.mac, o.ips, exists=False))
                except DriverError as exc:
                    if "File exists" not in exc.message:
                        raise
                    nft.run(o.netns, nft.chain_batch(o.ifname, o.mac, o.ips, exists=True))
            case Uts():
                self.sandbox.ensure_uts(o.netns, o.hostname)
            case Process():
                self.sandbox.start(o.netns, o.argv)

    def _replace(self, old: Obj, new: Obj) -> None:
        match new:
            case Vxlan():
                assert isinstance(old, Vxlan)
                if (old.vni, old.local, old.port) == (new.vni, new.local, new.port):
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
                nft.run(new.netns, nft.chain_batch(new.ifname, new.mac, new.ips, exists=True))
            case Process():
                self.sandbox.stop(new.netns)
                self._create(new)
            case Netns():
                assert isinstance(old, Netns)
                if old.role == "stale":  # a file that is no namespace: make a real one
                    self._delete(old)
                    self._create(new)
                # otherwise a role is only our reading of the name
            case _:
                # Sysctl, neighbours, FDB, routes: set / replace in place; the rest have
                # no attribute outside their key.
                self._create(new)

    def _delete(self, o: Obj) -> None:
        match o:
            case Netns():
                self._drop_sock(o.name)
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
            case Fdb():
                _gone_ok(
                    lambda: self._ipr(o.netns).fdb(
                        "del", ifindex=self._index(o.netns, o.ifname), lladdr=o.mac, dst=o.dst
                    )
                )
            case KRoute():
                _gone_ok(lambda: self._ipr(o.netns).route("del", **self._route_args(o)))
            case Filter():
                _gone_ok(lambda: nft.run(o.netns, nft.delete_chain_cmd(o.ifname)))
            case Uts():
                self.sandbox.remove_uts(o.netns)
            case Process():
                self.sandbox.stop(o.netns)

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
        assert o.dev is not None
        args["oif"] = self._index(o.netns, o.dev)
        if o.kind == "local":
            args["scope"] = 253  # link: the destination is directly on the port
        else:
            args["gateway"] = o.via
            if o.kind == "remote":
                # The next hop is a link-local address that exists nowhere: onlink tells the
                # kernel to take it as reachable on vxlan0, where its permanent neighbour
                # entry resolves it to the remote VTEP's MAC.
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
