"""VIP failover: how fast the platform re-points a VIP, and the gap keepalived sees.

Brings up its own lab region (3 zones x 1 host): instances a (az1) and b (az2), allowed to
hold every VIP of the bench and each running tests/e2e/vipnode.py (a UDP responder that
names itself; keepalived when told), and a client c (az3). This process probes from inside
c's namespace: a UDP datagram to the VIP every --period ms, each reply naming the instance
that sent it and echoing the probe's number, timestamped on this machine's clock (every
namespace shares it); a measurement ends at the first reply from the NEW holder to a probe
sent after the round's action. In interleaved rounds (machine noise hits every kind alike):

  garp        the new holder has the address (`ip addr add`) and announces it with one
              gratuitous ARP, a raw frame sent on its eth0 by this process: the time from
              the send to the client's first reply from it (the agent's tap, the claim, the
              controller, the client host's apply). --rounds per direction (a->b, b->a).
  move        `POST /v1/vips/{v}/move` to the new holder (which has the address): the
              time from the call to the first reply from it. --rounds per direction.
  keepalived  keepalived in a and b (VRRPv3, unicast peers, advert_int --advert-int, both
              BACKUP with nopreempt): the master's keepalived is stopped (SIGTERM: it drops
              the address and sends a priority 0 advertisement), the gap is from the last
              reply of the old holder to the first of the new; it is started again and
              rejoins as backup. --keepalived-rounds in all, directions alternating.

A VIP that changes holder more than 3 times in 30 s is damped (docs/vips.md), so the garp
rounds rotate over a pool of --pool VIPs and every round first asks the API whether its VIP
may change holder once more; the keepalived rounds (one VIP) wait for that. Moves never damp
(an operator's decision) and use a VIP of their own.

Then, from the agents' logs, where the time of the rounds goes (the claimant's agent
reading the announcement, its head start, the claim's answer, the client's host applying
the new document). Ends with `RESULT garp_p50_ms=… garp_p99_ms=… move_p50_ms=…
move_p99_ms=… keepalived_gap_p50_ms=… keepalived_gap_p99_ms=… lost=…` (lost: rounds where
the new holder never answered within --timeout s). Run as root, alone on the machine if
the tails matter (the probes and the region share its cores):
`python bench/vip_failover.py`. Everything it creates carries its own prefix and is removed
at the end, even on failure.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from routes import Api, pct

from yunhan.controller.vips import Damping
from yunhan.lab import region as lab
from yunhan.lab.spec import RegionSpec
from yunhan.net import nsutil
from yunhan.net.arpwatch import ARP_REQUEST, Arp, encode_arp

NODE = Path(__file__).resolve().parents[1] / "tests" / "e2e" / "vipnode.py"
UDP_PORT = 7001  # vipnode's
STEADY = 5  # replies in a row from the holder before a round's action
SIOCGIFHWADDR = 0x8927
DIRS = ("a->b", "b->a")
KEEPALIVED_CONF = """\
global_defs {{
  router_id {name}
  vrrp_version 3
  max_auto_priority -1
}}
vrrp_instance vk {{
  state BACKUP
  nopreempt
  interface eth0
  virtual_router_id 61
  priority {priority}
  advert_int {advert}
  unicast_src_ip {me}
  unicast_peer {{
    {peer}
  }}
  virtual_ipaddress {{
    {address}/32 dev eth0
  }}
}}
"""


@dataclass
class Sample:
    act: float  # when the action was taken (the GARP sent, the call made, the SIGTERM)
    last_old: float | None  # the old holder's last reply before the new one's first
    first_new: float | None  # None: the new holder never answered (lost)
    early: int = 0  # replies of the new holder to probes sent before the action


@dataclass
class Round:
    kind: str
    way: str  # "a->b" or "b->a"
    vip_ip: str
    claimant_host: str  # the new holder's
    sample: Sample


_AGENT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) agent\[([\w-]+)\] \w+ (.*)$")
_APPLY = re.compile(r"^apply \d+ took ([\d.]+) ms")


def agent_logs(log_dir: Path) -> dict[str, list[tuple[float, str]]]:
    """host -> (unix time, message) of its agent's log lines (milliseconds: the logs')."""
    out: dict[str, list[tuple[float, str]]] = {}
    for f in log_dir.glob("*.log"):
        for line in f.read_text(errors="replace").splitlines():
            m = _AGENT_LINE.match(line)
            if m:  # logging writes local time; the machine's clock is everyone's
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.setdefault(m.group(2), []).append((t, m.group(3)))
    return out


def _first(
    lines: list[tuple[float, str]], after: float, match: Callable[[str], bool]
) -> float | None:
    return next((t for t, msg in lines if t >= after and match(msg)), None)


def profile(
    rounds: list[Round], logs: dict[str, list[tuple[float, str]]], client_host: str
) -> None:
    """Where the time of the rounds goes, from the agents' logs (whose timestamps are
    milliseconds, hence the -1 ms of slack): milliseconds after the round's action to the
    claimant's agent reading the announcement, its head start, the claim's answer, the
    client's host applying the new document, and the first reply; p50 / p99."""
    steps: dict[str, dict[str, list[float]]] = {"garp": {}, "move": {}, "keepalived": {}}
    for r in rounds:
        s = r.sample
        if r.kind not in steps or s.first_new is None:
            continue
        at = s.act - 0.001
        marks: dict[str, float | None] = {}
        if r.kind in ("garp", "keepalived"):
            own = logs.get(r.claimant_host, [])
            ann = _first(own, at, lambda m, ip=r.vip_ip: f" announced {ip} " in m)
            marks["claimant agent read the GARP"] = ann
            if ann is not None:
                marks["claimant host re-pointed (head start)"] = _first(
                    own, ann, lambda m: m.startswith("re-pointed VIPs")
                )
                marks["claim answered (won)"] = _first(
                    own, ann, lambda m, ip=r.vip_ip: f"claiming {ip} at epoch" in m
                )
        end = _first(logs.get(client_host, []), at, lambda m: bool(_APPLY.match(m)))
        if end is not None:
            took = _APPLY.match(
                next(m for t, m in logs[client_host] if t == end and _APPLY.match(m))
            )
            assert took is not None
            marks["client host apply began"] = end - float(took.group(1)) / 1e3
            marks["client host apply ended"] = end
        marks["first reply from the new holder"] = s.first_new
        for k, t in marks.items():
            if t is not None:
                steps[r.kind].setdefault(k, []).append((t - s.act) * 1e3)
    for kind, marks_ in steps.items():
        if not marks_:
            continue
        what = {"garp": "GARP", "move": "move call", "keepalived": "master's keepalived stop"}
        print(f"{kind}: where the time goes (ms after the {what[kind]}, p50 / p99, from the "
              "agents' logs)")  # fmt: skip
        for k, xs in marks_.items():
            print(f"  {k:40s} {statistics.median(xs):7.1f} / {pct(xs, 99):7.1f}  ({len(xs)})")


class Prober:
    """UDP probes from a socket made inside the client's namespace (it stays there)."""

    def __init__(self, netns: str, period: float) -> None:
        self.sock = nsutil.run_in(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
                                  net=netns)  # fmt: skip
        self.sock.setblocking(False)
        self.period = period
        self.seq = 0

    def _drain(self) -> list[tuple[float, str, str, int]]:
        """(time read, source address, who answered, the probe's sequence number)."""
        out = []
        while True:
            try:
                data, src = self.sock.recvfrom(256)
            except BlockingIOError:
                return out
            name, _, seq = data.decode(errors="replace").partition(" ")
            out.append((time.time(), src[0], name, int(seq) if seq.isdigit() else -1))

    def round(
        self, vip: str, old: str, new: str, act: Callable[[], float], timeout: float
    ) -> Sample:
        """Probe `vip` until STEADY replies in a row come from `old`, take the action (it
        returns its own timestamp), and go on until the first reply from `new` to a probe
        sent after it. Only replies to this round's probes count: packets queued on an
        earlier path come out in bursts when it changes. A reply from `new` to a probe sent
        before the action is counted in `early` (the new holder answered already)."""
        self._drain()
        first_seq = self.seq
        act_seq: int | None = None
        run, last_old, t_act, early = 0, None, None, 0
        start = time.time()
        next_send = start
        while True:
            now = time.time()
            if now >= next_send:
                self.sock.sendto(str(self.seq).encode(), (vip, UDP_PORT))
                self.seq += 1
                next_send = max(next_send + self.period, now)
            if t_act is None and now - start > timeout:
                raise RuntimeError(f"{old} does not answer steadily on {vip}")
            if t_act is not None and now - t_act > timeout:
                return Sample(t_act, last_old, None, early)
            ready, _, _ = select.select([self.sock], [], [], max(0.0, next_send - time.time()))
            if not ready:
                continue
            for t, src, name, seq in self._drain():
                if src != vip or seq < first_seq:
                    continue  # a late reply of an earlier round
                if name == old:
                    last_old = t
                if act_seq is None:
                    run = run + 1 if name == old else 0
                    if run >= STEADY:
                        act_seq = self.seq  # probes from here on are sent after the action
                        t_act = act()
                elif name == new and seq < act_seq:
                    early += 1
                elif name == new:
                    assert t_act is not None
                    return Sample(t_act, last_old, t, early)


def garp_sender(netns: str) -> tuple[socket.socket, str]:
    """A raw socket on eth0 inside `netns`, and eth0's MAC."""

    def make() -> tuple[socket.socket, str]:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind(("eth0", 0))
        hw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", b"eth0"))[18:24]
        return s, ":".join(f"{x:02x}" for x in hw)

    return nsutil.run_in(make, net=netns)


def ip_addr(netns: str, verb: str, vip: str) -> None:
    subprocess.run(["ip", "-n", netns, "addr", verb, f"{vip}/32", "dev", "eth0"], check=True,
                   capture_output=True)  # fmt: skip


@dataclass
class Node:
    name: str  # also its hostname: what its replies say
    id: str
    ip: str
    netns: str
    garp: socket.socket
    mac: str


@dataclass
class Bench:
    api: Api
    prober: Prober
    nodes: dict[str, Node]  # "a", "b"
    rundir: Path
    damping: Damping
    timeout: float
    holder: dict[str, str] = field(default_factory=dict)  # VIP name -> "a" | "b"
    ips: dict[str, str] = field(default_factory=dict)  # VIP name -> address
    changes: dict[str, list[float]] = field(default_factory=dict)  # VIP name -> change times
    hosts: dict[str, str] = field(default_factory=dict)  # "a", "b" -> its host
    rounds: list[Round] = field(default_factory=list)

    def may_change(self, vip: str, now: float) -> bool:
        """Can `vip` change holder once more without being damped? (our count first, then
        the API's, which is the authority)."""
        horizon = now - self.damping.window - 1.0  # a margin for the claim's own delay
        mine = [t for t in self.changes.get(vip, ()) if t > horizon]
        if len(mine) >= self.damping.changes:
            return False
        st = self.api.call("GET", f"/v1/vips/{vip}")["status"]
        theirs = [t for t in st["recent_changes"] if t > horizon]
        return st["damped_since"] is None and len(theirs) < self.damping.changes

    def changed(self, vip: str, to: str) -> None:
        self.holder[vip] = to
        self.changes.setdefault(vip, []).append(time.time())

    def signal(self, node: str, sig: signal.Signals) -> None:
        os.kill(int((self.rundir / f"{node}.node.pid").read_text()), sig)

    def backups(self, node: str) -> int:
        """How often `node`'s keepalived has entered BACKUP (its log)."""
        log = self.rundir / f"{node}.klog"
        return log.read_text(errors="replace").count("Entering BACKUP STATE") if log.exists() else 0

    def wait_holder(self, vip: str, node: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.api.call("GET", f"/v1/vips/{vip}")["status"]["holder"] != self.nodes[node].id:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node} does not hold {vip} after {timeout} s")
            time.sleep(0.05)  # outside every measurement

    # -- the rounds ---------------------------------------------------------------------

    def garp(self, vip: str) -> tuple[str, Sample]:
        old = self.holder[vip]
        new = "b" if old == "a" else "a"
        o, n = self.nodes[old], self.nodes[new]
        ip = self.ips[vip]
        ip_addr(n.netns, "add", ip)
        frame = encode_arp(Arp(ARP_REQUEST, n.mac, ip, "00:00:00:00:00:00", ip))

        def act() -> float:
            t = time.time()
            n.garp.send(frame)
            return t

        sample = self.prober.round(ip, o.name, n.name, act, self.timeout)
        ip_addr(o.netns, "del", ip)
        self.changed(vip, new)
        self.rounds.append(Round("garp", f"{old}->{new}", ip, self.hosts[new], sample))
        return f"{old}->{new}", sample

    def move(self, vip: str) -> tuple[str, Sample]:
        old = self.holder[vip]
        new = "b" if old == "a" else "a"
        errors: list[BaseException] = []

        def post() -> None:
            try:
                self.api.call("POST", f"/v1/vips/{vip}/move", json={"instance": new})
            except BaseException as exc:  # handed to the caller below
                errors.append(exc)

        caller = threading.Thread(target=post)

        def act() -> float:  # the prober keeps probing while the call runs
            t = time.time()
            caller.start()
            return t

        sample = self.prober.round(self.ips[vip], old, new, act, self.timeout)
        caller.join()
        if errors:
            raise errors[0]
        self.changed(vip, new)
        self.rounds.append(Round("move", f"{old}->{new}", self.ips[vip], self.hosts[new], sample))
        return f"{old}->{new}", sample

    def keepalived(self, vip: str) -> tuple[str, Sample]:
        old = self.holder[vip]
        new = "b" if old == "a" else "a"
        before = self.backups(old)

        def act() -> float:
            t = time.time()
            self.signal(old, signal.SIGUSR2)  # stop the master's keepalived
            return t

        sample = self.prober.round(self.ips[vip], old, new, act, self.timeout)
        self.changed(vip, new)
        self.rounds.append(
            Round("keepalived", f"{old}->{new}", self.ips[vip], self.hosts[new], sample)
        )
        self.wait_holder(vip, new)
        self.signal(old, signal.SIGUSR1)  # started again: it rejoins as backup
        deadline = time.monotonic() + 30
        while self.backups(old) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{old}'s keepalived did not come back as backup")
            time.sleep(0.05)
        return f"{old}->{new}", sample


def instance(api: Api, name: str, zone: str, command: list[str]) -> None:
    body = {"name": name, "subnet": "s", "zone": zone, "command": command}
    api.call("POST", "/v1/instances", json=body)


def summary(label: str, xs: list[float]) -> str:
    if not xs:
        return f"{label}: no samples"
    return (f"{label}: p50 {statistics.median(xs):.1f} ms, p99 {pct(xs, 99):.1f} ms, "
            f"min {min(xs):.1f}, max {max(xs):.1f} over {len(xs)}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=50, help="garp and move rounds per direction")
    ap.add_argument("--keepalived-rounds", type=int, default=10)
    ap.add_argument("--pool", type=int, default=20, help="VIPs the garp rounds rotate over")
    ap.add_argument("--period", type=float, default=1.0, help="probe interval (ms)")
    ap.add_argument("--advert-int", type=float, default=0.1, help="keepalived's (s)")
    ap.add_argument("--timeout", type=float, default=10.0, help="a round's limit (s)")
    ap.add_argument("--prefix", default=f"bvf{secrets.token_hex(2)}")
    ap.add_argument("--logs", type=Path, help="copy the region's logs here before `down`")
    ap.add_argument("--dump", type=Path, help="write every round here (JSON lines)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    if shutil.which("keepalived") is None:
        print("keepalived is missing: apt-get install -y keepalived", file=sys.stderr)
        return 2
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    state = Path(tempfile.mkdtemp(prefix="yunhan-vipf-"))
    rundir = state / "run"
    rundir.mkdir()
    handle = None
    res: dict[str, dict[str, list[float]]] = {k: {d: [] for d in DIRS} for k in
                                              ("garp", "move", "keepalived")}  # fmt: skip
    lost: dict[str, int] = {"garp": 0, "move": 0, "keepalived": 0}
    early: dict[str, int] = {"garp": 0, "move": 0, "keepalived": 0}
    out: dict[str, float] = {}
    try:
        spec = RegionSpec.build(args.prefix, zones=3, hosts_per_zone=1)
        handle = lab.up(spec, state, detach=False)
        api = Api(handle.endpoint, handle.token)
        api.call("POST", "/v1/vpcs", json={"name": "v", "cidrs": ["10.0.0.0/16"]})
        api.call("POST", "/v1/subnets", json={"name": "s", "vpc": "v", "cidr": "10.0.0.0/16"})
        for name, zone in (("a", "az1"), ("b", "az2")):
            instance(api, name, zone, [sys.executable, str(NODE), str(rundir), name])
        instance(api, "c", "az3", ["sleep", "infinity"])
        inst = {n: api.running(n) for n in ("a", "b", "c")}
        api.converge(api.revision())
        nodes = {}
        for n in ("a", "b"):
            st = inst[n]["status"]
            sock, mac = garp_sender(st["netns"])
            nodes[n] = Node(n, inst[n]["id"], st["ip"], st["netns"], sock, mac)
        prober = Prober(inst["c"]["status"]["netns"], args.period / 1e3)
        bench = Bench(api, prober, nodes, rundir, Damping(), args.timeout)
        bench.hosts = {n: inst[n]["status"]["host"] for n in ("a", "b")}

        base = int(ipaddress.IPv4Address("10.0.200.1"))
        pool = [f"g{i}" for i in range(args.pool)]
        for i, vip in enumerate([*pool, "m", "k"]):
            bench.ips[vip] = str(ipaddress.IPv4Address(base + i))
            body = {"name": vip, "subnet": "s", "ip": bench.ips[vip], "allowed": ["a", "b"]}
            api.call("POST", "/v1/vips", json=body)
        # Every garp VIP, and m, starts on a (a move: the first change of holder of each).
        for vip in [*pool, "m"]:
            ip_addr(nodes["a"].netns, "add", bench.ips[vip])
            api.call("POST", f"/v1/vips/{vip}/move", json={"instance": "a"})
            bench.changed(vip, "a")
        ip_addr(nodes["b"].netns, "add", bench.ips["m"])  # moves: both have the address
        for n, peer, priority in (("a", "b", 150), ("b", "a", 100)):
            conf = KEEPALIVED_CONF.format(name=n, priority=priority, advert=args.advert_int,
                                          me=nodes[n].ip, peer=nodes[peer].ip,
                                          address=bench.ips["k"])  # fmt: skip
            (rundir / f"{n}.conf").write_text(conf)
        deadline = time.monotonic() + 30
        while not all((rundir / f"{n}.node.pid").exists() for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("vipnode did not start in a and b")
            time.sleep(0.05)
        bench.signal("a", signal.SIGUSR1)
        bench.wait_holder("k", "a")
        bench.changed("k", "a")
        bench.signal("b", signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while bench.backups("b") < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("b's keepalived did not become backup")
            time.sleep(0.05)
        api.converge(api.revision())
        print(f"region up, {len(pool)} + 2 VIPs; probing every {args.period} ms from c (az3)")

        done = {"garp": {d: 0 for d in DIRS}, "move": {d: 0 for d in DIRS}, "keepalived": 0}

        def record(kind: str, d: str, s: Sample) -> None:
            early[kind] += s.early
            if s.first_new is None:
                lost[kind] += 1
                print(f"  {kind} {d}: LOST (no reply from the new holder in {args.timeout} s)")
                return
            if kind == "keepalived":
                ref = s.last_old if s.last_old is not None else s.act
                res[kind][d].append((s.first_new - ref) * 1e3)
                print(f"  keepalived {d}: gap {(s.first_new - ref) * 1e3:.1f} ms "
                      f"({(s.first_new - s.act) * 1e3:.1f} ms after the stop)")  # fmt: skip
            else:
                res[kind][d].append((s.first_new - s.act) * 1e3)

        t0 = time.monotonic()
        while True:
            left_g = [d for d in DIRS if done["garp"][d] < args.rounds]
            left_m = [d for d in DIRS if done["move"][d] < args.rounds]
            left_k = done["keepalived"] < args.keepalived_rounds
            if not (left_g or left_m or left_k):
                break
            did = False
            now = time.time()
            if left_k and bench.may_change("k", now):
                d, s = bench.keepalived("k")
                done["keepalived"] += 1
                record("keepalived", d, s)
                did = True
            if left_g:
                # The least recently changed VIP whose next change goes a way still wanted.
                wanted = {d.split("->")[0] for d in left_g}
                cands = sorted((v for v in pool if bench.holder[v] in wanted),
                               key=lambda v: bench.changes[v][-1])  # fmt: skip
                for vip in cands:
                    if bench.may_change(vip, time.time()):
                        d, s = bench.garp(vip)
                        done["garp"][d] += 1
                        record("garp", d, s)
                        if s.first_new is None:
                            pool.remove(vip)  # where it stands is unknown: not used again
                        did = True
                        break
            if left_m:  # moves alternate: both ways are done together
                d, s = bench.move("m")
                done["move"][d] += 1
                record("move", d, s)
                did = True
            if not did:
                time.sleep(0.2)  # every VIP is waiting out its damping window
        print(f"rounds done in {time.monotonic() - t0:.0f} s")
        damped = [v["name"] for v in api.call("GET", "/v1/vips", params={"limit": 1000})["items"]
                  if v["status"]["damped_since"]]  # fmt: skip
        if damped:
            print(f"WARNING: damped VIPs (their rounds measured damping): {damped}")
        profile(bench.rounds, agent_logs(handle.record.log_dir), inst["c"]["status"]["host"])
        if args.dump:
            with args.dump.open("w") as f:
                for r in bench.rounds:
                    f.write(json.dumps({**asdict(r), "sample": asdict(r.sample)}) + "\n")
    finally:
        if handle is not None:
            if args.logs:
                shutil.copytree(handle.record.log_dir, args.logs, dirs_exist_ok=True)
            handle.down()
        shutil.rmtree(state, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for kind in ("garp", "move", "keepalived"):
        for d in DIRS:
            print(summary(f"{kind:10s} {d}", res[kind][d]))
        every = res[kind]["a->b"] + res[kind]["b->a"]
        print(summary(f"{kind:10s} all ", every) + f"; lost {lost[kind]}, early replies "
              f"{early[kind]}")  # fmt: skip
        if every:
            key = "keepalived_gap" if kind == "keepalived" else kind
            out[f"{key}_p50_ms"] = statistics.median(every)
            out[f"{key}_p99_ms"] = pct(every, 99)
    out["lost"] = float(sum(lost.values()))
    keys = ("garp_p50_ms", "garp_p99_ms", "move_p50_ms", "move_p99_ms", "keepalived_gap_p50_ms",
            "keepalived_gap_p99_ms", "lost")  # fmt: skip
    print("RESULT " + " ".join(f"{k}={out.get(k, float('nan')):.{0 if k == 'lost' else 1}f}"
                               for k in keys))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
