"""Route tables, their associations, custom routes and policy routes (docs/routing.md).

Every check runs in the write transaction before anything is written: a refused request
changes nothing. 422 for values a rule refuses (a next hop outside the table's VPC, a
destination equal to a VPC block, a port with protocol icmp), 409 for what conflicts with
what exists (a duplicate (prefix, priority), editing the default table, deleting a table
still associated, an association that would loop).
"""

from __future__ import annotations

import ipaddress
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
from yunhan.api.models import (
    PolicyRoute,
    Route,
    RouteTable,
    RouteTableList,
    Subnet,
    TableRoutes,
)
from yunhan.api.views import resolve
from yunhan.controller.tables import (
    describe_table,
    ensure_default_table,
    names_of,
    subnet_holding,
    table_subnets,
    take_index,
)
from yunhan.errors import Conflict, ValidationError
from yunhan.model import new_id, parse_cidr, validate_name
from yunhan.model.routing import (
    MAX_POLICIES_PER_TABLE,
    MAX_ROUTES_PER_TABLE,
    blocks_of,
    forms_loop,
    inside_blocks,
    next_hop_text,
    parse_next_hop,
    validate_policy,
    validate_route_dst,
)
from yunhan.model.schemas import (
    AssociationCreate,
    LabelsPatch,
    PolicyRouteCreate,
    RouteCreate,
    RouteTableCreate,
)
from yunhan.store import Reader, Resource, Tx

router = APIRouter(prefix="/v1", tags=["routing"])

NameFilter = Annotated[str | Optional, Query(description="only the one with this name")]


def _vpc_of(r: Reader, table: Resource) -> Resource:
    vpc = r.get("vpc", table.spec["vpc"])
    assert vpc is not None, f"route table {table.id} outlived its VPC"
    return vpc


def _editable(table: Resource, vpc: Resource) -> None:
    if table.spec.get("default"):
        raise Conflict(
            f"route table {table.name} is the default table of VPC {vpc.name}: it holds the "
            "generated routes and cannot be edited; create a table (`yunhan route-table "
            "create`), associate subnets with it and add routes there",
            table=table.name,
        )


def _next_hop(
    r: Reader, project: str, vpc: Resource, table: Resource, text: str
) -> tuple[dict[str, Any], str | None]:
    """A next hop written by a person, resolved in the table's VPC: (its stored form
    `{"type", "id", "ip"}`, the id of the subnet it sits in, for the loop check)."""
    kind, ref = parse_next_hop(text)
    if kind == "blackhole" or ref is None:
        return {"type": "blackhole", "id": None, "ip": None}, None
    if kind == "vip":
        host_net = ipaddress.IPv4Network(f"{ref}/32")
        if not inside_blocks(host_net, blocks_of(vpc.spec["cidrs"])):
            raise ValidationError(
                f"next-hop VIP {ref} is not inside VPC {vpc.name} "
                f"({', '.join(vpc.spec['cidrs'])}) of route table {table.name}",
                field="next_hop",
                value=text,
            )
        sub = subnet_holding(r, vpc.id, ref)
        return {"type": "vip", "id": None, "ip": ref}, sub.id if sub is not None else None
    target = resolve(r, kind, project, ref)
    where = target.status.get("vpc") if kind == "instance" else target.spec.get("vpc")
    if where != vpc.id:
        other = r.get("vpc", str(where))
        raise ValidationError(
            f"next hop {kind} {target.name} is in VPC {other.name if other else where}, not in "
            f"VPC {vpc.name} of route table {table.name}: a next hop must be in the table's VPC",
            field="next_hop",
            value=text,
        )
    return {"type": kind, "id": target.id, "ip": None}, (
        target.spec.get("subnet") if kind == "instance" else None
    )


def _loop_error(what: str, nh_text: str, subnet: str, table: Resource) -> ValidationError:
    return ValidationError(
        f"{what} would loop: its next hop {nh_text} sits in subnet {subnet}, which route table "
        f"{table.name} routes too, so what the next hop forwards would come back to it; put "
        "the appliance in a subnet associated with another table",
        field="next_hop",
    )


# -- route tables ------------------------------------------------------------------------


@router.post(
    "/route-tables", status_code=201, response_model=RouteTable, responses=errors(404, 409, 422)
)
def create_route_table(
    body: RouteTableCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    name = validate_name("route_table", body.name)
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        vpc = resolve(tx, "vpc", c.project.id, body.vpc)
        _default, vpc = ensure_default_table(tx, vpc)
        index, vpc = take_index(tx, vpc)
        table = tx.create(
            "route_table",
            new_id("route_table"),
            c.project.id,
            name,
            {"vpc": vpc.id, "default": False},
            {"index": index},
            labels=body.labels,
        )
        return idem.keep(tx, c, 201, table.envelope())


@router.get("/route-tables", response_model=RouteTableList, responses=errors(404, 422))
def list_route_tables(
    request: Request,
    c: CallerDep,
    page: PageDep,
    vpc: Annotated[str | Optional, Query(description="only this VPC's (name or id)")] = None,
    name: NameFilter = None,
) -> Any:
    with state_of(request).store.read() as r:
        if vpc is not None:
            tables = r.find("route_table", "vpc", resolve(r, "vpc", c.project.id, vpc).id)
        else:
            tables = r.list("route_table", c.project.id)
        return paginate(
            tables, page, r.revision, Resource.envelope, lambda o: name is None or o.name == name
        )


@router.get("/route-tables/{ref}", response_model=RouteTable, responses=errors(404))
def get_route_table(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return resolve(r, "route_table", c.project.id, ref).envelope()


@router.patch(
    "/route-tables/{ref}",
    response_model=RouteTable,
    responses=errors(404, 412, 422),
    openapi_extra=patch_body(LabelsPatch),
)
def patch_route_table(
    ref: str, body: LabelsPatch, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    """JSON merge patch of a route table's labels (routes are added and deleted on their
    own endpoints)."""
    with state_of(request).store.transaction() as tx:
        table = resolve(tx, "route_table", c.project.id, ref)
        check_if_match(table, if_match)
        return tx.update(table, labels=patched_labels(table, body)).envelope()


@router.delete("/route-tables/{ref}", response_model=RouteTable, responses=errors(404, 409, 412))
def delete_route_table(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Delete a table and its routes and policy routes; refused for the default table
    (it goes with its VPC) and while subnets are associated with it."""
    with state_of(request).store.transaction() as tx:
        table = resolve(tx, "route_table", c.project.id, ref)
        check_if_match(table, if_match)
        vpc = _vpc_of(tx, table)
        if table.spec.get("default"):
            raise Conflict(
                f"route table {table.name} is the default table of VPC {vpc.name}: it is "
                "deleted with its VPC, never alone",
                table=table.name,
            )
        subs = [s.name for s in table_subnets(tx, table)]
        if subs:
            raise Conflict(
                f"route table {table.name} is still associated with subnet(s) "
                f"{', '.join(subs)}; associate them with another table first "
                "(`yunhan route-table associate TABLE --subnet S`)",
                subnets=subs,
            )
        for kind in ("route", "policy_route"):
            for o in tx.find(kind, "table", table.id):
                tx.delete(o)
        gone = tx.delete(table)
    return gone.envelope()


@router.post(
    "/route-tables/{ref}/associations", response_model=Subnet, responses=errors(404, 409, 422)
)
def associate(
    ref: str, body: AssociationCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """Associate a subnet with this table (a subnet has exactly one table: this replaces
    its previous one). Returns the subnet."""
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        table = resolve(tx, "route_table", c.project.id, ref)
        sub = resolve(tx, "subnet", c.project.id, body.subnet)
        vpc = _vpc_of(tx, table)
        if sub.spec["vpc"] != vpc.id:
            raise ValidationError(
                f"subnet {sub.name} is not in VPC {vpc.name} of route table {table.name}: a "
                "subnet takes a table of its own VPC",
                subnet=sub.name,
            )
        _refuse_looping_association(tx, table, vpc, sub)
        sub = tx.update(sub, spec={**sub.spec, "route_table": table.id})
        return idem.keep(tx, c, 200, sub.envelope())


def _refuse_looping_association(tx: Tx, table: Resource, vpc: Resource, sub: Resource) -> None:
    blocks = blocks_of(vpc.spec["cidrs"])
    for kind, policy in (("route", False), ("policy_route", True)):
        for o in tx.find(kind, "table", table.id):
            nh = o.spec.get("next_hop")
            if not nh or _next_hop_subnet(tx, vpc.id, nh) != sub.id:
                continue
            dst = parse_cidr(o.spec["dst"]) if o.spec.get("dst") else None
            if forms_loop(dst, blocks, sub.id, [sub.id], policy=policy):
                what = "route" if kind == "route" else "policy route"
                raise Conflict(
                    f"associating subnet {sub.name} with route table {table.name} would loop: "
                    f"{what} {o.id} ({o.spec.get('dst') or 'any'}) of the table sends traffic "
                    f"to {next_hop_text(nh, names_of(tx, [nh]))}, which sits in subnet "
                    f"{sub.name}; delete that {what} first or keep the subnet on another table",
                    route=o.id,
                )


def _next_hop_subnet(r: Reader, vpc_id: str, nh: dict[str, Any]) -> str | None:
    if nh.get("type") == "instance":
        inst = r.get("instance", str(nh.get("id")))
        return inst.spec.get("subnet") if inst is not None else None
    if nh.get("type") == "vip":
        sub = subnet_holding(r, vpc_id, str(nh.get("ip")))
        return sub.id if sub is not None else None
    return None


# -- the whole table ---------------------------------------------------------------------


@router.get("/route-tables/{ref}/routes", response_model=TableRoutes, responses=errors(404))
def table_routes(ref: str, request: Request, c: CallerDep) -> Any:
    """Every route of a table as it stands: direct (the VPC's blocks), host (/32 per
    placed instance), default (0.0.0.0/0 to the NAT gateway of each associated subnet it
    serves) and custom ones, each with its state: among custom routes of one prefix the
    lowest priority whose next hop is up is active, the others up are standby, those down
    unreachable. And its policy routes, by priority."""
    st = state_of(request)
    with st.store.read() as r:
        table = resolve(r, "route_table", c.project.id, ref)
        return describe_table(r, st.admin_project_id, table)


# -- custom routes -----------------------------------------------------------------------


@router.post(
    "/route-tables/{ref}/routes",
    status_code=201,
    response_model=Route,
    responses=errors(404, 409, 422),
)
def add_route(
    ref: str, body: RouteCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """A custom route: destination CIDR -> next hop, with a priority (lower wins among
    routes of one prefix whose next hop is up). Its name is its id."""
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        table = resolve(tx, "route_table", c.project.id, ref)
        vpc = _vpc_of(tx, table)
        _editable(table, vpc)
        blocks = blocks_of(vpc.spec["cidrs"])
        dst = validate_route_dst(body.dst, vpc.name, blocks)
        nh, nh_subnet = _next_hop(tx, c.project.id, vpc, table, body.next_hop)
        if nh_subnet is not None:
            subs = {s.id: s.name for s in table_subnets(tx, table)}
            if forms_loop(dst, blocks, nh_subnet, subs):
                raise _loop_error(f"a route to {dst}", body.next_hop, subs[nh_subnet], table)
        slot = f"{table.id}|{dst}|{body.priority}"
        taken = tx.find("route", "slot", slot)
        if taken:
            raise Conflict(
                f"route table {table.name} already has a route to {dst} with priority "
                f"{body.priority} ({taken[0].id}); give another priority, or delete that route",
                route=taken[0].id,
            )
        if tx.count_of("route", "table", table.id) >= MAX_ROUTES_PER_TABLE:
            raise Conflict(
                f"route table {table.name} holds {MAX_ROUTES_PER_TABLE} custom routes, its "
                "most; delete some or aggregate prefixes"
            )
        rid = new_id("route")
        spec = {"vpc": vpc.id, "table": table.id, "dst": str(dst), "priority": body.priority,
                "next_hop": nh}  # fmt: skip
        route = tx.create("route", rid, c.project.id, rid, spec, {})
        return idem.keep(tx, c, 201, route.envelope())


@router.delete("/routes/{ref}", response_model=Route, responses=errors(404, 412))
def delete_route(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    with state_of(request).store.transaction() as tx:
        route = resolve(tx, "route", c.project.id, ref)
        check_if_match(route, if_match)
        gone = tx.delete(route)
    return gone.envelope()


# -- policy routes -----------------------------------------------------------------------


@router.post(
    "/route-tables/{ref}/policy-routes",
    status_code=201,
    response_model=PolicyRoute,
    responses=errors(404, 409, 422),
)
def add_policy_route(
    ref: str, body: PolicyRouteCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """A policy route of the table, evaluated before destination routing by priority
    (lower first, unique in the table): match source, destination, protocol and
    destination port(s); drop, allow (go on to destination routing) or reroute to a next
    hop. Its name is its id."""
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        table = resolve(tx, "route_table", c.project.id, ref)
        vpc = _vpc_of(tx, table)
        _editable(table, vpc)
        src = parse_cidr(body.src, "source") if body.src is not None else None
        dst = parse_cidr(body.dst, "destination") if body.dst is not None else None
        rng = validate_policy(body.proto, body.port, body.action, body.next_hop is not None)
        nh = None
        if body.next_hop is not None:
            nh, nh_subnet = _next_hop(tx, c.project.id, vpc, table, body.next_hop)
            subs = {s.id: s.name for s in table_subnets(tx, table)}
            if nh_subnet is not None and forms_loop(
                dst, blocks_of(vpc.spec["cidrs"]), nh_subnet, subs, policy=True
            ):
                raise _loop_error(
                    f"policy route {body.priority}", body.next_hop, subs[nh_subnet], table
                )
        taken = tx.find("policy_route", "slot", f"{table.id}|{body.priority}")
        if taken:
            raise Conflict(
                f"priority {body.priority} of route table {table.name} is taken by policy "
                f"route {taken[0].id}; give another priority, or delete that policy route",
                policy_route=taken[0].id,
            )
        if tx.count_of("policy_route", "table", table.id) >= MAX_POLICIES_PER_TABLE:
            raise Conflict(
                f"route table {table.name} holds {MAX_POLICIES_PER_TABLE} policy routes, its most"
            )
        index, vpc = take_index(tx, vpc)
        pid = new_id("policy_route")
        spec = {
            "vpc": vpc.id,
            "table": table.id,
            "priority": body.priority,
            "src": str(src) if src is not None else None,
            "dst": str(dst) if dst is not None else None,
            "proto": body.proto,
            "port": list(rng) if rng is not None else None,
            "action": body.action,
            "next_hop": nh,
        }
        policy = tx.create("policy_route", pid, c.project.id, pid, spec, {"index": index})
        return idem.keep(tx, c, 201, policy.envelope())


@router.delete("/policy-routes/{ref}", response_model=PolicyRoute, responses=errors(404, 412))
def delete_policy_route(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    with state_of(request).store.transaction() as tx:
        policy = resolve(tx, "policy_route", c.project.id, ref)
        check_if_match(policy, if_match)
        gone = tx.delete(policy)
    return gone.envelope()
