"""The configuration of a lab IDC site's switch: static routes and ACL rules.

One model, three forms: the YAML (or JSON) a user writes for `yunhan netconf push`, the
XML of the YANG module `yunhan-switch` (yunhan/lab/yang/yunhan-switch.yang) that NETCONF
carries, and what the site router's kernel gets (routes of protocol SWITCH_PROTO, an
nftables table). Pure: parsing and validating (a bad file is refused whole, naming the
entry), the XML both ways, the diff a push is journaled with, and the kernel's commands.

    routes:
      - {prefix: 10.0.0.0/16, next-hop: 198.19.33.11, metric: 5}
      - {prefix: 10.9.0.0/16, blackhole: true}
    acl:
      - {seq: 10, source: 10.0.0.0/16, destination: 192.168.100.0/24, protocol: icmp,
         action: deny}

Routes win over what BGP learned when their metric is lower (FRR installs BGP routes with
metric 20; ours default to 10). ACL rules filter what the router forwards, lowest `seq`
first, `permit` ending the evaluation; what no rule matches is forwarded.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

NS = "urn:yunhan:switch"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
SWITCH_PROTO = 187  # the routes' protocol number: ours, told apart from zebra's and others
NFT_TABLE = "yunhan_switch"
DEFAULT_METRIC = 10
PROTOCOLS = ("any", "icmp", "tcp", "udp")
ACTIONS = ("permit", "deny")


class SwitchConfigError(ValueError):
    """A configuration that cannot be pushed: which entry, and why."""


@dataclass(frozen=True, order=True)
class SwitchRoute:
    prefix: str
    next_hop: str | None = None
    blackhole: bool = False
    metric: int = DEFAULT_METRIC

    def describe(self) -> str:
        via = "blackhole" if self.blackhole else f"via {self.next_hop}"
        return f"route {self.prefix} {via} metric {self.metric}"


@dataclass(frozen=True, order=True)
class AclRule:
    seq: int
    source: str = "0.0.0.0/0"
    destination: str = "0.0.0.0/0"
    protocol: str = "any"
    action: str = "deny"

    def describe(self) -> str:
        proto = "" if self.protocol == "any" else f" {self.protocol}"
        return f"acl {self.seq} {self.action}{proto} from {self.source} to {self.destination}"


@dataclass(frozen=True)
class SwitchConfig:
    routes: tuple[SwitchRoute, ...] = ()
    acl: tuple[AclRule, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "routes": [_route_json(r) for r in self.routes],
            "acl": [asdict(a) for a in self.acl],
        }

    def digest(self) -> str:
        """A short hash of the configuration, the same for the same content in any form."""
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> list[str]:
        return [r.describe() for r in self.routes] + [a.describe() for a in self.acl]


def _route_json(r: SwitchRoute) -> dict[str, Any]:
    out: dict[str, Any] = {"prefix": r.prefix, "metric": r.metric}
    if r.blackhole:
        out["blackhole"] = True
    else:
        out["next-hop"] = r.next_hop
    return out


# -- parsing and validation ------------------------------------------------------------------


def _net(value: Any, what: str) -> str:
    try:
        return str(ipaddress.IPv4Network(str(value), strict=True))
    except ValueError as exc:
        raise SwitchConfigError(f"{what}: {value!r} is not an IPv4 prefix ({exc})") from None


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SwitchConfigError(f"{what}: want an integer from {lo} to {hi}, got {value!r}")
    return value


def _known(entry: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
    extra = sorted(set(entry) - set(keys))
    if extra:
        raise SwitchConfigError(f"{what}: unknown field(s) {', '.join(extra)}")


def parse(data: Any) -> SwitchConfig:
    """The configuration a user wrote (YAML or JSON, loaded). SwitchConfigError names the
    first bad entry; an empty mapping is the empty configuration."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SwitchConfigError("the configuration is a mapping with `routes` and `acl`")
    _known(data, ("routes", "acl"), "the configuration")
    routes: list[SwitchRoute] = []
    for i, e in enumerate(data.get("routes") or []):
        what = f"routes[{i}]"
        if not isinstance(e, Mapping):
            raise SwitchConfigError(f"{what}: want a mapping, got {e!r}")
        _known(e, ("prefix", "next-hop", "blackhole", "metric"), what)
        prefix = _net(e.get("prefix"), f"{what}.prefix")
        blackhole = e.get("blackhole", False)
        if not isinstance(blackhole, bool):
            raise SwitchConfigError(f"{what}.blackhole: true or false, got {blackhole!r}")
        nh = e.get("next-hop")
        if blackhole == (nh is not None):
            raise SwitchConfigError(f"{what}: give either next-hop or blackhole: true")
        if nh is not None:
            try:
                nh = str(ipaddress.IPv4Address(str(nh)))
            except ValueError:
                raise SwitchConfigError(f"{what}.next-hop: {nh!r} is not an IPv4 address") from None
        metric = _int(e.get("metric", DEFAULT_METRIC), f"{what}.metric", 0, 2**31 - 1)
        routes.append(SwitchRoute(prefix, nh, blackhole, metric))
    seen = {}
    for r in routes:
        if r.prefix in seen:
            raise SwitchConfigError(f"route {r.prefix} is listed twice")
        seen[r.prefix] = r
    acl: list[AclRule] = []
    for i, e in enumerate(data.get("acl") or []):
        what = f"acl[{i}]"
        if not isinstance(e, Mapping):
            raise SwitchConfigError(f"{what}: want a mapping, got {e!r}")
        _known(e, ("seq", "source", "destination", "protocol", "action"), what)
        seq = _int(e.get("seq"), f"{what}.seq", 1, 65535)
        proto = e.get("protocol", "any")
        if proto not in PROTOCOLS:
            raise SwitchConfigError(f"{what}.protocol: one of {', '.join(PROTOCOLS)}")
        action = e.get("action", "deny")
        if action not in ACTIONS:
            raise SwitchConfigError(f"{what}.action: permit or deny, not {action!r}")
        acl.append(
            AclRule(
                seq,
                _net(e.get("source", "0.0.0.0/0"), f"{what}.source"),
                _net(e.get("destination", "0.0.0.0/0"), f"{what}.destination"),
                proto,
                action,
            )
        )
    seqs = [a.seq for a in acl]
    dup = next((s for s in seqs if seqs.count(s) > 1), None)
    if dup is not None:
        raise SwitchConfigError(f"acl seq {dup} is listed twice")
    return SwitchConfig(tuple(sorted(routes)), tuple(sorted(acl)))


# -- NETCONF XML -----------------------------------------------------------------------------


def to_xml(cfg: SwitchConfig) -> str:
    """The <config> of an edit-config that replaces the whole switch container."""
    root = ET.Element(f"{{{NC}}}config")
    sw = ET.SubElement(root, f"{{{NS}}}switch", {f"{{{NC}}}operation": "replace"})
    for r in cfg.routes:
        e = ET.SubElement(sw, f"{{{NS}}}route")
        ET.SubElement(e, f"{{{NS}}}prefix").text = r.prefix
        if r.blackhole:
            ET.SubElement(e, f"{{{NS}}}blackhole").text = "true"
        else:
            ET.SubElement(e, f"{{{NS}}}next-hop").text = r.next_hop
        ET.SubElement(e, f"{{{NS}}}metric").text = str(r.metric)
    for a in cfg.acl:
        e = ET.SubElement(sw, f"{{{NS}}}acl-rule")
        for k in ("seq", "source", "destination", "protocol", "action"):
            ET.SubElement(e, f"{{{NS}}}{k}").text = str(getattr(a, k))
    ET.register_namespace("", NS)
    ET.register_namespace("nc", NC)
    return ET.tostring(root, encoding="unicode")


def _route_el(parent: ET.Element, r: SwitchRoute, op: str) -> None:
    e = ET.SubElement(parent, f"{{{NS}}}route", {f"{{{NC}}}operation": op})
    ET.SubElement(e, f"{{{NS}}}prefix").text = r.prefix
    if op == "delete":
        return
    if r.blackhole:
        ET.SubElement(e, f"{{{NS}}}blackhole").text = "true"
    else:
        ET.SubElement(e, f"{{{NS}}}next-hop").text = r.next_hop
    ET.SubElement(e, f"{{{NS}}}metric").text = str(r.metric)


def _acl_el(parent: ET.Element, a: AclRule, op: str) -> None:
    e = ET.SubElement(parent, f"{{{NS}}}acl-rule", {f"{{{NC}}}operation": op})
    ET.SubElement(e, f"{{{NS}}}seq").text = str(a.seq)
    if op == "delete":
        return
    for k in ("source", "destination", "protocol", "action"):
        ET.SubElement(e, f"{{{NS}}}{k}").text = str(getattr(a, k))


def delta_xml(old: SwitchConfig, new: SwitchConfig) -> str | None:
    """The <config> of an edit-config that turns `old` into `new` entry by entry (each
    changed entry replaced, each gone one deleted); None when they are the same. A small
    change to a large configuration costs the switch a small commit (measured: a whole
    replace of ~200 entries took netconfd 0.3 s per commit)."""
    root = ET.Element(f"{{{NC}}}config")
    sw = ET.SubElement(root, f"{{{NS}}}switch")
    before = {r.prefix: r for r in old.routes}
    after = {r.prefix: r for r in new.routes}
    for k in sorted(set(before) | set(after)):
        if before.get(k) == after.get(k):
            continue
        if k in after:
            _route_el(sw, after[k], "replace")
        else:
            _route_el(sw, before[k], "delete")
    abefore = {a.seq: a for a in old.acl}
    aafter = {a.seq: a for a in new.acl}
    for n in sorted(set(abefore) | set(aafter)):
        if abefore.get(n) == aafter.get(n):
            continue
        if n in aafter:
            _acl_el(sw, aafter[n], "replace")
        else:
            _acl_el(sw, abefore[n], "delete")
    if not len(sw):
        return None
    ET.register_namespace("", NS)
    ET.register_namespace("nc", NC)
    return ET.tostring(root, encoding="unicode")


def from_xml(xml: str) -> SwitchConfig:
    """The switch configuration inside a <data> (get-config's answer); the empty
    configuration when it has no switch container."""
    root = ET.fromstring(xml)
    sw = root if root.tag == f"{{{NS}}}switch" else root.find(f".//{{{NS}}}switch")
    if sw is None:
        return SwitchConfig()

    def text(e: ET.Element, k: str) -> str | None:
        c = e.find(f"{{{NS}}}{k}")
        return None if c is None or c.text is None else c.text.strip()

    routes = []
    for e in sw.findall(f"{{{NS}}}route"):
        entry: dict[str, Any] = {"prefix": text(e, "prefix")}
        if text(e, "blackhole") == "true":
            entry["blackhole"] = True
        elif text(e, "next-hop") is not None:
            entry["next-hop"] = text(e, "next-hop")
        if text(e, "metric") is not None:
            entry["metric"] = int(text(e, "metric") or DEFAULT_METRIC)
        routes.append(entry)
    acl = []
    for e in sw.findall(f"{{{NS}}}acl-rule"):
        a: dict[str, Any] = {"seq": int(text(e, "seq") or 0)}
        for k in ("source", "destination", "protocol", "action"):
            if text(e, k) is not None:
                a[k] = text(e, k)
        acl.append(a)
    return parse({"routes": routes, "acl": acl})


# -- the diff --------------------------------------------------------------------------------


def diff(old: SwitchConfig, new: SwitchConfig) -> list[str]:
    """What a push changes, one line per entry: `+` added, `-` removed, `~` changed."""
    out: list[str] = []
    for a, b in (
        ({r.prefix: r for r in old.routes}, {r.prefix: r for r in new.routes}),
        ({str(x.seq): x for x in old.acl}, {str(x.seq): x for x in new.acl}),
    ):
        for k in sorted(set(a) | set(b)):
            before, after = a.get(k), b.get(k)
            if before == after:
                continue
            if before is None:
                out.append(f"+ {after.describe()}")  # type: ignore[union-attr]
            elif after is None:
                out.append(f"- {before.describe()}")
            else:
                out.append(f"~ {before.describe()} -> {after.describe()}")
    return out


# -- the kernel ------------------------------------------------------------------------------


@dataclass
class KernelPlan:
    """What the switch's driver does to the router's kernel to make it the configuration:
    `ip -batch` lines (routes of SWITCH_PROTO only) and one nft script (the whole table)."""

    ip_batch: list[str] = field(default_factory=list)
    nft: str = ""


def route_key(prefix: str, metric: int) -> tuple[str, int]:
    return str(ipaddress.IPv4Network(prefix)), metric


def kernel_plan(cfg: SwitchConfig, installed: Sequence[tuple[str, int]]) -> KernelPlan:
    """The commands from the routes of ours now installed (`installed`: (prefix, metric))
    to `cfg`: stale ones deleted, every configured one replaced (idempotent), and the ACL
    table rebuilt whole in one nft transaction."""
    plan = KernelPlan()
    want = {route_key(r.prefix, r.metric) for r in cfg.routes}
    for prefix, metric in sorted(set(installed) - want):
        plan.ip_batch.append(f"route del {prefix} proto {SWITCH_PROTO} metric {metric}")
    for r in cfg.routes:
        target = f"blackhole {r.prefix}" if r.blackhole else f"{r.prefix} via {r.next_hop}"
        plan.ip_batch.append(f"route replace {target} proto {SWITCH_PROTO} metric {r.metric}")
    lines = [
        f"table ip {NFT_TABLE}",
        f"delete table ip {NFT_TABLE}",
        f"table ip {NFT_TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority -10; policy accept;",
    ]
    for a in cfg.acl:
        match = []
        if a.source != "0.0.0.0/0":
            match.append(f"ip saddr {a.source}")
        if a.destination != "0.0.0.0/0":
            match.append(f"ip daddr {a.destination}")
        if a.protocol != "any":
            match.append(f"meta l4proto {a.protocol}")
        verdict = "accept" if a.action == "permit" else "drop"
        words = " ".join([*match, "counter", verdict, f'comment "acl {a.seq}"'])
        lines.append(f"    {words}")
    lines += ["  }", "}"]
    plan.nft = "\n".join(lines) + "\n"
    return plan
