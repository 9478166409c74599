"""systemd units (`yunhan install-units`) and the notification protocol they rely on."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from yunhan.cli.main import main
from yunhan.supervised import Watchdog, notify, restarted, watchdog_interval


def test_install_units_writes_units_that_systemd_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["install-units", "--server", "--agent", "--dir", str(tmp_path),
            "--api", "http://10.0.0.1:8080,http://10.0.0.2:8080", "--zone", "az1",
            "--underlay-ip", "10.1.0.5", "--host", "h1"]  # fmt: skip
    assert main(argv) == 0
    assert "systemctl daemon-reload" in capsys.readouterr().out
    server = (tmp_path / "yunhan-server.service").read_text()
    agent = (tmp_path / "yunhan-agent.service").read_text()
    for unit in (server, agent):
        for line in ("Type=notify", "Restart=always", "NotifyAccess=main"):
            assert f"\n{line}\n" in unit
    assert "\nWatchdogSec=60\n" in server and "\nWatchdogSec=120\n" in agent
    # Restarting the agent must never stop the instances it started.
    assert "\nKillMode=process\n" in agent and "KillMode" not in server
    assert " agent --api http://10.0.0.1:8080,http://10.0.0.2:8080 " in agent
    assert "EnvironmentFile=-/etc/yunhan/server.env" in server  # no password in the unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt package systemd)")
    p = subprocess.run(
        ["systemd-analyze", "verify", *map(str, sorted(tmp_path.glob("*.service")))],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr


def test_agent_units_need_their_facts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["install-units", "--agent", "--dir", str(tmp_path)]) == 1
    assert "--agent needs --api, --zone, --underlay-ip" in capsys.readouterr().err
    assert main(["install-units", "--dir", str(tmp_path)]) == 1


def test_sd_notify_sends_datagrams_to_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(5)
        env = {"NOTIFY_SOCKET": str(path)}
        assert notify("READY=1", env)
        assert s.recv(100) == b"READY=1"
        dog = Watchdog(lambda: True, env={**env, "WATCHDOG_USEC": "20000"})
        assert dog.interval == 0.01
        dog.start()
        try:
            assert s.recv(100) == b"WATCHDOG=1"
        finally:
            dog.stop()
    assert not notify("READY=1", {})  # no service manager: nothing to do
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None


def test_restart_facts_come_from_the_environment() -> None:
    assert restarted({}) is None
    r = restarted({"YUNHAN_RESTARTS": "2", "YUNHAN_RESTART_CAUSE": "killed by SIGKILL"})
    assert (
        r is not None
        and r.sentence("x") == "x was restarted (2): its previous run killed by SIGKILL"
    )
