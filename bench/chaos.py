"""Chaos: a lab region keeps its promises while its server and agents are killed (issue 14).

A region (2 zones x 1 host by default) carries, for `--minutes` (default 30):
  * steady cross-zone traffic between two instances, a1 (az1) and b1 (az2): a ping each
    way every 50 ms and a TCP stream each way (a numbered line every 50 ms, echoed back);
  * a stream of API writes: instance creates and deletes, about one a second;
while a random server or agent is killed with SIGKILL every 3-10 s (the region's
supervisor restarts it). At the end it checks:
  * no packet lost on the unchanged paths (a1 <-> b1), no TCP stream reset;
  * every accepted write converged (each instance there runs, has its namespace and
    answers a ping from a1; each deleted one is gone), and how long that took after the
    last kill;
  * no IP address given to two live instances, at any time;
  * nothing of the region left after `down` (namespace, link, mount, process).
It prints the counts and ends with one line `RESULT key=value …`; exit code 0 when every
check holds. The supervisor's crash-loop limit is lifted for the run (these kills are not
a crash loop); backoff and everything else are the defaults.

    python bench/chaos.py --minutes 30          (as root)
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.traffic import (
    Stream,
    ping,
    ping_counts,
    stream,
    stream_result,
    write_programs,
)
from yunhan.lab import cleanup, region
from yunhan.lab.spec import RegionSpec
from yunhan.lab.supervisor import RestartPolicy, SupervisorState
from yunhan.polling import poll_until

VPC_CIDR, SUBNET_CIDR = "10.7.0.0/16", "10.7.1.0/24"
MAX_WRITE_INSTANCES = 6  # created by the write stream and alive at once, at most


@dataclass
class Result:
    minutes: float
    kills: int = 0
    kills_by_role: dict[str, int] = field(default_factory=dict)
    writes: int = 0  # attempted
    accepted: int = 0
    refused: int = 0  # answered with an error (4xx/5xx): not accepted
    unanswered: int = 0  # no answer (the server died): accepted or not, checked at the end
    packets: int = 0  # ping packets sent on the unchanged paths
    lost: int = 0
    tcp_lines: int = 0
    tcp_errors: list[str] = field(default_factory=list)
    duplicate_ips: list[str] = field(default_factory=list)
    not_converged: list[str] = field(default_factory=list)
    converge_s: float = float("nan")  # from the last kill to every check passing
    leaked: list[str] = field(default_factory=list)
    restarts: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.tcp_errors or self.duplicate_ips or self.not_converged or self.leaked
        )

    def line(self) -> str:
        return (
            f"RESULT ok={int(self.ok)} minutes={self.minutes:g} kills={self.kills} "
            f"restarts={self.restarts} writes={self.writes} accepted={self.accepted} "
            f"refused={self.refused} unanswered={self.unanswered} packets={self.packets} "
            f"lost={self.lost} tcp_lines={self.tcp_lines} tcp_resets={len(self.tcp_errors)} "
            f"duplicate_ips={len(self.duplicate_ips)} not_converged={len(self.not_converged)} "
            f"converge_s={self.converge_s:.1f} leaked={len(self.leaked)}"
        )


class _Api:
    def __init__(self, endpoint: str, token: str) -> None:
        self.c = httpx.Client(
            base_url=endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        )

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.c.request(method, path, **kw)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        r = self.call(method, path, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None


class _Writes:
    """The write stream: creates and deletes instances; remembers what was accepted."""

    def __init__(self, api: _Api, zones: list[str], res: Result, rng: random.Random) -> None:
        self.api, self.zones, self.res, self.rng = api, zones, res, rng
        self.live: dict[str, str] = {}  # id -> ip: accepted creates not (yet) deleted
        self.deleted: set[str] = set()  # accepted deletes
        self.maybe: set[str] = set()  # names of creates that got no answer
        self.maybe_deleted: set[str] = set()  # ids of deletes that got no answer
        self.n = 0
        self.lock = threading.Lock()

    def step(self) -> None:
        self.res.writes += 1
        if len(self.live) >= MAX_WRITE_INSTANCES or (self.live and self.rng.random() < 0.4):
            iid = self.rng.choice(sorted(self.live))
            try:
                r = self.api.call("DELETE", f"/v1/instances/{iid}")
            except httpx.HTTPError:
                self.res.unanswered += 1
                self.maybe_deleted.add(iid)
                return
            if r.status_code < 300 or r.status_code == 404:
                with self.lock:
                    self.live.pop(iid, None)
                    self.deleted.add(iid)
                self.res.accepted += r.status_code < 300
            else:
                self.res.refused += 1
            return
        self.n += 1
        name = f"w{self.n}"
        body = {"name": name, "subnet": "s", "zone": self.rng.choice(self.zones)}
        try:
            r = self.api.call("POST", "/v1/instances", json=body)
        except httpx.HTTPError:
            self.res.unanswered += 1
            self.maybe.add(name)
            return
        if r.status_code >= 300:
            self.res.refused += 1
            return
        inst = r.json()
        ip = str((inst.get("status") or {}).get("ip") or inst.get("ip"))
        with self.lock:
            holders = [i for i, held in self.live.items() if held == ip]
            if ip in ("10.7.1.10", "10.7.1.20"):
                holders.append(ip)
            for holder in holders:
                if holder in self.maybe_deleted and self._gone(holder):
                    # Its delete got no answer but was done: the address was free.
                    self.live.pop(holder, None)
                    self.deleted.add(holder)
                    continue
                self.res.duplicate_ips.append(f"{name} got {ip}, which {holder} holds")
            self.live[inst["id"]] = ip
        self.res.accepted += 1

    def _gone(self, iid: str) -> bool:
        """Is instance `iid` deleted? Asked until the API answers (it may be restarting)."""
        answer: list[int] = []

        def asked() -> bool:
            try:
                answer.append(self.api.call("GET", f"/v1/instances/{iid}").status_code)
            except httpx.HTTPError:
                return False
            return answer[-1] in (200, 404)

        return bool(poll_until(asked, 30, interval=0.2)) and answer[-1] == 404


def _programs(state: Path) -> list[dict[str, Any]]:
    rec = region.RegionRecord.load(state)
    assert rec is not None
    st = SupervisorState.load(rec.supervisor_file)
    return [vars(p) for p in st.programs] if st else []


def _problems(
    api: _Api, writes: _Writes, a1: str, state: Path, victim: str, since: float
) -> list[str]:
    """What is not converged yet (empty: every accepted write converged). The last kill
    (of `victim`, at wall time `since`) must be behind us: every process runs again, and
    the agents it concerns (the victim, or all of them for the server) have reported to
    the API since."""
    dead = [p["name"] for p in _programs(state) if not cleanup.same_process(p["pid"], p["started"])]
    if dead:
        return [f"not running: {dead}"]
    try:
        hosts = api.ok("GET", "/v1/hosts")["items"]
        sick = [h["name"] for h in hosts if not (h.get("status") or {}).get("healthy")]
        stale = [
            h["name"]
            for h in hosts
            if victim in ("server", h["name"])
            and _wall((h.get("status") or {}).get("heartbeat_at")) < since
        ]
        if sick or stale:
            return [f"hosts not healthy: {sick}, not heard of since the last kill: {stale}"]
        rev = api.ok("GET", "/v1/revision")["revision"]
        conv = api.ok("GET", "/v1/converged", params={"revision": rev, "timeout": 5})
        if not conv["converged"]:
            return [f"revision {rev} not converged: pending {conv['pending']}"]
        items = api.ok("GET", "/v1/instances", params={"limit": 1000})["items"]
    except (httpx.HTTPError, RuntimeError) as exc:
        return [f"API: {exc}"]
    out = []
    by_id = {i["id"]: i for i in items}
    ips = [str((i.get("status") or {}).get("ip")) for i in items]
    dup = {ip for ip in ips if ips.count(ip) > 1}
    if dup:
        out.append(f"addresses held twice: {sorted(dup)}")
    for iid in writes.live:
        if iid not in by_id and iid not in writes.maybe_deleted:
            out.append(f"accepted instance {iid} is missing")
    for iid in writes.deleted:
        if iid in by_id:
            out.append(f"deleted instance {iid} is still listed")
    netns = set(cleanup.list_netns())
    for inst in items:
        st = inst.get("status") or {}
        if st.get("phase") != "running":
            out.append(f"instance {inst['name']} is {st.get('phase')}: {st.get('message')}")
        elif Path(str(st.get("netns"))).name not in netns:
            out.append(f"instance {inst['name']}: namespace {st.get('netns')} is missing")
    if out:
        return out
    for inst in items:
        ip = str((inst.get("status") or {}).get("ip"))
        if inst["name"] in ("a1", "b1"):
            continue
        p = subprocess.run(["ip", "netns", "exec", a1, "ping", "-c", "1", "-W", "1", ip],
                           capture_output=True, text=True)  # fmt: skip
        if p.returncode != 0:
            out.append(f"instance {inst['name']} ({ip}) does not answer a ping from a1")
    return out


def _wall(iso: str | None) -> float:
    if not iso:
        return 0.0
    return datetime.datetime.fromisoformat(iso).timestamp()


def _leaks(prefix: str) -> list[str]:
    found = [f"netns {n}" for n in cleanup.list_netns() if cleanup.owned(n, prefix)]
    found += [f"process {p}" for p in cleanup.marked_pids(lambda r: r == prefix)]
    found += [f"link {n}" for n in cleanup.root_links() if cleanup.owned(n, prefix)]
    run_dir = cleanup.RUN_DIR
    if run_dir.is_dir():
        found += [f"file {p}" for p in run_dir.rglob(f"{prefix}-*")]
    return found


def run(
    minutes: float,
    *,
    zones: int = 2,
    hosts_per_zone: int = 1,
    seed: int | None = None,
    kill_every: tuple[float, float] = (3.0, 10.0),
    log: Callable[[str], None] = print,
) -> Result:
    """One chaos run (see the module docstring); the region is always taken down."""
    rng = random.Random(seed)
    res = Result(minutes)
    state = Path(tempfile.mkdtemp(prefix="yunhan-chaos-"))
    spec = RegionSpec.build(None, zones=zones, hosts_per_zone=hosts_per_zone)
    prefix = spec.prefix
    streams: list[Stream] = []
    stop_file = state / "stop-streams"
    try:
        handle = region.up(spec, state, detach=True, policy=RestartPolicy(limit=1_000_000))
        log(f"region {prefix}: {zones} zones x {hosts_per_zone} hosts, API {handle.endpoint}")
        api = _Api(handle.endpoint, handle.token)
        env = dict(os.environ, YUNHAN_ENDPOINT=handle.endpoint, YUNHAN_TOKEN=handle.token,
                   YUNHAN_HOME=str(state), HOME=str(state))  # fmt: skip
        bin_ = str(Path(sys.executable).with_name("yunhan"))
        if not Path(bin_).exists():
            bin_ = shutil.which("yunhan") or "yunhan"
        server_cmd, client = write_programs(state)
        api.ok("POST", "/v1/vpcs", json={"name": "v", "cidrs": [VPC_CIDR]})
        api.ok("POST", "/v1/subnets", json={"name": "s", "vpc": "v", "cidr": SUBNET_CIDR})
        fixed = {"a1": ("az1", "10.7.1.10"), "b1": ("az2", "10.7.1.20")}
        for name, (zone, ip) in fixed.items():
            body = {"name": name, "subnet": "s", "zone": zone, "ip": ip}
            api.ok("POST", "/v1/instances", json={**body, "command": server_cmd.split()})

        def running() -> bool:
            items = api.ok("GET", "/v1/instances")["items"]
            return all((i.get("status") or {}).get("phase") == "running" for i in items)

        if not poll_until(running, 60, interval=0.2):
            raise RuntimeError("a1 and b1 did not start")
        a1_netns = Path(api.ok("GET", "/v1/instances/a1")["status"]["netns"]).name

        def echo_ready() -> bool:
            p = subprocess.run([bin_, "instance", "exec", "a1", "--", sys.executable, "-c",
                                "import socket; socket.create_connection(('10.7.1.20', 7001), 2)"],
                               env=env, capture_output=True)  # fmt: skip
            return p.returncode == 0

        if not poll_until(echo_ready, 30, interval=0.2):
            raise RuntimeError("b1's echo server does not answer")
        streams = [
            stream(bin_, env, "a1", "10.7.1.20", client, stop_file),
            stream(bin_, env, "b1", "10.7.1.10", client, stop_file),
            ping(bin_, env, "a1", "10.7.1.20", count=10_000_000, interval=0.05),
            ping(bin_, env, "b1", "10.7.1.10", count=10_000_000, interval=0.05),
        ]
        writes = _Writes(api, [z.name for z in spec.zones], res, rng)
        end = time.monotonic() + minutes * 60
        stop = threading.Event()

        def write_loop() -> None:
            while not stop.is_set():
                writes.step()
                stop.wait(rng.uniform(0.5, 1.5))

        writer = threading.Thread(target=write_loop, name="writes", daemon=True)
        writer.start()
        last_kill, last_kill_wall, victim_name = time.monotonic(), time.time(), ""
        log(f"chaos for {minutes:g} min: a kill every {kill_every[0]:g}-{kill_every[1]:g} s")
        while True:
            pause = rng.uniform(*kill_every)
            if time.monotonic() + pause > end:
                break
            time.sleep(pause)  # the chaos' own rhythm, not a wait for a condition
            alive = [
                p
                for p in _programs(state)
                if p["role"] in ("server", "agent") and cleanup.same_process(p["pid"], p["started"])
            ]
            if not alive:
                continue
            victim = rng.choice(alive)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            last_kill, last_kill_wall, victim_name = time.monotonic(), time.time(), victim["name"]
            res.kills += 1
            res.kills_by_role[victim["role"]] = res.kills_by_role.get(victim["role"], 0) + 1
            log(f"  {time.strftime('%H:%M:%S')} kill {victim['role']} {victim['name']} "
                f"(kill {res.kills}, writes {res.writes}, accepted {res.accepted})")  # fmt: skip
        stop.set()
        writer.join(30)
        # Converged: every check passes; timed from the last kill.
        problems: list[str] = []

        def settled() -> bool:
            nonlocal problems
            problems = _problems(api, writes, a1_netns, state, victim_name, last_kill_wall)
            return not problems

        if poll_until(settled, 180, interval=0.5, max_interval=1.0):
            res.converge_s = time.monotonic() - last_kill
        else:
            res.not_converged = problems
        res.restarts = sum(int(p["restarts"]) for p in _programs(state))
        stop_file.touch()
        for s in streams:
            if s.name.startswith("ping"):
                s.proc.send_signal(signal.SIGINT)
        for s in streams:
            _, out = s.result(60)
            if s.name.startswith("ping"):
                sent, received = ping_counts(out)
                res.packets += sent
                # A probe whose reply was on its way when SIGINT came is not lost.
                res.lost += max(sent - received - 1, 0)
                log(f"  {s.name}: {sent} sent, {received} received")
            else:
                r = stream_result(out)
                res.tcp_lines += int(r["echoed"])
                if r["error"]:
                    res.tcp_errors.append(f"{s.name}: {r['error']}")
                log(f"  {s.name}: {r['echoed']} lines echoed, error {r['error']}")
        streams = []
    finally:
        for s in streams:
            if s.proc.poll() is None:
                s.proc.kill()
        region.down(state)
        res.leaked = _leaks(prefix)
        shutil.rmtree(state, ignore_errors=True)
    log(
        f"kills {res.kills} {res.kills_by_role}, restarts {res.restarts}; writes {res.writes} "
        f"(accepted {res.accepted}, refused {res.refused}, unanswered {res.unanswered}); "
        f"packets {res.packets}, lost {res.lost}; tcp lines {res.tcp_lines}, resets "
        f"{len(res.tcp_errors)}; converged {res.converge_s:.1f} s after the last kill; "
        f"leaked {len(res.leaked)}"
    )
    for what in (res.tcp_errors, res.duplicate_ips, res.not_converged, res.leaked):
        for line in what[:10]:
            log(f"  ! {line}")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--zones", type=int, default=2)
    ap.add_argument("--hosts-per-zone", type=int, default=1)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    res = run(args.minutes, zones=args.zones, hosts_per_zone=args.hosts_per_zone, seed=args.seed)
    print(res.line(), flush=True)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
