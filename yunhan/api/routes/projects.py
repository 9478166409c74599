"""whoami and projects (their tokens: routes/tokens.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from yunhan.api.auth import new_token, token_hash
from yunhan.api.deps import AdminDep, CallerDep, state_of
from yunhan.api.views import project_view
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
