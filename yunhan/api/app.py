"""The FastAPI application: the error shape and the routers of docs/api.md (auth: `deps`).

`create_app(store, admin_token=...)` builds an app around an open store; it does not run
the controller (tests drive `Controller.reconcile_once` themselves, `serve` runs the loop).
Every endpoint but the OpenAPI document needs a token; the OpenAPI document describes the
API and holds no tenant data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from yunhan.api.auth import ADMIN_PROJECT, token_hash
from yunhan.api.deps import MAX_LONG_POLL, AppState
from yunhan.api.fleet import Fleet
from yunhan.api.routes import agent, infra, instances, metrics, network, projects, watch
from yunhan.errors import YunhanError
from yunhan.model import new_id
from yunhan.store import Store

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
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "details": details or {}}},
    )


_HTTP_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(YunhanError)
    async def _yunhan(_req: Request, exc: YunhanError) -> JSONResponse:
        return _error(exc.http_status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        message = "invalid request: " + "; ".join(parts)
        return _error(400, "invalid", message, {"errors": parts})

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "invalid" if exc.status_code < 500 else "internal")
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = (
                f"{message}: no endpoint {req.method} {req.url.path} "
                "(the endpoints are listed in /openapi.json)"
            )
        return _error(exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def _internal(req: Request, exc: Exception) -> JSONResponse:
        # The exception's text can hold SQL and its parameters: it goes to the log only.
        log.exception("internal error in %s %s", req.method, req.url.path, exc_info=exc)
        return _error(
            500,
            "internal",
            f"internal error ({type(exc).__name__}); the server log has the details",
        )


def create_app(
    store: Store,
    *,
    admin_token: str,
    clock: Callable[[], float] = time.time,
    max_long_poll: float = MAX_LONG_POLL,
    fleet: Fleet | None = None,
) -> FastAPI:
    """The API over `store`. `admin_token` grants the admin project; it is never stored."""
    app = FastAPI(
        title="Yunhan API",
        version="1",
        description="Yunhan control plane (docs/api.md)",
        docs_url=None,
        redoc_url=None,
    )
    app.state.yunhan = AppState(
        store=store,
        admin_hash=token_hash(admin_token),
        admin_project_id=bootstrap(store),
        clock=clock,
        fleet=fleet or Fleet(store, clock),
        max_long_poll=max_long_poll,
    )
    loads = app.state.yunhan.loads
    store.subscribe(loads.apply, load=loads.load)
    _install_error_handlers(app)
    for module in (projects, infra, network, instances, agent, watch, metrics):
        app.include_router(module.router)
    return app
