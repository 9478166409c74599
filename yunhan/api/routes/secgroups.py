"""Security groups and their rules (docs/secgroups.md).

Every check runs in the write transaction before anything is written: a refused request
changes nothing. 422 for values a rule refuses (a port with protocol icmp, a range that
runs backwards, a peer group of another VPC), 409 for what conflicts with what exists (a
group still used by instances or named by another group's rule, a group full of rules).
"""

from __future__ import annotations

import secrets
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
from yunhan.api.models import Instance, SecurityGroup, SecurityGroupList
from yunhan.api.views import resolve
from yunhan.controller.secgroups import default_group, ensure_default_group
from yunhan.errors import Conflict, NotFound, ValidationError
from yunhan.model import new_id, validate_name
from yunhan.model.schemas import InstanceSecurityGroups, SecurityGroupCreate, SgRuleCreate
from yunhan.model.secgroups import (
    DEFAULT_GROUP,
    MAX_GROUPS_PER_INSTANCE,
    MAX_RULES_PER_GROUP,
    parse_peer,
    rule_order,
    validate_rule,
)
from yunhan.store import Reader, Resource, Tx

router = APIRouter(prefix="/v1", tags=["security groups"])


def resolve_group(r: Reader, project: str, ref: str, vpc: Resource | None = None) -> Resource:
    """A group by id or name; "default" with a VPC is that VPC's default group. A group of
    another VPC than `vpc` is refused (422)."""
    if ref == DEFAULT_GROUP and vpc is not None:
        g = default_group(r, vpc.id)
        if g is not None:
            return g
    g = resolve(r, "security_group", project, ref)
    if vpc is not None and g.spec["vpc"] != vpc.id:
        other = r.get("vpc", g.spec["vpc"])
        raise ValidationError(
            f"security group {g.name} belongs to VPC {other.name if other else g.spec['vpc']}, "
            f"not to VPC {vpc.name}: a group applies only within its own VPC",
            field="security_groups",
            value=ref,
        )
    return g


def groups_for(tx: Tx, project: str, vpc: Resource, refs: list[str] | None) -> list[str]:
    """The group ids of an instance of `vpc` (none given: the VPC's default group)."""
    if not refs:
        return [ensure_default_group(tx, vpc).id]
    if len(refs) > MAX_GROUPS_PER_INSTANCE:
        raise ValidationError(
            f"an instance has at most {MAX_GROUPS_PER_INSTANCE} security groups, not {len(refs)}",
            field="security_groups",
        )
    if DEFAULT_GROUP in refs:
        ensure_default_group(tx, vpc)
    ids: list[str] = []
    for ref in refs:
        g = resolve_group(tx, project, ref, vpc)
        if g.id not in ids:
            ids.append(g.id)
    return ids


def _instances_of_vpc(r: Reader, vpc_id: str) -> list[Resource]:
    out: list[Resource] = []
    for sub in r.find("subnet", "vpc", vpc_id):
        out.extend(r.find("instance", "subnet", sub.id))
    return out


# -- groups ------------------------------------------------------------------------------


@router.post(
    "/security-groups",
    status_code=201,
    response_model=SecurityGroup,
    responses=errors(404, 409, 422),
)
def create_group(
    body: SecurityGroupCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """A group with no rules (so it denies everything until rules allow something)."""
    name = validate_name("security_group", body.name)
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        vpc = resolve(tx, "vpc", c.project.id, body.vpc)
        ensure_default_group(tx, vpc)
        if tx.by_name("security_group", c.project.id, name) is not None:
            raise Conflict(f"a security group named {name} already exists", name=name)
        g = tx.create(
            "security_group",
            new_id("security_group"),
            c.project.id,
            name,
            {"vpc": vpc.id, "default": False, "rules": []},
            {},
            labels=body.labels,
        )
        return idem.keep(tx, c, 201, g.envelope())


@router.get("/security-groups", response_model=SecurityGroupList, responses=errors(404, 422))
def list_groups(
    request: Request,
    c: CallerDep,
    page: PageDep,
    vpc: Annotated[str | Optional, Query(description="only this VPC's (name or id)")] = None,
) -> Any:
    with state_of(request).store.read() as r:
        if vpc is not None:
            objs = r.find("security_group", "vpc", resolve(r, "vpc", c.project.id, vpc).id)
        else:
            objs = r.list("security_group", c.project.id)
        return paginate(objs, page, r.revision, Resource.envelope, lambda o: True)


@router.get("/security-groups/{ref}", response_model=SecurityGroup, responses=errors(404))
def get_group(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return resolve(r, "security_group", c.project.id, ref).envelope()


@router.delete(
    "/security-groups/{ref}", response_model=SecurityGroup, responses=errors(404, 409, 412)
)
def delete_group(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Refused for a VPC's default group, while instances use the group, and while a rule
    of another group names it as its peer."""
    with state_of(request).store.transaction() as tx:
        g = resolve(tx, "security_group", c.project.id, ref)
        check_if_match(g, if_match)
        if g.spec.get("default"):
            raise Conflict(
                f"security group {g.name} is its VPC's default group: it goes with the VPC",
                security_group=g.name,
            )
        users = sorted(
            i.name
            for i in _instances_of_vpc(tx, g.spec["vpc"])
            if g.id in i.spec.get("security_groups", ())
        )
        if users:
            raise Conflict(
                f"security group {g.name} is still used by instance(s) {', '.join(users[:10])}"
                f"{' …' if len(users) > 10 else ''}; give them other groups first "
                "(`yunhan instance set-sg NAME SG…`)",
                instances=users,
            )
        naming = sorted(
            o.name
            for o in tx.find("security_group", "vpc", g.spec["vpc"])
            if o.id != g.id and any(r["peer"].get("sg") == g.id for r in o.spec["rules"])
        )
        if naming:
            raise Conflict(
                f"security group {g.name} is the peer of rules of group(s) {', '.join(naming)}; "
                "delete those rules first",
                groups=naming,
            )
        gone = tx.delete(g)
    return gone.envelope()


# -- rules -------------------------------------------------------------------------------


@router.post(
    "/security-groups/{ref}/rules",
    status_code=201,
    response_model=SecurityGroup,
    responses=errors(404, 409, 412, 422),
)
def add_rule(
    ref: str,
    body: SgRuleCreate,
    request: Request,
    c: CallerDep,
    idem: IdempotencyDep,
    if_match: IfMatch = None,
) -> Any:
    """Add a rule; returns the group (the new rule's id is in its rules). Live: every
    host holding a member applies it in one nft transaction."""
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        g = resolve(tx, "security_group", c.project.id, ref)
        check_if_match(g, if_match)
        rng = validate_rule(body.proto, body.port)
        kind, value = parse_peer(body.peer)
        if kind == "sg":
            vpc = tx.get("vpc", g.spec["vpc"])
            assert vpc is not None
            peer = {"sg": resolve_group(tx, c.project.id, value, vpc).id}
        else:
            peer = {"cidr": value}
        rules = list(g.spec["rules"])
        if len(rules) >= MAX_RULES_PER_GROUP:
            raise Conflict(
                f"security group {g.name} holds {MAX_RULES_PER_GROUP} rules, its most; "
                "delete some, or aggregate ports and CIDRs",
                security_group=g.name,
            )
        taken = {r["id"] for r in rules}
        rid = f"r-{secrets.token_hex(4)}"
        while rid in taken:
            rid = f"r-{secrets.token_hex(4)}"
        rule = {
            "id": rid,
            "direction": body.direction,
            "proto": body.proto,
            "port": list(rng) if rng is not None else None,
            "peer": peer,
            "action": body.action,
            "priority": body.priority,
        }
        rules.append(rule)
        rules.sort(key=rule_order)
        g = tx.update(g, spec={**g.spec, "rules": rules})
        return idem.keep(tx, c, 201, g.envelope())


@router.delete(
    "/security-groups/{ref}/rules/{rule_id}",
    response_model=SecurityGroup,
    responses=errors(404, 412),
)
def delete_rule(
    ref: str, rule_id: str, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    """Delete a rule; returns the group. An established flow it allowed and nothing else
    allows is cut (its next packet is evaluated again and dropped)."""
    with state_of(request).store.transaction() as tx:
        g = resolve(tx, "security_group", c.project.id, ref)
        check_if_match(g, if_match)
        rules = [r for r in g.spec["rules"] if r["id"] != rule_id]
        if len(rules) == len(g.spec["rules"]):
            raise NotFound(
                f"security group {g.name} has no rule {rule_id!r} (`yunhan sg show {g.name}`)",
                kind="rule",
                ref=rule_id,
            )
        return tx.update(g, spec={**g.spec, "rules": rules}).envelope()


# -- instances ---------------------------------------------------------------------------


@router.put(
    "/instances/{ref}/security-groups", response_model=Instance, responses=errors(404, 412, 422)
)
def set_instance_groups(
    ref: str, body: InstanceSecurityGroups, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    """Replace an instance's groups (live: its hosts and its peers' hosts update)."""
    with state_of(request).store.transaction() as tx:
        inst = resolve(tx, "instance", c.project.id, ref)
        check_if_match(inst, if_match)
        vpc = tx.get("vpc", inst.status["vpc"])
        assert vpc is not None
        ids = groups_for(tx, c.project.id, vpc, body.security_groups)
        return tx.update(inst, spec={**inst.spec, "security_groups": ids}).envelope()
