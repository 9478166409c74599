"""UDisk actions: Yunhan's volumes, and Data Ark (continuous protection) for restores and
clones to a point in time.

A UDisk's size is in GB (GiB here); `UDataArkMode=Yes` protects it with Yunhan's default
tiers (every second for 12 h, every hour for a day, every day for three). Data Ark's
points are times, not snapshots: RestoreUDisk and CloneUDiskUDataArk take `SnapshotTime`
(unix seconds); a `SnapshotId` is refused with that reason. An attached UDisk is mounted
at `/data` in the UHost (Yunhan instances are sandboxes with a filesystem, not VMs with
block devices): that path is its DeviceName.
"""

from __future__ import annotations

import time
from typing import Any

from yunhan.api.ucloud import wire
from yunhan.api.ucloud.base import ActionError, Ctx, all_items, epoch, paginate

GIB = 1 << 30
DEFAULT_TIERS = "12h:1s,24h:1h,3d:1d"
MOUNT = "/data"
STATUS = {"available": "Available", "attached": "InUse", "creating": "Initializating",
          "restoring": "Restoring", "error": "Failed"}  # fmt: skip


def _one(ctx: Ctx) -> None:
    if ctx.int("Quantity", 1) > 1:
        raise ActionError(wire.INVALID_PARAM, "Yunhan creates one UDisk per request")


def _ark(ctx: Ctx) -> bool:
    mode = (ctx.params.get("UDataArkMode") or "No").capitalize()
    if mode not in ("Yes", "No"):
        raise ActionError(wire.INVALID_PARAM, f"UDataArkMode {mode!r}: Yes or No")
    return mode == "Yes" or ctx.params.get("BackupMode") == "UDataArk"


async def create_udisk(ctx: Ctx) -> dict[str, Any]:
    _one(ctx)
    ctx.need("Size")
    body: dict[str, Any] = {
        "name": ctx.need("Name"),
        "size": ctx.int("Size", 0) * GIB,
        "zone": ctx.need("Zone"),
    }
    if _ark(ctx):
        body["tiers"] = DEFAULT_TIERS
    vol = await ctx.call("POST", "/v1/volumes", json=body)
    return {"UDiskId": [wire.to_ucloud("volume", vol["id"])]}


async def attach_udisk(ctx: Ctx) -> dict[str, Any]:
    disk = ctx.need("UDiskId")
    host = ctx.need("UHostId")
    body = {"instance": wire.to_yunhan("instance", host), "path": MOUNT}
    await ctx.call("POST", f"/v1/volumes/{wire.to_yunhan('volume', disk)}/attach", json=body)
    return {"UDiskId": disk, "UHostId": host, "HostId": host, "DeviceName": MOUNT}


async def detach_udisk(ctx: Ctx) -> dict[str, Any]:
    disk = ctx.need("UDiskId")
    vol = await ctx.call("POST", f"/v1/volumes/{wire.to_yunhan('volume', disk)}/detach", json={})
    att = (vol["spec"].get("attachment") or {}).get("instance") or ""
    host = ctx.params.get("UHostId") or (wire.to_ucloud("instance", att) if att else "")
    return {"UDiskId": disk, "UHostId": host, "HostId": host}


def _status(v: dict[str, Any]) -> str:
    """UCloud's word for where the volume is: Attaching and Detaching while the agent has
    not yet done what the spec says."""
    phase = v["status"].get("phase", "")
    wanted = bool(v["spec"].get("attachment"))
    if wanted and phase == "available":
        return "Attaching"
    if not wanted and phase == "attached":
        return "Detaching"
    return STATUS.get(phase, "Available")


async def describe_udisk(ctx: Ctx) -> dict[str, Any]:
    vols = [v for v in await all_items(ctx, "/v1/volumes") if not v["spec"].get("deleting")]
    if ctx.params.get("UDiskId"):
        ref = wire.to_yunhan("volume", ctx.params["UDiskId"])
        vols = [v for v in vols if ref in (v["id"], v["name"])]
    zones = {z["id"]: z["name"] for z in await all_items(ctx, "/v1/zones")}
    if ctx.params.get("Zone"):
        vols = [v for v in vols if zones.get(v["spec"]["zone"]) == ctx.params["Zone"]]
    insts = {i["id"]: i for i in await all_items(ctx, "/v1/instances")}
    rows = []
    for v in vols:
        att = (v["spec"].get("attachment") or {}).get("instance")
        inst = insts.get(att or "", {})
        ark = bool(v["spec"].get("tiers"))
        rows.append(
            {
                "UDiskId": wire.to_ucloud("volume", v["id"]),
                "Name": v["name"],
                "Size": int(v["spec"]["size"]) // GIB,
                "Status": _status(v),
                "Zone": zones.get(v["spec"]["zone"], v["spec"]["zone"]),
                "DiskType": "DataDisk",
                "IsBoot": "False",
                "UHostId": wire.to_ucloud("instance", att) if att else "",
                "UHostName": inst.get("name", ""),
                "UHostIP": (inst.get("status") or {}).get("ip", ""),
                "DeviceName": (v["spec"].get("attachment") or {}).get("path", "") if att else "",
                "CreateTime": epoch(v.get("created_at")),
                "UDataArkMode": "Yes" if ark else "No",
                "BackupMode": "UDataArk" if ark else "",
                "ArkSwitchEnable": 1 if ark else 0,
                "CloneEnable": 1,
                "Tag": "Default",
            }
        )
    return {"DataSet": paginate(ctx, rows), "TotalCount": len(rows)}


async def delete_udisk(ctx: Ctx) -> dict[str, Any]:
    ctx.need("Zone")
    await ctx.call("DELETE", f"/v1/volumes/{wire.to_yunhan('volume', ctx.need('UDiskId'))}")
    return {}


def _when(ctx: Ctx) -> int:
    if ctx.params.get("SnapshotId"):
        raise ActionError(
            wire.INVALID_PARAM,
            "Yunhan's Data Ark restores to a time (SnapshotTime, unix seconds): continuous "
            "protection keeps points in time, not snapshots",
        )
    t = ctx.int("SnapshotTime", 0)
    if t <= 0:
        raise ActionError(wire.MISSING_PARAM, "Params [SnapshotTime] not available")
    return t


async def restore_udisk(ctx: Ctx) -> dict[str, Any]:
    ctx.need("Zone")
    disk = wire.to_yunhan("volume", ctx.need("UDiskId"))
    await ctx.call("POST", f"/v1/volumes/{disk}/restore", json={"to": _when(ctx)})
    return {}


async def _clone(ctx: Ctx, source: str, at: float) -> dict[str, Any]:
    _one(ctx)
    ctx.need("Zone")
    body = {"name": ctx.need("Name"), "at": at}
    vol = await ctx.call("POST", f"/v1/volumes/{wire.to_yunhan('volume', source)}/clone", json=body)
    return {"UDiskId": [wire.to_ucloud("volume", vol["id"])]}


async def clone_udisk(ctx: Ctx) -> dict[str, Any]:
    """A clone of the disk as it is now (Yunhan clones from a protected disk's journal,
    so the source must be protected)."""
    return await _clone(ctx, ctx.need("SourceId"), time.time())


async def clone_udisk_udataark(ctx: Ctx) -> dict[str, Any]:
    return await _clone(ctx, ctx.need("UDiskId"), _when(ctx))
