"""Instances: address, MAC and host are chosen inside the create transaction."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fastapi import APIRouter, Request

from yunhan.api.auth import Caller
from yunhan.api.deps import AppState, CallerDep, state_of
from yunhan.api.routes.network import refresh_available
from yunhan.api.views import resolve
from yunhan.controller.ipam import allocate_ip, allocate_mac
from yunhan.controller.placement import choose
from yunhan.model import new_id, validate_name
from yunhan.model.schemas import InstanceCreate
from yunhan.store import Reader, Resource

router = APIRouter(prefix="/v1", tags=["instances"])


@router.post("/instances", status_code=201)
def create_instance(body: InstanceCreate, request: Request, c: CallerDep) -> dict[str, Any]:
    st = state_of(request)
    name = validate_name("instance", body.name)
    hinted: list[tuple[str, str]] = []  # (subnet, address) the IPAM hint moved past
    try:
        inst = _create(st, body, name, c, hinted)
    except BaseException:
        for sub_id, ip in hinted:  # its batch failed to commit: not taken after all
            st.ipam.freed(sub_id, ip)
        raise
    return inst.envelope()


def _create(
    st: AppState, body: InstanceCreate, name: str, c: Caller, hinted: list[tuple[str, str]]
) -> Resource:
    with st.store.transaction() as tx:
        sub = resolve(tx, "subnet", c.project.id, body.subnet)
        zone = resolve(tx, "zone", st.admin_project_id, body.zone)
        # The one placement decision (`placement.choose`), taken in the create transaction:
        # the instance is written once, with its host; a zone without hosts refuses it.
        host = choose(tx, zone.id, st.fleet.leases, st.clock(), st.loads)
        ip = allocate_ip(
            sub.name, sub.spec["cidr"], _AddressesInUse(tx, sub.id), body.ip, st.ipam.start(sub.id)
        )
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
        if body.ip is None:  # the lowest free one was taken; a fixed one says nothing of it
            st.ipam.taken(sub.id, ip)
            hinted.append((sub.id, ip))
    return inst


class _AddressesInUse(Mapping[str, str]):
    """A subnet's addresses in use (address -> instance name), through the store's index."""

    def __init__(self, r: Reader, subnet_id: str) -> None:
        self._r = r
        self._subnet = subnet_id

    def __getitem__(self, ip: str) -> str:
        found = self._r.find("instance", "addr", f"{self._subnet}|{ip}")
        if not found:
            raise KeyError(ip)
        return found[0].name

    def __iter__(self) -> Iterator[str]:
        return (i.status["ip"] for i in self._r.find("instance", "subnet", self._subnet))

    def __len__(self) -> int:
        return self._r.count_of("instance", "subnet", self._subnet)


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
    if inst.status.get("ip"):
        state_of(request).ipam.freed(inst.spec["subnet"], inst.status["ip"])
    return gone.envelope()
