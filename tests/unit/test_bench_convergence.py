"""The pure pieces of bench/convergence.py, held to the product's own definitions."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from bench.convergence import (
    HOSTS_PER_VPC,
    INSTANCES_PER_HOST,
    EntryDigest,
    RawConn,
    apply_delta,
    expected_keys,
    fill_plan,
    host_name,
    pct,
    zone_of,
)
from yunhan.controller.scheduler import Candidate, schedule
from yunhan.net.docentries import digest


def test_a_removal_takes_the_subtree_and_spares_a_sibling_with_a_longer_name() -> None:
    e = {"host": 1, "vpc/a": 1, "vpc/a/m/x": 1, "vpc/ab": 1, "vpc/ab/m/y": 1}
    apply_delta(e, ["vpc/a", "vpc/absent"], {"vpc/a/m/z": 2, "host": 3})
    assert e == {"host": 3, "vpc/ab": 1, "vpc/ab/m/y": 1, "vpc/a/m/z": 2}


def test_the_incremental_digest_is_the_protocol_digest_after_every_delta() -> None:
    rng = random.Random(6)
    entries: dict[str, object] = {"host": {"host": "h0001", "vtep_index": 1}}
    d = EntryDigest()
    for step in range(200):
        keys = sorted(entries)
        removed = rng.sample(keys, min(len(keys), rng.randrange(3)))
        put = {
            f"vpc/v{rng.randrange(4)}/m/i{rng.randrange(50)}": {"ip": f"10.0.0.{step % 250}"},
            f"vpc/v{rng.randrange(4)}": {"name": "é☃" if step % 9 == 0 else "v", "n": [step]},
        }
        apply_delta(entries, removed, put)
        assert d(entries) == digest(entries)  # type: ignore[arg-type]


def _place(hosts: int, zones: int, vpcs_per_host: int, seed: int) -> dict[str, list[int]]:
    """The fill as the server would place it with the documented scheduler, each chunk's
    creates committing in a random order (the zone's chunks one after the other)."""
    rng = random.Random(seed)
    vpcs = max(1, hosts // HOSTS_PER_VPC)
    zone_hosts = {
        z: [h for h in range(hosts) if zone_of(h, zones) == z] for z in range(1, 1 + zones)
    }
    load: Counter[str] = Counter()
    carried: dict[str, list[int]] = {host_name(h): [] for h in range(hosts)}
    for round_ in fill_plan(hosts, zones, vpcs, vpcs_per_host):
        for chunk in round_:
            z = zone_of(chunk[0][0], zones)
            for _k, v in rng.sample(chunk, len(chunk)):
                cands = [
                    Candidate(host_name(h), f"az{z}", True, load[host_name(h)])
                    for h in zone_hosts[z]
                ]
                h = schedule(f"az{z}", f"az{z}", cands)
                load[h] += 1
                carried[h].append(v)
    return carried


def test_the_fill_layout_does_not_depend_on_commit_order() -> None:
    for hosts, zones in ((100, 3), (60, 2), (10, 3), (7, 3)):
        layouts = [_place(hosts, zones, 3, seed) for seed in range(3)]
        assert all(
            sorted(map(sorted, lay.values())) == sorted(map(sorted, layouts[0].values()))
            for lay in layouts
        )
        vpcs = max(1, hosts // HOSTS_PER_VPC)
        for vs in layouts[0].values():
            assert len(vs) == INSTANCES_PER_HOST
            assert len(set(vs)) == min(3, vpcs)


def test_expected_keys_follow_the_members_of_every_vpc_a_host_carries() -> None:
    insts = [
        {"id": "i1", "status": {"vpc": "v1", "host": "h1"}},
        {"id": "i2", "status": {"vpc": "v1", "host": "h2"}},
        {"id": "i3", "status": {"vpc": "v2", "host": "h2"}},
    ]
    k = expected_keys(insts, ["h1", "h2", "h3"])
    assert k["h1"] == {"host", "vpc/v1", "vpc/v1/m/i1", "vpc/v1/m/i2"}
    assert k["h2"] == k["h1"] | {"vpc/v2", "vpc/v2/m/i3"}
    assert k["h3"] == {"host"}


def test_percentiles_are_nearest_rank() -> None:
    assert pct([4.0, 1.0, 3.0, 2.0], 0.5) == 2.0
    assert pct(list(map(float, range(1, 101))), 0.95) == 95.0
    assert pct([7.0], 0.99) == 7.0


def test_the_raw_client_reads_lengths_chunks_and_no_content_and_reopens_a_closed_connection() -> (
    None
):
    answers = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-yunhan-store: s1\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnull",
    ]
    served: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            served.append(head.split(b"\r\n")[0])
            body = answers.pop(0)
            writer.write(body)
            await writer.drain()
            if b"connection: close" in body or len(served) == 2:
                break  # the second closes without saying so: an idle keep-alive timing out
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = RawConn(port, "t")
        try:
            r = await conn.request("GET", "/a")
            assert (r.status, r.json(), r.headers["x-yunhan-store"]) == (200, {}, "s1")
            assert (await conn.request("POST", "/b", {"x": 1})).json() == [1, 2]
            await asyncio.sleep(0.05)
            assert (await conn.request("GET", "/c")).status == 204  # on a new connection
            assert (await conn.request("GET", "/d")).json() is None
        finally:
            await conn.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    assert served == [
        b"GET /a HTTP/1.1",
        b"POST /b HTTP/1.1",
        b"GET /c HTTP/1.1",
        b"GET /d HTTP/1.1",
    ]
