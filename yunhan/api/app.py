"""The FastAPI application: the error shape and the routers of docs/api.md (auth: `deps`).

`create_app(store, admin_token=...)` builds an app around an open store; it does not run
the controller (tests drive `Controller.reconcile_once` themselves, `serve` runs the loop).
Every endpoint but the OpenAPI document needs a token; the OpenAPI document describes the
API and holds no tenant data.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from yunhan.api.auth import ADMIN_PROJECT, token_hash
from yunhan.api.conventions import reject_unknown_query
from yunhan.api.deps import MAX_LONG_POLL, AppState
from yunhan.api.fleet import Fleet
from yunhan.api.journal import CALLER, SCHEDULING_REFUSED, AuditMiddleware, Journal
from yunhan.api.routes import (
    acls,
    agent,
    ai,
    apikeys,
    audit,
    console,
    events,
    flowlogs,
    functions,
    hybrid,
    hybridstats,
    infra,
    instances,
    invoke,
    metrics,
    natgw,
    network,
    patches,
    projects,
    routing,
    secgroups,
    tokens,
    topology,
    trace,
    ucloud,
    vips,
    volumes,
    watch,
)
from yunhan.controller.scheduler import NoHost
from yunhan.controller.vips import Damping
from yunhan.errors import YunhanError
from yunhan.functions.metering import Meter, PriceTable
from yunhan.model import new_id
from yunhan.store import Store
from yunhan.store.apikeys import ApiKeys
from yunhan.store.flows import FlowRecords, Retention
from yunhan.store.functions import FunctionRows
from yunhan.store.patches import PatchRows
from yunhan.store.traffic import TrafficSamples

log = logging.getLogger("yunhan.api")


def bootstrap(store: Store) -> str:
    """Ensure the admin project exists; returns its id. Writes only on first start."""
    with store.read() as r:
        existing = r.by_name("project", "", ADMIN_PROJECT)
    if existing is not None:
        return existing.id
    with store.transaction() as tx:
        existing = tx.by_name("project", "", ADMIN_PROJECT)
        if existing is not None:
            return existing.id
        return tx.create("project", new_id("project"), "", ADMIN_PROJECT, {}).id


def _error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "details": details or {}}},
        headers=headers,
    )


def _problem(err: Any) -> str:
    """One validation error of pydantic as a phrase naming the field and the input."""
    loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
    kind = err.get("type")
    if kind == "extra_forbidden":
        # Only PATCH bodies forbid extra fields: name what cannot change and why.
        return (
            f"{loc} cannot be changed by PATCH (only the fields of its body schema can: "
            "labels everywhere, spec.cidrs of a VPC; docs/api.md)"
        )
    if kind == "string_pattern_mismatch":
        pattern = (err.get("ctx") or {}).get("pattern")
        return f"{loc}: {err.get('input')!r} does not match {pattern}"
    return f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
}


def _allowed(req: Request) -> str:
    """The methods /openapi.json declares for this path (Starlette's 405 names only those
    of the first route that matched it, and one path may have several routes), with HEAD
    wherever GET is (Starlette answers it). A concrete path is matched before a templated
    one (OpenAPI's rule): /v1/flow-logs/records is not /v1/flow-logs/{ref}."""
    methods: set[str] = set()
    best = -1
    for template, ops in req.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, req.url.path):
            literal = sum(1 for part in template.split("/") if not part.startswith("{"))
            if literal > best:
                best, methods = literal, set()
            if literal == best:
                methods |= {m.upper() for m in ops}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(YunhanError)
    async def _yunhan(req: Request, exc: YunhanError) -> JSONResponse:
        if isinstance(exc, NoHost):
            _note_refusal(req, exc)
        return _error(exc.http_status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        # Requests that do not match the schema: 400 (docs/api.md, "Errors").
        parts = [_problem(err) for err in exc.errors()]
        message = "invalid request: " + "; ".join(parts)
        return _error(400, "bad_request", message, {"errors": parts})

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "invalid" if exc.status_code < 500 else "internal")
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = (
                f"{message}: no endpoint {req.method} {req.url.path} "
                "(the endpoints are listed in /openapi.json)"
            )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(req)  # the methods the path has
        return _error(exc.status_code, code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _internal(req: Request, exc: Exception) -> JSONResponse:
        # The exception's text can hold SQL and its parameters: it goes to the log only.
        log.exception("internal error in %s %s", req.method, req.url.path, exc_info=exc)
        return _error(
            500,
            "internal",
            f"internal error ({type(exc).__name__}); the server log has the details",
        )


def _note_refusal(req: Request, exc: NoHost) -> None:
    st: AppState = req.app.state.yunhan
    who = getattr(req.state, CALLER, None)
    if who is None:
        return
    with st.store.read() as r:
        zone = r.by_name("zone", st.admin_project_id, exc.zone_name)
    st.journal.notice(
        who.project.id,
        zone.id if zone is not None else exc.zone_name,
        SCHEDULING_REFUSED,
        f"{req.method} {req.url.path} refused: {exc.message}",
    )


def create_app(
    store: Store,
    *,
    admin_token: str | None = None,
    admin_token_hash: str | None = None,
    clock: Callable[[], float] = time.time,
    max_long_poll: float = MAX_LONG_POLL,
    fleet: Fleet | None = None,
    public_pools: Sequence[str] = (),
    flow_retention: Retention | None = None,
    vip_damping: Damping | None = None,
    prices: PriceTable | None = None,
) -> FastAPI:
    """The API over `store`. `admin_token` (or only its sha256, `admin_token_hash`, so that
    the token itself need not be on the server's disk) grants the admin project; it is
    never stored. `public_pools`: the CIDRs public addresses are allocated from.
    `flow_retention`: how long and how many flow log records are kept (docs/flowlogs.md).
    `prices`: what function usage costs (default: Lambda's). The app's `meter` is not
    started here: the server starts it and stops it (a final flush) on shutdown."""
    if (admin_token is None) == (admin_token_hash is None):
        raise ValueError("give create_app one of admin_token and admin_token_hash")
    admin_hash = token_hash(admin_token) if admin_token is not None else str(admin_token_hash)
    fleet = fleet or Fleet(store, clock)
    admin_project_id = bootstrap(store)
    app = FastAPI(
        title="Yunhan API",
        version="1",
        description="Yunhan control plane (docs/api.md)",
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(reject_unknown_query)],
    )
    fn_rows = FunctionRows(store.engine)
    app.state.yunhan = AppState(
        store=store,
        admin_hash=admin_hash,
        admin_project_id=admin_project_id,
        clock=clock,
        fleet=fleet,
        journal=Journal(store, fleet, clock, admin_project_id),
        flows=FlowRecords(store.engine, clock, flow_retention),
        traffic=TrafficSamples(store.engine, clock),
        api_keys=ApiKeys(store.engine, clock),
        patches=PatchRows(store.engine),
        function_rows=fn_rows,
        meter=Meter(fn_rows),
        prices=prices or PriceTable(),
        max_long_poll=max_long_poll,
        public_pools=list(public_pools),
        vip_damping=vip_damping or Damping(),
    )
    loads = app.state.yunhan.loads
    store.subscribe(loads.apply, load=loads.load)
    _install_error_handlers(app)
    app.add_middleware(AuditMiddleware)
    modules = (projects, tokens, audit, events, infra, network, routing, natgw, hybrid,
               hybridstats, secgroups, acls, flowlogs, instances, vips, volumes, patches,
               functions, invoke, ai, agent, watch, apikeys, ucloud)  # fmt: skip
    for module in modules:
        app.include_router(module.router)
    app.include_router(metrics.router)
    app.include_router(trace.router)
    app.include_router(topology.router)
    app.include_router(console.router)
    _exact_openapi(app)
    return app


def _exact_openapi(app: FastAPI) -> None:
    """/openapi.json as the server behaves: bearer auth on every operation, and no
    FastAPI default 422 "HTTPValidationError" (requests that break the schema get our 400
    error body, declared on each operation by `conventions.errors`)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path in doc.get("paths", {}).values():
            for op in path.values():
                responses = op.get("responses", {})
                r422 = responses.get("422", {})
                ref = str(r422.get("content", {}).get("application/json", {}).get("schema"))
                if "HTTPValidationError" in ref:
                    del responses["422"]
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        doc.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "a project's token (yh_…) or the admin token",
            }
        }
        doc["security"] = [{"bearer": []}]
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
