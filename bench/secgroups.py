"""Security groups at size: throughput through a big group, and how fast changes apply.

Brings up its own lab region (2 zones x 2 hosts), drives it through the HTTP API, and
measures, in one run:

  throughput   cross-zone TCP (iperf3, client in az1, server in az2) with the server in a
               group of --rules rules (all but the last for other ports; the last admits
               the client's group) whose peer group has --members members, against the
               server in a one-rule group that admits everything (every instance has a
               group), interleaved in rounds (the server moves between them with `set-sg`).
  member       one instance leaving or joining the peer group of --members members
               (`PUT /v1/instances/{i}/security-groups`), from the API's answer to every
               host having applied it (`GET /v1/converged`), p50 over --changes changes.
  rules        one host applying a group of --rules rules and a member set of --members
               addresses: the nft transaction of the `ip yunhan_sg` table (`net.nftsg`)
               in a scratch namespace, median of 5.
  flow log     the same throughput through the big group with the VPC's flow log on
               (conntrack listed every 5 s, records shipped), against it off.

Ends with `RESULT sg_vs_none=… member_apply_ms=… rules_apply_ms=… flowlog_vs_sg=…`. Run as root:
`python bench/secgroups.py`. Everything it creates carries its own prefix and is removed
at the end, even on failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eastwest import iperf
from routes import Api

from yunhan.lab import region as lab
from yunhan.lab.spec import RegionSpec
from yunhan.net import nft, nftsg
from yunhan.net.desired import SgRuleDesired


def rules_apply_ms(prefix: str, rules: int, members: int) -> float:
    """Median ms of applying the table of one port with `rules` rules and a member set of
    `members` addresses, whole, in one transaction (as the agent does)."""
    ns = f"{prefix}-rules"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        body = tuple(
            SgRuleDesired(id=f"r-{i:08x}", direction="ingress", proto="tcp", port_min=10000 + i,
                          port_max=10000 + i, group="sg-big")
            for i in range(rules)
        )  # fmt: skip
        base = int(ipaddress.IPv4Address("10.0.0.10"))
        addrs = tuple(str(ipaddress.IPv4Address(base + i)) for i in range(members))
        port = nftsg.PortRules("p-00000001", body, ())
        times = []
        for n in range(5):
            batch = nftsg.table_batch(1 + n, (("sg-big", addrs),), (port,))
            t = time.monotonic()
            nft.run(ns, batch)
            times.append((time.monotonic() - t) * 1e3)
        return statistics.median(times)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=10, help="membership changes timed")
    ap.add_argument("--seconds", type=int, default=4, help="iperf3 duration per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefix", default=f"bsg{secrets.token_hex(2)}")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    out: dict[str, float] = {}
    out["rules_apply_ms"] = rules_apply_ms(args.prefix, args.rules, args.members)
    print(f"one host applies {args.rules} rules and {args.members} members in "
          f"{out['rules_apply_ms']:.1f} ms (one nft transaction)")  # fmt: skip
    state = Path(tempfile.mkdtemp(prefix="yunhan-sg-"))
    handle = None
    try:
        spec = RegionSpec.build(args.prefix, zones=2, hosts_per_zone=2)
        handle = lab.up(spec, state, detach=False)
        api = Api(handle.endpoint, handle.token)
        api.call("POST", "/v1/vpcs", json={"name": "v", "cidrs": ["10.0.0.0/16"]})
        api.call("POST", "/v1/subnets", json={"name": "a", "vpc": "v", "cidr": "10.0.0.0/20"})
        for g in ("big", "cli", "open"):
            api.call("POST", "/v1/security-groups", json={"name": g, "vpc": "v"})
        for g in ("big", "cli", "open"):
            api.call("POST", f"/v1/security-groups/{g}/rules",
                     json={"direction": "egress", "peer": "0.0.0.0/0"})  # fmt: skip
        api.call("POST", "/v1/security-groups/open/rules",
                 json={"direction": "ingress", "peer": "0.0.0.0/0"})  # fmt: skip
        t0 = time.monotonic()
        for i in range(args.rules - 2):
            api.call("POST", "/v1/security-groups/big/rules",
                     json={"direction": "ingress", "proto": "tcp", "port": str(10000 + i),
                           "peer": "sg:cli"})  # fmt: skip
        api.call("POST", "/v1/security-groups/big/rules",
                 json={"direction": "ingress", "proto": "tcp", "port": "5201",
                       "peer": "sg:cli", "priority": 200})  # fmt: skip
        print(f"{args.rules} rules written in {time.monotonic() - t0:.1f} s")
        api.instance("c1", "a", "az1", ["sleep", "infinity"])
        api.instance("s1", "a", "az2", ["sleep", "infinity"])
        api.call("PUT", "/v1/instances/c1/security-groups", json={"security_groups": ["cli"]})
        t0 = time.monotonic()
        for i in range(args.members - 1):  # c1 is the last member
            body: dict[str, Any] = {"name": f"m{i}", "subnet": "a", "zone": f"az{1 + i % 2}",
                                    "security_groups": ["cli"]}  # fmt: skip
            api.call("POST", "/v1/instances", json=body)
        api.converge(api.revision(), timeout=1800)
        print(f"{args.members} members placed in {time.monotonic() - t0:.1f} s")
        inst = {n: api.running(n, timeout=600) for n in ("c1", "s1")}

        # -- one member joining, every host ---------------------------------------------
        # s1 in the big group: its host holds the peer set of the --members members of cli;
        # c1 leaves and joins cli (its member entry changes on every host).
        api.call("PUT", "/v1/instances/s1/security-groups", json={"security_groups": ["big"]})
        api.converge(api.revision())
        lat: list[float] = []
        for i in range(args.changes):
            groups = ["open"] if i % 2 == 0 else ["cli"]
            t = time.monotonic()
            api.call("PUT", "/v1/instances/c1/security-groups", json={"security_groups": groups})
            api.converge(api.revision())
            lat.append((time.monotonic() - t) * 1e3)
        if args.changes % 2:
            api.call("PUT", "/v1/instances/c1/security-groups", json={"security_groups": ["cli"]})
        out["member_apply_ms"] = statistics.median(lat)
        print(f"one membership change on every host: p50 {out['member_apply_ms']:.1f} ms, "
              f"max {max(lat):.1f} ms over {len(lat)}")  # fmt: skip

        # -- throughput with and without the big group on the path ------------------------
        srv = ["ip", "netns", "exec", str(inst["s1"]["status"]["netns"])]
        cli = ["ip", "netns", "exec", str(inst["c1"]["status"]["netns"])]
        s1_ip = str(inst["s1"]["status"]["ip"])
        res: dict[str, list[float]] = {"none": [], "sg": [], "log": []}
        for r in range(args.rounds):
            for mode, group in (("none", "open"), ("sg", "big"), ("log", "big")):
                api.call("PUT", "/v1/instances/s1/security-groups",
                         json={"security_groups": [group]})  # fmt: skip
                if mode == "log":  # the same path, with the VPC's flow log collecting
                    api.call("POST", "/v1/flow-logs", json={"name": "fl", "vpc": "v"})
                api.converge(api.revision())
                res[mode].append(iperf(srv, cli, s1_ip, args.seconds))
                if mode == "log":
                    api.call("DELETE", "/v1/flow-logs/fl")
                    api.converge(api.revision())
            print(f"round {r + 1}: " + " ".join(f"{k}={v[-1]:.2f}" for k, v in res.items()))
        med = {k: statistics.median(v) for k, v in res.items()}
        out["sg_vs_none"] = med["sg"] / med["none"]
        out["flowlog_vs_sg"] = med["log"] / med["sg"]
        print(f"cross-zone Gbit/s medians: open group {med['none']:.2f}, {args.rules} rules and "
              f"{args.members} members {med['sg']:.2f}: ratio {out['sg_vs_none']:.3f}; "
              f"flow log on {med['log']:.2f}: ratio {out['flowlog_vs_sg']:.3f}")  # fmt: skip
    finally:
        if handle is not None:
            handle.down()
        shutil.rmtree(state, ignore_errors=True)
    keys = ("sg_vs_none", "member_apply_ms", "rules_apply_ms", "flowlog_vs_sg")
    fmt = {k: 3 if k.endswith(("_none", "_sg")) else 1 for k in keys}
    print("RESULT " + " ".join(f"{k}={out.get(k, float('nan')):.{fmt[k]}f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
