"""Events: what a user must know about (docs/credentials.md), deduplicated, kept 1 h."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from yunhan.api.conventions import errors
from yunhan.api.deps import CallerDep, state_of
from yunhan.api.views import iso
from yunhan.store import Reader

router = APIRouter(prefix="/v1", tags=["events"])

_KINDS = (
    "instance", "host", "zone", "vpc", "subnet", "natgw", "route_table", "eip", "vip", "patch",
    "function", "hybrid_gw",
)  # fmt: skip


def _object_ids(r: Reader, ref: str, projects: list[str]) -> set[str]:
    """The ids `ref` may mean: itself, and resources of that name the caller can see.
    `KIND/NAME` (function/hello) looks at that kind only."""
    ids = {ref}
    kinds: tuple[str, ...] = _KINDS
    kind, slash, name = ref.partition("/")
    if slash and kind in _KINDS:
        ids, kinds, ref = {name}, (kind,), name
    for kind in kinds:
        for p in projects:
            res = r.by_name(kind, p, ref)
            if res is not None:
                ids.add(res.id)
    return ids


@router.get("/events", responses=errors(403, 404, 409, 422))
def list_events(
    request: Request,
    c: CallerDep,
    for_: str | None = Query(None, alias="for", max_length=255),
) -> dict[str, Any]:
    """Events (most recent first): the admin's of every project, a project's own only."""
    st = state_of(request)
    st.journal.flush()
    project = None if c.admin else c.project.id
    notices = st.store.notices(project, now=st.clock())
    if for_:
        with st.store.read() as r:
            ids = _object_ids(r, for_, [c.project.id, st.admin_project_id])
        # A fleet patch's events of one host or process name "<patch>/<host>[/<pid>]".
        notices = [n for n in notices if n["object"].split("/", 1)[0] in ids]
    items = [
        {**n, "first_time": iso(n["first_at"]), "last_time": iso(n["last_at"])} for n in notices
    ]
    return {"items": items, "next": None, "revision": st.store.revision()}
