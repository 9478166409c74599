"""VPCs, their CIDR blocks, and subnets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from yunhan.api.deps import CallerDep, state_of
from yunhan.api.views import resolve
from yunhan.controller.ipam import available
from yunhan.errors import Conflict
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
from yunhan.model.schemas import SubnetCreate, VpcCidrAdd, VpcCreate
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


@router.post("/vpcs", status_code=201)
def create_vpc(body: VpcCreate, request: Request, c: CallerDep) -> dict[str, Any]:
    name = validate_name("vpc", body.name)
    cidrs = validate_vpc_blocks(name, body.cidrs)
    with state_of(request).store.transaction() as tx:
        vpc = tx.create(
            "vpc", new_id("vpc"), c.project.id, name, {"cidrs": list(cidrs)}, {"vni": _next_vni(tx)}
        )
    return vpc.envelope()


@router.get("/vpcs")
def list_vpcs(request: Request, c: CallerDep) -> list[dict[str, Any]]:
    with state_of(request).store.read() as r:
        return [v.envelope() for v in r.list("vpc", c.project.id)]


@router.get("/vpcs/{ref}")
def get_vpc(ref: str, request: Request, c: CallerDep) -> dict[str, Any]:
    with state_of(request).store.read() as r:
        return resolve(r, "vpc", c.project.id, ref).envelope()


@router.delete("/vpcs/{ref}")
def delete_vpc(ref: str, request: Request, c: CallerDep) -> dict[str, Any]:
    with state_of(request).store.transaction() as tx:
        vpc = resolve(tx, "vpc", c.project.id, ref)
        subnets = sorted(s.name for s in _subnets_of(tx, vpc))
        if subnets:
            raise Conflict(
                f"VPC {vpc.name} still has subnet(s) {', '.join(subnets)}; delete them first",
                subnets=subnets,
            )
        gone = tx.delete(vpc)
    return gone.envelope()


@router.post("/vpcs/{ref}/cidrs")
def add_vpc_cidr(ref: str, body: VpcCidrAdd, request: Request, c: CallerDep) -> dict[str, Any]:
    block = str(validate_vpc_block(body.cidr))
    with state_of(request).store.transaction() as tx:
        vpc = resolve(tx, "vpc", c.project.id, ref)
        if block in vpc.spec["cidrs"]:
            raise Conflict(f"{block} is already a block of VPC {vpc.name}")
        cidrs = validate_vpc_blocks(vpc.name, [*vpc.spec["cidrs"], block])
        vpc = tx.update(vpc, spec={**vpc.spec, "cidrs": list(cidrs)})
    return vpc.envelope()


@router.delete("/vpcs/{ref}/cidrs")
def remove_vpc_cidr(ref: str, cidr: str, request: Request, c: CallerDep) -> dict[str, Any]:
    with state_of(request).store.transaction() as tx:
        vpc = resolve(tx, "vpc", c.project.id, ref)
        subnets = {s.name: s.spec["cidr"] for s in _subnets_of(tx, vpc)}
        rest = check_block_removal(vpc.name, vpc.spec["cidrs"], cidr, subnets)
        vpc = tx.update(vpc, spec={**vpc.spec, "cidrs": list(rest)})
    return vpc.envelope()


@router.post("/subnets", status_code=201)
def create_subnet(body: SubnetCreate, request: Request, c: CallerDep) -> dict[str, Any]:
    name = validate_name("subnet", body.name)
    with state_of(request).store.transaction() as tx:
        vpc = resolve(tx, "vpc", c.project.id, body.vpc)
        others = {s.name: s.spec["cidr"] for s in _subnets_of(tx, vpc)}
        net = validate_subnet(vpc.name, vpc.spec["cidrs"], body.cidr, others)
        cidr = str(net)
        sub = tx.create(
            "subnet",
            new_id("subnet"),
            c.project.id,
            name,
            {"vpc": vpc.id, "cidr": cidr},
            {"gateway": gateway(cidr), "available": capacity(cidr)},
        )
    return sub.envelope()


@router.get("/subnets")
def list_subnets(request: Request, c: CallerDep, vpc: str | None = None) -> list[dict[str, Any]]:
    with state_of(request).store.read() as r:
        if vpc is not None:
            subnets = _subnets_of(r, resolve(r, "vpc", c.project.id, vpc))
        else:
            subnets = r.list("subnet", c.project.id)
        return [s.envelope() for s in subnets]


@router.get("/subnets/{ref}")
def get_subnet(ref: str, request: Request, c: CallerDep) -> dict[str, Any]:
    with state_of(request).store.read() as r:
        return resolve(r, "subnet", c.project.id, ref).envelope()


@router.delete("/subnets/{ref}")
def delete_subnet(ref: str, request: Request, c: CallerDep) -> dict[str, Any]:
    with state_of(request).store.transaction() as tx:
        sub = resolve(tx, "subnet", c.project.id, ref)
        users = sorted(i.name for i in tx.find("instance", "subnet", sub.id))
        if users:
            raise Conflict(
                f"subnet {sub.name} still has instance(s) {', '.join(users)}; delete them first",
                instances=users,
            )
        gone = tx.delete(sub)
    return gone.envelope()


def refresh_available(tx: Tx, sub: Resource) -> Resource:
    """Recount a subnet's free addresses (called in the transaction that changed them)."""
    used = tx.count_of("instance", "subnet", sub.id)
    return tx.update(sub, status={**sub.status, "available": available(sub.spec["cidr"], used)})
