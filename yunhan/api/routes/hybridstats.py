"""Hybrid traffic statistics (issue 16; docs/cutover.md): what agents count per IDC prefix
and direction at hosts and gateway replicas, and the binned series `yunhan hybrid stats`
plots.

Agents post what moved since their last post (`POST /v1/agent/hosts/{name}/traffic`); a
post that fails is posted again with what moved since, so a sum over a range is exact up
to the samples still on their way. The IDC switch's own counters are not here: they are
the switch's (read where it is managed, docs/cutover.md).
"""

from __future__ import annotations

import ipaddress
import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from yunhan.api.conventions import Optional, errors
from yunhan.api.deps import AgentDep, CallerDep, state_of
from yunhan.api.views import resolve
from yunhan.errors import ValidationError
from yunhan.model.schemas import Int, Number, _Body
from yunhan.model.trafficstats import bins
from yunhan.store.traffic import Query as SampleQuery
from yunhan.store.traffic import Sample

router = APIRouter(prefix="/v1", tags=["hybrid"])

MAX_SAMPLES = 5_000  # per post
MAX_BINS = 2_000  # per series of one answer
MAX_EPOCH = 1e11
DEFAULT_RANGE = 600.0  # seconds back from now when `since` is not given


COUNT_MAX = 2**53  # exact in a JSON client's doubles; sums stay inside 64-bit columns


class TrafficSampleIn(_Body):
    vpc: str = Field(max_length=64, description="the VPC's id")
    prefix: str = Field(max_length=43, description="an IPv4 prefix (422 otherwise)")
    point: Literal["host-sent", "host-delivered", "replica"]
    source: str = Field(min_length=1, max_length=128, description="host, or gateway/index")
    direction: Literal["in", "out"]
    packets: Int = Field(ge=0, le=COUNT_MAX)
    bytes: Int = Field(ge=0, le=COUNT_MAX)
    start: Number = Field(allow_inf_nan=False)
    end: Number = Field(allow_inf_nan=False)


class TrafficSamples(_Body):
    samples: list[TrafficSampleIn] = Field(max_length=MAX_SAMPLES)


@router.post("/agent/hosts/{name}/traffic", responses=errors(403, 422))
def post_traffic(name: str, body: TrafficSamples, request: Request, _: AgentDep) -> Any:
    """What this host's counters moved; samples of a VPC that is gone are dropped (counted
    in `dropped`), since nobody can ask for them any more."""
    st = state_of(request)
    now = st.clock()
    keep: list[Sample] = []
    prefixes = {}
    for n, x in enumerate(body.samples):
        try:
            prefixes[n] = str(ipaddress.IPv4Network(x.prefix, strict=False))
        except ValueError as exc:
            raise ValidationError(f"samples.{n}.prefix {x.prefix!r}: {exc}") from exc
    with st.store.read() as r:
        for n, x in enumerate(body.samples):
            vpc = r.get("vpc", x.vpc)
            if vpc is None:
                continue
            keep.append(
                Sample(
                    project=vpc.project,
                    vpc=vpc.id,
                    prefix=prefixes[n],
                    point=x.point,
                    source=x.source if x.point == "replica" else name,
                    direction=x.direction,
                    packets=x.packets,
                    bytes=x.bytes,
                    start=x.start,
                    end=x.end,
                    received_at=now,
                )
            )
    st.traffic.add(keep)
    return {"stored": len(keep), "dropped": len(body.samples) - len(keep)}


@router.get("/hybrid/stats", responses=errors(404, 422))
def hybrid_stats(
    request: Request,
    c: CallerDep,
    vpc: Annotated[str | Optional, Query(description="the VPC (name or id)")] = None,
    prefix: Annotated[str | Optional, Query(description="one IDC prefix")] = None,
    since: Annotated[float | Optional, Query(description="epoch seconds")] = None,
    until: Annotated[float | Optional, Query(description="epoch seconds (default: now)")] = None,
    window: Annotated[float, Query(ge=0.1, le=86_400, description="seconds per bin")] = 10.0,
) -> Any:
    """Packets and bytes per IDC prefix, counting point (host-sent, host-delivered,
    replica) and direction (in: to the prefix, out: from it), in bins of `window` seconds,
    with each point's sources."""
    st = state_of(request)
    for name, t in (("since", since), ("until", until)):
        if t is not None and not (math.isfinite(t) and 0 <= t <= MAX_EPOCH):
            raise ValidationError(f"{name} must be epoch seconds (0 to {MAX_EPOCH:g})")
    now = st.clock()
    end = now if until is None else until
    start = end - DEFAULT_RANGE if since is None else since
    if end <= start:
        raise ValidationError("since must be before until")
    if bins(start, end, window) > MAX_BINS:
        raise ValidationError(
            f"{bins(start, end, window)} bins of {window:g} s: at most {MAX_BINS}; "
            "widen the window or narrow the range"
        )
    net = None
    if prefix is not None:
        try:
            net = str(ipaddress.IPv4Network(prefix, strict=False))
        except ValueError as exc:
            raise ValidationError(f"prefix {prefix!r}: {exc}") from exc
    vpc_id = None
    if vpc is not None:
        with st.store.read() as r:
            vpc_id = resolve(r, "vpc", c.project.id, vpc).id
    q = SampleQuery(
        since=start,
        until=end,
        window=window,
        projects=None if c.admin else (c.project.id,),
        vpc=vpc_id,
        prefix=net,
    )
    return {
        "since": start,
        "until": end,
        "window": window,
        "series": [x.view() for x in st.traffic.series(q)],
    }
