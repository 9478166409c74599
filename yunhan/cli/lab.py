"""`yunhan up|down|status|sweep`: the all-in-one lab region on this machine (yunhan.lab)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from yunhan.cli import config, views
from yunhan.errors import Forbidden
from yunhan.lab import region
from yunhan.lab.spec import RegionSpec

StateDirOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", help="region state (env YUNHAN_HOME, default /var/lib/yunhan)"),
]


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Forbidden(f"`yunhan {what}` needs root (network namespaces); run it with sudo")


class _Stop(KeyboardInterrupt):
    """SIGTERM during start-up: unwinds like Ctrl-C so that `up` removes what it built."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop()


def register(app: typer.Typer) -> None:
    """Add the lab commands to the `yunhan` app."""
    from yunhan.cli.main import handled

    @app.command("up")
    @handled
    def up(
        zones: Annotated[int, typer.Option("--zones", help="availability zones")] = 2,
        hosts_per_zone: Annotated[int, typer.Option("--hosts-per-zone", help="hosts per zone")] = 2,
        mtu: Annotated[int, typer.Option("--mtu", help="underlay MTU")] = 1500,
        detach: Annotated[
            bool, typer.Option("--detach", "-d", help="return once ready; `yunhan down` stops it")
        ] = False,
        state_dir: StateDirOpt = None,
        prefix: Annotated[
            str | None, typer.Option("--prefix", help="region prefix (default yh + 4 hex)")
        ] = None,
        timeout: Annotated[float, typer.Option("--timeout", help="start-up deadline (s)")] = 90.0,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan only")] = False,
    ) -> None:
        """Bring up a lab region: zones, hosts, API server and agents, on this machine.

        In the foreground, Ctrl-C (or SIGTERM) takes it all down again.
        """
        spec = RegionSpec.build(prefix, zones, hosts_per_zone, mtu)
        if dry_run:
            typer.echo(spec.render())
            return
        _need_root("up")
        typer.echo(spec.render())
        old = signal.signal(signal.SIGTERM, _raise_stop)
        try:
            handle = region.up(spec, state_dir, detach=detach, timeout=timeout)
        except KeyboardInterrupt:
            typer.echo("interrupted; everything started was removed", err=True)
            raise typer.Exit(130) from None
        finally:
            signal.signal(signal.SIGTERM, old)
        path = config.save_file(handle.endpoint, handle.token)
        if handle.reused:
            typer.echo(
                f"region {handle.prefix} is already up (API {handle.endpoint}); nothing to do"
            )
            return
        typer.echo(
            f"region {handle.prefix} is up: API {handle.endpoint}, "
            f"{len(spec.hosts)} agents healthy; admin credentials in {path}"
        )
        if detach:
            typer.echo("`yunhan status` shows it, `yunhan down` removes it")
            return
        typer.echo("Ctrl-C (or SIGTERM) takes the region down")
        _supervise(handle)

    def _supervise(handle: region.RegionHandle) -> None:
        stop = threading.Event()

        def _set(signum: int, frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGINT, _set)
        signal.signal(signal.SIGTERM, _set)
        reported: set[str] = set()
        record_file = handle.state_dir / region.RECORD
        while not stop.wait(1.0):
            for p in handle.dead():
                if p.name not in reported:
                    reported.add(p.name)
                    typer.echo(f"warning: {p.role} {p.name} exited; see {p.log}", err=True)
            if not record_file.exists():
                typer.echo("the region was taken down (`yunhan down`)")
                config.forget_endpoint(handle.endpoint)
                return
        typer.echo("taking the region down …")
        removed = region.down(handle.state_dir)
        config.forget_endpoint(handle.endpoint)
        typer.echo(f"region {handle.prefix} is down: removed {removed.summary()}")

    @app.command("down")
    @handled
    def down(state_dir: StateDirOpt = None) -> None:
        """Stop the lab region and remove all of it (namespaces, processes, state)."""
        _need_root("down")
        record = region.RegionRecord.load(Path(state_dir or region.default_state_dir()))
        removed = region.down(state_dir)
        if record is None:
            typer.echo("no region is up here; nothing to do")
            return
        config.forget_endpoint(record.endpoint)
        typer.echo(f"region {record.prefix} is down: removed {removed.summary()}")

    @app.command("sweep")
    @handled
    def sweep(state_dir: StateDirOpt = None) -> None:
        """Remove what crashed regions left behind (never touches a live region)."""
        _need_root("sweep")
        result = region.sweep(state_dir=state_dir)
        if not result:
            typer.echo("nothing to sweep")
        for prefix, removed in result.items():
            typer.echo(f"swept {prefix}: {removed.summary()}")

    @app.command("status")
    @handled
    def status(
        state_dir: StateDirOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """Show the lab region: processes, zones, hosts, agent health and revisions."""
        st = region.status(state_dir)
        if st is None:
            where = state_dir or region.default_state_dir()
            if as_json:
                typer.echo("null")
            else:
                typer.echo(f"no region is up in {where} (`yunhan up --detach` starts one)")
            return
        _print_status(st, as_json)


def _print_status(st: region.RegionStatus, as_json: bool) -> None:
    rec = st.record
    names = views.Names(None)
    zone_names = {z["id"]: z["name"] for z in st.zones}
    hosts = []
    for h in st.hosts:
        row = views.host_row(h, names)
        row["zone"] = zone_names.get(row["zone_id"], row["zone"])
        hosts.append(row)
    alive = {p.name: ok for p, ok in st.processes if p.role == "agent"}
    for row in hosts:
        row["agent_process"] = alive.get(row["name"])
    procs = [
        {"role": p.role, "name": p.name, "pid": p.pid, "alive": ok, "log": p.log}
        for p, ok in st.processes
    ]
    if as_json:
        out: dict[str, Any] = {
            "prefix": rec.prefix,
            "endpoint": rec.endpoint,
            "state_dir": rec.state_dir,
            "detached": rec.detached,
            "mtu": rec.spec.get("mtu"),
            "processes": procs,
            "api_error": st.api_error,
            "zones": [views.zone_row(z, names) for z in st.zones],
            "hosts": hosts,
        }
        typer.echo(json.dumps(out, indent=2))
        return
    con = views.console()
    mode = "detached" if rec.detached else "foreground"
    typer.echo(f"region {rec.prefix} ({mode}), API {rec.endpoint}, state {rec.state_dir}")
    con.print(views.table(None, ("role", "name", "pid", "alive", "log"), procs))
    if st.api_error:
        typer.echo(f"API not answering: {st.api_error}")
        return
    typer.echo("")
    con.print(
        views.table(None, ("name", "cidr", "id"), [views.zone_row(z, names) for z in st.zones])
    )
    typer.echo("")
    cols = (
        "name",
        "zone",
        "ip",
        "agent_process",
        "healthy",
        "desired_revision",
        "applied_revision",
    )
    con.print(views.table(None, (*cols, "error"), hosts))
