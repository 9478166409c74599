"""East-west TCP throughput: Flex-VPC instances against a bare veth pair, in one run.

Brings up its own lab region (2 zones x 1 host, so two instances of one zone share a host),
creates a VPC with one subnet and three instances (az1-a and az1-b on the az1 host, az2-a on
the az2 host), and measures iperf3 TCP throughput, interleaved in rounds so that machine
noise hits every path alike:

  veth        two bare namespaces joined by one veth pair, MTU = the instances' MTU
  cross_zone  az1-a -> az2-a: VXLAN over the underlay, through the routed core
  same_host   az1-a -> az1-b: two ports of one VPC namespace on one host

It prints the median of each, the ratios, and ends with
`RESULT cross_zone_vs_veth=R same_host_vs_veth=R`. Run as root: `python bench/eastwest.py`.
Everything it creates carries its own prefix and is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
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
) -> float:
    """Gbit/s received, for one iperf3 run; `server`/`client` are command prefixes."""
    srv = subprocess.Popen(
        [*server, "iperf3", "-s", "-1", "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            p = subprocess.run(
                [*client, "iperf3", "-c", server_ip, "-p", "5201", "-t", str(seconds), "-J"],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
                env=env,
            )
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

    def __init__(self, yunhan: str, home: Path) -> None:
        self.yunhan = yunhan
        self.env = dict(os.environ, HOME=str(home), YUNHAN_HOME=str(home / "state"))
        self.env.pop("YUNHAN_ENDPOINT", None)
        self.env.pop("YUNHAN_TOKEN", None)

    def cli(self, *args: str) -> str:
        return sh(self.yunhan, *args, env=self.env)

    def json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json"))

    def exec_prefix(self, instance: str) -> list[str]:
        return [self.yunhan, "instance", "exec", instance, "--"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=4, help="iperf3 duration per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mtu", type=int, default=1500, help="underlay MTU")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    yunhan = shutil.which("yunhan") or str(Path(sys.executable).with_name("yunhan"))
    prefix = f"b{secrets.token_hex(2)}"
    home = Path(tempfile.mkdtemp(prefix="yunhan-bench-"))
    region = Region(yunhan, home)
    inst_mtu = args.mtu - 50
    results: dict[str, list[float]] = {"veth": [], "cross_zone": [], "same_host": []}
    try:
        region.cli(
            "up", "--detach", "--zones", "2", "--hosts-per-zone", "1", "--mtu", str(args.mtu)
        )
        region.cli("vpc", "create", "bench", "--cidr", "10.77.0.0/16")
        region.cli("subnet", "create", "bench-a", "--vpc", "bench", "--cidr", "10.77.1.0/24")
        ips: dict[str, str] = {}
        for name, zone in (("az1-a", "az1"), ("az1-b", "az1"), ("az2-a", "az2")):
            inst = region.json(
                "instance", "create", name, "--subnet", "bench-a", "--zone", zone, "--wait"
            )
            assert isinstance(inst, dict)
            ips[name] = str(inst["ip"])
        hosts = {i["name"]: i["host"] for i in region.json("instance", "list")}  # type: ignore[union-attr]
        if hosts["az1-a"] != hosts["az1-b"] or hosts["az1-a"] == hosts["az2-a"]:
            raise RuntimeError(f"unexpected placement {hosts}")
        with veth_pair(prefix, inst_mtu) as (va, vb):
            for r in range(args.rounds):
                results["veth"].append(
                    iperf(
                        ["ip", "netns", "exec", vb],
                        ["ip", "netns", "exec", va],
                        "198.18.255.2",
                        args.seconds,
                    )
                )
                results["cross_zone"].append(
                    iperf(
                        region.exec_prefix("az2-a"),
                        region.exec_prefix("az1-a"),
                        ips["az2-a"],
                        args.seconds,
                        region.env,
                    )
                )
                results["same_host"].append(
                    iperf(
                        region.exec_prefix("az1-b"),
                        region.exec_prefix("az1-a"),
                        ips["az1-b"],
                        args.seconds,
                        region.env,
                    )
                )
                print(
                    f"round {r + 1}: " + "  ".join(f"{k}={v[-1]:.2f}" for k, v in results.items())
                )
    finally:
        sh(yunhan, "down", env=region.env, check=False)
        shutil.rmtree(home, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"instance MTU {inst_mtu}, {args.rounds} rounds of {args.seconds}s, medians (Gbit/s):")
    for k, v in med.items():
        print(f"  {k:<11} {v:7.2f}   (all: {', '.join(f'{x:.2f}' for x in results[k])})")
    cz = med["cross_zone"] / med["veth"]
    shr = med["same_host"] / med["veth"]
    print(f"cross_zone/veth = {cz:.3f}   same_host/veth = {shr:.3f}")
    print(f"RESULT cross_zone_vs_veth={cz:.3f} same_host_vs_veth={shr:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
