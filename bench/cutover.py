"""Cut-over toolkit: the connectivity matrix, a NETCONF rollback, dual-write throughput.

Brings up its own lab region (2 zones x 1 host) with an IDC site `dc1` (two LANs, four
servers each), VPC `prod` with a cloud subnet of `--instances` instances and the two LANs as
IDC subnets, and a hybrid gateway of 2 replicas. Then, in one run:

  matrix     `yunhan check connectivity --pairs FILE` over exactly 1,000 pairs (instances,
             IDC servers, replicas), `--rounds` times; beside it, one pair at a time as a
             script would do it (`ping -c 1` from the source's namespace) over a sample of
             `--sample` pairs, scaled to 1,000: the ratio is the matrix's speed-up
  rollback   `yunhan netconf push` of a configuration that cuts the VPC off the IDC, with a
             5 s confirm timeout: the time from the commit to the old configuration applied
             again (the switch's own rollback), and the command's whole time
  dualwrite  a migration window on the second LAN: `--changes` changes queued at once
             (`yunhan migrate apply`), the time until both sides applied the last one
             (throughput), then a paced stream of 100/s for 5 s: each change's lag from its
             publish to both sides having applied it (p50, p99)

It ends with `RESULT matrix_1000_s=… ping_1000_s=… matrix_speedup=… rollback_s=…
dualwrite_per_s=… dualwrite_lag_p50_ms=… dualwrite_lag_p99_ms=…`.
Run as root, alone on the machine: `python bench/cutover.py`. Everything it creates is
removed by `yunhan down` at the end, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eastwest import Region

LAN_A, LAN_B = "192.168.100.0/24", "192.168.101.0/24"


def _ping_one(netns: str, dst: str, bind: str | None) -> bool:
    argv = ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1"]
    if bind:
        argv += ["-I", bind]
    return subprocess.run([*argv, dst], capture_output=True).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sample", type=int, default=60, help="pairs pinged one at a time")
    ap.add_argument("--changes", type=int, default=2000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    yunhan = shutil.which("yunhan") or str(Path(sys.executable).with_name("yunhan"))
    home = Path(tempfile.mkdtemp(prefix="yunhan-bench-cutover-"))
    r = Region(yunhan, home)
    out: dict[str, float] = {}
    try:
        r.cli("up", "--detach", "--zones", "2", "--hosts-per-zone", "1")
        r.cli("lab", "idc", "add", "dc1", "--cidr", LAN_A, "--cidr", LAN_B, "--servers", "4")
        r.cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16", "--cidr", "192.168.100.0/23")
        r.cli("sg", "rule", "add", "prod-default", "--direction", "ingress", "--peer",
              "0.0.0.0/0")  # fmt: skip
        r.cli("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
        r.cli("subnet", "create", "dc-a", "--vpc", "prod", "--cidr", LAN_A, "--location",
              "idc:dc1")  # fmt: skip
        r.cli("subnet", "create", "dc-b", "--vpc", "prod", "--cidr", LAN_B, "--location",
              "idc:dc1")  # fmt: skip
        for i in range(args.instances):
            r.cli("instance", "create", f"i{i}", "--subnet", "web", "--zone", f"az{1 + i % 2}")
        r.cli("hybrid-gw", "create", "hgw", "--vpc", "prod", "--idc-peer", "198.19.33.1",
              "--peer-asn", "65001", "--replicas", "2", "--wait", "--timeout", "120")  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            insts = r.json("instance", "list")
            if all(i["phase"] == "running" for i in insts):  # type: ignore[union-attr, index]
                break
            time.sleep(0.5)

        # -- matrix -------------------------------------------------------------------------
        full = json.loads(r.cli("check", "connectivity", "--vpc", "prod", "--json"))
        results = full["results"]
        print(f"endpoints' pairs: {len(results)}, reached {full['reached']}")
        rng = random.Random(1)
        chosen = results if len(results) <= 1000 else rng.sample(results, 1000)
        if len(chosen) < 1000:
            raise RuntimeError(f"only {len(chosen)} pairs: raise --instances")
        pairs_file = home / "pairs.txt"
        pairs_file.write_text("".join(f"{p['src']} {p['dst']}\n" for p in chosen))
        times = []
        for _ in range(args.rounds):
            t0 = time.monotonic()
            m = json.loads(r.cli("check", "connectivity", "--pairs", str(pairs_file), "--json"))
            times.append(time.monotonic() - t0)
            print(f"matrix: {m['pairs']} pairs, {m['reached']} reached, probes {m['seconds']} s,"
                  f" command {times[-1]:.2f} s")  # fmt: skip
        sample = rng.sample(chosen, args.sample)
        t0 = time.monotonic()
        ok = 0
        for p in sample:
            bind = p["src_ip"] if p["src_kind"] == "replica" else None
            ok += _ping_one(p["src_netns"], p["dst_ip"], bind)
        one_by_one = (time.monotonic() - t0) / len(sample) * 1000
        out["matrix_1000_s"] = statistics.median(times)
        out["ping_1000_s"] = one_by_one
        out["matrix_speedup"] = one_by_one / statistics.median(times)
        print(f"one ping at a time: {len(sample)} pairs, {ok} reached, {one_by_one:.1f} s per 1000")

        # -- rollback -----------------------------------------------------------------------
        bad = home / "bad.yaml"
        bad.write_text("routes:\n  - {prefix: 10.0.0.0/16, blackhole: true}\n")
        t0 = time.monotonic()
        p = subprocess.run([yunhan, "netconf", "push", "dc1", "--config", str(bad),
                            "--confirm-timeout", "5"], env=r.env, capture_output=True,
                           text=True)  # fmt: skip
        whole = time.monotonic() - t0
        print(p.stdout.strip(), p.stderr.strip())
        (entry,) = json.loads(r.cli("netconf", "log", "dc1", "--json"))
        out["rollback_s"] = float(entry["rollback_s"])
        out["rollback_command_s"] = whole

        # -- dual write ---------------------------------------------------------------------
        r.cli("route-table", "create", "mig", "--vpc", "prod")
        r.cli("acl", "create", "mig-acl", "--vpc", "prod")
        r.cli("migrate", "start", "m1", "--prefix", LAN_B, "--site", "dc1", "--vpc", "prod",
              "--route-table", "mig", "--acl", "mig-acl")  # fmt: skip
        changes = home / "changes.jsonl"
        lines = []
        for i in range(args.changes):
            op = rng.choice(("put", "put", "delete"))
            if i % 2:
                lines.append(
                    {
                        "kind": "route",
                        "op": op,
                        "prefix": f"192.168.101.{16 * rng.randrange(16)}/28",
                    }
                )
            else:
                lines.append({"kind": "acl", "op": op, "seq": rng.randrange(1, 200),
                              "peer": f"172.16.{rng.randrange(256)}.0/24",
                              "action": rng.choice(("permit", "deny"))})  # fmt: skip
        changes.write_text("".join(json.dumps(x) + "\n" for x in lines))
        t0 = time.monotonic()
        r.cli("migrate", "apply", "--changes", str(changes), "--wait")
        took = time.monotonic() - t0
        out["dualwrite_per_s"] = args.changes / took
        print(f"dual write: {args.changes} changes on both sides in {took:.2f} s")
        out.update(_paced_lag(r, home))
    finally:
        subprocess.run([yunhan, "down"], env=r.env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    print(
        "RESULT " + " ".join(
            f"{k}={v:.3f}" if k.endswith(("_s", "speedup")) else f"{k}={v:.0f}"
            for k, v in out.items()
        )
    )  # fmt: skip
    return 0


def _paced_lag(r: Region, home: Path) -> dict[str, float]:
    """Each change's lag, from its publish to both sides' positions passing it, for a
    stream of 100 changes a second for 5 s."""
    from yunhan.lab import dualwrite as ldw
    from yunhan.lab.region import RegionRecord
    from yunhan.net import dualwrite as dw

    record = RegionRecord.load(home / "state")
    assert record is not None
    data = record.data_dir
    m = ldw.load(data, "m1")
    url = ldw.nats_url(data)
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}

    async def produce() -> None:
        for i in range(500):
            ch = dw.route_change(m.prefix, f"192.168.101.{16 * (i % 16)}/28",
                                 "put" if i % 3 else "delete")  # fmt: skip
            t = time.monotonic()
            (seq,) = await ldw.publish(url, m, [ch])
            sent[seq] = t
            await asyncio.sleep(0.01)

    async def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                st = json.loads(ldw.status_file(data, "m1").read_text())
            except (OSError, ValueError):
                await asyncio.sleep(0.005)
                continue
            pos = min(int(st["sides"][s]["position"]) for s in dw.SIDES)
            now = time.monotonic()
            for seq in list(sent):
                if seq <= pos and seq not in seen:
                    seen[seq] = now
            if sent and len(seen) == 500:
                return
            await asyncio.sleep(0.005)

    async def both() -> None:
        await asyncio.gather(produce(), watch())

    asyncio.run(both())
    st = json.loads(ldw.status_file(data, "m1").read_text())
    for side in dw.SIDES:
        d = st["sides"][side]
        print(f"  {side}: {d['batches']} batches, last applied in {d['apply_ms']} ms")
    lags = sorted((seen[s] - sent[s]) * 1000 for s in seen)
    print(f"paced lag: {len(lags)} changes, p50 {lags[len(lags) // 2]:.0f} ms, "
          f"p99 {lags[int(len(lags) * 0.99)]:.0f} ms")  # fmt: skip
    return {
        "dualwrite_lag_p50_ms": lags[len(lags) // 2],
        "dualwrite_lag_p99_ms": lags[int(len(lags) * 0.99)],
    }


if __name__ == "__main__":
    sys.exit(main())
