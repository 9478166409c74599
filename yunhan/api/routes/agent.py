"""Agent endpoints (admin token): register, watch the desired document, report status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from yunhan.api.app import MAX_REVISION, AdminDep, state_of
from yunhan.api.views import host_view, resolve
from yunhan.controller.status import reflect
from yunhan.errors import Conflict, NotFound
from yunhan.model import new_id, parse_ip, validate_mtu, validate_name
from yunhan.model.schemas import HostRegister, HostStatusReport
from yunhan.store import Liveness, Resource

router = APIRouter(prefix="/v1/agent", tags=["agent"])

# Names the store that answers a desired-document poll (the admin project's id, random per
# database): revisions of one store mean nothing to another, so an agent that sees this
# change forgets the revision it applied and takes the new store's document.
STORE_HEADER = "X-Yunhan-Store"


@router.put("/hosts/{name}")
def register_host(name: str, body: HostRegister, request: Request, _: AdminDep) -> dict[str, Any]:
    """Register or update a host. Its `vtep_index` is assigned on first registration and
    kept forever after: peers' neighbour and FDB entries are derived from it."""
    st = state_of(request)
    validate_name("host", name)
    underlay_ip = str(parse_ip(body.underlay_ip, "underlay_ip"))
    mtu = validate_mtu(body.mtu)
    with st.store.transaction() as tx:
        zone = resolve(tx, "zone", st.admin_project_id, body.zone)
        hosts = tx.list("host", st.admin_project_id)
        for other in hosts:
            if other.name != name and other.spec.get("underlay_ip") == underlay_ip:
                raise Conflict(
                    f"underlay IP {underlay_ip} is already registered by host {other.name}",
                    host=other.name,
                )
        spec = {"zone": zone.id, "underlay_ip": underlay_ip, "mtu": mtu}
        host = tx.by_name("host", st.admin_project_id, name)
        if host is None:
            vtep = max((int(h.status.get("vtep_index") or 0) for h in hosts), default=0) + 1
            host = tx.create(
                "host", new_id("host"), st.admin_project_id, name, spec, {"vtep_index": vtep}
            )
        else:
            if host.spec.get("zone") != zone.id:
                # Its instances asked for the zone it was in when they were placed.
                carried = sorted(
                    i.name for i in tx.list("instance", spec=False) if i.status.get("host") == name
                )
                if carried:
                    raise Conflict(
                        f"host {name} carries instance(s) {', '.join(carried)} of its zone; "
                        f"delete them before moving the host to zone {zone.name}",
                        instances=carried,
                    )
            host = tx.update(host, spec=spec)
    with st.store.read() as r:
        doc = r.by_name("hostdesired", st.admin_project_id, name)
        return host_view(host, doc, r.liveness().get(name), st.clock())


@router.get("/hosts/{name}/desired", response_model=None)
async def get_desired(
    name: str,
    request: Request,
    _: AdminDep,
    after: int = Query(0, ge=0, le=MAX_REVISION),
    timeout: float = Query(0.0, allow_inf_nan=False),
) -> Response:
    """The host's `HostDesired` once its revision exceeds `after`; 204 after `timeout` s.

    An `after` beyond the store's revision (an agent that outlived its control plane's
    database) gets the current document at once.
    """
    st = state_of(request)

    def ready() -> Resource | None:
        with st.store.read() as r:
            if r.by_name("host", st.admin_project_id, name) is None:
                raise NotFound(f"host {name} is not registered; PUT /v1/agent/hosts/{name} first")
            doc = r.by_name("hostdesired", st.admin_project_id, name)
            if doc is not None and (doc.revision > after or after > r.revision):
                return doc
            return None

    doc = await st.store.wait_for_async(ready, min(max(timeout, 0.0), st.max_long_poll))
    headers = {STORE_HEADER: st.admin_project_id}
    if doc is None:
        return Response(status_code=204, headers=headers)
    return JSONResponse({**doc.spec, "revision": doc.revision}, headers=headers)


@router.post("/hosts/{name}/status", status_code=204)
def report_status(name: str, body: HostStatusReport, request: Request, _: AdminDep) -> Response:
    """Heartbeat + applied revision + per-instance facts, reflected into instance status."""
    st = state_of(request)
    with st.store.transaction() as tx:
        if tx.by_name("host", st.admin_project_id, name) is None:
            raise NotFound(f"host {name} is not registered; PUT /v1/agent/hosts/{name} first")
        tx.set_liveness(Liveness(name, body.applied_revision, st.clock(), body.error))
        for inst in tx.list("instance"):
            report = body.instances.get(inst.id)
            if report is None or inst.status.get("host") != name:
                continue
            tx.update(inst, status=reflect(inst.status, report.model_dump(exclude_unset=True)))
    return Response(status_code=204)
