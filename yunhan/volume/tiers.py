"""Retention tiers of a protected volume: what they promise and what the journal can give.

Tiers read "12h:1s,24h:1h,3d:1d": keep every second for 12 hours, every hour for 24 hours,
every day for 3 days. As data: a tuple of (keep_s, every_s), keep strictly increasing, every
strictly increasing, every dividing keep.

The promise at time `now` (all in ns; points of tier i are UTC multiples of its every_s):
* the first tier: any instant in [now - keep0, now] (records are timed to the nanosecond;
  "every second" is the granularity we advertise, the journal gives every instant);
* tier i >= 1: every multiple P of every_i with now - keep_i <= P < now - keep_(i-1), i.e.
  the coarser points older than the finer window (newer ones are inside it anyway).
Compaction (yunhan.volume.compact) keeps these points; `timeline` reports those that the
journal still covers (a young volume covers less than its tiers promise). Pure functions,
but `timeline`, which reads the journal's start from a volume directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from yunhan.volume import journal

Tiers = tuple[tuple[int, int], ...]

NS = 1_000_000_000
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT = "12h:1s,24h:1h,3d:1d"
_DURATION = re.compile(r"^([0-9]+)([smhd])$")


def _duration(text: str, what: str) -> int:
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(
            f"{what} {text.strip()!r}: a whole number and a unit s, m, h or d (e.g. 12h)"
        )
    seconds = int(m.group(1)) * UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"{what} {text.strip()!r} must be more than zero")
    return seconds


def validate(tiers: Tiers) -> Tiers:
    """`tiers` unchanged when they are well formed, else ValueError saying which rule fails."""
    if not tiers:
        raise ValueError("tiers: at least one keep:every pair, e.g. 12h:1s")
    for i, (keep, every) in enumerate(tiers):
        if keep <= 0 or every <= 0:
            raise ValueError(f"tier {i + 1}: keep and every must be more than zero")
        if keep % every:
            raise ValueError(f"tier {i + 1}: every {every}s does not divide keep {keep}s")
        if i:
            pkeep, pevery = tiers[i - 1]
            if keep <= pkeep:
                raise ValueError(
                    f"tier {i + 1}: keep {keep}s is not longer than the tier before ({pkeep}s)"
                )
            if every <= pevery:
                raise ValueError(
                    f"tier {i + 1}: every {every}s is not coarser than the tier before ({pevery}s)"
                )
    return tiers


def parse(text: str) -> Tiers:
    """ "12h:1s,24h:1h,3d:1d" -> ((43200, 1), (86400, 3600), (259200, 86400)); ValueError
    with a sentence a person can act on for anything else."""
    pairs = []
    for part in text.split(","):
        keep, sep, every = part.partition(":")
        if not sep:
            raise ValueError(f"tier {part.strip()!r}: write keep:every, e.g. 24h:1h")
        pairs.append((_duration(keep, "keep"), _duration(every, "every")))
    return validate(tuple(pairs))


def _fmt(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % UNITS[unit] == 0:
            return f"{seconds // UNITS[unit]}{unit}"
    return f"{seconds}s"


def format_tiers(tiers: Tiers) -> str:
    """The text form; parse(format_tiers(t)) == t."""
    return ",".join(f"{_fmt(keep)}:{_fmt(every)}" for keep, every in tiers)


@dataclass(frozen=True)
class Range:
    """Restore points from_ns..to_ns (inclusive): every instant when every_s is the first
    tier's, else the UTC multiples of every_s between them."""

    from_ns: int
    to_ns: int
    every_s: int

    def as_dict(self) -> dict[str, int]:
        return {"from_ns": self.from_ns, "to_ns": self.to_ns, "every_s": self.every_s}


def _aligned_up(t_ns: int, every_s: int) -> int:
    step = every_s * NS
    return -(-t_ns // step) * step


def ranges(tiers: Tiers, start_ns: int, newest_ns: int, now_ns: int) -> list[Range]:
    """What can be restored at `now_ns` when the journal covers `start_ns`..`newest_ns`
    (start: the oldest time it can give, newest: its last record, or now). Oldest first;
    a tier with no point left is left out."""
    validate(tiers)
    out: list[Range] = []
    for i in range(len(tiers) - 1, 0, -1):
        keep, every = tiers[i]
        lo = _aligned_up(max(start_ns, now_ns - keep * NS), every)
        hi_excl = now_ns - tiers[i - 1][0] * NS  # newer points are in the finer window
        last = _aligned_up(hi_excl, every) - every * NS
        if lo <= last:
            out.append(Range(lo, last, every))
    keep0, every0 = tiers[0]
    lo0 = max(start_ns, now_ns - keep0 * NS)
    hi0 = max(newest_ns, lo0)
    if lo0 <= now_ns:
        out.append(Range(lo0, hi0, every0))
    return out


def points(tiers: Tiers, start_ns: int, now_ns: int) -> list[int]:
    """The coarser tiers' restore points promised at `now_ns` from `start_ns` on (sorted;
    the first tier promises every instant of its window and is not enumerated). These are
    what compaction must keep exactly."""
    out: set[int] = set()
    for keep, every in validate(tiers)[1:]:
        step = every * NS
        p = _aligned_up(max(start_ns, now_ns - keep * NS), every)
        while p <= now_ns:
            out.add(p)
            p += step
    return sorted(out)


def timeline(directory: str | os.PathLike[str], tiers: Tiers, now_ns: int) -> list[Range]:
    """What the volume in `directory` can be restored to at `now_ns` (see `ranges`): the
    journal's start bounds every tier; the first tier reaches up to now (every write
    acknowledged by now is in the journal)."""
    return ranges(tiers, journal.journal_start(directory, now_ns), now_ns, now_ns)
