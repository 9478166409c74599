"""Projects' API tokens: "yh_<random>", only their SHA-256 is stored.

The admin token is handed to `create_app`/`serve` at start and compared in memory, never
written: restarting with another admin token revokes the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from yunhan.errors import Unauthorized
from yunhan.store import Reader, Resource

TOKEN_PREFIX = "yh_"
ADMIN_PROJECT = "admin"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who is asking: the project its token belongs to, and whether it is the admin."""

    project: Resource
    admin: bool


def authenticate(r: Reader, header: str | None, admin_hash: str, admin_project_id: str) -> Caller:
    """The caller behind an `Authorization: Bearer <token>` header, or Unauthorized."""
    if not header:
        raise Unauthorized("missing 'Authorization: Bearer <token>' header")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    h = token_hash(token)
    if hmac.compare_digest(h, admin_hash):
        project_id: str | None = admin_project_id
    else:
        project_id = r.token_project(h)
    project = r.get("project", project_id) if project_id else None
    if project is None:
        raise Unauthorized("the token is not valid (unknown or revoked); ask for a new one")
    return Caller(project=project, admin=project.id == admin_project_id)
