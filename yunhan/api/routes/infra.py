"""Zones and hosts (the admin's; every project may read them to place instances)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from yunhan.api.conventions import (
    IdempotencyDep,
    IfMatch,
    Optional,
    PageDep,
    check_if_match,
    errors,
    paginate,
    patch_body,
    patched_labels,
)
from yunhan.api.deps import AdminDep, AppState, CallerDep, state_of
from yunhan.api.models import Host, HostList, Zone, ZoneList
from yunhan.api.views import host_view, resolve
from yunhan.model import new_id, validate_name, validate_underlay_cidr
from yunhan.model.schemas import LabelsPatch, ZoneCreate
from yunhan.store import Resource

router = APIRouter(prefix="/v1", tags=["infrastructure"])

NameFilter = Annotated[str | Optional, Query(description="only the one with this name")]


@router.post("/zones", status_code=201, response_model=Zone, responses=errors(403, 409, 422))
def create_zone(body: ZoneCreate, request: Request, c: AdminDep, idem: IdempotencyDep) -> Any:
    st = state_of(request)
    name = validate_name("zone", body.name)
    cidr = validate_underlay_cidr(body.underlay_cidr)
    with st.store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        z = tx.create(
            "zone",
            new_id("zone"),
            st.admin_project_id,
            name,
            {"underlay_cidr": cidr},
            labels=body.labels,
        )
        return idem.keep(tx, c, 201, z.envelope())


@router.get("/zones", response_model=ZoneList, responses=errors(422))
def list_zones(request: Request, _: CallerDep, page: PageDep, name: NameFilter = None) -> Any:
    st = state_of(request)
    with st.store.read() as r:
        zones = r.list("zone", st.admin_project_id)
        return paginate(
            zones, page, r.revision, Resource.envelope, lambda o: name is None or o.name == name
        )


@router.get("/zones/{ref}", response_model=Zone, responses=errors(404))
def get_zone(ref: str, request: Request, _: CallerDep) -> Any:
    st = state_of(request)
    with st.store.read() as r:
        return resolve(r, "zone", st.admin_project_id, ref).envelope()


@router.patch(
    "/zones/{ref}",
    response_model=Zone,
    responses=errors(403, 404, 412, 422),
    openapi_extra=patch_body(LabelsPatch),
)
def patch_zone(
    ref: str, body: LabelsPatch, request: Request, _: AdminDep, if_match: IfMatch = None
) -> Any:
    """JSON merge patch of a zone's labels (its underlay CIDR never changes)."""
    st = state_of(request)
    with st.store.transaction() as tx:
        z = resolve(tx, "zone", st.admin_project_id, ref)
        check_if_match(z, if_match)
        return tx.update(z, labels=patched_labels(z, body)).envelope()


def _host(st: AppState, h: Resource, admin: bool, now: float) -> dict[str, Any]:
    return host_view(
        h, st.fleet.engine.doc_revision(h.name), st.fleet.leases.get(h.name), now, admin=admin
    )


@router.get("/hosts", response_model=HostList, responses=errors(404, 422))
def list_hosts(
    request: Request,
    c: CallerDep,
    page: PageDep,
    zone: Annotated[str | Optional, Query(description="only this zone's (name or id)")] = None,
    name: NameFilter = None,
) -> Any:
    st = state_of(request)
    with st.store.read() as r:
        if zone is not None:
            hosts = r.find("host", "zone", resolve(r, "zone", st.admin_project_id, zone).id)
        else:
            hosts = r.list("host", st.admin_project_id)
        now = st.clock()
        return paginate(
            hosts,
            page,
            r.revision,
            lambda h: _host(st, h, c.admin, now),
            lambda o: name is None or o.name == name,
        )


@router.get("/hosts/{ref}", response_model=Host, responses=errors(404))
def get_host(ref: str, request: Request, c: CallerDep) -> Any:
    st = state_of(request)
    with st.store.read() as r:
        return _host(st, resolve(r, "host", st.admin_project_id, ref), c.admin, st.clock())


@router.patch(
    "/hosts/{ref}",
    response_model=Host,
    responses=errors(403, 404, 412, 422),
    openapi_extra=patch_body(LabelsPatch),
)
def patch_host(
    ref: str, body: LabelsPatch, request: Request, c: AdminDep, if_match: IfMatch = None
) -> Any:
    """JSON merge patch of a host's labels (its agent registers zone, address and MTU)."""
    st = state_of(request)
    with st.store.transaction() as tx:
        h = resolve(tx, "host", st.admin_project_id, ref)
        check_if_match(h, if_match)
        h = tx.update(h, labels=patched_labels(h, body))
    return _host(st, h, c.admin, st.clock())
