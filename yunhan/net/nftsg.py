"""Security groups in nftables: the `ip yunhan_sg` table of a VPC namespace (docs/secgroups.md).

Layout, rewritten whole in one atomic batch (no packet ever sees half a rule set):

* chains `zone_pre` (prerouting) and `zone_out` (output), priority raw (-300): every packet
  of the namespace gets the VPC's conntrack zone before conntrack sees it;
* one set `m_<group id>` (ipv4_addr) per group that a local port's rules name as a peer:
  the addresses of its members anywhere in the VPC. An instance joining a group changes one
  element of this set on each host;
* chain `fwd` (forward, priority filter), in order: replies of established flows pass;
  related packets (ICMP errors) pass; original-direction packets of a flow already checked
  under this rule set (ct mark == generation) pass; then a packet from a filtered port
  jumps to that port's egress chain `e_<port>`, a packet to a filtered port to its ingress
  chain `i_<port>`; what comes back from both is stamped with the generation;
* one interval set `c_<network hex>_<prefix length>` per CIDR peer the rules match (of
  groups and ACLs alike), named by what it holds, shared by every rule with that peer;
* chains `e_<port>` and `i_<port>`: the port's rules (all its groups' rules merged, by
  priority, deny first at a priority), allow = return, deny = drop, then drop;
* every drop (a deny rule, the final drop of a port chain, of an ACL chain) is a `goto` to
  the port's reject chain of that check and direction (`xe_`/`xi_` for groups, `xae_`/`xai_`
  for ACLs): its first rule logs the packet to NFLOG group LOG_GROUP under a prefix naming
  the check and direction (LOG_PREFIXES; the flow-log collector reads it, docs/flowlogs.md)
  with a rate limit of its own (LOG_RATE/s, burst LOG_BURST), its second drops. A limit is
  per rule, so each port and direction has its own: a port flooded with denied packets
  cannot take the log budget of the others. Over the limit a packet is still dropped, just
  not logged.

The generation is a hash of the rules. A rule change gives a new one, so the next packet of
every established flow is checked again: a flow that the change forbids is cut at that
packet (its conntrack entry then times out), one still allowed is stamped anew. A member
joining or leaving a group changes elements of its set only (`members_batch`): one element
per host, the rules untouched.

Each rule of a port chain carries its rule in its comment; observation rebuilds the
wanted table from the comments and set elements and compares every rule with it, so a rule
changed by hand reads as drift and the next apply rewrites the table.
"""

from __future__ import annotations

import ipaddress
import zlib
from dataclasses import dataclass
from typing import Any

from yunhan.net.desired import AclRuleDesired, SgRuleDesired
from yunhan.net.docentries import net_key

FAMILY = "ip"
TABLE = "yunhan_sg"
BROKEN_ZONE = -1

# Rejected packets go to this NFLOG group, at most LOG_RATE per second and port and
# direction (bursts up to LOG_BURST): one denied flood costs a bounded amount of logging.
LOG_GROUP = 7
LOG_RATE = 20
LOG_BURST = 40
# reject chain prefix -> (the NFLOG prefix, the check, the direction as the port sees it)
REJECT_CHAINS: dict[str, tuple[str, str, str]] = {
    "xe_": ("yh sg e ", "sg", "egress"),
    "xi_": ("yh sg i ", "sg", "ingress"),
    "xae_": ("yh acl e ", "acl", "egress"),
    "xai_": ("yh acl i ", "acl", "ingress"),
}
LOG_PREFIXES = {prefix: (check, d) for prefix, check, d in REJECT_CHAINS.values()}


@dataclass(frozen=True)
class PortRules:
    ifname: str
    ingress: tuple[SgRuleDesired, ...]
    egress: tuple[SgRuleDesired, ...]


@dataclass(frozen=True)
class AclPort:
    """A port in a subnet with a network ACL: the subnet's CIDR (traffic inside it is not
    checked) and the ACL's rules of each direction, by number."""

    ifname: str
    subnet: str
    ingress: tuple[AclRuleDesired, ...]
    egress: tuple[AclRuleDesired, ...]


Groups = tuple[tuple[str, tuple[str, ...]], ...]


def zone_of(vni: int) -> int:
    """The conntrack zone of a VPC (1..65535). Each VPC has its own namespace too, so two
    VPCs whose zones collide still never share conntrack state."""
    return vni % 65535 + 1


def generation(zone: int, ports: tuple[PortRules, ...], acls: tuple[AclPort, ...] = ()) -> int:
    """The rule set's generation: its rules' hash. Members are not part of it: a member
    joining or leaving changes set elements only (an established flow of a member that left
    lives on until it idles out; a rule change re-checks every flow)."""
    text = repr((zone, [(p.ifname, p.ingress, p.egress) for p in ports], acls))
    return (zlib.crc32(text.encode()) & 0x7FFFFFFF) | 1


def _match(left: Any, op: str, right: Any) -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _ct(key: str) -> dict[str, Any]:
    return {"ct": {"key": key}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _addr(cidr: str) -> Any:
    net = ipaddress.IPv4Network(cidr)
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def cidr_set(cidr: str) -> str:
    """The interval set holding a CIDR peer, named by the CIDR: rules with the same peer
    share it, and the name says what it holds."""
    net = ipaddress.IPv4Network(cidr)
    return f"c_{int(net.network_address):08x}_{net.prefixlen}"


def _peer_cidr(cidr: str | None) -> str | None:
    """A CIDR that needs matching (0.0.0.0/0 matches everything: no match at all)."""
    if cidr is None or ipaddress.IPv4Network(cidr).prefixlen == 0:
        return None
    return str(ipaddress.IPv4Network(cidr))


def rule_expr(rule: SgRuleDesired, direction: str, reject: str) -> list[dict[str, Any]]:
    """The expressions of one rule in a port chain, as nft lists them back; a deny goes to
    the chain `reject` (which logs, rate-limited, and drops)."""
    expr: list[dict[str, Any]] = []
    if rule.port_min is not None and rule.proto in ("tcp", "udp"):
        lo, hi = rule.port_min, rule.port_max if rule.port_max is not None else rule.port_min
        right: Any = lo if lo == hi else {"range": [lo, hi]}
        expr.append(_match({"payload": {"protocol": rule.proto, "field": "dport"}}, "==", right))
    elif rule.proto != "any":
        expr.append(_match({"payload": {"protocol": "ip", "field": "protocol"}}, "==", rule.proto))
    field = "saddr" if direction == "ingress" else "daddr"
    addr = {"payload": {"protocol": "ip", "field": field}}
    if rule.group is not None:
        expr.append(_match(addr, "==", f"@m_{rule.group}"))
    elif (cidr := _peer_cidr(rule.cidr)) is not None:
        expr.append(_match(addr, "==", "@" + cidr_set(cidr)))
    expr.append({"return": None} if rule.action == "allow" else _goto(reject))
    return expr


def _goto(chain: str) -> dict[str, Any]:
    return {"goto": {"target": chain}}


def acl_expr(rule: AclRuleDesired, reject: str) -> list[dict[str, Any]]:
    """The expressions of one ACL rule, as nft lists them back."""
    return rule_expr(
        SgRuleDesired(
            id="",
            direction=rule.direction,
            proto=rule.proto,
            port_min=rule.port_min,
            port_max=rule.port_max,
            cidr=rule.cidr,
            action=rule.action,
        ),
        rule.direction,
        reject,
    )


_SEP = "|"


def _acl_comment(rule: AclRuleDesired) -> str:
    return _SEP.join(
        str(x) if x is not None else ""
        for x in ("acl", rule.number, rule.direction, rule.proto, rule.port_min, rule.port_max,
                  rule.cidr, rule.action)
    )  # fmt: skip


def _acl_from_comment(text: str) -> AclRuleDesired:
    f = text.split(_SEP)
    if len(f) != 8 or f[0] != "acl":
        raise ValueError(text)
    return AclRuleDesired(
        number=int(f[1]),
        direction=f[2],  # type: ignore[arg-type]
        proto=f[3],  # type: ignore[arg-type]
        port_min=int(f[4]) if f[4] else None,
        port_max=int(f[5]) if f[5] else None,
        cidr=f[6],
        action=f[7],  # type: ignore[arg-type]
    )


def _comment(rule: SgRuleDesired) -> str:
    return _SEP.join(
        str(x) if x is not None else ""
        for x in (rule.id, rule.direction, rule.proto, rule.port_min, rule.port_max,
                  rule.cidr, rule.group, rule.action, rule.priority)
    )  # fmt: skip


def _from_comment(text: str) -> SgRuleDesired:
    f = text.split(_SEP)
    if len(f) != 9:
        raise ValueError(text)
    return SgRuleDesired(
        id=f[0],
        direction=f[1],  # type: ignore[arg-type]
        proto=f[2],  # type: ignore[arg-type]
        port_min=int(f[3]) if f[3] else None,
        port_max=int(f[4]) if f[4] else None,
        cidr=f[5] or None,
        group=f[6] or None,
        action=f[7],  # type: ignore[arg-type]
        priority=int(f[8]),
    )


def _fwd_rules(
    gen: int, ports: tuple[PortRules, ...], acls: tuple[AclPort, ...]
) -> list[tuple[str, list[dict[str, Any]]]]:
    out: list[tuple[str, list[dict[str, Any]]]] = []
    # Network ACLs first, on every packet (stateless), replies included.
    if acls:
        for tag, key, prefix in (
            ("acl-egress", "iifname", "ae_"),
            ("acl-ingress", "oifname", "ai_"),
        ):
            elems = [[a.ifname, {"jump": {"target": prefix + a.ifname}}] for a in acls]
            out.append((tag, [{"vmap": {"key": _meta(key), "data": {"set": elems}}}]))
    out += [
        ("reply", [_match(_ct("state"), "in", "established"),
                   _match(_ct("direction"), "==", "reply"), {"accept": None}]),
        ("related", [_match(_ct("state"), "in", "related"), {"accept": None}]),
        ("checked", [_match(_ct("mark"), "==", gen), {"accept": None}]),
    ]  # fmt: skip
    if ports:
        for tag, key, prefix in (("egress", "iifname", "e_"), ("ingress", "oifname", "i_")):
            elems = [[p.ifname, {"jump": {"target": prefix + p.ifname}}] for p in ports]
            out.append((tag, [{"vmap": {"key": _meta(key), "data": {"set": elems}}}]))
    out.append(("stamp", [{"mangle": {"key": _ct("mark"), "value": gen}}]))
    return out


def _port_chains(
    ports: tuple[PortRules, ...],
) -> list[tuple[str, list[tuple[str, list[dict[str, Any]]]]]]:
    out = []
    for p in ports:
        for prefix, direction, rules in (("e_", "egress", p.egress), ("i_", "ingress", p.ingress)):
            reject = "x" + prefix + p.ifname
            body = [(_comment(r), rule_expr(r, direction, reject)) for r in rules]
            body.append(("end", [_goto(reject)]))
            out.append((prefix + p.ifname, body))
    return out


def _reject_chains(
    ports: tuple[PortRules, ...], acls: tuple[AclPort, ...]
) -> list[tuple[str, list[tuple[str, list[dict[str, Any]]]]]]:
    out: list[tuple[str, list[tuple[str, list[dict[str, Any]]]]]] = []
    for chain_prefixes, names in ((("xae_", "xai_"), [a.ifname for a in acls]),
                                  (("xe_", "xi_"), [p.ifname for p in ports])):  # fmt: skip
        for ifname in names:
            for prefix in chain_prefixes:
                log_prefix = REJECT_CHAINS[prefix][0]
                limit = {"limit": {"rate": LOG_RATE, "burst": LOG_BURST, "per": "second"}}
                logged: list[dict[str, Any]] = [
                    limit,
                    {"log": {"prefix": log_prefix, "group": LOG_GROUP}},
                ]
                out.append((prefix + ifname, [("log", logged), ("drop", [{"drop": None}])]))
    return out


def _acl_chains(
    acls: tuple[AclPort, ...],
) -> list[tuple[str, list[tuple[str, list[dict[str, Any]]]]]]:
    out = []
    for a in acls:
        for prefix, direction, rules in (
            ("ae_", "egress", a.egress),
            ("ai_", "ingress", a.ingress),
        ):
            field = "daddr" if direction == "egress" else "saddr"
            inside = _match({"payload": {"protocol": "ip", "field": field}}, "==", _addr(a.subnet))
            body = [(f"subnet{_SEP}{a.subnet}", [inside, {"return": None}])]
            reject = "x" + prefix + a.ifname
            body += [(_acl_comment(r), acl_expr(r, reject)) for r in rules]
            body.append(("end", [_goto(reject)]))
            out.append((prefix + a.ifname, body))
    return out


def table_batch(
    zone: int, groups: Groups, ports: tuple[PortRules, ...], acls: tuple[AclPort, ...] = ()
) -> dict[str, Any]:
    """One atomic transaction that (re)creates the whole table."""
    t = {"family": FAMILY, "name": TABLE}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": t}},
        {"delete": {"table": t}},  # the add above makes this delete never fail
        {"add": {"table": t}},
    ]
    for gid, members in groups:
        s: dict[str, Any] = {
            "family": FAMILY,
            "table": TABLE,
            "name": f"m_{gid}",
            "type": "ipv4_addr",
        }
        if members:
            s["elem"] = list(members)
        cmds.append({"add": {"set": s}})
    for cidr in _cidrs(ports, acls):
        cmds.append(
            {
                "add": {
                    "set": {
                        "family": FAMILY,
                        "table": TABLE,
                        "name": cidr_set(cidr),
                        "type": "ipv4_addr",
                        "flags": ["interval"],
                        "elem": [_addr(cidr)],
                    }
                }
            }
        )
    base = {"family": FAMILY, "table": TABLE, "type": "filter", "policy": "accept"}
    for name, hook, prio in (
        ("zone_pre", "prerouting", -300),
        ("zone_out", "output", -300),
        ("fwd", "forward", 0),
    ):
        cmds.append({"add": {"chain": {**base, "name": name, "hook": hook, "prio": prio}}})
    chains = _acl_chains(acls) + _port_chains(ports) + _reject_chains(ports, acls)
    for name, _body in chains:
        cmds.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}})

    def rule(chain: str, tag: str, expr: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "add": {
                "rule": {
                    "family": FAMILY,
                    "table": TABLE,
                    "chain": chain,
                    "comment": tag,
                    "expr": expr,
                }
            }
        }

    zone_set = [{"mangle": {"key": _ct("zone"), "value": zone}}]
    cmds.append(rule("zone_pre", "zone", zone_set))
    cmds.append(rule("zone_out", "zone", zone_set))
    for tag, expr in _fwd_rules(generation(zone, ports, acls), ports, acls):
        cmds.append(rule("fwd", tag, expr))
    for name, body in chains:
        for tag, expr in body:
            cmds.append(rule(name, tag, expr))
    return {"nftables": cmds}


def _cidrs(ports: tuple[PortRules, ...], acls: tuple[AclPort, ...]) -> list[str]:
    """The CIDR peers the rules match, each once, in address order."""
    found: set[str] = set()
    for p in ports:
        for r in (*p.ingress, *p.egress):
            if r.group is None and (c := _peer_cidr(r.cidr)) is not None:
                found.add(c)
    for a in acls:
        for ar in (*a.ingress, *a.egress):
            if (c := _peer_cidr(ar.cidr)) is not None:
                found.add(c)
    return sorted(found, key=net_key)


def members_batch(old: Groups, new: Groups) -> dict[str, Any] | None:
    """The element changes that turn member sets `old` into `new`, in one transaction; None
    when the sets themselves differ (a group appears or goes: the table is rewritten)."""
    was, now = dict(old), dict(new)
    if was.keys() != now.keys():
        return None
    cmds: list[dict[str, Any]] = []
    for gid, members in now.items():
        gone = sorted(set(was[gid]) - set(members), key=ipaddress.IPv4Address)
        added = sorted(set(members) - set(was[gid]), key=ipaddress.IPv4Address)
        where = {"family": FAMILY, "table": TABLE, "name": f"m_{gid}"}
        if gone:
            cmds.append({"delete": {"element": {**where, "elem": gone}}})
        if added:
            cmds.append({"add": {"element": {**where, "elem": added}}})
    return {"nftables": cmds}


def delete_cmd() -> dict[str, Any]:
    return {"nftables": [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]}


Parsed = tuple[int, Groups, tuple[PortRules, ...], tuple[AclPort, ...]]


def parse(listing: dict[str, Any]) -> Parsed:
    """(zone, groups, ports, acls) read back from a `list table ip yunhan_sg` listing; zone
    BROKEN_ZONE when any rule, chain or set is not exactly what these would render."""
    sets: dict[str, list[str]] = {}
    chains: dict[str, dict[str, Any]] = {}
    rules: dict[str, list[tuple[str, Any]]] = {}
    for item in listing.get("nftables", []):
        if "set" in item:
            elems = item["set"].get("elem", [])
            sets[item["set"]["name"]] = [str(e) for e in elems]
        elif "chain" in item:
            chains[item["chain"]["name"]] = item["chain"]
            rules.setdefault(item["chain"]["name"], [])
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault(r["chain"], []).append((r.get("comment", ""), r["expr"]))
    broken: Parsed = (BROKEN_ZONE, (), (), ())
    try:
        zone_rules = rules["zone_pre"]
        zone = int(zone_rules[0][1][0]["mangle"]["value"])
        groups = tuple(
            sorted(
                (name[2:], tuple(sorted(v, key=ipaddress.IPv4Address)))
                for name, v in sets.items()
                if name.startswith("m_")
            )
        )
        names = sorted(n for n in chains if n.startswith(("e_", "i_")))
        ifnames = sorted({n[2:] for n in names})
        ports = []
        for ifname in ifnames:
            got: dict[str, tuple[SgRuleDesired, ...]] = {}
            for prefix in ("e_", "i_"):
                body = rules.get(prefix + ifname, [])
                got[prefix] = tuple(_from_comment(c) for c, _e in body[:-1])
            ports.append(PortRules(ifname, got["i_"], got["e_"]))
        port_t = tuple(ports)
        acls = []
        for ifname in sorted({n[3:] for n in chains if n.startswith(("ae_", "ai_"))}):
            got_acl: dict[str, tuple[AclRuleDesired, ...]] = {}
            subnet = ""
            for prefix in ("ae_", "ai_"):
                body = rules.get(prefix + ifname, [])
                subnet = body[0][0].split(_SEP, 1)[1]
                got_acl[prefix] = tuple(_acl_from_comment(c) for c, _e in body[1:-1])
            acls.append(AclPort(ifname, subnet, got_acl["ai_"], got_acl["ae_"]))
        acl_t = tuple(acls)
        want = table_batch(zone, groups, port_t, acl_t)
    except (KeyError, ValueError, TypeError, IndexError):
        return broken
    # Every chain and rule must be exactly what (zone, groups, ports) renders.
    want_rules: dict[str, list[tuple[str, Any]]] = {}
    want_chains: dict[str, dict[str, Any]] = {}
    for cmd in want["nftables"]:
        add = cmd.get("add", {})
        if "chain" in add:
            want_chains[add["chain"]["name"]] = add["chain"]
            want_rules.setdefault(add["chain"]["name"], [])
        elif "rule" in add:
            want_rules[add["rule"]["chain"]].append((add["rule"]["comment"], add["rule"]["expr"]))
    want_cidrs = {cidr_set(c): [str(_addr(c))] for c in _cidrs(port_t, acl_t)}
    have_cidrs = {n: v for n, v in sets.items() if n.startswith("c_")}
    if set(chains) != set(want_chains) or len(sets) != len(groups) + len(have_cidrs):
        return broken
    if have_cidrs != want_cidrs:
        return broken
    for name, c in want_chains.items():
        have = chains[name]
        if any(have.get(k) != c.get(k) for k in ("hook", "prio", "type")):
            return broken
        if _norm(rules[name]) != _norm(want_rules[name]):
            return broken
    return zone, groups, port_t, acl_t


def _norm(body: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Rules comparable between what we send and what nft lists: vmap and set elements
    sorted."""
    out = []
    for tag, expr in body:
        e2 = []
        for e in expr:
            if isinstance(e, dict) and "vmap" in e:
                data = e["vmap"]["data"]
                elems = data.get("set", []) if isinstance(data, dict) else []
                e = {"vmap": {"key": e["vmap"]["key"], "data": sorted(map(repr, elems))}}
            e2.append(e)
        out.append((tag, e2))
    return out
