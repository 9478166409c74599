"""The store revision and convergence (long poll)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from yunhan.api.deps import MAX_REVISION, CallerDep, state_of

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
    by every host whose document it changed; answers with `converged` false and the
    `pending` hosts if not. Answered from memory (leases), woken by acknowledgements.
    """
    st = state_of(request)
    if revision is None:
        revision = st.store.revision()
    return await st.fleet.wait_converged(revision, min(max(timeout, 0.0), st.max_long_poll))
