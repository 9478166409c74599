"""Reporting the BGP sessions of the hybrid gateway replicas this host runs.

The control plane routes a VPC's IDC prefixes only to replicas whose session is
Established (docs/hybrid.md), so how fast a lost session is reported bounds the failover
of the cloud-to-IDC direction (the IDC side follows BFD by itself). The reporter reads each
local replica's FRR every `interval` seconds and posts what changed at once; it also posts
everything again every `refresh` seconds, so that a report lost with the control plane is
not lost for good. `announced` (what the replica advertises to the IDC router) is what
`yunhan hybrid switch` waits for: the switch is done when the IDC has been told.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from yunhan.errors import YunhanError
from yunhan.net import frr
from yunhan.net.desired import HostDesired
from yunhan.net.naming import Naming

log = logging.getLogger("yunhan.agent.hybrid")

INTERVAL = 0.3
REFRESH = 30.0

StatusOf = Callable[[str, str], dict[str, Any]]  # (netns, peer) -> the report's fields


def frr_status(netns: str, peer: str) -> dict[str, Any]:
    """A replica's session as the report carries it, read from its FRR."""
    s = frr.bgp_status(netns, peer)
    announced: list[str] = []
    if s.established:
        try:
            out = frr.vtysh(
                netns,
                f"show bgp ipv4 unicast neighbors {peer} advertised-routes json",
                timeout=frr.STATUS_TIMEOUT,
            )
            routes = json.loads(out).get("advertisedRoutes", {})
            announced = sorted(routes) if isinstance(routes, dict) else []
        except (YunhanError, ValueError) as exc:
            log.debug("advertised routes of %s unknown: %s", netns, exc)
    return {
        "state": s.state,
        "reason": s.reason,
        "since": s.up_since,
        "bfd": s.bfd,
        "learned": [
            {"prefix": r.prefix, "nexthop": r.nexthop, "as_path": r.as_path} for r in s.learned
        ],
        "announced": announced,
    }


class HybridReporter:
    def __init__(
        self,
        naming: Naming,
        desired: Callable[[], HostDesired | None],
        post: Callable[[dict[str, Any]], bool],
        *,
        status_of: StatusOf = frr_status,
        interval: float = INTERVAL,
        refresh: float = REFRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.naming = naming
        self._desired = desired
        self._post = post
        self._status_of = status_of
        self.interval = interval
        self.refresh = refresh
        self._clock = clock
        self._sent: dict[tuple[str, int], dict[str, Any]] = {}
        self._last_full = -refresh
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def replicas(self) -> list[tuple[str, int, str, str]]:
        """(gateway id, replica index, namespace, peer) of each replica that runs here."""
        doc = self._desired()
        out = []
        for vpc in doc.vpcs if doc is not None else ():
            for g in vpc.hybrids:
                if g.replica is not None:
                    ns = self.naming.hybrid_netns(g.id)
                    out.append((g.id, g.replica.index, ns, g.replica.peer_ip))
        return out

    def once(self) -> int:
        """Read every local replica and post what changed (everything when due); returns
        how many replicas were posted."""
        now = self._clock()
        full = now - self._last_full >= self.refresh
        body = []
        seen: dict[tuple[str, int], dict[str, Any]] = {}
        for gid, index, ns, peer in self.replicas():
            try:
                fields = self._status_of(ns, peer)
            except Exception as exc:  # a broken reading is a state too, never a crash
                fields = {"state": "down", "reason": f"cannot read its BGP session: {exc}"}
            seen[(gid, index)] = fields
            if full or self._sent.get((gid, index)) != fields:
                body.append({"gateway": gid, "index": index, **fields})
        if body and not self._post({"replicas": body}):
            return 0  # not sent: tried again at the next round
        self._sent = seen
        if full:
            self._last_full = now
        return len(body)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.once()
            except Exception:
                log.exception("hybrid replica report failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hybrid-report", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
