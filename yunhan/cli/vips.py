"""`yunhan vip …`: floating addresses over the API (docs/vips.md).

The forms are the issue's: `vip create NAME --subnet S [--ip IP] [--allow INSTANCE …]`,
`vip allow|disallow VIP INSTANCE`, `vip move VIP INSTANCE [--wait]`, `vip list|show|delete`.
`show -o json` gives `holder`, `holder_zone`, `holder_host`, `epoch` and `history` (the last
20 changes of holder: `at`, `from`, `to`, `cause`, `epoch`).
"""

from __future__ import annotations

from typing import Any

from yunhan.cli import views
from yunhan.cli.client import Client
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo
from yunhan.cli.resources import LABEL, LISTED, SHOWN, WRITE, fmt, labels, ref, wait_applied

PATH = "/v1/vips"


def _print_vip(ctx: Ctx, c: Client, res: dict[str, Any]) -> None:
    row = views.vip_row(res, views.Names(c))
    f = fmt(ctx)
    if f not in ("json", "yaml"):
        row["history"] = [
            f"{h['at']} {h['from'] or '-'} -> {h['to'] or '-'} ({h['cause']}, epoch {h['epoch']})"
            for h in row["history"]
        ]
    views.print_one("vip", row, f)


def _written(ctx: Ctx, c: Client, res: dict[str, Any]) -> None:
    if ctx["wait"]:
        wait_applied(c, res.get("revision"), ctx["timeout"])
    _print_vip(ctx, c, res)


def vip_create(ctx: Ctx) -> None:
    c = ctx.client()
    body: dict[str, Any] = {
        "name": ctx["name"],
        "subnet": ctx["subnet"],
        "allowed": list(ctx["allow"] or ()),
        "labels": labels(ctx),
    }
    if ctx["ip"] is not None:
        body["ip"] = ctx["ip"]
    _written(ctx, c, c.post(PATH, body))


def vip_list(ctx: Ctx) -> None:
    c = ctx.client()
    params: dict[str, Any] = {"vpc": ctx["vpc"], "subnet": ctx["subnet"]}
    if ctx["selector"]:
        params["label"] = list(ctx["selector"])
    names = views.Names(c)
    rows = [views.vip_row(i, names) for i in c.items(PATH, **params)]
    views.print_list("vip", rows, fmt(ctx))


def vip_show(ctx: Ctx) -> None:
    c = ctx.client()
    _print_vip(ctx, c, c.get(f"{PATH}/{ctx['ref']}"))


def vip_delete(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.delete(f"{PATH}/{ctx['ref']}")
    if ctx["wait"]:
        wait_applied(c, (res or {}).get("revision"), ctx["timeout"])
    if res is not None:
        if fmt(ctx) in ("json", "yaml"):
            _print_vip(ctx, c, res)
        else:
            echo(f"deleted VIP {res.get('name')} ({res.get('spec', {}).get('ip')})")


def _action(action: str) -> Any:
    def run(ctx: Ctx) -> None:
        c = ctx.client()
        _written(ctx, c, c.post(f"{PATH}/{ctx['ref']}/{action}", {"instance": ctx["instance"]}))

    return run


VIP_REF = ref("vip")
INSTANCE = Arg("instance", "the instance (name or id)", metavar="INSTANCE", complete="instance")
COMMANDS = (
    Group(
        "vip",
        "VIPs: subnet addresses that float between the instances allowed to hold them, in "
        "any zone (keepalived and gratuitous ARP, or `vip move`)",
        (
            Cmd(
                "create",
                "Allocate a VIP in a subnet (at --ip, else the lowest free address), e.g. "
                "`yunhan vip create db-vip --subnet db --allow db1 --allow db2`. Nobody holds "
                "it until an allowed instance announces it or it is moved.",
                vip_create,
                (
                    Arg("name", "its name"),
                    Opt(
                        ("--subnet",),
                        "subnet",
                        "the subnet (name or id)",
                        required=True,
                        complete="subnet",
                    ),
                    Opt(("--ip",), "ip", "the address (inside the subnet, free)"),
                    Opt(
                        ("--allow",),
                        "allow",
                        "an instance allowed to hold it (repeat for more)",
                        many=True,
                        metavar="INSTANCE",
                        complete="instance",
                    ),
                    LABEL,
                    *WRITE,
                ),
            ),
            Cmd(
                "list",
                "List the project's VIPs with their holders.",
                vip_list,
                (
                    Opt(("--vpc",), "vpc", "only this VPC's", complete="vpc"),
                    Opt(("--subnet",), "subnet", "only this subnet's", complete="subnet"),
                    *LISTED,
                ),
            ),
            Cmd(
                "show",
                "Show a VIP: holder, its zone and host, epoch and the last 20 failovers.",
                vip_show,
                (VIP_REF, *SHOWN),
            ),
            Cmd("delete", "Release a VIP's address.", vip_delete, (VIP_REF, *WRITE)),
            Cmd(
                "allow",
                "Allow an instance of the VIP's VPC (any zone, any subnet) to hold it.",
                _action("allow"),
                (VIP_REF, INSTANCE, *WRITE),
            ),
            Cmd(
                "disallow",
                "Take an instance off the allowed list; if it holds the VIP, nobody does "
                "until another allowed instance claims it or it is moved.",
                _action("disallow"),
                (VIP_REF, INSTANCE, *WRITE),
            ),
            Cmd(
                "move",
                "Give the VIP to an allowed instance now (no keepalived needed; the instance "
                "must have the address configured to answer on it), e.g. `yunhan vip move "
                "db-vip db2 --wait`.",
                _action("move"),
                (VIP_REF, INSTANCE, *WRITE),
            ),
        ),
    ),
)
