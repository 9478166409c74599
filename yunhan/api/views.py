"""How stored resources are shown, and the lookups the routers share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from yunhan.controller.loop import host_healthy
from yunhan.errors import NotFound
from yunhan.model import looks_like_id
from yunhan.store import Liveness, Reader, Resource


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
            known = ", ".join(x.name for x in r.list(kind, project, spec=False)) or "none yet"
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
    h: Resource, doc: Resource | None, lv: Liveness | None, now: float, *, admin: bool = True
) -> dict[str, Any]:
    """A host with what its agent last said merged into status (heartbeats are not
    revisioned, see `store.schema.liveness`). Hosts serve every project, so an agent's
    error text (addresses, instance ids) is the admin's: others see only that there is one."""
    env = h.envelope()
    env["status"] = {
        "vtep_index": h.status.get("vtep_index"),
        "desired_revision": doc.revision if doc else None,
        "applied_revision": lv.applied_revision if lv else None,
        "heartbeat_at": iso(lv.heartbeat_at) if lv else None,
        "healthy": host_healthy(lv, now),
        "error": (lv.error if admin else HIDDEN_ERROR) if lv and lv.error else None,
    }
    return env


def convergence(r: Reader, revision: int, now: float) -> dict[str, Any]:
    """Is write `revision` applied everywhere it matters?

    It is when the controller has compiled through it and every host whose document
    changed since has applied at least the first document compiled from a store state
    that included the write. A host whose agent is unhealthy stays in `pending`: it is never
    skipped. `failed` lists affected hosts that applied it but report errors (convergence
    means "applied"; what failed is for the user to see, not to wait on forever).
    Extra fields beyond docs/api.md: `controller_revision`, `unhealthy`.
    """
    compiled = r.compiled_revision
    pending: list[str] = []
    unhealthy: list[str] = []
    failed: list[str] = []
    if compiled >= revision:
        live = r.liveness()
        for doc in r.list("hostdesired", spec=False):
            target = r.first_doc_including(doc.name, revision)
            if target is None:
                continue  # no document of this host changed since the write
            lv = live.get(doc.name)
            if lv is None or lv.applied_revision < target:
                pending.append(doc.name)
                if not host_healthy(lv, now):
                    unhealthy.append(doc.name)
            elif lv.error:
                failed.append(doc.name)
    converged = compiled >= revision and not pending
    return {
        "revision": revision,
        "converged": converged,
        "pending": sorted(pending),
        "unhealthy": sorted(unhealthy),
        "failed": sorted(failed),
        "controller_revision": compiled,
    }
