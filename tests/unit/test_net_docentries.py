"""Document entries: assemble/entries_of round trip, delta application, digest, wire form."""

from __future__ import annotations

import random
from typing import Any

import pytest

from yunhan.controller.netcompile import HostIn, InstanceIn, SubnetIn, VpcIn, compile_hosts
from yunhan.net.desired import VolumeAttach, VolumeDesired
from yunhan.net.docentries import Delta, Entries, apply_delta, assemble, digest, entries_of


def _region(rng: random.Random) -> tuple[list[Any], ...]:
    hosts = [
        HostIn(f"h{n}", n + 1, f"198.18.0.{n + 1}", rng.choice([1500, 9000]))
        for n in range(rng.randint(1, 5))
    ]
    vpcs, subnets, insts = [], [], []
    for v in range(rng.randint(1, 3)):
        blocks = tuple(rng.sample(["10.0.0.0/16", "10.1.0.0/16", "10.0.0.0/8"], rng.randint(0, 3)))
        vpcs.append(VpcIn(f"vpc-{v:08x}", v + 1, blocks))
        for s in range(rng.randint(1, 3)):
            sid = f"subnet-{v:04x}{s:04x}"
            subnets.append(SubnetIn(sid, f"vpc-{v:08x}", f"10.0.{s}.0/24"))
            # one address per member (IPAM's rule), and a VIP is delivered to one member
            for n in range(rng.randint(0, 5)):
                insts.append(
                    InstanceIn(
                        f"inst-{v:02x}{s:02x}{n:04x}",
                        f"i{v}{s}{n}",
                        sid,
                        f"10.0.{s}.{n + 2}",
                        f"fa:16:3e:{v:02x}:{s:02x}:{n:02x}",
                        rng.choice([*(h.name for h in hosts), None]),
                        rng.choice([None, ("sleep", "1d")]),
                        rng.choice([(), (f"10.0.{s}.{n + 100}",)]),
                    )
                )
    return hosts, vpcs, subnets, insts


def test_entries_of_and_assemble_round_trip_on_compiled_documents() -> None:
    rng = random.Random(6)
    for _ in range(150):
        for name, doc in compile_hosts(*_region(rng)).items():
            assert assemble(entries_of(doc), name) == doc


def test_volumes_round_trip_and_are_sorted_by_id() -> None:
    rng = random.Random(12)
    name, doc = next(iter(compile_hosts(*_region(rng)).items()))
    vols = (
        VolumeDesired(id="vol-2", name="b", size=1 << 30, zone="zone-1", tiers=None),
        VolumeDesired(
            id="vol-1",
            name="a",
            size=10 << 30,
            zone="zone-1",
            tiers=((43200, 1), (86400, 3600)),
            attach=VolumeAttach(instance="inst-1", netns="yh-i-1", path="/data"),
            restore_to_ns=5,
            restore_serial=2,
            source_volume="vol-9",
            source_at_ns=7,
        ),
    )
    with_vols = doc.model_copy(update={"volumes": vols})
    entries = entries_of(with_vols)
    assert entries["volume/vol-1"] == {
        "id": "vol-1",
        "name": "a",
        "size": 10 << 30,
        "zone": "zone-1",
        "tiers": [{"keep_s": 43200, "every_s": 1}, {"keep_s": 86400, "every_s": 3600}],
        "attach": {"instance": "inst-1", "netns": "yh-i-1", "path": "/data"},
        "restore": {"to_ns": 5, "serial": 2},
        "source": {"volume": "vol-9", "at_ns": 7},
    }
    got = assemble(entries, name)
    assert [v.id for v in got.volumes] == ["vol-1", "vol-2"]
    assert got == with_vols.model_copy(update={"volumes": (vols[1], vols[0])})
    assert assemble(apply_delta(entries, ["volume/vol-2"], {}), name).volumes == (vols[1],)


def test_apply_delta_removes_a_key_and_everything_under_it() -> None:
    entries: Entries = {
        "host": {"host": "h"},
        "vpc/a": {"id": "a"},
        "vpc/a/m/i1": {"id": "i1"},
        "vpc/ab": {"id": "ab"},
        "vpc/ab/m/i2": {"id": "i2"},
    }
    got = apply_delta(entries, ["vpc/a"], {"vpc/ab/m/i3": {"id": "i3"}})
    assert sorted(got) == ["host", "vpc/ab", "vpc/ab/m/i2", "vpc/ab/m/i3"]
    assert len(entries) == 5  # the input is left alone


def test_digest_does_not_depend_on_insertion_order() -> None:
    a = {"host": {"host": "h", "x": 1}, "vpc/a": {"id": "a"}}
    b = {"vpc/a": {"id": "a"}, "host": {"x": 1, "host": "h"}}
    assert digest(a) == digest(b) != digest({**a, "vpc/a": {"id": "b"}})


def test_delta_round_trips_through_json_and_rejects_other_shapes() -> None:
    d = Delta("h1", 7, False, ("vpc/a",), {"host": {"host": "h1"}})
    assert Delta.from_json(d.to_json()) == d
    for bad in ({}, {**d.to_json(), "revision": "7"}, {**d.to_json(), "entries": []}):
        with pytest.raises(ValueError):
            Delta.from_json(bad)
