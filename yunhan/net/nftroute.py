"""The `ip yunhan` nft table of a VPC namespace: the packet marks of distributed routing.

Marks carry what ip rules select on (docs/routing.md): bits 16-31 the selector of the
source subnet, bit 0 "routed". Layout, rewritten whole in one atomic batch:

* map `port_sel` (ifname -> mark): the selector of each instance port;
* map `src_sel` (interval, ipv4 -> mark): subnet CIDR -> selector | routed;
* chain `pre` (prerouting, mangle): a packet from a port takes its port's selector; a
  packet from vxlan0 flagged routed (bit 0, carried by VXLAN-GBP) takes the selector of
  its source address's subnet, so this host routes it by the same tables as the sender;
* chain `post` (postrouting): a packet leaving through vxlan0 by a route of realm
  ROUTED_REALM (a next hop on another host) is flagged routed, every other one leaves
  with mark 0.

Rendering is pure; observation reads the maps' elements back and checks that the chains
hold exactly our rules (a rule changed by hand reads as BROKEN, never equal to a wanted
state, so the next apply rewrites the table).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from yunhan.net.desired import MARK_ROUTED, ROUTED_REALM
from yunhan.net.naming import VXLAN_IFNAME

FAMILY = "ip"
TABLE = "yunhan"
PORT_MAP = "port_sel"
SRC_MAP = "src_sel"
BROKEN: tuple[tuple[str, int], ...] = (("<broken>", -1),)

Entries = tuple[tuple[str, int], ...]


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _match(left: Any, op: str, right: Any) -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _set_mark(value: Any) -> dict[str, Any]:
    return {"mangle": {"key": _meta("mark"), "value": value}}


def _rules() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(chain, comment) -> expressions of every rule of the table, in order."""
    routed = {"&": [_meta("mark"), MARK_ROUTED]}
    return {
        ("pre", "port"): [
            _set_mark({"map": {"key": _meta("iifname"), "data": f"@{PORT_MAP}"}}),
        ],
        ("pre", "routed"): [
            _match(_meta("iifname"), "==", VXLAN_IFNAME),
            _match(routed, "==", MARK_ROUTED),
            _set_mark(
                {
                    "map": {
                        "key": {"payload": {"protocol": "ip", "field": "saddr"}},
                        "data": f"@{SRC_MAP}",
                    }
                }
            ),
        ],
        ("post", "flag"): [
            _match(_meta("oifname"), "==", VXLAN_IFNAME),
            _match(_meta("rtclassid"), "==", str(ROUTED_REALM)),
            _set_mark(MARK_ROUTED),
        ],
        ("post", "clear"): [
            _match(_meta("oifname"), "==", VXLAN_IFNAME),
            _match(_meta("rtclassid"), "!=", str(ROUTED_REALM)),
            _set_mark(0),
        ],
    }


def _prefix(cidr: str) -> Any:
    net = ipaddress.IPv4Network(cidr)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def table_batch(ports: Entries, sources: Entries) -> dict[str, Any]:
    """One atomic transaction that (re)creates the whole table with these map elements."""
    t = {"family": FAMILY, "name": TABLE}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": t}},
        {"delete": {"table": t}},  # the add above makes this delete never fail
        {"add": {"table": t}},
    ]
    pmap: dict[str, Any] = {
        "family": FAMILY, "table": TABLE, "name": PORT_MAP, "type": "ifname", "map": "mark",
    }  # fmt: skip
    if ports:
        pmap["elem"] = [[name, mark] for name, mark in ports]
    smap: dict[str, Any] = {
        "family": FAMILY, "table": TABLE, "name": SRC_MAP, "type": "ipv4_addr", "map": "mark",
        "flags": ["interval"],
    }  # fmt: skip
    if sources:
        smap["elem"] = [[_prefix(cidr), mark] for cidr, mark in sources]
    cmds += [{"add": {"map": pmap}}, {"add": {"map": smap}}]
    for chain, hook, prio in (("pre", "prerouting", -150), ("post", "postrouting", 0)):
        cmds.append(
            {
                "add": {
                    "chain": {
                        "family": FAMILY,
                        "table": TABLE,
                        "name": chain,
                        "type": "filter",
                        "hook": hook,
                        "prio": prio,
                        "policy": "accept",
                    }
                }
            }
        )
    for (chain, tag), expr in _rules().items():
        rule = {"family": FAMILY, "table": TABLE, "chain": chain, "comment": tag, "expr": expr}
        cmds.append({"add": {"rule": rule}})
    return {"nftables": cmds}


def delete_cmd() -> dict[str, Any]:
    return {"nftables": [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]}


def parse(listing: dict[str, Any]) -> tuple[Entries, Entries]:
    """(ports, sources) read back from a `list table ip yunhan` JSON listing; BROKEN for
    the ports when the chains or maps are not exactly ours."""
    maps: dict[str, Any] = {}
    rules: list[tuple[str, str, Any]] = []
    chains: dict[str, Any] = {}
    for item in listing.get("nftables", []):
        if "map" in item:
            maps[item["map"]["name"]] = item["map"]
        elif "chain" in item:
            chains[item["chain"]["name"]] = item["chain"]
        elif "rule" in item:
            r = item["rule"]
            rules.append((r["chain"], r.get("comment", ""), r["expr"]))
    try:
        want = _rules()
        if [(c, t) for c, t, _ in rules] != list(want):
            raise ValueError("rules")
        for c, t, expr in rules:
            if expr != want[(c, t)]:
                raise ValueError(f"rule {c}/{t}")
        pre, post = chains["pre"], chains["post"]
        if (pre.get("hook"), pre.get("prio"), post.get("hook"), post.get("prio")) != (
            "prerouting", -150, "postrouting", 0,
        ):  # fmt: skip
            raise ValueError("hooks")
        ports = tuple(sorted((str(k), int(v)) for k, v in maps[PORT_MAP].get("elem", [])))
        sources = tuple(
            sorted(
                ((_cidr(k), int(v)) for k, v in maps[SRC_MAP].get("elem", [])),
                key=lambda e: ipaddress.IPv4Network(e[0]),
            )
        )
        return ports, sources
    except (KeyError, ValueError, TypeError):
        return BROKEN, ()


def _cidr(key: Any) -> str:
    if isinstance(key, str):
        return f"{key}/32"
    if isinstance(key, dict) and "prefix" in key:
        return f"{key['prefix']['addr']}/{key['prefix']['len']}"
    if isinstance(key, dict) and "elem" in key:  # an element with flags (timeout, comment)
        return _cidr(key["elem"]["val"])
    raise ValueError(key)
