"""The function gateway's calls, answered without the web framework's per-request cost.

A function is called thousands of times a second where it is deployed once: each call
through the full app pays routing, dependency solving, the audit middleware and a hop
through the framework's small thread pool (which also caps how many calls may wait on
their workers at once). `GatewayFastPath` wraps the app like `fastpath.AgentFastPath` and
answers `POST /fn/<project>/<name>` with a JSON body itself, with the same lookups as the
route (`auth.authenticate`, `views.resolve`) and the same answer (`routes.invoke`), on a
pool of its own. Anything else (another path, a query, a body that is not JSON, a refused
token, an unknown function) goes to the app untouched, so its errors and its audit
records of refusals stay the app's.
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

from starlette.types import ASGIApp, Receive, Scope, Send

from yunhan.api.auth import authenticate
from yunhan.api.deps import AppState
from yunhan.api.fastpath import _read_body, _replayer, _respond, authorization
from yunhan.api.journal import request_id
from yunhan.api.routes.invoke import answer, gateway_project
from yunhan.api.views import resolve
from yunhan.errors import YunhanError
from yunhan.store import Resource

_PATH = re.compile(r"^/fn/([A-Za-z0-9_-]{1,80})/([a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
CALLS_AT_ONCE = 256  # calls that may wait on their workers together (held ones included)


class GatewayFastPath:
    """ASGI wrapper: run valid gateway calls directly; pass the rest on."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.st = state
        self.pool = ThreadPoolExecutor(CALLS_AT_ONCE, thread_name_prefix="fn-gateway")
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = _PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if (
            m is None
            or scope["method"] != "POST"
            or scope.get("query_string")
            or self.st.runner is None
        ):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        replay = _replayer(body, receive, more=not complete)
        fn = self._function(scope, m.group(1), m.group(2)) if complete else None
        try:
            event = json.loads(body) if body.strip() else None
        except ValueError:
            fn = None
        if fn is None:
            await self.app(scope, replay, send)
            return
        self.served += 1
        runner = self.st.runner
        rid = request_id(scope)
        loop = asyncio.get_running_loop()
        try:
            res = await loop.run_in_executor(self.pool, runner.invoke, fn, event, rid)
        except YunhanError as exc:
            err = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
            await _respond(scope, send, exc.http_status, _json(err), {})
            return
        status, content, headers = answer(res)
        await _respond(scope, send, status, _json(content), headers)

    def _function(self, scope: Scope, project: str, name: str) -> Resource | None:
        """The function if the caller may call it (its own project's, or the admin);
        None for anything the app should answer itself."""
        header = authorization(scope)
        st = self.st
        try:
            with st.store.read() as r:
                c = authenticate(r, header, st.admin_hash, st.admin_project_id, st.clock())
                if c.kind in ("host", "bootstrap"):
                    return None
                return resolve(r, "function", gateway_project(r, c, project), name)
        except YunhanError:
            return None

    def close(self) -> None:
        """End the pool's threads (an app wrapped for a while, as the tests do)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def _json(content: object) -> bytes:
    """As the app's JSONResponse writes it."""
    return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
