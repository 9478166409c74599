"""`yunhan up|down|status|sweep`: the all-in-one lab region on this machine (yunhan.lab),
and `yunhan lab idc add|remove|list`: simulated IDC sites of a running region.

yunhan.lab.region (and what it imports) is loaded only when one of these commands runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yunhan.cli import config, views
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo, warn
from yunhan.errors import Forbidden, ValidationError

if TYPE_CHECKING:
    from yunhan.lab.region import RegionHandle, RegionStatus

STATE_DIR = Opt(
    ("--state-dir",),
    "state_dir",
    "region state (env YUNHAN_HOME, default /var/lib/yunhan)",
    kind=Path,
)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Forbidden(f"`yunhan {what}` needs root (network namespaces); run it with sudo")


class _Stop(KeyboardInterrupt):
    """SIGTERM during start-up: unwinds like Ctrl-C so that `up` removes what it built."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop()


def up(ctx: Ctx) -> None:
    from yunhan.cli.progress import Progress
    from yunhan.lab import region
    from yunhan.lab.spec import RegionSpec

    spec = RegionSpec.build(
        ctx["prefix"], ctx["zones"], ctx["hosts_per_zone"], ctx["mtu"], ctx["datapath"]
    )
    if ctx["dry_run"]:
        echo(spec.render())
        return
    _need_root("up")
    echo(spec.render())
    import signal

    old = signal.signal(signal.SIGTERM, _raise_stop)
    what = f"starting region {spec.prefix}: API server and {len(spec.hosts)} agents"
    try:
        with Progress(what):
            handle = region.up(
                spec,
                ctx["state_dir"],
                detach=ctx["detach"],
                timeout=ctx["timeout"],
                token=_admin_token(ctx["state_dir"]),
            )
    except KeyboardInterrupt:
        warn("interrupted; everything started was removed")
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    if handle.revived:
        agents = "agents healthy" if handle.token else "agents running"
        echo(
            f"region {handle.prefix} revived: API {handle.endpoint}, {len(spec.hosts)} {agents}; "
            "its resources and instances were kept"
        )
        return
    if handle.reused:
        # The region keeps no admin token: the config the first `up` wrote still holds it.
        echo(f"region {handle.prefix} is already up (API {handle.endpoint}); nothing to do")
        return
    path = config.save_file(handle.endpoint, handle.token)
    echo(
        f"region {handle.prefix} is up: API {handle.endpoint}, "
        f"{len(spec.hosts)} agents healthy; admin credentials in {path}"
    )
    echo(f"web console: {handle.endpoint}/console (sign in with a token; docs/console.md)")
    if ctx["detach"]:
        echo("`yunhan status` shows it, `yunhan down` removes it")
        return
    echo("Ctrl-C (or SIGTERM) takes the region down")
    _supervise(handle)


def _supervise(handle: RegionHandle) -> None:
    import signal
    import threading

    from yunhan.cli.progress import Progress
    from yunhan.lab import region

    stop = threading.Event()

    def _set(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _set)
    signal.signal(signal.SIGTERM, _set)
    seen: dict[str, tuple[int, str]] = {}
    record_file = handle.state_dir / region.RECORD
    while not stop.wait(1.0):
        for p in handle.record.supervised():
            now = (p.restarts, p.state)
            if seen.setdefault(p.name, now) != now:
                seen[p.name] = now
                if p.state == "failed":
                    warn(f"warning: {p.role} {p.name} {p.last_exit}: a crash loop, left down "
                         f"(`yunhan up --detach` retries); see {p.log}")  # fmt: skip
                elif p.state == "running":
                    warn(f"{p.role} {p.name} {p.last_exit}; restarted ({p.restarts})")
        if handle.popens["supervisor"].poll() is not None and "" not in seen:
            seen[""] = (0, "")
            warn("warning: the region's supervisor exited; `yunhan up --detach` revives it")
        if not record_file.exists():
            echo("the region was taken down (`yunhan down`)")
            config.forget_endpoint(handle.endpoint)
            return
    echo("taking the region down …")
    with Progress(f"taking region {handle.prefix} down"):
        removed = region.down(handle.state_dir)
    config.forget_endpoint(handle.endpoint)
    echo(f"region {handle.prefix} is down: removed {removed.summary()}")


def down(ctx: Ctx) -> None:
    from yunhan.cli.progress import Progress
    from yunhan.lab import region

    _need_root("down")
    state_dir = ctx["state_dir"]
    record = region.RegionRecord.load(Path(state_dir or region.default_state_dir()))
    what = f"taking region {record.prefix} down" if record else "looking for a region"
    with Progress(what):
        removed = region.down(state_dir)
    if record is None:
        echo("no region is up here; nothing to do")
        return
    config.forget_endpoint(record.endpoint)
    echo(f"region {record.prefix} is down: removed {removed.summary()}")


def sweep(ctx: Ctx) -> None:
    from yunhan.lab import region

    _need_root("sweep")
    result = region.sweep(state_dir=ctx["state_dir"])
    if not result:
        echo("nothing to sweep")
    for prefix, removed in result.items():
        echo(f"swept {prefix}: {removed.summary()}")


def _admin_token(state_dir: Path | None) -> str | None:
    """The admin token `yunhan up` wrote to the CLI config, if it is this region's."""
    from yunhan.lab import region

    record = region.RegionRecord.load(Path(state_dir or region.default_state_dir()).absolute())
    try:
        creds = config.resolve()
    except ValidationError:
        return None
    if record is None or creds.endpoint.rstrip("/") != record.endpoint.rstrip("/"):
        return None
    return creds.token


def lab_supervisor(ctx: Ctx) -> None:
    from yunhan.lab import supervisor

    supervisor.main(ctx["state_file"])


def status(ctx: Ctx) -> None:
    from yunhan.lab import region

    fmt = views.output_format(ctx["output"], ctx["as_json"])
    st = region.status(ctx["state_dir"], _admin_token(ctx["state_dir"]))
    if st is None:
        where = ctx["state_dir"] or region.default_state_dir()
        if fmt in ("json", "yaml"):
            echo("null")
        else:
            echo(f"no region is up in {where} (`yunhan up --detach` starts one)")
        return
    _print_status(st, fmt)


def _idc_token(ctx: Ctx) -> str:
    token = (
        ctx.args.get("token") or os.environ.get("YUNHAN_TOKEN") or _admin_token(ctx["state_dir"])
    )
    if not token:
        raise Forbidden(
            "no admin token for this region: `yunhan up` wrote it to the CLI config; "
            "give it with --token or YUNHAN_TOKEN"
        )
    return str(token)


def idc_add(ctx: Ctx) -> None:
    from yunhan.cli.progress import Progress
    from yunhan.lab import idc
    from yunhan.net import frr

    _need_root("lab idc add")
    secret = None
    if ctx["md5_secret_file"] is not None:
        # From a file, never the command line (`ps`, shell history); its first line.
        path = ctx["md5_secret_file"]
        try:
            lines = Path(path).read_text().strip().splitlines()
        except OSError as exc:
            raise ValidationError(f"--md5-secret-file {path}: {exc.strerror}") from exc
        secret = lines[0].strip() if lines else ""
        if not secret:
            raise ValidationError(f"--md5-secret-file {path} is empty")
        frr.check_secret(secret)
    token = _idc_token(ctx)
    with Progress(f"building IDC site {ctx['name']}"):
        site = idc.add(
            ctx["name"],
            ctx["cidrs"],
            token=token,
            servers=ctx["servers"],
            asn=ctx["asn"],
            md5_secret=secret,
            state_dir=ctx["state_dir"],
        )
    echo(site.render())
    echo(
        f"IDC site {site.name} is up and registered: replicas reach its router at "
        f"{site.router_ip} (AS {site.asn}) on line {site.line_cidr}"
    )


def idc_remove(ctx: Ctx) -> None:
    from yunhan.lab import idc

    _need_root("lab idc remove")
    site, warning = idc.remove(
        ctx["name"], token=_idc_token(ctx), force=ctx["force"], state_dir=ctx["state_dir"]
    )
    if warning:
        warn(f"warning: {warning}")
    echo(f"IDC site {site.name} removed ({len(site.namespaces)} namespaces)")


def idc_list(ctx: Ctx) -> None:
    from yunhan.lab import idc

    fmt = views.output_format(ctx["output"], ctx["as_json"])
    rows = []
    for rec, st in idc.list_sites(ctx["state_dir"]):
        s = rec.spec
        up = [x for x in st.sessions if x.established]
        rows.append(
            {
                "name": s.name,
                "asn": s.asn,
                "cidrs": list(s.cidrs),
                "router_ip": s.router_ip,
                "line": f"{s.line_cidr} vni {s.line_vni:#x}",
                "vtep": s.wan_ip,
                "md5": s.md5,
                "frr": "running" if st.frr_running else "down",
                "sessions": f"{len(up)}/{len(st.sessions)} up",
                "peers": [x.peer for x in up],
                "servers": f"{st.servers_up}/{len(s.servers)}",
                "md5_failures": st.md5_failures,
                "netns": s.netns,
            }
        )
    if fmt in ("json", "yaml"):
        views.print_list("idc site", rows, fmt)
        return
    if not rows:
        echo("no IDC sites (`yunhan lab idc add NAME --cidr CIDR`)")
        return
    cols: tuple[str, ...] = ("name", "asn", "cidrs", "router_ip", "line", "frr", "sessions")
    cols += ("servers",)
    if fmt == "wide":
        cols = (*cols, "vtep", "md5", "md5_failures", "peers", "netns")
    echo(views.table(cols, rows))


LAB = Group(
    "lab",
    "Extras of the lab region on this machine: simulated IDC sites.",
    (
        Group(
            "idc",
            "Simulated IDC sites: a BGP router (FRR), servers and a dedicated line.\n\n"
            "A site is part of the running region (`yunhan down` removes it) and is "
            "registered with the control plane, so that subnets can be located in it and "
            "hybrid gateways can join it.",
            (
                Cmd(
                    "add",
                    "Add an IDC site to the running lab region (again: complete it).",
                    idc_add,
                    (
                        Arg("name", "site name (1-12 lowercase letters and digits)"),
                        Opt(
                            ("--cidr",),
                            "cidrs",
                            "a range of the site (repeat for more)",
                            many=True,
                            required=True,
                            metavar="CIDR",
                        ),
                        Opt(("--servers",), "servers", "servers in each range (from .10)", int, 2),
                        Opt(("--asn",), "asn", "the site router's AS number", int, 65001),
                        Opt(
                            ("--md5-secret-file",),
                            "md5_secret_file",
                            "TCP MD5 secret of the BGP sessions (first line of the file)",
                            kind=Path,
                        ),
                        STATE_DIR,
                    ),
                ),
                Cmd(
                    "remove",
                    "Remove an IDC site (refused while the control plane uses it).",
                    idc_remove,
                    (
                        Arg("name", "site name"),
                        Opt(("--force",), "force", "remove it from the lab even if in use", bool),
                        STATE_DIR,
                    ),
                ),
                Cmd(
                    "list",
                    "List the region's IDC sites: router, line, BGP sessions, servers.",
                    idc_list,
                    (
                        STATE_DIR,
                        Opt(("-o", "--output"), "output", "output format", choices=views.FORMATS),
                        Opt(("--json",), "as_json", "print JSON (same as -o json)", bool),
                    ),
                ),
            ),
        ),
    ),
)

COMMANDS = (
    Cmd(
        "up",
        "Bring up a lab region: zones, hosts, API server and agents, on this machine.\n\n"
        "In the foreground, Ctrl-C (or SIGTERM) takes it all down again.",
        up,
        (
            Opt(("--zones",), "zones", "availability zones", int, 2),
            Opt(("--hosts-per-zone",), "hosts_per_zone", "hosts per zone", int, 2),
            Opt(("--mtu",), "mtu", "underlay MTU", int, 1500),
            Opt(
                ("--datapath",),
                "datapath",
                "the agents' data path: fast (tc-BPF beside the kernel path, where the host "
                "supports it) or kernel (docs/datapath.md)",
                choices=("fast", "kernel"),
                default="fast",
            ),
            Opt(("--detach", "-d"), "detach", "return once ready; `yunhan down` stops it", bool),
            STATE_DIR,
            Opt(("--prefix",), "prefix", "region prefix (default yh + 4 hex)"),
            Opt(("--timeout",), "timeout", "start-up deadline (s)", float, 90.0),
            Opt(("--dry-run",), "dry_run", "print the plan only", bool),
        ),
    ),
    Cmd(
        "down",
        "Stop the lab region and remove all of it (namespaces, processes, state).",
        down,
        (STATE_DIR,),
    ),
    Cmd(
        "sweep",
        "Remove what crashed regions left behind (never touches a live region).",
        sweep,
        (STATE_DIR,),
    ),
    Cmd(
        "lab-supervisor",
        "Run a lab region's supervisor (started by `yunhan up`).",
        lab_supervisor,
        (Opt(("--state-file",), "state_file", "its state file", Path, required=True),),
        hidden=True,
    ),
    Cmd(
        "status",
        "Show the lab region: processes, zones, hosts, agent health and revisions.",
        status,
        (
            STATE_DIR,
            Opt(("-o", "--output"), "output", "output format", choices=views.FORMATS),
            Opt(("--json",), "as_json", "print JSON (same as -o json)", bool),
        ),
    ),
    LAB,
)


def _print_status(st: RegionStatus, fmt: str) -> None:
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
        {
            "role": p.role,
            "name": p.name,
            "pid": p.pid,
            "alive": ok,
            "state": p.state if ok or p.state != "running" else "dead",
            "restarts": p.restarts,
            "last_exit": p.last_exit or None,
            "log": p.log,
        }
        for p, ok in st.processes
    ]
    if fmt in ("json", "yaml"):
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
        views.print_one("region", out, fmt)
        return
    mode = "detached" if rec.detached else "foreground"
    echo(f"region {rec.prefix} ({mode}), API {rec.endpoint}, state {rec.state_dir}")
    echo(views.table(("role", "name", "pid", "state", "restarts", "last_exit", "log"), procs))
    if any(p.role == "supervisor" and not ok for p, ok in st.processes):
        echo("the region's supervisor is not running: nothing restarts a process that dies; "
             "`yunhan up --detach` revives the region")  # fmt: skip
    elif any(p.role not in ("up", "supervisor") and p.state == "failed" for p, _ in st.processes):
        echo("a process is left down after a crash loop (see its log); "
             "`yunhan up --detach` tries it again")  # fmt: skip
    if st.api_error:
        echo(f"API not answering: {st.api_error}")
        return
    echo()
    echo(views.table(("name", "cidr", "id"), [views.zone_row(z, names) for z in st.zones]))
    echo()
    cols = (
        "name",
        "zone",
        "ip",
        "agent_process",
        "healthy",
        "desired_revision",
        "applied_revision",
    )
    echo(views.table((*cols, "error"), hosts))
