"""The region at a glance, in one answer and as a watch: what the console's map draws.

One request instead of a dozen list calls, so that the map is drawn from one revision, and
a long poll (`after`, `timeout`) that answers as soon as the store moves past `after`:
the same wake-up the agents' watch uses, so a change reaches an open map within the time
it takes to write it. A caller sees what the list endpoints would show it: the region's
zones, hosts and IDC sites, and its project's resources (the admin: every project's).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from yunhan.api.auth import Caller
from yunhan.api.conventions import errors
from yunhan.api.deps import MAX_REVISION, AppState, CallerDep, state_of
from yunhan.api.routes.hybrid import _gw_view
from yunhan.api.routes.infra import _host
from yunhan.store import Resource

router = APIRouter(prefix="/v1", tags=["watch"])

# Topology key -> store kind, for the resources a project owns.
_OWNED = {
    "vpcs": "vpc",
    "subnets": "subnet",
    "instances": "instance",
    "vips": "vip",
    "natgws": "natgw",
    "eips": "eip",
    "hybrid_gws": "hybrid_gw",
    "route_tables": "route_table",
    "routes": "route",  # their next hops: instances that are appliances
    "security_groups": "security_group",  # names for the ids instances carry
}


@router.get(
    "/topology",
    responses={**errors(422), 204: {"description": "nothing changed within `timeout`"}},
)
async def get_topology(
    request: Request,
    c: CallerDep,
    after: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_REVISION,
            description="answer once the store revision is past this one (0: at once)",
        ),
    ] = 0,
    timeout: float = Query(0.0, allow_inf_nan=False, description="how long to wait (s)"),
) -> Any:
    """Zones, hosts, IDC sites and the caller's networks and instances at one revision;
    with `after`, waits up to `timeout` s for a change past that revision (204 if none)."""
    st = state_of(request)
    if after and st.store.revision() <= after:
        wait = min(max(timeout, 0.0), st.max_long_poll)
        if await st.store.wait_revision_async(after, wait) is None:
            return Response(status_code=204)
    # Reading every kind is a few milliseconds of store work: off the event loop, which
    # serves the agents' long polls too.
    return await asyncio.to_thread(_answer, st, c)


def _answer(st: AppState, c: Caller) -> dict[str, Any]:
    with st.store.read() as r:
        if c.admin and c.project.id == st.admin_project_id:
            projects = [p.id for p in r.list("project", "")]
        else:
            projects = [c.project.id]
        names = {p.id: p.name for p in r.list("project", "")}
        now = st.clock()
        body: dict[str, Any] = {
            "zones": [z.envelope() for z in r.list("zone", st.admin_project_id)],
            "hosts": [_host(st, h, c.admin, now) for h in r.list("host", st.admin_project_id)],
            "idc_sites": [s.envelope() for s in r.list("idc_site", st.admin_project_id)],
        }
        for key, kind in _OWNED.items():
            view = _gw_view if kind == "hybrid_gw" else Resource.envelope
            body[key] = [view(o) for p in projects for o in r.list(kind, p)]
        body["projects"] = [{"id": p, "name": names.get(p, p)} for p in projects]
        body["revision"] = r.revision
    return body
