"""The hidden `yunhan server` and `yunhan agent` commands that `yunhan up` starts.

They are thin: parse flags, read the token from a file (never from the command line, where
`ps` would show it), and call the server's `serve` or the agent's `run`, imported lazily so
that the everyday CLI does not load FastAPI or pyroute2.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from yunhan.cli.command import Cmd, Ctx, Opt
from yunhan.errors import ValidationError
from yunhan.model.volumes import parse_size

if TYPE_CHECKING:
    from yunhan.controller.vips import Damping
    from yunhan.functions.metering import PriceTable
    from yunhan.store.flows import Retention


def _read_token(path: Path) -> str:
    """The token in `path`; "-" reads it from standard input (how `yunhan up` hands an
    agent its bootstrap token: it never touches the disk)."""
    try:
        token = sys.stdin.read().strip() if str(path) == "-" else path.read_text().strip()
    except OSError as exc:
        raise ValidationError(f"cannot read the token file {path}: {exc.strerror}") from exc
    if not token:
        raise ValidationError(f"the token file {path} is empty")
    return token


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(f"--listen wants HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


def _pools(values: list[str] | None) -> list[str]:
    pools = []
    for v in values or []:
        try:
            pools.append(str(ipaddress.IPv4Network(v)))
        except ValueError as exc:
            raise ValidationError(
                f"--public-pool wants an IPv4 CIDR such as 198.19.128.0/24, not {v!r} ({exc})"
            ) from exc
    return pools


def _retention(age: str, rows: int) -> Retention:
    from yunhan.cli.flowlogs import duration
    from yunhan.store.flows import Retention

    if rows < 1:
        raise ValidationError(f"--flow-log-max-records wants a positive number, not {rows}")
    return Retention(max_age=duration(age), max_rows=rows)


def _damping(changes: int, window: str) -> Damping:
    from yunhan.cli.flowlogs import duration
    from yunhan.controller.vips import Damping

    try:
        return Damping(changes, duration(window))
    except ValueError as exc:
        raise ValidationError(f"--vip-flap-changes/--vip-flap-window: {exc}") from exc


def _prices(path: Path | None) -> PriceTable | None:
    from yunhan.functions.metering import load_prices

    return None if path is None else load_prices(path)


def server(ctx: Ctx) -> None:
    from yunhan.api.server import serve

    host, port = _split_listen(ctx["listen"])
    pools = _pools(ctx["public_pool"])
    retention = _retention(ctx["flow_log_retention"], ctx["flow_log_max_records"])
    damping = _damping(ctx["vip_flap_changes"], ctx["vip_flap_window"])
    prices = _prices(ctx["price_file"])
    state_dir: Path = ctx["state_dir"]
    state_dir.mkdir(parents=True, exist_ok=True)
    database = ctx["database"] or os.environ.get("YUNHAN_DATABASE") or None
    if ctx["admin_token_hash_file"] is not None:
        digest = _read_token(ctx["admin_token_hash_file"]).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValidationError(
                f"{ctx['admin_token_hash_file']} must hold the sha256 (64 hex digits) of the "
                "admin token"
            )
        serve(
            state_dir,
            host,
            port,
            admin_token_hash=digest,
            database=database,
            max_long_poll=ctx["max_long_poll"],
            public_pools=pools,
            flow_retention=retention,
            vip_damping=damping,
            prices=prices,
        )
        return
    serve(
        state_dir,
        host,
        port,
        _read_token(ctx["admin_token_file"]),
        database=database,
        max_long_poll=ctx["max_long_poll"],
        public_pools=pools,
        flow_retention=retention,
        vip_damping=damping,
        prices=prices,
    )


def agent(ctx: Ctx) -> None:
    from yunhan.agent.main import HOST_TOKEN_FILE, AgentConfig, run

    state_dir: Path = ctx["state_dir"]
    try:
        token = _read_token(ctx["token_file"])
    except ValidationError:
        # A restarted agent uses the host token it kept; the bootstrap token it was
        # started with is spent (and, handed on stdin, gone).
        if not (state_dir / HOST_TOKEN_FILE).is_file():
            raise
        token = ""
    run(
        AgentConfig(
            api_url=ctx["api"],
            token=token,
            host_name=ctx["host"],
            zone=ctx["zone"],
            underlay_ip=ctx["underlay_ip"],
            mtu=ctx["mtu"],
            host_netns=ctx["host_netns"],
            uplink_netns=ctx["uplink_netns"],
            uplink_via=ctx["uplink_via"],
            prefix=ctx["prefix"],
            driver=ctx["driver"],
            datapath=ctx["datapath"],
            state_dir=state_dir,
            resync_interval=ctx["resync_interval"],
            flowlog_interval=ctx["flowlog_interval"],
            patch_interval=ctx["patch_interval"],
            functions_listen=None if ctx["no_functions"] else ctx["functions_listen"],
            volume_pool=ctx["volume_pool"],
            volume_dir=ctx["volume_dir"],
        )
    )


COMMANDS = (
    Cmd(
        "server",
        "Run the API server and the controller (one process) until SIGTERM/SIGINT.\n\n"
        "Several servers given the same PostgreSQL --database are replicas: any of them "
        "serves any client or agent, and one at a time runs the controller.",
        server,
        (
            Opt(("--state-dir",), "state_dir", "where the store lives", Path, required=True),
            Opt(("--listen",), "listen", "HOST:PORT", default="127.0.0.1:8080"),
            Opt(
                ("--admin-token-file",),
                "admin_token_file",
                "file holding the admin token",
                Path,
                Path("admin.token"),
            ),
            Opt(
                ("--admin-token-hash-file",),
                "admin_token_hash_file",
                "file holding only the sha256 of the admin token (instead of the token)",
                Path,
            ),
            Opt(
                ("--database",),
                "database",
                "SQLAlchemy URL of a shared store, e.g. postgresql+psycopg://host/yunhan "
                "(env YUNHAN_DATABASE; default: SQLite in --state-dir)",
            ),
            Opt(
                ("--max-long-poll",),
                "max_long_poll",
                "seconds a long poll (desired documents, converged) waits at most; lower it "
                "behind proxies with short idle timeouts",
                float,
                300.0,
            ),
            Opt(
                ("--flow-log-retention",),
                "flow_log_retention",
                "how long flow log records are kept (90s, 30m, 24h, 7d)",
                default="24h",
            ),
            Opt(
                ("--flow-log-max-records",),
                "flow_log_max_records",
                "flow log records kept at most (the oldest go first)",
                int,
                2_000_000,  # yunhan.store.flows.DEFAULT_MAX_ROWS (not imported: start time)
            ),
            Opt(
                ("--vip-flap-changes",),
                "vip_flap_changes",
                "a VIP whose holder changes more often than this within --vip-flap-window "
                "is damped (docs/vips.md)",
                int,
                3,
            ),
            Opt(
                ("--vip-flap-window",),
                "vip_flap_window",
                "the window of --vip-flap-changes, and the quiet time that settles a damped VIP",
                default="30s",
            ),
            Opt(
                ("--price-file",),
                "price_file",
                "JSON or YAML price table of function usage: per_request, per_gb_second, "
                "currency (default: AWS Lambda's, USD)",
                Path,
            ),
            Opt(
                ("--public-pool",),
                "public_pool",
                "a CIDR that elastic IPs and NAT gateway addresses are taken from (repeatable)",
                many=True,
                metavar="CIDR",
            ),
        ),
        hidden=True,
    ),
    Cmd(
        "agent",
        "Run a host agent until SIGTERM/SIGINT.",
        agent,
        (
            Opt(
                ("--api",),
                "api",
                "the API endpoint; several (comma-separated) are replicas",
                required=True,
            ),
            Opt(
                ("--token-file",),
                "token_file",
                "file holding this host's token or a bootstrap token ('-': standard input)",
                Path,
                required=True,
            ),
            Opt(("--host",), "host", "this host's name", required=True),
            Opt(("--zone",), "zone", "this host's zone (name or id)", required=True),
            Opt(("--underlay-ip",), "underlay_ip", "the VTEP address", required=True),
            Opt(("--mtu",), "mtu", "the underlay MTU", int, 1500),
            Opt(
                ("--volume-pool",),
                "volume_pool",
                "volume space this host offers (placement counts it), like 100G",
                parse_size,
                "100G",
                metavar="SIZE",
            ),
            Opt(
                ("--volume-dir",),
                "volume_dir",
                "where the volumes this host serves live (the zone's shared pool)",
                Path,
                Path("/var/lib/yunhan/volumes"),
                metavar="PATH",
            ),
            Opt(("--host-netns",), "host_netns", "program this namespace (lab)"),
            Opt(
                ("--uplink-netns",),
                "uplink_netns",
                "announce the public addresses of this host's NAT gateways by routes in this "
                "namespace (lab: the core); needs --uplink-via",
                metavar="NS",
            ),
            Opt(
                ("--uplink-via",),
                "uplink_via",
                "the address the uplink routes announced addresses to (this host's underlay "
                "address)",
                metavar="IP",
            ),
            Opt(("--prefix",), "prefix", "name prefix of what we own", default="yh-"),
            Opt(("--state-dir",), "state_dir", "agent state", Path, Path("/var/lib/yunhan/agent")),
            Opt(("--driver",), "driver", "linux | fake", default="linux"),
            Opt(
                ("--datapath",),
                "datapath",
                "fast: the tc-BPF fast path beside the kernel path where this host supports "
                "it (it falls back by itself, and says why); kernel: the kernel path only",
                choices=("fast", "kernel"),
                default="fast",
            ),
            Opt(
                ("--resync-interval",),
                "resync_interval",
                "seconds between full resyncs",
                float,
                30.0,
            ),
            Opt(
                ("--flowlog-interval",),
                "flowlog_interval",
                "seconds between flow-log polls and shipments",
                float,
                5.0,
            ),
            Opt(
                ("--patch-interval",),
                "patch_interval",
                "seconds between two polls of the hot patches assigned to this host",
                float,
                2.0,
            ),
            Opt(
                ("--functions-listen",),
                "functions_listen",
                "HOST:PORT of this host's function endpoint (port 0: any free one)",
                default="127.0.0.1:0",
            ),
            Opt(("--no-functions",), "no_functions", "run no functions on this host", bool),
        ),
        hidden=True,
    ),
)
