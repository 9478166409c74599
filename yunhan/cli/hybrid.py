"""`yunhan idc|hybrid-gw|hybrid`: the hybrid cloud over the API (docs/hybrid.md).

The forms are the issue's: `hybrid-gw create NAME --vpc V --idc-peer IP --peer-asn N
[--replicas 2] [--md5-secret-file F]`, `hybrid-gw scale NAME --replicas N`, `hybrid-gw
routes NAME`, `hybrid switch PREFIX --to cloud|idc [--dry-run]`. IDC sites are the
operator's (`yunhan lab idc add` registers one in a lab); `yunhan idc list` shows them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from yunhan.cli import views
from yunhan.cli.client import Client
from yunhan.cli.command import Cmd, Ctx, Group, Opt, echo
from yunhan.cli.resources import (
    JSON,
    LABEL,
    LISTED,
    OUTPUT,
    SHOWN,
    TIMEOUT,
    WRITE,
    fmt,
    labels,
    ref,
    show,
    wait_applied,
)
from yunhan.errors import TimedOut, ValidationError
from yunhan.model.hybrid import replica_up


def _list(path: str, kind: str, ctx: Ctx, **params: Any) -> None:
    c = ctx.client()
    if ctx["selector"]:
        params["label"] = list(ctx["selector"])
    items = c.items(path, **{k: v for k, v in params.items() if v is not None})
    names = views.Names(c)
    views.print_list(kind, [views.ROWS[kind](i, names) for i in items], fmt(ctx))


def _secret(path: str | None) -> str | None:
    """The MD5 secret from a file (first line, stripped): never on the command line, where
    `ps` and shell history would show it."""
    if path is None:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ValidationError(f"--md5-secret-file {path}: {exc.strerror}") from exc
    line = text.splitlines()[0].strip() if text else ""
    if not line:
        raise ValidationError(f"--md5-secret-file {path} is empty")
    return line


def _wait_sessions(c: Client, gw: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Until every wanted replica is up: its BGP session Established and the IDC's routes
    learned (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        reps = gw["status"].get("replicas") or []
        want = int(gw["spec"].get("replicas", 0))
        up = [r for r in reps if replica_up(r)]
        if len(up) >= want:
            return gw
        if time.monotonic() >= deadline:
            why = "; ".join(views._replica_line(r) for r in reps if r not in up) or "not placed"
            raise TimedOut(
                f"hybrid gateway {gw['name']}: {len(up)} of {want} replica sessions are up "
                f"after {timeout:g} s ({why})"
            )
        time.sleep(0.3)
        gw = c.get(f"/v1/hybrid-gws/{gw['id']}")


def gw_create(ctx: Ctx) -> None:
    c = ctx.client()
    body: dict[str, Any] = {
        "name": ctx["name"],
        "vpc": ctx["vpc"],
        "idc_peer": ctx["idc_peer"],
        "peer_asn": ctx["peer_asn"],
        "replicas": ctx["replicas"],
        "bfd": not ctx["no_bfd"],
        "labels": labels(ctx),
    }
    if ctx["asn"] is not None:
        body["asn"] = ctx["asn"]
    secret = _secret(ctx["md5_secret_file"])
    if secret is not None:
        body["md5_secret"] = secret
    res = c.post("/v1/hybrid-gws", body)
    if ctx["wait"]:
        wait_applied(c, res.get("revision"), ctx["timeout"])
        res = _wait_sessions(c, c.get(f"/v1/hybrid-gws/{res['id']}"), ctx["timeout"])
    show("hybrid_gw", c, res, fmt(ctx))


def gw_scale(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.post(f"/v1/hybrid-gws/{ctx['ref']}/scale", {"replicas": ctx["replicas"]})
    if ctx["wait"]:
        wait_applied(c, res.get("revision"), ctx["timeout"])
        res = _wait_sessions(c, c.get(f"/v1/hybrid-gws/{res['id']}"), ctx["timeout"])
    show("hybrid_gw", c, res, fmt(ctx))


def gw_delete(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.delete(f"/v1/hybrid-gws/{ctx['ref']}")
    if ctx["wait"]:
        wait_applied(c, (res or {}).get("revision"), ctx["timeout"])
    if res is not None:
        echo(f"deleted hybrid gateway {res.get('name')} ({res.get('id')})")


def gw_routes(ctx: Ctx) -> None:
    c = ctx.client()
    items = c.get(f"/v1/hybrid-gws/{ctx['ref']}/routes")["items"]
    names = views.Names(c)
    views.print_list(
        "hybrid_route", [views.ROWS["hybrid_route"](i, names) for i in items], fmt(ctx)
    )


def _advertised(c: Client, changes: dict[str, Any], deadline: float) -> float | None:
    """Seconds until every up replica of the gateways concerned reports advertising the
    new announcements to the IDC (and no longer the withdrawn ones); None at the deadline."""
    start = time.monotonic()
    add, gone = set(changes["announce_add"]), set(changes["announce_withdraw"])
    gateways = sorted({r["gateway"] for r in changes["replicas"]})
    while time.monotonic() < deadline:
        done = True
        for name in gateways:
            gw = c.get(f"/v1/hybrid-gws/{name}")
            for r in gw["status"].get("replicas") or []:
                if r.get("state") != "Established":
                    continue
                have = set(r.get("announced") or [])
                if not add <= have or have & gone:
                    done = False
        if done:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def _vpc_pairs(c: Client, record: Any, prefix: str) -> list[Any]:
    """Every endpoint pair of the VPC that holds IDC subnet `prefix`, as they are now."""
    import ipaddress

    from yunhan.cli.check import endpoints
    from yunhan.net.connectivity import default_pairs

    net = str(ipaddress.IPv4Network(prefix, strict=False))
    vpc = next(
        (s["spec"]["vpc"] for s in c.items("/v1/subnets") if s["spec"].get("cidr") == net), None
    )
    if vpc is None:
        return []
    return default_pairs(endpoints(c, record, vpc))


def _checked(c: Client, record: Any, prefix: str, before: Any) -> tuple[Any, list[str]]:
    """The matrix after a switch, and the pairs reached before and not now (by address: a
    switched server's address is now an instance's). Routing settles within a second or
    two of the announcements, so a loss is confirmed by up to two more runs."""
    from yunhan.cli.check import run_matrix
    from yunhan.cli.netconf import regressions

    for attempt in range(3):
        after = run_matrix(c, record, _vpc_pairs(c, record, prefix), live=0)
        lost = regressions(before, after)
        if not lost or attempt == 2:
            return after, lost
        time.sleep(1.0)
    raise AssertionError("unreachable")


def switch(ctx: Ctx) -> None:
    c = ctx.client()
    before = record = None
    if ctx["check"] and not ctx["dry_run"]:
        from yunhan.cli.check import run_matrix
        from yunhan.cli.trace import lab_record

        record = lab_record(c.endpoint, ctx["state_dir"], "hybrid switch --check")
        pairs = _vpc_pairs(c, record, ctx["prefix"])
        before = run_matrix(c, record, pairs, live=0) if pairs else None
    started = time.monotonic()
    res = c.post(
        "/v1/hybrid/switch",
        {"prefix": ctx["prefix"], "to": ctx["to"], "dry_run": bool(ctx["dry_run"])},
    )
    ch = res["changes"]
    f = fmt(ctx)
    if not res["applied"]:
        if f in ("json", "yaml"):
            views.print_one("switch", res, f)
            return
        if ch["from"] == ch["to"]:
            echo(f"{ch['prefix']} (subnet {ch['subnet']}) is already served in the {ch['to']}")
            return
        echo(
            f"would switch {ch['prefix']} (subnet {ch['subnet']}) from {ch['from']} to {ch['to']}:"
        )
        echo(f"  hosts that re-point ({len(ch['hosts'])}): {', '.join(ch['hosts']) or '-'}")
        reps = [f"{r['gateway']}#{r['index']}@{r['host']}" for r in ch["replicas"]]
        echo(f"  gateway replicas ({len(reps)}): {', '.join(reps) or '-'}")
        echo(f"  announced to the IDC: + {', '.join(ch['announce_add']) or '-'}")
        echo(f"  withdrawn from the IDC: - {', '.join(ch['announce_withdraw']) or '-'}")
        who = "take the addresses over" if ch["to"] == "cloud" else "stand by (no routes)"
        echo(f"  instances that {who}: {', '.join(ch['instances']) or '-'}")
        return
    wait_applied(c, res.get("revision"), ctx["timeout"])
    applied = time.monotonic() - started
    told = _advertised(c, ch, started + ctx["timeout"])
    total = time.monotonic() - started
    check: dict[str, Any] | None = None
    if before is not None:
        after, lost = _checked(c, record, ctx["prefix"], before)
        check = {
            "reached_before": sum(r.reached for r in before.results),
            "pairs_after": len(after.results),
            "lost": lost,
            "switched_back": bool(lost),
        }
        if lost:
            back = c.post("/v1/hybrid/switch", {"prefix": ctx["prefix"], "to": ch["from"]})
            wait_applied(c, back.get("revision"), ctx["timeout"])
    if f in ("json", "yaml"):
        body = {**res, "applied_s": round(applied, 3), "advertised_s": told,
                "total_s": round(total, 3), "check": check}  # fmt: skip
        views.print_one("switch", body, f)
    else:
        bgp = (
            f"every replica advertising it to the IDC after {total:.2f} s"
            if told is not None
            else "the replicas did not report the new announcements in time"
        )
        echo(
            f"switched {ch['prefix']} (subnet {ch['subnet']}) to the {ch['to']}: applied on "
            f"{len(ch['hosts'])} host(s) and {len(ch['replicas'])} replica(s) in "
            f"{applied:.2f} s, {bgp}"
        )
        if ctx["check"] and check is None:
            echo("--check: no endpoint pairs to check in the VPC")
        elif check is not None and not check["lost"]:
            echo(
                f"checked: the {check['reached_before']} pairs reached before are reached "
                f"after ({check['pairs_after']} pairs now)"
            )
        for line in (check or {}).get("lost") or []:
            echo(f"LOST {line}")
    if check is not None and check["lost"]:
        raise ValidationError(
            f"{len(check['lost'])} pairs reached before the switch are not after it: "
            f"switched {ch['prefix']} back to the {ch['from']}"
        )


IDC = Group(
    "idc",
    "IDC sites: customer data centres joined to the region by a dedicated line",
    (
        Cmd(
            "list",
            "List the region's IDC sites.",
            lambda ctx: _list("/v1/idc-sites", "idc_site", ctx),
            LISTED,
        ),
        Cmd(
            "show",
            "Show one IDC site.",
            lambda ctx: show(
                "idc_site", ctx.client(), ctx.client().get(f"/v1/idc-sites/{ctx['ref']}"), fmt(ctx)
            ),
            (ref("idc_site"), *SHOWN),
        ),
    ),
)

REPLICAS = Opt(("--replicas",), "replicas", "how many replicas (1-8), each on its own host", int)
HYBRID_GW = Group(
    "hybrid-gw",
    "Hybrid gateways: a VPC joined to an IDC site by BGP over its dedicated line",
    (
        Cmd(
            "create",
            "Create a hybrid gateway, e.g. `yunhan hybrid-gw create hgw --vpc prod --idc-peer "
            "198.19.33.1 --peer-asn 65001 --md5-secret-file secret`. Its replicas run on "
            "distinct hosts and each speaks BGP with the IDC router; with --wait it returns "
            "once every session is up.",
            gw_create,
            (
                ref("hybrid_gw")._replace(dest="name", help="its name", metavar="NAME"),
                Opt(("--vpc",), "vpc", "the VPC (name or id)", required=True, complete="vpc"),
                Opt(
                    ("--idc-peer",),
                    "idc_peer",
                    "the IDC router's address on the line",
                    required=True,
                ),
                Opt(("--peer-asn",), "peer_asn", "the IDC router's AS number", int, required=True),
                Opt(("--asn",), "asn", "ours (default 64512)", int),
                REPLICAS._replace(default=2),
                Opt(
                    ("--md5-secret-file",),
                    "md5_secret_file",
                    "TCP MD5 secret of the sessions, in a file",
                ),
                Opt(
                    ("--no-bfd",), "no_bfd", "no BFD (failover within the BGP hold time, 9 s)", bool
                ),
                LABEL,
                *WRITE,
            ),
        ),
        Cmd(
            "list",
            "List the project's hybrid gateways.",
            lambda ctx: _list("/v1/hybrid-gws", "hybrid_gw", ctx, vpc=ctx["vpc"]),
            (Opt(("--vpc",), "vpc", "only this VPC's", complete="vpc"), *LISTED),
        ),
        Cmd(
            "show",
            "Show a hybrid gateway and each replica: host, line address, BGP state and why.",
            lambda ctx: show(
                "hybrid_gw",
                ctx.client(),
                ctx.client().get(f"/v1/hybrid-gws/{ctx['ref']}"),
                fmt(ctx),
            ),
            (ref("hybrid_gw"), *SHOWN),
        ),
        Cmd(
            "scale",
            "Set how many replicas run, e.g. `yunhan hybrid-gw scale hgw --replicas 3`; flows "
            "through the other replicas are not touched.",
            gw_scale,
            (ref("hybrid_gw"), REPLICAS._replace(required=True), *WRITE),
        ),
        Cmd(
            "routes",
            "Every route of the gateway with its origin: declared (IDC subnets), learned "
            "(BGP, per replica) and announced (to the IDC).",
            gw_routes,
            (ref("hybrid_gw"), *SHOWN),
        ),
        Cmd(
            "delete",
            "Delete a hybrid gateway (its IDC subnets become unreachable).",
            gw_delete,
            (ref("hybrid_gw"), *WRITE),
        ),
    ),
)


def _stats(ctx: Ctx) -> None:
    from yunhan.cli.hybridstats import stats

    stats(ctx)


HYBRID = Group(
    "hybrid",
    "The hybrid network: route switches between the IDC and the cloud",
    (
        Cmd(
            "switch",
            "Serve an IDC subnet's prefix in the cloud (its instances take the addresses "
            "over) or back in the IDC, e.g. `yunhan hybrid switch 192.168.101.0/24 --to "
            "cloud`. Returns when every host and replica applied it and the IDC was told; "
            "prints how long that took. --dry-run lists what would change; --check gates it on "
            "the connectivity matrix and switches back when a pair is lost.",
            switch,
            (
                ref("subnet")._replace(
                    dest="prefix", help="the IDC subnet's CIDR", metavar="PREFIX", complete=None
                ),
                Opt(("--to",), "to", "where to serve it", required=True, choices=("cloud", "idc")),
                Opt(("--dry-run",), "dry_run", "only list what would change", bool),
                Opt(
                    ("--check",),
                    "check",
                    "check connectivity before and after (the lab's matrix); switch back "
                    "if a pair reached before is lost",
                    bool,
                ),
                Opt(("--state-dir",), "state_dir", "--check: the lab region's state"),
                TIMEOUT,
                OUTPUT,
                JSON,
            ),
        ),
        Cmd(
            "stats",
            "Traffic per IDC prefix and direction (in: to the prefix, out: from it), counted "
            "at the IDC switch (routed inside the IDC, and across the line), the gateway "
            "replicas and the hosts (sent by their instances, delivered to them), with a "
            "sparkline per row: where the traffic went "
            "before and after a cut-over, e.g. `yunhan hybrid stats --since 15m --window 10s`.",
            _stats,
            (
                Opt(("--prefix",), "prefix", "only this IDC prefix", metavar="CIDR"),
                Opt(("--vpc",), "vpc", "only this VPC's IDC prefixes", complete="vpc"),
                Opt(
                    ("--since",),
                    "since",
                    "from when: 15m (back from now, the default is 10m), epoch seconds, or "
                    "an ISO time",
                    metavar="T",
                ),
                Opt(("--window",), "window", "seconds per bin (10s, 1m, ...)", default="10s"),
                Opt(("--state-dir",), "state_dir", "the lab region's state (the switch's side)"),
                OUTPUT,
                JSON,
            ),
        ),
    ),
)


COMMANDS: tuple[Cmd | Group, ...] = (IDC, HYBRID_GW, HYBRID)
