"""The function resource's rules that are not per host: scaling defaults, traffic splits
between versions, and the reasons of its events (docs/functions.md).

Pure (stdlib only): the API validates with it, the router reads a function's effective
split with `traffic_of`, the CLI parses `--traffic v1=90,v2=10` with `parse_traffic`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from yunhan.errors import ValidationError

# Spec fields that are not per version, and their defaults (a worker runs one invocation
# at a time, so the target concurrency per worker is 1).
SCALING_DEFAULTS: dict[str, int] = {
    "concurrency": 1,
    "min_scale": 0,
    "max_scale": 10,
    "idle_grace_s": 30,
    "scale_window_s": 60,  # the scaler's stable window; its panic window is a tenth of it
}
MIN_TIMEOUT_S = 1.0
MAX_TIMEOUT_S = 900.0

# Reasons of the events (Notices) written on a function.
FUNCTION_DEPLOYED = "FunctionDeployed"
FUNCTION_TRAFFIC = "FunctionTrafficChanged"

_TERM = re.compile(r"^v?([0-9]+)=([0-9]+)%?$")


def traffic_of(spec: Mapping[str, Any], latest: int) -> dict[int, int]:
    """The effective split of a function: version -> percent (summing to 100), only the
    versions that get some. `spec["traffic"]` null (or absent) sends everything to
    `latest`; no version yet (latest 0): empty."""
    if latest < 1:
        return {}
    split = spec.get("traffic")
    if not split:
        return {latest: 100}
    return {int(v): int(p) for v, p in sorted(split.items(), key=lambda kv: int(kv[0])) if p}


def check_traffic(split: Mapping[str, int], versions: Collection[int], name: str) -> dict[str, int]:
    """A split as the spec keeps it ({"<version>": percent}), refused (ValidationError)
    unless it names existing versions only and sums to 100."""
    out: dict[str, int] = {}
    for key, pct in split.items():
        m = re.fullmatch(r"v?([0-9]+)", str(key))
        if m is None:
            raise ValidationError(
                f"traffic: {key!r} is not a version (write 1 or v1)", field="traffic", version=key
            )
        v = int(m.group(1))
        if v not in versions:
            have = ", ".join(f"v{x}" for x in sorted(versions)) or "none"
            raise ValidationError(
                f"traffic: function {name} has no version {v} (it has {have})",
                field="traffic",
                version=v,
            )
        if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
            raise ValidationError(
                f"traffic: v{v} gets {pct!r}; a share is a whole percent from 0 to 100",
                field="traffic",
                version=v,
            )
        out[str(v)] = out.get(str(v), 0) + pct
    total = sum(out.values())
    if total != 100:
        raise ValidationError(
            f"traffic: the shares sum to {total}%, not 100% ("
            + ", ".join(f"v{k}={p}" for k, p in out.items())
            + ")",
            field="traffic",
            total=total,
        )
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def parse_traffic(text: str) -> dict[str, int]:
    """`v1=90,v2=10` (or `1=90,2=10`) as the API takes it: {"1": 90, "2": 10}."""
    out: dict[str, int] = {}
    for term in (t.strip() for t in text.split(",")):
        m = _TERM.match(term)
        if m is None:
            raise ValidationError(
                f"traffic {text!r}: expected VERSION=PERCENT pairs such as v1=90,v2=10",
                field="traffic",
            )
        out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
    return out
