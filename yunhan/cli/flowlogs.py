"""`yunhan flowlog …`: flow logs over the API (docs/flowlogs.md).

The forms are the issue's: `flowlog enable (--vpc V | --subnet S | --instance I)
[--traffic-type ALL|ACCEPT|REJECT] [--name N]`, `flowlog disable (NAME | --vpc V | --subnet
S | --instance I)` (by target: every flow log of that target), `flowlog list|show`, `flowlog
query [filters] [--since T] [--until T]` (oldest first on the terminal) and `flowlog top
--vpc V [--window 5m] [--by pair|instance|port]`. Times T are a duration back from now
(`90s`, `10m`, `2h`, `1d`), an ISO-8601 time, or unix seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from yunhan.cli import views
from yunhan.cli.client import Client
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo
from yunhan.cli.resources import LABEL, LISTED, SHOWN, WRITE, fmt, labels, show, wait_applied
from yunhan.errors import NotFound, ValidationError

PATH = "/v1/flow-logs"
SCOPES = ("vpc", "subnet", "instance")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 47: "gre", 50: "esp", 132: "sctp"}


def duration(text: str) -> float:
    """Seconds of `90s`, `10m`, `2h`, `1d` (or a bare number of seconds)."""
    m = _DURATION.match(text.strip())
    if m:
        return float(m.group(1)) * _UNIT[m.group(2)]
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0 or value != value:
        raise ValidationError(f"{text!r} is not a duration such as 90s, 10m, 2h or 1d")
    return value


def when(text: str, now: Callable[[], float] = time.time) -> float:
    """Unix seconds of a time given as a duration back from now (`10m`), an ISO-8601 time
    (UTC unless it says otherwise) or unix seconds."""
    t = text.strip()
    m = _DURATION.match(t)
    if m:
        return now() - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(t)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"{text!r} is not a time: give a duration back from now (90s, 10m, 2h), an "
            "ISO-8601 time (2026-11-26T08:00:00Z) or unix seconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _proto(n: int | None) -> str | None:
    return None if n is None else PROTOCOLS.get(n, str(n))


def _endpoint(addr: str | None, port: int | None) -> str | None:
    if addr is None:
        return None
    return addr if port is None else f"{addr}:{port}"


def record_row(rec: dict[str, Any], names: views.Names) -> views.Row:
    """A record for people (names next to ids) and scripts (every field)."""
    skip = rec.get("log_status") == "SKIPDATA"
    return {
        "time": _iso(rec["start"]),
        "instance": names.of("instance", rec.get("instance")),
        "interface": rec.get("interface"),
        "direction": rec.get("flow_direction"),
        "src": _endpoint(rec.get("srcaddr"), rec.get("srcport")),
        "dst": _endpoint(rec.get("dstaddr"), rec.get("dstport")),
        "protocol": _proto(rec.get("protocol")),
        "packets": rec.get("packets"),
        "bytes": rec.get("bytes"),
        "action": "SKIPDATA" if skip else rec.get("action"),
        **{k: rec.get(k) for k in ("id", "start", "end", "log_status", "host")},
        "instance_id": rec.get("instance"),
        "vpc_id": rec.get("vpc"),
        "subnet_id": rec.get("subnet"),
        "srcaddr": rec.get("srcaddr"),
        "srcport": rec.get("srcport"),
        "dstaddr": rec.get("dstaddr"),
        "dstport": rec.get("dstport"),
        "received_at": rec.get("received_at"),
    }


def _talker_row(by: str, item: dict[str, Any], names: views.Names) -> views.Row:
    if by == "pair":
        key = f"{item.get('srcaddr')} -> {item.get('dstaddr')}"
    elif by == "instance":
        key = names.of("instance", item.get("instance")) or "-"
    else:
        port = item.get("dstport")
        key = f"{_proto(item.get('protocol'))}" + (f"/{port}" if port is not None else "")
    return {"talker": key, **item}


def _print_flow_log(ctx: Ctx, c: Client, res: dict[str, Any]) -> None:
    show("flow_log", c, res, fmt(ctx))


def enable(ctx: Ctx) -> None:
    c = ctx.client()
    body: dict[str, Any] = {"traffic_type": ctx["traffic_type"], "labels": labels(ctx)}
    given = [k for k in SCOPES if ctx[k] is not None]
    if len(given) != 1:
        raise ValidationError("give exactly one of --vpc, --subnet and --instance")
    body[given[0]] = ctx[given[0]]
    if ctx["name"] is not None:
        body["name"] = ctx["name"]
    res = c.post(PATH, body)
    if ctx["wait"]:
        wait_applied(c, res.get("revision"), ctx["timeout"])
    _print_flow_log(ctx, c, res)


def disable(ctx: Ctx) -> None:
    c = ctx.client()
    given = [k for k in SCOPES if ctx[k] is not None]
    if len(given) + (ctx["ref"] is not None) != 1:
        raise ValidationError(
            "give a flow log's name, or exactly one of --vpc, --subnet, --instance"
        )
    if ctx["ref"] is not None:
        refs = [ctx["ref"]]
    else:
        kind = given[0]
        target = c.get(f"/v1/{kind}s/{ctx[kind]}")
        vpc = target["id"] if kind == "vpc" else None
        refs = [
            f["id"]
            for f in c.items(PATH, vpc=vpc)
            if (f.get("spec") or {}).get("target") == target["id"]
        ]
        if not refs:
            raise NotFound(f"no flow log logs {kind} {ctx[kind]}")
    gone = [c.delete(f"{PATH}/{r}") for r in refs]
    if ctx["wait"] and gone:
        wait_applied(c, max(int(g.get("revision") or 0) for g in gone), ctx["timeout"])
    f = fmt(ctx)
    if f in ("json", "yaml"):
        names = views.Names(c)
        views.print_list("flow_log", [views.ROWS["flow_log"](g, names) for g in gone], f)
        return
    for g in gone:
        echo(f"disabled flow log {g.get('name')} ({g.get('id')})")


def list_(ctx: Ctx) -> None:
    c = ctx.client()
    params: dict[str, Any] = {"vpc": ctx["vpc"]}
    if ctx["selector"]:
        params["label"] = list(ctx["selector"])
    names = views.Names(c)
    rows = [views.ROWS["flow_log"](i, names) for i in c.items(PATH, **params)]
    views.print_list("flow_log", rows, fmt(ctx))


def show_(ctx: Ctx) -> None:
    c = ctx.client()
    _print_flow_log(ctx, c, c.get(f"{PATH}/{ctx['ref']}"))


def query(ctx: Ctx) -> None:
    c = ctx.client()
    params: dict[str, Any] = {k: ctx[k] for k in (*SCOPES, "action")}
    params["since"] = when(ctx["since"]) if ctx["since"] else None
    params["until"] = when(ctx["until"]) if ctx["until"] else None
    params["limit"] = ctx["limit"]
    ans = c.get(f"{PATH}/records", **params)
    names = views.Names(c)
    rows = [record_row(r, names) for r in reversed(ans.get("items") or [])]  # oldest first
    views.print_list("flow_record", rows, fmt(ctx))
    if ans.get("more") and fmt(ctx) in ("table", "wide"):
        echo(f"(the newest {len(rows)} shown; more matched: narrow the query or raise --limit)")


def top(ctx: Ctx) -> None:
    c = ctx.client()
    window = round(duration(ctx["window"]))
    by = ctx["by"]
    ans = c.get(f"{PATH}/top", vpc=ctx["vpc"], window=max(window, 1), by=by, limit=ctx["limit"])
    names = views.Names(c)
    rows = [_talker_row(by, i, names) for i in ans.get("items") or []]
    views.print_list("top_talker", rows, fmt(ctx))


TARGETS = (
    Opt(("--vpc",), "vpc", "a VPC (name or id)", complete="vpc"),
    Opt(("--subnet",), "subnet", "a subnet (name or id)", complete="subnet"),
    Opt(("--instance",), "instance", "an instance (name or id)", complete="instance"),
)
FLOWLOG = Group(
    "flowlog",
    "Flow logs: accepted flows and rejected packets of a VPC, subnet or instance",
    (
        Cmd(
            "enable",
            "Log a target's traffic, e.g. `yunhan flowlog enable --subnet web "
            "--traffic-type REJECT`.",
            enable,
            (
                *TARGETS,
                Opt(
                    ("--traffic-type",),
                    "traffic_type",
                    "which records",
                    default="ALL",
                    choices=("ALL", "ACCEPT", "REJECT"),
                ),
                Opt(("--name",), "name", "its name (default: from the target)"),
                LABEL,
                *WRITE,
            ),
        ),
        Cmd(
            "disable",
            "Stop logging: one flow log by name, or every flow log of a target (records "
            "kept stay until retention prunes them).",
            disable,
            (
                Arg(
                    "ref", "a flow log's name or id", "NAME|ID", optional=True, complete="flow_log"
                ),
                *TARGETS,
                *WRITE,
            ),
        ),
        Cmd(
            "list",
            "List the project's flow logs.",
            list_,
            (Opt(("--vpc",), "vpc", "only this VPC's", complete="vpc"), *LISTED),
        ),
        Cmd(
            "show",
            "Show a flow log.",
            show_,
            (Arg("ref", "its name or id", "NAME|ID", complete="flow_log"), *SHOWN),
        ),
        Cmd(
            "query",
            "Records, oldest first, e.g. `yunhan flowlog query --vpc prod --action REJECT "
            "--since 10m`. T: a duration back from now (90s, 10m, 2h), an ISO-8601 time or "
            "unix seconds.",
            query,
            (
                *TARGETS,
                Opt(
                    ("--action",),
                    "action",
                    "only accepted or rejected",
                    choices=("ACCEPT", "REJECT"),
                ),
                Opt(("--since",), "since", "records that started at or after T", metavar="T"),
                Opt(("--until",), "until", "records that started before T", metavar="T"),
                Opt(("--limit",), "limit", "the newest N at most (max 10000)", int, 100),
                *SHOWN,
            ),
        ),
        Cmd(
            "top",
            "Top talkers of a VPC by bytes, e.g. `yunhan flowlog top --vpc prod --window 10m "
            "--by instance`.",
            top,
            (
                Opt(("--vpc",), "vpc", "the VPC", required=True, complete="vpc"),
                Opt(("--window",), "window", "how far back (90s, 5m, 2h)", default="5m"),
                Opt(
                    ("--by",),
                    "by",
                    "pair (src -> dst), instance or port",
                    default="pair",
                    choices=("pair", "instance", "port"),
                ),
                Opt(("--limit",), "limit", "rows at most", int, 10),
                *SHOWN,
            ),
        ),
    ),
)

COMMANDS: tuple[Cmd | Group, ...] = (FLOWLOG,)
