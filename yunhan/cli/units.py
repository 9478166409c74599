"""`yunhan install-units`: systemd units for the API server and the agent of a real host
(yunhan.units writes their text; this writes the files)."""

from __future__ import annotations

import sys
from pathlib import Path

from yunhan.cli.command import Cmd, Ctx, Opt, echo
from yunhan.errors import ValidationError


def _yunhan() -> list[str]:
    import shutil

    found = shutil.which("yunhan")
    if found:
        return [str(Path(found).absolute())]
    return [sys.executable, "-m", "yunhan.cli"]


def install_units(ctx: Ctx) -> None:
    import socket

    from yunhan import units

    if not (ctx["server"] or ctx["agent"]):
        raise ValidationError("say which: --server, --agent, or both")
    out: dict[str, str] = {}
    if ctx["server"]:
        out[units.SERVER_UNIT] = units.server_unit(
            _yunhan(),
            listen=ctx["listen"],
            state_dir=str(ctx["server_state_dir"]),
            admin_token_file=str(ctx["admin_token_file"]),
            env_file=str(ctx["env_file"]),
        )
    if ctx["agent"]:
        missing = [f"--{o}" for o in ("api", "zone", "underlay-ip") if not ctx[o.replace("-", "_")]]
        if missing:
            raise ValidationError(f"--agent needs {', '.join(missing)}")
        out[units.AGENT_UNIT] = units.agent_unit(
            _yunhan(),
            api=ctx["api"],
            token_file=str(ctx["token_file"]),
            host=ctx["host"] or socket.gethostname().split(".")[0],
            zone=ctx["zone"],
            underlay_ip=ctx["underlay_ip"],
            mtu=ctx["mtu"],
            state_dir=str(ctx["agent_state_dir"]),
        )
    target: Path = ctx["dir"]
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in out.items():
            (target / name).write_text(text)
    except OSError as exc:
        raise ValidationError(f"cannot write units to {target}: {exc.strerror}") from exc
    for name in out:
        echo(f"wrote {target / name}")
    names = " ".join(n.removesuffix(".service") for n in out)
    echo(f"then: systemctl daemon-reload && systemctl enable --now {names}")


COMMANDS = (
    Cmd(
        "install-units",
        "Write systemd units for this host's API server and/or agent (Restart=, watchdog).\n\n"
        "The units restart a process that dies or hangs; the agent's restart never stops "
        "its instances. Tokens stay in their files; the server's database URL goes in "
        "--env-file (YUNHAN_DATABASE=…).",
        install_units,
        (
            Opt(("--server",), "server", "write yunhan-server.service", bool),
            Opt(("--agent",), "agent", "write yunhan-agent.service", bool),
            Opt(("--dir",), "dir", "where to write them", Path, Path("/etc/systemd/system")),
            Opt(("--listen",), "listen", "server: HOST:PORT", default="0.0.0.0:8080"),
            Opt(
                ("--server-state-dir",),
                "server_state_dir",
                "server: its store",
                Path,
                Path("/var/lib/yunhan/server"),
            ),
            Opt(
                ("--admin-token-file",),
                "admin_token_file",
                "server: the admin token",
                Path,
                Path("/etc/yunhan/admin.token"),
            ),
            Opt(
                ("--env-file",),
                "env_file",
                "server: environment (YUNHAN_DATABASE)",
                Path,
                Path("/etc/yunhan/server.env"),
            ),
            Opt(("--api",), "api", "agent: the API endpoint(s), comma-separated"),
            Opt(
                ("--token-file",),
                "token_file",
                "agent: its host or bootstrap token",
                Path,
                Path("/etc/yunhan/host.token"),
            ),
            Opt(("--host",), "host", "agent: this host's name (default: hostname -s)"),
            Opt(("--zone",), "zone", "agent: this host's zone"),
            Opt(("--underlay-ip",), "underlay_ip", "agent: this host's VTEP address"),
            Opt(("--mtu",), "mtu", "agent: the underlay MTU", int, 1500),
            Opt(
                ("--agent-state-dir",),
                "agent_state_dir",
                "agent: its state",
                Path,
                Path("/var/lib/yunhan/agent"),
            ),
        ),
    ),
)
