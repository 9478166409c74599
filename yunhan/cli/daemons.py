"""The hidden `yunhan server` and `yunhan agent` commands that `yunhan up` starts.

They are thin: parse flags, read the token from a file (never from the command line, where
`ps` would show it), and call the server's `serve` or the agent's `run`, imported lazily so
that the everyday CLI does not load FastAPI or pyroute2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from yunhan.errors import ValidationError


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
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


def register(app: typer.Typer) -> None:
    """Add the hidden daemon commands to the `yunhan` app."""
    from yunhan.cli.main import handled

    @app.command("server", hidden=True)
    @handled
    def server(
        state_dir: Annotated[Path, typer.Option("--state-dir", help="where the store lives")],
        listen: Annotated[str, typer.Option("--listen", help="HOST:PORT")] = "127.0.0.1:8080",
        admin_token_file: Annotated[
            Path, typer.Option("--admin-token-file", help="file holding the admin token")
        ] = Path("admin.token"),
        database: Annotated[
            str | None,
            typer.Option(
                "--database",
                envvar="YUNHAN_DATABASE",
                help="SQLAlchemy URL of a shared store, e.g. postgresql+psycopg://host/yunhan "
                "(default: SQLite in --state-dir)",
            ),
        ] = None,
    ) -> None:
        """Run the API server and the controller (one process) until SIGTERM/SIGINT.

        Several servers given the same PostgreSQL --database are replicas: any of them
        serves any client or agent, and one at a time runs the controller.
        """
        from yunhan.api.server import serve

        host, port = _split_listen(listen)
        state_dir.mkdir(parents=True, exist_ok=True)
        serve(state_dir, host, port, _read_token(admin_token_file), database=database)

    @app.command("agent", hidden=True)
    @handled
    def agent(
        api: Annotated[
            str,
            typer.Option("--api", help="the API endpoint; several (comma-separated) are replicas"),
        ],
        token_file: Annotated[Path, typer.Option("--token-file", help="file holding a token")],
        host: Annotated[str, typer.Option("--host", help="this host's name")],
        zone: Annotated[str, typer.Option("--zone", help="this host's zone (name or id)")],
        underlay_ip: Annotated[str, typer.Option("--underlay-ip", help="the VTEP address")],
        mtu: Annotated[int, typer.Option("--mtu", help="the underlay MTU")] = 1500,
        host_netns: Annotated[
            str | None, typer.Option("--host-netns", help="program this namespace (lab)")
        ] = None,
        prefix: Annotated[str, typer.Option("--prefix", help="name prefix of what we own")] = "yh-",
        state_dir: Annotated[Path, typer.Option("--state-dir")] = Path("/var/lib/yunhan/agent"),
        driver: Annotated[str, typer.Option("--driver", help="linux | fake")] = "linux",
        resync_interval: Annotated[float, typer.Option("--resync-interval")] = 30.0,
    ) -> None:
        """Run a host agent until SIGTERM/SIGINT."""
        from yunhan.agent.main import AgentConfig, run

        run(
            AgentConfig(
                api_url=api,
                token=_read_token(token_file),
                host_name=host,
                zone=zone,
                underlay_ip=underlay_ip,
                mtu=mtu,
                host_netns=host_netns,
                prefix=prefix,
                driver=driver,
                state_dir=state_dir,
                resync_interval=resync_interval,
            )
        )
