"""VPC and subnet actions (UCloud's VPC service)."""

from __future__ import annotations

import ipaddress
from typing import Any

from yunhan.api.ucloud import wire
from yunhan.api.ucloud.base import Ctx, all_items, epoch, paginate

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
    vpcs = await all_items(ctx, "/v1/vpcs")
    if wanted:
        vpcs = [v for v in vpcs if v["id"] in wanted or v["name"] in wanted]
    subnets = await all_items(ctx, "/v1/subnets")
    rows = [_vpc_info(v, subnets) for v in vpcs]
    return {"DataSet": paginate(ctx, rows), "TotalCount": len(rows)}


async def delete_vpc(ctx: Ctx) -> dict[str, Any]:
    await ctx.call("DELETE", f"/v1/vpcs/{wire.to_yunhan('vpc', ctx.need('VPCId'))}")
    return {}


async def add_vpc_network(ctx: Ctx) -> dict[str, Any]:
    ref = wire.to_yunhan("vpc", ctx.need("VPCId"))
    new = ctx.need_list("Network")
    vpc = await ctx.call("GET", f"/v1/vpcs/{ref}")
    cidrs = list(vpc["spec"]["cidrs"]) + [c for c in new if c not in vpc["spec"]["cidrs"]]
    # One merge patch of the whole list: every block added, or none.
    await ctx.call(
        "PATCH",
        f"/v1/vpcs/{vpc['id']}",
        json={"spec": {"cidrs": cidrs}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
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
    vpcs = {v["id"]: v for v in await all_items(ctx, "/v1/vpcs")}
    subnets = await all_items(ctx, "/v1/subnets")
    if vpc_ref:
        ref = wire.to_yunhan("vpc", vpc_ref)
        subnets = [s for s in subnets if ref in (s["spec"]["vpc"], vpcs[s["spec"]["vpc"]]["name"])]
    wanted = {wire.to_yunhan("subnet", x) for x in wire.listed(ctx.params, "SubnetIds")}
    if ctx.params.get("SubnetId"):
        wanted.add(wire.to_yunhan("subnet", ctx.params["SubnetId"]))
    if wanted:
        subnets = [s for s in subnets if s["id"] in wanted or s["name"] in wanted]
    instances = await all_items(ctx, "/v1/instances")
    natgws = await all_items(ctx, "/v1/natgws")
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
    return {"DataSet": paginate(ctx, rows), "TotalCount": len(rows)}


async def delete_subnet(ctx: Ctx) -> dict[str, Any]:
    await ctx.call("DELETE", f"/v1/subnets/{wire.to_yunhan('subnet', ctx.need('SubnetId'))}")
    return {}
