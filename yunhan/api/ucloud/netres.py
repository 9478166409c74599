"""VIPs, route tables, NAT gateways (UCloud's VPC service); EIPs and firewalls (UNet).

Differences that follow from Yunhan's model (docs/ucloud-api.md lists them):

* A firewall is a Yunhan security group, which belongs to a VPC: CreateFirewall takes the
  project's only VPC, or `VPCId` (an addition) when it has several. Its rules are ingress
  rules; HIGH, MEDIUM and LOW priorities are 50, 100 and 150.
* A NAT gateway takes its SNAT address from the region's pool: the EIPs named at creation
  must exist and be free, and are kept for BindEIP, not used as the gateway's address.
* EIPs bind to UHosts (through the NAT gateway of their subnet).
* ModifyRouteRule and UpdateFirewall check every rule before they write, then write one
  rule at a time.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from yunhan.api.ucloud import wire
from yunhan.api.ucloud.base import ActionError, Ctx, all_items, epoch, paginate


def _name(ctx: Ctx, field: str, prefix: str) -> str:
    return ctx.params.get(field) or f"{prefix}-{secrets.token_hex(3)}"


# -- VIPs -----------------------------------------------------------------------------------


async def allocate_vip(ctx: Ctx) -> dict[str, Any]:
    ctx.need("VPCId")
    subnet = wire.to_yunhan("subnet", ctx.need("SubnetId"))
    if ctx.int("Count", 1) != 1:
        raise ActionError(wire.INVALID_PARAM, "Yunhan allocates one VIP per request (Count=1)")
    body: dict[str, Any] = {"name": _name(ctx, "Name", "vip"), "subnet": subnet}
    if ctx.params.get("Ip"):
        body["ip"] = ctx.params["Ip"]
    vip = await ctx.call("POST", "/v1/vips", json=body)
    ip = vip["spec"]["ip"]
    one = {
        "VIP": ip,
        "VIPId": wire.to_ucloud("vip", vip["id"]),
        "VPCId": wire.to_ucloud("vpc", vip["spec"]["vpc"]),
    }
    return {"VIPSet": [one], "DataSet": [ip]}


async def describe_vip(ctx: Ctx) -> dict[str, Any]:
    vips = await all_items(ctx, "/v1/vips")
    if ctx.params.get("VIPId"):
        ref = wire.to_yunhan("vip", ctx.params["VIPId"])
        vips = [v for v in vips if ref in (v["id"], v["name"])]
    if ctx.params.get("VPCId"):
        vpc = wire.to_yunhan("vpc", ctx.params["VPCId"])
        vips = [v for v in vips if v["spec"]["vpc"] == vpc]
    if ctx.params.get("SubnetId"):
        sub = wire.to_yunhan("subnet", ctx.params["SubnetId"])
        vips = [v for v in vips if v["spec"]["subnet"] == sub]
    ips = {i["id"]: i["status"].get("ip") or "" for i in await all_items(ctx, "/v1/instances")}
    rows = [
        {
            "VIPId": wire.to_ucloud("vip", v["id"]),
            "VIP": v["spec"]["ip"],
            "Name": v["name"],
            "VPCId": wire.to_ucloud("vpc", v["spec"]["vpc"]),
            "SubnetId": wire.to_ucloud("subnet", v["spec"]["subnet"]),
            "CreateTime": epoch(v.get("created_at")),
            "RealIp": ips.get((v.get("status") or {}).get("holder") or "", ""),
            "Tag": "Default",
            "Remark": "",
        }
        for v in vips
    ]
    return {"VIPSet": rows, "DataSet": [r["VIP"] for r in rows], "TotalCount": len(rows)}


async def release_vip(ctx: Ctx) -> dict[str, Any]:
    await ctx.call("DELETE", f"/v1/vips/{wire.to_yunhan('vip', ctx.need('VIPId'))}")
    return {}


# -- route tables ---------------------------------------------------------------------------


async def create_route_table(ctx: Ctx) -> dict[str, Any]:
    body = {"name": _name(ctx, "Name", "rt"), "vpc": wire.to_yunhan("vpc", ctx.need("VPCId"))}
    table = await ctx.call("POST", "/v1/route-tables", json=body)
    return {"RouteTableId": wire.to_ucloud("route_table", table["id"])}


async def _rules(ctx: Ctx, table: dict[str, Any]) -> list[dict[str, Any]]:
    routes = await ctx.call("GET", f"/v1/route-tables/{table['id']}/routes")
    out = []
    for r in routes["routes"]:
        kind, _, target = (r.get("next_hop") or "local:").partition(":")
        out.append(
            {
                "RouteRuleId": r.get("id") or "",
                "DstAddr": r["dst"],
                "NexthopType": kind.upper() if r["type"] == "custom" else "LOCAL",
                "NexthopId": target,
                "RuleType": 1 if r["type"] == "custom" else 0,  # 0: the system's
                "Priority": r.get("priority") or 0,
                "Remark": r["type"],
                "RouteTableId": wire.to_ucloud("route_table", table["id"]),
            }
        )
    return out


async def describe_route_table(ctx: Ctx) -> dict[str, Any]:
    tables = await all_items(ctx, "/v1/route-tables")
    if ctx.params.get("RouteTableId"):
        ref = wire.to_yunhan("route_table", ctx.params["RouteTableId"])
        tables = [t for t in tables if ref in (t["id"], t["name"])]
    vpcs = {v["id"]: v for v in await all_items(ctx, "/v1/vpcs")}
    if ctx.params.get("VPCId"):
        vpc = wire.to_yunhan("vpc", ctx.params["VPCId"])
        tables = [t for t in tables if vpc in (t["spec"]["vpc"], vpcs[t["spec"]["vpc"]]["name"])]
    subnets = await all_items(ctx, "/v1/subnets")
    rows = []
    for t in tables:
        mine = [s for s in subnets if s["spec"].get("route_table") == t["id"]]
        rows.append(
            {
                "RouteTableId": wire.to_ucloud("route_table", t["id"]),
                "RouteTableType": 0 if t["spec"].get("default") else 1,
                "SubnetCount": len(mine),
                "SubnetIds": [wire.to_ucloud("subnet", s["id"]) for s in mine],
                "VPCId": wire.to_ucloud("vpc", t["spec"]["vpc"]),
                "VPCName": vpcs.get(t["spec"]["vpc"], {}).get("name", ""),
                "RouteRules": await _rules(ctx, t),
                "CreateTime": epoch(t.get("created_at")),
                "Tag": "Default",
                "Remark": t["name"],
            }
        )
    return {"RouteTables": paginate(ctx, rows), "TotalCount": len(rows)}


async def _next_hop(ctx: Ctx, kind: str, target: str) -> str:
    k = kind.lower()
    if k == "instance":
        return f"instance:{wire.to_yunhan('instance', target)}"
    if k == "vip":
        ref = wire.to_yunhan("vip", target)
        vip = await ctx.call("GET", f"/v1/vips/{ref}")
        return f"vip:{vip['spec']['ip']}"
    if k == "natgw":
        return f"natgw:{wire.to_yunhan('natgw', target)}"
    raise ActionError(
        wire.INVALID_PARAM, f"NexthopType {kind!r}: Yunhan routes to INSTANCE, VIP or NATGW"
    )


async def modify_route_rule(ctx: Ctx) -> dict[str, Any]:
    table = wire.to_yunhan("route_table", ctx.need("RouteTableId"))
    rules = ctx.need_list("RouteRule")
    await ctx.call("GET", f"/v1/route-tables/{table}")  # the table is there (404 otherwise)
    plan: list[tuple[str, str, dict[str, Any] | None]] = []
    for n, rule in enumerate(rules):
        parts = rule.split("|")
        if len(parts) != 7 or parts[6] not in ("add", "delete", "update"):
            raise ActionError(
                wire.INVALID_PARAM,
                f"Params [RouteRule.{n}] is not RuleId|DstAddr|NexthopType|NexthopId|"
                "Priority|Remark|add/delete/update",
            )
        rid, dst, kind, target, prio, _remark, op = parts
        if op in ("delete", "update") and not rid:
            raise ActionError(wire.MISSING_PARAM, f"Params [RouteRule.{n}] needs its RuleId")
        body = None
        if op in ("add", "update"):
            try:
                priority = int(prio or 0) or 100  # UCloud's 0 is "the default"
            except ValueError:
                raise ActionError(wire.INVALID_PARAM, f"RouteRule.{n}: priority {prio!r}") from None
            body = {
                "dst": dst,
                "next_hop": await _next_hop(ctx, kind, target),
                "priority": priority,
            }
        plan.append((op, rid, body))
    for op, rid, body in plan:
        if op in ("delete", "update"):
            await ctx.call("DELETE", f"/v1/routes/{rid}")
        if body is not None:
            await ctx.call("POST", f"/v1/route-tables/{table}/routes", json=body)
    return {}


async def associate_route_table(ctx: Ctx) -> dict[str, Any]:
    table = wire.to_yunhan("route_table", ctx.need("RouteTableId"))
    subnet = wire.to_yunhan("subnet", ctx.need("SubnetId"))
    await ctx.call("POST", f"/v1/route-tables/{table}/associations", json={"subnet": subnet})
    return {}


async def delete_route_table(ctx: Ctx) -> dict[str, Any]:
    table = wire.to_yunhan("route_table", ctx.need("RouteTableId"))
    await ctx.call("DELETE", f"/v1/route-tables/{table}")
    return {}


# -- EIPs -----------------------------------------------------------------------------------


def _eip_addr(e: dict[str, Any]) -> list[dict[str, str]]:
    return [{"IP": e["status"].get("address") or "", "OperatorName": "Bgp"}]


async def allocate_eip(ctx: Ctx) -> dict[str, Any]:
    ctx.need("Bandwidth")  # UCloud's required fields; Yunhan's lab meters no bandwidth
    ctx.need("OperatorName")
    if ctx.int("Count", 1) != 1 or ctx.int("Quantity", 1) > 1:
        raise ActionError(wire.INVALID_PARAM, "Yunhan allocates one EIP per request (Count=1)")
    body = {"name": ctx.params["Name"]} if ctx.params.get("Name") else {}
    eip = await ctx.call("POST", "/v1/eips", json=body)
    return {"EIPSet": [{"EIPId": wire.to_ucloud("eip", eip["id"]), "EIPAddr": _eip_addr(eip)}]}


def _uhost_only(ctx: Ctx) -> str:
    kind = ctx.need("ResourceType").lower()
    if kind != "uhost":
        raise ActionError(wire.INVALID_PARAM, f"ResourceType {kind!r}: Yunhan binds to uhost")
    return wire.to_yunhan("instance", ctx.need("ResourceId"))


async def bind_eip(ctx: Ctx) -> dict[str, Any]:
    eip = wire.to_yunhan("eip", ctx.need("EIPId"))
    inst = _uhost_only(ctx)
    await ctx.call("POST", f"/v1/eips/{eip}/bind", json={"instance": inst})
    return {}


async def unbind_eip(ctx: Ctx) -> dict[str, Any]:
    eip = wire.to_yunhan("eip", ctx.need("EIPId"))
    _uhost_only(ctx)
    await ctx.call("POST", f"/v1/eips/{eip}/unbind", json={})
    return {}


async def describe_eip(ctx: Ctx) -> dict[str, Any]:
    eips = await all_items(ctx, "/v1/eips")
    wanted = {wire.to_yunhan("eip", x) for x in wire.listed(ctx.params, "EIPIds")}
    if wanted:
        eips = [e for e in eips if e["id"] in wanted or e["name"] in wanted]
    ips = set(wire.listed(ctx.params, "IPs"))
    if ips:
        eips = [e for e in eips if e["status"].get("address") in ips]
    rows = []
    for e in eips:
        inst = e["status"].get("instance")
        rows.append(
            {
                "EIPId": wire.to_ucloud("eip", e["id"]),
                "EIPAddr": _eip_addr(e),
                "Name": e["name"],
                "Status": "used" if inst else "free",
                "Resource": {
                    "ResourceType": "uhost",
                    "ResourceId": wire.to_ucloud("instance", inst),
                    "EIPId": wire.to_ucloud("eip", e["id"]),
                }
                if inst
                else {},
                "CreateTime": epoch(e.get("created_at")),
                "Bandwidth": 0,
                "BandwidthType": 0,
                "PayMode": "Traffic",
                "ChargeType": "Dynamic",
                "Tag": "Default",
            }
        )
    unbound = sum(1 for r in rows if r["Status"] == "free")
    return {
        "EIPSet": paginate(ctx, rows),
        "TotalCount": len(rows),
        "UnbindCount": unbound,
        "TotalBandwidth": 0,
    }


async def release_eip(ctx: Ctx) -> dict[str, Any]:
    await ctx.call("DELETE", f"/v1/eips/{wire.to_yunhan('eip', ctx.need('EIPId'))}")
    return {}


# -- NAT gateways ---------------------------------------------------------------------------


async def create_natgw(ctx: Ctx) -> dict[str, Any]:
    name = ctx.need("NATGWName")
    ctx.need("FirewallId")  # the SDK requires it; Yunhan's NAT gateway has no firewall
    subnets = [wire.to_yunhan("subnet", s) for s in ctx.need_list("SubnetworkIds")]
    vpc_ref = ctx.params.get("VPCId")
    if vpc_ref:
        vpc = wire.to_yunhan("vpc", vpc_ref)
    else:
        first = await ctx.call("GET", f"/v1/subnets/{subnets[0]}")
        vpc = first["spec"]["vpc"]
    for eid in wire.listed(ctx.params, "EIPIds"):
        eip = await ctx.call("GET", f"/v1/eips/{wire.to_yunhan('eip', eid)}")
        if eip["status"].get("instance"):
            raise ActionError(wire.CONFLICT, f"EIP {eid} is bound already")
    gw = await ctx.call("POST", "/v1/natgws", json={"name": name, "vpc": vpc, "subnets": subnets})
    return {"NATGWId": wire.to_ucloud("natgw", gw["id"])}


async def describe_natgw(ctx: Ctx) -> dict[str, Any]:
    gws = await all_items(ctx, "/v1/natgws")
    wanted = {wire.to_yunhan("natgw", x) for x in wire.listed(ctx.params, "NATGWIds")}
    if wanted:
        gws = [g for g in gws if g["id"] in wanted or g["name"] in wanted]
    vpcs = {v["id"]: v for v in await all_items(ctx, "/v1/vpcs")}
    subnets = {s["id"]: s for s in await all_items(ctx, "/v1/subnets")}
    rows = []
    for g in gws:
        subs = [subnets[s] for s in g["spec"]["subnets"] if s in subnets]
        public = g["status"].get("public_ip") or ""
        rows.append(
            {
                "NATGWId": wire.to_ucloud("natgw", g["id"]),
                "NATGWName": g["name"],
                "VPCId": wire.to_ucloud("vpc", g["spec"]["vpc"]),
                "VPCName": vpcs.get(g["spec"]["vpc"], {}).get("name", ""),
                "SubnetSet": [
                    {
                        "SubnetworkId": wire.to_ucloud("subnet", s["id"]),
                        "Subnet": s["spec"]["cidr"],
                        "SubnetName": s["name"],
                    }
                    for s in subs
                ],
                "IPSet": [
                    {
                        "EIPId": "",
                        "Weight": 100,
                        "BandwidthType": "",
                        "Bandwidth": 0,
                        "IPResInfo": [{"EIP": public, "OperatorName": "Bgp"}],
                    }
                ]
                if public
                else [],
                "PolicyId": [
                    f"policy-{f['proto']}-{f['port']}" for f in g["spec"].get("forwards", [])
                ],
                "CreateTime": epoch(g.get("created_at")),
                "FirewallId": "",
                "IsSnatpoolEnabled": "disable",
                "Tag": "Default",
                "Remark": "",
            }
        )
    return {"DataSet": paginate(ctx, rows), "TotalCount": len(rows)}


async def delete_natgw(ctx: Ctx) -> dict[str, Any]:
    await ctx.call("DELETE", f"/v1/natgws/{wire.to_yunhan('natgw', ctx.need('NATGWId'))}")
    return {}


async def create_natgw_policy(ctx: Ctx) -> dict[str, Any]:
    gw = wire.to_yunhan("natgw", ctx.need("NATGWId"))
    proto = ctx.need("Protocol").lower()
    ctx.need("SrcEIPId")
    port = ctx.int("SrcPort", 0)
    dst_ip = ctx.need("DstIP")
    dst_port = ctx.int("DstPort", 0)
    insts = [i for i in await all_items(ctx, "/v1/instances") if i["status"].get("ip") == dst_ip]
    if not insts:
        raise ActionError(wire.NOT_FOUND, f"DstIP {dst_ip} is no UHost's address")
    body = {"proto": proto, "port": port, "to": f"{insts[0]['id']}:{dst_port}"}
    await ctx.call("POST", f"/v1/natgws/{gw}/forwards", json=body)
    # a forward is known by its protocol and public port (one per pair)
    return {"PolicyId": f"policy-{proto}-{port}"}


# -- firewalls (security groups) ------------------------------------------------------------

PRIORITIES = {"HIGH": 50, "MEDIUM": 100, "LOW": 150}
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}


def _fw_rules(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for n, text in enumerate(wire.listed(ctx.params, "Rule")):
        parts = text.split("|")
        if len(parts) != 5:
            raise ActionError(
                wire.INVALID_PARAM, f"Params [Rule.{n}] is not PROTO|PORT|CIDR|ACCEPT/DROP|PRIORITY"
            )
        proto, port, cidr, action, prio = (p.strip() for p in parts)
        p = {"TCP": "tcp", "UDP": "udp", "ICMP": "icmp", "ALL": "any"}.get(proto.upper())
        if p is None:
            raise ActionError(wire.INVALID_PARAM, f"Rule.{n}: protocol {proto!r}")
        a = {"ACCEPT": "allow", "DROP": "deny"}.get(action.upper())
        if a is None:
            raise ActionError(wire.INVALID_PARAM, f"Rule.{n}: action {action!r}")
        if prio.upper() not in PRIORITIES:
            raise ActionError(wire.INVALID_PARAM, f"Rule.{n}: priority {prio!r}")
        rule: dict[str, Any] = {
            "direction": "ingress",
            "proto": p,
            "peer": cidr or "0.0.0.0/0",
            "action": a,
            "priority": PRIORITIES[prio.upper()],
        }
        if port and p in ("tcp", "udp"):
            rule["port"] = port
        try:
            ipaddress.IPv4Network(rule["peer"])
        except ValueError:
            raise ActionError(wire.INVALID_PARAM, f"Rule.{n}: CIDR {cidr!r}") from None
        out.append(rule)
    return out


async def _fw_vpc(ctx: Ctx) -> str:
    if ctx.params.get("VPCId"):
        return wire.to_yunhan("vpc", ctx.params["VPCId"])
    vpcs = await all_items(ctx, "/v1/vpcs")
    if len(vpcs) != 1:
        raise ActionError(
            wire.MISSING_PARAM,
            f"Params [VPCId] not available: a Yunhan firewall belongs to a VPC, and this "
            f"project has {len(vpcs)}",
        )
    return str(vpcs[0]["id"])


async def create_firewall(ctx: Ctx) -> dict[str, Any]:
    name = ctx.need("Name")
    rules = _fw_rules(ctx)
    vpc = await _fw_vpc(ctx)
    sg = await ctx.call("POST", "/v1/security-groups", json={"name": name, "vpc": vpc})
    for r in rules:
        await ctx.call("POST", f"/v1/security-groups/{sg['id']}/rules", json=r)
    return {"FWId": wire.to_ucloud("security_group", sg["id"])}


async def grant_firewall(ctx: Ctx) -> dict[str, Any]:
    sg = wire.to_yunhan("security_group", ctx.need("FWId"))
    inst = _uhost_only(ctx)
    await ctx.call("PUT", f"/v1/instances/{inst}/security-groups", json={"security_groups": [sg]})
    return {}


def _port_text(r: dict[str, Any]) -> str:
    port = r.get("port")
    if not port:
        return ""
    lo, hi = port
    return str(lo) if lo == hi else f"{lo}-{hi}"


async def describe_firewall(ctx: Ctx) -> dict[str, Any]:
    groups = await all_items(ctx, "/v1/security-groups")
    if ctx.params.get("FWId"):
        ref = wire.to_yunhan("security_group", ctx.params["FWId"])
        groups = [g for g in groups if ref in (g["id"], g["name"])]
    instances = await all_items(ctx, "/v1/instances")
    if ctx.params.get("ResourceId"):
        inst = wire.to_yunhan("instance", ctx.params["ResourceId"])
        mine = {s for i in instances if i["id"] == inst for s in i["spec"]["security_groups"]}
        groups = [g for g in groups if g["id"] in mine]
    rows = []
    for g in groups:
        members = sum(1 for i in instances if g["id"] in i["spec"].get("security_groups", []))
        rules = [
            {
                "ProtocolType": {"any": "ALL"}.get(r["proto"], r["proto"].upper()),
                "DstPort": _port_text(r),
                "SrcIP": r["peer"].get("cidr") or f"sg:{r['peer'].get('sg')}",
                "RuleAction": "ACCEPT" if r["action"] == "allow" else "DROP",
                "Priority": PRIORITY_NAMES.get(r["priority"], str(r["priority"])),
                "Remark": r["direction"],
            }
            for r in g["spec"]["rules"]
        ]
        rows.append(
            {
                "FWId": wire.to_ucloud("security_group", g["id"]),
                "GroupId": g["id"],
                "Name": g["name"],
                "Rule": rules,
                "ResourceCount": members,
                "Type": "recommend web" if g["spec"].get("default") else "user defined",
                "CreateTime": epoch(g.get("created_at")),
                "Tag": "Default",
                "Remark": "",
            }
        )
    return {"DataSet": paginate(ctx, rows), "TotalCount": len(rows)}


async def update_firewall(ctx: Ctx) -> dict[str, Any]:
    ref = ctx.need("FWId")
    sg = wire.to_yunhan("security_group", ref)
    rules = _fw_rules(ctx)
    if not rules:
        raise ActionError(wire.MISSING_PARAM, "Params [Rule.0] not available")
    group = await ctx.call("GET", f"/v1/security-groups/{sg}")
    for r in group["spec"]["rules"]:
        await ctx.call("DELETE", f"/v1/security-groups/{group['id']}/rules/{r['id']}")
    for r in rules:
        await ctx.call("POST", f"/v1/security-groups/{group['id']}/rules", json=r)
    return {"FWId": ref}


async def delete_firewall(ctx: Ctx) -> dict[str, Any]:
    sg = wire.to_yunhan("security_group", ctx.need("FWId"))
    await ctx.call("DELETE", f"/v1/security-groups/{sg}")
    return {}
