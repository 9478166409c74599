"""Zones and hosts (the admin's; every project may read them to place instances)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from yunhan.api.app import AdminDep, CallerDep, state_of
from yunhan.api.views import host_view, resolve
from yunhan.model import new_id, validate_name, validate_underlay_cidr
from yunhan.model.schemas import ZoneCreate
from yunhan.store import Reader

router = APIRouter(prefix="/v1", tags=["infrastructure"])


@router.post("/zones", status_code=201)
def create_zone(body: ZoneCreate, request: Request, _: AdminDep) -> dict[str, Any]:
    st = state_of(request)
    name = validate_name("zone", body.name)
    cidr = validate_underlay_cidr(body.underlay_cidr)
    with st.store.transaction() as tx:
        z = tx.create("zone", new_id("zone"), st.admin_project_id, name, {"underlay_cidr": cidr})
    return z.envelope()


@router.get("/zones")
def list_zones(request: Request, _: CallerDep) -> list[dict[str, Any]]:
    st = state_of(request)
    with st.store.read() as r:
        return [z.envelope() for z in r.list("zone", st.admin_project_id)]


@router.get("/zones/{ref}")
def get_zone(ref: str, request: Request, _: CallerDep) -> dict[str, Any]:
    st = state_of(request)
    with st.store.read() as r:
        return resolve(r, "zone", st.admin_project_id, ref).envelope()


def hosts_view(r: Reader, admin_project: str, now: float, admin: bool) -> list[dict[str, Any]]:
    docs = {d.name: d for d in r.list("hostdesired", admin_project)}
    live = r.liveness()
    return [
        host_view(h, docs.get(h.name), live.get(h.name), now, admin=admin)
        for h in r.list("host", admin_project)
    ]


@router.get("/hosts")
def list_hosts(request: Request, c: CallerDep) -> list[dict[str, Any]]:
    st = state_of(request)
    with st.store.read() as r:
        return hosts_view(r, st.admin_project_id, st.clock(), c.admin)


@router.get("/hosts/{ref}")
def get_host(ref: str, request: Request, c: CallerDep) -> dict[str, Any]:
    st = state_of(request)
    with st.store.read() as r:
        h = resolve(r, "host", st.admin_project_id, ref)
        doc = r.by_name("hostdesired", st.admin_project_id, h.name)
        return host_view(h, doc, r.liveness().get(h.name), st.clock(), admin=c.admin)
