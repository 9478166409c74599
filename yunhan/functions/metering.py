"""Metering of invocations (issue 11, docs/functions.md "Usage and prices").

The router calls `Meter.record` once per invocation, on its hot path: an addition into an
in-memory bucket per (project, function, version, minute), under a lock. A thread writes
the buckets every second in one transaction (`UsageSink.add_usage`, additive upsert), and
`stop()` writes what is left, so a graceful restart of the server loses no usage. A write
that fails puts its rows back to be written with the next flush.

Leaf of the function package (stdlib only): the store's `FunctionRows` is handed in as a
`UsageSink`, so the runtime's import graph stays off the store.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from yunhan.errors import ValidationError

log = logging.getLogger(__name__)

MB_MS_PER_GB_S = 1024 * 1000  # gb_ms is billed_ms x memory_mb: GB-s = gb_ms / 1024 / 1000


@dataclass(frozen=True)
class UsageRow:
    """Usage of one version of one function in one minute (unix time // 60); rows with the
    same key add up."""

    project: str
    function: str  # the function's id
    function_name: str
    version: int
    minute: int
    requests: int = 0
    errors: int = 0
    cold_starts: int = 0
    billed_ms: int = 0
    gb_ms: int = 0  # billed_ms x memory_mb

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.project, self.function, self.version, self.minute)

    def plus(self, other: UsageRow) -> UsageRow:
        return replace(
            self,
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            cold_starts=self.cold_starts + other.cold_starts,
            billed_ms=self.billed_ms + other.billed_ms,
            gb_ms=self.gb_ms + other.gb_ms,
        )


class UsageSink(Protocol):
    """Where the meter writes (`yunhan.store.functions.FunctionRows`)."""

    def add_usage(self, rows: Sequence[UsageRow]) -> None: ...


@dataclass(frozen=True)
class PriceTable:
    """What usage costs (`yunhan server --price-file`); the defaults are AWS Lambda's
    (x86, us-east-1)."""

    per_request: float = 0.0000002
    per_gb_second: float = 0.0000166667
    currency: str = "USD"

    def cost(self, requests: int, gb_ms: int) -> float:
        return requests * self.per_request + gb_ms / MB_MS_PER_GB_S * self.per_gb_second

    def to_json(self) -> dict[str, float | str]:
        return {
            "per_request": self.per_request,
            "per_gb_second": self.per_gb_second,
            "currency": self.currency,
        }


_PRICE_KEYS = ("per_request", "per_gb_second", "currency")


def _flat_yaml(text: str, source: str) -> dict[str, object]:
    raw: dict[str, object] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line == "---":
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValidationError(f"{source}:{n}: expected `key: value`, not {line!r}")
        raw[key.strip()] = value.strip().strip("\"'")
    return raw


def parse_prices(text: str, source: str = "the price file") -> PriceTable:
    """A price table from JSON (`{"per_request": …, "per_gb_second": …, "currency": "USD"}`)
    or the same keys as flat YAML (`per_request: 0.0000002`, one a line, # comments).
    Keys left out keep Lambda's prices; an unknown key or a negative price is refused."""
    raw: dict[str, object]
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError:
        raw = _flat_yaml(text, source)
    else:
        if not isinstance(loaded, dict):
            raise ValidationError(f"{source}: expected an object of prices")
        raw = loaded
    out = PriceTable()
    for key, value in raw.items():
        if key not in _PRICE_KEYS:
            raise ValidationError(
                f"{source}: unknown key {key!r} (known: {', '.join(_PRICE_KEYS)})", key=key
            )
        if key == "currency":
            out = replace(out, currency=str(value))
            continue
        try:
            price = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"{source}: {key} must be a number, not {value!r}") from exc
        if not math.isfinite(price) or price < 0:
            raise ValidationError(f"{source}: {key} must be a price of 0 or more, not {value!r}")
        if key == "per_request":
            out = replace(out, per_request=price)
        else:
            out = replace(out, per_gb_second=price)
    return out


def load_prices(path: Path) -> PriceTable:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValidationError(f"cannot read the price file {path}: {exc.strerror}") from exc
    return parse_prices(text, str(path))


class Meter:
    """Per-minute usage in memory, written to `rows` every `flush_every` seconds.

    Thread-safe: `record` is called from the router's threads and event loop, `flush` from
    the meter's thread (or a test)."""

    def __init__(self, rows: UsageSink, flush_every: float = 1.0) -> None:
        self.rows = rows
        self.flush_every = flush_every
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time: rows are written once
        self._pending: dict[tuple[str, str, int, int], UsageRow] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(
        self,
        project: str,
        function_id: str,
        function_name: str,
        version: int,
        billed_ms: int,
        memory_mb: int,
        *,
        cold: bool,
        error: bool,
        at: float,
    ) -> None:
        """Count one invocation: `billed_ms` (already rounded up to the millisecond) at
        `memory_mb`, in the minute of `at` (unix seconds)."""
        row = UsageRow(
            project,
            function_id,
            function_name,
            version,
            int(at // 60),
            requests=1,
            errors=int(error),
            cold_starts=int(cold),
            billed_ms=billed_ms,
            gb_ms=billed_ms * memory_mb,
        )
        self._add([row])

    def _add(self, rows: Sequence[UsageRow]) -> None:
        with self._lock:
            for row in rows:
                have = self._pending.get(row.key)
                self._pending[row.key] = row if have is None else have.plus(row)

    def pending(self) -> list[UsageRow]:
        """What is recorded and not yet written."""
        with self._lock:
            return list(self._pending.values())

    def flush(self) -> int:
        """Write what is recorded (one transaction); the rows written. On failure they are
        kept for the next flush and the error is raised."""
        with self._flush_lock:
            with self._lock:
                rows = list(self._pending.values())
                self._pending = {}
            if not rows:
                return 0
            try:
                self.rows.add_usage(rows)
            except BaseException:
                self._add(rows)
                raise
            return len(rows)

    def start(self) -> None:
        """Flush every `flush_every` seconds in a thread, until `stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="yunhan-meter", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_every):
            try:
                self.flush()
            except Exception:
                log.exception("could not write function usage; retrying")

    def stop(self) -> None:
        """End the thread and write everything recorded so far."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()
