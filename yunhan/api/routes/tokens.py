"""Tokens: project tokens (issue, list, revoke) and per-host agent credentials.

A host's agent never holds the admin token. The admin makes a one-time bootstrap token for
a named host (short-lived); the agent exchanges it for a host token, valid only for that
host's own agent endpoints; the exchange consumes (revokes) the bootstrap token and any
earlier host token of that host (docs/credentials.md).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from yunhan.api.auth import new_token, token_hash
from yunhan.api.deps import AdminDep, BootstrapDep, state_of
from yunhan.api.views import resolve
from yunhan.errors import NotFound, Unauthorized, ValidationError
from yunhan.model import validate_name
from yunhan.store import TokenInfo

router = APIRouter(prefix="/v1", tags=["tokens"])

BOOTSTRAP_TTL = 900.0  # seconds: long enough to start an agent, short enough to leak little
MAX_BOOTSTRAP_TTL = 86_400.0
MAX_TTL = 10 * 365 * 86_400.0


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=200)
    expires_in: float | None = Field(
        default=None, gt=0, le=MAX_TTL, description="seconds until the token expires (none: never)"
    )


class BootstrapCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=200)
    expires_in: float = Field(default=BOOTSTRAP_TTL, gt=0, le=MAX_BOOTSTRAP_TTL)


def _listing(items: list[TokenInfo], revision: int) -> dict[str, Any]:
    return {"items": [t.public() for t in items], "next": None, "revision": revision}


@router.post("/projects/{ref}/tokens", status_code=201)
def create_token(
    ref: str, request: Request, _: AdminDep, body: TokenCreate | None = None
) -> dict[str, Any]:
    """Issue another token for a project; the answer is the only time the token is shown."""
    st = state_of(request)
    body = body or TokenCreate()
    token = new_token()
    expires = st.clock() + body.expires_in if body.expires_in is not None else None
    with st.store.transaction() as tx:
        p = resolve(tx, "project", "", ref)
        if p.id == st.admin_project_id:
            # A stored admin token would survive the admin token's rotation.
            raise ValidationError(
                "the admin project has no stored tokens: its token is the one the server was "
                "started with (--admin-token-file); to change it, restart the server with "
                "another"
            )
        info = tx.add_token(
            token_hash(token), p.id, description=body.description, expires_at=expires
        )
    return {"token": token, **info.public()}


@router.get("/projects/{ref}/tokens")
def list_project_tokens(ref: str, request: Request, _: AdminDep) -> dict[str, Any]:
    """A project's tokens: metadata only (never the token, never its hash)."""
    with state_of(request).store.read() as r:
        p = resolve(r, "project", "", ref)
        return _listing(r.tokens(p.id), r.revision)


@router.get("/tokens")
def list_tokens(
    request: Request,
    _: AdminDep,
    project: str | None = Query(None, max_length=255),
    host: str | None = Query(None, max_length=63),
    kind: str | None = Query(None, pattern="^(project|host|bootstrap)$"),
) -> dict[str, Any]:
    """Every stored token's metadata (admin), filtered by project, host or kind."""
    with state_of(request).store.read() as r:
        pid = resolve(r, "project", "", project).id if project else None
        items = [t for t in r.tokens(pid, host=host) if kind is None or t.kind == kind]
        return _listing(items, r.revision)


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: str, request: Request, _: AdminDep) -> dict[str, Any]:
    """Revoke a token: refused from the next request on, on every replica."""
    st = state_of(request)
    with st.store.transaction() as tx:
        info = tx.token_by_id(token_id)
        if info is None:
            raise NotFound(f"no token {token_id!r}", id=token_id)
        gone = tx.revoke_token(info, st.clock())
    return gone.public()


@router.post("/hosts/{name}/bootstrap-tokens", status_code=201)
def create_bootstrap_token(
    name: str, request: Request, _: AdminDep, body: BootstrapCreate | None = None
) -> dict[str, Any]:
    """A one-time token for host `name`'s agent to exchange for its host token. The host
    need not be registered yet: registering is what its agent does with the host token."""
    st = state_of(request)
    validate_name("host", name)
    body = body or BootstrapCreate()
    token = new_token("bootstrap")
    with st.store.transaction() as tx:
        info = tx.add_token(
            token_hash(token),
            st.admin_project_id,
            kind="bootstrap",
            host=name,
            description=body.description,
            expires_at=st.clock() + body.expires_in,
        )
    return {"token": token, **info.public()}


@router.post("/agent/hosts/{name}/token", status_code=201)
def exchange_bootstrap_token(name: str, request: Request, c: BootstrapDep) -> dict[str, Any]:
    """Exchange host `name`'s bootstrap token for its host token. The bootstrap token is
    consumed, and host tokens issued to `name` before are revoked: one credential per host."""
    st = state_of(request)
    now = st.clock()
    token = new_token("host")
    with st.store.transaction() as tx:
        boot = tx.token_by_id(c.token_id)
        if boot is None or not boot.valid_at(now):
            # Another exchange with the same token won the race.
            raise Unauthorized(
                f"bootstrap token {c.token_id} was already used", token_id=c.token_id
            )
        tx.revoke_token(boot, now)
        for old in tx.tokens(host=name):
            if old.kind == "host" and old.revoked_at is None:
                tx.revoke_token(old, now)
        info = tx.add_token(
            token_hash(token),
            st.admin_project_id,
            kind="host",
            host=name,
            description=f"host {name}, exchanged from {boot.id}",
        )
    return {"token": token, **info.public()}
