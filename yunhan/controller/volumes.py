"""Volumes in the control plane (docs/volumes.md): where one lives, and what its agent's
reports do to its status.

`choose_home` picks a volume's home host at create; `settle` is the pure rule that turns
an agent report into the volume's status (the API writes it only when it changed);
`detach_all` is what an instance's delete does to the volumes attached to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from yunhan.controller.scheduler import Heartbeat, host_healthy
from yunhan.errors import Conflict, ValidationError
from yunhan.model.volumes import DEFAULT_POOL, format_size
from yunhan.store import Reader, Resource, Tx

# Notice reasons (events) of volumes.
VOLUME_CREATED = "VolumeCreated"
VOLUME_RESIZED = "VolumeResized"
VOLUME_DELETED = "VolumeDeleted"
VOLUME_DELETING = "VolumeDeleting"
VOLUME_ATTACHED = "VolumeAttached"
VOLUME_DETACHED = "VolumeDetached"
VOLUME_PROTECTED = "VolumeProtected"
VOLUME_UNPROTECTED = "VolumeUnprotected"
VOLUME_RESTORED = "VolumeRestored"
VOLUME_CLONED = "VolumeCloned"

# Reported quantities that move with every write (bytes, the newest restore point) are
# written at most this often; anything else the agent says is written at once.
REFRESH_S = 5.0
# What the agent reports that changes often and matters little between two refreshes.
VOLATILE = ("used_bytes", "journal_bytes", "base_bytes", "fill", "timeline")
SETTLED = frozenset({"available", "attached"})


def pool_of(host: Resource) -> int:
    """Bytes of volume space the host registered (its agent's --volume-pool)."""
    pool = host.spec.get("volume_pool")
    return DEFAULT_POOL if pool is None else int(pool)


def used_on(r: Reader, host_name: str) -> int:
    """Bytes of the volumes whose home is `host_name`."""
    return sum(int(v.spec["size"]) for v in r.find("volume", "home", host_name))


def free_on(r: Reader, host: Resource) -> int:
    return pool_of(host) - used_on(r, host.name)


def choose_home(
    r: Reader,
    zone: Resource,
    size: int,
    leases: Mapping[str, Heartbeat],
    now: float,
    grow_on: str | None = None,
) -> str:
    """The live host of `zone` with the most free volume space that fits `size` more
    bytes (ties by name). With `grow_on`, only that host is asked (a resize stays home).

    Conflict when the zone has no live host; ValidationError when none has the space
    (the message gives the most any host could take)."""
    hosts = [
        h
        for h in r.find("host", "zone", zone.id)
        if (grow_on is None or h.name == grow_on) and host_healthy(leases.get(h.name), now)
    ]
    if not hosts:
        if grow_on is not None:
            raise Conflict(
                f"host {grow_on}, the volume's home, is not heartbeating: it cannot grow now",
                host=grow_on,
            )
        raise Conflict(f"zone {zone.name} has no live host to keep a volume on", zone=zone.name)
    free = sorted(((free_on(r, h), h.name) for h in hosts), key=lambda x: (-x[0], x[1]))
    best, name = free[0]
    if size > best:
        where = f"host {name}" if grow_on is not None else f"any live host of zone {zone.name}"
        raise ValidationError(
            f"{format_size(size)} more is above the free volume space of {where} "
            f"(at most {format_size(max(best, 0))} free)",
            field="size",
            value=size,
            free=max(best, 0),
        )
    return name


def want_phase(spec: Mapping[str, Any]) -> str:
    """The settled phase the spec asks for."""
    return "attached" if spec.get("attachment") else "available"


def settle(
    spec: Mapping[str, Any], status: Mapping[str, Any], report: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """The volume status after its host's agent reported `report`.

    The phase settles only when the report shows what the spec asks for (attached or not,
    the last restore done); until then the transitional phase the API wrote stays. An
    error is shown at once, and clears when a report agrees with the spec again. The
    volatile quantities (`VOLATILE`) are taken when anything else changed or when the
    stored ones are older than `REFRESH_S`.
    """
    new = dict(status)
    restore = spec.get("restore")
    pending = restore is not None and int(report.get("restored_serial", 0)) < restore["serial"]
    phase = report.get("phase")
    if phase == "deleted":
        return {**status, "phase": "deleted"}  # the route ends a deleting volume on this
    if phase == "error":
        new["phase"] = "error"
        new["error"] = report.get("message") or "the agent reported an error"
    elif pending:
        new["phase"] = "restoring"
        new["error"] = None
    elif phase == want_phase(spec):
        new["phase"] = phase
        new["error"] = None
    new["message"] = report.get("message")
    for key in ("device", "mounted", "restored_serial"):
        if key in report:
            new[key] = report[key]
    volatile = {k: report[k] for k in VOLATILE if k in report}
    moved = any(status.get(k) != v for k, v in volatile.items())
    stale = now - float(status.get("reported_at") or 0.0) >= REFRESH_S
    if new != status or (moved and stale):
        new.update(volatile)
        new["reported_at"] = now
    return new


def detach_all(tx: Tx, instance: Resource) -> list[Resource]:
    """Detach every volume attached to `instance` (its delete): each goes back to its
    home host, phase detaching. The volumes as they were."""
    out = tx.find("volume", "instance", instance.id)
    for vol in out:
        tx.update(
            vol,
            spec={**vol.spec, "attachment": None},
            status={**vol.status, "host": vol.status.get("home"), "phase": "detaching"},
        )
    return out
