"""The incremental compiler of host documents, fed by the store's change log (issue 6).

Every API process keeps one `Engine` in memory. `load` builds it from a snapshot of the
model; `apply` takes the events of each committed write, in order, and updates only what
they touch. It answers, for any host: its document as keyed entries (`yunhan.net.docentries`),
the revision at which that document last changed, and the entries changed since a revision
an agent holds (a `Delta`). It does no I/O.

The rules are those of `controller.netcompile.compile_hosts` (the full-recompute reference,
held to this engine by tests): a member is an instance with an ip, a mac, a registered host
that has a vtep_index and a subnet of a VPC that has a vni; a host carries a VPC iff one of
its instances is a member; every host with a vtep_index has a document.

How the cost stays proportional to the change (OVN northd's incremental engine is the model):

* VPC-level entries ("vpc/<id>" and its members) exist once, shared by every host carrying
  the VPC; a host's document is its "host" entry plus references to the VPCs it carries.
* Indexes from each input to what it feeds: subnet -> VPC, VPC -> subnets, subnet ->
  instances, host -> instances, instance -> member, VPC -> carrying hosts with member counts,
  host -> VPCs carried.
* An event marks dirty only what it can change; at the end of a revision the dirty members,
  VPC and host entries are recomputed and compared with what they were before the revision,
  so a change that comes back to the same value changes nothing and wakes nobody.
* Changes are logged per VPC as (revision, key) (a removed key is found absent: the log entry
  is its tombstone) and per host as (revision, VPC, gained?). A delta for an agent at R walks
  only the logs of the VPCs its host carries or carried, from R on, found by bisection.
* Logs keep a bounded window of revisions (older deltas become snapshots) and are compacted
  (a key changed many times keeps its last change only).

Distributed routing (issue 8): subnets (with a selector index and a route table), route
tables, routes, policy routes and NAT gateways (with their EIPs and port forwards) are
entries under their VPC, next hops resolved from the VPC's members and the hosts'
condition. A route or policy written recomputes its own entry; anything else touching a
VPC's routing (a member, a host's condition, a subnet, a table, a gateway, an EIP)
recomputes the VPC's routing entries, compared with what they were like everything else.
A host carries a VPC when one of its members or one of its NAT gateways is there.

Security groups (issue 10): each group is one entry under its VPC (its rules); membership
rides in the member entries ("sgs"), so a member joining a group changes its own entry
only, and a rule written changes its group's entry only.

Volumes (issue 12): one entry per volume, "volume/<id>", in the document of the host that
serves it (its status.host) only, outside any VPC; per host a log of (revision, key) like a
VPC's. An attached volume's entry names its instance's network namespace (as the instance's
agent reported it), so an instance write recomputes the entries of its volumes.

A change that the incremental rules do not cover (today: a host renamed under the same id)
falls back to the full path: every derived value is recomputed from the engine's own model
and compared, so deltas and `affected` stay exact, only slower.

Not thread-safe: one task feeds and reads it (the API's event loop).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from yunhan.model.hybrid import announced, replica_up, served_in_idc
from yunhan.net.desired import NATGW_INNER_IP
from yunhan.net.docentries import (
    ACL,
    FLOWLOG,
    GATEWAY,
    GROUP,
    HOST_KEY,
    HYBRID,
    POLICY,
    ROUTE,
    SUBNET,
    TABLE,
    VIP,
    Delta,
    Entries,
    JsonObj,
    acl_entry,
    combine,
    entry_hash,
    flowlog_entry,
    gateway_entry,
    group_entry,
    host_entry,
    hybrid_entry,
    hybrid_replica,
    member_entry,
    member_key,
    nexthop_entry,
    parse_key,
    policy_entry,
    route_entry,
    sub_key,
    subnet_entry,
    table_entry,
    vip_entry,
    volume_entry,
    volume_key,
    vpc_entry,
    vpc_key,
)
from yunhan.net.naming import gateway_ifname, port_ifname
from yunhan.store.resource import Event, Resource

DEFAULT_WINDOW = 50_000  # revisions of change logs kept (older deltas are snapshots)

_KINDS = frozenset(
    {
        "host",
        "vpc",
        "subnet",
        "instance",
        "route_table",
        "route",
        "policy_route",
        "natgw",
        "hybrid_gw",
        "eip",
        "security_group",
        "network_acl",
        "flow_log",
        "vip",
        "volume",
    }
)


@dataclass(frozen=True, slots=True)
class _Host:
    id: str
    name: str
    vtep_index: int | None  # None: not usable yet, the host has no document
    underlay_ip: str
    mtu: int
    up: bool = True  # False once the controller found it lost: next hops there are down


@dataclass(frozen=True, slots=True)
class _Vpc:
    id: str
    vni: int | None  # None: not usable yet, the VPC carries nothing
    cidrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Subnet:
    id: str
    vpc: str
    cidr: str
    index: int | None = None  # its selector; None: not given one yet (main table only)
    table: str | None = None  # its route table (None: the VPC's default)
    acl: str | None = None  # its network ACL
    serve: str | None = None  # located in an IDC: where it is served ("idc" or "cloud")
    site: str | None = None  # located in an IDC: the site's name


@dataclass(frozen=True, slots=True)
class _Instance:
    id: str
    name: str
    subnet: str
    ip: str | None
    mac: str | None
    host: str | None
    command: tuple[str, ...] | None
    sgs: tuple[str, ...] = ()
    netns: str | None = None  # as its agent reported it (the volumes attached name it)


@dataclass(frozen=True, slots=True)
class _Vip:
    """A VIP as the data plane sees it: its address rides in the `allowed_ips` of the
    member it is delivered to (`status.delivered_to`); its own entry (address, allowed
    instances, epoch: what an agent needs to follow claims) is kept as a `_Group` of kind
    VIP, which depends on nothing else either."""

    id: str
    vpc: str
    ip: str
    to: str | None  # instance id
    entry: JsonObj


@dataclass(frozen=True, slots=True)
class _Volume:
    """A volume: its entry but for the netns of the instance it is attached to."""

    id: str
    host: str | None  # the host serving it (status.host)
    instance: str | None  # attached to
    name: str
    size: int
    zone: str
    tiers: tuple[tuple[int, int], ...] | None
    path: str
    restore: tuple[int, int] | None
    source: tuple[str, int] | None
    delete: bool = False  # deleted: kept until its host reports its data gone


@dataclass(frozen=True, slots=True)
class _Group:
    """An object of a VPC whose entry depends on nothing else: a security group (its
    rules; membership rides in member entries) or a flow log."""

    id: str
    vpc: str
    entry: JsonObj  # its entry, built once per write of the object
    sub: str = GROUP  # its entry kind: GROUP, FLOWLOG or VIP


@dataclass(frozen=True, slots=True)
class _Acl:
    id: str
    vpc: str
    rules: tuple[JsonObj, ...]


@dataclass(frozen=True, slots=True)
class _Table:
    id: str
    vpc: str
    index: int | None
    default: bool


NextHopRef = tuple[str, str | None]  # (type, instance/gateway id or VIP address)


@dataclass(frozen=True, slots=True)
class _Route:
    id: str
    vpc: str
    table: str
    dst: str
    priority: int
    nh: NextHopRef


@dataclass(frozen=True, slots=True)
class _Policy:
    id: str
    vpc: str
    table: str
    index: int | None
    priority: int
    src: str | None
    dst: str | None
    proto: str
    port: tuple[int, int] | None
    action: str
    nh: NextHopRef | None


@dataclass(frozen=True, slots=True)
class _Gateway:
    id: str
    vpc: str
    index: int | None
    host: str | None
    public_ip: str
    subnets: tuple[str, ...]
    forwards: tuple[tuple[str, int, str, int], ...]  # (proto, port, instance id, to_port)


@dataclass(frozen=True, slots=True)
class _Hybrid:
    """A hybrid gateway: session parameters and replicas (index, host, line ip, established)."""

    id: str
    vpc: str
    index: int | None
    site: str
    asn: int
    peer_ip: str
    peer_asn: int
    md5_secret: str | None
    bfd: bool
    line_vni: int
    line_vtep: str
    replicas: tuple[tuple[int, str, str, bool], ...]


@dataclass(frozen=True, slots=True)
class _Eip:
    id: str
    address: str
    instance: str | None
    natgw: str | None


_Obj = (
    _Host
    | _Vpc
    | _Subnet
    | _Instance
    | _Table
    | _Route
    | _Policy
    | _Gateway
    | _Hybrid
    | _Eip
    | _Group
    | _Acl
    | _Vip
    | _Volume
)


# Parsing follows the reference inputs of the controller loop (`_compile_inputs`).
def _host(r: Resource) -> _Host:
    vtep = r.status.get("vtep_index")
    return _Host(
        r.id,
        r.name,
        int(vtep) if vtep else None,
        str(r.spec.get("underlay_ip", "")),
        int(r.spec.get("mtu", 1500)),
        r.status.get("condition") != "lost",
    )


def _vpc(r: Resource) -> _Vpc:
    vni = r.status.get("vni")
    return _Vpc(r.id, int(vni) if vni else None, tuple(r.spec.get("cidrs", ())))


def _subnet(r: Resource) -> _Subnet:
    index = r.status.get("index")
    table = r.spec.get("route_table")
    location = r.spec.get("location")
    return _Subnet(
        r.id,
        r.spec["vpc"],
        r.spec["cidr"],
        int(index) if index else None,
        table,
        r.spec.get("acl"),
        str(r.spec.get("serve", "idc")) if location else None,
        str(location).split(":", 1)[1] if location else None,
    )


def _hybrid(r: Resource) -> _Hybrid:
    line = r.status.get("line") or {}
    return _Hybrid(
        r.id,
        r.spec["vpc"],
        _index(r),
        str(r.status.get("site_name") or ""),
        int(r.spec["asn"]),
        str(r.spec["peer_ip"]),
        int(r.spec["peer_asn"]),
        r.spec.get("md5_secret") or None,
        bool(r.spec.get("bfd", True)),
        int(line.get("vni") or 0),
        str(line.get("vtep") or ""),
        tuple(
            (int(x["index"]), str(x["host"]), str(x["line_ip"]), replica_up(x))
            for x in r.status.get("replicas") or ()
            if x.get("host") and x.get("state") != "unplaced"
        ),
    )


def _nh(spec: object) -> NextHopRef | None:
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        return None
    kind = spec["type"]
    ref = spec.get("ip") if kind == "vip" else spec.get("id")
    return (kind, None if ref is None else str(ref))


def _index(r: Resource) -> int | None:
    i = r.status.get("index")
    return int(i) if i else None


def _route(r: Resource) -> _Route:
    return _Route(
        r.id,
        r.spec["vpc"],
        r.spec["table"],
        r.spec["dst"],
        int(r.spec.get("priority", 100)),
        _nh(r.spec.get("next_hop")) or ("blackhole", None),
    )


def _policy(r: Resource) -> _Policy:
    port = r.spec.get("port")
    return _Policy(
        r.id,
        r.spec["vpc"],
        r.spec["table"],
        _index(r),
        int(r.spec["priority"]),
        r.spec.get("src"),
        r.spec.get("dst"),
        r.spec.get("proto", "any"),
        (int(port[0]), int(port[1])) if port else None,
        r.spec.get("action", "allow"),
        _nh(r.spec.get("next_hop")),
    )


def _gateway(r: Resource) -> _Gateway:
    return _Gateway(
        r.id,
        r.spec["vpc"],
        _index(r),
        r.status.get("host") or None,
        str(r.status.get("public_ip") or ""),
        tuple(r.spec.get("subnets", ())),
        tuple(
            (str(f["proto"]), int(f["port"]), str(f["instance"]), int(f["to_port"]))
            for f in r.spec.get("forwards", ())
        ),
    )


def _eip(r: Resource) -> _Eip:
    return _Eip(
        r.id,
        str(r.status.get("address") or ""),
        r.status.get("instance") or None,
        r.status.get("natgw") or None,
    )


def _instance(r: Resource) -> _Instance:
    cmd = r.spec.get("command")
    return _Instance(
        r.id,
        r.name,
        r.spec["subnet"],
        r.status.get("ip"),
        r.status.get("mac"),
        r.status.get("host"),
        tuple(cmd) if cmd else None,
        tuple(r.spec.get("security_groups") or ()),
        r.status.get("netns") or None,
    )


def _volume(r: Resource) -> _Volume:
    att = r.spec.get("attachment") or {}
    rest = r.spec.get("restore")
    src = r.spec.get("source")
    tiers = r.spec.get("tiers")
    return _Volume(
        r.id,
        r.status.get("host") or None,
        att.get("instance") or None,
        r.name,
        int(r.spec["size"]),
        str(r.spec["zone"]),
        None if tiers is None else tuple((int(t["keep_s"]), int(t["every_s"])) for t in tiers),
        str(att.get("path") or ""),
        None if not rest else (int(rest["to_ns"]), int(rest["serial"])),
        None if not src else (str(src["volume"]), int(src["at_ns"])),
        bool(r.spec.get("deleting")),
    )


def _group(r: Resource) -> _Group:
    return _Group(r.id, r.spec["vpc"], group_entry(r.id, r.spec.get("rules", ())))


_PARSERS: dict[str, Callable[[Resource], _Obj]] = {
    "host": _host,
    "vpc": _vpc,
    "subnet": _subnet,
    "instance": _instance,
    "route_table": lambda r: _Table(r.id, r.spec["vpc"], _index(r), bool(r.spec.get("default"))),
    "route": _route,
    "policy_route": _policy,
    "natgw": _gateway,
    "hybrid_gw": _hybrid,
    "eip": _eip,
    "security_group": _group,
    "network_acl": lambda r: _Acl(r.id, r.spec["vpc"], tuple(r.spec.get("rules", ()))),
    "flow_log": lambda r: _Group(
        r.id,
        r.spec["vpc"],
        flowlog_entry(r.id, r.spec["scope"], r.spec["target"], r.spec.get("filter", "ALL")),
        FLOWLOG,
    ),
    "vip": lambda r: _Vip(
        r.id,
        r.spec["vpc"],
        r.spec["ip"],
        r.status.get("delivered_to") or None,
        vip_entry(r.id, r.spec["ip"], r.spec.get("allowed", ()), r.status.get("epoch", 0)),
    ),
    "volume": _volume,
}


def _parse(r: Resource) -> _Obj:
    return _PARSERS[r.kind](r)


@dataclass
class _Dirty:
    hosts: set[str] = field(default_factory=set)  # host names
    vpcs: set[str] = field(default_factory=set)
    instances: set[str] = field(default_factory=set)
    routing: set[str] = field(default_factory=set)  # VPCs whose routing entries to redo
    routes: set[tuple[str, str, str]] = field(default_factory=set)  # (vpc, ROUTE|POLICY, id)
    # (vpc, GROUP|FLOWLOG|VIP, id): security groups, flow logs and VIPs' own entries
    groups: set[tuple[str, str, str]] = field(default_factory=set)
    acls: set[tuple[str, str]] = field(default_factory=set)  # (vpc, acl id)
    volumes: set[str] = field(default_factory=set)
    everything: bool = False


def _add(index: dict[str, set[str]], key: str, value: str) -> None:
    index.setdefault(key, set()).add(value)


def _discard(index: dict[str, set[str]], key: str, value: str) -> None:
    s = index.get(key)
    if s is not None:
        s.discard(value)
        if not s:
            del index[key]


class Engine:
    """Host documents as keyed entries, kept up to date from the store's events.

    `window` bounds the change logs in revisions: a delta from further back is a snapshot.
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be at least 1 revision")
        self._window = window
        self._reset(0)

    def _reset(self, revision: int) -> None:
        self._revision = revision
        self._base = revision
        self._floor = revision  # deltas from an earlier revision are snapshots
        self._next_sweep = revision + self._sweep_every()
        # the model
        self._hosts: dict[str, _Host] = {}  # by id
        self._host_by_name: dict[str, _Host] = {}
        self._vpcs: dict[str, _Vpc] = {}
        self._subnets: dict[str, _Subnet] = {}
        self._instances: dict[str, _Instance] = {}
        self._subnets_of_vpc: dict[str, set[str]] = {}  # even of VPCs not (yet) known
        self._insts_of_subnet: dict[str, set[str]] = {}  # even of subnets not (yet) known
        self._insts_of_host: dict[str, set[str]] = {}  # by host name, even unknown hosts
        self._tables: dict[str, _Table] = {}
        self._routes: dict[str, _Route] = {}
        self._policies: dict[str, _Policy] = {}
        self._gateways: dict[str, _Gateway] = {}
        self._hybrids: dict[str, _Hybrid] = {}
        self._eips: dict[str, _Eip] = {}
        self._groups: dict[str, _Group] = {}
        self._groups_of_vpc: dict[str, set[str]] = {}  # even of VPCs not (yet) known
        self._vips: dict[str, _Vip] = {}
        self._vips_of_inst: dict[str, set[str]] = {}  # instance id -> VIPs delivered to it
        self._acls: dict[str, _Acl] = {}
        self._acls_of_vpc: dict[str, set[str]] = {}  # even of VPCs not (yet) known
        # vpc id -> (kind, id) of its tables, routes, policies, gateways (even unknown VPCs)
        self._routing_of_vpc: dict[str, set[tuple[str, str]]] = {}
        self._eips_of_gateway: dict[str, set[str]] = {}
        self._targets: dict[str, int] = {}  # instance id -> routes/policies sending to it
        self._volumes: dict[str, _Volume] = {}
        self._vols_of_inst: dict[str, set[str]] = {}  # instance id -> volumes attached
        self._vols_of_host: dict[str, set[str]] = {}  # host name -> volumes it serves
        # derived: entries
        self._host_entry: dict[str, JsonObj] = {}
        self._host_rev: dict[str, int] = {}
        self._vpc_entry: dict[str, JsonObj] = {}  # VPCs with a vni
        # vpc id -> key -> value of every entry under the VPC: members and routing entries
        self._members: dict[str, dict[str, JsonObj]] = {}
        self._routing: dict[str, dict[str, JsonObj]] = {}  # vpc id -> its routing entries
        self._member_of: dict[str, tuple[str, str]] = {}  # instance id -> (vpc id, key)
        self._carriers: dict[str, dict[str, int]] = {}  # vpc id -> host -> members on it
        self._vpcs_of_host: dict[str, set[str]] = {}
        self._vol_entries: dict[str, Entries] = {}  # host -> its volume entries
        self._vol_at: dict[str, str] = {}  # volume id -> the host whose document has it
        # derived: history
        self._doc_rev: dict[str, int] = {}
        self._host_floor: dict[str, int] = {}  # the host's document exists since
        self._host_log: dict[str, list[tuple[int, str, bool]]] = {}  # (rev, vpc, gained)
        self._vpc_floor: dict[str, int] = {}  # the VPC's entries exist since
        self._vpc_log: dict[str, list[tuple[int, str]]] = {}  # (rev, key changed)
        self._vpc_log_limit: dict[str, int] = {}  # compact when longer
        self._vol_log: dict[str, list[tuple[int, str]]] = {}  # host -> (rev, volume key)
        self._affected: dict[int, frozenset[str]] = {}  # only revisions that changed docs
        self._digests: dict[str, tuple[int, str]] = {}
        # id(value) -> (value, key, entry_hash): the value is held so its id stays its own.
        self._entry_hashes: dict[int, tuple[JsonObj, str, int]] = {}

    def _sweep_every(self) -> int:
        return max(1, self._window // 4)

    # -- feeding ----------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The revision of the last write applied (or loaded)."""
        return self._revision

    @property
    def base(self) -> int:
        """The revision of the last `load`: deltas from before it are snapshots."""
        return self._base

    def load(self, revision: int, resources: Iterable[Resource]) -> None:
        """Rebuild everything from the model as of `revision` (the full path).

        Forgets all history: documents get revision `revision`, and a delta from an
        earlier revision is a snapshot.
        """
        self._reset(revision)
        for r in resources:
            if r.kind in _KINDS:
                self._absorb(r.kind, r.id, _parse(r), _Dirty())
        self._settle(revision, self._everything(), record=False)

    def apply(self, revision: int, events: Sequence[Event]) -> frozenset[str]:
        """Apply all events of one committed write (revision `revision`), together.

        Returns the hosts whose document changed at this revision (appeared, vanished or
        differs): the long polls to wake, the hosts `converged` waits for. Events of kinds
        that feed no document are ignored. ValueError if `revision` does not follow the
        last one applied or an event is not of this revision.
        """
        if revision <= self._revision:
            raise ValueError(f"revision {revision} is not after {self._revision}")
        # Parse the whole write before touching the model: a bad event rejects it whole.
        parsed: list[tuple[str, str, _Obj | None]] = []
        for ev in events:
            if ev.revision != revision:
                raise ValueError(f"event of revision {ev.revision} in write {revision}")
            if ev.kind not in _KINDS:
                continue
            if ev.op not in ("put", "delete"):
                raise ValueError(f"unknown event op {ev.op!r}")
            parsed.append((ev.kind, ev.id, _parse(ev.obj) if ev.op == "put" else None))
        dirty = _Dirty()
        for kind, rid, new in parsed:
            self._absorb(kind, rid, new, dirty)
        if dirty.everything:
            dirty = self._everything()
        affected = self._settle(revision, dirty)
        self._revision = revision
        if affected:
            self._affected[revision] = affected
        if revision >= self._next_sweep:
            self._sweep()
        return affected

    def _absorb(self, kind: str, rid: str, new: _Obj | None, dirty: _Dirty) -> None:
        """Update the model with one object (None: deleted); mark what it can change."""
        if kind == "eip":
            assert new is None or isinstance(new, _Eip)
            self._absorb_eip(rid, new, dirty)
        elif kind in ("security_group", "flow_log"):
            assert new is None or isinstance(new, _Group)
            self._absorb_group(rid, new, dirty)
        elif kind == "network_acl":
            assert new is None or isinstance(new, _Acl)
            self._absorb_acl(rid, new, dirty)
        elif kind == "vip":
            assert new is None or isinstance(new, _Vip)
            self._absorb_vip(rid, new, dirty)
        elif kind == "volume":
            assert new is None or isinstance(new, _Volume)
            self._absorb_volume(rid, new, dirty)
        elif kind in ("route_table", "route", "policy_route", "natgw", "hybrid_gw"):
            assert new is None or isinstance(new, _Table | _Route | _Policy | _Gateway | _Hybrid)
            self._absorb_routing(kind, rid, new, dirty)
        elif kind == "host":
            assert new is None or isinstance(new, _Host)
            self._absorb_host(rid, new, dirty)
        elif kind == "vpc":
            assert new is None or isinstance(new, _Vpc)
            self._absorb_vpc(rid, new, dirty)
        elif kind == "subnet":
            assert new is None or isinstance(new, _Subnet)
            self._absorb_subnet(rid, new, dirty)
        else:
            assert new is None or isinstance(new, _Instance)
            self._absorb_instance(rid, new, dirty)

    def _absorb_host(self, hid: str, new: _Host | None, dirty: _Dirty) -> None:
        old = self._hosts.pop(hid, None)
        if old is not None:
            if self._host_by_name.get(old.name) is old:
                del self._host_by_name[old.name]
            dirty.hosts.add(old.name)
        if new is not None:
            self._hosts[hid] = new
            self._host_by_name[new.name] = new
            dirty.hosts.add(new.name)
        if old is not None and new is not None and old.name != new.name:
            # Members name their host; a rename is rare enough to take the full path.
            dirty.everything = True
            return
        before = (old.vtep_index, old.underlay_ip) if old else None
        after = (new.vtep_index, new.underlay_ip) if new else None
        if before != after:
            for name in {h.name for h in (old, new) if h is not None}:
                dirty.instances |= self._insts_of_host.get(name, set())
        if before != after or bool(old and old.up) != bool(new and new.up):
            for name in {h.name for h in (old, new) if h is not None}:
                dirty.routing |= self._vpcs_of_host.get(name, set())
                # a gateway there may not carry its VPC yet (the host had no document)
                dirty.routing |= {g.vpc for g in self._gateways.values() if g.host == name}
                dirty.routing |= {
                    g.vpc
                    for g in self._hybrids.values()
                    if any(rep[1] == name for rep in g.replicas)
                }

    def _absorb_vpc(self, vid: str, new: _Vpc | None, dirty: _Dirty) -> None:
        old = self._vpcs.pop(vid, None)
        if new is not None:
            self._vpcs[vid] = new
        dirty.vpcs.add(vid)
        dirty.routing.add(vid)
        dirty.groups.update((vid, self._groups[g].sub, g) for g in self._groups_of_vpc.get(vid, ()))
        dirty.acls.update((vid, a) for a in self._acls_of_vpc.get(vid, ()))
        if bool(old and old.vni) != bool(new and new.vni):
            for sid in self._subnets_of_vpc.get(vid, ()):
                dirty.instances |= self._insts_of_subnet.get(sid, set())

    def _absorb_subnet(self, sid: str, new: _Subnet | None, dirty: _Dirty) -> None:
        old = self._subnets.pop(sid, None)
        if old is not None:
            _discard(self._subnets_of_vpc, old.vpc, sid)
            dirty.vpcs.add(old.vpc)
        if new is not None:
            self._subnets[sid] = new
            _add(self._subnets_of_vpc, new.vpc, sid)
            dirty.vpcs.add(new.vpc)
        dirty.routing |= {s.vpc for s in (old, new) if s is not None}
        dirty.acls |= {(s.vpc, s.acl) for s in (old, new) if s is not None and s.acl}
        if old != new:
            dirty.instances |= self._insts_of_subnet.get(sid, set())

    def _absorb_instance(self, iid: str, new: _Instance | None, dirty: _Dirty) -> None:
        old = self._instances.pop(iid, None)
        if old is not None:
            _discard(self._insts_of_subnet, old.subnet, iid)
            if old.host:
                _discard(self._insts_of_host, old.host, iid)
        if new is not None:
            self._instances[iid] = new
            _add(self._insts_of_subnet, new.subnet, iid)
            if new.host:
                _add(self._insts_of_host, new.host, iid)
        dirty.instances.add(iid)
        dirty.volumes |= self._vols_of_inst.get(iid, set())

    def _absorb_volume(self, vid: str, new: _Volume | None, dirty: _Dirty) -> None:
        old = self._volumes.pop(vid, None)
        if old is not None:
            if old.instance:
                _discard(self._vols_of_inst, old.instance, vid)
            if old.host:
                _discard(self._vols_of_host, old.host, vid)
        if new is not None:
            self._volumes[vid] = new
            if new.instance:
                _add(self._vols_of_inst, new.instance, vid)
            if new.host:
                _add(self._vols_of_host, new.host, vid)
        dirty.volumes.add(vid)

    def _absorb_routing(
        self,
        kind: str,
        rid: str,
        new: _Table | _Route | _Policy | _Gateway | _Hybrid | None,
        dirty: _Dirty,
    ) -> None:
        stores: dict[str, dict[str, Any]] = {
            "route_table": self._tables,
            "route": self._routes,
            "policy_route": self._policies,
            "natgw": self._gateways,
            "hybrid_gw": self._hybrids,
        }
        store = stores[kind]
        old = store.pop(rid, None)
        if new is not None:
            store[rid] = new
        for o, step in ((old, -1), (new, +1)):
            if o is None:
                continue
            if step > 0:
                self._routing_of_vpc.setdefault(o.vpc, set()).add((kind, rid))
            elif new is None or new.vpc != o.vpc:
                s = self._routing_of_vpc.get(o.vpc)
                if s is not None:
                    s.discard((kind, rid))
            if isinstance(o, _Route | _Policy):
                nh = o.nh
                if nh is not None and nh[0] == "instance" and nh[1]:
                    n = self._targets.get(nh[1], 0) + step
                    if n:
                        self._targets[nh[1]] = n
                    else:
                        self._targets.pop(nh[1], None)
                    dirty.instances.add(nh[1])  # its `forwarder` flag may change
                sub = ROUTE if isinstance(o, _Route) else POLICY
                dirty.routes.add((o.vpc, sub, rid))
            else:
                dirty.routing.add(o.vpc)

    def _absorb_eip(self, eid: str, new: _Eip | None, dirty: _Dirty) -> None:
        old = self._eips.pop(eid, None)
        if old is not None and old.natgw:
            _discard(self._eips_of_gateway, old.natgw, eid)
        if new is not None:
            self._eips[eid] = new
            if new.natgw:
                _add(self._eips_of_gateway, new.natgw, eid)
        for e in (old, new):
            g = self._gateways.get(e.natgw) if e is not None and e.natgw else None
            if g is not None:
                dirty.routing.add(g.vpc)

    def _absorb_group(self, gid: str, new: _Group | None, dirty: _Dirty) -> None:
        old = self._groups.pop(gid, None)
        if old is not None:
            _discard(self._groups_of_vpc, old.vpc, gid)
            dirty.groups.add((old.vpc, old.sub, gid))
        if new is not None:
            self._groups[gid] = new
            _add(self._groups_of_vpc, new.vpc, gid)
            dirty.groups.add((new.vpc, new.sub, gid))

    def _absorb_vip(self, vid: str, new: _Vip | None, dirty: _Dirty) -> None:
        # Only the members it leaves and reaches change (their allowed_ips); routes to
        # `vip:IP` follow from those members like any member change.
        # Its own entry (allowed, epoch) changes on every claim won: one entry per host.
        old = self._vips.pop(vid, None)
        if old is not None and old.to:
            _discard(self._vips_of_inst, old.to, vid)
            dirty.instances.add(old.to)
        if new is not None:
            self._vips[vid] = new
            if new.to:
                _add(self._vips_of_inst, new.to, vid)
                dirty.instances.add(new.to)
        self._absorb_group(
            vid, None if new is None else _Group(vid, new.vpc, new.entry, VIP), dirty
        )

    def _absorb_acl(self, aid: str, new: _Acl | None, dirty: _Dirty) -> None:
        old = self._acls.pop(aid, None)
        if old is not None:
            _discard(self._acls_of_vpc, old.vpc, aid)
            dirty.acls.add((old.vpc, aid))
        if new is not None:
            self._acls[aid] = new
            _add(self._acls_of_vpc, new.vpc, aid)
            dirty.acls.add((new.vpc, aid))

    def _everything(self) -> _Dirty:
        return _Dirty(
            acls={(a.vpc, aid) for aid, a in self._acls.items()}
            | {
                (vid, k.rsplit("/", 1)[1])
                for vid, entries in self._members.items()
                for k in entries
                if parse_key(k)[1] == ACL
            },
            groups={(g.vpc, g.sub, gid) for gid, g in self._groups.items()}
            | {
                (vid, sub, oid)
                for vid, entries in self._members.items()
                for k in entries
                for _v, sub, oid in [parse_key(k)]
                if sub in (GROUP, FLOWLOG, VIP) and oid is not None
            },
            hosts=set(self._host_by_name) | set(self._host_entry),
            vpcs=set(self._vpcs) | set(self._vpc_entry),
            instances=set(self._instances) | set(self._member_of),
            routing=set(self._vpcs) | set(self._vpc_entry) | set(self._routing),
            volumes=set(self._volumes) | set(self._vol_at),
        )

    # -- recomputing what is dirty ------------------------------------------------------

    def _member(self, iid: str) -> tuple[str, JsonObj] | None:
        i = self._instances.get(iid)
        if i is None or not i.ip or not i.mac or not i.host:
            return None
        s = self._subnets.get(i.subnet)
        v = self._vpcs.get(s.vpc) if s is not None else None
        h = self._host_by_name.get(i.host)
        if s is None or v is None or not v.vni or h is None or not h.vtep_index:
            return None
        return v.id, member_entry(
            id=i.id,
            name=i.name,
            ip=i.ip,
            mac=i.mac,
            subnet_cidr=s.cidr,
            host=h.name,
            vtep_index=h.vtep_index,
            underlay_ip=h.underlay_ip,
            command=i.command,
            forwarder=i.id in self._targets,
            sgs=i.sgs,
            standby=s.serve == "idc",
            allowed_ips=sorted(
                (
                    self._vips[x].ip
                    for x in self._vips_of_inst.get(iid, ())
                    if self._vips[x].vpc == v.id
                ),
                key=ipaddress.IPv4Address,
            ),
        )

    def _settle(self, rev: int, dirty: _Dirty, record: bool = True) -> frozenset[str]:
        """Recompute the dirty entries, log real changes at `rev`; the hosts affected.

        `record=False` (load) keeps no history: everything is as of `rev`.
        """
        changed_hosts: set[str] = set()
        for name in dirty.hosts:
            h = self._host_by_name.get(name)
            new = (
                host_entry(h.name, h.underlay_ip, h.vtep_index, h.mtu)
                if h is not None and h.vtep_index
                else None
            )
            old = self._host_entry.get(name)
            if new == old:
                continue
            changed_hosts.add(name)
            if new is None:
                del self._host_entry[name]  # the rest goes once its members are gone
                continue
            self._host_entry[name] = new
            self._host_rev[name] = rev
            if old is None:
                self._vpcs_of_host[name] = set()
                self._host_log[name] = []
                self._host_floor[name] = rev
                self._vol_entries[name] = {}
                self._vol_log[name] = []
        for name in changed_hosts:  # a document appeared or went: the volumes it serves
            dirty.volumes |= self._vols_of_host.get(name, set())

        changed_keys: dict[str, set[str]] = {}
        for vid in dirty.vpcs:
            v = self._vpcs.get(vid)
            vnew = (
                vpc_entry(
                    vid,
                    v.vni,
                    v.cidrs,
                    # An IDC subnet served in the IDC has its gateway there (the site
                    # router's LAN address): no VPC namespace may answer for it.
                    (
                        sn.cidr
                        for s in self._subnets_of_vpc.get(vid, ())
                        if (sn := self._subnets[s]).serve != "idc"
                    ),
                )
                if v is not None and v.vni
                else None
            )
            vold = self._vpc_entry.get(vid)
            if vnew == vold:
                continue
            changed_keys.setdefault(vid, set()).add(vpc_key(vid))
            if vnew is None:
                del self._vpc_entry[vid]  # the rest goes once its members are gone
                continue
            self._vpc_entry[vid] = vnew
            if vold is None:
                self._members[vid] = {}
                self._carriers[vid] = {}
                self._vpc_log[vid] = []
                self._vpc_log_limit[vid] = 256
                self._vpc_floor[vid] = rev

        carried_before: dict[tuple[str, str], bool] = {}

        def count(vid: str, host: str, step: int) -> None:
            c = self._carriers[vid]
            n = c.get(host, 0)
            carried_before.setdefault((host, vid), n > 0)
            if n + step:
                c[host] = n + step
            else:
                del c[host]

        for iid in dirty.instances:
            new_m = self._member(iid)
            where = self._member_of.get(iid)
            if where is not None:
                old_vid, old_key = where
                old_val = self._members[old_vid][old_key]
                if new_m is not None and new_m[0] == old_vid and new_m[1] == old_val:
                    continue
                del self._members[old_vid][old_key]
                del self._member_of[iid]
                count(old_vid, old_val["host"], -1)
                changed_keys.setdefault(old_vid, set()).add(old_key)
            if new_m is not None:
                vid, val = new_m
                key = member_key(vid, iid)
                self._members[vid][key] = val
                self._member_of[iid] = (vid, key)
                count(vid, val["host"], +1)
                changed_keys.setdefault(vid, set()).add(key)

        # Routing entries: those of VPCs marked, and of VPCs whose members changed (next
        # hops, EIPs and forwards name members); then single routes and policies.
        redo = set(dirty.routing)
        redo.update(vid for vid in changed_keys if self._routing_of_vpc.get(vid))
        for vid in redo:
            self._settle_routing(vid, None, changed_keys, count)
        for vid, sub, oid in dirty.routes:
            if vid not in redo:
                self._settle_routing(vid, (sub, oid), changed_keys, count)
        for vid, sub, gid in dirty.groups:
            self._settle_group(vid, sub, gid, changed_keys)
        for vid, aid in dirty.acls:
            self._settle_acl(vid, aid, changed_keys)

        carriage_changed: set[str] = set()
        for (host, vid), before in carried_before.items():
            after = self._carriers.get(vid, {}).get(host, 0) > 0
            if before == after:
                continue
            carriage_changed.add(host)
            if after:
                self._vpcs_of_host[host].add(vid)
            else:
                self._vpcs_of_host[host].discard(vid)
            if record:
                self._host_log[host].append((rev, vid, after))

        affected = changed_hosts | carriage_changed | self._settle_volumes(rev, dirty, record)
        for vid, keys in changed_keys.items():
            if vid not in self._vpc_entry:  # the VPC is gone (its members went with it)
                self._members.pop(vid, None)
                self._routing.pop(vid, None)
                self._carriers.pop(vid, None)
                self._vpc_log.pop(vid, None)
                self._vpc_log_limit.pop(vid, None)
                self._vpc_floor.pop(vid, None)
                continue
            if record:
                log = self._vpc_log[vid]
                log.extend((rev, k) for k in sorted(keys))
                if len(log) > self._vpc_log_limit[vid]:
                    self._compact(vid)
            affected |= self._carriers[vid].keys()

        for name in changed_hosts:
            if name not in self._host_entry:  # the host went away: forget its history
                self._vpcs_of_host.pop(name, None)
                self._vol_entries.pop(name, None)
                self._vol_log.pop(name, None)
                self._host_log.pop(name, None)
                self._host_floor.pop(name, None)
                self._host_rev.pop(name, None)
                self._doc_rev.pop(name, None)
                self._digests.pop(name, None)
        for name in affected:
            if name in self._host_entry:
                self._doc_rev[name] = rev
        return frozenset(affected)

    # -- volume entries -----------------------------------------------------------------

    def _volume_value(self, vid: str) -> tuple[str, JsonObj] | None:
        """(host, entry) of a volume, when its host has a document."""
        v = self._volumes.get(vid)
        if v is None or v.host is None or v.host not in self._host_entry:
            return None
        attach = None
        if v.instance is not None:
            inst = self._instances.get(v.instance)
            attach = (v.instance, None if inst is None else inst.netns, v.path)
        return v.host, volume_entry(
            v.id, v.name, v.size, v.zone, v.tiers, attach, v.restore, v.source, v.delete
        )

    def _settle_volumes(self, rev: int, dirty: _Dirty, record: bool) -> set[str]:
        """Recompute the dirty volumes' entries; the hosts whose documents changed."""
        changed: set[str] = set()
        for vid in dirty.volumes:
            new = self._volume_value(vid)
            key = volume_key(vid)
            old_host = self._vol_at.get(vid)
            if old_host is not None:
                entries = self._vol_entries[old_host]
                if new is not None and new[0] == old_host and new[1] == entries[key]:
                    continue
                del entries[key]
                del self._vol_at[vid]
                changed.add(old_host)
                if record:
                    self._vol_log[old_host].append((rev, key))
            if new is not None:
                host, value = new
                self._vol_entries[host][key] = value
                self._vol_at[vid] = host
                changed.add(host)
                if record and host != old_host:
                    self._vol_log[host].append((rev, key))
        for host in changed:
            log = self._vol_log.get(host)
            if log is not None and len(log) > 2 * len(self._vol_entries[host]) + 256:
                self._vol_log[host] = _last_change_of_each(log)
        return changed

    # -- routing entries ----------------------------------------------------------------

    def _tables_of(self, vid: str) -> dict[str, _Table]:
        out: dict[str, _Table] = {}
        for kind, oid in self._routing_of_vpc.get(vid, ()):
            if kind == "route_table":
                t = self._tables[oid]
                if t.index:
                    out[oid] = t
        return out

    def _gateways_of(self, vid: str) -> list[_Gateway]:
        return sorted(
            (
                self._gateways[oid]
                for kind, oid in self._routing_of_vpc.get(vid, ())
                if kind == "natgw" and self._gateways[oid].index
            ),
            key=lambda g: g.id,
        )

    def _on_member(self, kind: str, ref: str, m: JsonObj) -> JsonObj:
        h = self._host_by_name.get(m["host"])
        return nexthop_entry(
            kind,
            ref,
            ip=m["ip"],
            host=m["host"],
            vtep_index=m["vtep_index"],
            underlay_ip=m["underlay_ip"],
            port=port_ifname(m["id"]),
            up=h is not None and h.up,
        )

    def _resolve(self, vid: str, nh: NextHopRef) -> JsonObj:
        """A next hop as the VPC's members and gateways place it now (see docentries)."""
        kind, ref = nh
        if kind == "blackhole":
            return nexthop_entry("blackhole", None, up=True)
        entries = self._members.get(vid, {})
        if kind == "instance" and ref:
            m = entries.get(member_key(vid, ref))
            if m is not None:
                return self._on_member(kind, ref, m)
        elif kind == "vip" and ref:
            prefix = member_key(vid, "")
            for key in sorted(k for k in entries if k.startswith(prefix)):
                m = entries[key]
                if m["ip"] == ref or ref in m["allowed_ips"]:
                    return self._on_member(kind, ref, m)
        elif kind == "natgw" and ref:
            g = self._gateways.get(ref)
            h = self._host_by_name.get(g.host) if g is not None and g.host else None
            if g is not None and g.vpc == vid and g.index and h is not None and h.vtep_index:
                return nexthop_entry(
                    kind,
                    ref,
                    ip=NATGW_INNER_IP,
                    host=h.name,
                    vtep_index=h.vtep_index,
                    underlay_ip=h.underlay_ip,
                    port=gateway_ifname(ref),
                    up=h.up,
                )
        return nexthop_entry(kind, ref)

    def _route_value(self, vid: str, rid: str, tables: dict[str, _Table]) -> JsonObj | None:
        r = self._routes.get(rid)
        if r is None or r.vpc != vid or r.table not in tables:
            return None
        return route_entry(r.id, r.table, r.dst, r.priority, self._resolve(vid, r.nh))

    def _policy_value(self, vid: str, pid: str, tables: dict[str, _Table]) -> JsonObj | None:
        p = self._policies.get(pid)
        if p is None or p.vpc != vid or p.table not in tables or not p.index:
            return None
        return policy_entry(
            id=p.id,
            table=p.table,
            index=p.index,
            priority=p.priority,
            src=p.src,
            dst=p.dst,
            proto=p.proto,
            port=p.port,
            action=p.action,
            nexthop=None if p.nh is None else self._resolve(vid, p.nh),
        )

    def _gateway_value(self, vid: str, g: _Gateway) -> JsonObj:
        assert g.index is not None
        entries = self._members.get(vid, {})
        h = self._host_by_name.get(g.host) if g.host else None
        placed = h if h is not None and h.vtep_index else None
        eips = []
        for eid in self._eips_of_gateway.get(g.id, ()):
            e = self._eips[eid]
            m = entries.get(member_key(vid, e.instance)) if e.instance else None
            if m is not None and e.address:
                eips.append((m["ip"], e.address))
        forwards = []
        for proto, port, inst, to_port in g.forwards:
            m = entries.get(member_key(vid, inst))
            if m is not None:
                forwards.append((proto, port, m["ip"], to_port))
        return gateway_entry(
            id=g.id,
            index=g.index,
            host=None if placed is None else placed.name,
            vtep_index=None if placed is None else placed.vtep_index,
            underlay_ip=None if placed is None else placed.underlay_ip,
            up=placed is not None and placed.up,
            public_ip=g.public_ip,
            subnets=[
                sub.cidr
                for sid in g.subnets
                if (sub := self._subnets.get(sid)) is not None and sub.vpc == vid
            ],
            eips=eips,
            forwards=forwards,
        )

    def _hybrid_value(self, vid: str, g: _Hybrid) -> JsonObj | None:
        v = self._vpcs.get(vid)
        if g.index is None or v is None:
            return None
        pairs = [
            (s.cidr, s.serve)
            for sid in self._subnets_of_vpc.get(vid, ())
            if (s := self._subnets[sid]).serve is not None
        ]
        mine = [(c, serve) for sid in self._subnets_of_vpc.get(vid, ())
                if (s := self._subnets[sid]).site == g.site and s.serve is not None
                for c, serve in [(s.cidr, s.serve)]]  # fmt: skip
        replicas = []
        for index, host, line_ip, established in g.replicas:
            h = self._host_by_name.get(host)
            if h is None or not h.vtep_index:
                continue
            replicas.append(
                hybrid_replica(
                    index, h.name, h.vtep_index, h.underlay_ip, line_ip, established and h.up
                )
            )
        return hybrid_entry(
            id=g.id,
            index=g.index,
            asn=g.asn,
            peer_ip=g.peer_ip,
            peer_asn=g.peer_asn,
            md5_secret=g.md5_secret,
            bfd=g.bfd,
            line_vni=g.line_vni,
            line_vtep=g.line_vtep,
            replicas=replicas,
            routes=served_in_idc(mine),
            announce=announced(v.cidrs, pairs),
            prefixes=[c for c, _serve in mine],
        )

    def _routing_entries(self, vid: str) -> dict[str, JsonObj]:
        """Every routing entry of a VPC, from the model (the VPC has its entry)."""
        out: dict[str, JsonObj] = {}
        tables = self._tables_of(vid)
        defaults = sorted(t.id for t in tables.values() if t.default)
        for t in tables.values():
            assert t.index is not None
            out[sub_key(vid, TABLE, t.id)] = table_entry(t.id, t.index, t.default)
        served: dict[str, str] = {}
        for g in self._gateways_of(vid):
            out[sub_key(vid, GATEWAY, g.id)] = self._gateway_value(vid, g)
            for sid in g.subnets:
                served.setdefault(sid, g.id)
        for sid in self._subnets_of_vpc.get(vid, ()):
            sub = self._subnets[sid]
            table = sub.table if sub.table in tables else (defaults[0] if defaults else None)
            if sub.index and table is not None:
                out[sub_key(vid, SUBNET, sid)] = subnet_entry(
                    sid, sub.cidr, sub.index, table, served.get(sid), sub.serve
                )
        for kind, oid in self._routing_of_vpc.get(vid, ()):
            if kind == "hybrid_gw":
                value = self._hybrid_value(vid, self._hybrids[oid])
                if value is not None:
                    out[sub_key(vid, HYBRID, oid)] = value
        for kind, oid in self._routing_of_vpc.get(vid, ()):
            if kind == "route":
                value = self._route_value(vid, oid, tables)
                if value is not None:
                    out[sub_key(vid, ROUTE, oid)] = value
            elif kind == "policy_route":
                value = self._policy_value(vid, oid, tables)
                if value is not None:
                    out[sub_key(vid, POLICY, oid)] = value
        return out

    def _settle_routing(
        self,
        vid: str,
        only: tuple[str, str] | None,
        changed_keys: dict[str, set[str]],
        count: Callable[[str, str, int], None],
    ) -> None:
        """Recompute a VPC's routing entries (or one route's or policy's: `only`), record
        the keys that really changed, and count the hosts its gateways make carriers."""
        current = self._routing.get(vid, {})
        alive = vid in self._vpc_entry
        if only is None:
            new = self._routing_entries(vid) if alive else {}
            keys = current.keys() | new.keys()
        else:
            sub, oid = only
            key = sub_key(vid, sub, oid)
            tables = self._tables_of(vid) if alive else {}
            value = (
                None
                if not alive
                else self._route_value(vid, oid, tables)
                if sub == ROUTE
                else self._policy_value(vid, oid, tables)
            )
            new = {} if value is None else {key: value}
            keys = {key}
        if not keys:
            return
        mine = self._routing.setdefault(vid, {})
        entries = self._members.get(vid)
        for key in keys:
            old, val = current.get(key), new.get(key)
            if old == val:
                continue
            if entries is None:  # the VPC never had an entry: nothing was published
                continue
            _v, kind, _o = parse_key(key)
            if kind == GATEWAY:
                for g, step in ((old, -1), (val, +1)):
                    if g is not None and g["host"] is not None:
                        count(vid, g["host"], step)
            elif kind == HYBRID:
                for g, step in ((old, -1), (val, +1)):
                    for rep in g["replicas"] if g is not None else ():
                        count(vid, rep["host"], step)
            if val is None:
                del mine[key]
                entries.pop(key, None)
            else:
                mine[key] = val
                entries[key] = val
            changed_keys.setdefault(vid, set()).add(key)

    def _settle_group(
        self, vid: str, sub: str, gid: str, changed_keys: dict[str, set[str]]
    ) -> None:
        entries = self._members.get(vid)
        if entries is None:  # the VPC has no entry: nothing was published
            return
        g = self._groups.get(gid)
        key = sub_key(vid, sub, gid)
        val = (
            g.entry
            if g is not None and g.sub == sub and g.vpc == vid and vid in self._vpc_entry
            else None
        )
        old = entries.get(key)
        if old == val:
            return
        if val is None:
            del entries[key]
        else:
            entries[key] = val
        changed_keys.setdefault(vid, set()).add(key)

    def _settle_acl(self, vid: str, aid: str, changed_keys: dict[str, set[str]]) -> None:
        entries = self._members.get(vid)
        if entries is None:  # the VPC has no entry: nothing was published
            return
        a = self._acls.get(aid)
        key = sub_key(vid, ACL, aid)
        val = None
        if a is not None and a.vpc == vid and vid in self._vpc_entry:
            subs = (self._subnets[s] for s in self._subnets_of_vpc.get(vid, ()))
            val = acl_entry(aid, a.rules, (s.cidr for s in subs if s.acl == aid))
        old = entries.get(key)
        if old == val:
            return
        if val is None:
            del entries[key]
        else:
            entries[key] = val
        changed_keys.setdefault(vid, set()).add(key)

    def _compact(self, vid: str) -> None:
        """Keep the last change of each key only (a delta needs no more)."""
        log = self._vpc_log[vid]
        seen: set[str] = set()
        kept: list[tuple[int, str]] = []
        for rev, key in reversed(log):
            if key not in seen:
                seen.add(key)
                kept.append((rev, key))
        kept.reverse()
        self._vpc_log[vid] = kept
        self._vpc_log_limit[vid] = 2 * len(kept) + 256

    def _sweep(self) -> None:
        """Drop history older than the window: deltas from before it become snapshots."""
        horizon = self._revision - self._window
        self._next_sweep = self._revision + self._sweep_every()
        if horizon <= self._floor:
            return
        self._floor = horizon
        for vid, log in self._vpc_log.items():
            if log and log[0][0] <= horizon:
                del log[: bisect.bisect_right(log, horizon, key=lambda e: e[0])]
                self._vpc_log_limit[vid] = 2 * len(log) + 256
        for hlog in self._host_log.values():
            if hlog and hlog[0][0] <= horizon:
                del hlog[: bisect.bisect_right(hlog, horizon, key=lambda e: e[0])]
        for vlog in self._vol_log.values():
            if vlog and vlog[0][0] <= horizon:
                del vlog[: bisect.bisect_right(vlog, horizon, key=lambda e: e[0])]
        for rev in [r for r in self._affected if r <= horizon]:
            del self._affected[rev]

    # -- reading ------------------------------------------------------------------------

    def hosts(self) -> frozenset[str]:
        """Every host that has a document (registered, with a vtep_index)."""
        return frozenset(self._host_entry)

    def doc_revision(self, host: str) -> int | None:
        """The revision of the last change of `host`'s document (None: it has none)."""
        return self._doc_rev.get(host)

    def affected(self, revision: int) -> frozenset[str] | None:
        """The hosts whose document changed at `revision`; None when that revision is not
        in the kept window (before the last load, pruned, or not applied yet)."""
        if not self._floor < revision <= self._revision:
            return None
        return self._affected.get(revision, frozenset())

    def snapshot(self, host: str) -> Entries:
        """All entries of `host`'s document (a new dict; the values are shared: read only).

        KeyError when the host has no document.
        """
        out: Entries = {HOST_KEY: self._host_entry[host]}
        for vid in sorted(self._vpcs_of_host[host]):
            out[vpc_key(vid)] = self._vpc_entry[vid]
            out.update(self._members[vid])
        out.update(self._vol_entries[host])
        return out

    def digest(self, host: str) -> str:
        """`docentries.digest` of the host's document, cached per document revision.

        Each entry's hash is kept as long as its value object lives (values are shared and
        replaced, never changed), so a document whose revision moved costs a lookup per
        entry, not an encoding and hash of the whole document.
        """
        d = self._doc_rev[host]
        cached = self._digests.get(host)
        if cached is None or cached[0] != d:
            hashes = self._entry_hashes
            parts = []
            for k, v in self.snapshot(host).items():
                got = hashes.get(id(v))
                if got is None or got[0] is not v or got[1] != k:
                    got = (v, k, entry_hash(k, v))
                    hashes[id(v)] = got
                parts.append(got[2])
            cached = (d, combine(parts))
            self._digests[host] = cached
            if len(hashes) > 4 * max(1024, len(self._member_of) + len(self._vpc_entry)):
                self._prune_entry_hashes()
        return cached[1]

    def _prune_entry_hashes(self) -> None:
        live = {id(v) for v in self._vpc_entry.values()}
        live.update(id(v) for members in self._members.values() for v in members.values())
        live.update(id(v) for v in self._host_entry.values())
        live.update(id(v) for vols in self._vol_entries.values() for v in vols.values())
        self._entry_hashes = {i: h for i, h in self._entry_hashes.items() if i in live}

    def delta(self, host: str, after: int) -> Delta:
        """What an agent holding `host`'s document as of revision `after` needs.

        A snapshot when after <= 0 or after > `revision`; empty when the document has not
        changed since `after` (after >= its revision, however old); a snapshot when `after`
        is older than the logs answer (before the last load, the window, or the host's
        document); otherwise the keys changed since `after` (removals first, each covering
        the keys under it, then the entries to write).
        KeyError when the host has no document.
        """
        d = self._doc_rev[host]
        if after <= 0 or after > self._revision:
            return Delta(host, d, True, (), self.snapshot(host))
        if after >= d:  # unchanged since: true however old `after` is
            return Delta(host, d, False)
        if after < max(self._floor, self._host_floor[host]):
            return Delta(host, d, True, (), self.snapshot(host))
        removed: set[str] = set()
        put: Entries = {}
        if self._host_rev[host] > after:
            put[HOST_KEY] = self._host_entry[host]

        # Carriage changes since `after`: the first one of a VPC says whether it was carried.
        hlog = self._host_log[host]
        carried_then: dict[str, bool] = {}
        for _rev, vid, gained in hlog[bisect.bisect_right(hlog, after, key=lambda e: e[0]) :]:
            carried_then.setdefault(vid, not gained)
        now = self._vpcs_of_host[host]
        for vid, was in carried_then.items():
            if vid not in now:
                if was:
                    removed.add(vpc_key(vid))
            elif was:
                self._vpc_changes(vid, after, removed, put)
            else:
                self._whole_vpc(vid, put)
        for vid in now:
            if vid not in carried_then:
                self._vpc_changes(vid, after, removed, put)
        vlog, vols = self._vol_log[host], self._vol_entries[host]
        for _rev, key in vlog[bisect.bisect_right(vlog, after, key=lambda e: e[0]) :]:
            if key in vols:
                put[key] = vols[key]
            else:
                removed.add(key)
        return Delta(host, d, False, tuple(sorted(removed)), put)

    def _whole_vpc(self, vid: str, put: Entries) -> None:
        put[vpc_key(vid)] = self._vpc_entry[vid]
        put.update(self._members[vid])

    def _vpc_changes(self, vid: str, after: int, removed: set[str], put: Entries) -> None:
        """Entries of a VPC carried at `after` and now that changed since `after`."""
        if after < self._vpc_floor[vid]:  # the VPC was recreated since: start it over
            removed.add(vpc_key(vid))
            self._whole_vpc(vid, put)
            return
        log = self._vpc_log[vid]
        members = self._members[vid]
        for _rev, key in log[bisect.bisect_right(log, after, key=lambda e: e[0]) :]:
            if key in put or key in removed:
                continue
            _vid, kind, _oid = parse_key(key)
            value = self._vpc_entry.get(vid) if kind is None else members.get(key)
            if value is None:
                removed.add(key)
            else:
                put[key] = value


def _last_change_of_each(log: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """A (revision, key) log keeping the last change of each key only (a delta needs no
    more)."""
    seen: set[str] = set()
    kept: list[tuple[int, str]] = []
    for rev, key in reversed(log):
        if key not in seen:
            seen.add(key)
            kept.append((rev, key))
    kept.reverse()
    return kept
