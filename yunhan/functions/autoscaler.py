"""How many workers a function version wants: Knative's KPA, on our own clock.

The router samples each version's concurrency (requests in flight on its workers plus
those the activator holds), averaged over the time between ticks, and asks `Kpa.decide`
how many workers it wants. As in Knative:

* the stable demand is the average over the stable window (60 s), the panic demand the
  average over the panic window (6 s); each divided by the target concurrency per worker
  and rounded up is a worker count;
* the scaler panics when the panic count reaches twice the workers ready (200 %): it then
  follows the panic count and never scales down, until a whole stable window has passed
  without that condition;
* outside panic it follows the stable count, so a short lull removes nothing;
* a step is bounded: up by at most `max_up_rate` times the workers ready, down to no fewer
  than half of them;
* it wants zero once nothing was in flight for a whole stable window; the last worker
  then stays for the idle grace (Knative's scale-to-zero grace period), and
  `min_scale`/`max_scale` clamp the rest.

Pure and clock-driven (the caller passes `now`), so the tests replay minutes in
microseconds.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from yunhan.errors import ValidationError

DEFAULT_STABLE_WINDOW = 60.0
DEFAULT_PANIC_WINDOW = 6.0
DEFAULT_IDLE_GRACE = 30.0
PANIC_THRESHOLD = 2.0  # Knative's 200 %
MAX_UP_RATE = 1000.0
MAX_DOWN_RATE = 2.0


@dataclass(frozen=True)
class Policy:
    target: float  # concurrency per worker the scaler aims for
    min_scale: int = 0
    max_scale: int = 10
    stable_window: float = DEFAULT_STABLE_WINDOW
    panic_window: float = DEFAULT_PANIC_WINDOW
    idle_grace: float = DEFAULT_IDLE_GRACE

    def __post_init__(self) -> None:
        if self.target <= 0:
            raise ValidationError("the target concurrency per worker must be positive")
        if not 0 <= self.min_scale <= self.max_scale or self.max_scale < 1:
            raise ValidationError(
                f"scale bounds min {self.min_scale}, max {self.max_scale} are invalid: "
                "0 <= min <= max and max >= 1"
            )
        if not 0 < self.panic_window <= self.stable_window:
            raise ValidationError("the panic window must be positive and within the stable one")


@dataclass(frozen=True)
class Decision:
    want: int
    panic: bool
    stable_demand: float  # average concurrency over the stable window
    panic_demand: float  # ... over the panic window
    why: str


class Kpa:
    """One version's scaler: `record` a concurrency sample per tick (the average since the
    previous one), then `decide`."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._samples: deque[tuple[float, float]] = deque()  # (time, concurrency)
        self._panic_since: float | None = None  # last time the panic condition held
        self._panic_floor = 0  # the most wanted during this panic: never scale below it
        self._zero_since: float | None = None  # when it first wanted zero, workers still up

    @property
    def panicking(self) -> bool:
        return self._panic_since is not None

    def retune(self, policy: Policy) -> None:
        """New bounds or windows (a PATCH of the function): the history is kept."""
        self.policy = policy

    def record(self, now: float, concurrency: float) -> None:
        self._samples.append((now, concurrency))
        horizon = now - self.policy.stable_window
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()

    def _average(self, now: float, window: float) -> float:
        vals = [c for t, c in self._samples if t >= now - window]
        return sum(vals) / len(vals) if vals else 0.0

    def decide(self, now: float, ready: int) -> Decision:
        p = self.policy
        stable = self._average(now, p.stable_window)
        panic_avg = self._average(now, p.panic_window)
        base = max(1, ready)
        up_to = math.ceil(MAX_UP_RATE * base)
        down_to = math.floor(base / MAX_DOWN_RATE)
        want_stable = min(max(math.ceil(stable / p.target), down_to), up_to)
        want_panic = min(max(math.ceil(panic_avg / p.target), down_to), up_to)
        over = want_panic / base >= PANIC_THRESHOLD and panic_avg > 0
        if over:
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since > p.stable_window:
            self._panic_since = None
            self._panic_floor = 0
        if self._panic_since is not None:
            want = max(want_panic, self._panic_floor, ready)
            self._panic_floor = want
            why = (
                f"panic: {panic_avg:.1f} in flight over {p.panic_window:g} s against "
                f"{ready} worker(s) at {p.target:g} each"
            )
        else:
            want = want_stable
            why = f"stable: {stable:.1f} in flight over {p.stable_window:g} s at {p.target:g} each"
        if want > 0:
            self._zero_since = None
        elif ready > 0:
            if self._zero_since is None:
                self._zero_since = now
            if now - self._zero_since < p.idle_grace:
                want = 1  # the last worker stays for the grace (Knative's grace period)
                why = (
                    f"nothing in flight for {p.stable_window:g} s; the last worker stays "
                    f"{p.idle_grace - (now - self._zero_since):.0f} s more (idle grace)"
                )
            else:
                why = (
                    f"nothing in flight for {p.stable_window:g} s and the idle grace "
                    f"({p.idle_grace:g} s) is over"
                )
        clamped = min(max(want, p.min_scale), p.max_scale)
        if clamped != want:
            why += f"; clamped to [{p.min_scale}, {p.max_scale}]"
        return Decision(clamped, self._panic_since is not None, stable, panic_avg, why)
