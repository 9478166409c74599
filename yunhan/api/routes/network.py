"""VPCs, their CIDR blocks, and subnets."""

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
from yunhan.api.deps import CallerDep, state_of
from yunhan.api.models import Subnet, SubnetList, Vpc, VpcList
from yunhan.api.routes.hybrid import site_of_location
from yunhan.api.views import resolve
from yunhan.controller.ipam import available
from yunhan.controller.secgroups import ensure_default_group
from yunhan.controller.tables import default_table, ensure_default_table, take_index
from yunhan.errors import Conflict, ValidationError
from yunhan.model import (
    capacity,
    check_block_removal,
    gateway,
    new_id,
    validate_name,
    validate_subnet,
    validate_vpc_block,
    validate_vpc_blocks,
)
from yunhan.model.hybrid import in_any, parse_location
from yunhan.model.schemas import LabelsPatch, SubnetCreate, VpcCidrAdd, VpcCreate, VpcPatch
from yunhan.store import Reader, Resource, Tx

router = APIRouter(prefix="/v1", tags=["network"])

MAX_VNI = (1 << 24) - 1


def _next_vni(r: Reader) -> int:
    vnis = {int(v.status.get("vni") or 0) for v in r.list("vpc")}
    vni = max(vnis, default=0) + 1
    if vni > MAX_VNI:  # wrapped: take the lowest free one
        vni = next(n for n in range(1, MAX_VNI + 1) if n not in vnis)
    return vni


def _subnets_of(r: Reader, vpc: Resource) -> list[Resource]:
    return r.find("subnet", "vpc", vpc.id)


NameFilter = Annotated[str | Optional, Query(description="only the one with this name")]


@router.post("/vpcs", status_code=201, response_model=Vpc, responses=errors(409, 422))
def create_vpc(body: VpcCreate, request: Request, c: CallerDep, idem: IdempotencyDep) -> Any:
    name = validate_name("vpc", body.name)
    cidrs = validate_vpc_blocks(name, body.cidrs)
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        vpc = tx.create(
            "vpc",
            new_id("vpc"),
            c.project.id,
            name,
            {"cidrs": list(cidrs)},
            {"vni": _next_vni(tx), "next_index": 1},
            labels=body.labels,
        )
        _table, vpc = ensure_default_table(tx, vpc)  # one write: the VPC with its table
        ensure_default_group(tx, vpc)  # and its default security group
        return idem.keep(tx, c, 201, vpc.envelope())


@router.get("/vpcs", response_model=VpcList, responses=errors(422))
def list_vpcs(request: Request, c: CallerDep, page: PageDep, name: NameFilter = None) -> Any:
    with state_of(request).store.read() as r:
        objs = r.list("vpc", c.project.id)
        return paginate(
            objs, page, r.revision, Resource.envelope, lambda o: name is None or o.name == name
        )


@router.get("/vpcs/{ref}", response_model=Vpc, responses=errors(404))
def get_vpc(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return resolve(r, "vpc", c.project.id, ref).envelope()


@router.patch(
    "/vpcs/{ref}",
    response_model=Vpc,
    responses=errors(404, 412, 422),
    openapi_extra=patch_body(VpcPatch),
)
def patch_vpc(
    ref: str, body: VpcPatch, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    """JSON merge patch (RFC 7396; application/merge-patch+json or application/json):
    labels, and the whole list of CIDR blocks (blocks added are checked like `POST
    .../cidrs`, blocks removed like `DELETE .../cidrs`)."""
    with state_of(request).store.transaction() as tx:
        vpc = resolve(tx, "vpc", c.project.id, ref)
        check_if_match(vpc, if_match)
        spec = vpc.spec
        if body.spec.cidrs:
            spec = {**vpc.spec, "cidrs": _replace_blocks(tx, vpc, body.spec.cidrs)}
        return tx.update(vpc, spec=spec, labels=patched_labels(vpc, body)).envelope()


def _refuse_dependents(tx: Tx, vpc: Resource) -> None:
    for kind, what, cmd in (
        ("natgw", "NAT gateway", "natgw delete"),
        ("hybrid_gw", "hybrid gateway", "hybrid-gw delete"),
        ("route_table", "route table", "route-table delete"),
        ("security_group", "security group", "sg delete"),
        ("network_acl", "network ACL", "acl delete"),
    ):
        names = sorted(o.name for o in tx.find(kind, "vpc", vpc.id) if not o.spec.get("default"))
        if names:
            raise Conflict(
                f"VPC {vpc.name} still has {what}(s) {', '.join(names)}; delete them first "
                f"(`yunhan {cmd}`)",
                **{kind: names},
            )


def _replace_blocks(tx: Tx, vpc: Resource, wanted: list[str]) -> list[str]:
    blocks = [str(validate_vpc_block(b)) for b in wanted]
    subnets = {s.name: s.spec["cidr"] for s in _subnets_of(tx, vpc)}
    rest = list(vpc.spec["cidrs"])
    for gone in [b for b in rest if b not in blocks]:
        rest = list(check_block_removal(vpc.name, rest, gone, subnets))
    added = [b for b in blocks if b not in rest]
    _refuse_routes_on(tx, vpc, added)
    return list(validate_vpc_blocks(vpc.name, [*rest, *added]))


def _refuse_routes_on(tx: Tx, vpc: Resource, blocks: list[str]) -> None:
    """A block whose prefix a custom route already has would take that route's traffic
    (or the route the block's): refused, as a route equal to a block is."""
    wanted = set(blocks)
    for table in tx.find("route_table", "vpc", vpc.id):
        for route in tx.find("route", "table", table.id):
            if route.spec["dst"] in wanted:
                raise Conflict(
                    f"route table {table.name} has a custom route to {route.spec['dst']} "
                    f"({route.id}); a VPC block cannot equal a route's destination: delete "
                    "the route first",
                    route=route.id,
                )


@router.delete("/vpcs/{ref}", response_model=Vpc, responses=errors(404, 409, 412))
def delete_vpc(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    with state_of(request).store.transaction() as tx:
        vpc = resolve(tx, "vpc", c.project.id, ref)
        check_if_match(vpc, if_match)
        subnets = sorted(s.name for s in _subnets_of(tx, vpc))
        if subnets:
            raise Conflict(
                f"VPC {vpc.name} still has subnet(s) {', '.join(subnets)}; delete them first",
                subnets=subnets,
            )
        _refuse_dependents(tx, vpc)
        table = default_table(tx, vpc.id)
        if table is not None:  # deleted with its VPC, never alone
            tx.delete(table)
        for group in tx.find("security_group", "vpc", vpc.id):  # only the default is left
            tx.delete(group)
        for fl in tx.find("flow_log", "vpc", vpc.id):  # flow logs go with their target
            tx.delete(fl)
        gone = tx.delete(vpc)
    return gone.envelope()


@router.post("/vpcs/{ref}/cidrs", response_model=Vpc, responses=errors(404, 409, 422))
def add_vpc_cidr(
    ref: str, body: VpcCidrAdd, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    block = str(validate_vpc_block(body.cidr))
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        vpc = resolve(tx, "vpc", c.project.id, ref)
        if block in vpc.spec["cidrs"]:
            raise Conflict(f"{block} is already a block of VPC {vpc.name}")
        _refuse_routes_on(tx, vpc, [block])
        cidrs = validate_vpc_blocks(vpc.name, [*vpc.spec["cidrs"], block])
        vpc = tx.update(vpc, spec={**vpc.spec, "cidrs": list(cidrs)})
        return idem.keep(tx, c, 200, vpc.envelope())


@router.delete("/vpcs/{ref}/cidrs", response_model=Vpc, responses=errors(404, 412, 422))
def remove_vpc_cidr(
    ref: str, cidr: str, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    with state_of(request).store.transaction() as tx:
        vpc = resolve(tx, "vpc", c.project.id, ref)
        check_if_match(vpc, if_match)
        subnets = {s.name: s.spec["cidr"] for s in _subnets_of(tx, vpc)}
        rest = check_block_removal(vpc.name, vpc.spec["cidrs"], cidr, subnets)
        vpc = tx.update(vpc, spec={**vpc.spec, "cidrs": list(rest)})
    return vpc.envelope()


@router.post("/subnets", status_code=201, response_model=Subnet, responses=errors(404, 409, 422))
def create_subnet(body: SubnetCreate, request: Request, c: CallerDep, idem: IdempotencyDep) -> Any:
    name = validate_name("subnet", body.name)
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        vpc = resolve(tx, "vpc", c.project.id, body.vpc)
        others = {s.name: s.spec["cidr"] for s in _subnets_of(tx, vpc)}
        net = validate_subnet(vpc.name, vpc.spec["cidrs"], body.cidr, others)
        cidr = str(net)
        spec: dict[str, Any] = {"vpc": vpc.id, "cidr": cidr}
        site_name = parse_location(body.location)
        if site_name is not None:
            st = state_of(request)
            site = site_of_location(tx, st.admin_project_id, site_name)
            if not in_any(cidr, site.spec["cidrs"]):
                raise ValidationError(
                    f"{cidr} is not inside the ranges of IDC site {site.name} "
                    f"({', '.join(site.spec['cidrs'])})",
                    field="cidr",
                    value=cidr,
                )
            spec.update(location=f"idc:{site.name}", serve="idc")
        table, vpc = ensure_default_table(tx, vpc)
        index, vpc = take_index(tx, vpc)
        sub = tx.create(
            "subnet",
            new_id("subnet"),
            c.project.id,
            name,
            {**spec, "route_table": table.id},
            {"gateway": gateway(cidr), "available": capacity(cidr), "index": index},
            labels=body.labels,
        )
        return idem.keep(tx, c, 201, sub.envelope())


@router.get("/subnets", response_model=SubnetList, responses=errors(404, 422))
def list_subnets(
    request: Request,
    c: CallerDep,
    page: PageDep,
    vpc: Annotated[str | Optional, Query(description="only this VPC's (name or id)")] = None,
    name: NameFilter = None,
) -> Any:
    with state_of(request).store.read() as r:
        if vpc is not None:
            subnets = _subnets_of(r, resolve(r, "vpc", c.project.id, vpc))
        else:
            subnets = r.list("subnet", c.project.id)
        return paginate(
            subnets, page, r.revision, Resource.envelope, lambda o: name is None or o.name == name
        )


@router.get("/subnets/{ref}", response_model=Subnet, responses=errors(404))
def get_subnet(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return resolve(r, "subnet", c.project.id, ref).envelope()


@router.patch(
    "/subnets/{ref}",
    response_model=Subnet,
    responses=errors(404, 412),
    openapi_extra=patch_body(LabelsPatch),
)
def patch_subnet(
    ref: str, body: LabelsPatch, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    """JSON merge patch of a subnet's labels (its VPC and CIDR never change)."""
    with state_of(request).store.transaction() as tx:
        sub = resolve(tx, "subnet", c.project.id, ref)
        check_if_match(sub, if_match)
        return tx.update(sub, labels=patched_labels(sub, body)).envelope()


@router.delete("/subnets/{ref}", response_model=Subnet, responses=errors(404, 409, 412))
def delete_subnet(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    with state_of(request).store.transaction() as tx:
        sub = resolve(tx, "subnet", c.project.id, ref)
        check_if_match(sub, if_match)
        users = sorted(i.name for i in tx.find("instance", "subnet", sub.id))
        if users:
            raise Conflict(
                f"subnet {sub.name} still has instance(s) {', '.join(users)}; delete them first",
                instances=users,
            )
        vips = sorted(v.name for v in tx.find("vip", "subnet", sub.id))
        if vips:
            raise Conflict(
                f"subnet {sub.name} still has VIP(s) {', '.join(vips)}; delete them first",
                vips=vips,
            )
        for g in tx.find("natgw", "vpc", sub.spec["vpc"]):  # it serves the subnet no more
            if sub.id in g.spec.get("subnets", ()):
                kept = [s for s in g.spec["subnets"] if s != sub.id]
                tx.update(g, spec={**g.spec, "subnets": kept})
        for fl in tx.find("flow_log", "target", sub.id):  # flow logs go with their target
            tx.delete(fl)
        gone = tx.delete(sub)
    return gone.envelope()


def refresh_available(tx: Tx, sub: Resource) -> Resource:
    """Recount a subnet's free addresses (called in the transaction that changed them)."""
    used = tx.count_of("instance", "subnet", sub.id) + tx.count_of("vip", "subnet", sub.id)
    return tx.update(sub, status={**sub.status, "available": available(sub.spec["cidr"], used)})
