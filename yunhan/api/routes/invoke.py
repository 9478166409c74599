"""Calling functions: the API's invoke, the HTTP gateway, and their logs.

`POST /v1/functions/{ref}/invoke` answers with an envelope (request id, version, durations,
the result or the error), always 200 once the function ran, like Lambda's Invoke: a
handler's exception is the function's error, not the API's. `POST /fn/<project>/<name>`
is the gateway a web client calls: the handler's result is the body, the figures are
headers, and a handler's failure is a 502 (a timeout 504). Both run on the server's
router (yunhan.functions.router) and are metered; neither is an audited write (they are
the data plane: docs/functions.md).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse

from yunhan.api.auth import Caller
from yunhan.api.conventions import errors
from yunhan.api.deps import AppState, CallerDep, state_of
from yunhan.api.functions import Functions
from yunhan.api.journal import REQUEST
from yunhan.api.models import FunctionInvocation, FunctionLogs
from yunhan.api.views import resolve
from yunhan.errors import BadRequest, Forbidden, NotFound, Unreachable
from yunhan.functions.router import Result
from yunhan.store import Reader, Resource

router = APIRouter(tags=["functions"])

Event = Annotated[Any, Body(description="the event handed to the handler (any JSON)")]


def _functions(st: AppState) -> Functions:
    if st.runner is None:
        raise Unreachable("this server runs no function router")
    return st.runner


def _event(event: Any) -> Any:
    """The event as JSON. FastAPI hands over the raw bytes of a body not sent as
    application/json (`curl -d` sends it form-urlencoded): it is read as JSON all the
    same, as the gateway's fast path (api.gatewayfast) reads every body."""
    if isinstance(event, bytes | bytearray):
        try:
            return json.loads(event) if event.strip() else None
        except ValueError as exc:  # UnicodeDecodeError too
            raise BadRequest(f"the body is not JSON: {exc}") from exc
    return event


def _request_id(request: Request) -> str | None:
    rid = getattr(request.state, REQUEST, None)
    return rid if isinstance(rid, str) else None


def _function(st: AppState, project: str, ref: str) -> Resource:
    with st.store.read() as r:
        return resolve(r, "function", project, ref)


@router.post(
    "/v1/functions/{ref}/invoke",
    response_model=FunctionInvocation,
    responses=errors(404, 429, 503, 504),
)
def invoke(
    ref: str,
    request: Request,
    c: CallerDep,
    event: Event = None,
    version: Annotated[
        int | None,
        Query(ge=1, description="run this version, whatever the traffic split (a qualifier)"),
    ] = None,
) -> dict[str, Any]:
    """Run the function once on `event`; the answer carries its result or error."""
    st = state_of(request)
    fn = _function(st, c.project.id, ref)
    res = _functions(st).invoke(fn, _event(event), _request_id(request), version=version)
    return res.to_json()


def gateway_project(r: Reader, c: Caller, ref: str) -> str:
    """The project of /fn/<project>/...: the caller's own (by name or id), or any for the
    admin (also the fast path's rule, `gatewayfast`)."""
    if ref in (c.project.id, c.project.name):
        return c.project.id
    if not c.admin:
        raise Forbidden(f"this token belongs to project {c.project.name}, not {ref!r}")
    p = r.get("project", ref) or r.by_name("project", "", ref)
    if p is None:
        raise NotFound(f"no project {ref!r}")
    return p.id


def _headers(res: Result) -> dict[str, str]:
    return {
        "X-Yunhan-Function-Version": str(res.version),
        "X-Yunhan-Duration-Ms": f"{res.duration_ms:.3f}",
        "X-Yunhan-Billed-Duration-Ms": str(res.billed_ms),
        "X-Yunhan-Cold-Start": "true" if res.cold_start else "false",
    }


@router.post(
    "/fn/{project}/{name}",
    responses=errors(403, 404, 429, 502, 503, 504),
    summary="Call a function through the HTTP gateway",
)
def gateway(project: str, name: str, request: Request, c: CallerDep, event: Event = None) -> Any:
    """The handler's result is the body; request id, version and durations are headers."""
    st = state_of(request)
    with st.store.read() as r:
        fn = resolve(r, "function", gateway_project(r, c, project), name)
    res = _functions(st).invoke(fn, _event(event), _request_id(request))
    status, content, headers = answer(res)
    return JSONResponse(content, status_code=status, headers=headers)


def answer(res: Result) -> tuple[int, Any, dict[str, str]]:
    """The gateway's answer to one invocation (also `gatewayfast`'s): the handler's
    result, or its failure as an error (502, a timeout 504), with the figures as headers."""
    if res.ok:
        return 200, res.result, _headers(res)
    timed_out = (res.error or "").startswith("timed out")
    err = {
        "code": "function_timeout" if timed_out else "function_error",
        "message": res.error,
        "details": {"traceback": res.traceback} if res.traceback else {},
    }
    return (504 if timed_out else 502), {"error": err}, _headers(res)


@router.get("/v1/functions/{ref}/logs", response_model=FunctionLogs, responses=errors(404, 503))
def logs(
    ref: str,
    request: Request,
    c: CallerDep,
    tail: Annotated[int, Query(ge=1, le=10_000, description="last lines per host")] = 100,
) -> dict[str, Any]:
    """What the function's workers printed, from every function host."""
    st = state_of(request)
    fn = _function(st, c.project.id, ref)
    return {"function": fn.id, "lines": _functions(st).logs(fn.id, tail)}
