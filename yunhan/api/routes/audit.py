"""The audit trail: list it (the admin all of it, a project its own) and verify its chain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request

from yunhan.api.deps import AdminDep, CallerDep, state_of
from yunhan.api.views import iso, resolve
from yunhan.errors import Forbidden, ValidationError

router = APIRouter(prefix="/v1", tags=["audit"])


def parse_since(since: str | None) -> float | None:
    """A time as unix seconds or ISO 8601 (2026-12-01T20:00:00Z)."""
    if since is None or since == "":
        return None
    try:
        return float(since)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise ValidationError(
            f"since={since!r} is neither unix seconds nor an ISO time (2026-12-01T20:00:00Z)"
        ) from exc


def _view(rec: dict[str, Any]) -> dict[str, Any]:
    return {**rec, "time": iso(float(rec["at"]))}


@router.get("/audit")
def list_audit(
    request: Request,
    c: CallerDep,
    project: str | None = Query(None, max_length=255),
    since: str | None = Query(None, max_length=64),
    limit: int = Query(1000, ge=1, le=10_000),
) -> dict[str, Any]:
    """Audit records, oldest first: the admin's of any project (or all), a project's own."""
    st = state_of(request)
    st.journal.flush()  # this process's pending records: a client reads its own writes
    if c.admin:
        with st.store.read() as r:
            pid = resolve(r, "project", "", project).id if project else None
    else:
        pid = c.project.id
        if project and project not in (c.project.id, c.project.name):
            raise Forbidden("a project sees only its own audit records")
    records = st.store.audit_records(pid, parse_since(since), limit)
    return {"items": [_view(x) for x in records], "next": None, "revision": st.store.revision()}


@router.get("/audit/verify")
def verify_audit(request: Request, _: AdminDep) -> dict[str, Any]:
    """Check the whole chain: `ok`, or the first broken record and why."""
    st = state_of(request)
    st.journal.flush()
    broken = st.store.verify_audit()
    if broken is None:
        return {"ok": True, "broken": None}
    return {"ok": False, "broken": {"seq": broken.seq, "reason": broken.reason}}
