"""What every router needs from the app, in a leaf module: routers import this, never `app`.

`app.create_app` puts one `AppState` on the FastAPI app; routers reach it through
`state_of(request)` and authenticate through the `CallerDep`/`AdminDep` dependencies.
Keeping these here (and not in `app`, which imports every router) is what lets the
dependencies of the API point one way: app -> routes -> deps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from yunhan.api.auth import Caller, authenticate
from yunhan.api.fleet import Fleet
from yunhan.controller.ipam import AddressHints
from yunhan.controller.loads import HostLoads
from yunhan.errors import Forbidden, Unauthorized
from yunhan.store import Store

MAX_LONG_POLL = 300.0
# Revisions are SQLite INTEGERs: a larger one in a request is a mistake (400), not a 500.
MAX_REVISION = 2**63 - 1


@dataclass
class AppState:
    store: Store
    admin_hash: str
    admin_project_id: str
    clock: Callable[[], float]
    fleet: Fleet
    max_long_poll: float = MAX_LONG_POLL
    ipam: AddressHints = field(default_factory=AddressHints)
    loads: HostLoads = field(default_factory=HostLoads)


def state_of(request: Request) -> AppState:
    st: AppState = request.app.state.yunhan
    return st


def caller(request: Request) -> Caller:
    """FastAPI dependency: the authenticated caller (401 otherwise)."""
    st = state_of(request)
    header = request.headers.get("authorization")
    try:
        with st.store.read() as r:
            return authenticate(r, header, st.admin_hash, st.admin_project_id)
    except Unauthorized:
        if st.store.dialect == "sqlite":
            raise
    # A token made through another replica a moment ago: follow the log, then look again.
    st.store.refresh()
    with st.store.read() as r:
        return authenticate(r, header, st.admin_hash, st.admin_project_id)


CallerDep = Annotated[Caller, Depends(caller)]


def admin(c: CallerDep) -> Caller:
    """FastAPI dependency: the caller, who must hold the admin token (403 otherwise)."""
    if not c.admin:
        raise Forbidden("this needs the admin token")
    return c


AdminDep = Annotated[Caller, Depends(admin)]
