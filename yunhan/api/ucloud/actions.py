"""The actions: each one translates UCloud's parameters into calls of Yunhan's API (made
in-process, as the key's project) and Yunhan's answers into UCloud's fields.

Validation is Yunhan's own: a value Yunhan refuses is refused here with its message, so a
refusal means the same on both sides. A failed call of a multi-step action stops before
writing anything the earlier steps did not already commit; where an action needs several
writes, the docs say so.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from yunhan.api.ucloud import wire

Call = Callable[..., Awaitable[Any]]  # (method, path, json=None, params=None) -> body


class ActionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Ctx:
    params: Mapping[str, str]
    call: Call

    def need(self, name: str) -> str:
        v = self.params.get(name)
        if v is None or v == "":
            raise ActionError(wire.MISSING_PARAM, f"Params [{name}] not available")
        return v

    def need_list(self, name: str) -> list[str]:
        v = wire.listed(self.params, name)
        if not v:
            raise ActionError(wire.MISSING_PARAM, f"Params [{name}.0] not available")
        return v

    def int(self, name: str, default: int) -> int:
        v = self.params.get(name)
        if v is None or v == "":
            return default
        try:
            return int(v)
        except ValueError:
            raise ActionError(wire.INVALID_PARAM, f"Params [{name}] is not an integer") from None


def epoch(iso: str | None) -> int:
    if not iso:
        return 0
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


async def _all(ctx: Ctx, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {**params, "limit": 500, **({"cursor": cursor} if cursor else {})}
        page = await ctx.call("GET", path, params=q)
        items.extend(page.get("items") or [])
        cursor = page.get("next")
        if not cursor:
            return items


def _page(ctx: Ctx, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    offset = max(0, ctx.int("Offset", 0))
    limit = ctx.int("Limit", 20)
    return rows[offset : offset + limit] if limit > 0 else rows[offset:]


# -- VPC ------------------------------------------------------------------------------------


async def create_vpc(ctx: Ctx) -> dict[str, Any]:
    body = {"name": ctx.need("Name"), "cidrs": ctx.need_list("Network")}
    vpc = await ctx.call("POST", "/v1/vpcs", json=body)
    return {"VPCId": wire.to_ucloud("vpc", vpc["id"])}


def _vpc_info(vpc: dict[str, Any], subnets: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [s for s in subnets if s["spec"]["vpc"] == vpc["id"]]
    blocks = [ipaddress.IPv4Network(c) for c in vpc["spec"]["cidrs"]]
    info = []
    for b in blocks:
        n = sum(1 for s in mine if ipaddress.IPv4Network(s["spec"]["cidr"]).subnet_of(b))
        info.append({"Network": str(b), "SubnetCount": n})
    return {
        "VPCId": wire.to_ucloud("vpc", vpc["id"]),
        "Name": vpc["name"],
        "Network": [str(b) for b in blocks],
        "NetworkInfo": info,
        "SubnetCount": len(mine),
        "CreateTime": epoch(vpc.get("created_at")),
        "UpdateTime": epoch(vpc.get("updated_at") or vpc.get("created_at")),
        "Tag": vpc.get("labels", {}).get("tag", "Default"),
        "VPCType": "DefinedVPC",
    }


async def describe_vpc(ctx: Ctx) -> dict[str, Any]:
    wanted = {wire.to_yunhan("vpc", v) for v in wire.listed(ctx.params, "VPCIds")}
    vpcs = await _all(ctx, "/v1/vpcs")
    if wanted:
        vpcs = [v for v in vpcs if v["id"] in wanted or v["name"] in wanted]
    subnets = await _all(ctx, "/v1/subnets")
    rows = [_vpc_info(v, subnets) for v in vpcs]
    return {"DataSet": _page(ctx, rows), "TotalCount": len(rows)}


async def delete_vpc(ctx: Ctx) -> dict[str, Any]:
    await ctx.call("DELETE", f"/v1/vpcs/{wire.to_yunhan('vpc', ctx.need('VPCId'))}")
    return {}


async def add_vpc_network(ctx: Ctx) -> dict[str, Any]:
    ref = wire.to_yunhan("vpc", ctx.need("VPCId"))
    new = ctx.need_list("Network")
    vpc = await ctx.call("GET", f"/v1/vpcs/{ref}")
    cidrs = list(vpc["spec"]["cidrs"]) + [c for c in new if c not in vpc["spec"]["cidrs"]]
    # One merge patch of the whole list: every block added, or none.
    await ctx.call("PATCH", f"/v1/vpcs/{vpc['id']}", json={"spec": {"cidrs": cidrs}},
                   headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
    return {}


# -- subnets --------------------------------------------------------------------------------


async def create_subnet(ctx: Ctx) -> dict[str, Any]:
    vpc = wire.to_yunhan("vpc", ctx.need("VPCId"))
    network = ctx.need("Subnet")
    prefixlen = ctx.int("Netmask", 24)
    cidr = f"{network}/{prefixlen}"
    # UCloud's default name is "Subnet" for every subnet; Yunhan's names are unique in a
    # VPC and lower-case, so the default here names the range.
    name = ctx.params.get("SubnetName") or "subnet-" + cidr.replace(".", "-").replace("/", "-")
    sub = await ctx.call("POST", "/v1/subnets", json={"name": name, "vpc": vpc, "cidr": cidr})
    return {"SubnetId": wire.to_ucloud("subnet", sub["id"])}


async def describe_subnet(ctx: Ctx) -> dict[str, Any]:
    vpc_ref = ctx.params.get("VPCId")
    vpcs = {v["id"]: v for v in await _all(ctx, "/v1/vpcs")}
    subnets = await _all(ctx, "/v1/subnets")
    if vpc_ref:
        ref = wire.to_yunhan("vpc", vpc_ref)
        subnets = [s for s in subnets if ref in (s["spec"]["vpc"], vpcs[s["spec"]["vpc"]]["name"])]
    wanted = {wire.to_yunhan("subnet", x) for x in wire.listed(ctx.params, "SubnetIds")}
    if ctx.params.get("SubnetId"):
        wanted.add(wire.to_yunhan("subnet", ctx.params["SubnetId"]))
    if wanted:
        subnets = [s for s in subnets if s["id"] in wanted or s["name"] in wanted]
    instances = await _all(ctx, "/v1/instances")
    natgws = await _all(ctx, "/v1/natgws")
    used: dict[str, int] = {}
    for i in instances:
        sid = i["spec"].get("subnet")
        used[sid] = used.get(sid, 0) + 1
    natted = {s for g in natgws for s in g["spec"].get("subnets", [])}
    rows = []
    for s in subnets:
        net = ipaddress.IPv4Network(s["spec"]["cidr"])
        vpc = vpcs.get(s["spec"]["vpc"], {})
        table = s["spec"].get("route_table") or s["status"].get("route_table") or ""
        rows.append(
            {
                "SubnetId": wire.to_ucloud("subnet", s["id"]),
                "SubnetName": s["name"],
                "Subnet": str(net.network_address),
                "Netmask": str(net.prefixlen),
                "Gateway": str(net.network_address + 1),
                "VPCId": wire.to_ucloud("vpc", s["spec"]["vpc"]),
                "VPCName": vpc.get("name", ""),
                "CreateTime": epoch(s.get("created_at")),
                # the network, the gateway and the broadcast address are not for instances
                "AvailableIPs": max(0, net.num_addresses - 3 - used.get(s["id"], 0)),
                "HasNATGW": s["id"] in natted,
                "RouteTableId": wire.to_ucloud("route_table", table) if table else "",
                "SubnetType": 2,
                "Tag": s.get("labels", {}).get("tag", "Default"),
                "Remark": "",
            }
        )
    return {"DataSet": _page(ctx, rows), "TotalCount": len(rows)}


async def delete_subnet(ctx: Ctx) -> dict[str, Any]:
    await ctx.call("DELETE", f"/v1/subnets/{wire.to_yunhan('subnet', ctx.need('SubnetId'))}")
    return {}


Handler = Callable[[Ctx], Awaitable[dict[str, Any]]]

ACTIONS: dict[str, Handler] = {
    "CreateVPC": create_vpc,
    "DescribeVPC": describe_vpc,
    "DeleteVPC": delete_vpc,
    "AddVPCNetwork": add_vpc_network,
    "CreateSubnet": create_subnet,
    "DescribeSubnet": describe_subnet,
    "DeleteSubnet": delete_subnet,
}

# Actions a UCloud user may try that Yunhan answers with what it offers instead.
INSTEAD: dict[str, str] = {
    "CreateUHostInstance": "instances: POST /v1/instances (yunhan instance create)",
    "DescribeUHostInstance": "instances: GET /v1/instances (yunhan instance list)",
    "AllocateVIP": "VIPs: POST /v1/vips (yunhan vip create)",
    "CreateRouteTable": "route tables: POST /v1/route-tables (yunhan route-table create)",
    "CreateNATGW": "NAT gateways: POST /v1/natgws (yunhan natgw create)",
    "AllocateEIP": "elastic IPs: POST /v1/eips (yunhan eip allocate)",
    "CreateFirewall": "security groups: POST /v1/security-groups (yunhan sg create)",
    "CreateUDisk": "volumes: POST /v1/volumes (yunhan volume create)",
}
