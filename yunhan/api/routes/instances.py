"""Instances: address, MAC and host are chosen inside the create transaction."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from yunhan.api.app import CallerDep, state_of
from yunhan.api.routes.network import refresh_available
from yunhan.api.views import resolve
from yunhan.controller.ipam import allocate_ip, allocate_mac
from yunhan.controller.loop import candidates
from yunhan.controller.scheduler import schedule
from yunhan.model import new_id, validate_name
from yunhan.model.schemas import InstanceCreate
from yunhan.store import Reader

router = APIRouter(prefix="/v1", tags=["instances"])


@router.post("/instances", status_code=201)
def create_instance(body: InstanceCreate, request: Request, c: CallerDep) -> dict[str, Any]:
    st = state_of(request)
    name = validate_name("instance", body.name)
    with st.store.transaction() as tx:
        sub = resolve(tx, "subnet", c.project.id, body.subnet)
        zone = resolve(tx, "zone", st.admin_project_id, body.zone)
        host = schedule(
            zone.id, zone.name, candidates(tx, st.fleet.leases, st.clock(), zone=zone.id)
        )
        used = {
            i.status["ip"]: i.name
            for i in tx.find("instance", "subnet", sub.id)
            if i.status.get("ip")
        }
        ip = allocate_ip(sub.name, sub.spec["cidr"], used, body.ip)
        mac = allocate_mac(_MacsInUse(tx))
        inst = tx.create(
            "instance",
            new_id("instance"),
            c.project.id,
            name,
            {"subnet": sub.id, "zone": zone.id, "ip": body.ip, "command": body.command},
            {
                "ip": ip,
                "mac": mac,
                "vpc": sub.spec["vpc"],
                "host": host,
                "phase": "scheduled",
                "message": None,
                "netns": None,
                "uts": None,
            },
        )
        refresh_available(tx, sub)
    return inst.envelope()


class _MacsInUse:
    """`mac in used` through the store's MAC index (no walk over every instance)."""

    def __init__(self, r: Reader) -> None:
        self._r = r

    def __contains__(self, mac: object) -> bool:
        return isinstance(mac, str) and self._r.count_of("instance", "mac", mac) > 0


@router.get("/instances")
def list_instances(request: Request, c: CallerDep) -> list[dict[str, Any]]:
    with state_of(request).store.read() as r:
        return [i.envelope() for i in r.list("instance", c.project.id)]


@router.get("/instances/{ref}")
def get_instance(ref: str, request: Request, c: CallerDep) -> dict[str, Any]:
    with state_of(request).store.read() as r:
        return resolve(r, "instance", c.project.id, ref).envelope()


@router.delete("/instances/{ref}")
def delete_instance(ref: str, request: Request, c: CallerDep) -> dict[str, Any]:
    with state_of(request).store.transaction() as tx:
        inst = resolve(tx, "instance", c.project.id, ref)
        gone = tx.delete(inst)
        sub = tx.get("subnet", inst.spec["subnet"])
        if sub is not None:
            refresh_available(tx, sub)
    return gone.envelope()
