"""East-west TCP throughput: the overlay against the underlay it rides on, in one run.

Brings up its own lab regions, one per underlay MTU of --mtus (default 1500 and 9000) and
data path of --datapaths (default fast and kernel: the tc-BPF fast path beside the kernel
path, and the kernel path alone; docs/datapath.md), each of 2 zones x 1 host (two
instances of one zone share a host), with a VPC, one subnet and
three instances (az1-a and az1-b on the az1 host, az2-a on the az2 host). It measures
iperf3 TCP throughput of these paths, interleaved in rounds so that machine noise hits
every path alike:

  veth        two bare namespaces joined by one veth pair, MTU = the instances' MTU
  underlay    the az1 host's namespace -> the az2 host's, over the same routed core: the
              physical bound of the overlay (everything below it is the lab's topology)
  cross_zone  az1-a -> az2-a: VXLAN over the underlay, through the routed core
  same_host   az1-a -> az1-b: two ports of one VPC namespace on one host

and, on the first region, the same cross_zone and underlay with each --variant applied
live just before its run and undone after (side by side with the plain ones):

  gro         GRO on the hosts' and the core's veths, UDP GRO forwarding in the core

With --profile, one more run of underlay and of cross_zone under `perf record` (cpu-clock,
every CPU) gives where the cycles go per path, grouped (copies to and from user space,
TCP, IP and routing, netfilter, VXLAN and UDP, device and softirq, idle, other).

It prints the medians and the ratios per region and ends with one line `RESULT
overlay_vs_underlay=R cross_zone_vs_veth=R same_host_vs_veth=R` (the underlay: the median of
every region's runs at that MTU, as the data path does not change it) for the first MTU and data
path, then the same keys suffixed with each other MTU (`overlay_vs_underlay_9000=…`), data
path (`…_kernel`) and each variant (`overlay_vs_underlay_gro=…`), and the fast path's gain
over the kernel path per MTU (`fast_gain_cross_zone=…`, `fast_gain_same_host=…`).
Run as root, alone: `python bench/eastwest.py`. Everything it
creates carries its own prefix and is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sh(*argv: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


@contextmanager
def veth_pair(prefix: str, mtu: int) -> Iterator[tuple[str, str]]:
    a, b = f"{prefix}-va", f"{prefix}-vb"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh(
            "ip",
            "-n",
            a,
            "link",
            "add",
            "eth0",
            "mtu",
            str(mtu),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            b,
        )
        for ns, ip in ((a, "198.18.255.1/30"), (b, "198.18.255.2/30")):
            sh("ip", "-n", ns, "addr", "add", ip, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "mtu", str(mtu), "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)


def iperf(
    server: list[str],
    client: list[str],
    server_ip: str,
    seconds: int,
    env: dict[str, str] | None = None,
    profile: Path | None = None,
) -> float:
    """Gbit/s received, for one iperf3 run; `server`/`client` are command prefixes. With
    `profile`, every CPU is sampled into that perf.data file while it runs."""
    srv = subprocess.Popen(
        [*server, "iperf3", "-s", "-1", "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            rec = None
            if profile is not None:
                rec = subprocess.Popen(
                    ["perf", "record", "-e", "cpu-clock", "-a", "-g", "-o", str(profile),
                     "--", "sleep", str(max(1, seconds - 1))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            p = subprocess.run(
                [*client, "iperf3", "-c", server_ip, "-p", "5201", "-t", str(seconds), "-J"],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
                env=env,
            )
            if rec is not None:
                rec.wait(timeout=60)
            try:
                data = json.loads(p.stdout)
                return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
            except (ValueError, KeyError):
                # iperf3 -J reports "connection refused" in JSON, sometimes with exit 0:
                # the server is still starting. Nothing to poll but a retry.
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"iperf3 failed: {p.stdout[-400:]} {p.stderr[-400:]}"
                    ) from None
                time.sleep(0.2)
    finally:
        srv.kill()
        srv.wait()


class Region:
    """A lab region of this benchmark's own, driven through the `yunhan` CLI."""

    def __init__(self, yunhan: str, home: Path, mtu: int, datapath: str) -> None:
        self.yunhan = yunhan
        self.home = home
        self.mtu = mtu
        self.datapath = datapath
        self.suffix = ""  # of its keys: "_<mtu>" unless the first MTU, "_<datapath>" likewise
        self.env = dict(os.environ, HOME=str(home), YUNHAN_HOME=str(home / "state"))
        self.env.pop("YUNHAN_ENDPOINT", None)
        self.env.pop("YUNHAN_TOKEN", None)
        self.ips: dict[str, str] = {}
        self.prefix = ""

    def cli(self, *args: str) -> str:
        return sh(self.yunhan, *args, env=self.env)

    def json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json"))

    def exec_prefix(self, instance: str) -> list[str]:
        return [self.yunhan, "instance", "exec", instance, "--"]

    def host_ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def up(self) -> None:
        self.cli("up", "--detach", "--zones", "2", "--hosts-per-zone", "1", "--mtu", str(self.mtu),
                 "--datapath", self.datapath)  # fmt: skip
        self.prefix = json.loads((self.home / "state" / "region.json").read_text())["prefix"]
        self.cli("vpc", "create", "bench", "--cidr", "10.77.0.0/16")
        self.cli("subnet", "create", "bench-a", "--vpc", "bench", "--cidr", "10.77.1.0/24")
        for name, zone in (("az1-a", "az1"), ("az1-b", "az1"), ("az2-a", "az2")):
            inst = self.json(
                "instance", "create", name, "--subnet", "bench-a", "--zone", zone, "--wait"
            )
            assert isinstance(inst, dict)
            self.ips[name] = str(inst["ip"])
        listed: Any = self.json("instance", "list")
        hosts = {i["name"]: i["host"] for i in listed}
        if hosts["az1-a"] != hosts["az1-b"] or hosts["az1-a"] == hosts["az2-a"]:
            raise RuntimeError(f"unexpected placement {hosts}")
        deadline = time.monotonic() + 30
        while True:  # the agents report their data path with their next status
            dp: Any = self.json("host", "datapath")
            if {d.get("mode") for d in dp} == {self.datapath}:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"asked for the {self.datapath} data path, the hosts say {dp}")
            time.sleep(1)

    def run(self, path: str, seconds: int, profile: Path | None = None) -> float:
        """One iperf3 measurement of `path` (Gbit/s)."""
        if path == "underlay":
            ns = (self.host_ns("az2-h1"), self.host_ns("az1-h1"))
            return iperf(
                ["ip", "netns", "exec", ns[0]], ["ip", "netns", "exec", ns[1]],
                UNDERLAY_DST, seconds, profile=profile,
            )  # fmt: skip
        dst = "az2-a" if path == "cross_zone" else "az1-b"
        return iperf(
            self.exec_prefix(dst), self.exec_prefix("az1-a"), self.ips[dst], seconds, self.env,
            profile=profile,
        )  # fmt: skip


UNDERLAY_DST = "198.18.2.11"  # the az2 host's underlay address (lab: zone N is 198.18.N.0/24)
CORE_PORTS = ("az1-h1", "az2-h1")  # the core's ends of the hosts' links


def _ethtool(ns: str, dev: str, *features: str) -> None:
    sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, *features, check=False)


@contextmanager
def variant(region: Region, name: str) -> Iterator[None]:
    """A data-plane setting applied to the running region, undone on the way out."""
    core = f"{region.prefix}-core"
    hosts = [region.host_ns(h) for h in ("az1-h1", "az2-h1")]
    if name != "gro":
        raise ValueError(f"no variant {name!r}")
    for ns in hosts:
        _ethtool(ns, "eth0", "gro", "on")
    for dev in CORE_PORTS:
        _ethtool(core, dev, "gro", "on", "rx-udp-gro-forwarding", "on")
    try:
        yield
    finally:
        for ns in hosts:
            _ethtool(ns, "eth0", "gro", "off")
        for dev in CORE_PORTS:
            _ethtool(core, dev, "gro", "off", "rx-udp-gro-forwarding", "off")


# Where cycles go: kernel symbols by the first pattern they match.
GROUPS = (
    ("copy", ("copy_from_iter", "copy_to_iter", "copy_user", "check_object_size", "memcpy")),
    ("netfilter", ("nft_", "nf_", "ipt_", "conntrack")),
    ("vxlan+udp", ("vxlan", "udp", "gro_cells", "iptunnel", "skb_tunnel")),
    ("tcp", ("tcp_", "__tcp", "inet_csk", "sk_stream", "tcp4")),
    ("ip+routing", ("ip_", "fib_", "rt_", "__ip", "dst_", "ipv4", "__fib", "inet_")),
    (
        "device+softirq",
        (
            "veth",
            "dev_",
            "netif",
            "napi",
            "softirq",
            "net_rx",
            "skb_",
            "__skb",
            "kfree_skb",
            "__dev",
            "gro",
            "qdisc",
            "sch_",
            "consume_skb",
        ),
    ),
    ("idle", ("halt", "idle", "mwait", "poll_idle")),
)


def breakdown(perf_data: Path) -> dict[str, float]:
    """Share of samples per group (percent) from a `perf record` file."""
    out = subprocess.run(
        ["perf", "report", "-i", str(perf_data), "--no-children", "--sort", "symbol",
         "--stdio", "-g", "none"],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    shares: dict[str, float] = {g: 0.0 for g, _ in GROUPS} | {"other": 0.0}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[0].endswith("%") or parts[1] not in ("[k]", "[.]"):
            continue
        pct, sym = float(parts[0][:-1]), parts[2]
        group = next((g for g, pats in GROUPS if any(p in sym for p in pats)), "other")
        shares[group] += pct
    return shares


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=4, help="iperf3 duration per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mtus", default="1500,9000", help="underlay MTUs, one region each")
    ap.add_argument("--datapaths", default="fast,kernel", help="data paths, one region each")
    ap.add_argument("--variant", action="append", default=[], help="gro (repeatable)")
    ap.add_argument("--profile", action="store_true", help="perf breakdown per path")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    yunhan = shutil.which("yunhan") or str(Path(sys.executable).with_name("yunhan"))
    prefix = f"b{secrets.token_hex(2)}"
    mtus = [int(m) for m in args.mtus.split(",")]
    paths = args.datapaths.split(",")
    regions = [
        Region(yunhan, Path(tempfile.mkdtemp(prefix="yunhan-bench-")), m, d)
        for m in mtus
        for d in paths
    ]
    for region in regions:
        region.suffix = ("" if region.mtu == mtus[0] else f"_{region.mtu}") + (
            "" if region.datapath == paths[0] else f"_{region.datapath}"
        )
    results: dict[str, list[float]] = {}
    shares: dict[str, dict[str, float]] = {}

    def note(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    try:
        for region in regions:
            region.up()
        with contextlib.ExitStack() as stack:
            veths = {m: stack.enter_context(veth_pair(f"{prefix}{m}", m - 50)) for m in mtus}
            for r in range(args.rounds):
                for m in mtus:
                    va, vb = veths[m]
                    note("veth" + ("" if m == mtus[0] else f"_{m}"),
                         iperf(["ip", "netns", "exec", vb], ["ip", "netns", "exec", va],
                               "198.18.255.2", args.seconds))  # fmt: skip
                for region in regions:
                    for path in ("underlay", "cross_zone", "same_host"):
                        note(f"{path}{region.suffix}", region.run(path, args.seconds))
                for v in args.variant:
                    with variant(regions[0], v):
                        for path in ("underlay", "cross_zone"):
                            note(f"{path}_{v}", regions[0].run(path, args.seconds))
                print(
                    f"round {r + 1}: " + "  ".join(f"{k}={v[-1]:.2f}" for k, v in results.items())
                )
            if args.profile:
                for path in ("underlay", "cross_zone"):
                    data = Path(tempfile.mkdtemp(prefix="yunhan-perf-")) / "perf.data"
                    try:
                        regions[0].run(path, args.seconds, profile=data)
                        shares[path] = breakdown(data)
                    finally:
                        shutil.rmtree(data.parent, ignore_errors=True)
    finally:
        for region in regions:
            sh(yunhan, "down", env=region.env, check=False)
            shutil.rmtree(region.home, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{args.rounds} rounds of {args.seconds}s, medians (Gbit/s):")
    for k, v in med.items():
        print(f"  {k:<20} {v:7.2f}   (all: {', '.join(f'{x:.2f}' for x in results[k])})")
    fields: list[str] = []
    # The underlay is the same path in every region of one MTU (the data path changes only
    # the overlay): its median over all of them is the bound, less noisy than one region's.
    under = {
        m: statistics.median(
            [x for r in regions if r.mtu == m for x in results[f"underlay{r.suffix}"]]
        )
        for m in mtus
    }
    for m, u in under.items():
        print(f"underlay at MTU {m}, every region's runs: median {u:.2f} Gbit/s")
    for region in regions:
        sfx = region.suffix
        vsfx = "" if region.mtu == mtus[0] else f"_{region.mtu}"
        ou = med[f"cross_zone{sfx}"] / under[region.mtu]
        cz = med[f"cross_zone{sfx}"] / med[f"veth{vsfx}"]
        shr = med[f"same_host{sfx}"] / med[f"veth{vsfx}"]
        print(f"MTU {region.mtu} (instances {region.mtu - 50}), {region.datapath} path: "
              f"overlay/underlay = {ou:.3f}   cross_zone/veth = {cz:.3f}   "
              f"same_host/veth = {shr:.3f}")  # fmt: skip
        fields += [f"overlay_vs_underlay{sfx}={ou:.3f}", f"cross_zone_vs_veth{sfx}={cz:.3f}",
                   f"same_host_vs_veth{sfx}={shr:.3f}"]  # fmt: skip
    if "fast" in paths and "kernel" in paths:
        for m in mtus:
            ms = "" if m == mtus[0] else f"_{m}"
            f = next(r.suffix for r in regions if (r.mtu, r.datapath) == (m, "fast"))
            k = next(r.suffix for r in regions if (r.mtu, r.datapath) == (m, "kernel"))
            for path in ("cross_zone", "same_host"):
                gain = med[f"{path}{f}"] / med[f"{path}{k}"]
                print(f"MTU {m}: the fast path carries {path} at {gain:.3f}x the kernel path")
                fields.append(f"fast_gain_{path}{ms}={gain:.3f}")
    for v in args.variant:
        ou = med[f"cross_zone_{v}"] / med[f"underlay_{v}"]
        gain = med[f"cross_zone_{v}"] / med["cross_zone"]
        print(f"variant {v}: overlay/underlay = {ou:.3f}, cross_zone {gain:.3f}x the plain one")
        fields += [f"overlay_vs_underlay_{v}={ou:.3f}", f"cross_zone_gain_{v}={gain:.3f}"]
    for path, sh_ in shares.items():
        print(f"where the cycles go, {path} (% of samples, every CPU): "
              + ", ".join(f"{g} {p:.1f}" for g, p in sh_.items()))  # fmt: skip
    print("RESULT " + " ".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
