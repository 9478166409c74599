"""Fleet patching: how long from `patch create` to every matching process patched, and the
corrected hot-patch pause at 1, 16 and 64 threads (issue 13).

Brings up its own lab region (2 zones x 2 hosts) and builds the e2e's workload
(tests/e2e/fleetsvc.py: a salted shared library, a TCP service linked against it). Each
host runs 2 instances whose command is the service with 5 processes (the first forks 4
workers): 10 processes per host, 40 in all, every one inside its agent's instance
namespaces. For each round a patch of the library (its own patch id) is built, created
through the API and, once done, rolled back:

  fleet     --canary 0 --max-parallel 4 --health-window 0: the headline. Its time is from
            just before `POST /v1/patches` to the last per-process `applied` result (the
            agents' report times, `at`, on this machine's clock); the time at which the
            API showed all 40 rows, and the time to phase done, are printed alongside.
  defaults  --canary 1 --health-window 5 (max-parallel 1, the default): for reference, the
            cost of the canary and the health windows.

After each apply every process must answer with the patched behaviour, after each
rollback with the old one (a request from inside its instance's namespace), or the bench
fails. Then the pause: bench/hotpatch_pause.py is run as it is in this tree (its own
RESULT line and per-target p50/p99 lines are read back), so its measurement stays the one
of record; on branch wip-pause it counts every stop, failed attempts included.

Ends with `RESULT fleet_s=… pause_p99_ms_1t=… pause_p99_ms_16t=… pause_p99_ms_64t=…`.
Run as root: `python bench/fleet_patch.py [--rounds 3] [--pause-rounds 100]`. Everything it
creates carries its own prefix and is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routes import Api

from yunhan import hotpatch
from yunhan.lab import region as lab
from yunhan.lab.spec import RegionSpec
from yunhan.net import nsutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import fleetsvc  # noqa: E402

PORT = 7100
WORKERS = 5  # processes per instance
PER_HOST = 2  # instances per host
HOSTS = 4
PAUSE = Path(__file__).with_name("hotpatch_pause.py")
_PAUSE_LINE = re.compile(r"^\s*(\d+) threads: pause p50 ([\d.]+) ms\s+p99 ([\d.]+) ms")


@dataclass
class Instance:
    name: str
    netns: str
    host: str


def ask(inst: Instance, x: int) -> list[int]:
    """fleet_value(x) as each process of `inst` answers it (from inside its namespace)."""

    def run() -> list[int]:
        out = []
        for i in range(WORKERS):
            with socket.create_connection(("127.0.0.1", PORT + i), timeout=5) as s:
                s.settimeout(5)
                s.sendall(f"{x}\n".encode())
                out.append(int(s.makefile().readline().split()[1]))
        return out

    return nsutil.run_in(run, net=inst.netns)


def expect(insts: list[Instance], x: int, want: int, what: str) -> None:
    got = {i.name: ask(i, x) for i in insts}
    bad = {n: v for n, v in got.items() if v != [want] * WORKERS}
    if bad:
        raise RuntimeError(f"{what}: expected {want} from every process, got {bad}")


def rows(api: Api, patch: str) -> list[dict[str, Any]]:
    page = api.call("GET", f"/v1/patches/{patch}/processes", params={"limit": 1000})
    return list(page["items"])


def wait_phase(api: Api, patch: str, phases: tuple[str, ...], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st: dict[str, Any] = api.call("GET", f"/v1/patches/{patch}")["status"]
        if st["phase"] in phases:
            return st
        time.sleep(0.1)  # outside the measurement (its end is the agents' report times)
    raise RuntimeError(f"patch {patch} not {'/'.join(phases)} after {timeout} s")


def rollout(
    api: Api, yhp: Path, name: str, expected: int, policy: dict[str, Any]
) -> tuple[float, float, float]:
    """Create patch `name` with `policy`; (s to the last applied result by the agents'
    clocks, s until the API showed them all, s to phase done)."""
    data = yhp.read_bytes()
    body = {"name": name, "content": base64.b64encode(data).decode(),
            "digest": hashlib.sha256(data).hexdigest(), **policy}  # fmt: skip
    t0 = time.time()
    api.call("POST", "/v1/patches", json=body)
    deadline = t0 + 300
    while True:
        got = [r for r in rows(api, name) if r["result"] == "applied"]
        if len(got) >= expected:
            seen = time.time() - t0
            break
        if time.time() > deadline:
            raise RuntimeError(f"{name}: {len(got)} of {expected} processes applied after 300 s")
        time.sleep(0.02)
    last = max(r["at"] for r in got) - t0
    st = wait_phase(api, name, ("done", "paused", "rolling_back", "rolled_back", "failed"), 300)
    if st["phase"] != "done":
        raise RuntimeError(f"{name}: {st['phase']}: {st['message']}")
    per_host = {h: v["applied"] for h, v in st["hosts"].items()}
    if len(got) != expected or set(per_host.values()) != {expected // HOSTS}:
        raise RuntimeError(f"{name}: {len(got)} processes applied, per host {per_host}")
    return last, seen, time.time() - t0


def rollback(api: Api, name: str) -> None:
    api.call("POST", f"/v1/patches/{name}/rollback")
    wait_phase(api, name, ("rolled_back", "failed"), 120)


def pause_figures(rounds: int) -> tuple[dict[int, tuple[float, float]], dict[str, float]]:
    """bench/hotpatch_pause.py as it is in this tree: threads -> (p50, p99) ms, and its
    RESULT line's figures."""
    p = subprocess.run([sys.executable, str(PAUSE), "--rounds", str(rounds)], text=True,
                       capture_output=True, timeout=1800)  # fmt: skip
    for line in p.stdout.splitlines():  # ours is the one RESULT line of this bench
        print(f"  hotpatch_pause: {line}")
    if p.returncode != 0:
        raise RuntimeError(f"hotpatch_pause.py failed ({p.returncode}): {p.stderr[-2000:]}")
    per: dict[int, tuple[float, float]] = {}
    result: dict[str, float] = {}
    for line in p.stdout.splitlines():
        if m := _PAUSE_LINE.match(line):
            per[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
        if line.startswith("RESULT "):
            result = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    return per, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="headline rollouts (median)")
    ap.add_argument("--pause-rounds", type=int, default=100, help="hotpatch_pause.py --rounds")
    ap.add_argument("--prefix", default=f"bfp{secrets.token_hex(2)}")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    state = Path(tempfile.mkdtemp(prefix="yunhan-fleetb-"))
    handle = None
    fleet: list[float] = []
    try:
        svc, lib = fleetsvc.build(state)
        spec = RegionSpec.build(args.prefix, zones=2, hosts_per_zone=2)
        handle = lab.up(spec, state, detach=False)
        api = Api(handle.endpoint, handle.token)
        api.call("POST", "/v1/vpcs", json={"name": "v", "cidrs": ["10.0.0.0/16"]})
        api.call("POST", "/v1/subnets", json={"name": "s", "vpc": "v", "cidr": "10.0.0.0/16"})
        names = [f"w{i}" for i in range(HOSTS * PER_HOST)]
        for i, name in enumerate(names):  # alternating zones: the scheduler fills each host
            api.instance(name, "s", f"az{i % 2 + 1}", [str(svc), str(PORT), str(WORKERS)])
        insts = []
        for name in names:
            st = api.running(name)["status"]
            insts.append(Instance(name, st["netns"], st["host"]))
        hosts = {i.host for i in insts}
        if len(hosts) != HOSTS or any(sum(i.host == h for i in insts) != PER_HOST for h in hosts):
            raise RuntimeError(f"instances not spread {PER_HOST} per host: {insts}")
        expected = HOSTS * PER_HOST * WORKERS
        deadline = time.monotonic() + 30
        while True:  # every worker listening
            try:
                expect(insts, 5, fleetsvc.old_value(5), "before any patch")
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        print(f"region {args.prefix} up: {expected} service processes on {HOSTS} hosts")

        def run(label: str, i: int, policy: dict[str, Any]) -> float:
            src = state / f"fix-{label}-{i}.c"
            src.write_text(fleetsvc.PATCH_V1)
            yhp = state / f"fix-{label}-{i}.yhp"
            hotpatch.build(src, lib, yhp, patch_id=f"fix-{label}-{i}")
            last, seen, done = rollout(api, yhp, f"{label}-{i}", expected, policy)
            expect(insts, 5, 5000, f"{label}-{i} applied")
            rollback(api, f"{label}-{i}")
            expect(insts, 5, fleetsvc.old_value(5), f"{label}-{i} rolled back")
            print(f"  {label} round {i}: every process patched {last:.3f} s after create "
                  f"(seen by the API at {seen:.3f} s), done at {done:.3f} s")  # fmt: skip
            return last

        headline = {"canary": 0, "max_parallel": 4, "health_window": 0}
        fleet = [run("fleet", i, headline) for i in range(args.rounds)]
        defaults = run("defaults", 0, {"canary": 1, "health_window": 5})
    finally:
        if handle is not None:
            handle.down()
        shutil.rmtree(state, ignore_errors=True)
    fleet_s = statistics.median(fleet)
    print(f"fleet ({expected} processes, canary 0, max-parallel 4, health window 0): "
          f"median {fleet_s:.3f} s of {[round(x, 3) for x in fleet]}")  # fmt: skip
    print(f"with the defaults (canary 1, max-parallel 1, health window 5): {defaults:.3f} s")
    per, result = pause_figures(args.pause_rounds)
    for threads, (p50, p99) in sorted(per.items()):
        print(f"pause {threads:2d} threads: p50 {p50:.3f} ms  p99 {p99:.3f} ms")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    keys = ("pause_p99_ms_1t", "pause_p99_ms_16t", "pause_p99_ms_64t")
    print(f"RESULT fleet_s={fleet_s:.3f} "
          + " ".join(f"{k}={result.get(k, float('nan')):.3f}" for k in keys))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
