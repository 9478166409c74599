"""The store revision and convergence (long poll)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from yunhan.api.app import MAX_REVISION, CallerDep, state_of
from yunhan.api.views import convergence

router = APIRouter(prefix="/v1", tags=["watch"])


@router.get("/revision")
def get_revision(request: Request, _: CallerDep) -> dict[str, Any]:
    return {"revision": state_of(request).store.revision()}


@router.get("/converged")
async def converged(
    request: Request,
    _: CallerDep,
    revision: int | None = Query(None, ge=0, le=MAX_REVISION),
    timeout: float = Query(0.0, allow_inf_nan=False),
) -> dict[str, Any]:
    """Wait up to `timeout` s until write `revision` (default: the current one) is applied
    by every host it affects; answers with `converged` false and the `pending` hosts if not.
    """
    st = state_of(request)
    if revision is None:
        revision = st.store.revision()
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        with st.store.read() as r:
            last = convergence(r, revision, st.clock())
        return last if last["converged"] else None

    # "any": agents' reports (not revisioned) are what moves convergence.
    await st.store.wait_for_async(check, min(max(timeout, 0.0), st.max_long_poll), on="any")
    return last
