"""whoami, projects and their tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from yunhan.api.auth import new_token, token_hash
from yunhan.api.deps import AdminDep, CallerDep, state_of
from yunhan.api.views import project_view, resolve
from yunhan.errors import ValidationError
from yunhan.model import new_id, validate_name
from yunhan.model.schemas import ProjectCreate

router = APIRouter(prefix="/v1", tags=["projects"])


@router.get("/whoami")
def whoami(c: CallerDep) -> dict[str, Any]:
    return {"project": project_view(c.project), "admin": c.admin}


@router.post("/projects", status_code=201)
def create_project(body: ProjectCreate, request: Request, _: AdminDep) -> dict[str, Any]:
    name = validate_name("project", body.name)
    token = new_token()
    with state_of(request).store.transaction() as tx:
        p = tx.create("project", new_id("project"), "", name, {})
        tx.add_token(token_hash(token), p.id)
    return {"project": project_view(p), "token": token}


@router.get("/projects")
def list_projects(request: Request, _: AdminDep) -> list[dict[str, Any]]:
    with state_of(request).store.read() as r:
        return [project_view(p) for p in r.list("project", "")]


@router.post("/projects/{ref}/tokens")
def create_token(ref: str, request: Request, _: AdminDep) -> dict[str, Any]:
    token = new_token()
    with state_of(request).store.transaction() as tx:
        p = resolve(tx, "project", "", ref)
        if p.id == state_of(request).admin_project_id:
            # A stored admin token would survive the admin token's rotation.
            raise ValidationError(
                "the admin project has no stored tokens: its token is the one the server was "
                "started with (--admin-token-file); to change it, restart the server with "
                "another"
            )
        tx.add_token(token_hash(token), p.id)
    return {"token": token}
