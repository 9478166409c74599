"""API tokens: only their SHA-256 is stored; what a token may do depends on its kind.

    admin      handed to `create_app`/`serve` at start (as the token or its hash) and
               compared in memory, never stored: restarting with another revokes the old
    project    "yh_<random>": a tenant's; sees only its project (docs/api.md)
    host       "yhh_<random>": one host's agent endpoints only (register, desired, status)
    bootstrap  "yhb_<random>": one-time, short-lived; its only use is to be exchanged by
               the named host's agent for a host token (docs/credentials.md)

The prefixes let an agent tell a bootstrap token from a host token without asking, and let
a person (or a secret scanner) recognise a leaked one; they grant nothing by themselves.
A token is refused (401) from the first request after its revocation or expiry: the store
keeps every token's metadata in memory, so the check costs no database round trip.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from yunhan.errors import Unauthorized
from yunhan.store import Reader, Resource

TOKEN_PREFIX = "yh_"
HOST_PREFIX = "yhh_"
BOOTSTRAP_PREFIX = "yhb_"
ADMIN_PROJECT = "admin"
ADMIN_TOKEN_ID = "admin"  # the audit trail's name for the admin token (it has no record)
_PREFIXES = {"project": TOKEN_PREFIX, "host": HOST_PREFIX, "bootstrap": BOOTSTRAP_PREFIX}


def new_token(kind: str = "project") -> str:
    return _PREFIXES[kind] + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who is asking: the project its token belongs to, the token's id and kind, and (for
    host and bootstrap tokens) the one host it serves."""

    project: Resource
    admin: bool
    token_id: str = ADMIN_TOKEN_ID
    kind: str = "admin"  # admin | project | host | bootstrap
    host: str | None = None


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or Unauthorized."""
    if not header:
        raise Unauthorized("missing 'Authorization: Bearer <token>' header")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token


def authenticate(
    r: Reader, header: str | None, admin_hash: str, admin_project_id: str, now: float
) -> Caller:
    """The caller behind an `Authorization: Bearer <token>` header, or Unauthorized (whose
    details name the token's id when the token is known but revoked or expired)."""
    h = token_hash(bearer(header))
    if hmac.compare_digest(h, admin_hash):
        admin = r.get("project", admin_project_id)
        if admin is None:
            raise Unauthorized("the admin project is missing; restart the server")
        return Caller(project=admin, admin=True)
    info = r.token(h)
    if info is None:
        raise Unauthorized("the token is not valid (unknown or revoked); ask for a new one")
    if info.revoked_at is not None:
        raise Unauthorized(f"token {info.id} was revoked; ask for a new one", token_id=info.id)
    if not info.valid_at(now):
        raise Unauthorized(f"token {info.id} has expired; ask for a new one", token_id=info.id)
    project = r.get("project", info.project)
    if project is None:
        raise Unauthorized("the token's project no longer exists", token_id=info.id)
    return Caller(
        project=project,
        admin=project.id == admin_project_id and info.kind == "project",
        token_id=info.id,
        kind=info.kind,
        host=info.host,
    )
