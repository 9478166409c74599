"""Binning traffic samples into series (docs/cutover.md): pure, shared by the API (agents'
samples from the store) and the CLI (which adds the IDC switch's own samples)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Series:
    """One prefix, point and direction over the bins of a query, and who counted it."""

    prefix: str
    point: str
    direction: str
    packets: list[int]
    bytes: list[int]
    sources: dict[str, list[int]] = field(default_factory=dict)  # source -> [packets, bytes]

    def view(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "point": self.point,
            "direction": self.direction,
            "total_packets": sum(self.packets),
            "total_bytes": sum(self.bytes),
            "packets": self.packets,
            "bytes": self.bytes,
            "sources": {
                k: {"packets": v[0], "bytes": v[1]} for k, v in sorted(self.sources.items())
            },
        }


def bins(since: float, until: float, window: float) -> int:
    return max(1, math.ceil((until - since) / window))


def bin_samples(
    rows: Sequence[dict[str, Any]], since: float, until: float, window: float
) -> list[Series]:
    """Sum `rows` (samples or anything with their fields) per (prefix, point, direction)
    into bins of `window` seconds from `since`; rows outside [since, until) are left out."""
    n = bins(since, until, window)
    out: dict[tuple[str, str, str], Series] = {}
    for r in rows:
        end = float(r["end"])
        if not since <= end < until:
            continue
        i = min(n - 1, int((end - since) // window))
        key = (str(r["prefix"]), str(r["point"]), str(r["direction"]))
        ser = out.get(key)
        if ser is None:
            ser = out[key] = Series(*key, packets=[0] * n, bytes=[0] * n)
        ser.packets[i] += int(r["packets"])
        ser.bytes[i] += int(r["bytes"])
        tot = ser.sources.setdefault(str(r["source"]), [0, 0])
        tot[0] += int(r["packets"])
        tot[1] += int(r["bytes"])
    return [out[k] for k in sorted(out)]
