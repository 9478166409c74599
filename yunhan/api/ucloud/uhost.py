"""UHost actions: Yunhan's instances.

A Yunhan instance is a namespace sandbox on a host, not a VM from an image: `ImageId`,
`LoginMode`, `Password`, `CPU`, `Memory` and disks are accepted (the SDK requires some of
them) and not used. Stop and Start are Yunhan's instance stop and start: a stopped
instance runs nowhere and keeps its address; started, it runs its command again on a host
of its zone.
"""

from __future__ import annotations

import secrets
from typing import Any

from yunhan.api.ucloud import wire
from yunhan.api.ucloud.base import ActionError, Ctx, all_items, epoch, paginate

STATES = {
    "running": "Running",
    "failed": "Install Fail",
    "scheduled": "Initializing",
    "stopped": "Stopped",
    "pending": "Initializing",
}


async def _zones(ctx: Ctx) -> dict[str, str]:
    """zone id -> name, and name -> name (the API answers with ids, UCloud with names)."""
    zones = await all_items(ctx, "/v1/zones")
    out = {z["id"]: z["name"] for z in zones}
    out.update({z["name"]: z["name"] for z in zones})
    return out


async def create_uhost(ctx: Ctx) -> dict[str, Any]:
    zone = ctx.need("Zone")
    subnet = ctx.params.get("SubnetId")
    vpc = ctx.params.get("VPCId")
    if not subnet:
        if not vpc:
            raise ActionError(wire.MISSING_PARAM, "Params [SubnetId] not available")
        subs = await all_items(ctx, "/v1/subnets", vpc=wire.to_yunhan("vpc", vpc))
        if len(subs) != 1:
            raise ActionError(
                wire.MISSING_PARAM,
                f"Params [SubnetId] not available: VPC {vpc} has {len(subs)} subnets",
            )
        subnet = subs[0]["id"]
    if ctx.int("MaxCount", 1) > 1 or ctx.int("MinCount", 1) > 1:
        raise ActionError(wire.INVALID_PARAM, "Yunhan creates one UHost per request")
    body: dict[str, Any] = {
        "name": ctx.params.get("Name") or f"uhost-{secrets.token_hex(3)}",
        "subnet": wire.to_yunhan("subnet", subnet),
        "zone": zone,
    }
    ips = wire.listed(ctx.params, "PrivateIp")
    if ips:
        body["ip"] = ips[0]
    fw = ctx.params.get("SecurityGroupId") or next(iter(wire.listed(ctx.params, "SecGroupId")), "")
    if fw:
        body["security_groups"] = [wire.to_yunhan("security_group", fw)]
    inst = await ctx.call("POST", "/v1/instances", json=body)
    return {
        "UHostIds": [wire.to_ucloud("instance", inst["id"])],
        "IPs": [inst["status"].get("ip") or ""],
    }


def _uhost(i: dict[str, Any], zones: dict[str, str]) -> dict[str, Any]:
    st = i["status"]
    return {
        "UHostId": wire.to_ucloud("instance", i["id"]),
        "Name": i["name"],
        "Zone": zones.get(i["spec"]["zone"], i["spec"]["zone"]),
        "State": "Starting"
        if st.get("phase") == "scheduled" and st.get("message") == "starting"
        else STATES.get(st.get("phase", ""), "Initializing"),
        "IPSet": [
            {
                "Type": "Private",
                "IP": st.get("ip") or "",
                "IPMode": "IPv4",
                "Mac": st.get("mac") or "",
                "VPCId": wire.to_ucloud("vpc", st["vpc"]) if st.get("vpc") else "",
                "SubnetId": wire.to_ucloud("subnet", i["spec"]["subnet"]),
                "Default": "true",
            }
        ],
        "CreateTime": epoch(i.get("created_at")),
        "OsType": "Linux",
        "OsName": "Yunhan namespace sandbox",
        "UHostType": "N2",
        "MachineType": "N",
        "CPU": 1,
        "Memory": 0,
        "Tag": i.get("labels", {}).get("tag", "Default"),
    }


async def describe_uhost(ctx: Ctx) -> dict[str, Any]:
    zones = await _zones(ctx)
    items = await all_items(ctx, "/v1/instances")
    wanted = {wire.to_yunhan("instance", x) for x in wire.listed(ctx.params, "UHostIds")}
    if wanted:
        items = [i for i in items if i["id"] in wanted or i["name"] in wanted]
    if ctx.params.get("Zone"):
        items = [i for i in items if zones.get(i["spec"]["zone"]) == ctx.params["Zone"]]
    if ctx.params.get("SubnetId"):
        sub = wire.to_yunhan("subnet", ctx.params["SubnetId"])
        items = [i for i in items if i["spec"]["subnet"] == sub]
    if ctx.params.get("VPCId"):
        vpc = wire.to_yunhan("vpc", ctx.params["VPCId"])
        items = [i for i in items if i["status"].get("vpc") == vpc]
    rows = [_uhost(i, zones) for i in items]
    return {"UHostSet": paginate(ctx, rows), "TotalCount": len(rows)}


async def terminate_uhost(ctx: Ctx) -> dict[str, Any]:
    ref = ctx.need("UHostId")
    await ctx.call("DELETE", f"/v1/instances/{wire.to_yunhan('instance', ref)}")
    return {"UHostId": ref, "InRecycle": "No"}


async def stop_uhost(ctx: Ctx) -> dict[str, Any]:
    ref = ctx.need("UHostId")
    await ctx.call("POST", f"/v1/instances/{wire.to_yunhan('instance', ref)}/stop")
    return {"UHostId": ref, "UhostId": ref}


async def start_uhost(ctx: Ctx) -> dict[str, Any]:
    ref = ctx.need("UHostId")
    await ctx.call("POST", f"/v1/instances/{wire.to_yunhan('instance', ref)}/start")
    return {"UHostId": ref, "UhostId": ref}
