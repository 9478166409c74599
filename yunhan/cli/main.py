"""The `yunhan` command: resources over the HTTP API, and the lab region on this machine.

Every resource argument takes a name or an id. Output is a table for people and, with
`--json`, JSON objects for scripts (see yunhan.cli.views). A user error prints one line
("error: …") on stderr and exits 1; `--wait` makes a write return only once every host it
affects has applied it (`GET /v1/converged`).
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from yunhan.cli import config, views
from yunhan.cli.client import Client
from yunhan.errors import TimedOut, ValidationError, YunhanError

P = ParamSpec("P")
R = TypeVar("R")


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Print a YunhanError as one line on stderr and exit 1 (no traceback for user errors)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except YunhanError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None

    return wrapper


app = typer.Typer(
    name="yunhan",
    help="Yunhan: a cloud operating system. Manage VPCs, subnets and instances, "
    "and run an all-in-one lab region on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass
class _Options:
    endpoint: str | None = None
    token: str | None = None


_opts = _Options()


@app.callback()
def _root(
    endpoint: Annotated[
        str | None,
        typer.Option(help="API endpoint (env YUNHAN_ENDPOINT, else ~/.config/yunhan/config.json)"),
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="bearer token (env YUNHAN_TOKEN, else the config file)")
    ] = None,
) -> None:
    _opts.endpoint, _opts.token = endpoint, token


def client() -> Client:
    """A client for the configured endpoint (flags, then environment, then config file)."""
    creds = config.resolve(_opts.endpoint, _opts.token)
    return Client(creds.endpoint, creds.token)


JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
WaitOpt = Annotated[
    bool, typer.Option("--wait", help="return once every affected host has applied the change")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds --wait waits at most")]
DEFAULT_WAIT = 120.0


def _wait(c: Client, revision: int | None, wait: bool, timeout: float) -> None:
    if wait:
        if revision is None:
            revision = int(c.get("/v1/revision")["revision"])
        c.wait_converged(int(revision), timeout)


def _after_delete(c: Client, res: dict[str, Any] | None, wait: bool, timeout: float) -> None:
    # A delete answers with the resource carrying the delete's own revision.
    _wait(c, (res or {}).get("revision"), wait, timeout)


def _show(kind: str, c: Client, res: dict[str, Any], as_json: bool) -> None:
    views.print_one(kind, views.ROWS[kind](res, views.Names(c)), as_json)


def _list(kind: str, c: Client, items: list[dict[str, Any]], as_json: bool) -> None:
    names = views.Names(c)
    views.print_list(kind, [views.ROWS[kind](i, names) for i in items], as_json)


# -- vpc --------------------------------------------------------------------------------------

vpc_app = typer.Typer(
    help="VPCs: private networks with one or more CIDR blocks", no_args_is_help=True
)
app.add_typer(vpc_app, name="vpc")


@vpc_app.command("create")
@handled
def vpc_create(
    name: str,
    cidr: Annotated[list[str], typer.Option("--cidr", help="a CIDR block (repeatable)")],
    wait: WaitOpt = False,
    timeout: TimeoutOpt = DEFAULT_WAIT,
    as_json: JsonOpt = False,
) -> None:
    """Create a VPC, e.g. `yunhan vpc create prod --cidr 10.0.0.0/16`."""
    with client() as c:
        res = c.post("/v1/vpcs", {"name": name, "cidrs": cidr})
        _wait(c, res.get("revision"), wait, timeout)
        _show("vpc", c, res, as_json)


@vpc_app.command("list")
@handled
def vpc_list(as_json: JsonOpt = False) -> None:
    """List the project's VPCs."""
    with client() as c:
        _list("vpc", c, c.get("/v1/vpcs"), as_json)


@vpc_app.command("add-cidr")
@handled
def vpc_add_cidr(
    vpc: str,
    cidr: str,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = DEFAULT_WAIT,
    as_json: JsonOpt = False,
) -> None:
    """Add a CIDR block to a VPC."""
    with client() as c:
        res = c.post(f"/v1/vpcs/{vpc}/cidrs", {"cidr": cidr})
        _wait(c, res.get("revision"), wait, timeout)
        _show("vpc", c, res, as_json)


@vpc_app.command("remove-cidr")
@handled
def vpc_remove_cidr(
    vpc: str,
    cidr: str,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = DEFAULT_WAIT,
    as_json: JsonOpt = False,
) -> None:
    """Remove a CIDR block from a VPC (refused while a subnet lies in it)."""
    with client() as c:
        res = c.delete(f"/v1/vpcs/{vpc}/cidrs", cidr=cidr)
        _wait(c, res.get("revision"), wait, timeout)
        _show("vpc", c, res, as_json)


def _deleted(kind: str, c: Client, res: dict[str, Any] | None, as_json: bool) -> None:
    if res is None:
        return
    if as_json:
        _show(kind, c, res, True)
    else:
        typer.echo(f"deleted {kind} {res.get('name')} ({res.get('id')})")


# Module level: annotations are strings (PEP 563) that typer evaluates in module globals.
RefArg = Annotated[str, typer.Argument(metavar="NAME|ID", help="its name or id")]


def _show_and_delete(sub: typer.Typer, kind: str, collection: str, delete_help: str) -> None:
    """Register `show` and `delete` for one resource kind: the same two commands for all."""

    @sub.command("show", help=f"Show one {'VPC' if kind == 'vpc' else kind}.")
    @handled
    def show(
        ref: RefArg,
        as_json: JsonOpt = False,
    ) -> None:
        with client() as c:
            _show(kind, c, c.get(f"/v1/{collection}/{ref}"), as_json)

    @sub.command("delete", help=delete_help)
    @handled
    def delete(
        ref: RefArg,
        wait: WaitOpt = False,
        timeout: TimeoutOpt = DEFAULT_WAIT,
        as_json: JsonOpt = False,
    ) -> None:
        with client() as c:
            res = c.delete(f"/v1/{collection}/{ref}")
            _after_delete(c, res, wait, timeout)
            _deleted(kind, c, res, as_json)


# -- subnet -----------------------------------------------------------------------------------

subnet_app = typer.Typer(
    help="Subnets: CIDRs inside a VPC, spanning all zones", no_args_is_help=True
)
app.add_typer(subnet_app, name="subnet")
_show_and_delete(vpc_app, "vpc", "vpcs", "Delete a VPC (refused while it has subnets).")
_show_and_delete(
    subnet_app, "subnet", "subnets", "Delete a subnet (refused while it has instances)."
)


@subnet_app.command("create")
@handled
def subnet_create(
    name: str,
    vpc: Annotated[str, typer.Option("--vpc", help="the VPC (name or id)")],
    cidr: Annotated[str, typer.Option("--cidr", help="inside one of the VPC's blocks")],
    wait: WaitOpt = False,
    timeout: TimeoutOpt = DEFAULT_WAIT,
    as_json: JsonOpt = False,
) -> None:
    """Create a subnet, e.g. `yunhan subnet create web --vpc prod --cidr 10.0.1.0/24`."""
    with client() as c:
        res = c.post("/v1/subnets", {"name": name, "vpc": vpc, "cidr": cidr})
        _wait(c, res.get("revision"), wait, timeout)
        _show("subnet", c, res, as_json)


@subnet_app.command("list")
@handled
def subnet_list(
    vpc: Annotated[str | None, typer.Option("--vpc", help="only this VPC's")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the project's subnets."""
    with client() as c:
        _list("subnet", c, c.get("/v1/subnets", vpc=vpc), as_json)


# -- instance ---------------------------------------------------------------------------------

instance_app = typer.Typer(help="Instances: sandboxes with a VPC address", no_args_is_help=True)
app.add_typer(instance_app, name="instance")
_show_and_delete(
    instance_app,
    "instance",
    "instances",
    "Delete an instance (its process is stopped and its address freed).",
)
SETTLED = ("running", "failed")


@instance_app.command("create")
@handled
def instance_create(
    name: str,
    subnet: Annotated[str, typer.Option("--subnet", help="the subnet (name or id)")],
    zone: Annotated[str, typer.Option("--zone", help="the zone to run in (az1, …)")],
    ip: Annotated[str | None, typer.Option("--ip", help="a fixed address in the subnet")] = None,
    command: Annotated[
        str | None,
        typer.Option(
            "--command",
            help="a long-lived command, split into words like a shell would but run without "
            'one, e.g. "sleep infinity"; use "sh -c \'…\'" for pipes',
        ),
    ] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = DEFAULT_WAIT,
    as_json: JsonOpt = False,
) -> None:
    """Create an instance; with --wait, return once it runs and its network is in place."""
    body: dict[str, Any] = {"name": name, "subnet": subnet, "zone": zone}
    if ip is not None:
        body["ip"] = ip
    if command is not None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:  # unbalanced quotes, a trailing backslash
            raise ValidationError(
                f"--command {command!r} cannot be split into words: {exc}; "
                "quote it as a shell would"
            ) from exc
        if not argv:
            raise ValidationError("--command is empty")
        body["command"] = argv
    with client() as c:
        res = c.post("/v1/instances", body)
        if wait:
            deadline = time.monotonic() + timeout
            _wait(c, res.get("revision"), True, timeout)
            res = _wait_settled(c, res, deadline)
        _show("instance", c, res, as_json)


def _wait_settled(c: Client, res: dict[str, Any], deadline: float) -> dict[str, Any]:
    # Converged means the network is in place; the phase is what the agent reported on the
    # instance's process, which arrives with the agent's status right after.
    while True:
        res = c.get(f"/v1/instances/{res['id']}")
        phase = (res.get("status") or {}).get("phase")
        if phase == "failed":
            msg = (res.get("status") or {}).get("message") or "no message"
            raise YunhanError(f"instance {res['name']} failed: {msg}")
        if phase in SETTLED:
            return res
        if time.monotonic() > deadline:
            raise TimedOut(f"instance {res['name']} is still {phase} (host {_host_of(res)})")
        time.sleep(0.2)  # poll interval; the API has no long poll on an instance's phase


def _host_of(res: dict[str, Any]) -> str:
    return str((res.get("status") or {}).get("host") or "none yet")


@instance_app.command("list")
@handled
def instance_list(as_json: JsonOpt = False) -> None:
    """List the project's instances."""
    with client() as c:
        _list("instance", c, c.get("/v1/instances"), as_json)


def exec_argv(res: dict[str, Any], command: list[str]) -> list[str]:
    """The nsenter command line that runs `command` inside the instance, on this machine.

    `status.netns` is a named network namespace (or a path), `status.uts` a path to the
    instance's UTS namespace (its hostname).
    Raises a YunhanError a person can act on when the instance does not run here.
    """
    st = res.get("status") or {}
    name = res.get("name")
    if not command:
        raise ValidationError("no command given: `yunhan instance exec NAME -- CMD …`")
    if st.get("phase") != "running":
        raise ValidationError(
            f"instance {name} is {st.get('phase') or 'unknown'}, not running"
            + (f": {st['message']}" if st.get("message") else "")
        )
    from yunhan.nsexec import netns_path, nsenter_argv

    if not st.get("netns"):
        raise ValidationError(f"instance {name} has no network namespace reported yet")
    netns = netns_path(st["netns"])  # agents report a named netns (ip netns)
    if not netns.exists():
        raise ValidationError(
            f"instance {name} runs on host {st.get('host')}, not on this machine "
            f"({netns} is missing)"
        )
    uts = st.get("uts")
    return nsenter_argv(command, net=netns, uts=uts if uts and os.path.exists(uts) else None)


@instance_app.command(
    "exec",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
@handled
def instance_exec(
    instance: str,
    command: Annotated[list[str] | None, typer.Argument(help="the command, after --")] = None,
) -> None:
    """Run a command inside an instance on this machine: `yunhan instance exec web -- ping …`.

    stdin, stdout, stderr and the exit code are the command's own.
    """
    argv_in = list(command or [])
    if argv_in[:1] == ["--"]:
        # click hands over the "--" separator itself when interspersed args are off
        argv_in = argv_in[1:]
    with client() as c:
        res = c.get(f"/v1/instances/{instance}")
    argv = exec_argv(res, argv_in)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise YunhanError(f"cannot run nsenter: {exc} (run as root)") from exc


# -- zones, hosts, projects -------------------------------------------------------------------

zone_app = typer.Typer(help="Availability zones", no_args_is_help=True)
app.add_typer(zone_app, name="zone")
host_app = typer.Typer(help="Hosts and their agents", no_args_is_help=True)
app.add_typer(host_app, name="host")
project_app = typer.Typer(help="Projects (tenants) and their tokens", no_args_is_help=True)
app.add_typer(project_app, name="project")


@zone_app.command("list")
@handled
def zone_list(as_json: JsonOpt = False) -> None:
    """List the zones."""
    with client() as c:
        _list("zone", c, c.get("/v1/zones"), as_json)


@host_app.command("list")
@handled
def host_list(as_json: JsonOpt = False) -> None:
    """List hosts: zone, underlay address, agent health, desired vs applied revision."""
    with client() as c:
        names = views.Names(c)
        rows = [views.host_row(h, names) for h in c.get("/v1/hosts")]
        netns = _lab_host_netns(c.endpoint)
        for row in rows:
            row["netns"] = netns.get(row["name"])
        views.print_list("host", rows, as_json)


def _lab_host_netns(endpoint: str) -> dict[str, str]:
    """host name -> its namespace, when the endpoint is the lab region of this machine."""
    from yunhan.lab.region import RegionRecord, default_state_dir

    try:
        record = RegionRecord.load(default_state_dir())
        if record is None or record.endpoint.rstrip("/") != endpoint:
            return {}
        return {h.name: h.netns for h in record.region_spec.hosts}
    except (YunhanError, OSError, KeyError, TypeError):
        return {}


@app.command("revision")
@handled
def revision(as_json: JsonOpt = False) -> None:
    """Show the store's current revision (every write moves it)."""
    with client() as c:
        ans = c.get("/v1/revision")
    typer.echo(json.dumps(ans) if as_json else str(ans["revision"]))


@project_app.command("create")
@handled
def project_create(name: str, as_json: JsonOpt = False) -> None:
    """Create a project and print its token (admin only); hand the token to its users."""
    with client() as c:
        ans = c.post("/v1/projects", {"name": name})
    row = {**views.project_row(ans["project"], views.Names(None)), "token": ans["token"]}
    if as_json:
        views.print_one("project", row, True)
    else:
        typer.echo(f"created project {row['name']} ({row['id']}); its token:")
        typer.echo(row["token"])


@project_app.command("token")
@handled
def project_token(project: str) -> None:
    """Issue another token for a project (admin only); the old ones stay valid."""
    with client() as c:
        typer.echo(c.post(f"/v1/projects/{project}/tokens")["token"])


@project_app.command("list")
@handled
def project_list(as_json: JsonOpt = False) -> None:
    """List projects (admin only)."""
    with client() as c:
        _list("project", c, c.get("/v1/projects"), as_json)


# -- lab and daemons --------------------------------------------------------------------------

from yunhan.cli import daemons, lab  # noqa: E402  (they register commands on `app`)

lab.register(app)
daemons.register(app)

try:
    from yunhan.cli.hotpatch import app as hotpatch_app
except ModuleNotFoundError as exc:  # tolerated only while that module itself is absent
    if exc.name != "yunhan.cli.hotpatch":
        raise
else:
    app.add_typer(hotpatch_app, name="hotpatch")
