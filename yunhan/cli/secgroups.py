"""`yunhan sg …` and `yunhan instance set-sg`: security groups over the API
(docs/secgroups.md).

The forms are the issue's: `sg create NAME --vpc V`, `sg rule add SG --direction ingress
--proto tcp --port 22 --peer CIDR|sg:NAME --action allow|deny [--priority N]`, `sg rule
delete SG RULE`, `sg list|show|delete`, `instance set-sg NAME SG…`. `sg show` prints the
group, then its rules in evaluation order.
"""

from __future__ import annotations

from typing import Any

from yunhan.cli import views
from yunhan.cli.client import Client
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo
from yunhan.cli.resources import (
    LABEL,
    LISTED,
    SHOWN,
    WRITE,
    fmt,
    labels,
    ref,
    report_deleted,
    show,
    wait_applied,
)

PATH = "/v1/security-groups"


def _written(ctx: Ctx, c: Client, res: dict[str, Any], kind: str = "security_group") -> None:
    if ctx["wait"]:
        wait_applied(c, res.get("revision"), ctx["timeout"])
    if kind == "security_group":
        _print_group(ctx, c, res)
    else:
        show(kind, c, res, fmt(ctx))


def _print_group(ctx: Ctx, c: Client, res: dict[str, Any]) -> None:
    names = views.Names(c)
    row = views.security_group_row(res, names)
    rules = [views.sg_rule_row(r, names) for r in (res.get("spec") or {}).get("rules", [])]
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("security_group", {**row, "rules": rules}, f)
        return
    views.print_one("security_group", row, f)
    echo()
    views.print_list("sg_rule", rules, f)


def sg_create(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"name": ctx["name"], "vpc": ctx["vpc"], "labels": labels(ctx)}
    _written(ctx, c, c.post(PATH, body))


def sg_list(ctx: Ctx) -> None:
    c = ctx.client()
    params: dict[str, Any] = {"vpc": ctx["vpc"]}
    if ctx["selector"]:
        params["label"] = list(ctx["selector"])
    names = views.Names(c)
    rows = [views.security_group_row(i, names) for i in c.items(PATH, **params)]
    views.print_list("security_group", rows, fmt(ctx))


def sg_show(ctx: Ctx) -> None:
    c = ctx.client()
    _print_group(ctx, c, c.get(f"{PATH}/{ctx['ref']}"))


def sg_delete(ctx: Ctx) -> None:
    c = ctx.client()
    report_deleted(ctx, c, "security_group", c.delete(f"{PATH}/{ctx['ref']}"), "security group")


def rule_add(ctx: Ctx) -> None:
    c = ctx.client()
    body: dict[str, Any] = {
        "direction": ctx["direction"],
        "proto": ctx["proto"],
        "peer": ctx["peer"],
        "action": ctx["action"],
        "priority": ctx["priority"],
    }
    if ctx["port"] is not None:
        body["port"] = ctx["port"]
    _written(ctx, c, c.post(f"{PATH}/{ctx['ref']}/rules", body))


def rule_delete(ctx: Ctx) -> None:
    c = ctx.client()
    _written(ctx, c, c.delete(f"{PATH}/{ctx['ref']}/rules/{ctx['rule']}") or {})


def set_sg(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"security_groups": list(ctx["groups"])}
    res = c.put(f"/v1/instances/{ctx['ref']}/security-groups", body)
    _written(ctx, c, res, "instance")


SG_REF = ref("security_group")
RULE_OPTS = (
    Opt(("--direction",), "direction", "ingress or egress", required=True,
        choices=("ingress", "egress")),
    Opt(("--proto",), "proto", "tcp, udp, icmp or any", default="any",
        choices=("tcp", "udp", "icmp", "any")),
    Opt(("--port",), "port", "destination port N or range N-M (tcp, udp)"),
    Opt(("--peer",), "peer", "the other side", required=True, metavar="CIDR|sg:NAME"),
    Opt(("--action",), "action", "allow or deny", default="allow", choices=("allow", "deny")),
    Opt(("--priority",), "priority", "lower first", int, 100),
)  # fmt: skip
SG = Group(
    "sg",
    "Security groups: stateful firewalls of instances, one default group per VPC",
    (
        Cmd(
            "create",
            "Create a security group (no rules: it admits nothing until rules allow), e.g. "
            "`yunhan sg create web --vpc prod`.",
            sg_create,
            (
                Arg("name", "its name"),
                Opt(("--vpc",), "vpc", "the VPC (name or id)", required=True, complete="vpc"),
                LABEL,
                *WRITE,
            ),
        ),
        Cmd(
            "list",
            "List the project's security groups.",
            sg_list,
            (Opt(("--vpc",), "vpc", "only this VPC's", complete="vpc"), *LISTED),
        ),
        Cmd("show", "Show a group and its rules in evaluation order.", sg_show, (SG_REF, *SHOWN)),
        Cmd(
            "delete",
            "Delete a group (refused while instances use it, while another group's rule names "
            "it, and for a VPC's default group).",
            sg_delete,
            (SG_REF, *WRITE),
        ),
        Group(
            "rule",
            "Rules of a security group",
            (
                Cmd(
                    "add",
                    "Add a rule, e.g. `yunhan sg rule add web --direction ingress --proto tcp "
                    "--port 22 --peer 10.0.0.0/8 --action allow`. Rules of all an instance's "
                    "groups are evaluated together: lower priority first, deny before allow "
                    "at one priority; nothing matched is denied.",
                    rule_add,
                    (
                        SG_REF,
                        Opt(
                            ("--direction",),
                            "direction",
                            "ingress or egress",
                            required=True,
                            choices=("ingress", "egress"),
                        ),
                        Opt(
                            ("--proto",),
                            "proto",
                            "tcp, udp, icmp or any",
                            default="any",
                            choices=("tcp", "udp", "icmp", "any"),
                        ),
                        Opt(("--port",), "port", "destination port N or range N-M (tcp, udp)"),
                        Opt(
                            ("--peer",),
                            "peer",
                            "the other side",
                            required=True,
                            metavar="CIDR|sg:NAME",
                        ),
                        Opt(
                            ("--action",),
                            "action",
                            "allow or deny",
                            default="allow",
                            choices=("allow", "deny"),
                        ),
                        Opt(("--priority",), "priority", "lower first", int, 100),
                        *WRITE,
                    ),
                ),
                Cmd(
                    "delete",
                    "Delete a rule by its id (`yunhan sg show SG`); a flow it allowed and "
                    "nothing else allows is cut.",
                    rule_delete,
                    (SG_REF, Arg("rule", "the rule's id"), *WRITE),
                ),
            ),
        ),
    ),
)

SET_SG = Cmd(
    "set-sg",
    "Replace an instance's security groups, live, e.g. `yunhan instance set-sg web web-sg "
    "default`.",
    set_sg,
    (
        ref("instance"),
        Arg("groups", "its groups (names or ids; `default`: its VPC's)", "SG", many=True),
        *WRITE,
    ),
)


# -- network ACLs ------------------------------------------------------------------------

ACL_PATH = "/v1/acls"


def _print_acl(ctx: Ctx, c: Client, res: dict[str, Any]) -> None:
    names = views.Names(c)
    row = views.acl_row(res, names)
    rules = [views.acl_rule_row(r, names) for r in (res.get("spec") or {}).get("rules", [])]
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("network_acl", {**row, "rules": rules}, f)
        return
    views.print_one("network_acl", row, f)
    echo()
    views.print_list("acl_rule", rules, f)


def _acl_written(ctx: Ctx, c: Client, res: dict[str, Any]) -> None:
    if ctx["wait"]:
        wait_applied(c, res.get("revision"), ctx["timeout"])
    _print_acl(ctx, c, res)


def acl_create(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"name": ctx["name"], "vpc": ctx["vpc"], "labels": labels(ctx)}
    _acl_written(ctx, c, c.post(ACL_PATH, body))


def acl_list(ctx: Ctx) -> None:
    c = ctx.client()
    names = views.Names(c)
    rows = [views.acl_row(i, names) for i in c.items(ACL_PATH, vpc=ctx["vpc"])]
    views.print_list("network_acl", rows, fmt(ctx))


def acl_rule_add(ctx: Ctx) -> None:
    c = ctx.client()
    body: dict[str, Any] = {
        "number": ctx["number"],
        "direction": ctx["direction"],
        "proto": ctx["proto"],
        "cidr": ctx["cidr"],
        "action": ctx["action"],
    }
    if ctx["port"] is not None:
        body["port"] = ctx["port"]
    _acl_written(ctx, c, c.post(f"{ACL_PATH}/{ctx['ref']}/rules", body))


def acl_rule_delete(ctx: Ctx) -> None:
    c = ctx.client()
    path = f"{ACL_PATH}/{ctx['ref']}/rules/{ctx['direction']}/{ctx['number']}"
    _acl_written(ctx, c, c.delete(path) or {})


def acl_associate(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.post(f"{ACL_PATH}/{ctx['ref']}/associations", {"subnet": ctx["subnet"]})
    if ctx["wait"]:
        wait_applied(c, res.get("revision"), ctx["timeout"])
    show("subnet", c, res, fmt(ctx))


def acl_delete(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.delete(f"{ACL_PATH}/{ctx['ref']}")
    if ctx["wait"]:
        wait_applied(c, (res or {}).get("revision"), ctx["timeout"])
    if res is not None:
        echo(f"deleted network ACL {res.get('name')} ({res.get('id')})")


ACL_REF = ref("network_acl")
DIRECTION = Opt(("--direction",), "direction", "ingress or egress", required=True,
                choices=("ingress", "egress"))  # fmt: skip
ACL_RULE_OPTS = (
    Opt(("--number",), "number", "1..32766, lower first", int, required=True),
    DIRECTION,
    Opt(("--proto",), "proto", "tcp, udp, icmp or any", default="any",
        choices=("tcp", "udp", "icmp", "any")),
    Opt(("--port",), "port", "destination port N or range N-M (tcp, udp)"),
    Opt(("--cidr",), "cidr", "source (ingress) or destination (egress)", required=True),
    Opt(("--action",), "action", "allow or deny", required=True, choices=("allow", "deny")),
)  # fmt: skip
ACL = Group(
    "acl",
    "Network ACLs: stateless, numbered rules per subnet, before security groups",
    (
        Cmd(
            "create",
            "Create a network ACL (no rules: an associated subnet passes nothing from or to "
            "outside it until rules allow), e.g. `yunhan acl create edge --vpc prod`.",
            acl_create,
            (
                Arg("name", "its name"),
                Opt(("--vpc",), "vpc", "the VPC (name or id)", required=True, complete="vpc"),
                LABEL,
                *WRITE,
            ),
        ),
        Cmd(
            "list",
            "List the project's network ACLs.",
            acl_list,
            (Opt(("--vpc",), "vpc", "only this VPC's", complete="vpc"), *LISTED),
        ),
        Cmd(
            "show",
            "Show an ACL and its rules by direction and number.",
            lambda ctx: _print_acl(ctx, ctx.client(), ctx.client().get(f"{ACL_PATH}/{ctx['ref']}")),
            (ACL_REF, *SHOWN),
        ),
        Cmd(
            "associate",
            "Associate a subnet with an ACL (it leaves its previous one), e.g. "
            "`yunhan acl associate edge --subnet web`.",
            acl_associate,
            (
                ACL_REF,
                Opt(("--subnet",), "subnet", "the subnet", required=True, complete="subnet"),
                *WRITE,
            ),
        ),
        Cmd(
            "delete",
            "Delete an ACL (refused while subnets are associated with it).",
            acl_delete,
            (ACL_REF, *WRITE),
        ),
        Group(
            "rule",
            "Rules of a network ACL",
            (
                Cmd(
                    "add",
                    "Add a numbered rule, e.g. `yunhan acl rule add edge --number 100 "
                    "--direction ingress --proto tcp --port 22 --cidr 0.0.0.0/0 --action deny`. "
                    "Stateless: replies need a rule of the other direction.",
                    acl_rule_add,
                    (
                        ACL_REF,
                        *ACL_RULE_OPTS,
                        *WRITE,
                    ),
                ),
                Cmd(
                    "delete",
                    "Delete a rule by direction and number.",
                    acl_rule_delete,
                    (ACL_REF, DIRECTION, Arg("number", "its number", kind=int), *WRITE),
                ),
            ),
        ),
    ),
)

COMMANDS: tuple[Cmd | Group, ...] = (SG, ACL)
