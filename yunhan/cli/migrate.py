"""`yunhan migrate …`: a migration window's dual write, and its reconciliation.

    yunhan migrate start NAME --prefix P --site SITE --vpc V --route-table T --acl A \\
        [--truth yunhan|idc] [--reconcile-every S]
    yunhan migrate route add|delete DST [--migration NAME] [--wait]
    yunhan migrate acl add --seq N --peer CIDR [--protocol P] [--action permit|deny]
    yunhan migrate acl delete --seq N
    yunhan migrate apply --changes FILE [--wait]
    yunhan migrate status | reconcile [--repair] | stop | list

Every change goes through the region's queue (yunhan.lab.dualwrite) and is written to both
sides by their consumers; the command returns once the queue holds it (durable), or with
--wait once both sides applied it. The lab region on this machine only.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo
from yunhan.errors import ValidationError, YunhanError

DEFAULT_WAIT = 120.0


class Differences(YunhanError):
    code = "differences"


def _record(ctx: Ctx, what: str) -> tuple[Any, Any]:
    from yunhan.cli.trace import lab_record

    c = ctx.client()
    return c, lab_record(c.endpoint, ctx["state_dir"], what)


def _migration(ctx: Ctx, what: str) -> tuple[Any, Any, Any]:
    from yunhan.lab import dualwrite as ldw

    c, record = _record(ctx, what)
    try:
        m = ldw.load(record.data_dir, ctx.args.get("migration") or ctx.args.get("name"))
    except ldw.DualWriteError as exc:
        raise ValidationError(str(exc)) from exc
    return c, record, m


def start(ctx: Ctx) -> None:
    import ipaddress

    from yunhan.lab import dualwrite as ldw

    c, record = _record(ctx, "migrate start")
    name = ctx["name"]
    if not name.replace("-", "").isalnum() or not name[:1].isalpha() or len(name) > 32:
        raise ValidationError("a migration's name is letters, digits and dashes (32 at most)")
    if ctx["truth"] not in ("yunhan", "idc"):
        raise ValidationError("--truth is yunhan or idc")
    vpc = c.get(f"/v1/vpcs/{ctx['vpc']}")
    prefix = str(ipaddress.IPv4Network(ctx["prefix"], strict=False))
    subs = [
        s
        for s in c.items("/v1/subnets")
        if s["spec"].get("vpc") == vpc["id"] and s["spec"].get("cidr") == prefix
    ]
    if not subs or subs[0]["spec"].get("location") != f"idc:{ctx['site']}":
        raise ValidationError(
            f"{prefix} is not a subnet of VPC {vpc['name']} located in IDC site {ctx['site']} "
            f"(`yunhan subnet create … --cidr {prefix} --location idc:{ctx['site']}`)"
        )
    table = c.get(f"/v1/route-tables/{ctx['route_table']}")
    acl = c.get(f"/v1/acls/{ctx['acl']}")
    for what, res in (("route table", table), ("network ACL", acl)):
        if res["spec"].get("vpc") != vpc["id"]:
            raise ValidationError(f"{what} {res['name']} is not of VPC {vpc['name']}")
    if table["spec"].get("default"):
        raise ValidationError(f"route table {table['name']} is the VPC's default: not editable")
    m = ldw.Migration(
        name, prefix, ctx["site"], vpc["id"], table["id"], acl["id"], ctx["truth"],
        float(ctx["reconcile_every"]),
    )  # fmt: skip
    old = next((x for x in ldw.list_migrations(record.data_dir) if x.name == name), None)
    if old is not None and old != m:
        raise ValidationError(
            f"migration {name} exists with other settings; `yunhan migrate stop --migration "
            f"{name}` first"
        )
    # The same command again completes it: the queue or the consumer restarted, if gone.
    url = ldw.ensure_nats(record.data_dir, record.prefix)
    asyncio.run(ldw.ensure_stream(url, m))
    ldw.save(record.data_dir, m)
    token = ldw.status_file(record.data_dir, name).with_name(f"{name}.token")
    token.write_text(c.token)
    token.chmod(0o600)
    try:
        pid = ldw.start_daemon(record.data_dir, name, record.prefix, token)
    except ldw.DualWriteError:
        ldw.forget(record.data_dir, name)
        raise
    echo(
        f"migration {name}: {prefix} of {vpc['name']} with IDC site {ctx['site']}, source of "
        f"truth {m.truth}; queue {url} stream {m.stream}, consumer pid {pid}"
    )


def _publish(ctx: Ctx, changes: list[Any]) -> None:
    from yunhan.lab import dualwrite as ldw

    _, record, m = _migration(ctx, "migrate")
    url = ldw.nats_url(record.data_dir)
    t0 = time.monotonic()
    seqs = asyncio.run(ldw.publish(url, m, changes))
    queued = time.monotonic() - t0
    msg = f"{len(changes)} change(s) queued in {queued:.2f} s (stream seq {seqs[-1]})"
    if not ctx["wait"]:
        echo(msg)
        return
    deadline = time.monotonic() + float(ctx["timeout"])
    while True:
        lag = asyncio.run(ldw.lag(url, m))
        if all(lag[s]["acked"] >= seqs[-1] for s in ("yunhan", "idc")):
            break
        if time.monotonic() > deadline:
            raise YunhanError(f"{msg}; not applied on both sides within {ctx['timeout']:g} s")
        time.sleep(0.1)
    echo(f"{msg}; applied on both sides {time.monotonic() - t0:.2f} s after the first was sent")


def route_add(ctx: Ctx) -> None:
    _route(ctx, "put")


def route_delete(ctx: Ctx) -> None:
    _route(ctx, "delete")


def _route(ctx: Ctx, op: str) -> None:
    from yunhan.net import dualwrite as dw

    _, _, m = _migration(ctx, "migrate route")
    try:
        ch = dw.route_change(m.prefix, ctx["dst"], op)
    except dw.ChangeError as exc:
        raise ValidationError(str(exc)) from exc
    _publish(ctx, [ch])


def acl_add(ctx: Ctx) -> None:
    _acl(ctx, "put")


def acl_delete(ctx: Ctx) -> None:
    _acl(ctx, "delete")


def _acl(ctx: Ctx, op: str) -> None:
    from yunhan.net import dualwrite as dw

    try:
        ch = dw.acl_change(
            ctx["seq"],
            op,
            peer=ctx.args.get("peer"),
            protocol=ctx.args.get("protocol") or "any",
            action=ctx.args.get("action") or "deny",
        )
    except dw.ChangeError as exc:
        raise ValidationError(str(exc)) from exc
    _publish(ctx, [ch])


def apply(ctx: Ctx) -> None:
    from yunhan.net import dualwrite as dw

    _, _, m = _migration(ctx, "migrate apply")
    try:
        lines = Path(ctx["changes"]).read_text().splitlines()
    except OSError as exc:
        raise ValidationError(f"cannot read {ctx['changes']}: {exc.strerror}") from exc
    changes = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            changes.append(dw.parse_change(m.prefix, json.loads(line)))
        except (ValueError, dw.ChangeError) as exc:
            raise ValidationError(f"{ctx['changes']} line {n}: {exc}") from exc
    if not changes:
        raise ValidationError(f"{ctx['changes']} holds no change")
    _publish(ctx, changes)


def status(ctx: Ctx) -> None:
    from yunhan.lab import dualwrite as ldw

    _, record, m = _migration(ctx, "migrate status")
    pid = ldw.daemon_pid(record.data_dir, m.name)
    try:
        st = json.loads(ldw.status_file(record.data_dir, m.name).read_text())
    except (OSError, ValueError):
        st = {}
    try:
        lag: dict[str, Any] = asyncio.run(ldw.lag(ldw.nats_url(record.data_dir), m))
    except Exception as exc:  # the queue away: say so, show the rest
        lag = {"error": str(exc)}
    out = {"migration": m.__dict__, "consumer_pid": pid, "queue": lag, "daemon": st}
    if ctx["as_json"]:
        echo(json.dumps(out))
        return
    echo(f"migration {m.name}: {m.prefix}, IDC site {m.site}, truth {m.truth}")
    echo(f"consumer: {'pid ' + str(pid) if pid else 'NOT RUNNING'}")
    if "error" in lag:
        echo(f"queue: unreachable ({lag['error']})")
    else:
        echo(f"queue: {lag['last_seq']} changes")
        for side in ("yunhan", "idc"):
            s = lag[side]
            d = (st.get("sides") or {}).get(side) or {}
            err = f", error: {d['error']}" if d.get("error") else ""
            echo(f"  {side}: applied to seq {s['acked']}, {s['pending']} waiting{err}")
            for f in d.get("failed") or []:
                echo(f"    refused: {f}")
    rec = st.get("reconcile") or {}
    if rec.get("differences") is not None:
        echo(f"last reconcile: {len(rec['differences'])} differences")


def reconcile(ctx: Ctx) -> None:
    from yunhan.lab import dualwrite as ldw

    c, record, m = _migration(ctx, "migrate reconcile")
    sides = ldw.make_sides(m, record, c.token)
    try:
        r = ldw.reconcile(m, sides, repair=ctx["repair"])
        after = ldw.reconcile(m, sides) if ctx["repair"] and r.differences else None
    finally:
        for s in sides.values():
            if hasattr(s, "close"):
                s.close()
    if ctx["as_json"]:
        body = r.to_json()
        if after is not None:
            body["after_repair"] = after.to_json()["differences"]
        echo(json.dumps(body))
    else:
        echo(f"{len(r.differences)} differences ({m.other} against {m.truth}, the truth)")
        for d in r.differences:
            echo(f"  {d.describe(r.truth, r.other)}")
        if after is not None:
            echo(f"repaired {m.other}: {len(after.differences)} differences now")
    left = after.differences if after is not None else r.differences
    if left:
        raise Differences(f"{len(left)} differences between yunhan and idc")


def stop(ctx: Ctx) -> None:
    from yunhan.lab import dualwrite as ldw

    _, record, m = _migration(ctx, "migrate stop")
    ldw.stop_daemon(record.data_dir, m.name)
    asyncio.run(ldw.delete_stream(ldw.nats_url(record.data_dir), m))
    ldw.forget(record.data_dir, m.name)
    (ldw.status_file(record.data_dir, m.name).with_name(f"{m.name}.token")).unlink(missing_ok=True)
    if not ldw.list_migrations(record.data_dir):
        ldw.stop_nats(record.data_dir)
    echo(f"migration {m.name} stopped (what both sides hold stays)")


def list_(ctx: Ctx) -> None:
    from yunhan.lab import dualwrite as ldw

    _, record = _record(ctx, "migrate list")
    ms = ldw.list_migrations(record.data_dir)
    if ctx["as_json"]:
        echo(json.dumps([m.__dict__ for m in ms]))
        return
    for m in ms:
        pid = ldw.daemon_pid(record.data_dir, m.name)
        echo(f"{m.name}  {m.prefix}  site {m.site}  truth {m.truth}  "
             f"{'running' if pid else 'NOT RUNNING'}")  # fmt: skip


STATE = Opt(("--state-dir",), "state_dir", "the lab region's state (env YUNHAN_HOME)")
WHICH = Opt(("--migration",), "migration", "the migration (needed when there are several)")
WAIT = (
    Opt(("--wait",), "wait", "return once both sides applied it", bool),
    Opt(("--timeout",), "timeout", "seconds --wait waits at most", float, default=DEFAULT_WAIT),
)
JSON = Opt(("--json",), "as_json", "print JSON", bool)
MIGRATE = Group(
    "migrate",
    "Migration windows: dual write of routes and ACL rules to Yunhan and the IDC switch "
    "through a durable queue, and their reconciliation",
    (
        Cmd(
            "start",
            "Open a migration window for an IDC subnet: changes to it are written through "
            "the queue to the route table and network ACL given and to the site's switch. "
            "The same command again restarts what is gone (the queue, the consumer).",
            start,
            (
                Arg("name", "the migration's name"),
                Opt(("--prefix",), "prefix", "the migrating prefix (an IDC subnet)", required=True),
                Opt(("--site",), "site", "the IDC site", required=True),
                Opt(("--vpc",), "vpc", "the VPC", required=True),
                Opt(("--route-table",), "route_table", "Yunhan's route table", required=True),
                Opt(("--acl",), "acl", "Yunhan's network ACL (its ingress rules)", required=True),
                Opt(
                    ("--truth",),
                    "truth",
                    "the side a repair follows",
                    default="yunhan",
                    choices=("yunhan", "idc"),
                ),
                Opt(
                    ("--reconcile-every",),
                    "reconcile_every",
                    "seconds between scheduled reconciles",
                    float,
                    default=30.0,
                ),
                STATE,
            ),
        ),
        Group(
            "route",
            "Blackhole routes inside the migrating prefix, written to both sides",
            (
                Cmd(
                    "add",
                    "Add (or keep) a blackhole route.",
                    route_add,
                    (Arg("dst", "the prefix (inside the migrating one)"), WHICH, *WAIT, STATE),
                ),
                Cmd(
                    "delete",
                    "Remove a route.",
                    route_delete,
                    (Arg("dst", "the prefix"), WHICH, *WAIT, STATE),
                ),
            ),
        ),
        Group(
            "acl",
            "ACL rules for traffic into the migrating prefix, written to both sides",
            (
                Cmd(
                    "add",
                    "Add or replace rule SEQ.",
                    acl_add,
                    (
                        Opt(("--seq",), "seq", "1..32766, lower first", int, required=True),
                        Opt(("--peer",), "peer", "the source CIDR", required=True),
                        Opt(
                            ("--protocol",),
                            "protocol",
                            "any, icmp, tcp or udp",
                            default="any",
                            choices=("any", "icmp", "tcp", "udp"),
                        ),
                        Opt(
                            ("--action",),
                            "action",
                            "permit or deny",
                            default="deny",
                            choices=("permit", "deny"),
                        ),
                        WHICH,
                        *WAIT,
                        STATE,
                    ),
                ),
                Cmd(
                    "delete",
                    "Remove rule SEQ.",
                    acl_delete,
                    (Opt(("--seq",), "seq", "the rule", int, required=True), WHICH, *WAIT, STATE),
                ),
            ),
        ),
        Cmd(
            "apply",
            'Queue many changes: a file of JSON lines, {"kind": "route", "op": '
            '"put"|"delete", "prefix": …} or {"kind": "acl", "op": …, "seq": …, '
            '"peer": …, "protocol": …, "action": …}.',
            apply,
            (Opt(("--changes",), "changes", "the file", required=True), WHICH, *WAIT, STATE),
        ),
        Cmd(
            "status",
            "Show the consumers, how far each side is, and the last reconcile.",
            status,
            (WHICH, JSON, STATE),
        ),
        Cmd(
            "reconcile",
            "Compare both sides and print the differences (missing, extra, different); "
            "with --repair, fix the side that lags (the one not the source of truth). Exits "
            "1 while differences remain.",
            reconcile,
            (Opt(("--repair",), "repair", "fix the lagging side", bool), WHICH, JSON, STATE),
        ),
        Cmd(
            "stop",
            "Close the window: stop its consumer and delete its stream.",
            stop,
            (WHICH, STATE),
        ),
        Cmd("list", "List the migration windows.", list_, (JSON, STATE)),
    ),
)
COMMANDS: tuple[Group, ...] = (MIGRATE,)
