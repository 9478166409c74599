"""Fleet patch rollouts (docs/fleetpatch.md): which hosts apply a patch when, and when a
rollout stops, goes back, or is done.

A patch's `status` is the whole state of its rollout (phase, targets in order, and per host
what it is asked to do, `want`, and what its agent last said, `state` and counters), so a
controller that restarts, or another replica that becomes leader, continues from the
store. Everything here is pure: functions take a status (and the clock) and return the new
one with the events it is worth telling; `advance` (the leader's pass) and the API write
them.

* **Canary.** The canary hosts (the first `canary` targets, spread over zones) are asked
  to apply at once. When each has applied and stayed healthy for `health_window` seconds,
  the phase becomes `rolling`.
* **Rolling.** The other targets follow in order, at most `max_parallel` in flight (asked
  to apply and not yet healthy for a whole window). Every target healthy: `done`.
* **Trouble.** A patched process that died in its window, or a host that could not use
  the patch file (`failed`), stops the rollout: with `auto_rollback`, every host asked to
  apply is asked to roll back (`rolling_back`, then `rolled_back` when all have); without,
  the rollout is `paused`. A canary where every process refused the patch pauses it too
  (refusals elsewhere are counted, not fatal). What stopped a rollout is accepted by
  `resume`: it does not stop it again.
* **Operator.** `pause` asks no new host (those in flight finish), `resume` continues,
  `rollback` goes back from any phase.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from yunhan.errors import Conflict
from yunhan.store import Notice, Reader, Resource, Tx

ACTIVE = ("canary", "rolling", "paused", "rolling_back")
TERMINAL = ("done", "rolled_back", "failed")
COUNTERS = ("applied", "refused", "died", "busy", "rolled_back")

# Notice reasons (docs/fleetpatch.md, "Events"): a patch's phase changes (one reason each:
# events are folded by reason), its hosts' state changes, and processes of note.
PHASE_REASONS = {
    "canary": "PatchResumed",
    "rolling": "PatchRolling",
    "paused": "PatchPaused",
    "done": "PatchDone",
    "rolling_back": "PatchRollingBack",
    "rolled_back": "PatchRolledBack",
    "failed": "PatchFailed",
}
PATCH_APPLIED = "PatchApplied"
PATCH_ROLLED_BACK = "PatchRolledBack"
PATCH_FAILED = "PatchFailed"
PATCH_REFUSED = "PatchRefused"
PATCH_DIED = "PatchProcessDied"
PATCH_ROLLBACK_FAILED = "PatchRollbackFailed"


def iso(ts: float) -> str:
    """UTC with milliseconds: health windows are measured from these."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class Policy:
    """How a patch rolls out (its spec's `canary`, `max_parallel`, `health_window`,
    `auto_rollback`)."""

    canary: int = 1
    max_parallel: int = 1
    health_window: float = 30.0
    auto_rollback: bool = True

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Policy:
        return cls(
            int(spec.get("canary", 1)),
            int(spec.get("max_parallel", 1)),
            float(spec.get("health_window", 30)),
            bool(spec.get("auto_rollback", True)),
        )


@dataclass(frozen=True, slots=True)
class Step:
    """A new status and what happened, as (reason, message) events of the patch."""

    status: dict[str, Any]
    events: list[tuple[str, str]] = field(default_factory=list)


def order_targets(hosts: Iterable[tuple[str, str]]) -> list[str]:
    """Host names from (name, zone) pairs, round-robin over zones (by zone, then name), so
    that the first hosts, the canaries, are spread over as many zones as there are."""
    by_zone: dict[str, list[str]] = {}
    for name, zone in sorted(hosts, key=lambda h: (h[1], h[0])):
        by_zone.setdefault(zone, []).append(name)
    out: list[str] = []
    queues = list(by_zone.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def _host_entry(want: str | None) -> dict[str, Any]:
    return {
        "want": want,
        "state": "waiting",
        **dict.fromkeys(COUNTERS, 0),
        "applied_at": None,
        "reported_at": None,
        "message": None,
    }


def initial_status(targets: list[str], canary: int, now: float) -> dict[str, Any]:
    """A new rollout: the canary hosts (the first `canary` targets) asked to apply."""
    canaries = targets[:canary]
    return {
        "phase": "canary" if canaries else "rolling",
        "message": (
            f"canary: {len(canaries)} host(s) first"
            if canaries
            else f"rolling over {len(targets)} host(s)"
        ),
        "targets": list(targets),
        "canary_hosts": canaries,
        "started_at": iso(now),
        "finished_at": None,
        "hosts": {h: _host_entry("apply" if h in canaries else None) for h in targets},
        "counts": dict.fromkeys(COUNTERS, 0),
    }


def _healthy(entry: Mapping[str, Any], window: float, now: float) -> bool:
    at = entry.get("applied_at")
    return entry.get("state") == "applied" and at is not None and now - unix(at) >= window


def _copy(status: Mapping[str, Any]) -> dict[str, Any]:
    return {**status, "hosts": {h: dict(v) for h, v in status["hosts"].items()}}


def _accepted(status: Mapping[str, Any]) -> dict[str, Any]:
    return dict(status.get("accepted") or {})


def _trouble(status: Mapping[str, Any]) -> str | None:
    """Why the rollout must stop (a process died, a host failed), or None."""
    ok = _accepted(status)
    died_ok: Mapping[str, int] = ok.get("died") or {}
    for h in status["targets"]:
        v = status["hosts"][h]
        if v["want"] != "apply":
            continue
        if v["died"] > died_ok.get(h, 0):
            return f"{v['died']} patched process(es) died on host {h} within the health window"
        if v["state"] == "failed" and h not in (ok.get("failed") or ()):
            why = v.get("message") or "it could not fetch, verify or read the patch file"
            return f"host {h} failed: {why}"
    return None


def _refused_canary(status: Mapping[str, Any]) -> str | None:
    ok = _accepted(status).get("refused") or ()
    for h in status["canary_hosts"]:
        v = status["hosts"][h]
        if v["state"] == "applied" and v["applied"] == 0 and v["refused"] > 0 and h not in ok:
            return f"every process on canary host {h} refused the patch ({v['refused']})"
    return None


def _finish(new: dict[str, Any], phase: str, message: str, now: float) -> Step:
    new.update(phase=phase, message=message, finished_at=iso(now))
    return Step(new, [(PHASE_REASONS[phase], message)])


def to_rollback(status: Mapping[str, Any], why: str, now: float) -> Step:
    """Every host asked to apply is asked to roll back (phase rolling_back)."""
    new = _copy(status)
    for v in new["hosts"].values():
        if v["want"] == "apply":
            v["want"] = "rollback"
            if v["state"] == "failed":
                # It could not use the file (nothing applied there); a `failed` from now
                # on is a rollback that failed.
                v["state"] = "rolling_back"
    message = f"rolling back: {why}"
    new.update(phase="rolling_back", message=message, finished_at=None)
    return Step(new, [(PHASE_REASONS["rolling_back"], message)])


def decide(status: Mapping[str, Any], policy: Policy, now: float) -> Step:
    """The rollout's next step at `now` (the same status, and no events, when there is
    nothing to do)."""
    phase = status["phase"]
    new = _copy(status)
    hosts = new["hosts"]
    if phase == "rolling_back":
        asked = {h: v for h, v in hosts.items() if v["want"] == "rollback"}
        failed = sorted(h for h, v in asked.items() if v["state"] == "failed")
        if failed:
            return _finish(new, "failed", f"rollback failed on host(s) {', '.join(failed)}", now)
        if all(v["state"] == "rolled_back" for v in asked.values()):
            why = str(new.get("message") or "").removeprefix("rolling back: ")
            done = f"rolled back on {len(asked)} host(s)" + (f" ({why})" if why else "")
            return _finish(new, "rolled_back", done, now)
        return Step(new)
    if phase not in ("canary", "rolling", "paused"):
        return Step(new)
    trouble = _trouble(new)
    if trouble is not None:
        if policy.auto_rollback:
            return to_rollback(new, trouble, now)
        if phase != "paused":
            new.update(phase="paused", message=f"paused: {trouble}")
            return Step(new, [(PHASE_REASONS["paused"], new["message"])])
        return Step(new)
    if phase == "paused":
        return Step(new)
    events: list[tuple[str, str]] = []
    window = policy.health_window
    if phase == "canary":
        refused = _refused_canary(new)
        if refused is not None:
            new.update(phase="paused", message=f"paused: {refused}")
            return Step(new, [(PHASE_REASONS["paused"], new["message"])])
        if not all(_healthy(hosts[h], window, now) for h in new["canary_hosts"]):
            return Step(new)
        new.update(phase="rolling", message="canary passed: rolling")
        events.append(
            (
                PHASE_REASONS["rolling"],
                f"canary passed on {', '.join(new['canary_hosts'])}: rolling",
            )
        )
    targets = new["targets"]
    in_flight = sum(
        1 for h in targets if hosts[h]["want"] == "apply" and not _healthy(hosts[h], window, now)
    )
    for h in targets:
        if in_flight >= policy.max_parallel:
            break
        if hosts[h]["want"] is None:
            hosts[h]["want"] = "apply"
            in_flight += 1
    if all(_healthy(hosts[h], window, now) for h in targets):
        step = _finish(new, "done", f"applied on {len(targets)} host(s)", now)
        return Step(step.status, events + step.events)
    return Step(new, events)


def take_report(
    status: Mapping[str, Any],
    host: str,
    state: str,
    results: Mapping[str, int],
    now: float,
    message: str | None = None,
) -> Step:
    """The status after host `host` reports `state` (and why, `message`, when it failed)
    and its processes' `results` (counts per result of every process it reported for this
    patch, from the rows)."""
    new = _copy(status)
    v = new["hosts"][host]
    prev = v["state"]
    for c in COUNTERS:
        v[c] = int(results.get(c, 0))
    v["state"] = state
    v["message"] = message if state == "failed" else None
    v["reported_at"] = iso(now)
    if state == "applied" and prev != "applied":
        v["applied_at"] = iso(now)
    new["counts"] = {c: sum(int(e[c]) for e in new["hosts"].values()) for c in COUNTERS}
    events: list[tuple[str, str]] = []
    if state != prev:
        if state == "applied":
            events.append((PATCH_APPLIED, f"applied to {v['applied']} process(es) on host {host}"))
        elif state == "rolled_back":
            events.append(
                (PATCH_ROLLED_BACK, f"rolled back in {v['rolled_back']} process(es) on {host}")
            )
        elif state == "failed":
            why = message or "its processes say why"
            events.append((PATCH_FAILED, f"failed on host {host}: {why}"))
    return Step(new, events)


def pause(status: Mapping[str, Any], name: str) -> dict[str, Any]:
    """No new host is asked to apply (those in flight finish)."""
    if status["phase"] == "paused":
        return dict(status)
    if status["phase"] not in ("canary", "rolling"):
        raise Conflict(f"patch {name} is {status['phase']}: there is no rollout to pause")
    return {**status, "phase": "paused", "message": "paused by the operator"}


def resume(status: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Continue a paused rollout; what stopped it (died, failed, refused) is accepted."""
    phase = status["phase"]
    if phase in ("canary", "rolling"):
        return dict(status)
    if phase != "paused":
        raise Conflict(f"patch {name} is {phase}, not paused: nothing to resume")
    hosts = status["hosts"]
    accepted = {
        "died": {h: v["died"] for h, v in hosts.items() if v["died"]},
        "failed": sorted(h for h, v in hosts.items() if v["state"] == "failed"),
        "refused": sorted(h for h, v in hosts.items() if v["refused"]),
    }
    # Past the canary stage once any other host was asked; `decide` re-checks the canaries.
    passed = any(v["want"] for h, v in hosts.items() if h not in status["canary_hosts"])
    phase = "canary" if status["canary_hosts"] and not passed else "rolling"
    return {**status, "phase": phase, "message": "resumed", "accepted": accepted}


def applied_nowhere(status: Mapping[str, Any]) -> bool:
    """Nothing is applied and no host may be applying it now."""
    in_flight = any(
        v["want"] == "apply" and v["state"] in ("waiting", "applying")
        for v in status["hosts"].values()
    )
    return int(status["counts"]["applied"]) == 0 and not in_flight


def rollback(status: Mapping[str, Any], name: str, now: float) -> Step:
    """The operator's rollback, from any phase but rolled_back; 409 "not applied" when
    nothing is applied anywhere."""
    phase = status["phase"]
    if phase == "rolling_back":
        return Step(dict(status))
    if phase == "rolled_back" or applied_nowhere(status):
        raise Conflict(f"patch {name} is not applied on any host: nothing to roll back")
    return to_rollback(status, "asked by the operator", now)


# -- in the store's transactions -------------------------------------------------------------


def _notices(patch: Resource, events: list[tuple[str, str]], now: float) -> list[Notice]:
    return [Notice(patch.project, patch.id, r, f"patch {patch.name}: {m}", now) for r, m in events]


def due(r: Reader, now: float) -> bool:
    """Would a pass change some rollout now? (the leader's idle check: reports move the
    revision, health windows end without one)"""
    return any(
        decide(p.status, Policy.of(p.spec), now).status != p.status
        for p in r.find("patch", "active", "yes")
    )


def advance(tx: Tx, now: float) -> list[Notice]:
    """The leader's pass: take every active rollout one step; the notices of the steps."""
    out: list[Notice] = []
    for p in tx.find("patch", "active", "yes"):
        step = decide(p.status, Policy.of(p.spec), now)
        if step.status != p.status:
            tx.update(p, status=step.status)
            out.extend(_notices(p, step.events, now))
    return out
