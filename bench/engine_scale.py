"""Engine at region scale: load, per-write apply cost, deltas and memory (issue 6).

1,000 hosts, 100 VPCs, 10,000 instances (10 per host, each in a random VPC): every host
carries ~10 VPCs of ~100 members, so its document has ~1,000 entries. Run:
    PYTHONPATH=. python bench/engine_scale.py [hosts] [instances] [vpcs]
Ends with one RESULT line.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time

from yunhan.controller.engine import Engine
from yunhan.store.resource import Event, Resource


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * 4096 / 2**20


def res(
    kind: str, rid: str, name: str, spec: dict[str, object], status: dict[str, object]
) -> Resource:
    return Resource(kind, rid, "p", name, spec, status, 1, "2026-01-01T00:00:00Z")


def instance(n: int, vpc: int, host: int) -> Resource:
    return res(
        "instance",
        f"inst-{n:08x}",
        f"vm{n}",
        {"subnet": f"subnet-{vpc:08x}", "command": None, "zone": "az1"},
        {
            "ip": f"10.{n // 65536}.{n // 256 % 256}.{n % 256}",
            "mac": f"fa:16:3e:{n // 65536:02x}:{n // 256 % 256:02x}:{n % 256:02x}",
            "host": f"h{host}",
            "phase": "running",
        },
    )


def main(n_hosts: int, n_inst: int, n_vpcs: int) -> None:
    rng = random.Random(1)
    model = [
        res(
            "host",
            f"host-{h:08x}",
            f"h{h}",
            {"zone": "az1", "underlay_ip": f"198.18.{h // 250}.{h % 250 + 1}", "mtu": 1500},
            {"vtep_index": h + 1},
        )
        for h in range(n_hosts)
    ]
    for v in range(n_vpcs):
        model.append(res("vpc", f"vpc-{v:08x}", f"v{v}", {"cidrs": ["10.0.0.0/8"]}, {"vni": v + 1}))
        model.append(
            res(
                "subnet",
                f"subnet-{v:08x}",
                f"s{v}",
                {"vpc": f"vpc-{v:08x}", "cidr": "10.0.0.0/8"},
                {},
            )
        )
    model += [instance(n, rng.randrange(n_vpcs), n % n_hosts) for n in range(n_inst)]
    gc.collect()
    before = rss_mb()

    eng = Engine()
    t = time.perf_counter()
    eng.load(1, model)
    load_s = time.perf_counter() - t
    gc.collect()
    engine_mb = rss_mb() - before
    entries = [len(eng.snapshot(h)) for h in eng.hosts()]

    # Creates: one instance each, on a random host in a random VPC.
    rev, times, woken, deltas = 1, [], [], []
    created: list[Resource] = []
    for n in range(n_inst, n_inst + 1000):
        rev += 1
        obj = instance(n, rng.randrange(n_vpcs), rng.randrange(n_hosts))
        created.append(obj)
        t = time.perf_counter()
        hosts = eng.apply(rev, [Event(rev, "instance", obj.id, "put", obj)])
        times.append(time.perf_counter() - t)
        woken.append(len(hosts))
        h = next(iter(hosts))
        t = time.perf_counter()
        eng.delta(h, rev - 1)
        deltas.append(time.perf_counter() - t)

    # A host re-registering with a new underlay IP.
    rev += 1
    h0 = model[0]
    moved = res("host", h0.id, h0.name, {**h0.spec, "underlay_ip": "198.18.99.1"}, h0.status)
    t = time.perf_counter()
    woke = eng.apply(rev, [Event(rev, "host", h0.id, "put", moved)])
    rereg_ms = (time.perf_counter() - t) * 1e3

    t = time.perf_counter()
    snap = eng.snapshot("h1")
    snap_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    eng.digest("h1")
    digest_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    d = eng.delta("h1", 1)  # everything since the load
    delta_old_ms = (time.perf_counter() - t) * 1e3
    gc.collect()
    total_mb = rss_mb() - before

    # Incremental == full at scale: a fresh load of the final model gives the same entries.
    final = [moved if r.id == h0.id else r for r in model] + created
    fresh = Engine()
    fresh.load(rev, final)
    same = fresh.hosts() == eng.hosts() and all(
        fresh.snapshot(h) == eng.snapshot(h) for h in eng.hosts()
    )

    us = sorted(x * 1e6 for x in times)
    mean_us, p99_us = statistics.mean(us), us[int(len(us) * 0.99)]
    print(
        f"hosts={n_hosts} instances={n_inst} vpcs={n_vpcs}; entries per host document: "
        f"mean {statistics.mean(entries):.0f}, max {max(entries)}"
    )
    print(f"load: {load_s:.2f} s; engine RSS after load: {engine_mb:.0f} MB (model excluded)")
    print(
        f"apply(instance create): mean {mean_us:.0f} us, p50 {us[len(us) // 2]:.0f} us, "
        f"p99 {p99_us:.0f} us; hosts woken: mean {statistics.mean(woken):.0f}"
    )
    print(f"delta of one create: mean {statistics.mean(deltas) * 1e6:.0f} us")
    print(f"host re-registration (new underlay ip): {rereg_ms:.2f} ms, woke {len(woke)} hosts")
    print(
        f"snapshot of one host ({len(snap)} entries): {snap_ms:.2f} ms; digest {digest_ms:.1f} ms;"
        f" delta since load {delta_old_ms:.2f} ms ({len(d.entries)} entries)"
    )
    print(
        f"RSS growth over 1,000 creates (logs and their resources): {total_mb - engine_mb:.1f} MB"
    )
    print(f"fresh load of the final model gives the same documents: {same}")
    print(
        f"RESULT engine_scale hosts={n_hosts} instances={n_inst} vpcs={n_vpcs} "
        f"load_s={load_s:.2f} apply_create_us_mean={mean_us:.0f} apply_create_us_p99={p99_us:.0f}"
        f" engine_rss_mb={engine_mb:.0f} incremental_equals_full={same}"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*(args + [1000, 10000, 100][len(args) :]))
