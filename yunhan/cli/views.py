"""How resources look on the terminal: flat rows for tables, JSON and YAML.

A row is a plain dict with at least `id` and `name`, plus what a script needs without a
second lookup: references by name (`vpc`, `subnet`, `zone`) next to their ids (`vpc_id`,
…), and the interesting status fields (`ip`, `host`, `phase`, …). The same row feeds every
format (`-o table|wide|json|yaml`): `table` shows a chosen subset of its columns, `wide`
more of them (ids, revisions, times), `json` and `yaml` all of it, so they never disagree.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from yunhan.cli import yamlout
from yunhan.errors import ValidationError, YunhanError
from yunhan.model.hybrid import replica_up
from yunhan.model.volumes import format_size, format_tiers

if TYPE_CHECKING:
    from yunhan.cli.client import Client

Row = dict[str, Any]


class Names:
    """id -> name for the kinds rows refer to, fetched once per command and only if needed."""

    _PATHS = {"vpc": "/v1/vpcs", "subnet": "/v1/subnets", "zone": "/v1/zones",
              "instance": "/v1/instances", "natgw": "/v1/natgws",
              "route_table": "/v1/route-tables",
              "security_group": "/v1/security-groups", "network_acl": "/v1/acls",
              "vip": "/v1/vips", "volume": "/v1/volumes"}  # fmt: skip

    def __init__(self, client: Client | None) -> None:
        self._client = client
        self._cache: dict[str, dict[str, str]] = {}

    def of(self, kind: str, ref: str | None) -> str | None:
        if ref is None:
            return None
        if kind not in self._cache:
            self._cache[kind] = {}
            if self._client is not None:
                try:
                    items = self._client.items(self._PATHS[kind])
                    self._cache[kind] = {i["id"]: i["name"] for i in items}
                except YunhanError:
                    pass  # a name we cannot see is shown as its id
        return self._cache[kind].get(ref, ref)


def _spec(res: Row) -> Row:
    return res.get("spec") or {}


def _status(res: Row) -> Row:
    return res.get("status") or {}


def vpc_row(res: Row, names: Names) -> Row:
    return {
        "id": res["id"],
        "name": res["name"],
        "cidrs": list(_spec(res).get("cidrs") or []),
        "vni": _status(res).get("vni"),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def subnet_row(res: Row, names: Names) -> Row:
    st = _status(res)
    vpc = _spec(res).get("vpc")
    return {
        "id": res["id"],
        "name": res["name"],
        "vpc": names.of("vpc", vpc),
        "vpc_id": vpc,
        "cidr": _spec(res).get("cidr"),
        "gateway": st.get("gateway"),
        "available": st.get("available"),
        "route_table": names.of("route_table", _spec(res).get("route_table")),
        "acl": names.of("network_acl", _spec(res).get("acl")),
        "location": _spec(res).get("location") or "cloud",
        "served_in": _spec(res).get("serve") or "cloud",
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def instance_row(res: Row, names: Names) -> Row:
    sp, st = _spec(res), _status(res)
    return {
        "id": res["id"],
        "name": res["name"],
        "subnet": names.of("subnet", sp.get("subnet")),
        "subnet_id": sp.get("subnet"),
        "vpc": names.of("vpc", st.get("vpc")),
        "vpc_id": st.get("vpc"),
        "zone": names.of("zone", sp.get("zone")),
        "zone_id": sp.get("zone"),
        "ip": st.get("ip"),
        "mac": st.get("mac"),
        "host": st.get("host"),
        "phase": st.get("phase"),
        "message": st.get("message"),
        "command": sp.get("command"),
        "security_groups": [names.of("security_group", g) for g in sp.get("security_groups") or []],
        "netns": st.get("netns"),
        "uts": st.get("uts"),
        "migrations": st.get("migrations") or [],
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def zone_row(res: Row, names: Names) -> Row:
    return {
        "id": res["id"],
        "name": res["name"],
        "cidr": _spec(res).get("underlay_cidr"),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def host_row(res: Row, names: Names) -> Row:
    sp, st = _spec(res), _status(res)
    return {
        "id": res["id"],
        "name": res["name"],
        "zone": names.of("zone", sp.get("zone")),
        "zone_id": sp.get("zone"),
        "ip": sp.get("underlay_ip"),
        "mtu": sp.get("mtu"),
        "healthy": st.get("healthy"),
        "condition": st.get("condition"),
        "vtep_index": st.get("vtep_index"),
        "desired_revision": st.get("desired_revision"),
        "applied_revision": st.get("applied_revision"),
        "heartbeat_at": st.get("heartbeat_at"),
        "error": st.get("error"),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def project_row(res: Row, names: Names) -> Row:
    return {"id": res["id"], "name": res["name"], "created_at": res.get("created_at")}


def route_table_row(res: Row, names: Names) -> Row:
    vpc = _spec(res).get("vpc")
    return {
        "id": res["id"],
        "name": res["name"],
        "vpc": names.of("vpc", vpc),
        "vpc_id": vpc,
        "default": bool(_spec(res).get("default")),
        "index": _status(res).get("index"),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def next_hop(nh: Row | None, names: Names) -> str | None:
    """A stored next hop as people write it: instance:NAME, natgw:NAME, vip:IP, blackhole."""
    if not nh:
        return None
    kind = nh.get("type")
    if kind == "blackhole":
        return "blackhole"
    if kind == "vip":
        return f"vip:{nh.get('ip')}"
    return f"{kind}:{names.of(str(kind), nh.get('id'))}"


def port_range(port: Sequence[int] | None) -> str | None:
    if not port:
        return None
    lo, hi = port
    return str(lo) if lo == hi else f"{lo}-{hi}"


def route_row(res: Row, names: Names) -> Row:
    sp = _spec(res)
    return {
        "id": res["id"],
        "table": names.of("route_table", sp.get("table")),
        "table_id": sp.get("table"),
        "dst": sp.get("dst"),
        "priority": sp.get("priority"),
        "next_hop": next_hop(sp.get("next_hop"), names),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def policy_route_row(res: Row, names: Names) -> Row:
    sp = _spec(res)
    return {
        "id": res["id"],
        "table": names.of("route_table", sp.get("table")),
        "table_id": sp.get("table"),
        "priority": sp.get("priority"),
        "src": sp.get("src"),
        "dst": sp.get("dst"),
        "proto": sp.get("proto"),
        "port": port_range(sp.get("port")),
        "action": sp.get("action"),
        "next_hop": next_hop(sp.get("next_hop"), names),
        "index": _status(res).get("index"),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def idc_site_row(res: Row, names: Names) -> Row:
    sp = _spec(res)
    return {
        "id": res["id"],
        "name": res["name"],
        "cidrs": sp.get("cidrs"),
        "asn": sp.get("asn"),
        "router_ip": sp.get("router_ip"),
        "line": sp.get("line_cidr"),
        "line_vni": sp.get("line_vni"),
        "line_vtep": sp.get("line_vtep"),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def _replica_line(r: Row) -> str:
    bfd = f", bfd {r['bfd']}" if r.get("bfd") else ""
    reason = f": {r['reason']}" if r.get("reason") and r.get("state") != "Established" else ""
    return (
        f"#{r.get('index')} {r.get('host')} {str(r.get('line_ip', '')).split('/')[0]} "
        f"{r.get('state')}{bfd}{reason}"
    )


def hybrid_gw_row(res: Row, names: Names) -> Row:
    sp, st = _spec(res), _status(res)
    reps = st.get("replicas") or []
    return {
        "id": res["id"],
        "name": res["name"],
        "vpc": names.of("vpc", sp.get("vpc")),
        "vpc_id": sp.get("vpc"),
        "site": st.get("site_name"),
        "peer": f"{sp.get('peer_ip')} AS{sp.get('peer_asn')}",
        "asn": sp.get("asn"),
        "md5": bool(sp.get("md5")),
        "bfd": sp.get("bfd"),
        "phase": st.get("phase"),
        "want": sp.get("replicas"),
        "up": sum(1 for r in reps if replica_up(r)),
        "replicas": [_replica_line(r) for r in reps],
        "history": [
            f"{h.get('at')} replica {h.get('replica')} {h.get('from') or '-'} -> {h.get('to')}"
            for h in st.get("history") or []
        ],
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def hybrid_route_row(res: Row, names: Names) -> Row:
    return {
        "prefix": res.get("prefix"),
        "origin": res.get("origin"),
        "replica": res.get("replica") if res.get("replica") is not None else "-",
        "nexthop": res.get("nexthop"),
        "as_path": res.get("as_path") or "-",
        "installed": "yes" if res.get("installed") else "no (outside the VPC's IDC subnets)",
    }


def natgw_row(res: Row, names: Names) -> Row:
    sp, st = _spec(res), _status(res)
    return {
        "id": res["id"],
        "name": res["name"],
        "vpc": names.of("vpc", sp.get("vpc")),
        "vpc_id": sp.get("vpc"),
        "subnets": [names.of("subnet", s) for s in sp.get("subnets") or []],
        "public_ip": st.get("public_ip"),
        "host": st.get("host"),
        "phase": st.get("phase"),
        "forwards": [
            f"{f['proto']}/{f['port']}->{names.of('instance', f['instance'])}:{f['to_port']}"
            for f in sp.get("forwards") or []
        ],
        "moved_at": st.get("moved_at"),
        "history": [
            f"{m.get('at')} {m.get('from') or '-'}->{m.get('to') or '-'} ({m.get('reason')})"
            for m in st.get("history") or []
        ],
        "index": st.get("index"),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def eip_row(res: Row, names: Names) -> Row:
    st = _status(res)
    return {
        "id": res["id"],
        "name": res["name"],
        "address": st.get("address"),
        "instance": names.of("instance", st.get("instance")),
        "instance_id": st.get("instance"),
        "natgw": names.of("natgw", st.get("natgw")),
        "natgw_id": st.get("natgw"),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def table_entry_row(e: Row, names: Names) -> Row:
    """One line of `route-table show`: a route of the table as it stands."""
    return {
        "type": e.get("type"),
        "dst": e.get("dst"),
        "priority": e.get("priority"),
        "next_hop": e.get("next_hop") or ("local" if e.get("type") == "direct" else None),
        "state": e.get("state"),
        "subnet": e.get("subnet"),
        "host": e.get("host"),
        "id": e.get("id"),
    }


def policy_entry_row(p: Row, names: Names) -> Row:
    return {
        "priority": p.get("priority"),
        "src": p.get("src") or "any",
        "dst": p.get("dst") or "any",
        "proto": p.get("proto"),
        "port": port_range(p.get("port")),
        "action": p.get("action"),
        "next_hop": p.get("next_hop"),
        "state": p.get("state"),
        "id": p.get("id"),
    }


def security_group_row(res: Row, names: Names) -> Row:
    sp = _spec(res)
    vpc = sp.get("vpc")
    return {
        "id": res["id"],
        "name": res["name"],
        "vpc": names.of("vpc", vpc),
        "vpc_id": vpc,
        "default": bool(sp.get("default")),
        "rules": len(sp.get("rules") or []),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def sg_rule_row(rule: Row, names: Names) -> Row:
    port = rule.get("port")
    peer = rule.get("peer") or {}
    return {
        "id": rule["id"],
        "priority": rule.get("priority"),
        "direction": rule.get("direction"),
        "proto": rule.get("proto"),
        "port": None
        if not port
        else (str(port[0]) if port[0] == port[1] else f"{port[0]}-{port[1]}"),
        "peer": peer.get("cidr") or f"sg:{names.of('security_group', peer.get('sg'))}",
        "action": rule.get("action"),
    }


def _ports(port: list[int] | None) -> str | None:
    if not port:
        return None
    return f"{port[0]}" if port[0] == port[1] else f"{port[0]}-{port[1]}"


def acl_row(res: Row, names: Names) -> Row:
    vpc = _spec(res).get("vpc")
    return {
        "id": res["id"],
        "name": res["name"],
        "vpc": names.of("vpc", vpc),
        "vpc_id": vpc,
        "rules": len(_spec(res).get("rules") or []),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def acl_rule_row(rule: Row, names: Names) -> Row:
    port = rule.get("port")
    return {
        "number": rule.get("number"),
        "direction": rule.get("direction"),
        "proto": rule.get("proto"),
        "port": None
        if not port
        else f"{port[0]}"
        if port[0] == port[1]
        else f"{port[0]}-{port[1]}",
        "cidr": rule.get("cidr"),
        "action": rule.get("action"),
    }


def flow_log_row(res: Row, names: Names) -> Row:
    sp = _spec(res)
    scope, target = sp.get("scope"), sp.get("target")
    return {
        "id": res["id"],
        "name": res["name"],
        "scope": scope,
        "target": names.of(scope, target) if scope in ("vpc", "subnet", "instance") else target,
        "target_id": target,
        "traffic_type": sp.get("filter"),
        "vpc": names.of("vpc", sp.get("vpc")),
        "vpc_id": sp.get("vpc"),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def vip_row(res: Row, names: Names) -> Row:
    """A VIP; `history` as objects (from, to: instance names), `show` prints them as lines."""
    sp, st = _spec(res), _status(res)
    return {
        "id": res["id"],
        "name": res["name"],
        "vpc": names.of("vpc", sp.get("vpc")),
        "subnet": names.of("subnet", sp.get("subnet")),
        "ip": sp.get("ip"),
        "allowed": [names.of("instance", i) for i in sp.get("allowed") or []],
        "holder": names.of("instance", st.get("holder")),
        "holder_zone": names.of("zone", st.get("holder_zone")),
        "holder_host": st.get("holder_host"),
        "epoch": st.get("epoch"),
        "delivered_to": names.of("instance", st.get("delivered_to")),
        "damped_since": st.get("damped_since"),
        "history": [
            {
                "at": h.get("at"),
                "from": names.of("instance", h.get("from")),
                "to": names.of("instance", h.get("to")),
                "cause": h.get("cause"),
                "epoch": h.get("epoch"),
            }
            for h in st.get("history") or []
        ],
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def volume_row(res: Row, names: Names) -> Row:
    """A volume: sizes as people write them (10G), its attachment and protection."""
    sp, st = _spec(res), _status(res)
    att = sp.get("attachment") or {}
    src = sp.get("source") or {}
    return {
        "id": res["id"],
        "name": res["name"],
        "zone": names.of("zone", sp.get("zone")),
        "size": format_size(int(sp.get("size") or 0)),
        "phase": st.get("phase"),
        "host": st.get("host"),
        "home": st.get("home"),
        "instance": names.of("instance", att.get("instance")),
        "path": att.get("path"),
        "tiers": format_tiers(sp.get("tiers")),
        "used": format_size(int(st.get("used_bytes") or 0)),
        "journal": format_size(int(st.get("journal_bytes") or 0)),
        "device": st.get("device"),
        "mounted": st.get("mounted"),
        "fill": st.get("fill"),
        "restored_serial": st.get("restored_serial"),
        "source": names.of("volume", src.get("volume")),
        "error": st.get("error"),
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


ROWS: dict[str, Callable[[Row, Names], Row]] = {
    "vpc": vpc_row,
    "subnet": subnet_row,
    "instance": instance_row,
    "zone": zone_row,
    "host": host_row,
    "project": project_row,
    "route_table": route_table_row,
    "route": route_row,
    "policy_route": policy_route_row,
    "natgw": natgw_row,
    "idc_site": idc_site_row,
    "hybrid_gw": hybrid_gw_row,
    "hybrid_route": hybrid_route_row,
    "eip": eip_row,
    "security_group": security_group_row,
    "sg_rule": sg_rule_row,
    "network_acl": acl_row,
    "acl_rule": acl_rule_row,
    "flow_log": flow_log_row,
    "table_entry": table_entry_row,
    "policy_entry": policy_entry_row,
    "vip": vip_row,
    "volume": volume_row,
}

COLUMNS: dict[str, tuple[str, ...]] = {
    "datapath": ("host", "zone", "datapath", "fast", "kernel", "fast_packets",
                 "slow_packets", "reason"),
    "datapath instance": ("instance", "id", "path", "why"),
    "vpc": ("name", "id", "cidrs", "vni"),
    "subnet": ("name", "id", "vpc", "cidr", "gateway", "available"),
    "instance": ("name", "id", "subnet", "zone", "ip", "host", "phase"),
    "zone": ("name", "id", "cidr"),
    "host": ("name", "zone", "ip", "healthy", "desired_revision", "applied_revision", "error"),
    "project": ("name", "id"),
    "route_table": ("name", "id", "vpc", "default"),
    "route": ("id", "table", "dst", "priority", "next_hop"),
    "policy_route": ("id", "table", "priority", "src", "dst", "proto", "port", "action",
                     "next_hop"),
    "natgw": ("name", "id", "vpc", "public_ip", "host", "phase", "subnets"),
    "idc_site": ("name", "cidrs", "asn", "router_ip", "line"),
    "hybrid_gw": ("name", "id", "vpc", "site", "peer", "phase", "want", "up"),
    "hybrid_route": ("prefix", "origin", "replica", "nexthop", "as_path", "installed"),
    "eip": ("name", "address", "instance", "natgw"),
    "security_group": ("name", "id", "vpc", "default", "rules"),
    "sg_rule": ("id", "priority", "direction", "proto", "port", "peer", "action"),
    "network_acl": ("name", "id", "vpc", "rules"),
    "acl_rule": ("number", "direction", "proto", "port", "cidr", "action"),
    "flow_log": ("name", "id", "scope", "target", "traffic_type", "vpc"),
    "flow_record": ("time", "instance", "interface", "direction", "src", "dst", "protocol",
                    "packets", "bytes", "action"),
    "top_talker": ("talker", "bytes", "packets", "flows"),
    "table_entry": ("type", "dst", "priority", "next_hop", "state", "subnet", "host"),
    "policy_entry": ("priority", "src", "dst", "proto", "port", "action", "next_hop", "state"),
    "vip": ("name", "id", "subnet", "ip", "holder", "holder_host", "epoch", "allowed"),
    "volume": ("name", "id", "zone", "size", "phase", "host", "instance", "path", "tiers",
               "used"),
    "volume_range": ("from", "to", "every"),
    "patch": ("name", "phase", "target", "functions", "hosts", "applied", "refused", "died",
              "busy", "rolled_back"),
    "patch_host": ("host", "canary", "want", "state", "applied", "refused", "died", "busy",
                   "rolled_back", "applied_at"),
    "patch_process": ("pid", "command", "host", "instance", "result", "time"),
    "function": ("name", "id", "latest", "traffic", "handler", "memory_mb", "timeout_s",
                 "min", "max"),
    "function_version": ("version", "handler", "memory_mb", "timeout_s", "sha256", "created"),
    "ai_service": ("name", "input", "enabled", "memory_mb", "timeout_s"),
    "usage_function": ("project", "function", "requests", "errors", "cold_starts", "gb_s",
                       "cost"),
    "usage_day": ("project", "day", "requests", "errors", "cold_starts", "gb_s", "cost"),
}  # fmt: skip

# `-o wide`: the table's columns and what a person chasing a problem wants next to them.
WIDE: dict[str, tuple[str, ...]] = {
    "datapath": ("host", "zone", "datapath", "fast", "kernel", "local", "encap", "decap",
                 "slow_packets", "reason", "errors"),
    "datapath instance": ("instance", "id", "host", "path", "why"),
    "vpc": ("name", "id", "cidrs", "vni", "revision", "created_at"),
    "subnet": ("name", "id", "vpc", "vpc_id", "cidr", "gateway", "available", "location",
               "served_in", "revision", "created_at"),
    "instance": ("name", "id", "subnet", "vpc", "zone", "ip", "mac", "host", "phase",
                 "message", "command", "security_groups", "revision", "created_at"),
    "zone": ("name", "id", "cidr", "revision", "created_at"),
    "host": ("name", "id", "zone", "ip", "mtu", "vtep_index", "healthy", "condition",
             "desired_revision",
             "applied_revision", "heartbeat_at", "error", "netns", "revision"),
    "project": ("name", "id", "created_at"),
    "route_table": ("name", "id", "vpc", "vpc_id", "default", "index", "revision",
                    "created_at"),
    "route": ("id", "table", "table_id", "dst", "priority", "next_hop", "revision",
              "created_at"),
    "policy_route": ("id", "table", "table_id", "priority", "src", "dst", "proto", "port",
                     "action", "next_hop", "index", "revision", "created_at"),
    "idc_site": ("name", "id", "cidrs", "asn", "router_ip", "line", "line_vni", "line_vtep",
                 "revision", "created_at"),
    "hybrid_gw": ("name", "id", "vpc", "site", "peer", "asn", "md5", "bfd", "phase", "want",
                  "up", "replicas", "revision", "created_at"),
    "hybrid_route": ("prefix", "origin", "replica", "nexthop", "as_path", "installed"),
    "natgw": ("name", "id", "vpc", "public_ip", "host", "phase", "subnets", "forwards",
              "moved_at", "index", "revision", "created_at"),
    "eip": ("name", "id", "address", "instance", "natgw", "revision", "created_at"),
    "security_group": ("name", "id", "vpc", "vpc_id", "default", "rules", "revision",
                       "created_at"),
    "sg_rule": ("id", "priority", "direction", "proto", "port", "peer", "action"),
    "network_acl": ("name", "id", "vpc", "vpc_id", "rules", "revision", "created_at"),
    "acl_rule": ("number", "direction", "proto", "port", "cidr", "action"),
    "flow_log": ("name", "id", "scope", "target", "target_id", "traffic_type", "vpc", "vpc_id",
                 "revision", "created_at"),
    "flow_record": ("time", "instance", "interface", "direction", "src", "dst", "protocol",
                    "packets", "bytes", "action", "host", "end", "id"),
    "top_talker": ("talker", "bytes", "packets", "flows"),
    "table_entry": ("type", "dst", "priority", "next_hop", "state", "subnet", "host", "id"),
    "policy_entry": ("priority", "src", "dst", "proto", "port", "action", "next_hop",
                     "state", "id"),
    "vip": ("name", "id", "vpc", "subnet", "ip", "holder", "holder_zone", "holder_host",
            "epoch", "delivered_to", "damped_since", "allowed", "revision", "created_at"),
    "volume": ("name", "id", "zone", "size", "phase", "host", "home", "instance", "path",
               "tiers", "used", "journal", "device", "mounted", "fill", "source", "error",
               "revision", "created_at"),
    "volume_range": ("from", "to", "every"),
    "patch": ("name", "id", "phase", "target", "functions", "hosts", "applied", "refused",
              "died", "busy", "rolled_back", "message", "patch_id", "build_id", "digest",
              "canary_hosts", "started_at", "finished_at", "revision"),
    "patch_host": ("host", "canary", "want", "state", "applied", "refused", "died", "busy",
                   "rolled_back", "applied_at", "reported_at"),
    "patch_process": ("pid", "command", "host", "instance", "result", "reason", "time"),
    "function": ("name", "id", "latest", "traffic", "handler", "memory_mb", "timeout_s",
                 "concurrency", "min", "max", "idle_grace_s", "vpc", "subnet", "revision",
                 "created_at"),
    "ai_service": ("name", "input", "enabled", "function", "memory_mb", "timeout_s"),
    "function_version": ("version", "handler", "memory_mb", "timeout_s", "sha256", "env",
                         "created"),
    "usage_function": ("project", "function", "id", "requests", "errors", "cold_starts",
                       "billed_ms", "gb_s", "cost"),
    "usage_day": ("project", "day", "requests", "errors", "cold_starts", "billed_ms", "gb_s",
                  "cost"),
}  # fmt: skip

FORMATS = ("table", "wide", "json", "yaml")


def output_format(output: str | None, as_json: bool) -> str:
    """The format asked for: `--json` is an alias of `-o json`."""
    if as_json and output not in (None, "json"):
        raise ValidationError(f"--json and -o {output} disagree; give one of them")
    return "json" if as_json else (output or "table")


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def _heading(column: str) -> str:
    return (column.removesuffix("_revision") if column.endswith("_revision") else column).upper()


def table(columns: Sequence[str], rows: Sequence[Row]) -> str:
    """Aligned columns under upper-case headings, two spaces apart; bold headings on a
    terminal (unless $NO_COLOR). Cells are never wrapped: ids and addresses stay whole."""
    head = [_heading(c) for c in columns]
    body = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    first = line(head)
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        first = f"\x1b[1m{first}\x1b[0m"
    return "\n".join([first, *(line(b) for b in body)])


def print_list(kind: str, rows: Sequence[Row], fmt: str) -> None:
    """A list: a JSON array or YAML sequence of row objects, or a table (a note when
    empty, on stdout for people; scripts get `[]`)."""
    if fmt == "json":
        sys.stdout.write(json.dumps(list(rows), indent=2) + "\n")
    elif fmt == "yaml":
        sys.stdout.write(yamlout.dumps(list(rows)))
    elif not rows:
        sys.stdout.write(f"no {kind}s\n")
    else:
        cols = WIDE[kind] if fmt == "wide" else COLUMNS[kind]
        sys.stdout.write(table(cols, rows) + "\n")


def print_one(kind: str, row: Row, fmt: str) -> None:
    """One object: JSON, YAML, or `field  value` lines (every field, in table and wide)."""
    if fmt == "json":
        sys.stdout.write(json.dumps(row, indent=2) + "\n")
    elif fmt == "yaml":
        sys.stdout.write(yamlout.dumps(row))
    else:
        width = max(len(k) for k in row)
        for key, value in row.items():
            sys.stdout.write(f"{key:<{width}}  {_cell(value)}\n")
