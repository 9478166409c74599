"""The pure rules of volumes: sizes, tiers, restore points, and how a report settles a
volume's status (yunhan.model.volumes, yunhan.controller.volumes.settle)."""

from __future__ import annotations

from typing import Any

import pytest

from yunhan.controller.volumes import REFRESH_S, settle
from yunhan.errors import ValidationError
from yunhan.model.volumes import (
    GIB,
    NS,
    format_tiers,
    iso_ns,
    parse_size,
    parse_tiers,
    parse_time_ns,
    restorable,
    tiers_json,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [("10G", 10 * GIB), ("10GiB", 10 * GIB), ("512M", 512 << 20), ("1T", 1 << 40), ("42", 42)],
)
def test_sizes_parse_in_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_tiers_round_trip_between_text_and_json() -> None:
    tiers = parse_tiers("12h:1s,24h:1h,3d:1d")
    assert tiers == [(43200, 1), (86400, 3600), (259200, 86400)]
    assert format_tiers(tiers_json(tiers)) == "12h:1s,1d:1h,3d:1d"
    assert parse_tiers(tiers_json(tiers)) == tiers


def test_every_must_divide_keep() -> None:
    with pytest.raises(ValidationError, match="must divide"):
        parse_tiers("10m:7s")


TIMELINE = [
    {"from_ns": 1000 * NS, "to_ns": 5000 * NS, "every_s": 100},
    {"from_ns": 5000 * NS, "to_ns": 6000 * NS, "every_s": 1},
]


@pytest.mark.parametrize(
    ("t", "ok"),
    [
        (1000 * NS, True),
        (1100 * NS, True),
        (1150 * NS, False),  # between two points of the coarse tier
        (5500 * NS + 123, True),  # any ns inside the 1 s range
        (999 * NS, False),
        (6000 * NS + 1, False),
    ],
)
def test_restorable_follows_the_reported_ranges(t: int, ok: bool) -> None:
    assert restorable(TIMELINE, t) is ok


def test_iso_ns_and_parse_time_round_trip() -> None:
    t = 1_800_000_000 * NS + 5
    assert parse_time_ns(iso_ns(t)) == t
    assert parse_time_ns(iso_ns(1_800_000_000 * NS)) == 1_800_000_000 * NS


SPEC: dict[str, Any] = {"attachment": None, "restore": None}
REPORT: dict[str, Any] = {"phase": "available", "message": None, "used_bytes": 1,
                          "timeline": [], "restored_serial": 0}  # fmt: skip


def test_settle_takes_the_phase_the_spec_asks_for_only() -> None:
    st = settle(SPEC, {"phase": "creating"}, REPORT, 100.0)
    assert st["phase"] == "available"
    attached = {**SPEC, "attachment": {"instance": "inst-1", "path": "/data"}}
    assert settle(attached, {"phase": "attaching"}, REPORT, 100.0)["phase"] == "attaching"


def test_settle_keeps_restoring_until_the_serial_is_done() -> None:
    spec = {**SPEC, "restore": {"to_ns": 1, "serial": 2}}
    assert (
        settle(spec, {"phase": "restoring"}, {**REPORT, "restored_serial": 1}, 1.0)["phase"]
        == "restoring"
    )
    assert (
        settle(spec, {"phase": "restoring"}, {**REPORT, "restored_serial": 2}, 1.0)["phase"]
        == "available"
    )


def test_settle_writes_moving_counters_at_most_every_refresh() -> None:
    first = settle(SPEC, {"phase": "creating"}, REPORT, 100.0)
    again = settle(SPEC, first, {**REPORT, "used_bytes": 2}, 100.0 + REFRESH_S / 2)
    assert again == first
    later = settle(SPEC, first, {**REPORT, "used_bytes": 2}, 100.0 + REFRESH_S)
    assert later["used_bytes"] == 2
    assert settle(SPEC, later, {**REPORT, "used_bytes": 2}, 1000.0) == later
