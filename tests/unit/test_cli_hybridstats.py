"""`yunhan hybrid stats` helpers: durations, --since, sparklines, the switch's samples."""

from __future__ import annotations

import pytest

from yunhan.cli.hybridstats import human_bytes, seconds, since_epoch, sparkline
from yunhan.errors import ValidationError
from yunhan.model.trafficstats import bin_samples


def test_durations() -> None:
    assert seconds("10s", "w") == 10 and seconds("5m", "w") == 300 and seconds("2", "w") == 2
    assert seconds("1.5h", "w") == 5400
    for bad in ("0s", "-1s", "10x", "", "s"):
        with pytest.raises(ValidationError, match="duration"):
            seconds(bad, "--window")


def test_since_is_a_duration_back_an_epoch_or_an_iso_time() -> None:
    now = 1_800_000_000.0
    assert since_epoch("15m", now) == now - 900
    assert since_epoch("1790000000.5", now) == 1_790_000_000.5
    assert since_epoch("2026-12-03T04:00:00Z", now) == 1_796_270_400.0
    assert since_epoch("2026-12-03T04:00:00", now) == 1_796_270_400.0  # no zone: UTC
    with pytest.raises(ValidationError, match="--since"):
        since_epoch("yesterday", now)


def test_sparkline_scales_to_the_largest_and_shows_silence() -> None:
    assert sparkline([0, 1, 8, 4, 0]) == " ▁█▄ "
    assert sparkline([0, 0]) == "  "
    assert sparkline([]) == ""
    wide = sparkline([1] * 120, width=60)
    assert len(wide) == 60 and set(wide) == {"█"}


def test_human_bytes() -> None:
    assert human_bytes(999) == "999 B"
    assert human_bytes(64_000) == "64.0 kB"
    assert human_bytes(3_500_000_000) == "3.5 GB"


def test_samples_fall_in_the_bin_of_their_reading() -> None:
    rows = [
        {"prefix": "p", "point": "switch-line", "direction": "in", "packets": 2, "bytes": 20,
         "end": 100.0, "source": "switch:dc1"},
        {"prefix": "p", "point": "switch-line", "direction": "in", "packets": 3, "bytes": 30,
         "end": 109.9, "source": "switch:dc1"},
        {"prefix": "p", "point": "switch-line", "direction": "in", "packets": 5, "bytes": 50,
         "end": 125.0, "source": "switch:dc1"},
        {"prefix": "p", "point": "switch-line", "direction": "in", "packets": 7, "bytes": 70,
         "end": 130.0, "source": "switch:dc1"},  # the range ends before it
    ]  # fmt: skip
    (s,) = bin_samples(rows, 100.0, 130.0, 10.0)
    assert s.packets == [5, 0, 5] and s.bytes == [50, 0, 50]
    assert s.view()["sources"] == {"switch:dc1": {"packets": 10, "bytes": 100}}
