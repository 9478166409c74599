"""Route tables at size: applying 1,000 routes, spreading one change, and the cost on the path.

Brings up its own lab region (2 zones x 2 hosts), drives it through the HTTP API, and
measures, in one run:

  apply_1000   one host's agent applying a VPC whose table holds 1,000 custom routes, from
               the agent's own log ("apply N took X ms"), against the same VPC without
               routes (the difference is the routes' cost). The VPC reaches the host in
               one piece: its routes are written first, then its first instance there.
  change       one route added to a table of a VPC that all four hosts carry, from the
               API's answer to every host having applied it (`GET /v1/converged`), p50
               and p99 over --changes changes.
  throughput   cross-zone TCP (iperf3, client in az1, server in az2) from a subnet whose
               table holds 1,000 custom routes and 50 policy routes (none of which match
               the flow, so every packet walks past all of them), against the same
               subnet on the VPC's default table, interleaved in rounds.

Ends with `RESULT apply_1000_ms=… apply_none_ms=… change_p50_ms=… change_p99_ms=…
routes_vs_none=…`. Run as root: `python bench/routes.py`. Everything it creates carries its
own prefix and is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from eastwest import iperf

from yunhan.lab import region as lab
from yunhan.lab.spec import RegionSpec

_APPLY_RE = re.compile(r"INFO apply (\d+) took ([\d.]+) ms: .*?(\d+) ops in")


class Api:
    def __init__(self, endpoint: str, token: str) -> None:
        self.c = httpx.Client(
            base_url=endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=60.0
        )

    def call(self, method: str, path: str, **kw: Any) -> Any:
        r = self.c.request(method, path, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def revision(self) -> int:
        return int(self.call("GET", "/v1/revision")["revision"])

    def converge(self, rev: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = self.call("GET", "/v1/converged", params={"revision": rev, "timeout": 10})
            if c["converged"]:
                return
        raise RuntimeError(f"revision {rev} did not converge in {timeout} s")

    def running(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            inst: dict[str, Any] = self.call("GET", f"/v1/instances/{name}")
            if inst["status"].get("phase") == "running":
                return inst
            time.sleep(0.1)  # poll interval, outside every measurement
        raise RuntimeError(f"instance {name} not running in {timeout} s")

    def instance(self, name: str, subnet: str, zone: str, cmd: list[str] | None = None) -> None:
        body: dict[str, Any] = {"name": name, "subnet": subnet, "zone": zone}
        if cmd:
            body["command"] = cmd
        self.call("POST", "/v1/instances", json=body)


def prefixes(n: int) -> list[str]:
    """`n` distinct /28s in 172.16.0.0/12: outside the VPC, so none is on the iperf path."""
    base = int(ipaddress.IPv4Address("172.16.0.0"))
    return [f"{ipaddress.IPv4Address(base + 16 * i)}/28" for i in range(n)]


def fill_table(api: Api, table: str, n: int, hop: str) -> None:
    for i, dst in enumerate(prefixes(n)):
        nh = hop if i % 2 else "blackhole"
        api.call("POST", f"/v1/route-tables/{table}/routes", json={"dst": dst, "next_hop": nh})


def apply_ms(log_dir: Path, host: str, after_rev: int) -> tuple[float, int]:
    """(ms, ops) of the largest logged apply of `host`'s agent at a revision > after_rev."""
    best = (0.0, 0)
    for f in log_dir.glob("*.log"):
        if host not in f.name:
            continue
        for line in f.read_text(errors="replace").splitlines():
            m = _APPLY_RE.search(line)
            if m and int(m.group(1)) > after_rev and int(m.group(3)) > best[1]:
                best = (float(m.group(2)), int(m.group(3)))
    return best


def cold_vpc(api: Api, name: str, cidr: str, routes: int, host_zone: str) -> tuple[str, int]:
    """A VPC carried by no host, `routes` routes in its default-replacing table, then its
    first instance: returns (the instance's host, revision before the instance)."""
    net = ipaddress.IPv4Network(cidr)
    api.call("POST", "/v1/vpcs", json={"name": name, "cidrs": [cidr]})
    sub = f"{name}-s"
    api.call("POST", "/v1/subnets", json={"name": sub, "vpc": name, "cidr": str(net)})
    table = f"{name}-t"
    api.call("POST", "/v1/route-tables", json={"name": table, "vpc": name})
    api.call("POST", f"/v1/route-tables/{table}/associations", json={"subnet": sub})
    fill_table(api, table, routes, "blackhole")
    rev = api.revision()
    api.instance(f"{name}-i", sub, host_zone)
    inst = api.running(f"{name}-i")
    api.converge(api.revision())
    return str(inst["status"]["host"]), rev


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=50)
    ap.add_argument("--changes", type=int, default=30, help="single route changes timed")
    ap.add_argument("--seconds", type=int, default=4, help="iperf3 duration per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefix", default=f"brt{secrets.token_hex(2)}")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    state = Path(tempfile.mkdtemp(prefix="yunhan-routes-"))
    handle = None
    out: dict[str, float] = {}
    try:
        spec = RegionSpec.build(args.prefix, zones=2, hosts_per_zone=2)
        handle = lab.up(spec, state, detach=False)
        api = Api(handle.endpoint, handle.token)
        log_dir = handle.record.log_dir

        # -- apply: a whole table arriving at one host ---------------------------------
        host0, rev0 = cold_vpc(api, "cold0", "10.10.0.0/16", 0, "az1")
        host1, rev1 = cold_vpc(api, "cold1", "10.11.0.0/16", args.routes, "az1")
        none_ms, none_ops = apply_ms(log_dir, host0, rev0)
        full_ms, full_ops = apply_ms(log_dir, host1, rev1)
        out["apply_1000_ms"], out["apply_none_ms"] = full_ms, none_ms
        print(
            f"apply on one host: VPC with {args.routes} routes {full_ms:.1f} ms ({full_ops} ops)"
            f", without {none_ms:.1f} ms ({none_ops} ops)"
        )

        # -- a VPC on every host, with the big table --------------------------------------
        api.call("POST", "/v1/vpcs", json={"name": "v", "cidrs": ["10.0.0.0/16"]})
        api.call("POST", "/v1/subnets", json={"name": "a", "vpc": "v", "cidr": "10.0.1.0/24"})
        api.call("POST", "/v1/subnets", json={"name": "b", "vpc": "v", "cidr": "10.0.2.0/24"})
        for name, sub, zone in (("c1", "a", "az1"), ("s1", "b", "az2"), ("fw", "b", "az2"),
                                ("c2", "a", "az1")):  # fmt: skip
            api.instance(name, sub, zone, ["sleep", "infinity"])
        inst = {n: api.running(n) for n in ("c1", "s1", "fw", "c2")}
        hosts = {i["status"]["host"] for i in inst.values()}
        api.call("POST", "/v1/route-tables", json={"name": "big", "vpc": "v"})
        t0 = time.monotonic()
        fill_table(api, "big", args.routes, "instance:fw")
        for p in range(1, args.policies + 1):
            api.call(
                "POST",
                "/v1/route-tables/big/policy-routes",
                json={
                    "priority": p,
                    "src": "10.0.1.0/24",
                    "dst": f"172.31.{p}.0/24",
                    "proto": "tcp",
                    "port": str(20000 + p),
                    "action": "drop",
                },
            )
        api.converge(api.revision())
        print(
            f"{args.routes} routes and {args.policies} policies written and applied on "
            f"{len(hosts)} hosts in {time.monotonic() - t0:.1f} s (one API call each)"
        )

        # -- one change, every host ---------------------------------------------------------
        lat: list[float] = []
        extra = prefixes(args.routes + args.changes)[args.routes :]
        for dst in extra:
            t = time.monotonic()
            body = {"dst": dst, "next_hop": "blackhole"}
            api.call("POST", "/v1/route-tables/big/routes", json=body)
            api.converge(api.revision())
            lat.append((time.monotonic() - t) * 1e3)
        out["change_p50_ms"], out["change_p99_ms"] = statistics.median(lat), pct(lat, 99)
        print(
            f"one route change on {len(hosts)} hosts: p50 {out['change_p50_ms']:.1f} ms, "
            f"p99 {out['change_p99_ms']:.1f} ms over {len(lat)}"
        )

        # -- throughput with and without the table on the path -----------------------------
        srv = ["ip", "netns", "exec", str(inst["s1"]["status"]["netns"])]
        cli = ["ip", "netns", "exec", str(inst["c1"]["status"]["netns"])]
        s1_ip = str(inst["s1"]["status"]["ip"])
        default = "v-default"
        res: dict[str, list[float]] = {"none": [], "routes": []}
        for r in range(args.rounds):
            for mode, table in (("none", default), ("routes", "big")):
                api.call("POST", f"/v1/route-tables/{table}/associations", json={"subnet": "a"})
                api.converge(api.revision())
                res[mode].append(iperf(srv, cli, s1_ip, args.seconds))
            print(f"round {r + 1}: none={res['none'][-1]:.2f} routes={res['routes'][-1]:.2f}")
        med = {k: statistics.median(v) for k, v in res.items()}
        out["routes_vs_none"] = med["routes"] / med["none"]
        print(
            f"cross-zone Gbit/s medians: none {med['none']:.2f}, with {args.routes} routes and "
            f"{args.policies} policies {med['routes']:.2f}: ratio {out['routes_vs_none']:.3f}"
        )
    finally:
        if handle is not None:
            handle.down()
        shutil.rmtree(state, ignore_errors=True)
    keys = ("apply_1000_ms", "apply_none_ms", "change_p50_ms", "change_p99_ms", "routes_vs_none")
    fmt = {k: 3 if k == "routes_vs_none" else 1 for k in keys}
    print("RESULT " + " ".join(f"{k}={out.get(k, float('nan')):.{fmt[k]}f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
