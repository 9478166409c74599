"""A function's network port in its VPC subnet (`function deploy --vpc V --subnet S`).

Like Lambda's shared ENI: one port per function, an instance of the function's project in
that subnet (named `fn-<function>`, labelled with the function's id), whose network
namespace every worker of the function joins. Workers then reach the subnet's instances
as any instance would, through the same routes and security groups (the VPC's default
group). The function's workers run on the port's host. The port is made at deploy and
deleted with the function.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from yunhan.api.auth import Caller
from yunhan.api.conventions import Idempotency
from yunhan.api.deps import state_of
from yunhan.api.functions import PORT_LABEL, port_of
from yunhan.api.routes.instances import _create, _zone_has_hosts, delete_instance
from yunhan.errors import Conflict
from yunhan.model.schemas import InstanceCreate
from yunhan.store import Resource


def port_name(fn_name: str) -> str:
    return f"fn-{fn_name}"[:63].rstrip("-")


def check_port(request: Request, subnet: str | None) -> None:
    """Refuse a deploy into a subnet no zone could place its port in, before anything is
    written (409, as an instance there would be)."""
    if subnet is None:
        return
    st = state_of(request)
    with st.store.read() as r:
        if not any(_zone_has_hosts(r, z.id) for z in r.list("zone", st.admin_project_id)):
            raise Conflict(
                "no zone has a host for the function's port in its subnet: a function in a "
                "VPC runs in a port (an instance) there"
            )


def ensure_port(request: Request, c: Caller, fn: Resource) -> None:
    """Give a function in a subnet its port (a new subnet: a new port, the old one goes)."""
    st = state_of(request)
    subnet = fn.spec.get("subnet")
    with st.store.read() as r:
        port = port_of(r, fn)
        if port is not None and port.spec["subnet"] == subnet:
            return
        zones = [] if subnet is None else sorted(r.list("zone", st.admin_project_id), key=_name)
        zone = next((z for z in zones if _zone_has_hosts(r, z.id)), None)
    if port is not None:
        delete_instance(port.id, request, c)
    if subnet is None:
        return
    if zone is None:
        raise Conflict("no zone has a host for the function's port in its subnet")
    body = InstanceCreate.model_validate(
        {
            "name": port_name(fn.name),
            "subnet": subnet,
            "zone": zone.id,
            "labels": {PORT_LABEL: fn.id},
        }
    )
    idem = Idempotency(None, "POST", "/v1/instances", "", st.clock())
    _create(st, body, body.name, c, [], idem)


def drop_port(request: Request, c: Caller, fn: Resource) -> None:
    with state_of(request).store.read() as r:
        port = port_of(r, fn)
    if port is not None:
        delete_instance(port.id, request, c)


def _name(res: Resource) -> Any:
    return res.name
