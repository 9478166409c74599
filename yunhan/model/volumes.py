"""The rules of volumes that need no store: sizes, protection tiers, restore points
(docs/volumes.md). Pure functions; the API runs them before it writes anything.

A tier (keep_s, every_s) promises one restore point every `every_s` seconds for the last
`keep_s` seconds. The restore points that exist are what the volume's agent reports
(`timeline`: ranges {from_ns, to_ns, every_s}); they, not the tiers, decide whether a time
can be restored, since compaction runs on the agent's schedule.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from yunhan.errors import ValidationError

GIB = 1 << 30
MIB = 1 << 20
DEFAULT_POOL = 100 * GIB  # a host's volume space when its agent does not say
DEFAULT_TIERS = "12h:1s,24h:1h,3d:1d"
NS = 1_000_000_000

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": MIB, "g": GIB, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^([0-9]+)([smhd])$")

Tier = tuple[int, int]  # (keep_s, every_s)


def parse_size(text: str) -> int:
    """Bytes of "10G", "512M", "1T", "1073741824" (binary units; "GiB", "GB" alike)."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValidationError(
            f"size {text!r} is not a size: write it like 10G (units K, M, G, T)",
            field="size",
            value=text,
        )
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def format_size(n: int) -> str:
    for unit, scale in (("T", 1 << 40), ("G", GIB), ("M", MIB), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def check_size(size: int) -> int:
    """A volume size: whole GiB, at least 1 GiB."""
    if size < GIB:
        raise ValidationError(
            f"size {format_size(size)} is below the smallest volume, 1G", field="size", value=size
        )
    if size % GIB:
        raise ValidationError(
            f"size {size} bytes is not a whole number of GiB: use whole GiB, like 10G",
            field="size",
            value=size,
        )
    return size


def _duration(text: str, what: str) -> int:
    m = _DURATION_RE.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise ValidationError(
            f"tier {what} {text.strip()!r} is not a duration: write a positive whole number "
            "with a unit s, m, h or d, like 12h",
            field="tiers",
            value=text,
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_tiers(value: str | Sequence[Mapping[str, Any]]) -> list[Tier]:
    """Tiers from "12h:1s,24h:1h,3d:1d" or [{"keep_s", "every_s"}, ...], checked: keep
    strictly increasing, every strictly increasing, every divides keep."""
    tiers: list[Tier] = []
    if isinstance(value, str):
        if not value.strip():
            raise ValidationError(
                f"tiers are empty: write them like {DEFAULT_TIERS}", field="tiers"
            )
        for part in value.split(","):
            keep, sep, every = part.partition(":")
            if not sep:
                raise ValidationError(
                    f"tier {part.strip()!r} is not KEEP:EVERY, like 12h:1s",
                    field="tiers",
                    value=part,
                )
            tiers.append((_duration(keep, "keep"), _duration(every, "every")))
    else:
        for t in value:
            k, e = t.get("keep_s"), t.get("every_s")
            if (
                not isinstance(k, int)
                or not isinstance(e, int)
                or isinstance(k, bool)
                or isinstance(e, bool)
                or k < 1
                or e < 1
            ):
                raise ValidationError(
                    "each tier needs positive whole keep_s and every_s", field="tiers", value=t
                )
            tiers.append((k, e))
    if not tiers:
        raise ValidationError("tiers are empty: give at least one", field="tiers")
    for (k0, e0), (k1, e1) in itertools.pairwise(tiers):
        if k1 <= k0:
            raise ValidationError(
                f"tier keeps must strictly increase: {format_duration(k1)} after "
                f"{format_duration(k0)}",
                field="tiers",
            )
        if e1 <= e0:
            raise ValidationError(
                f"tier intervals must strictly increase: every {format_duration(e1)} after "
                f"every {format_duration(e0)}",
                field="tiers",
            )
    for k, e in tiers:
        if k % e:
            raise ValidationError(
                f"tier {format_duration(k)}:{format_duration(e)}: the interval must "
                "divide the time kept",
                field="tiers",
            )
    return tiers


def tiers_json(tiers: Iterable[Tier]) -> list[dict[str, int]]:
    return [{"keep_s": k, "every_s": e} for k, e in tiers]


def format_duration(s: int) -> str:
    for unit in ("d", "h", "m"):
        if s % _UNITS[unit] == 0:
            return f"{s // _UNITS[unit]}{unit}"
    return f"{s}s"


def format_tiers(tiers: Iterable[Mapping[str, int]] | None) -> str:
    """ "12h:1s,24h:1h,3d:1d" of stored tiers ("-" when unprotected)."""
    if tiers is None:
        return "-"
    return ",".join(
        f"{format_duration(t['keep_s'])}:{format_duration(t['every_s'])}" for t in tiers
    )


def restorable(timeline: Iterable[Mapping[str, int]], t_ns: int) -> bool:
    """Is `t_ns` a restore point of the reported timeline? Inside a range of every_s 1: any
    time; inside a coarser range: its start plus a whole number of intervals."""
    for r in timeline:
        lo, hi, every = int(r["from_ns"]), int(r["to_ns"]), int(r["every_s"])
        if not lo <= t_ns <= hi:
            continue
        if every <= 1 or (t_ns - lo) % (every * NS) == 0:
            return True
    return False


def iso_ns(t_ns: int) -> str:
    """ISO 8601 (UTC, with nanoseconds when not whole seconds) of a time in ns."""
    s, ns = divmod(t_ns, NS)
    base = datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns:09d}Z" if ns else f"{base}Z"


_FRACTION_RE = re.compile(r"^(.*T\d\d:\d\d:\d\d)\.(\d{1,9})(.*)$")


def parse_time_ns(value: str | int | float, now: float | None = None) -> int:
    """A time as ns since the epoch: ISO 8601 (a time without zone is UTC), unix seconds
    (a number, or its text), or with `now` given, "-90s"/"-5m"/"-2h"/"-1d" before now."""
    if isinstance(value, bool):
        raise ValidationError("a time is ISO 8601 or unix seconds", field="time", value=value)
    if isinstance(value, int):
        return value * NS
    if isinstance(value, float):
        return round(value * NS)
    text = value.strip()
    if now is not None and text.startswith("-") and _DURATION_RE.match(text[1:]):
        return round(now * NS) - _duration(text[1:], "offset") * NS
    try:
        return round(float(text) * NS) if "." in text else int(text) * NS
    except ValueError:
        pass
    frac_ns = 0
    m = _FRACTION_RE.match(text)
    if m is not None:
        text = m.group(1) + m.group(3)
        frac_ns = int(m.group(2).ljust(9, "0"))
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"time {value!r} is not ISO 8601 (2026-01-02T03:04:05Z) nor unix seconds"
            + (' nor relative ("-90s")' if now is not None else ""),
            field="time",
            value=value,
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * NS + frac_ns
