"""AI services (Wenqu, docs/ai.md): built-in functions a project enables and then calls.

Enabling a service deploys its code, shipped in the package (yunhan/ai/services), as the
project's function `ai-<service>`: it then scales, is metered and shows in `function
list`, `usage` and `events` like any other. `POST /v1/ai/{service}` takes JSON, or a
multipart upload (`file`) for images and audio, and runs that function once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

from fastapi import APIRouter, Request, Response

from yunhan.ai import catalog
from yunhan.api.conventions import IdempotencyDep, errors
from yunhan.api.deps import CallerDep, state_of
from yunhan.api.journal import REQUEST
from yunhan.api.models import AiServices, Function, FunctionInvocation
from yunhan.api.routes.functions import delete_function, deploy_function
from yunhan.errors import NotFound, Unreachable
from yunhan.functions.bundle import pack
from yunhan.model.schemas import FunctionCreate

router = APIRouter(prefix="/v1/ai", tags=["ai services"])

LABEL = "yunhan.io/ai-service"


def function_name(service: str) -> str:
    return f"ai-{service}"


def _source(svc: catalog.ServiceDef) -> tuple[str, str]:
    """The service's code as a deploy takes it (base64 tar.gz), and its sha256."""
    content = pack(svc.source_dir)
    return base64.b64encode(content).decode(), hashlib.sha256(content).hexdigest()


@router.get("/services", response_model=AiServices, responses=errors())
def list_services(request: Request, c: CallerDep) -> dict[str, Any]:
    """Every built-in service, and whether this project has enabled it."""
    st = state_of(request)
    out = []
    with st.store.read() as r:
        for name, svc in sorted(catalog.SERVICES.items()):
            fn = r.by_name("function", c.project.id, function_name(name))
            out.append(
                {
                    "name": name,
                    "input": svc.field,
                    "memory_mb": svc.memory_mb,
                    "timeout_s": svc.timeout_s,
                    "enabled": fn is not None,
                    "function": fn.id if fn is not None else None,
                }
            )
    return {"items": out}


@router.put("/services/{service}", response_model=Function, responses=errors(404, 409, 422))
def enable(
    service: str, request: Request, response: Response, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """Deploy the service's function in this project (a new version only when the
    service's code or sizing changed since it was enabled)."""
    svc = catalog.service(service)
    st = state_of(request)
    tar_gz, sha = _source(svc)
    name = function_name(service)
    with st.store.read() as r:
        fn = r.by_name("function", c.project.id, name)
    if fn is not None:
        latest = int(fn.status.get("latest_version") or 0)
        row = st.function_rows.version(fn.id, latest)
        if row and (row.code_sha256, row.memory_mb, row.timeout_s) == (
            sha,
            svc.memory_mb,
            svc.timeout_s,
        ):
            response.status_code = 200
            return fn.envelope()
    body = FunctionCreate.model_validate(
        {
            "name": name,
            "handler": svc.handler,
            "source": {"tar_gz": tar_gz},
            "memory_mb": svc.memory_mb,
            "timeout_s": svc.timeout_s,
            "labels": {LABEL: service},
        }
    )
    response.status_code = 201
    return deploy_function(body, request, c, idem)


@router.delete("/services/{service}", response_model=Function, responses=errors(404, 422))
def disable(service: str, request: Request, c: CallerDep) -> Any:
    """Remove the service's function from this project (its usage is kept)."""
    catalog.service(service)
    return delete_function(function_name(service), request, c)


_UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "{text} for langid and sentiment, {image: base64} for "
                    "ocr and faces, {audio: base64 WAV} for speech",
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


@router.post(
    "/{service}",
    response_model=FunctionInvocation,
    responses=errors(404, 422, 429, 503, 504),
    openapi_extra=_UPLOAD,
)
async def call(service: str, request: Request, c: CallerDep) -> dict[str, Any]:
    """Run the service once on the JSON or the uploaded file."""
    body = await request.body()
    event = catalog.event_from_upload(service, request.headers.get("content-type", ""), body)
    st = state_of(request)
    name = function_name(service)
    with st.store.read() as r:
        fn = r.by_name("function", c.project.id, name)
    if fn is None:
        raise NotFound(
            f"AI service {service} is not enabled in project {c.project.name}: "
            f"`yunhan ai enable {service}` (PUT /v1/ai/services/{service})"
        )
    if st.runner is None:
        raise Unreachable("this server runs no function router")
    rid = getattr(request.state, REQUEST, None)
    res = await asyncio.to_thread(st.runner.invoke, fn, event, rid)
    return res.to_json()
