"""Network ACLs: stateless, numbered rules per subnet, evaluated before security groups
(docs/secgroups.md). Every check runs before anything is written."""

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
from yunhan.api.models import NetworkAcl, NetworkAclList, Subnet
from yunhan.api.views import resolve
from yunhan.errors import Conflict, NotFound, ValidationError
from yunhan.model import new_id, parse_cidr, validate_name
from yunhan.model.schemas import AclCreate, AclRuleCreate, AssociationCreate
from yunhan.model.secgroups import MAX_ACL_RULES, acl_order, validate_rule

router = APIRouter(prefix="/v1", tags=["network ACLs"])


@router.post("/acls", status_code=201, response_model=NetworkAcl, responses=errors(404, 409, 422))
def create_acl(body: AclCreate, request: Request, c: CallerDep, idem: IdempotencyDep) -> Any:
    """An ACL without rules: a subnet associated with it passes nothing until rules allow."""
    name = validate_name("network_acl", body.name)
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        vpc = resolve(tx, "vpc", c.project.id, body.vpc)
        if tx.by_name("network_acl", c.project.id, name) is not None:
            raise Conflict(f"a network ACL named {name} already exists", name=name)
        acl = tx.create(
            "network_acl",
            new_id("network_acl"),
            c.project.id,
            name,
            {"vpc": vpc.id, "rules": []},
            {},
            labels=body.labels,
        )
        return idem.keep(tx, c, 201, acl.envelope())


@router.get("/acls", response_model=NetworkAclList, responses=errors(404, 422))
def list_acls(
    request: Request,
    c: CallerDep,
    page: PageDep,
    vpc: Annotated[str | Optional, Query(description="only this VPC's (name or id)")] = None,
) -> Any:
    with state_of(request).store.read() as r:
        if vpc is not None:
            objs = r.find("network_acl", "vpc", resolve(r, "vpc", c.project.id, vpc).id)
        else:
            objs = r.list("network_acl", c.project.id)
        return paginate(objs, page, r.revision, lambda o: o.envelope(), lambda o: True)


@router.get("/acls/{ref}", response_model=NetworkAcl, responses=errors(404))
def get_acl(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return resolve(r, "network_acl", c.project.id, ref).envelope()


@router.delete("/acls/{ref}", response_model=NetworkAcl, responses=errors(404, 409, 412))
def delete_acl(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    with state_of(request).store.transaction() as tx:
        acl = resolve(tx, "network_acl", c.project.id, ref)
        check_if_match(acl, if_match)
        subs = sorted(s.name for s in tx.find("subnet", "acl", acl.id))
        if subs:
            raise Conflict(
                f"network ACL {acl.name} is still associated with subnet(s) {', '.join(subs)}; "
                "associate them with another ACL or dissociate them first",
                subnets=subs,
            )
        gone = tx.delete(acl)
    return gone.envelope()


@router.post(
    "/acls/{ref}/rules", status_code=201, response_model=NetworkAcl, responses=errors(404, 409, 422)
)
def add_acl_rule(
    ref: str, body: AclRuleCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """A numbered rule in one direction; returns the ACL."""
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        acl = resolve(tx, "network_acl", c.project.id, ref)
        rng = validate_rule(body.proto, body.port)
        cidr = parse_cidr(body.cidr, "cidr")
        rules = list(acl.spec["rules"])
        mine = [r for r in rules if r["direction"] == body.direction]
        if any(r["number"] == body.number for r in mine):
            raise Conflict(
                f"network ACL {acl.name} already has {body.direction} rule {body.number}; "
                "give another number, or delete that rule",
                number=body.number,
            )
        if len(mine) >= MAX_ACL_RULES:
            raise Conflict(
                f"network ACL {acl.name} holds {MAX_ACL_RULES} {body.direction} rules, its most"
            )
        rules.append(
            {
                "number": body.number,
                "direction": body.direction,
                "proto": body.proto,
                "port": list(rng) if rng is not None else None,
                "cidr": str(cidr),
                "action": body.action,
            }
        )
        rules.sort(key=acl_order)
        acl = tx.update(acl, spec={**acl.spec, "rules": rules})
        return idem.keep(tx, c, 201, acl.envelope())


@router.delete(
    "/acls/{ref}/rules/{direction}/{number}", response_model=NetworkAcl, responses=errors(404, 412)
)
def delete_acl_rule(
    ref: str, direction: str, number: int, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    with state_of(request).store.transaction() as tx:
        acl = resolve(tx, "network_acl", c.project.id, ref)
        check_if_match(acl, if_match)
        rules = [
            r for r in acl.spec["rules"] if (r["direction"], r["number"]) != (direction, number)
        ]
        if len(rules) == len(acl.spec["rules"]):
            raise NotFound(
                f"network ACL {acl.name} has no {direction} rule {number}", kind="rule", ref=number
            )
        return tx.update(acl, spec={**acl.spec, "rules": rules}).envelope()


@router.post("/acls/{ref}/associations", response_model=Subnet, responses=errors(404, 409, 422))
def associate_acl(
    ref: str, body: AssociationCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """Associate a subnet with this ACL (a subnet has at most one: this replaces it).
    Returns the subnet."""
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        acl = resolve(tx, "network_acl", c.project.id, ref)
        sub = resolve(tx, "subnet", c.project.id, body.subnet)
        if sub.spec["vpc"] != acl.spec["vpc"]:
            raise ValidationError(
                f"subnet {sub.name} is not in the VPC of network ACL {acl.name}: a subnet "
                "takes an ACL of its own VPC",
                subnet=sub.name,
            )
        sub = tx.update(sub, spec={**sub.spec, "acl": acl.id})
        return idem.keep(tx, c, 200, sub.envelope())
