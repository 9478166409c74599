"""NAT gateways (SNAT for the subnets they serve, DNAT port forwards) and elastic IPs.

A gateway takes its public address from the region's public pool when it is made and
gives it back when it is deleted; the controller places it on a healthy host (status.host,
phase active) and moves it when that host is lost. An EIP is an address of the same pool,
bound 1:1 to an instance through the gateway serving the instance's subnet.
"""

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
from yunhan.api.deps import CallerDep, state_of
from yunhan.api.models import Eip, EipList, NatGw, NatGwList
from yunhan.api.views import resolve
from yunhan.controller.tables import allocate_public, gateway_of, take_index
from yunhan.errors import Conflict, NotFound, ValidationError
from yunhan.model import new_id, validate_name
from yunhan.model.routing import (
    MAX_EIPS_PER_GATEWAY,
    MAX_FORWARDS_PER_GATEWAY,
    parse_forward_target,
)
from yunhan.model.schemas import EipBind, EipCreate, ForwardCreate, NatGwCreate
from yunhan.store import Reader, Resource

router = APIRouter(prefix="/v1", tags=["nat"])

NameFilter = Annotated[str | Optional, Query(description="only the one with this name")]


def _served_instance(r: Reader, project: str, gw: Resource, ref: str, what: str) -> Resource:
    """Instance `ref`, which must sit in a subnet `gw` serves."""
    inst = resolve(r, "instance", project, ref)
    if inst.status.get("vpc") != gw.spec["vpc"]:
        raise ValidationError(
            f"{what}: instance {inst.name} is not in the VPC of NAT gateway {gw.name}",
            instance=inst.name,
        )
    if inst.spec["subnet"] not in gw.spec.get("subnets", ()):
        sub = r.get("subnet", inst.spec["subnet"])
        raise Conflict(
            f"{what}: NAT gateway {gw.name} does not serve subnet "
            f"{sub.name if sub else inst.spec['subnet']} of instance {inst.name}",
            instance=inst.name,
        )
    return inst


# -- NAT gateways ------------------------------------------------------------------------


@router.post("/natgws", status_code=201, response_model=NatGw, responses=errors(404, 409, 422))
def create_natgw(body: NatGwCreate, request: Request, c: CallerDep, idem: IdempotencyDep) -> Any:
    """A NAT gateway serving `subnets` of `vpc` (a subnet is served by at most one). Its
    public address comes from the public pool; the controller places it on a host."""
    st = state_of(request)
    name = validate_name("natgw", body.name)
    with st.store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        vpc = resolve(tx, "vpc", c.project.id, body.vpc)
        subnets: list[str] = []
        for ref in body.subnets:
            sub = resolve(tx, "subnet", c.project.id, ref)
            if sub.spec["vpc"] != vpc.id:
                raise ValidationError(
                    f"subnet {sub.name} is not in VPC {vpc.name}: a NAT gateway serves "
                    "subnets of its own VPC",
                    subnet=sub.name,
                )
            other = gateway_of(tx, sub)
            if other is not None:
                raise Conflict(
                    f"subnet {sub.name} is already served by NAT gateway {other.name}; a "
                    "subnet has at most one",
                    subnet=sub.name,
                    natgw=other.name,
                )
            if sub.id not in subnets:
                subnets.append(sub.id)
        public_ip = allocate_public(tx, st.public_pools)
        index, vpc = take_index(tx, vpc)
        gw = tx.create(
            "natgw",
            new_id("natgw"),
            c.project.id,
            name,
            {"vpc": vpc.id, "subnets": subnets, "forwards": []},
            {
                "index": index,
                "host": None,
                "public_ip": public_ip,
                "phase": "pending",
                "moved_at": None,
                "history": [],
            },
            labels=body.labels,
        )
        return idem.keep(tx, c, 201, gw.envelope())


@router.get("/natgws", response_model=NatGwList, responses=errors(404, 422))
def list_natgws(
    request: Request,
    c: CallerDep,
    page: PageDep,
    vpc: Annotated[str | Optional, Query(description="only this VPC's (name or id)")] = None,
    name: NameFilter = None,
) -> Any:
    with state_of(request).store.read() as r:
        if vpc is not None:
            gws = r.find("natgw", "vpc", resolve(r, "vpc", c.project.id, vpc).id)
        else:
            gws = r.list("natgw", c.project.id)
        return paginate(
            gws, page, r.revision, Resource.envelope, lambda o: name is None or o.name == name
        )


@router.get("/natgws/{ref}", response_model=NatGw, responses=errors(404))
def get_natgw(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return resolve(r, "natgw", c.project.id, ref).envelope()


@router.delete("/natgws/{ref}", response_model=NatGw, responses=errors(404, 409, 412))
def delete_natgw(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Delete a gateway, its port forwards, and give its address back to the pool;
    refused while EIPs are bound through it, or routes use it as their next hop."""
    with state_of(request).store.transaction() as tx:
        gw = resolve(tx, "natgw", c.project.id, ref)
        check_if_match(gw, if_match)
        bound = [e.name for e in tx.find("eip", "natgw", gw.id)]
        if bound:
            raise Conflict(
                f"NAT gateway {gw.name} still has EIP(s) {', '.join(bound)} bound through it; "
                "unbind them first (`yunhan eip unbind EIP`)",
                eips=bound,
            )
        users = [o.id for kind in ("route", "policy_route") for o in tx.find(kind, "target", gw.id)]
        if users:
            raise Conflict(
                f"NAT gateway {gw.name} is the next hop of route(s) {', '.join(users)}; "
                "delete them first",
                routes=users,
            )
        gone = tx.delete(gw)
    return gone.envelope()


@router.post("/natgws/{ref}/forwards", response_model=NatGw, responses=errors(404, 409, 422))
def add_forward(
    ref: str, body: ForwardCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """A DNAT port forward: `proto` `port` of the gateway's public address to INSTANCE:PORT
    (an instance of a subnet it serves). Returns the gateway."""
    target, to_port = parse_forward_target(body.to)
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        gw = resolve(tx, "natgw", c.project.id, ref)
        inst = _served_instance(tx, c.project.id, gw, target, f"forward {body.proto}/{body.port}")
        forwards = list(gw.spec.get("forwards") or [])
        for f in forwards:
            if (f["proto"], f["port"]) == (body.proto, body.port):
                held = tx.get("instance", f["instance"])
                raise Conflict(
                    f"{body.proto} port {body.port} of NAT gateway {gw.name} is already "
                    f"forwarded to {held.name if held else f['instance']}:{f['to_port']}; "
                    "delete that forward first",
                    proto=body.proto,
                    port=body.port,
                )
        if len(forwards) >= MAX_FORWARDS_PER_GATEWAY:
            raise Conflict(
                f"NAT gateway {gw.name} has {MAX_FORWARDS_PER_GATEWAY} port forwards, its most",
                quota=MAX_FORWARDS_PER_GATEWAY,
            )
        forwards.append(
            {"proto": body.proto, "port": body.port, "instance": inst.id, "to_port": to_port}
        )
        gw = tx.update(gw, spec={**gw.spec, "forwards": forwards})
        return idem.keep(tx, c, 200, gw.envelope())


@router.delete(
    "/natgws/{ref}/forwards/{proto}/{port}", response_model=NatGw, responses=errors(404, 412)
)
def delete_forward(
    ref: str, proto: str, port: int, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    with state_of(request).store.transaction() as tx:
        gw = resolve(tx, "natgw", c.project.id, ref)
        check_if_match(gw, if_match)
        forwards = list(gw.spec.get("forwards") or [])
        kept = [f for f in forwards if (f["proto"], f["port"]) != (proto, port)]
        if len(kept) == len(forwards):
            raise NotFound(f"NAT gateway {gw.name} forwards no {proto} port {port}")
        gw = tx.update(gw, spec={**gw.spec, "forwards": kept})
    return gw.envelope()


# -- elastic IPs -------------------------------------------------------------------------


@router.post("/eips", status_code=201, response_model=Eip, responses=errors(409, 422))
def allocate_eip(body: EipCreate, request: Request, c: CallerDep, idem: IdempotencyDep) -> Any:
    """Allocate an address of the public pool (the lowest free one)."""
    st = state_of(request)
    with st.store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        eid = new_id("eip")
        name = validate_name("eip", body.name) if body.name is not None else eid
        address = allocate_public(tx, st.public_pools)
        eip = tx.create(
            "eip",
            eid,
            c.project.id,
            name,
            {},
            {"address": address, "instance": None, "natgw": None},
            labels=body.labels,
        )
        return idem.keep(tx, c, 201, eip.envelope())


@router.get("/eips", response_model=EipList, responses=errors(422))
def list_eips(request: Request, c: CallerDep, page: PageDep, name: NameFilter = None) -> Any:
    with state_of(request).store.read() as r:
        return paginate(
            r.list("eip", c.project.id),
            page,
            r.revision,
            Resource.envelope,
            lambda o: name is None or o.name == name,
        )


def _resolve_eip(r: Reader, project: str, ref: str) -> Resource:
    """An EIP by id, name or address."""
    found = [e for e in r.find("eip", "address", ref) if e.project == project]
    return found[0] if found else resolve(r, "eip", project, ref)


@router.get("/eips/{ref}", response_model=Eip, responses=errors(404))
def get_eip(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return _resolve_eip(r, c.project.id, ref).envelope()


@router.delete("/eips/{ref}", response_model=Eip, responses=errors(404, 409, 412))
def release_eip(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Give the address back to the pool; refused while it is bound."""
    with state_of(request).store.transaction() as tx:
        eip = _resolve_eip(tx, c.project.id, ref)
        check_if_match(eip, if_match)
        if eip.status.get("instance"):
            inst = tx.get("instance", eip.status["instance"])
            raise Conflict(
                f"EIP {eip.name} ({eip.status['address']}) is bound to instance "
                f"{inst.name if inst else eip.status['instance']}; unbind it first",
                instance=eip.status["instance"],
            )
        gone = tx.delete(eip)
    return gone.envelope()


@router.post("/eips/{ref}/bind", response_model=Eip, responses=errors(404, 409, 422))
def bind_eip(ref: str, body: EipBind, request: Request, c: CallerDep, idem: IdempotencyDep) -> Any:
    """Bind an EIP to an instance: inbound DNAT and outbound SNAT 1:1 through the NAT
    gateway serving the instance's subnet (at most 64 EIPs per gateway, one per
    instance)."""
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        eip = _resolve_eip(tx, c.project.id, ref)
        inst = resolve(tx, "instance", c.project.id, body.instance)
        if eip.status.get("instance"):
            held = tx.get("instance", eip.status["instance"])
            raise Conflict(
                f"EIP {eip.name} ({eip.status['address']}) is already bound to instance "
                f"{held.name if held else eip.status['instance']}; unbind it first",
                instance=eip.status["instance"],
            )
        other = tx.find("eip", "instance", inst.id)
        if other:
            raise Conflict(
                f"instance {inst.name} already has EIP {other[0].name} "
                f"({other[0].status['address']}); an instance has one",
                eip=other[0].name,
            )
        sub = tx.get("subnet", inst.spec["subnet"])
        gw = gateway_of(tx, sub) if sub is not None else None
        if gw is None:
            raise Conflict(
                f"no NAT gateway serves subnet {sub.name if sub else '?'} of instance "
                f"{inst.name}; an EIP reaches an instance through one (`yunhan natgw create`)",
                instance=inst.name,
            )
        if tx.count_of("eip", "natgw", gw.id) >= MAX_EIPS_PER_GATEWAY:
            raise Conflict(
                f"NAT gateway {gw.name} has {MAX_EIPS_PER_GATEWAY} EIPs bound, its most",
                quota=MAX_EIPS_PER_GATEWAY,
            )
        eip = tx.update(eip, status={**eip.status, "instance": inst.id, "natgw": gw.id})
        return idem.keep(tx, c, 200, eip.envelope())


@router.post("/eips/{ref}/unbind", response_model=Eip, responses=errors(404, 409))
def unbind_eip(ref: str, request: Request, c: CallerDep, idem: IdempotencyDep) -> Any:
    """Unbind an EIP from its instance (it stays allocated to the project)."""
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        eip = _resolve_eip(tx, c.project.id, ref)
        if not eip.status.get("instance"):
            raise Conflict(f"EIP {eip.name} ({eip.status['address']}) is not bound")
        eip = tx.update(eip, status={**eip.status, "instance": None, "natgw": None})
        return idem.keep(tx, c, 200, eip.envelope())
