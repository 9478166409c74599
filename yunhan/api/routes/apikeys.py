"""Project key pairs for the UCloud-compatible Action API (docs/ucloud-api.md).

A project's own token manages its own pairs; the admin manages anyone's. The private key
is in the creation's answer only. Revoking is final and refuses the pair's next request.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from yunhan.api.auth import Caller
from yunhan.api.conventions import errors
from yunhan.api.deps import CallerDep, state_of
from yunhan.api.views import resolve
from yunhan.errors import Conflict, Forbidden, NotFound
from yunhan.model.schemas import _Body
from yunhan.store import Resource
from yunhan.store.apikeys import MAX_KEYS

router = APIRouter(prefix="/v1", tags=["projects"])


class KeyCreate(_Body):
    description: str | None = Field(None, max_length=200)


def _project(request: Request, c: Caller, ref: str) -> Resource:
    with state_of(request).store.read() as r:
        p = resolve(r, "project", "", ref)
    if not c.admin and p.id != c.project.id:
        raise Forbidden("a project's token manages its own key pairs only")
    return p


@router.post("/projects/{ref}/keys", status_code=201, responses=errors(403, 404, 409, 422))
def create_key(ref: str, body: KeyCreate, request: Request, c: CallerDep) -> Any:
    """A new key pair; the answer is the only place its private key is shown."""
    p = _project(request, c, ref)
    keys = state_of(request).api_keys
    if keys.live(p.id) >= MAX_KEYS:
        raise Conflict(f"project {p.name} has {MAX_KEYS} key pairs: revoke one first")
    key = keys.create(p.id, body.description)
    return {**key.view(), "private_key": key.private_key}


@router.get("/projects/{ref}/keys", responses=errors(403, 404))
def list_keys(ref: str, request: Request, c: CallerDep) -> Any:
    p = _project(request, c, ref)
    return {"items": [k.view() for k in state_of(request).api_keys.list(p.id)]}


@router.delete("/projects/{ref}/keys/{key_id}", responses=errors(403, 404))
def revoke_key(ref: str, key_id: str, request: Request, c: CallerDep) -> Any:
    p = _project(request, c, ref)
    keys = state_of(request).api_keys
    key = keys.by_id(key_id)
    if key is None or key.project != p.id:
        raise NotFound(f"no key pair {key_id} in project {p.name}", kind="key", ref=key_id)
    return keys.revoke(key).view()
