"""Hybrid cloud: route switch time, throughput through the gateways, replica failover gap.

Brings up its own lab region (2 zones x 2 hosts) with an IDC site `dc1` (two LANs, one
server each, FRR, MD5, BFD), VPC `prod` with a cloud subnet (a in az1, b in az2) and the two
IDC LANs as IDC subnets (instance c stands by in the second with its server's address),
and a hybrid gateway of 2 replicas. Then, in one run:

  switch     `yunhan hybrid switch 192.168.101.0/24 --to cloud|idc`, alternating, N times:
             the network-wide time the command reports (every host and replica applied it
             and every replica advertises the change to the IDC), p50 and p99
  gw         iperf3 a -> the IDC server of LAN A, through the replicas and the line
  eastwest   iperf3 a -> b across the zones (interleaved with gw, rounds)
  failover   a pings the IDC server every 10 ms; the replica carrying it from the cloud
             dies, two ways: "crash" (its FRR killed: its TCP session is reset, the IDC
             knows at once) and "cut" (its line goes dark first: only BFD tells); the
             longest run of lost replies, `--kills` times each (the agent rebuilds the
             replica between them)

It ends with `RESULT switch_p50_ms=… switch_p99_ms=… gw_vs_eastwest=… failover_ms=…` (the
cut's, the worst kind) `crash_failover_ms=…`.
Run as root, alone on the machine: `python bench/hybrid.py`. Everything it creates is
removed by `yunhan down` at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import itertools

from eastwest import Region, iperf, sh

LAN_A, LAN_B = "192.168.100.0/24", "192.168.101.0/24"


def servers(prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in sh("ip", "netns", "list").splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith(f"{prefix}-idc-dc1-s"):
            text = sh("ip", "-n", ns, "-4", "-o", "addr", "show")
            for addr in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", text):
                if not addr.startswith("127."):
                    out[addr] = ns
    return out


def paths(prefix: str, dst: str) -> int:
    out = sh("ip", "-n", f"{prefix}-idc-dc1", "route", "show", dst)
    return 0 if not out.strip() else max(1, out.count("nexthop via"))


def wait(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def replicas(prefix: str, short: str) -> list[str]:
    names = [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(prefix) and n.endswith(f"-h-{short}"))


def tx(ns: str) -> int:
    out = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", "line0"))
    return int(out[0]["stats64"]["tx"]["packets"])


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(p / 100 * len(v) + 0.5) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--switches", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=4, help="iperf3 duration")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kills", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    yunhan = shutil.which("yunhan") or str(Path(sys.executable).with_name("yunhan"))
    home = Path(tempfile.mkdtemp(prefix="yunhan-bench-hybrid-"))
    r = Region(yunhan, home)
    switch_ms: list[float] = []
    applied_ms: list[float] = []
    tput: dict[str, list[float]] = {"gw": [], "eastwest": []}
    gaps: dict[str, list[float]] = {"crash": [], "cut": []}
    try:
        r.cli("up", "--detach", "--zones", "2", "--hosts-per-zone", "2")
        prefix = json.loads((home / "state" / "region.json").read_text())["prefix"]
        secret = home / "secret"
        secret.write_text("bench-secret\n")
        r.cli("lab", "idc", "add", "dc1", "--cidr", LAN_A, "--cidr", LAN_B, "--servers", "1",
              "--asn", "65001", "--md5-secret-file", str(secret))  # fmt: skip
        r.cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16", "--cidr", "192.168.100.0/23")
        r.cli("sg", "rule", "add", "prod-default", "--direction", "ingress", "--peer", "0.0.0.0/0")
        r.cli("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
        r.cli("subnet", "create", "dc-a", "--vpc", "prod", "--cidr", LAN_A, "--location", "idc:dc1")
        r.cli("subnet", "create", "dc-b", "--vpc", "prod", "--cidr", LAN_B, "--location", "idc:dc1")
        ips = {}
        for name, zone in (("a", "az1"), ("b", "az2")):
            inst = r.json("instance", "create", name, "--subnet", "web", "--zone", zone, "--wait")
            ips[name] = inst["ip"]  # type: ignore[index]
        srv = servers(prefix)
        server_a = next(ip for ip in srv if ip.startswith("192.168.100."))
        server_b = next(ip for ip in srv if ip.startswith("192.168.101."))
        r.cli("instance", "create", "c", "--subnet", "dc-b", "--zone", "az2", "--ip", server_b,
              "--wait")  # fmt: skip
        r.cli("hybrid-gw", "create", "hgw", "--vpc", "prod", "--idc-peer", "198.19.33.1",
              "--peer-asn", "65001", "--replicas", "2", "--md5-secret-file", str(secret),
              "--wait", "--timeout", "120")  # fmt: skip
        wait(lambda: paths(prefix, "10.0.0.0/16") == 2, 30, "two ECMP paths")

        for i in range(args.switches):
            to = "cloud" if i % 2 == 0 else "idc"
            out = r.json("hybrid", "switch", LAN_B, "--to", to)
            assert isinstance(out, dict)
            if out.get("advertised_s") is None:
                raise RuntimeError(f"switch {i} was not advertised in time: {out}")
            switch_ms.append(float(out["total_s"]) * 1000)
            applied_ms.append(float(out["applied_s"]) * 1000)
        if args.switches % 2:
            r.cli("hybrid", "switch", LAN_B, "--to", "idc")
        print(f"switches: p50 {pct(switch_ms, 50):.0f} ms, p99 {pct(switch_ms, 99):.0f} ms "
              f"(hosts applied: p50 {pct(applied_ms, 50):.0f} ms)")  # fmt: skip

        for k in range(args.rounds):
            tput["gw"].append(
                iperf(
                    ["ip", "netns", "exec", srv[server_a]],
                    r.exec_prefix("a"),
                    server_a,
                    args.seconds,
                    r.env,
                )
            )
            tput["eastwest"].append(
                iperf(r.exec_prefix("b"), r.exec_prefix("a"), ips["b"], args.seconds, r.env)
            )
            print(f"round {k + 1}: gw={tput['gw'][-1]:.2f} eastwest={tput['eastwest'][-1]:.2f}")

        gw = r.json("hybrid-gw", "show", "hgw")
        gw_id = str(gw["id"])  # type: ignore[index]
        short = gw_id.rsplit("-", 1)[-1]
        for k in range(args.kills):
            for how in ("crash", "cut"):
                wait(lambda: paths(prefix, "10.0.0.0/16") == 2, 120, "both replicas up")
                ping = subprocess.Popen(
                    [*r.exec_prefix("a"), "ping", "-i", "0.01", "-W", "1", "-c", "1000", server_a],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=r.env,
                )  # fmt: skip
                time.sleep(2)
                # The victim: the replica carrying the ping from the cloud (its line's tx
                # moves), so that the gap is this flow's failover, not a lucky miss.
                before = {ns: tx(ns) for ns in replicas(prefix, short)}
                time.sleep(0.5)
                victim = max(before, key=lambda ns: tx(ns) - before[ns])
                if how == "cut":
                    # Gone without a word: its line goes dark first (no FIN, no RST reaches
                    # the IDC; only BFD notices), then its FRR dies.
                    sh("ip", "-n", victim, "link", "set", "line0", "down")
                pids = sh("ip", "netns", "pids", victim).split()
                sh("kill", "-9", *pids)
                out, _ = ping.communicate(timeout=60)
                seqs = sorted({int(m) for m in re.findall(r"icmp_seq=(\d+)", out)})
                worst = max((b - a - 1 for a, b in itertools.pairwise(seqs)), default=0)
                gaps[how].append(worst * 10.0)
                print(f"{how} {k + 1} ({victim}): longest gap {worst * 10} ms")
    finally:
        sh(yunhan, "down", env=r.env, check=False)
        shutil.rmtree(home, ignore_errors=True)
    ratio = statistics.median(tput["gw"]) / statistics.median(tput["eastwest"])
    print(
        f"gw {statistics.median(tput['gw']):.2f} Gbit/s, eastwest "
        f"{statistics.median(tput['eastwest']):.2f} Gbit/s (medians of {args.rounds})"
    )
    print(
        f"RESULT switch_p50_ms={pct(switch_ms, 50):.0f} switch_p99_ms={pct(switch_ms, 99):.0f} "
        f"gw_vs_eastwest={ratio:.3f} failover_ms={max(gaps['cut']):.0f} "
        f"crash_failover_ms={max(gaps['crash']):.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
