"""Zones and hosts (the admin's; every project may read them to place instances)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from yunhan.api.deps import AdminDep, CallerDep, state_of
from yunhan.api.views import host_view, resolve
from yunhan.model import new_id, validate_name, validate_underlay_cidr
from yunhan.model.schemas import ZoneCreate

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


@router.get("/hosts")
def list_hosts(request: Request, c: CallerDep) -> list[dict[str, Any]]:
    st = state_of(request)
    with st.store.read() as r:
        hosts = r.list("host", st.admin_project_id)
        now = st.clock()
        return [
            host_view(
                h,
                st.fleet.engine.doc_revision(h.name),
                st.fleet.leases.get(h.name),
                now,
                admin=c.admin,
            )
            for h in hosts
        ]


@router.get("/hosts/{ref}")
def get_host(ref: str, request: Request, c: CallerDep) -> dict[str, Any]:
    st = state_of(request)
    with st.store.read() as r:
        h = resolve(r, "host", st.admin_project_id, ref)
        return host_view(
            h,
            st.fleet.engine.doc_revision(h.name),
            st.fleet.leases.get(h.name),
            st.clock(),
            admin=c.admin,
        )
