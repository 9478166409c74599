"""How long the `yunhan` CLI takes to start: `--help`, `vpc list`, beside `python -c pass`.

    python bench/cli_start.py [-n 15] [--endpoint URL --token T]

Without --endpoint it starts a real `yunhan server` on 127.0.0.1 (a free port) over a
temporary state directory, creates three VPCs, and lists them: `vpc list` then measures
the CLI's start, one HTTP round trip to a real API and the table. The three commands run
N times each, interleaved (so that a noisy neighbour hurts all three alike); the CPU time
is user+sys of each child (resource.getrusage RUSAGE_CHILDREN, the server's own CPU is not
counted: it is still running), the wall time is from spawn to exit. Medians are printed;
the last line is `RESULT help_ms=… list_ms=… python_ms=…` (CPU medians).

The CLI is run as the console script runs it (`from yunhan.cli.main import app; app()`),
with the interpreter running this file, in the temporary directory: PYTHONPATH decides
which tree is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CLI = "import sys; sys.argv[0] = 'yunhan'; from yunhan.cli.main import app; app()"


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(cpu ms, wall ms) of one run; fails loudly if the command fails."""
    before, t0 = cpu_children(), time.perf_counter()
    # cwd: `python -c` puts the current directory first on sys.path, before PYTHONPATH.
    p = subprocess.run(argv, env=env, capture_output=True, cwd=env["HOME"])
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{argv[3:]} failed ({p.returncode}): {p.stderr.decode()}")
    return (cpu_children() - before) * 1000, wall * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, str]:
    token = "yh_bench-" + secrets.token_hex(8)
    (tmp / "admin.token").write_text(token)
    endpoint = f"http://127.0.0.1:{free_port()}"
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "server", "--state-dir", str(tmp / "state"),
         "--listen", endpoint.removeprefix("http://"),
         "--admin-token-file", str(tmp / "admin.token")],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            req = urllib.request.Request(
                endpoint + "/v1/revision", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                json.load(r)
            return proc, endpoint, token
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the server did not start; see {tmp / 'server.log'}") from None
            time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=15, help="runs of each command")
    ap.add_argument("--endpoint", help="an API that is already up (default: start one)")
    ap.add_argument("--token", help="its token")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="yh-clibench-") as d:
        tmp = Path(d)
        env = {**os.environ, "HOME": str(tmp)}  # no config file of the user's
        proc = None
        if opts.endpoint:
            endpoint, token = opts.endpoint, opts.token or ""
        else:
            proc, endpoint, token = start_server(tmp, env)
        try:
            env.update(YUNHAN_ENDPOINT=endpoint, YUNHAN_TOKEN=token)
            cli = [sys.executable, "-c", CLI]
            if proc is not None:
                for i in range(3):
                    measure([*cli, "vpc", "create", f"bench{i}", "--cidr", f"10.{i}.0.0/16"], env)
            runs: dict[str, list[tuple[float, float]]] = {"help": [], "list": [], "python": []}
            argvs = {
                "help": [*cli, "--help"],
                "list": [*cli, "vpc", "list"],
                "python": [sys.executable, "-c", "pass"],
            }
            for argv in argvs.values():  # warm the page cache and the .pyc files
                measure(argv, env)
            for _ in range(opts.n):
                for name, argv in argvs.items():
                    runs[name].append(measure(argv, env))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    where = "an API it started" if proc is not None else endpoint
    print(f"{opts.n} runs each, interleaved; `vpc list` against {where}")
    med: dict[str, float] = {}
    for name, samples in runs.items():
        cpu = statistics.median(s[0] for s in samples)
        wall = statistics.median(s[1] for s in samples)
        med[name] = cpu
        print(f"  {name:7} cpu {cpu:7.1f} ms   wall {wall:7.1f} ms")
    print(f"RESULT help_ms={med['help']:.0f} list_ms={med['list']:.0f} "
          f"python_ms={med['python']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
