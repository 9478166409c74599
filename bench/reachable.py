"""Time from "instance create accepted" to "the instance answers a ping from another zone".

Brings up its own lab region (2 zones x 2 hosts unless told otherwise), creates a VPC, a
subnet and instance A in zone az1 over the HTTP API and waits until it runs. Then, N times:

  1. opens a raw ICMP socket inside A's network namespace (created by a thread that entered
     it with setns, so the socket belongs to A's namespace) and starts a prober thread that
     sends an echo request to B's address every `--interval` ms;
  2. POSTs the create of instance B in zone az2 with that address (a new one every round,
     as a new instance gets: A never resolved it before); t0 is the moment
     the 201 response has been read (monotonic clock, and wall clock for the logs);
  3. the prober timestamps the first echo *reply* from B's address (ICMP errors such as
     "host unreachable" from A's VPC namespace, while B's route does not exist yet, are
     ignored); reach = t_reply - t0. The error is at most one interval (a reply can only
     come to a request sent after the path exists);
  4. deletes B and waits until every agent has applied the delete (GET /v1/converged).

The split comes from the agents' logs: each apply that changed something logs
"apply R took X ms: observe …, execute …" (yunhan.agent.dataplane) at its end, so its start
is end - X. For B's host and A's host it prints, from t0: when the agent started applying
(the document had arrived), when it finished. Reachability needs both hosts: B's host builds
B (and the VPC namespace when B is the VPC's first member there), A's host adds B's route.

Prints p50/p95/p99/max and ends with `RESULT reach_p50_ms=… reach_p99_ms=… n=…`. Run as
root: `PYTHONPATH=. python bench/reachable.py [-n 30]`. Everything it creates carries its own
region prefix and is removed at the end, even on failure; probes go only to B's lab address,
from inside A's namespace, and are bounded in number.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import secrets
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from yunhan.lab import region as lab
from yunhan.lab.spec import RegionSpec
from yunhan.net import nsutil

VPC_CIDR = "10.78.0.0/16"
SUBNET_CIDR = "10.78.0.0/20"
A_IP = "10.78.1.10"
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0


def b_ip(i: int) -> str:
    """A fresh address per round, as a new instance would get: A has never resolved it."""
    return f"10.78.{2 + i // 200}.{20 + i % 200}"


_LOG_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) agent\[(\S+)\] INFO apply (\d+) took ([\d.]+) ms"
)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    payload = b"yunhan-reach-bench"
    hdr = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, _checksum(hdr + payload), ident, seq) + payload


class Prober(threading.Thread):
    """Sends echo requests to `dst` from a socket of A's namespace until the first reply."""

    def __init__(self, sock: socket.socket, dst: str, interval: float, limit: float) -> None:
        super().__init__(name="prober", daemon=True)
        self.sock, self.dst, self.interval, self.limit = sock, dst, interval, limit
        self.icmp_id = secrets.randbits(16)
        self.sent = 0
        self.reply_at: float | None = None  # time.monotonic() of the first reply
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        nxt = time.monotonic()
        while not self.stop.is_set() and self.reply_at is None:
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= nxt:
                self.sent += 1
                # ENETUNREACH and friends while the path does not exist yet
                with contextlib.suppress(OSError):
                    self.sock.sendto(_echo(self.icmp_id, self.sent & 0xFFFF), (self.dst, 0))
                nxt = now + self.interval
            ready, _, _ = select.select([self.sock], [], [], max(0.0, nxt - time.monotonic()))
            if not ready:
                continue
            data, (src, _port) = self.sock.recvfrom(2048)
            t = time.monotonic()
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 8 or src != self.dst:
                continue
            typ, _code, _ck, ident, _seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if typ == ICMP_ECHOREPLY and ident == self.icmp_id:
                self.reply_at = t


@dataclass
class Sample:
    reach_ms: float | None
    post_ms: float  # the create request itself (send -> 201 read)
    t0_wall: float
    host: str
    sent: int
    applies: dict[str, tuple[float, float]] = field(default_factory=dict)  # host -> start, end


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def _wall(ts: str) -> float:
    return datetime.datetime.strptime(ts, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _applies(log_dir: Path) -> list[tuple[str, float, float]]:
    """(host, start wall time, end wall time) of every logged apply with changes."""
    out = []
    for f in log_dir.glob("*.log"):
        for line in f.read_text(errors="replace").splitlines():
            m = _LOG_RE.match(line)
            if m:
                end = _wall(m.group(1))
                out.append((m.group(2), end - float(m.group(4)) / 1e3, end))
    return out


class Api:
    def __init__(self, endpoint: str, token: str) -> None:
        self.c = httpx.Client(
            base_url=endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
        )

    def call(self, method: str, path: str, **kw: Any) -> Any:
        r = self.c.request(method, path, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def converge(self, timeout: float = 60.0) -> None:
        rev = self.call("GET", "/v1/revision")["revision"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = self.call("GET", "/v1/converged", params={"revision": rev, "timeout": 10})
            if c["converged"]:
                return
        raise RuntimeError(f"revision {rev} did not converge in {timeout} s: {c}")

    def running(self, iid: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            inst: dict[str, Any] = self.call("GET", f"/v1/instances/{iid}")
            if (inst.get("status") or {}).get("phase", inst.get("phase")) == "running":
                return inst
            time.sleep(0.05)  # poll interval: waiting for A once, outside the measurement
        raise RuntimeError(f"instance {iid} not running in {timeout} s")


def _status(inst: dict[str, Any], key: str) -> Any:
    return (inst.get("status") or {}).get(key, inst.get(key))


def _wait_gone(prefix: str, short_id: str, ip: str, timeout: float = 20.0) -> None:
    """Until B's namespace and every route to B's address are gone from the region's hosts.

    Read from the kernel, not from the API: a round must start without B, or a late reply
    of the last B would be taken for the new one's."""
    deadline = time.monotonic() + timeout
    while True:
        names = os.listdir("/run/netns")
        left = [n for n in names if n.startswith(prefix) and n.endswith(f"-i-{short_id}")]
        for n in names:
            if n.startswith(prefix) and re.search(r"-v\d+$", n):
                r = subprocess.run(
                    ["ip", "-n", n, "route", "show", f"{ip}/32"],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if r.stdout.strip():
                    left.append(f"route in {n}")
        if not left:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"B still present after its delete converged: {left}")
        time.sleep(0.02)  # poll interval; outside the measurement


def measure(
    api: Api, prefix: str, a_netns: str, n: int, interval: float, limit: float
) -> list[Sample]:
    sock = nsutil.run_in(
        lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        net=a_netns,
    )
    samples = []
    try:
        for i in range(n):
            prober = Prober(sock, b_ip(i), interval, limit)
            prober.start()
            t_send = time.monotonic()
            inst = api.call(
                "POST",
                "/v1/instances",
                json={"name": f"b{i}", "subnet": "s", "zone": "az2", "ip": b_ip(i)},
            )
            t0, t0_wall = time.monotonic(), time.time()
            prober.join()
            prober.stop.set()
            reach = None if prober.reply_at is None else (prober.reply_at - t0) * 1e3
            s = Sample(reach, (t0 - t_send) * 1e3, t0_wall, str(_status(inst, "host")), prober.sent)
            samples.append(s)
            print(
                f"  {i + 1:3d}/{n}: host {s.host:<7} reach "
                + (f"{reach:7.1f} ms" if reach is not None else "   none   ")
                + f"  ({prober.sent} probes, create {s.post_ms:.1f} ms)",
                flush=True,
            )
            api.call("DELETE", f"/v1/instances/{inst['id']}")
            api.converge()
            _wait_gone(prefix, str(inst["id"]).rsplit("-", 1)[-1], b_ip(i))
            # Drain replies of this round so none is taken for the next one's.
            while select.select([sock], [], [], 0)[0]:
                sock.recv(2048)
    finally:
        sock.close()
    return samples


def _split(samples: list[Sample], log_dir: Path, a_host: str, verbose: bool) -> None:
    applies = _applies(log_dir)
    rows: dict[str, list[float]] = {}
    for i, s in enumerate(samples):
        if s.reach_ms is None:
            continue
        sent = s.t0_wall - s.post_ms / 1e3
        line = []
        for role, host in (("B host", s.host), ("A host", a_host)):
            # The first apply of that host that ended after the create was sent.
            mine = sorted((en, st) for h, st, en in applies if h == host and en > sent)
            if not mine:
                continue
            en, st = mine[0]
            got, done = (st - s.t0_wall) * 1e3, (en - s.t0_wall) * 1e3
            rows.setdefault(f"{role} got document", []).append(got)
            rows.setdefault(f"{role} applied", []).append(done)
            rows.setdefault(f"{role} apply took", []).append(done - got)
            line.append(f"{role} {got:6.1f} -> {done:6.1f}")
        if verbose:
            print(f"  round {i + 1:3d}: " + "  ".join(line) + f"  reply {s.reach_ms:6.1f}")
    if not rows:
        print("split: no apply timings found in the agents' logs")
        return
    print("split, ms after the create was accepted (agent logs, 1 ms resolution):")
    for k, xs in rows.items():
        print(
            f"  {k:<18} p50 {statistics.median(xs):7.1f}  p95 {_pct(xs, 95):7.1f}"
            f"  max {max(xs):7.1f}  (n={len(xs)})"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=30, help="instances B to create")
    ap.add_argument("--interval", type=float, default=2.0, help="probe interval, ms")
    ap.add_argument("--limit", type=float, default=15.0, help="give up on one B after s")
    ap.add_argument("--hosts-per-zone", type=int, default=2)
    ap.add_argument("--prefix", default=f"talr{secrets.token_hex(2)}")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the split per round")
    ap.add_argument("--keep-logs", help="copy the region's logs to this directory at the end")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    if not 1 <= args.n <= 1000 or not 0.5 <= args.interval <= 1000:
        print("-n must be 1..1000 and --interval 0.5..1000 ms", file=sys.stderr)
        return 2
    state = Path(tempfile.mkdtemp(prefix="yunhan-reach-"))
    handle = None
    try:
        spec = RegionSpec.build(args.prefix, zones=2, hosts_per_zone=args.hosts_per_zone)
        handle = lab.up(spec, state, detach=False)
        api = Api(handle.endpoint, handle.token)
        api.call("POST", "/v1/vpcs", json={"name": "v", "cidrs": [VPC_CIDR]})
        api.call("POST", "/v1/subnets", json={"name": "s", "vpc": "v", "cidr": SUBNET_CIDR})
        a = api.call(
            "POST", "/v1/instances", json={"name": "a", "subnet": "s", "zone": "az1", "ip": A_IP}
        )
        a = api.running(a["id"])
        api.converge()
        a_netns, a_host = str(_status(a, "netns")), str(_status(a, "host"))
        print(f"region {args.prefix}: A on {a_host} ({a_netns}); {args.n} x B in az2")
        samples = measure(api, args.prefix, a_netns, args.n, args.interval / 1e3, args.limit)
        _split(samples, handle.record.log_dir, a_host, args.verbose)
    finally:
        if handle is not None:
            if args.keep_logs:
                shutil.copytree(handle.record.log_dir, args.keep_logs, dirs_exist_ok=True)
            handle.down()
        shutil.rmtree(state, ignore_errors=True)
    reach = [s.reach_ms for s in samples if s.reach_ms is not None]
    lost = len(samples) - len(reach)
    if not reach:
        print(f"RESULT reach_p50_ms=nan reach_p99_ms=nan n=0 lost={lost}")
        return 1
    print(
        f"reach (create accepted -> first reply), ms: p50 {statistics.median(reach):.1f}"
        f"  p95 {_pct(reach, 95):.1f}  p99 {_pct(reach, 99):.1f}  max {max(reach):.1f}"
        f"  min {min(reach):.1f}  (n={len(reach)}, lost {lost}, probe every {args.interval} ms)"
    )
    post = [s.post_ms for s in samples]
    print(f"create request itself, ms: p50 {statistics.median(post):.1f}  max {max(post):.1f}")
    print(
        f"RESULT reach_p50_ms={statistics.median(reach):.1f} reach_p99_ms={_pct(reach, 99):.1f}"
        f" n={len(reach)}"
    )
    return 0 if not lost else 1


if __name__ == "__main__":
    sys.exit(main())
