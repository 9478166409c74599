"""Counting hybrid traffic on this host and posting what moved (docs/cutover.md).

Every VPC namespace whose VPC has a hybrid gateway counts its IDC prefixes at its instances'
ports, and every local gateway replica counts what it forwards (`net.nftstats`). Every
`interval` seconds the reporter makes each table count what the applied document says
(replacing a table only when its prefixes changed, read just before), reads the counters,
and posts what moved since the last reading.

Nothing is lost between two posts: what could not be posted is kept, summed per key, and
posted with the next round. What was read and not yet posted is also kept in a state file,
with the last readings, so an agent that restarts neither loses nor counts twice what its
counters held (they live in the kernel and outlive it).

The tables count in the data plane; this thread only reads them. An agent that is down
leaves them counting, and its successor posts the sum.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yunhan.errors import DriverError
from yunhan.net import nft, nftstats
from yunhan.net.desired import HostDesired
from yunhan.net.naming import Naming
from yunhan.net.nftstats import Deltas, Key, Reading

log = logging.getLogger("yunhan.agent.traffic")

INTERVAL = 2.0
NftRun = Callable[[str, str], dict[str, Any]]


@dataclass(frozen=True)
class Target:
    """A namespace that counts: its kind, prefixes, VPC and who the samples name."""

    kind: nftstats.Kind
    prefixes: tuple[str, ...]
    vpc: str
    source: str


def targets(doc: HostDesired | None, naming: Naming, host: str) -> dict[str, Target]:
    """Namespace -> what it counts, from the applied document."""
    out: dict[str, Target] = {}
    for vpc in doc.vpcs if doc is not None else ():
        union: set[str] = set()
        for g in vpc.hybrids:
            union.update(g.prefixes)
            if g.replica is not None and g.prefixes:
                out[naming.hybrid_netns(g.id)] = Target(
                    "replica", tuple(g.prefixes), vpc.id, f"{g.id}/{g.replica.index}"
                )
        if union:
            out[naming.vpc_netns(vpc.vni)] = Target("vpc", tuple(sorted(union)), vpc.id, host)
    return out


PendingKey = tuple[str, str, str, str, str]  # vpc, prefix, point, source, direction


class TrafficReporter:
    def __init__(
        self,
        naming: Naming,
        host: str,
        desired: Callable[[], HostDesired | None],
        post: Callable[[dict[str, Any]], bool],
        *,
        state_file: Path | None = None,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.time,
        nft_run: NftRun = nft.run,
    ) -> None:
        self.naming = naming
        self.host = host
        self._desired = desired
        self._post = post
        self.state_file = state_file
        self.interval = interval
        self._clock = clock
        self._nft = nft_run
        self._deltas: dict[str, Deltas] = {}
        self._read_at: dict[str, float] = {}
        self._kinds: dict[str, nftstats.Kind] = {}
        # key -> [packets, bytes, start, end]: read, not yet posted
        self.pending: dict[PendingKey, list[float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load()

    # -- state kept across restarts -----------------------------------------------------

    def _load(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            data = json.loads(self.state_file.read_text())
            for ns, counters in data.get("last", {}).items():
                last = {}
                for name, (p, b) in counters.items():
                    k = nftstats.parse_name(name)
                    if k is not None:
                        last[k] = (int(p), int(b))
                self._deltas[ns] = Deltas(last)
                self._read_at[ns] = float(data.get("read_at", {}).get(ns, self._clock()))
                kind = data.get("kinds", {}).get(ns)
                if kind in ("vpc", "replica"):
                    self._kinds[ns] = kind
            for row in data.get("pending", []):
                self.pending[tuple(row[:5])] = [float(x) for x in row[5:9]]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("traffic counter state %s unreadable, starting afresh: %s",
                        self.state_file, exc)  # fmt: skip

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {
            "last": {
                ns: {nftstats.counter_name(k): list(v) for k, v in d.last.items()}
                for ns, d in self._deltas.items()
            },
            "read_at": self._read_at,
            "kinds": self._kinds,
            "pending": [[*k, *v] for k, v in sorted(self.pending.items())],
        }
        tmp = self.state_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.warning("cannot keep the traffic counter state: %s", exc)

    # -- one round ------------------------------------------------------------------------

    def _read(self, ns: str) -> dict[Key, Reading]:
        try:
            listing = self._nft(ns, f"list counters table {nftstats.FAMILY} {nftstats.TABLE}")
        except DriverError as exc:
            if exc.errno == 2:  # no table (yet)
                return {}
            raise
        return nftstats.parse_counters(listing)

    def _account(self, ns: str, t: Target, now_readings: dict[Key, Reading], now: float) -> None:
        d = self._deltas.setdefault(ns, Deltas())
        start = self._read_at.get(ns, now)
        for key, (p, b) in d.step(now_readings).items():
            point = f"host-{key.point}" if t.kind == "vpc" else "replica"
            pk = (t.vpc, key.prefix, point, t.source, key.direction)
            acc = self.pending.get(pk)
            if acc is None:
                self.pending[pk] = [p, b, start, now]
            else:
                acc[0] += p
                acc[1] += b
                acc[2] = min(acc[2], start)
                acc[3] = now
        self._read_at[ns] = now

    def once(self) -> int:
        """Make, read and post; returns the samples posted."""
        now = self._clock()
        want = targets(self._desired(), self.naming, self.host)
        for ns, t in want.items():
            try:
                readings = self._read(ns)
                self._account(ns, t, readings, now)  # (before a swap: what moved up to it)
                if nftstats.prefixes_of(readings) != set(t.prefixes):
                    self._nft(ns, nftstats.script(t.kind, t.prefixes))
                    self._deltas[ns] = Deltas(self._read(ns))
                self._kinds[ns] = t.kind
            except DriverError as exc:
                # A namespace being made or removed: counted next round, or gone with it.
                log.debug("traffic counters of %s: %s", ns, exc)
        for ns in [n for n in self._kinds if n not in want]:
            with contextlib.suppress(DriverError):
                self._nft(ns, nftstats.script(self._kinds[ns], ()))
            self._kinds.pop(ns, None)
            self._deltas.pop(ns, None)
            self._read_at.pop(ns, None)
        sent = 0
        if self.pending:
            body = {
                "samples": [
                    {
                        "vpc": k[0],
                        "prefix": k[1],
                        "point": k[2],
                        "source": k[3],
                        "direction": k[4],
                        "packets": int(v[0]),
                        "bytes": int(v[1]),
                        "start": v[2],
                        "end": v[3],
                    }
                    for k, v in sorted(self.pending.items())
                ]
            }
            if self._post(body):
                sent = len(self.pending)
                self.pending.clear()
        if want or self.pending or self._deltas:
            self._save()
        return sent

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.once()
            except Exception:
                log.exception("traffic counters round failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="traffic-stats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
