"""End to end: VIPs with keepalived (Debian's package) in instances of different zones,
through the CLI, checked by a client's steady traffic (issue 9).

One region (3 zones x 1 host) serves the module. VPC prod, subnet web:

  ka1 (az1), ka2 (az2)   keepalived pair of VIP va (ka1 starts as master)
  kb1 (az1), kb2 (az2)   keepalived pair of VIP vb (kb1 starts as master)
  cl (az3)               the client: TCP requests and pings to a VIP, every 50 ms
  st (az3)               a stranger: same subnet, allowed to hold no VIP; on the
                         client's host, where a capture would hurt first
  VIP vm                 allowed to ka1 and ka2, no keepalived: moved by the API

Every instance of a pair runs tests/e2e/vipnode.py: it answers TCP on port 7000 with its
hostname and runs keepalived (VRRPv3, unicast to its peer, advert_int ADVERT) when told.
Two pairs, because a VIP that changes holder more than 3 times in 30 s is damped
(docs/vips.md): va sees 2 changes (its first master, the failover), vb 3 (its first master,
its master deleted, the backup's claim).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from region import CliError, Region, netns_names

from tests.polling import wait_for

pytestmark = pytest.mark.root

NODE = Path(__file__).with_name("vipnode.py")
PORT = 7000  # vipnode's TCP port
# VRRP advertisement interval (VRRPv3 takes centiseconds). 0.1 s works (bench/vip_failover.py
# uses it); 0.2 s keeps a loaded machine's scheduling hiccups from failing over by itself.
ADVERT = 0.2
PAIRS = {"va": ("ka1", "ka2", 51), "vb": ("kb1", "kb2", 52)}  # VIP: master, backup, VRID
ZONES = {"ka1": "az1", "ka2": "az2", "kb1": "az1", "kb2": "az2", "cl": "az3", "st": "az3"}
VIPS = {"va": "10.0.1.100", "vb": "10.0.1.101", "vm": "10.0.1.102"}

KEEPALIVED_CONF = """\
global_defs {{
  router_id {name}
  vrrp_version 3
  max_auto_priority -1
}}
vrrp_instance {vip} {{
  state BACKUP
  nopreempt
  interface eth0
  virtual_router_id {vrid}
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

# One TCP request every 50 ms: "<time> <hostname of who answered>" or "<time> -".
PROBE = (
    "import socket, sys, time\n"
    "vip, port = sys.argv[1], int(sys.argv[2])\n"
    "while True:\n"
    "    t = time.time()\n"
    "    try:\n"
    "        with socket.create_connection((vip, port), timeout=0.3) as s:\n"
    "            s.settimeout(0.3)\n"
    "            name = s.makefile().readline().strip() or '-'\n"
    "    except OSError:\n"
    "        name = '-'\n"
    "    print(f'{t:.6f} {name}', flush=True)\n"
    "    time.sleep(max(0.0, t + 0.05 - time.time()))\n"
)

# Gratuitous ARP for an address, from eth0's MAC, three times (as keepalived announces).
# The MAC comes from the socket (SIOCGIFHWADDR): /sys shows the machine's own interfaces.
GARP = (
    "import fcntl, socket, struct, sys\n"
    "ip = socket.inet_aton(sys.argv[1])\n"
    "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
    "s.bind(('eth0', 0))\n"
    "mac = fcntl.ioctl(s.fileno(), 0x8927, struct.pack('256s', b'eth0'))[18:24]\n"
    "arp = struct.pack('!HHBBH', 1, 0x0800, 6, 4, 1) + mac + ip + bytes(6) + ip\n"
    "for _ in range(3):\n"
    "    s.send(b'\\xff' * 6 + mac + b'\\x08\\x06' + arp)\n"
)


@dataclass
class Lab:
    region: Region
    rundir: Path
    ips: dict[str, str]  # instance name -> address

    def node(self, name: str, sig: signal.Signals) -> None:
        """Signal `name`'s vipnode (see vipnode.py: USR1 start keepalived, USR2 stop it)."""
        os.kill(int((self.rundir / f"{name}.node.pid").read_text()), sig)

    def klog(self, name: str) -> str:
        path = self.rundir / f"{name}.klog"
        return path.read_text(errors="replace") if path.exists() else ""

    def vip(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.region.json("vip", "show", name)
        return data

    def answer(self, client: str, ip: str) -> str | None:
        """The hostname that answers one TCP request from `client` to ip:PORT (None: none)."""
        code = (
            "import socket, sys\n"
            f"s = socket.create_connection(({ip!r}, {PORT}), timeout=1)\n"
            "s.settimeout(1)\n"
            "sys.stdout.write(s.makefile().readline())\n"
        )
        p = self.region.exec(client, sys.executable, "-c", code)
        return (p.stdout.strip() or None) if p.returncode == 0 else None


def _ours(rundir: Path) -> dict[int, str]:
    """pid -> command line of every process whose command line names `rundir`."""
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if str(rundir) in cmd:
                out[int(entry)] = cmd
    return out


def _start_pairs(lab: Lab) -> None:
    """Each pair's master first, its backup once the master holds the VIP: one change of
    holder per VIP, whichever keepalived would have timed out first."""
    for master, _backup, _vrid in PAIRS.values():
        lab.node(master, signal.SIGUSR1)
    for vip, (master, _backup, _vrid) in PAIRS.items():
        wait_for(lambda v=vip, m=master: lab.vip(v)["holder"] == m, 20, f"{master} holding {vip}")
    for _master, backup, _vrid in PAIRS.values():
        lab.node(backup, signal.SIGUSR1)
    for _master, backup, _vrid in PAIRS.values():
        wait_for(lambda b=backup: "Entering BACKUP STATE" in lab.klog(b), 20, f"{backup} backup")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if shutil.which("keepalived") is None:
        pytest.fail("keepalived is missing: apt-get install -y keepalived (scripts/install.sh)")
    home = Path(tempfile.mkdtemp(prefix="yunhan-e2e-vip-"))
    rundir = home / "run"  # configs, pid files and logs of keepalived; instances share it
    rundir.mkdir()
    r = Region(home)
    prefix = ""
    try:
        r.run("up", "--detach", "--zones", "3", "--hosts-per-zone", "1", timeout=300)
        prefix = json.loads((r.state / "region.json").read_text())["prefix"]
        r.run("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
        r.run("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
        for name, zone in ZONES.items():
            cmd = f"{sys.executable} {NODE} {rundir} {name}" if name.startswith("k") else None
            r.run("instance", "create", name, "--subnet", "web", "--zone", zone,
                  *(("--command", cmd) if cmd else ()))  # fmt: skip
        wait_for(lambda: all(i["phase"] == "running" for i in r.json("instance", "list")), 90,
                 "instances running")  # fmt: skip
        ips = {i["name"]: i["ip"] for i in r.json("instance", "list")}
        lab = Lab(r, rundir, ips)
        for vip, (master, backup, vrid) in PAIRS.items():
            r.run("vip", "create", vip, "--subnet", "web", "--ip", VIPS[vip],
                  "--allow", master, "--allow", backup)  # fmt: skip
            for name, peer, priority in ((master, backup, 150), (backup, master, 100)):
                conf = KEEPALIVED_CONF.format(
                    name=name, vip=vip, vrid=vrid, priority=priority, advert=ADVERT,
                    me=ips[name], peer=ips[peer], address=VIPS[vip],
                )  # fmt: skip
                (rundir / f"{name}.conf").write_text(conf)
        r.run("vip", "create", "vm", "--subnet", "web", "--ip", VIPS["vm"], "--allow", "ka1",
              "--allow", "ka2", "--wait")  # fmt: skip
        for name in ZONES:
            if name.startswith("k"):
                wait_for(lambda n=name: (rundir / f"{n}.node.pid").exists(), 30, f"{name} up")
        _start_pairs(lab)
        yield lab
    finally:
        r.run("down", check=False, timeout=300)
        left = _ours(rundir)
        for pid in left:  # whatever `down` missed must not outlive the test
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            leftovers = {n for n in netns_names() if prefix and n.startswith(f"{prefix}-")}
            assert not leftovers, f"yunhan down left namespaces behind: {leftovers}"
            assert not left, f"processes of the test outlived the region: {left}"
        finally:
            shutil.rmtree(home, ignore_errors=True)


class Stream:
    """The client's steady traffic to a VIP, read as it comes: TCP requests (each answer
    names the instance that served it) and pings, every 50 ms, each timestamped on this
    machine's clock (the namespaces share it)."""

    def __init__(self, region: Region, client: str, ip: str) -> None:
        def start(*cmd: str) -> subprocess.Popen[str]:
            argv = [region.bin, "instance", "exec", client, "--", *cmd]
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True, env=region.env)  # fmt: skip

        self._lock = threading.Lock()
        self.answers: list[tuple[float, str]] = []
        self.pongs: list[float] = []
        self._procs = [
            start(sys.executable, "-u", "-c", PROBE, ip, str(PORT)),
            start("ping", "-D", "-n", "-i", "0.05", "-W", "1", ip),
        ]
        self._threads = [
            threading.Thread(target=self._read, args=(p, parse), daemon=True)
            for p, parse in zip(self._procs, (self._answer, self._pong), strict=True)
        ]
        for t in self._threads:
            t.start()

    def _answer(self, line: str) -> None:
        t, name = line.split()
        self.answers.append((float(t), name))

    def _pong(self, line: str) -> None:
        if " bytes from " in line and line.startswith("["):
            self.pongs.append(float(line[1 : line.index("]")]))

    def _read(self, p: subprocess.Popen[str], parse: Any) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            with self._lock:
                parse(line)

    def since(self, t: float) -> list[tuple[float, str]]:
        with self._lock:
            return [a for a in self.answers if a[0] >= t]

    def pongs_since(self, t: float) -> list[float]:
        with self._lock:
            return [p for p in self.pongs if p >= t]

    def steady(self, name: str, n: int = 10, timeout: float = 20) -> float:
        """Wait for `n` answers in a row from `name`; the time of the first of them."""

        def run() -> float | None:
            with self._lock:
                tail = self.answers[-n:]
            ok = len(tail) == n and all(a[1] == name for a in tail)
            return tail[0][0] if ok else None

        return wait_for(run, timeout, f"{n} answers in a row from {name}")

    def first(self, name: str, after: float, timeout: float = 15) -> float:
        """The time of the first answer from `name` after `after` (waits for it)."""

        def run() -> float | None:
            return next((t for t, n in self.since(after) if n == name), None)

        return wait_for(run, timeout, f"an answer from {name}")

    def close(self) -> None:
        for p in self._procs:
            p.kill()
            p.wait()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _failover(stream: Stream, old: str, new: str, t0: float) -> tuple[float, float]:
    """(gap, pong gap) of a failover begun at `t0`: from the last answer of `old` to the
    first of `new`, and the longest silence of the pings around it. Checks that the
    answers stay with `new` and that the pings resume."""
    first = stream.first(new, t0)
    last_old = max(t for t, n in stream.since(0) if n == old and t < first)
    wait_for(lambda: len(stream.since(first)) >= 10, 10, "10 answers after the failover")
    after = stream.since(first)
    assert {n for _t, n in after} == {new}, f"answers after {new} took over: {after}"
    wait_for(lambda: stream.pongs_since(first + 0.1), 10, "the pings resuming")
    pongs = stream.pongs_since(last_old - 1)
    pong_gap = max(b - a for a, b in itertools.pairwise(pongs))
    return first - last_old, pong_gap


def test_the_backup_takes_over_when_the_master_s_keepalived_stops(lab: Lab) -> None:
    va = VIPS["va"]
    with Stream(lab.region, "cl", va) as stream:
        stream.steady("ka1")
        t0 = time.time()
        lab.node("ka1", signal.SIGUSR2)  # keepalived stopped: it gives the address up
        gap, pong_gap = _failover(stream, "ka1", "ka2", t0)
    print(f"va: ka1 -> ka2 after keepalived stopped: TCP answers resumed after {gap:.3f} s, "
          f"longest ping silence {pong_gap:.3f} s")  # fmt: skip
    assert gap < 10 and pong_gap < 10
    vip = lab.vip("va")
    assert (vip["holder"], vip["holder_zone"], vip["holder_host"]) == ("ka2", "az2", "az2-h1")
    # The backup never took over while the master ran: VRRP (IP protocol 112, unicast)
    # crosses the overlay and the default group, which admits its own members.
    assert [(h["from"], h["to"], h["cause"]) for h in vip["history"]] == [
        (None, "ka1", "claim"),
        ("ka1", "ka2", "claim"),
    ]
    assert vip["epoch"] == 2 and vip["delivered_to"] == "ka2" and vip["damped_since"] is None


def test_an_instance_not_allowed_captures_nothing(lab: Lab) -> None:
    va = VIPS["va"]
    before = lab.vip("va")
    holder = before["holder"]
    st = lab.region.instance("st")["id"]
    with Stream(lab.region, "cl", va) as stream:
        stream.steady(holder)
        t0 = time.time()
        lab.region.exec("st", "ip", "addr", "add", f"{va}/32", "dev", "eth0", check=True)
        lab.region.exec("st", sys.executable, "-c", GARP, va, check=True)

        def refused() -> bool:
            events = lab.region.json("events", "--for", "va")
            return any(e["reason"] == "VipClaimRefused" and st in e["message"] for e in events)

        wait_for(refused, 15, "a VipClaimRefused event naming st")
        t1 = time.time()
        wait_for(lambda: len(stream.since(t1)) >= 10, 10, "10 answers after the refusal")
        answers = stream.since(t0)
    lab.region.exec("st", "ip", "addr", "del", f"{va}/32", "dev", "eth0", check=True)
    # st shares the client's host: a capture would re-point the client's traffic first.
    assert {n for _t, n in answers} == {holder}, f"answers after st's announcement: {answers}"
    after = lab.vip("va")
    for key in ("holder", "holder_zone", "epoch", "delivered_to", "history"):
        assert after[key] == before[key], key


def test_move_by_the_api_without_keepalived(lab: Lab) -> None:
    vm = VIPS["vm"]
    assert lab.answer("cl", vm) is None  # nobody holds it yet
    for name in ("ka1", "ka2"):  # the address configured by hand, as keepalived would
        lab.region.exec(name, "ip", "addr", "add", f"{vm}/32", "dev", "eth0", check=True)
    for name, zone in (("ka1", "az1"), ("ka2", "az2")):
        lab.region.run("vip", "move", "vm", name, "--wait")
        # --wait returned: every host delivers it to `name` already, the client's too.
        assert lab.answer("cl", vm) == name
        vip = lab.vip("vm")
        assert (vip["holder"], vip["holder_zone"]) == (name, zone)
    # ka1 kept the address. Sending from it, its kernel asks for the neighbour with the VIP
    # as the sender: an ordinary ARP request, no announcement, and the VIP stays with ka2
    # (the ping gets no answer: its 1 s wait is time for a wrong claim to win).
    lab.region.exec("ka1", "ip", "neigh", "flush", "dev", "eth0", check=True)
    lab.region.exec("ka1", "ping", "-c", "1", "-W", "1", "-I", vm, lab.ips["cl"])
    assert lab.answer("cl", vm) == "ka2"
    assert [(h["to"], h["cause"]) for h in lab.vip("vm")["history"]] == [
        ("ka1", "move"),
        ("ka2", "move"),
    ]
    with pytest.raises(CliError) as e:
        lab.region.run("vip", "move", "vm", "st")
    assert "vip allow" in e.value.stderr
    assert lab.vip("vm")["holder"] == "ka2"


def test_deleting_the_master_instance_hands_the_vip_to_the_backup(lab: Lab) -> None:
    vb = VIPS["vb"]
    kb1 = lab.region.instance("kb1")["id"]  # the history names a deleted instance by its id
    with Stream(lab.region, "cl", vb) as stream:
        stream.steady("kb1")
        t0 = time.time()
        lab.region.run("instance", "delete", "kb1")
        gap, pong_gap = _failover(stream, "kb1", "kb2", t0)
    print(f"vb: kb1 deleted, kb2 took over: TCP answers resumed after {gap:.3f} s, "
          f"longest ping silence {pong_gap:.3f} s")  # fmt: skip
    assert gap < 10 and pong_gap < 10
    vip = lab.vip("vb")
    assert (vip["holder"], vip["holder_zone"], vip["allowed"]) == ("kb2", "az2", ["kb2"])
    assert [(h["from"], h["to"], h["cause"]) for h in vip["history"]] == [
        (None, kb1, "claim"),
        (kb1, None, "instance deleted"),
        (None, "kb2", "claim"),
    ]
    # The instance's command (vipnode, and keepalived in its process group) went with it.
    conf = str(lab.rundir / "kb1.conf")
    wait_for(lambda: not any(conf in c for c in _ours(lab.rundir).values()), 10, "kb1's end")
