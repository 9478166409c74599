"""VIPs: a subnet address that floats between the instances allowed to hold it
(docs/vips.md). Every check runs before anything is written; holders change by claims
(the agent endpoint) or by `move`, with the epoch fencing stale claims (`controller.vips`)."""

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
)
from yunhan.api.deps import AppState, CallerDep, state_of
from yunhan.api.models import Vip, VipList
from yunhan.api.routes.instances import AddressesInUse
from yunhan.api.routes.network import refresh_available
from yunhan.api.views import resolve
from yunhan.controller.ipam import allocate_ip
from yunhan.controller.vips import change_holder, holder_of, initial_status
from yunhan.errors import Conflict, NotFound, ValidationError
from yunhan.model import new_id, validate_name
from yunhan.model.schemas import MAX_VIP_ALLOWED, VipCreate, VipInstance
from yunhan.store import Reader, Resource, Tx

router = APIRouter(prefix="/v1", tags=["VIPs"])


def _instance_of_vpc(r: Reader, project: str, vpc: str, ref: str, vip: str) -> Resource:
    inst = resolve(r, "instance", project, ref)
    if inst.status.get("vpc") != vpc:
        raise ValidationError(
            f"instance {inst.name} is not in the VPC of VIP {vip}: only instances of the "
            "VIP's own VPC may hold it (in any zone and subnet)",
            instance=inst.name,
        )
    return inst


@router.post("/vips", status_code=201, response_model=Vip, responses=errors(404, 409, 422))
def create_vip(body: VipCreate, request: Request, c: CallerDep, idem: IdempotencyDep) -> Any:
    """A VIP at `ip` (inside the subnet and free) or at the subnet's lowest free address,
    with the instances allowed to hold it. Nobody holds it until one claims it or it is
    moved."""
    name = validate_name("vip", body.name)
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        sub = resolve(tx, "subnet", c.project.id, body.subnet)
        vpc = sub.spec["vpc"]
        if tx.by_name("vip", c.project.id, name) is not None:
            raise Conflict(f"a VIP named {name} already exists", name=name)
        allowed: list[str] = []
        for ref in body.allowed:
            inst = _instance_of_vpc(tx, c.project.id, vpc, ref, name)
            if inst.id not in allowed:
                allowed.append(inst.id)
        ip = allocate_ip(sub.name, sub.spec["cidr"], AddressesInUse(tx, sub.id), body.ip)
        vip = tx.create(
            "vip",
            new_id("vip"),
            c.project.id,
            name,
            {"subnet": sub.id, "vpc": vpc, "ip": ip, "allowed": allowed},
            initial_status(),
            labels=body.labels,
        )
        refresh_available(tx, sub)
        return idem.keep(tx, c, 201, vip.envelope())


@router.get("/vips", response_model=VipList, responses=errors(404, 422))
def list_vips(
    request: Request,
    c: CallerDep,
    page: PageDep,
    vpc: Annotated[str | Optional, Query(description="only this VPC's (name or id)")] = None,
    subnet: Annotated[str | Optional, Query(description="only this subnet's (name or id)")] = None,
) -> Any:
    with state_of(request).store.read() as r:
        if subnet is not None:
            objs = r.find("vip", "subnet", resolve(r, "subnet", c.project.id, subnet).id)
        elif vpc is not None:
            objs = r.find("vip", "vpc", resolve(r, "vpc", c.project.id, vpc).id)
        else:
            objs = r.list("vip", c.project.id)
        return paginate(objs, page, r.revision, Resource.envelope, lambda o: True)


@router.get("/vips/{ref}", response_model=Vip, responses=errors(404))
def get_vip(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return resolve(r, "vip", c.project.id, ref).envelope()


@router.delete("/vips/{ref}", response_model=Vip, responses=errors(404, 412))
def delete_vip(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Release the address; its holder's host stops delivering it."""
    st = state_of(request)
    with st.store.transaction() as tx:
        vip = resolve(tx, "vip", c.project.id, ref)
        check_if_match(vip, if_match)
        gone = tx.delete(vip)
        sub = tx.get("subnet", vip.spec["subnet"])
        if sub is not None:
            refresh_available(tx, sub)
    st.ipam.freed(vip.spec["subnet"], vip.spec["ip"])
    return gone.envelope()


@router.post("/vips/{ref}/allow", response_model=Vip, responses=errors(404, 409, 422))
def allow_instance(ref: str, body: VipInstance, request: Request, c: CallerDep) -> Any:
    """Allow an instance of the VIP's VPC to hold it (already allowed: nothing changes)."""
    with state_of(request).store.transaction() as tx:
        vip = resolve(tx, "vip", c.project.id, ref)
        inst = _instance_of_vpc(tx, c.project.id, vip.spec["vpc"], body.instance, vip.name)
        allowed = list(vip.spec.get("allowed", ()))
        if inst.id in allowed:
            return vip.envelope()
        if len(allowed) >= MAX_VIP_ALLOWED:
            raise Conflict(f"VIP {vip.name} allows {MAX_VIP_ALLOWED} instances, its most")
        return tx.update(vip, spec={**vip.spec, "allowed": [*allowed, inst.id]}).envelope()


@router.post("/vips/{ref}/disallow", response_model=Vip, responses=errors(404))
def disallow_instance(ref: str, body: VipInstance, request: Request, c: CallerDep) -> Any:
    """Take an instance off the allowed list. When it holds the VIP it loses it at once:
    nobody holds the VIP (a new epoch) until an allowed instance claims it or it is moved."""
    st = state_of(request)
    with st.store.transaction() as tx:
        vip = resolve(tx, "vip", c.project.id, ref)
        inst = resolve(tx, "instance", c.project.id, body.instance)
        allowed = list(vip.spec.get("allowed", ()))
        if inst.id not in allowed:
            raise NotFound(
                f"instance {inst.name} is not allowed to hold VIP {vip.name}",
                kind="instance",
                ref=body.instance,
            )
        status = vip.status
        if inst.id in (status.get("holder"), status.get("delivered_to")):
            status = change_holder(
                status, None, st.clock(), "disallowed", st.vip_damping, force=True
            ).status
        spec = {**vip.spec, "allowed": [a for a in allowed if a != inst.id]}
        return tx.update(vip, spec=spec, status=status).envelope()


@router.post("/vips/{ref}/move", response_model=Vip, responses=errors(404, 409, 422))
def move_vip(ref: str, body: VipInstance, request: Request, c: CallerDep) -> Any:
    """Give the VIP to an allowed, placed instance now (a new epoch; every host re-points
    it, even while a flap is damped: a move is the operator's decision). The instance
    itself must still configure the address to answer on it."""
    st = state_of(request)
    with st.store.transaction() as tx:
        vip = resolve(tx, "vip", c.project.id, ref)
        return _move(st, tx, vip, c.project.id, body.instance).envelope()


def _move(st: AppState, tx: Tx, vip: Resource, project: str, ref: str) -> Resource:
    inst = _instance_of_vpc(tx, project, vip.spec["vpc"], ref, vip.name)
    if inst.id not in vip.spec.get("allowed", ()):
        raise Conflict(
            f"instance {inst.name} is not allowed to hold VIP {vip.name}; "
            f"allow it first (yunhan vip allow {vip.name} {inst.name})",
            instance=inst.name,
        )
    if not inst.status.get("host"):
        raise Conflict(
            f"instance {inst.name} is not placed on a host yet; it cannot hold VIP {vip.name}",
            instance=inst.name,
        )
    if vip.status.get("holder") == inst.id and vip.status.get("delivered_to") == inst.id:
        return vip  # it holds it already: nothing changes, no new epoch
    change = change_holder(
        vip.status, holder_of(inst), st.clock(), "move", st.vip_damping, force=True
    )
    return tx.update(vip, status=change.status)
