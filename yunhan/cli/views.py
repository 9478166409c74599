"""How resources look on the terminal: flat rows for tables and for `--json`.

A row is a plain dict with at least `id` and `name`, plus what a script needs without a
second lookup: references by name (`vpc`, `subnet`, `zone`) next to their ids (`vpc_id`,
…), and the interesting status fields (`ip`, `host`, `phase`, …). The same row feeds the
rich table (a chosen subset of columns) and `--json` (all of it), so they never disagree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from yunhan.cli.client import Client
from yunhan.errors import YunhanError

Row = dict[str, Any]


class Names:
    """id -> name for the kinds rows refer to, fetched once per command and only if needed."""

    _PATHS = {"vpc": "/v1/vpcs", "subnet": "/v1/subnets", "zone": "/v1/zones"}

    def __init__(self, client: Client | None) -> None:
        self._client = client
        self._cache: dict[str, dict[str, str]] = {}

    def of(self, kind: str, ref: str | None) -> str | None:
        if ref is None:
            return None
        if kind not in self._cache:
            self._cache[kind] = {}
            if self._client is not None:
                try:
                    items = self._client.get(self._PATHS[kind])
                    self._cache[kind] = {i["id"]: i["name"] for i in items}
                except YunhanError:
                    pass  # a name we cannot see is shown as its id
        return self._cache[kind].get(ref, ref)


def _spec(res: Row) -> Row:
    return res.get("spec") or {}


def _status(res: Row) -> Row:
    return res.get("status") or {}


def vpc_row(res: Row, names: Names) -> Row:
    return {
        "id": res["id"],
        "name": res["name"],
        "cidrs": list(_spec(res).get("cidrs") or []),
        "vni": _status(res).get("vni"),
        "revision": res.get("revision"),
    }


def subnet_row(res: Row, names: Names) -> Row:
    st = _status(res)
    vpc = _spec(res).get("vpc")
    return {
        "id": res["id"],
        "name": res["name"],
        "vpc": names.of("vpc", vpc),
        "vpc_id": vpc,
        "cidr": _spec(res).get("cidr"),
        "gateway": st.get("gateway"),
        "available": st.get("available"),
        "revision": res.get("revision"),
    }


def instance_row(res: Row, names: Names) -> Row:
    sp, st = _spec(res), _status(res)
    return {
        "id": res["id"],
        "name": res["name"],
        "subnet": names.of("subnet", sp.get("subnet")),
        "subnet_id": sp.get("subnet"),
        "vpc": names.of("vpc", st.get("vpc")),
        "vpc_id": st.get("vpc"),
        "zone": names.of("zone", sp.get("zone")),
        "zone_id": sp.get("zone"),
        "ip": st.get("ip"),
        "mac": st.get("mac"),
        "host": st.get("host"),
        "phase": st.get("phase"),
        "message": st.get("message"),
        "command": sp.get("command"),
        "netns": st.get("netns"),
        "uts": st.get("uts"),
        "revision": res.get("revision"),
    }


def zone_row(res: Row, names: Names) -> Row:
    return {
        "id": res["id"],
        "name": res["name"],
        "cidr": _spec(res).get("underlay_cidr"),
        "revision": res.get("revision"),
    }


def host_row(res: Row, names: Names) -> Row:
    sp, st = _spec(res), _status(res)
    return {
        "id": res["id"],
        "name": res["name"],
        "zone": names.of("zone", sp.get("zone")),
        "zone_id": sp.get("zone"),
        "ip": sp.get("underlay_ip"),
        "mtu": sp.get("mtu"),
        "healthy": st.get("healthy"),
        "vtep_index": st.get("vtep_index"),
        "desired_revision": st.get("desired_revision"),
        "applied_revision": st.get("applied_revision"),
        "heartbeat_at": st.get("heartbeat_at"),
        "error": st.get("error"),
    }


def project_row(res: Row, names: Names) -> Row:
    return {"id": res["id"], "name": res["name"]}


ROWS: dict[str, Callable[[Row, Names], Row]] = {
    "vpc": vpc_row,
    "subnet": subnet_row,
    "instance": instance_row,
    "zone": zone_row,
    "host": host_row,
    "project": project_row,
}

COLUMNS: dict[str, tuple[str, ...]] = {
    "vpc": ("name", "id", "cidrs", "vni"),
    "subnet": ("name", "id", "vpc", "cidr", "gateway", "available"),
    "instance": ("name", "id", "subnet", "zone", "ip", "host", "phase"),
    "zone": ("name", "id", "cidr"),
    "host": ("name", "zone", "ip", "healthy", "desired_revision", "applied_revision", "error"),
    "project": ("name", "id"),
}


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def console() -> Console:
    # Plain output when piped; never wrap ids or addresses mid-word.
    return Console(soft_wrap=True, highlight=False)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Row]) -> Table:
    t = Table(title=title, show_edge=False, header_style="bold", pad_edge=False, box=None)
    for c in columns:
        t.add_column(c.replace("_revision", "").upper() if c.endswith("_revision") else c.upper())
    for r in rows:
        t.add_row(*(_cell(r.get(c)) for c in columns))
    return t


def print_list(kind: str, rows: Sequence[Row], as_json: bool) -> None:
    """A list: a JSON array of row objects, or a table (a note when empty)."""
    if as_json:
        typer.echo(json.dumps(list(rows), indent=2))
    elif not rows:
        typer.echo(f"no {kind}s")
    else:
        console().print(table(None, COLUMNS[kind], rows))


def print_one(kind: str, row: Row, as_json: bool) -> None:
    """One object: JSON, or `field  value` lines."""
    if as_json:
        typer.echo(json.dumps(row, indent=2))
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        typer.echo(f"{key:<{width}}  {_cell(value)}")
