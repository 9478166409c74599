"""How stored resources are shown, and the lookups the routers share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from yunhan.api.fleet import Lease
from yunhan.controller.scheduler import host_healthy
from yunhan.errors import NotFound
from yunhan.model import looks_like_id
from yunhan.store import Reader, Resource


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_REGION_WIDE = ("zone", "host")


def resolve(r: Reader, kind: str, project: str, ref: str) -> Resource:
    """The `kind` named `ref` (an id or a name) in `project`; another project's is NotFound."""
    res = r.get(kind, ref) if looks_like_id(kind, ref) else None
    if res is None or res.project != project:
        res = r.by_name(kind, project, ref)
    if res is None:
        if kind in _REGION_WIDE:
            # Zones and hosts are the region's, not the caller's: name the ones there are.
            known = ", ".join(x.name for x in r.list(kind, project)) or "none yet"
            raise NotFound(
                f"no {kind} {ref!r} in this region ({kind}s: {known})", kind=kind, ref=ref
            )
        raise NotFound(f"no {kind} {ref!r} in this project", kind=kind, ref=ref)
    return res


def project_view(p: Resource) -> dict[str, Any]:
    env = p.envelope()
    env["project"] = p.id
    return env


HIDDEN_ERROR = (
    "the agent reports an error (its text, which may name other projects' resources, "
    "is shown to the admin only)"
)


def host_view(
    h: Resource,
    desired_revision: int | None,
    lease: Lease | None,
    now: float,
    *,
    admin: bool = True,
) -> dict[str, Any]:
    """A host with what its agent last said merged into status (leases are not
    revisioned, see `api.fleet`). Hosts serve every project, so an agent's error text
    (addresses, instance ids) is the admin's: others see only that there is one."""
    env = h.envelope()
    env["status"] = {
        "vtep_index": h.status.get("vtep_index"),
        "desired_revision": desired_revision,
        "applied_revision": lease.applied_revision if lease else None,
        "heartbeat_at": iso(lease.heartbeat_at) if lease else None,
        "healthy": host_healthy(lease, now),
        "condition": h.status.get("condition"),
        "error": (lease.error if admin else HIDDEN_ERROR) if lease and lease.error else None,
        "functions": _functions_view(h, lease, admin),
        "datapath": _datapath_view(lease, admin),
    }
    return env


def _datapath_view(lease: Lease | None, admin: bool) -> dict[str, Any] | None:
    """The host's data path. Per-instance paths and errors name every project's
    instances: the admin's only; others see the mode and why."""
    dp = lease.datapath if lease else None
    if dp is None:
        return None
    if admin:
        return dp
    return {"mode": dp.get("mode"), "reason": dp.get("reason") if not dp.get("errors") else ""}


def _functions_view(h: Resource, lease: Lease | None, admin: bool) -> dict[str, Any] | None:
    """The host's function host. Its key lets whoever holds it run code on the host as
    any function: the admin's only (every project may read hosts)."""
    stored = h.status.get("functions")
    if not isinstance(stored, dict):
        return None
    return {
        "endpoint": stored.get("endpoint"),
        "key": stored.get("key") if admin else None,
        "memory_mb": stored.get("memory_mb"),
        "workers": lease.function_workers if lease else None,
    }
