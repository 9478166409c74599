"""`yunhan hybrid stats`: traffic per IDC prefix and direction, before and after a cut-over.

The cloud side (hosts and gateway replicas) comes from the API, which keeps what agents
count. The IDC side comes from the site's switch, which keeps its own counters' history
(yunhan.lab.switchd): it is read where the switch is managed, as `yunhan netconf` reaches
it, so on the lab's machine; elsewhere the table says the switch was not read. Both are
binned alike, so one sparkline per prefix, point and direction shows where its traffic
went, bin by bin.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from yunhan.cli import views
from yunhan.cli.command import Ctx, echo
from yunhan.cli.resources import fmt
from yunhan.errors import ValidationError
from yunhan.model.trafficstats import bin_samples

BARS = "▁▂▃▄▅▆▇█"
MAX_COLUMNS = 60  # a sparkline wider than this merges neighbouring bins
# from the IDC to the cloud
POINT_ORDER = {"switch-local": 0, "switch-line": 1, "replica": 2, "host-delivered": 3,
               "host-sent": 4}  # fmt: skip
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(text: str, what: str) -> float:
    """ "10s", "5m", "1.5h", "2d" or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ValidationError(f"{what} {text!r}: a duration such as 10s, 5m, 2h or 1d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def since_epoch(text: str, now: float) -> float:
    """A duration back from now ("15m"), epoch seconds, or an ISO 8601 time (UTC if it
    names no zone)."""
    t = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?[smhd]", t):
        return now - seconds(t, "--since")
    try:
        value = float(t)
        if value > 1e9:
            return value
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t)
    except ValueError as exc:
        raise ValidationError(
            f"--since {text!r}: a duration back from now (15m), epoch seconds, or an ISO "
            "time (2026-12-03T04:00:00Z)"
        ) from exc
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def sparkline(values: list[int], width: int = MAX_COLUMNS) -> str:
    """One character per bin (neighbours summed when there are more than `width`), scaled
    to the largest; a bin with nothing is a space, so that silence shows."""
    if len(values) > width:
        step = -(-len(values) // width)
        values = [sum(values[i : i + step]) for i in range(0, len(values), step)]
    top = max(values, default=0)
    if top <= 0:
        return " " * len(values)
    out = []
    for v in values:
        out.append(" " if v <= 0 else BARS[min(len(BARS) - 1, (v * len(BARS) - 1) // top)])
    return "".join(out)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def switch_samples(
    record: Any, prefixes: set[str] | None, since: float, until: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """The lab sites' switch samples in [since, until) as rows for `bin_samples`, and the
    sites read. `prefixes` None: every range the switches count."""
    from yunhan.lab import idc, netconfsw

    rows: list[dict[str, Any]] = []
    read: list[str] = []
    for name, site in sorted(idc.load_sites(record).items()):
        path = netconfsw.paths(site.spec, record.data_dir).traffic
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        read.append(name)
        for start, end, point, prefix, direction, packets, nbytes in data.get("samples", []):
            if prefixes is not None and prefix not in prefixes:
                continue
            rows.append(
                {
                    "prefix": prefix,
                    "point": f"switch-{point}",
                    "direction": direction,
                    "packets": packets,
                    "bytes": nbytes,
                    "start": start,
                    "end": end,
                    "source": f"switch:{name}",
                }
            )
    return rows, read


def stats(ctx: Ctx) -> None:
    c = ctx.client()
    now = time.time()
    window = seconds(ctx["window"], "--window")
    since = since_epoch(ctx["since"], now) if ctx["since"] else now - 600.0
    if since >= now:
        raise ValidationError("--since is in the future")
    params: dict[str, Any] = {"since": since, "until": now, "window": window}
    if ctx["prefix"]:
        params["prefix"] = ctx["prefix"]
    if ctx["vpc"]:
        params["vpc"] = ctx["vpc"]
    ans = c.get("/v1/hybrid/stats", **params)
    series: list[dict[str, Any]] = list(ans["series"])
    prefixes: set[str] | None = {ctx["prefix"]} if ctx["prefix"] else None
    if ctx["vpc"]:
        subnets = c.items("/v1/subnets", vpc=ctx["vpc"])
        idc_cidrs = {s["spec"]["cidr"] for s in subnets if s["spec"].get("location")}
        prefixes = idc_cidrs if prefixes is None else prefixes & idc_cidrs
    note = ""
    try:
        from yunhan.cli.trace import lab_record

        record = lab_record(c.endpoint, ctx["state_dir"], "the IDC switch's counters")
        found, sites = switch_samples(record, prefixes, since, now)
        series += [x.view() for x in bin_samples(found, since, now, window)]
        if not sites:
            note = "no IDC switch keeps counters in this lab region"
    except Exception as exc:  # the switch side is the lab's: say why it is missing
        note = f"IDC switch not read: {exc}"
    series.sort(key=lambda s: (_net(s["prefix"]), POINT_ORDER.get(s["point"], 9), s["direction"]))
    f = fmt(ctx)
    body = {**ans, "series": series, "switch": note or "read"}
    if f in ("json", "yaml"):
        views.print_one("hybrid_stats", body, f)
        return
    start = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M:%S")
    end = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%S")
    nbins = len(series[0]["bytes"]) if series else 0
    echo(f"{start} - {end} UTC, bins of {window:g} s (in: to the prefix, out: from it)")
    if not series:
        echo("no traffic counted for IDC prefixes in this range")
    table = [["PREFIX", "POINT", "DIR", "PACKETS", "BYTES", "BYTES PER BIN"]]
    for s in series:
        table.append(
            [
                s["prefix"],
                s["point"],
                s["direction"],
                str(s["total_packets"]),
                human_bytes(int(s["total_bytes"])),
                sparkline(list(s["bytes"])),
            ]
        )
    if series:
        widths = [max(len(r[i]) for r in table) for i in range(5)]
        for r in table:
            echo("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
        if nbins > MAX_COLUMNS:
            echo(f"({nbins} bins drawn in {MAX_COLUMNS} columns or fewer)")
    if note:
        echo(f"note: {note}")


def _net(prefix: str) -> tuple[int, ...]:
    addr, _, length = prefix.partition("/")
    return (*(int(x) for x in addr.split(".")), int(length or 32))
