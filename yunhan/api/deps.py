"""What every router needs from the app, in a leaf module: routers import this, never `app`.

`app.create_app` puts one `AppState` on the FastAPI app; routers reach it through
`state_of(request)` and authenticate through the `CallerDep`/`AdminDep` dependencies.
Keeping these here (and not in `app`, which imports every router) is what lets the
dependencies of the API point one way: app -> routes -> deps.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from yunhan.api.auth import Caller, authenticate
from yunhan.api.fleet import Fleet
from yunhan.api.journal import CALLER, REFUSED, Journal
from yunhan.controller.ipam import AddressHints
from yunhan.controller.loads import HostLoads
from yunhan.controller.vips import OUTCOMES, Damping
from yunhan.errors import Forbidden, NotFound, Unauthorized
from yunhan.functions.metering import Meter, PriceTable
from yunhan.store import Store
from yunhan.store.apikeys import ApiKeys
from yunhan.store.flows import FlowRecords
from yunhan.store.functions import FunctionRows
from yunhan.store.patches import PatchRows
from yunhan.store.traffic import TrafficSamples

if TYPE_CHECKING:
    from yunhan.api.functions import Functions

MAX_LONG_POLL = 300.0
# Revisions a request may name: JSON numbers are exact to 2^53 (JavaScript's, and the
# float arithmetic of schema validators); a larger one is a mistake (400), not a 500.
MAX_REVISION = 2**53 - 1


@dataclass
class AppState:
    store: Store
    admin_hash: str
    admin_project_id: str
    clock: Callable[[], float]
    fleet: Fleet
    journal: Journal
    flows: FlowRecords
    api_keys: ApiKeys  # key pairs of the UCloud-compatible Action API
    traffic: TrafficSamples  # hybrid traffic counters (docs/cutover.md)
    patches: PatchRows
    # Functions (docs/functions.md): their side tables, the meter every invocation is
    # recorded into (`meter.record(...)`; started and stopped by the server), the prices.
    function_rows: FunctionRows
    meter: Meter
    max_long_poll: float = MAX_LONG_POLL
    ipam: AddressHints = field(default_factory=AddressHints)
    loads: HostLoads = field(default_factory=HostLoads)
    # Where elastic IPs and NAT gateway addresses come from (`--public-pool`, validated
    # CIDRs; the lab passes its own): empty, no public address can be allocated.
    public_pools: list[str] = field(default_factory=list)
    # VIP flap damping (docs/vips.md) and the claims this process decided, by outcome.
    vip_damping: Damping = field(default_factory=Damping)
    vip_claims: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    # The Action API (docs/ucloud-api.md) calls this API in-process on behalf of a key's
    # project: such a call carries this secret, which never leaves the process.
    internal_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    prices: PriceTable = field(default_factory=PriceTable)
    # The router that runs them (yunhan.api.functions), started by the server; None in
    # an app without one (most unit tests), whose invocations then answer 503.
    runner: Functions | None = None


def state_of(request: Request) -> AppState:
    st: AppState = request.app.state.yunhan
    return st


async def identify(request: Request) -> Caller:
    """Whoever holds the request's token, of any kind (401 otherwise). Also noted on the
    request for the audit trail (`CALLER`, or the refused token's id under `REFUSED`)."""
    st = state_of(request)
    header = request.headers.get("authorization")
    if header is None and (cookie := request.cookies.get(SESSION_COOKIE)):
        _check_csrf(request, cookie)
        header = f"Bearer {cookie}"
    internal = request.headers.get(INTERNAL_HEADER)
    if internal is not None:
        c = _internal_caller(st, internal, request.headers.get(ACT_AS_HEADER, ""))
        setattr(request.state, CALLER, c)
        return c
    try:
        try:
            with st.store.read() as r:
                c = authenticate(r, header, st.admin_hash, st.admin_project_id, st.clock())
        except Unauthorized:
            if st.store.dialect == "sqlite":
                raise
            # A token made through another replica a moment ago: follow the log, look again.
            await asyncio.to_thread(st.store.refresh)
            with st.store.read() as r:
                c = authenticate(r, header, st.admin_hash, st.admin_project_id, st.clock())
    except Unauthorized as exc:
        setattr(request.state, REFUSED, exc.details.get("token_id"))
        raise
    if c.admin and (project := request.headers.get(PROJECT_HEADER)):
        c = _admin_in(st, c, project)
    setattr(request.state, CALLER, c)
    return c


# The console (docs/console.md) signs in by putting the token in an HttpOnly, SameSite=Strict
# cookie; a request carrying it (and no Authorization header) that writes must also send the
# CSRF token, which is derived from the session's token: a page of another origin can make
# the browser send the cookie but can neither read the cookie nor GET /console/session.
SESSION_COOKIE = "yunhan_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The admin acts in another project by naming it (the console's project switch): the
# request is then the admin's, scoped as that project's own would be.
PROJECT_HEADER = "x-yunhan-project"


def csrf_token(session_token: str) -> str:
    """The CSRF token of a console session: fixed for its token, unguessable without it."""
    return hmac.new(session_token.encode(), b"yunhan-console-csrf", "sha256").hexdigest()


def _check_csrf(request: Request, cookie: str) -> None:
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), csrf_token(cookie).encode()):
        raise Forbidden(
            "a write with the console's session cookie needs its CSRF token in the "
            "X-CSRF-Token header (GET /console/session answers it); none or a wrong one was sent"
        )


def _admin_in(st: AppState, c: Caller, ref: str) -> Caller:
    with st.store.read() as r:
        project = r.get("project", ref) or r.by_name("project", "", ref)
    if project is None:
        raise NotFound(f"no project {ref!r} ({PROJECT_HEADER} header)", kind="project", ref=ref)
    return Caller(project=project, admin=True, token_id=c.token_id, kind=c.kind)


INTERNAL_HEADER = "x-yunhan-internal"
ACT_AS_HEADER = "x-yunhan-act-as"  # "<project id> <key id>"


def _internal_caller(st: AppState, secret: str, act_as: str) -> Caller:
    """The project a verified Action API key acts for (its calls are audited under the
    key's id). A wrong secret is refused like a wrong token: it came from outside."""
    if not hmac.compare_digest(secret, st.internal_secret):
        raise Unauthorized("not a valid in-process call")
    project_id, _, key_id = act_as.partition(" ")
    with st.store.read() as r:
        project = r.get("project", project_id)
    if project is None or not key_id:
        raise Unauthorized("the key's project no longer exists")
    return Caller(project=project, admin=False, token_id=key_id, kind="project")


async def caller(request: Request) -> Caller:
    """FastAPI dependency for tenant and admin resources: the caller, who must hold a
    project token or the admin token (401 otherwise; 403 for host and bootstrap tokens)."""
    c = await identify(request)
    if c.kind in ("host", "bootstrap"):
        raise Forbidden(
            f"a {c.kind} token is valid only for host {c.host}'s agent endpoints, "
            "not for tenant or admin resources"
        )
    return c


async def agent_caller(name: str, request: Request) -> Caller:
    """FastAPI dependency for /v1/agent/hosts/{name}/...: the admin, or the host token of
    host `name` itself (403 for any other token, another host's included)."""
    c = await identify(request)
    if c.admin or (c.kind == "host" and c.host == name):
        return c
    if c.kind == "host":
        raise Forbidden(f"this host token serves host {c.host} only, not host {name}")
    raise Forbidden(
        f"the agent endpoints of host {name} need that host's own token or the admin token"
    )


async def bootstrap_caller(name: str, request: Request) -> Caller:
    """FastAPI dependency of the token exchange: a bootstrap token made for host `name`."""
    c = await identify(request)
    if c.kind == "bootstrap" and c.host == name:
        return c
    raise Forbidden(
        f"only a bootstrap token made for host {name} can be exchanged for its host token "
        f"(POST /v1/hosts/{name}/bootstrap-tokens, admin)"
    )


CallerDep = Annotated[Caller, Depends(caller)]


async def admin(c: CallerDep) -> Caller:
    """FastAPI dependency: the caller, who must hold the admin token (403 otherwise)."""
    if not c.admin:
        raise Forbidden("this needs the admin token")
    return c


AdminDep = Annotated[Caller, Depends(admin)]
AgentDep = Annotated[Caller, Depends(agent_caller)]
BootstrapDep = Annotated[Caller, Depends(bootstrap_caller)]
