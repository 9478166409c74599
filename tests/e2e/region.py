"""A lab region for end-to-end tests, driven only through the `yunhan` CLI, as a user would.

Each region has its own HOME (so its CLI config never touches the user's) and its own state
dir; `yunhan down` at the end must leave no namespace, link or process of the region.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx


def yunhan_bin() -> str:
    local = Path(sys.executable).with_name("yunhan")
    return str(local) if local.exists() else (shutil.which("yunhan") or "yunhan")


class CliError(Exception):
    def __init__(self, argv: list[str], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()}")
        self.returncode = proc.returncode
        self.stderr = proc.stderr
        self.stdout = proc.stdout


class Region:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.state = home / "state"
        self.env = dict(os.environ, HOME=str(home), YUNHAN_HOME=str(self.state))
        for var in ("YUNHAN_ENDPOINT", "YUNHAN_TOKEN"):
            self.env.pop(var, None)
        self.bin = yunhan_bin()

    def run(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.bin, *args]
        p = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and p.returncode != 0:
            raise CliError(argv, p)
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def exec(
        self, instance: str, *cmd: str, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.run("instance", "exec", instance, "--", *cmd, check=check, timeout=timeout)

    def ping(self, src: str, dst_ip: str, count: int = 2) -> bool:
        return (
            self.exec(src, "ping", "-c", str(count), "-i", "0.2", "-W", "1", dst_ip).returncode == 0
        )

    def api(self, path: str) -> Any:
        """GET on the region's API with the admin credentials `yunhan up` wrote for the CLI."""
        cfg = json.loads((self.home / ".config" / "yunhan" / "config.json").read_text())
        r = httpx.get(
            cfg["endpoint"].rstrip("/") + path,
            headers={"Authorization": f"Bearer {cfg['token']}"},
            timeout=10,
        )
        r.raise_for_status()
        return r.json()

    def instance(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.json("instance", "show", name)
        return data


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}
