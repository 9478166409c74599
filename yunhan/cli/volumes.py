"""`yunhan volume …`: volumes and their data protection over the API (docs/volumes.md).

The forms are the issue's: `volume create NAME --size 10G --zone Z [--protect [--tiers T]]`,
`volume list|show|resize|delete`, `volume attach VOL INSTANCE [--path /data]`,
`volume detach VOL`, `volume protect VOL [--tiers 12h:1s,24h:1h,3d:1d]`,
`volume timeline VOL`, `volume restore VOL --to TIME`, `volume clone VOL NEW --at TIME`.
A TIME is ISO 8601, unix seconds, or relative to now: "-90s", "-5m", "-2h", "-1d".
`--wait` returns once every host concerned has applied the change and the volume's phase
has settled (available or attached, as asked; an error fails the command).
"""

from __future__ import annotations

import time
from typing import Any

from yunhan.cli import views
from yunhan.cli.client import Client
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo
from yunhan.cli.resources import LABEL, LISTED, SHOWN, WRITE, fmt, labels, wait_applied
from yunhan.errors import NotFound, TimedOut, YunhanError
from yunhan.model.volumes import (
    DEFAULT_TIERS,
    format_size,
    format_tiers,
    iso_ns,
    parse_size,
    parse_time_ns,
)

PATH = "/v1/volumes"
SETTLED = ("available", "attached")


def _print(ctx: Ctx, c: Client, res: dict[str, Any]) -> None:
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("volume", res, f)  # the API's object, for scripts
    else:
        views.print_one("volume", views.volume_row(res, views.Names(c)), f)


def _settled(res: dict[str, Any]) -> bool:
    sp, st = res.get("spec") or {}, res.get("status") or {}
    want = "attached" if sp.get("attachment") else "available"
    restore = sp.get("restore")
    if restore and int(st.get("restored_serial") or 0) < int(restore["serial"]):
        return False
    return st.get("phase") == want


def wait_settled(c: Client, res: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Wait until the write is applied everywhere (converged) and the volume's phase is
    what its spec asks for; the volume then. An error phase fails."""
    from yunhan.cli.progress import Progress

    deadline = time.monotonic() + timeout
    wait_applied(c, res.get("revision"), timeout)
    with Progress(f"waiting for volume {res['name']} to settle") as p:
        while True:
            res = c.get(f"{PATH}/{res['id']}")
            st = res.get("status") or {}
            if st.get("phase") == "error":
                raise YunhanError(
                    f"volume {res['name']} failed on host {st.get('host')}: "
                    f"{st.get('error') or st.get('message') or 'no reason given'}"
                )
            if _settled(res):
                return res
            if time.monotonic() > deadline:
                raise TimedOut(
                    f"volume {res['name']} is still {st.get('phase')} (host {st.get('host')})"
                )
            p.say(f"waiting for volume {res['name']} on host {st.get('host')}: {st.get('phase')}")
            time.sleep(0.2)  # the API has no long poll on a volume's phase


def _written(ctx: Ctx, c: Client, res: dict[str, Any]) -> None:
    if ctx["wait"]:
        res = wait_settled(c, res, ctx["timeout"])
    _print(ctx, c, res)


def _time(text: str) -> str:
    """A TIME as ISO 8601 with nanoseconds, relative ones taken from this clock."""
    return iso_ns(parse_time_ns(text, now=time.time()))


def volume_create(ctx: Ctx) -> None:
    c = ctx.client()
    body: dict[str, Any] = {
        "name": ctx["name"],
        "size": parse_size(ctx["size"]),
        "zone": ctx["zone"],
        "labels": labels(ctx),
    }
    if ctx["protect"] or ctx["tiers"] is not None:
        body["tiers"] = ctx["tiers"] or DEFAULT_TIERS
    _written(ctx, c, c.post(PATH, body))


def volume_list(ctx: Ctx) -> None:
    c = ctx.client()
    params: dict[str, Any] = {"zone": ctx["zone"], "instance": ctx["instance"]}
    if ctx["selector"]:
        params["label"] = list(ctx["selector"])
    names = views.Names(c)
    items = c.items(PATH, **params)
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_list("volume", items, f)
    else:
        views.print_list("volume", [views.volume_row(i, names) for i in items], f)


def volume_show(ctx: Ctx) -> None:
    c = ctx.client()
    _print(ctx, c, c.get(f"{PATH}/{ctx['ref']}"))


def volume_resize(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"spec": {"size": parse_size(ctx["size"])}}
    _written(ctx, c, c.request("PATCH", f"{PATH}/{ctx['ref']}", json=body))


def wait_gone(c: Client, res: dict[str, Any], timeout: float) -> None:
    """Until the volume's host has removed its data and the volume is gone."""
    from yunhan.cli.progress import Progress

    deadline = time.monotonic() + timeout
    with Progress(f"waiting for volume {res['name']} to be deleted") as p:
        while True:
            try:
                cur = c.get(f"{PATH}/{res['id']}")
            except NotFound:
                return
            st = cur.get("status") or {}
            if time.monotonic() > deadline:
                raise TimedOut(
                    f"volume {res['name']} is still {st.get('phase')} (host {st.get('host')})"
                )
            p.say(f"waiting for host {st.get('host')} to remove volume {res['name']}")
            time.sleep(0.2)


def volume_delete(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.delete(f"{PATH}/{ctx['ref']}")
    if ctx["wait"] and res is not None:
        wait_gone(c, res, ctx["timeout"])
    if res is not None:
        if fmt(ctx) in ("json", "yaml"):
            views.print_one("volume", res, fmt(ctx))
        elif ctx["wait"]:
            echo(f"deleted volume {res.get('name')}")
        else:
            echo(f"deleting volume {res.get('name')}")


def volume_attach(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"instance": ctx["instance"], "path": ctx["path"]}
    _written(ctx, c, c.post(f"{PATH}/{ctx['ref']}/attach", body))


def volume_detach(ctx: Ctx) -> None:
    c = ctx.client()
    _written(ctx, c, c.post(f"{PATH}/{ctx['ref']}/detach"))


def volume_protect(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"tiers": ctx["tiers"] or DEFAULT_TIERS}
    _written(ctx, c, c.post(f"{PATH}/{ctx['ref']}/protect", body))


def volume_unprotect(ctx: Ctx) -> None:
    c = ctx.client()
    _written(ctx, c, c.post(f"{PATH}/{ctx['ref']}/unprotect"))


def volume_timeline(ctx: Ctx) -> None:
    c = ctx.client()
    tl = c.get(f"{PATH}/{ctx['ref']}/timeline")
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("volume_timeline", tl, f)
        return
    echo(f"tiers    {format_tiers(tl.get('tiers'))}")
    echo(f"oldest   {tl.get('oldest') or '-'}")
    echo(f"newest   {tl.get('newest') or '-'}")
    echo(f"journal  {format_size(int(tl.get('journal_bytes') or 0))}")
    echo(f"base     {format_size(int(tl.get('base_bytes') or 0))}")
    rows = [
        {
            "from": p["from"],
            "to": p["to"],
            "every": "any time" if p["every_s"] <= 1 else f"{p['every_s']}s",
        }
        for p in tl.get("points") or []
    ]
    views.print_list("volume_range", rows, f)


def volume_restore(ctx: Ctx) -> None:
    c = ctx.client()
    _written(ctx, c, c.post(f"{PATH}/{ctx['ref']}/restore", {"to": _time(ctx["to"])}))


def volume_clone(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"name": ctx["name"], "at": _time(ctx["at"]), "labels": labels(ctx)}
    _written(ctx, c, c.post(f"{PATH}/{ctx['ref']}/clone", body))


VOL = Arg("ref", "the volume (name or id)", metavar="VOL", complete="volume")
SIZE = Opt(("--size",), "size", "its size: whole GiB, like 10G", required=True, metavar="SIZE")
TIERS = Opt(
    ("--tiers",),
    "tiers",
    f"restore points kept, KEEP:EVERY,… (units s, m, h, d; default {DEFAULT_TIERS})",
    metavar="T",
)
TIME_HELP = 'ISO 8601, unix seconds, or relative like "-90s", "-5m"'
COMMANDS = (
    Group(
        "volume",
        "Volumes: block devices of a zone, attached to an instance, optionally journaled "
        "so that they can be restored or cloned to any second kept (docs/volumes.md)",
        (
            Cmd(
                "create",
                "Create a volume on the zone's host with the most free volume space, e.g. "
                "`yunhan volume create db --size 10G --zone az1 --protect --wait`.",
                volume_create,
                (
                    Arg("name", "its name"),
                    SIZE,
                    Opt(("--zone",), "zone", "its zone", required=True, complete="zone"),
                    Opt(("--protect",), "protect", "journal every write (see --tiers)", bool),
                    TIERS,
                    LABEL,
                    *WRITE,
                ),
            ),
            Cmd(
                "list",
                "List the project's volumes.",
                volume_list,
                (
                    Opt(("--zone",), "zone", "only this zone's", complete="zone"),
                    Opt(
                        ("--instance",),
                        "instance",
                        "only the one attached to it",
                        complete="instance",
                    ),
                    *LISTED,
                ),
            ),
            Cmd("show", "Show a volume.", volume_show, (VOL, *SHOWN)),
            Cmd(
                "resize",
                "Grow a detached volume, e.g. `yunhan volume resize db --size 20G`.",
                volume_resize,
                (VOL, SIZE, *WRITE),
            ),
            Cmd(
                "delete",
                "Delete a detached volume and its restore points.",
                volume_delete,
                (VOL, *WRITE),
            ),
            Cmd(
                "attach",
                "Attach a volume to an instance of its zone, mounted at --path inside it.",
                volume_attach,
                (
                    VOL,
                    Arg("instance", "the instance", metavar="INSTANCE", complete="instance"),
                    Opt(("--path",), "path", "where it is mounted", default="/data"),
                    *WRITE,
                ),
            ),
            Cmd(
                "detach",
                "Flush, unmount and detach a volume.",
                volume_detach,
                (VOL, *WRITE),
            ),
            Cmd(
                "protect",
                "Journal every write of a volume, keeping restore points by --tiers.",
                volume_protect,
                (VOL, TIERS, *WRITE),
            ),
            Cmd(
                "unprotect",
                "Stop journaling a volume; its restore points are dropped.",
                volume_unprotect,
                (VOL, *WRITE),
            ),
            Cmd(
                "timeline",
                "What a volume can be restored to: ranges of restore points.",
                volume_timeline,
                (VOL, *SHOWN),
            ),
            Cmd(
                "restore",
                "Restore a detached volume in place to a past time, e.g. "
                "`yunhan volume restore db --to -5m --wait`.",
                volume_restore,
                (VOL, Opt(("--to",), "to", TIME_HELP, required=True, metavar="TIME"), *WRITE),
            ),
            Cmd(
                "clone",
                "Create a new volume as VOL was at a past time, readable at once.",
                volume_clone,
                (
                    VOL,
                    Arg("name", "the new volume's name", metavar="NEW"),
                    Opt(("--at",), "at", TIME_HELP, required=True, metavar="TIME"),
                    LABEL,
                    *WRITE,
                ),
            ),
        ),
    ),
)
