"""What counting hybrid traffic costs (docs/cutover.md): forwarding with and without the
counter table, and one reading of it, side by side in one run.

Builds three namespaces of its own, client - router - server (the router's ports named
as an IDC switch's: `line0` toward the server), and measures iperf3 TCP throughput through
the router, interleaved in rounds: with no table (`none`), with the switch's table
counting N prefixes (`counted`: one map lookup per rule, the server's prefix among them,
so every packet updates two counters), and with the same counters kept by one rule per
prefix (`rules`, the first layout, kept here to show why it went). Then it times one
reading of the counters through libnftables (what agents do per namespace every 2 s, and
the switch every second).

Ends with `RESULT counted_vs_none=R rules_vs_none=R read_ms=M prefixes=N`. Run as root:
`python bench/hybridstats.py [--prefixes 8] [--rounds 3] [--seconds 3]`. Everything it
creates carries its own prefix and is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import statistics
import subprocess
import sys
import time

from yunhan.net import nft, nftstats


def sh(*argv: str, check: bool = True) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def build(prefix: str) -> dict[str, str]:
    ns = {k: f"{prefix}-{k}" for k in ("c", "r", "s")}
    for n in ns.values():
        sh("ip", "netns", "add", n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
    links = (("c", "lan0", "192.168.100.2", "192.168.100.1"),
             ("s", "line0", "192.168.101.2", "192.168.101.1"))  # fmt: skip
    for far, near, far_ip, near_ip in links:
        sh("ip", "link", "add", "eth0", "netns", ns[far], "type", "veth",
           "peer", "name", near, "netns", ns["r"])  # fmt: skip
        sh("ip", "-n", ns[far], "addr", "add", f"{far_ip}/24", "dev", "eth0")
        sh("ip", "-n", ns[far], "link", "set", "eth0", "up")
        sh("ip", "-n", ns[far], "route", "add", "default", "via", near_ip)
        sh("ip", "-n", ns["r"], "addr", "add", f"{near_ip}/24", "dev", near)
        sh("ip", "-n", ns["r"], "link", "set", near, "up")
    sh("ip", "netns", "exec", ns["r"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return ns


def iperf(ns: dict[str, str], seconds: int) -> float:
    """Gbit/s received by the server through the router."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", ns["s"], "iperf3", "-s", "-1", "-p", "5201"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            p = subprocess.run(
                ["ip", "netns", "exec", ns["c"], "iperf3", "-c", "192.168.101.2", "-p",
                 "5201", "-t", str(seconds), "-J"],
                capture_output=True, text=True, timeout=seconds + 30,
            )  # fmt: skip
            try:
                return float(json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
            except (ValueError, KeyError):
                if time.monotonic() > deadline:  # the server still starting: retried
                    raise RuntimeError(f"iperf3 failed: {p.stdout[-300:]}") from None
                time.sleep(0.2)
    finally:
        srv.kill()
        srv.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefixes", type=int, default=8, help="prefixes the table counts")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3, help="iperf3 duration per run")
    a = ap.parse_args()
    prefix = f"bhs{secrets.token_hex(2)}"
    nets = [str(n) for n in ipaddress.IPv4Network("192.168.64.0/18").subnets(new_prefix=24)]
    counted = ["192.168.101.0/24", *[n for n in nets if n != "192.168.101.0/24"]]
    counted = counted[: a.prefixes]
    ns: dict[str, str] = {}
    try:
        ns = build(prefix)
        runs: dict[str, list[float]] = {"none": [], "counted": [], "rules": []}
        modes = list(runs)
        for r in range(a.rounds):
            for mode in modes[r % 3 :] + modes[: r % 3]:
                nets = counted if mode != "none" else []
                nft.run(ns["r"], nftstats.script("switch", nets, per_prefix_rules=mode == "rules"))
                runs[mode].append(iperf(ns, a.seconds))
                print(f"round {r + 1} {mode:8} {runs[mode][-1]:.2f} Gbit/s", flush=True)
        nft.run(ns["r"], nftstats.script("switch", counted))
        iperf(ns, 1)
        reads = []
        for _ in range(50):
            t0 = time.perf_counter()
            got = nftstats.parse_counters(
                nft.run(ns["r"], f"list counters table ip {nftstats.TABLE}")
            )
            reads.append(time.perf_counter() - t0)
        assert len(got) == 4 * len(counted), len(got)
        moved = got[nftstats.Key("line", "192.168.101.0/24", "in")]
        assert moved[0] > 0, "the server's prefix was not counted"
        med = {k: statistics.median(v) for k, v in runs.items()}
        ratio = med["counted"] / med["none"]
        rules = med["rules"] / med["none"]
        read_ms = statistics.median(reads) * 1000
        print(
            f"median: none {med['none']:.2f} Gbit/s, counted {med['counted']:.2f} Gbit/s, "
            f"rules {med['rules']:.2f} Gbit/s ({len(counted)} prefixes, {len(got)} counters)"
        )
        print(f"one reading of {len(got)} counters: {read_ms:.2f} ms (median of 50)")
        print(
            f"RESULT counted_vs_none={ratio:.3f} rules_vs_none={rules:.3f} "
            f"read_ms={read_ms:.2f} prefixes={len(counted)}"
        )
        return 0
    finally:
        for n in ns.values():
            sh("ip", "netns", "del", n, check=False)


if __name__ == "__main__":
    sys.exit(main())
