"""`yunhan route-table|route|policy-route|natgw|eip`: distributed routing over the API
(docs/routing.md).

The forms are the issue's: `route add TABLE --dst CIDR --next-hop instance:NAME|vip:IP|
natgw:NAME|blackhole [--priority N]`, `natgw forward add NATGW --proto tcp --port 8080 --to
INSTANCE:80`, `eip bind EIP INSTANCE`… Every list and show prints a table, or
`-o wide|json|yaml`; `route-table show` prints every route of the table (direct, host,
default, custom) with its type, priority, next hop and state, then its policy routes.
"""

from __future__ import annotations

from typing import Any

from yunhan.cli import views
from yunhan.cli.client import Client
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo
from yunhan.cli.resources import LABEL, LISTED, SHOWN, WRITE, fmt, labels, ref, show, wait_applied

PATHS = {"route_table": "route-tables", "natgw": "natgws", "eip": "eips"}
_WHAT = {"route_table": "route table", "route": "route", "policy_route": "policy route",
         "natgw": "NAT gateway", "eip": "EIP"}  # fmt: skip


def _written(ctx: Ctx, kind: str, c: Client, res: dict[str, Any]) -> None:
    if ctx["wait"]:
        wait_applied(c, res.get("revision"), ctx["timeout"])
    show(kind, c, res, fmt(ctx))


def _gone(ctx: Ctx, kind: str, c: Client, res: dict[str, Any] | None) -> None:
    if ctx["wait"]:
        wait_applied(c, (res or {}).get("revision"), ctx["timeout"])
    if res is None:
        return
    f = fmt(ctx)
    if f in ("json", "yaml"):
        show(kind, c, res, f)
    else:
        label = "" if res.get("name") == res.get("id") else f"{res.get('name')} "
        echo(f"deleted {_WHAT[kind]} {label}({res.get('id')})")


def _list(kind: str, ctx: Ctx, **params: Any) -> None:
    c = ctx.client()
    if ctx["selector"]:
        params["label"] = list(ctx["selector"])
    items = c.items(f"/v1/{PATHS[kind]}", **params)
    names = views.Names(c)
    views.print_list(kind, [views.ROWS[kind](i, names) for i in items], fmt(ctx))


def _show(kind: str) -> Cmd:
    def run(ctx: Ctx) -> None:
        c = ctx.client()
        show(kind, c, c.get(f"/v1/{PATHS[kind]}/{ctx['ref']}"), fmt(ctx))

    return Cmd("show", f"Show one {_WHAT[kind]}.", run, (ref(kind), *SHOWN))


def _delete(kind: str, path: str, help_: str, arg: Arg) -> Cmd:
    def run(ctx: Ctx) -> None:
        c = ctx.client()
        _gone(ctx, kind, c, c.delete(f"/v1/{path}/{ctx['ref']}"))

    return Cmd("delete", help_, run, (arg, *WRITE))


# -- route tables -------------------------------------------------------------------------


def table_create(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"name": ctx["name"], "vpc": ctx["vpc"], "labels": labels(ctx)}
    _written(ctx, "route_table", c, c.post("/v1/route-tables", body))


def table_show(ctx: Ctx) -> None:
    c = ctx.client()
    table = c.get(f"/v1/route-tables/{ctx['ref']}")
    listing = c.get(f"/v1/route-tables/{table['id']}/routes")
    names = views.Names(c)
    row = {**views.route_table_row(table, names), "subnets": listing["subnets"]}
    routes = [views.table_entry_row(e, names) for e in listing["routes"]]
    policies = [views.policy_entry_row(p, names) for p in listing["policies"]]
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("route_table", {**row, "routes": routes, "policies": policies}, f)
        return
    views.print_one("route_table", row, f)
    echo()
    views.print_list("table_entry", routes, f)
    if policies:
        echo()
        views.print_list("policy_entry", policies, f)


def table_associate(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.post(f"/v1/route-tables/{ctx['ref']}/associations", {"subnet": ctx["subnet"]})
    _written(ctx, "subnet", c, res)


ROUTE_TABLE = Group(
    "route-table",
    "Route tables: a default one per VPC, custom ones associated with subnets",
    (
        Cmd(
            "create",
            "Create a route table, e.g. `yunhan route-table create edge --vpc prod`.",
            table_create,
            (
                Arg("name", "its name"),
                Opt(("--vpc",), "vpc", "the VPC (name or id)", required=True, complete="vpc"),
                LABEL,
                *WRITE,
            ),
        ),
        Cmd(
            "list",
            "List the project's route tables.",
            lambda ctx: _list("route_table", ctx, vpc=ctx["vpc"]),
            (Opt(("--vpc",), "vpc", "only this VPC's", complete="vpc"), *LISTED),
        ),
        Cmd(
            "show",
            "Show a route table and every route in it: type (direct, host, default, custom), "
            "destination, priority, next hop and state (active, standby, unreachable); then "
            "its policy routes.",
            table_show,
            (ref("route_table"), *SHOWN),
        ),
        Cmd(
            "associate",
            "Associate a subnet with a table (it leaves its previous one), e.g. "
            "`yunhan route-table associate edge --subnet web`.",
            table_associate,
            (
                ref("route_table"),
                Opt(("--subnet",), "subnet", "the subnet", required=True, complete="subnet"),
                *WRITE,
            ),
        ),
        _delete(
            "route_table",
            "route-tables",
            "Delete a route table and its routes (refused while subnets are associated "
            "with it, and for a VPC's default table).",
            ref("route_table"),
        ),
    ),
)

# -- routes and policy routes ------------------------------------------------------------


def route_add(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"dst": ctx["dst"], "next_hop": ctx["next_hop"], "priority": ctx["priority"]}
    _written(ctx, "route", c, c.post(f"/v1/route-tables/{ctx['ref']}/routes", body))


NEXT_HOP = "instance:NAME|vip:IP|natgw:NAME|blackhole"
ROUTE = Group(
    "route",
    "Custom routes of a route table",
    (
        Cmd(
            "add",
            "Add a custom route, e.g. `yunhan route add edge --dst 10.0.9.0/24 --next-hop "
            "instance:fw`. For one prefix the lowest priority whose next hop is up wins.",
            route_add,
            (
                ref("route_table"),
                Opt(("--dst",), "dst", "destination CIDR", required=True),
                Opt(("--next-hop",), "next_hop", "where it goes", required=True, metavar=NEXT_HOP),
                Opt(("--priority",), "priority", "lower wins among equal prefixes", int, 100),
                *WRITE,
            ),
        ),
        _delete("route", "routes", "Delete a custom route (by its id).", Arg("ref", "its id")),
    ),
)


def policy_add(ctx: Ctx) -> None:
    c = ctx.client()
    body: dict[str, Any] = {"priority": ctx["priority"], "proto": ctx["proto"],
                            "action": ctx["action"]}  # fmt: skip
    for key in ("src", "dst", "port", "next_hop"):
        if ctx[key] is not None:
            body[key] = ctx[key]
    _written(ctx, "policy_route", c, c.post(f"/v1/route-tables/{ctx['ref']}/policy-routes", body))


POLICY_ROUTE = Group(
    "policy-route",
    "Policy routes: matched before destination routing, by priority",
    (
        Cmd(
            "add",
            "Add a policy route, e.g. `yunhan policy-route add edge --priority 10 --src "
            "10.0.1.0/24 --proto tcp --port 22 --action drop`.",
            policy_add,
            (
                ref("route_table"),
                Opt(
                    ("--priority",),
                    "priority",
                    "1..9999, unique in the table; lower first",
                    int,
                    required=True,
                ),
                Opt(("--src",), "src", "source CIDR (default any)"),
                Opt(("--dst",), "dst", "destination CIDR (default any)"),
                Opt(
                    ("--proto",),
                    "proto",
                    "protocol",
                    default="any",
                    choices=("tcp", "udp", "icmp", "any"),
                ),
                Opt(("--port",), "port", "destination port or range (tcp, udp)", metavar="N[-M]"),
                Opt(
                    ("--action",),
                    "action",
                    "what to do",
                    required=True,
                    choices=("drop", "allow", "reroute"),
                ),
                Opt(("--next-hop",), "next_hop", "reroute only", metavar=NEXT_HOP),
                *WRITE,
            ),
        ),
        _delete(
            "policy_route",
            "policy-routes",
            "Delete a policy route (by its id).",
            Arg("ref", "its id"),
        ),
    ),
)

# -- NAT gateways ------------------------------------------------------------------------


def natgw_create(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"name": ctx["name"], "vpc": ctx["vpc"], "subnets": ctx["subnet"],
            "labels": labels(ctx)}  # fmt: skip
    _written(ctx, "natgw", c, c.post("/v1/natgws", body))


def forward_add(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"proto": ctx["proto"], "port": ctx["port"], "to": ctx["to"]}
    _written(ctx, "natgw", c, c.post(f"/v1/natgws/{ctx['ref']}/forwards", body))


def forward_delete(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.delete(f"/v1/natgws/{ctx['ref']}/forwards/{ctx['proto']}/{ctx['port']}")
    _written(ctx, "natgw", c, res)


PROTO = Opt(("--proto",), "proto", "protocol", required=True, choices=("tcp", "udp"))
PORT = Opt(("--port",), "port", "the public port", int, required=True)
NATGW = Group(
    "natgw",
    "NAT gateways: internet access (SNAT) and port forwards (DNAT) for chosen subnets",
    (
        Cmd(
            "create",
            "Create a NAT gateway, e.g. `yunhan natgw create gw --vpc prod --subnet web`. It "
            "takes a public address; the controller runs it on a healthy host.",
            natgw_create,
            (
                Arg("name", "its name"),
                Opt(("--vpc",), "vpc", "the VPC (name or id)", required=True, complete="vpc"),
                Opt(
                    ("--subnet",),
                    "subnet",
                    "a subnet it serves (repeatable)",
                    required=True,
                    many=True,
                    complete="subnet",
                ),
                LABEL,
                *WRITE,
            ),
        ),
        Cmd(
            "list",
            "List the project's NAT gateways.",
            lambda ctx: _list("natgw", ctx, vpc=ctx["vpc"]),
            (Opt(("--vpc",), "vpc", "only this VPC's", complete="vpc"), *LISTED),
        ),
        _show("natgw"),
        _delete(
            "natgw",
            "natgws",
            "Delete a NAT gateway (refused while EIPs are bound through it).",
            ref("natgw"),
        ),
        Group(
            "forward",
            "Port forwards (DNAT) of a NAT gateway",
            (
                Cmd(
                    "add",
                    "Forward a public port to an instance, e.g. `yunhan natgw forward add gw "
                    "--proto tcp --port 8080 --to web-1:80`.",
                    forward_add,
                    (
                        ref("natgw"),
                        PROTO,
                        PORT,
                        Opt(
                            ("--to",),
                            "to",
                            "the instance and its port",
                            required=True,
                            metavar="INSTANCE:PORT",
                        ),
                        *WRITE,
                    ),
                ),
                Cmd(
                    "delete",
                    "Remove a port forward.",
                    forward_delete,
                    (ref("natgw"), PROTO, PORT, *WRITE),
                ),
            ),
        ),
    ),
)

# -- elastic IPs -------------------------------------------------------------------------


def eip_allocate(ctx: Ctx) -> None:
    c = ctx.client()
    body: dict[str, Any] = {"labels": labels(ctx)}
    if ctx["name"] is not None:
        body["name"] = ctx["name"]
    _written(ctx, "eip", c, c.post("/v1/eips", body))


def eip_show(ctx: Ctx) -> None:
    c = ctx.client()
    show("eip", c, c.get(f"/v1/eips/{ctx['ref']}"), fmt(ctx))


def eip_bind(ctx: Ctx) -> None:
    c = ctx.client()
    _written(ctx, "eip", c, c.post(f"/v1/eips/{ctx['ref']}/bind", {"instance": ctx["instance"]}))


def eip_unbind(ctx: Ctx) -> None:
    c = ctx.client()
    _written(ctx, "eip", c, c.post(f"/v1/eips/{ctx['ref']}/unbind"))


EIP_REF = Arg("ref", "its name, id or address", metavar="EIP", complete="eip")
EIP = Group(
    "eip",
    "Elastic IPs: public addresses bound 1:1 to instances through their NAT gateway",
    (
        Cmd(
            "allocate",
            "Allocate a public address from the region's pool.",
            eip_allocate,
            (Opt(("--name",), "name", "its name (default: its id)"), LABEL, *WRITE),
        ),
        Cmd("list", "List the project's EIPs.", lambda ctx: _list("eip", ctx), LISTED),
        Cmd("show", "Show one EIP.", eip_show, (EIP_REF, *SHOWN)),
        Cmd(
            "bind",
            "Bind an EIP to an instance, e.g. `yunhan eip bind 198.19.128.5 web-1` (the "
            "instance's subnet must be served by a NAT gateway).",
            eip_bind,
            (EIP_REF, Arg("instance", "the instance", complete="instance"), *WRITE),
        ),
        Cmd("unbind", "Unbind an EIP from its instance.", eip_unbind, (EIP_REF, *WRITE)),
        _delete("eip", "eips", "Release an EIP (refused while it is bound).", EIP_REF)._replace(
            name="release"
        ),
    ),
)

COMMANDS: tuple[Cmd | Group, ...] = (ROUTE_TABLE, ROUTE, POLICY_ROUTE, NATGW, EIP)
