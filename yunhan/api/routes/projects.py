"""whoami and projects (their tokens: routes/tokens.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from yunhan.api.auth import new_token, token_hash
from yunhan.api.conventions import (
    IfMatch,
    Optional,
    PageDep,
    check_if_match,
    errors,
    paginate,
    patch_body,
    patched_labels,
)
from yunhan.api.deps import AdminDep, CallerDep, state_of
from yunhan.api.models import Project, ProjectCreated, ProjectList, Whoami
from yunhan.api.views import project_view, resolve
from yunhan.model import new_id, validate_name
from yunhan.model.schemas import LabelsPatch, ProjectCreate

router = APIRouter(prefix="/v1", tags=["projects"])


@router.get("/whoami", response_model=Whoami, responses=errors())
def whoami(c: CallerDep) -> dict[str, Any]:
    return {"project": project_view(c.project), "admin": c.admin}


@router.post(
    "/projects", status_code=201, response_model=ProjectCreated, responses=errors(403, 409, 422)
)
def create_project(body: ProjectCreate, request: Request, _: AdminDep) -> dict[str, Any]:
    name = validate_name("project", body.name)
    token = new_token()
    with state_of(request).store.transaction() as tx:
        p = tx.create("project", new_id("project"), "", name, {}, labels=body.labels)
        tx.add_token(token_hash(token), p.id)
    return {"project": project_view(p), "token": token}


@router.get("/projects", response_model=ProjectList, responses=errors(403, 422))
def list_projects(request: Request, _: AdminDep, page: PageDep, name: str | Optional = None) -> Any:
    with state_of(request).store.read() as r:
        objs = r.list("project", "")
        return paginate(objs, page, r.revision, project_view, lambda o: name in (None, o.name))


@router.patch(
    "/projects/{ref}",
    response_model=Project,
    responses=errors(403, 404, 412, 422),
    openapi_extra=patch_body(LabelsPatch),
)
def patch_project(
    ref: str, body: LabelsPatch, request: Request, _: AdminDep, if_match: IfMatch = None
) -> Any:
    """JSON merge patch of a project's labels."""
    with state_of(request).store.transaction() as tx:
        p = resolve(tx, "project", "", ref)
        check_if_match(p, if_match)
        return project_view(tx.update(p, labels=patched_labels(p, body)))
