"""systemd units for a real host: the API server and the host agent (`yunhan install-units`).

Pure: `server_unit` and `agent_unit` return the text of a unit from plain options; the
CLI writes them. What the units promise:

* `Type=notify`: the process says READY=1 itself (yunhan.supervised, no libsystemd), the
  server once it listens, the agent once it runs (even while the API is away: the data
  plane keeps forwarding, the agent waits).
* `WatchdogSec=`: each process pings the watchdog from its own loop while the loop makes
  progress; a hung process (not only a dead one) is killed and restarted.
* `Restart=always` with a short `RestartSec=` and a start limit: a crash is a restart in
  about a second, a crash loop stops after StartLimitBurst starts in StartLimitIntervalSec.
* The agent's `KillMode=process`: instances' processes are the agent's children (in its
  cgroup); a restart of the agent must stop the agent only, never the instances.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

SERVER_UNIT = "yunhan-server.service"
AGENT_UNIT = "yunhan-agent.service"


@dataclass(frozen=True)
class Limits:
    restart_sec: float = 1.0
    start_limit_interval: int = 120
    start_limit_burst: int = 10


def _exec(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _unit(description: str, argv: Sequence[str], watchdog: int, extra: str, lim: Limits) -> str:
    return f"""\
# Written by `yunhan install-units`; see README.md ("Real hosts: systemd units").
[Unit]
Description={description}
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec={lim.start_limit_interval}
StartLimitBurst={lim.start_limit_burst}

[Service]
Type=notify
NotifyAccess=main
ExecStart={_exec(argv)}
Restart=always
RestartSec={lim.restart_sec:g}
WatchdogSec={watchdog}
TimeoutStartSec=120
TimeoutStopSec=30
{extra}
[Install]
WantedBy=multi-user.target
"""


def server_unit(
    yunhan: Sequence[str],
    *,
    listen: str,
    state_dir: str,
    admin_token_file: str,
    env_file: str,
    limits: Limits | None = None,
) -> str:
    """The API server's unit. The database URL (it may hold a password) is read from
    `env_file` (YUNHAN_DATABASE=…, mode 0600), never written in the world-readable unit."""
    argv = [*yunhan, "server", "--listen", listen, "--state-dir", state_dir,
            "--admin-token-file", admin_token_file]  # fmt: skip
    extra = f"EnvironmentFile=-{env_file}\n"
    return _unit("Yunhan API server and controller", argv, 60, extra, limits or Limits())


def agent_unit(
    yunhan: Sequence[str],
    *,
    api: str,
    token_file: str,
    host: str,
    zone: str,
    underlay_ip: str,
    mtu: int,
    state_dir: str,
    limits: Limits | None = None,
) -> str:
    """The host agent's unit (see the module docstring for KillMode=process)."""
    argv = [*yunhan, "agent", "--api", api, "--token-file", token_file, "--host", host,
            "--zone", zone, "--underlay-ip", underlay_ip, "--mtu", str(mtu),
            "--state-dir", state_dir]  # fmt: skip
    extra = (
        "# Instances' processes live in this unit's cgroup: a restart of the agent stops\n"
        "# the agent only. The data plane is kernel state and forwards on meanwhile.\n"
        "KillMode=process\n"
    )
    return _unit("Yunhan host agent", argv, 120, extra, limits or Limits())
