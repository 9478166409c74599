"""Steady traffic between lab instances, and what the lab's processes and links look like:
shared by the crash test (tests/e2e/test_crash.py), the chaos test and bench/chaos.py.

Instances share the machine's filesystem, so the programs below are files under the
test's home run with this interpreter inside the instances (`yunhan instance exec`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A TCP echo server (one thread per connection) on port 7001.
ECHO_SERVER = """\
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7001)); s.listen(64)
def serve(c):
    with c, c.makefile("rb") as f:
        for line in f:
            c.sendall(line)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# One TCP connection to sys.argv[1]:7001 that sends a numbered line every 50 ms and
# checks its echo, until the file sys.argv[2] exists; prints one JSON line: lines echoed,
# and the error that ended it (a reset, a timeout) or null.
STREAM_CLIENT = """\
import json, os, socket, sys, time
n, err = 0, None
try:
    s = socket.create_connection((sys.argv[1], 7001), timeout=5)
    f = s.makefile("rb")
    while not os.path.exists(sys.argv[2]):
        s.sendall(b"%d\\n" % n)
        if f.readline() != b"%d\\n" % n:
            raise RuntimeError("bad echo")
        n += 1
        time.sleep(0.05)
except Exception as exc:
    err = f"{type(exc).__name__}: {exc}"
print(json.dumps({"echoed": n, "error": err}), flush=True)
"""


def write_programs(home: Path) -> tuple[str, Path]:
    """Write the programs under `home`; returns the echo server's command line and the
    client's path."""
    server, client = home / "echo_server.py", home / "stream_client.py"
    server.write_text(ECHO_SERVER)
    client.write_text(STREAM_CLIENT)
    return f"{sys.executable} {server}", client


@dataclass
class Stream:
    """A TCP stream (or a ping) running from one instance, through `yunhan instance exec`."""

    name: str
    proc: subprocess.Popen[str]

    def result(self, timeout: float = 30.0) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out + err


def stream(
    bin_: str, env: dict[str, str], src: str, dst_ip: str, client: Path, stop: Path
) -> Stream:
    argv = [bin_, "instance", "exec", src, "--", sys.executable, str(client), dst_ip, str(stop)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return Stream(f"tcp {src}->{dst_ip}", p)


def ping(
    bin_: str, env: dict[str, str], src: str, dst_ip: str, count: int, interval: float
) -> Stream:
    argv = [bin_, "instance", "exec", src, "--", "ping", "-q", "-c", str(count), "-i",
            str(interval), "-W", "1", dst_ip]  # fmt: skip
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return Stream(f"ping {src}->{dst_ip}", p)


def ping_counts(output: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary."""
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", output)
    if m is None:
        raise AssertionError(f"no ping summary in: {output}")
    return int(m.group(1)), int(m.group(2))


def stream_result(output: str) -> dict[str, Any]:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            data: dict[str, Any] = json.loads(line)
            return data
    raise AssertionError(f"no result from the stream client: {output}")


def links(netns: str) -> dict[str, int]:
    """ifname -> ifindex in a namespace: a re-created link gets a new ifindex."""
    out = subprocess.run(["ip", "-n", netns, "-o", "link"], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        idx, name = line.split(":")[:2]
        found[name.strip().split("@")[0]] = int(idx)
    return found


def region_links(prefix: str) -> dict[str, dict[str, int]]:
    """Every namespace of the region -> its links' ifindexes."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.startswith(f"{prefix}-")]
    return {ns: links(ns) for ns in names}


def region_dataplane(prefix: str) -> dict[str, dict[str, Any]]:
    """Every namespace of the region -> its links (ifindexes), routes (all tables) and
    nftables ruleset with handles (no counters): equal before and after a restart only if
    nothing was re-created."""

    def run(ns: str, *argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                              text=True).stdout  # fmt: skip

    out = {}
    for ns, lk in region_links(prefix).items():
        routes = run(ns, "ip", "route", "show", "table", "all")
        nft = run(ns, "nft", "-a", "-s", "list", "ruleset")
        out[ns] = {"links": lk, "routes": routes, "nft": nft}
    return out


def supervised(state: Path) -> dict[str, dict[str, Any]]:
    """The region's programs as its supervisor wrote them down: name -> program."""
    prefix = json.loads((state / "region.json").read_text())["prefix"]
    data = json.loads((state / prefix / "supervisor.json").read_text())
    return {p["name"]: p for p in data["programs"]}


def supervisor_pid(state: Path) -> int:
    procs = json.loads((state / "region.json").read_text())["processes"]
    return int(next(p["pid"] for p in procs if p["role"] == "supervisor"))


def instance_pids(state: Path) -> dict[str, int]:
    """Instance netns -> pid of its process, from the agents' records."""
    prefix = json.loads((state / "region.json").read_text())["prefix"]
    out = {}
    for f in (state / prefix / "agents").glob("*/proc/*.json"):
        out[f.stem] = int(json.loads(f.read_text())["pid"])
    return out
