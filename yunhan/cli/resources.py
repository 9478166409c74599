"""`yunhan vpc|subnet|instance|zone|host|project|revision`: resources over the HTTP API.

Every resource argument takes a name or an id. Every `list` and `show` prints a table for
people, or `-o wide|json|yaml` (`--json` is `-o json`; see yunhan.cli.views). `--wait` makes
a write return only once every host it affects has applied it (`GET /v1/converged`), with
a progress line on a terminal.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Any

from yunhan.cli import views
from yunhan.cli.client import Client
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo, warn
from yunhan.errors import TimedOut, Unreachable, ValidationError, YunhanError

DEFAULT_WAIT = 120.0
SETTLED = ("running", "failed")

OUTPUT = Opt(("-o", "--output"), "output", "output format", choices=views.FORMATS)
JSON = Opt(("--json",), "as_json", "print JSON for scripts (same as -o json)", kind=bool)
WAIT = Opt(("--wait",), "wait", "return once every affected host has applied the change", bool)
TIMEOUT = Opt(("--timeout",), "timeout", "seconds --wait waits at most", float, DEFAULT_WAIT)
SELECT = Opt(("-l", "--selector"), "selector", "only those labelled KEY=VALUE (repeatable: all)",
             many=True, metavar="KEY=VALUE")  # fmt: skip
LABEL = Opt(("--label",), "label", "a label KEY=VALUE (repeatable)", many=True,
            metavar="KEY=VALUE")  # fmt: skip
SHOWN = (OUTPUT, JSON)
LISTED = (SELECT, OUTPUT, JSON)
WRITE = (WAIT, TIMEOUT, OUTPUT, JSON)
COLLECTION = {"vpc": "vpcs", "subnet": "subnets", "instance": "instances", "zone": "zones",
              "host": "hosts", "project": "projects"}  # fmt: skip


def ref(kind: str) -> Arg:
    return Arg("ref", "its name or id", metavar="NAME|ID", complete=kind)


def fmt(ctx: Ctx) -> str:
    return views.output_format(ctx["output"], ctx["as_json"])


def wait_applied(c: Client, revision: int | None, timeout: float) -> None:
    """Block until write `revision` (the current one if None) is applied everywhere it
    matters, showing which hosts are still to apply it; warn about hosts that report
    errors without failing a write that may not be their cause."""
    from yunhan.cli.progress import Progress, hosts_phrase

    if revision is None:
        revision = int(c.get("/v1/revision")["revision"])
    with Progress(hosts_phrase([], revision)) as p:
        failed = c.wait_converged(
            int(revision),
            timeout,
            on_pending=lambda hosts: p.say(hosts_phrase(hosts, int(revision))),
            poll=2.0 if p.enabled else 20.0,  # refresh the pending hosts on a terminal
        )
    if failed:
        warn(
            f"warning: revision {revision} is applied, but host(s) {', '.join(failed)} "
            "report errors (`yunhan host list`)"
        )


def show(kind: str, c: Client | None, res: dict[str, Any], fmt_: str) -> None:
    row = views.ROWS[kind](res, views.Names(c))
    if kind == "instance" and fmt_ not in ("json", "yaml"):
        # For people, a move per line; scripts get the objects.
        row["migrations"] = [
            f"{m.get('at')} {m.get('from_host') or '-'} ({m.get('from_zone')}) -> "
            f"{m.get('to_host')} ({m.get('to_zone')})"
            for m in row.get("migrations") or []
        ]
    views.print_one(kind, row, fmt_)


def _after_write(ctx: Ctx, kind: str, c: Client, res: dict[str, Any]) -> None:
    if ctx["wait"]:
        wait_applied(c, res.get("revision"), ctx["timeout"])
    show(kind, c, res, fmt(ctx))


def labels(ctx: Ctx) -> dict[str, str]:
    """--label KEY=VALUE options as a map (the API checks keys and values)."""
    out: dict[str, str] = {}
    for term in ctx["label"] or []:
        key, eq, value = term.partition("=")
        if not eq:
            raise ValidationError(f"--label wants KEY=VALUE, not {term!r}")
        out[key] = value
    return out


def _list(kind: str, ctx: Ctx, **params: Any) -> None:
    c = ctx.client()
    if ctx["selector"]:
        params["label"] = list(ctx["selector"])
    items = c.items(f"/v1/{COLLECTION[kind]}", **params)
    names = views.Names(c)
    views.print_list(kind, [views.ROWS[kind](i, names) for i in items], fmt(ctx))


def instance_list(ctx: Ctx) -> None:
    if not ctx["local"]:
        _list("instance", ctx)
        return
    from yunhan import localview

    if ctx["selector"]:
        raise ValidationError("--local lists have no labels: drop -l/--selector")
    dirs = _agent_dirs()
    warn(f"from the state of {len(dirs)} agent(s) on this machine; the API was not asked")
    rows = [
        {
            "id": i.get("id"),
            "name": i.get("name"),
            "vpc_id": i.get("vpc"),
            "ip": i.get("ip"),
            "host": i.get("host"),
            "phase": i.get("phase"),
            "message": i.get("message"),
            "netns": i.get("netns"),
            "uts": i.get("uts"),
            "revision": i.get("revision"),
        }
        for i in sorted(localview.instances(dirs), key=lambda i: str(i.get("name")))
    ]
    views.print_list("instance", rows, fmt(ctx))


def _show(kind: str) -> Cmd:
    def run(ctx: Ctx) -> None:
        c = ctx.client()
        show(kind, c, c.get(f"/v1/{COLLECTION[kind]}/{ctx['ref']}"), fmt(ctx))

    label = "VPC" if kind == "vpc" else kind
    return Cmd("show", f"Show one {label}.", run, (ref(kind), *SHOWN))


def report_deleted(ctx: Ctx, c: Client, kind: str, res: dict[str, Any] | None, what: str) -> None:
    """After a delete: wait for it if asked, then the resource as it was (json, yaml) or
    "deleted <what> <name> (<id>)"."""
    if ctx["wait"]:
        # A delete answers with the resource carrying the delete's own revision.
        wait_applied(c, (res or {}).get("revision"), ctx["timeout"])
    if res is None:
        return
    f = fmt(ctx)
    if f in ("json", "yaml"):
        show(kind, c, res, f)
    else:
        echo(f"deleted {what} {res.get('name')} ({res.get('id')})")


def _delete(kind: str, help_: str) -> Cmd:
    def run(ctx: Ctx) -> None:
        c = ctx.client()
        report_deleted(ctx, c, kind, c.delete(f"/v1/{COLLECTION[kind]}/{ctx['ref']}"), kind)

    return Cmd("delete", help_, run, (ref(kind), *WRITE))


# -- vpc --------------------------------------------------------------------------------------


def vpc_create(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.post("/v1/vpcs", {"name": ctx["name"], "cidrs": ctx["cidr"], "labels": labels(ctx)})
    _after_write(ctx, "vpc", c, res)


def vpc_add_cidr(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.post(f"/v1/vpcs/{ctx['ref']}/cidrs", {"cidr": ctx["cidr"]})
    _after_write(ctx, "vpc", c, res)


def vpc_remove_cidr(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.delete(f"/v1/vpcs/{ctx['ref']}/cidrs", cidr=ctx["cidr"])
    _after_write(ctx, "vpc", c, res)


VPC = Group(
    "vpc",
    "VPCs: private networks with one or more CIDR blocks",
    (
        Cmd(
            "create",
            "Create a VPC, e.g. `yunhan vpc create prod --cidr 10.0.0.0/16`.",
            vpc_create,
            (
                Arg("name", "its name"),
                Opt(("--cidr",), "cidr", "a CIDR block (repeatable)", required=True, many=True),
                LABEL,
                *WRITE,
            ),
        ),
        Cmd("list", "List the project's VPCs.", lambda ctx: _list("vpc", ctx), LISTED),
        _show("vpc"),
        Cmd(
            "add-cidr",
            "Add a CIDR block to a VPC.",
            vpc_add_cidr,
            (ref("vpc"), Arg("cidr", "the block"), *WRITE),
        ),
        Cmd(
            "remove-cidr",
            "Remove a CIDR block from a VPC (refused while a subnet lies in it).",
            vpc_remove_cidr,
            (ref("vpc"), Arg("cidr", "the block"), *WRITE),
        ),
        _delete("vpc", "Delete a VPC (refused while it has subnets)."),
    ),
)

# -- subnet -----------------------------------------------------------------------------------


def subnet_create(ctx: Ctx) -> None:
    c = ctx.client()
    body = {"name": ctx["name"], "vpc": ctx["vpc"], "cidr": ctx["cidr"], "labels": labels(ctx)}
    if ctx["location"]:
        body["location"] = ctx["location"]
    res = c.post("/v1/subnets", body)
    _after_write(ctx, "subnet", c, res)


SUBNET = Group(
    "subnet",
    "Subnets: CIDRs inside a VPC, spanning all zones",
    (
        Cmd(
            "create",
            "Create a subnet, e.g. `yunhan subnet create web --vpc prod --cidr 10.0.1.0/24`.",
            subnet_create,
            (
                Arg("name", "its name"),
                Opt(("--vpc",), "vpc", "the VPC (name or id)", required=True, complete="vpc"),
                Opt(("--cidr",), "cidr", "inside one of the VPC's blocks", required=True),
                Opt(
                    ("--location",),
                    "location",
                    "`cloud` (default) or `idc:SITE`: the addresses are that IDC's, reached "
                    "through a hybrid gateway (docs/hybrid.md)",
                    metavar="cloud|idc:SITE",
                ),
                LABEL,
                *WRITE,
            ),
        ),
        Cmd(
            "list",
            "List the project's subnets.",
            lambda ctx: _list("subnet", ctx, vpc=ctx["vpc"]),
            (Opt(("--vpc",), "vpc", "only this VPC's", complete="vpc"), *LISTED),
        ),
        _show("subnet"),
        _delete("subnet", "Delete a subnet (refused while it has instances)."),
    ),
)

# -- instance ---------------------------------------------------------------------------------


def command_argv(command: str) -> list[str]:
    """--command split into words as a shell would; a one-line error when it cannot be."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:  # unbalanced quotes, a trailing backslash
        raise ValidationError(
            f"--command {command!r} cannot be split into words: {exc}; quote it as a shell would"
        ) from exc
    if not argv:
        raise ValidationError("--command is empty")
    return argv


def instance_create(ctx: Ctx) -> None:
    body: dict[str, Any] = {"name": ctx["name"], "subnet": ctx["subnet"], "zone": ctx["zone"],
                            "labels": labels(ctx)}  # fmt: skip
    if ctx["ip"] is not None:
        body["ip"] = ctx["ip"]
    if ctx["command"] is not None:
        body["command"] = command_argv(ctx["command"])
    if ctx["sg"]:
        body["security_groups"] = list(ctx["sg"])
    c = ctx.client()
    _instance_written(ctx, c, c.post("/v1/instances", body))


def instance_migrate(ctx: Ctx) -> None:
    body: dict[str, Any] = {"zone": ctx["zone"]}
    if ctx["host"] is not None:
        body["host"] = ctx["host"]
    c = ctx.client()
    _instance_written(ctx, c, c.post(f"/v1/instances/{ctx['ref']}/migrate", body))


def instance_stop(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.post(f"/v1/instances/{ctx['ref']}/stop")
    if ctx["wait"]:
        wait_applied(c, res.get("revision"), ctx["timeout"])
    show("instance", c, res, fmt(ctx))


def instance_start(ctx: Ctx) -> None:
    c = ctx.client()
    _instance_written(ctx, c, c.post(f"/v1/instances/{ctx['ref']}/start"))


def _instance_written(ctx: Ctx, c: Client, res: dict[str, Any]) -> None:
    """With --wait: every host applied it, and the instance runs (or failed) where it is
    placed now; then the instance."""
    if ctx["wait"]:
        deadline = time.monotonic() + ctx["timeout"]
        wait_applied(c, res.get("revision"), ctx["timeout"])
        res = _wait_settled(c, res, deadline)
    show("instance", c, res, fmt(ctx))


def _wait_settled(c: Client, res: dict[str, Any], deadline: float) -> dict[str, Any]:
    # Converged means the network is in place; the phase is what the agent reported on the
    # instance's process, which arrives with the agent's status right after.
    from yunhan.cli.progress import Progress

    with Progress(f"waiting for instance {res['name']} to run") as p:
        while True:
            res = c.get(f"/v1/instances/{res['id']}")
            st = res.get("status") or {}
            phase = st.get("phase")
            if phase == "failed":
                raise YunhanError(f"instance {res['name']} failed: {st.get('message') or '-'}")
            if phase in SETTLED:
                return res
            if time.monotonic() > deadline:
                raise TimedOut(
                    f"instance {res['name']} is still {phase} (host {st.get('host') or 'none'})"
                )
            p.say(f"waiting for instance {res['name']} on host {st.get('host')}: {phase}")
            time.sleep(0.2)  # poll interval; the API has no long poll on an instance's phase


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
    netns = st.get("netns")
    if not netns:
        raise ValidationError(f"instance {name} has no network namespace reported yet")
    from yunhan.nsexec import mnt_path, netns_path, nsenter_argv

    path = netns_path(netns)  # agents report a named netns (ip netns) or a path
    if not path.exists():
        raise ValidationError(
            f"instance {name} runs on host {st.get('host')}, not on this machine "
            f"({path} is missing)"
        )
    uts = st.get("uts")
    mnt = mnt_path(netns)  # the instance's own mounts (its volumes), when it has them
    return nsenter_argv(
        command,
        net=path,
        uts=uts if uts and os.path.exists(uts) else None,
        mnt=mnt if mnt.exists() else None,
        wd=os.getcwd(),
    )


def _agent_dirs() -> list[Any]:
    from yunhan import localview
    from yunhan.lab.region import default_state_dir

    return localview.agent_dirs(default_state_dir())


def _local_instance(ref: str, exc: YunhanError) -> dict[str, Any]:
    """Instance `ref` as this machine's agents wrote it down, in the API's shape; `exc` (why
    the API was not asked) is raised again when no agent here carries it."""
    from yunhan import localview

    found = localview.find(_agent_dirs(), ref)
    if len(found) != 1:
        what = "no agent of this machine carries it" if not found else "several share the name"
        raise type(exc)(f"{exc.message}; instance {ref}: {what}") from exc
    inst = found[0]
    warn(
        f"warning: the API is away ({exc.message.split(';')[0]}); using what the agent of "
        f"host {inst['host']} wrote down at revision {inst['revision']}"
    )
    status = {k: inst.get(k) for k in ("phase", "message", "netns", "uts", "host", "ip", "vpc")}
    return {"id": inst["id"], "name": inst["name"], "spec": {}, "status": status}


def instance_exec(ctx: Ctx) -> None:
    argv_in = list(ctx["command"] or [])
    if argv_in[:1] == ["--"]:
        argv_in = argv_in[1:]
    try:
        res = ctx.client().get(f"/v1/instances/{ctx['ref']}")
    except (Unreachable, TimedOut) as exc:
        # Headless: the instance runs on; its agent's state says where its namespaces are.
        res = _local_instance(ctx["ref"], exc)
    argv = exec_argv(res, argv_in)
    ctx.close()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise YunhanError(f"cannot run nsenter: {exc} (run as root)") from exc


INSTANCE = Group(
    "instance",
    "Instances: sandboxes with a VPC address",
    (
        Cmd(
            "create",
            "Create an instance; with --wait, return once it runs and its network is in place.",
            instance_create,
            (
                Arg("name", "its name"),
                Opt(
                    ("--subnet",),
                    "subnet",
                    "the subnet (name or id)",
                    required=True,
                    complete="subnet",
                ),
                Opt(
                    ("--zone",),
                    "zone",
                    "the zone to run in (az1, …)",
                    required=True,
                    complete="zone",
                ),
                Opt(("--ip",), "ip", "a fixed address in the subnet"),
                Opt(
                    ("--command",),
                    "command",
                    "a long-lived command, split into words like a shell would but run "
                    'without one, e.g. "sleep infinity"; use "sh -c \'…\'" for pipes',
                ),
                Opt(
                    ("--sg",),
                    "sg",
                    "a security group (repeat for several; default: the VPC's default group)",
                    many=True,
                    complete="security_group",
                ),
                LABEL,
                *WRITE,
            ),
        ),
        Cmd(
            "list",
            "List the project's instances; with --local, those of this machine's agents, "
            "from their own state (works while the API is away).",
            instance_list,
            (*LISTED, Opt(("--local",), "local", "read this machine's agents, not the API", bool)),
        ),
        _show("instance"),
        Cmd(
            "stop",
            "Stop an instance: its processes end and it runs nowhere, keeping its address, "
            "MAC, zone, groups and VIP permissions (refused while volumes are attached). "
            "With --wait, return once its host has removed it.",
            instance_stop,
            (ref("instance"), *WRITE),
        ),
        Cmd(
            "start",
            "Start a stopped instance on a host of its zone (its command runs again, at the "
            "same address). With --wait, return once it runs.",
            instance_start,
            (ref("instance"), *WRITE),
        ),
        Cmd(
            "migrate",
            "Move an instance to a host of another zone (or another host of its zone), "
            "keeping its address, MAC, labels, groups and VIP permissions. Its old host stops "
            "it and the new one starts its command again: processes and TCP connections do "
            "not survive (docs/instances.md). With --wait, return once it runs there.",
            instance_migrate,
            (
                ref("instance"),
                Opt(("--zone",), "zone", "the zone to move to", required=True, complete="zone"),
                Opt(
                    ("--host",),
                    "host",
                    "a host of that zone (default: the scheduler's)",
                    complete="host",
                ),
                *WRITE,
            ),
        ),
        _delete("instance", "Delete an instance (its process is stopped and its address freed)."),
        Cmd(
            "exec",
            "Run a command inside an instance on this machine: "
            "`yunhan instance exec web -- ping …`.\n\n"
            "stdin, stdout, stderr and the exit code are the command's own.",
            instance_exec,
            (ref("instance"), Arg("command", "the command, after --", "-- CMD", rest=True)),
        ),
    ),
)

# -- zones, hosts, projects -------------------------------------------------------------------


def host_list(ctx: Ctx) -> None:
    c = ctx.client()
    names = views.Names(c)
    params = {"label": list(ctx["selector"])} if ctx["selector"] else {}
    rows = [views.host_row(h, names) for h in c.items("/v1/hosts", **params)]
    netns = _lab_host_netns(c.endpoint)
    for row in rows:
        row["netns"] = netns.get(row["name"])
    views.print_list("host", rows, fmt(ctx))


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


def revision(ctx: Ctx) -> None:
    ans = ctx.client().get("/v1/revision")
    f = fmt(ctx)
    if f == "json" or f == "yaml":
        views.print_one("revision", ans, f)
    else:
        echo(str(ans["revision"]))


def project_create(ctx: Ctx) -> None:
    ans = ctx.client().post("/v1/projects", {"name": ctx["name"]})
    row = {**views.project_row(ans["project"], views.Names(None)), "token": ans["token"]}
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("project", row, f)
    else:
        echo(f"created project {row['name']} ({row['id']}); its token:")
        echo(row["token"])


def project_token(ctx: Ctx) -> None:
    echo(ctx.client().post(f"/v1/projects/{ctx['ref']}/tokens")["token"])


def _key_project(ctx: Ctx) -> tuple[Any, str]:
    c = ctx.client()
    return c, ctx["project"] or c.get("/v1/whoami")["project"]["name"]


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def keys_create(ctx: Ctx) -> None:
    c, project = _key_project(ctx)
    body = {"description": ctx["description"]} if ctx["description"] else {}
    key = c.post(f"/v1/projects/{project}/keys", body)
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("key", key, f)
        return
    echo(f"created key pair {key['id']} of project {project} (the private key is shown once)")
    echo(f"public_key   {key['public_key']}")
    echo(f"private_key  {key['private_key']}")
    echo(f"project_id   {key['project']}")
    echo(f"base_url     {c.endpoint.rstrip('/')}/ucloud   (UCloud's SDKs; docs/ucloud-api.md)")


def keys_list(ctx: Ctx) -> None:
    c, project = _key_project(ctx)
    items = c.get(f"/v1/projects/{project}/keys")["items"]
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("keys", {"items": items}, f)
        return
    rows = [["ID", "PUBLIC KEY", "CREATED", "REVOKED", "DESCRIPTION"]]
    for k in items:
        rows.append([k["id"], k["public_key"], _when(k["created_at"]), _when(k["revoked_at"]),
                     k.get("description") or ""])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def keys_revoke(ctx: Ctx) -> None:
    c, project = _key_project(ctx)
    key = c.delete(f"/v1/projects/{project}/keys/{ctx['key']}")
    echo(f"revoked key pair {key['id']} ({key['public_key']}): refused from its next request")


KEY_PROJECT = Opt(("--project",), "project", "whose key pairs (default: your own project)",
                  complete="project")  # fmt: skip
KEYS = Group(
    "keys",
    "Key pairs of the UCloud-compatible Action API (POST /ucloud, docs/ucloud-api.md)",
    (
        Cmd(
            "create",
            "Make a key pair (public and private key) for UCloud's SDKs and tools; the private "
            "key is printed once.",
            keys_create,
            (KEY_PROJECT, Opt(("--description",), "description", "what it is for"), *SHOWN),
        ),
        Cmd(
            "list",
            "List the key pairs (never their private keys).",
            keys_list,
            (KEY_PROJECT, OUTPUT, JSON),
        ),
        Cmd(
            "revoke",
            "Revoke a key pair: its next request is refused (RetCode 172).",
            keys_revoke,
            (Arg("key", "its id (key-…)"), KEY_PROJECT),
        ),
    ),
)

ZONE = Group(
    "zone",
    "Availability zones",
    (
        Cmd("list", "List the zones.", lambda ctx: _list("zone", ctx), LISTED),
        _show("zone"),
    ),
)


def host_datapath(ctx: Ctx) -> None:
    """Which data path each host uses and why; with --host, also each instance's path."""
    c = ctx.client()
    hosts = [c.get(f"/v1/hosts/{ctx['host']}")] if ctx["host"] else list(c.items("/v1/hosts"))
    names = views.Names(c)
    rows, per_instance = [], []
    for h in hosts:
        dp = (h.get("status") or {}).get("datapath") or {}
        packets = dp.get("packets") or {}
        insts = dp.get("instances") or {}
        fast = sorted(i for i, p in insts.items() if p.partition(":")[0] == "fast")
        rows.append({
            "host": h.get("name"),
            "zone": names.of("zone", (h.get("spec") or {}).get("zone")),
            "datapath": dp.get("mode") or "unknown (no report from a fast-path-aware agent)",
            "fast": len(fast),
            "kernel": len(insts) - len(fast),
            "fast_packets": sum(packets.get(k, 0) for k in ("local", "encap", "decap")),
            "slow_packets": packets.get("slow", 0),
            **{k: packets.get(k, 0) for k in ("local", "encap", "decap")},
            "reason": dp.get("reason"),
            "errors": dp.get("errors") or [],
        })  # fmt: skip
        for iid, path in sorted(insts.items()):
            mode, _, why = path.partition(": ")
            per_instance.append({
                "instance": names.of("instance", iid) or iid, "id": iid,
                "host": h.get("name"), "path": mode, "why": why,
            })  # fmt: skip
    out = fmt(ctx)
    if out in ("json", "yaml"):  # the agents' reports as they are
        objs = [
            {"host": h.get("name"), **((h.get("status") or {}).get("datapath") or {})}
            for h in hosts
        ]
        views.print_list("datapath", objs, out)
        return
    views.print_list("datapath", rows, out)
    if ctx["host"] and per_instance:
        sys.stdout.write("\n")
        views.print_list("datapath instance", per_instance, out)


HOST = Group(
    "host",
    "Hosts and their agents",
    (
        Cmd(
            "list",
            "List hosts: zone, underlay address, agent health, desired vs applied revision.",
            host_list,
            LISTED,
        ),
        _show("host"),
        Cmd(
            "datapath",
            "Show which data path each host forwards with (fast: tc-BPF beside the kernel "
            "path; kernel) and why, with packet counts; with --host, each instance's path "
            "and why it takes the kernel path (docs/datapath.md).",
            host_datapath,
            (
                Opt(("--host",), "host", "this host only", metavar="HOST", complete="host"),
                OUTPUT,
                JSON,
            ),
        ),
    ),
)
PROJECT = Group(
    "project",
    "Projects (tenants) and their tokens",
    (
        Cmd(
            "create",
            "Create a project and print its token (admin only); hand the token to its users.",
            project_create,
            (Arg("name", "its name"), *SHOWN),
        ),
        Cmd(
            "token",
            "Issue another token for a project (admin only); the old ones stay valid.",
            project_token,
            (ref("project"),),
        ),
        Cmd("list", "List projects (admin only).", lambda ctx: _list("project", ctx), LISTED),
        KEYS,
    ),
)
REVISION = Cmd(
    "revision", "Show the store's current revision (every write moves it).", revision, SHOWN
)

COMMANDS: tuple[Cmd | Group, ...] = (VPC, SUBNET, INSTANCE, ZONE, HOST, PROJECT, REVISION)
