"""The agents' two hot requests, answered without the web framework's per-request cost.

At a thousand hosts almost every request is an agent's document poll or status report,
and a profile of the server shows most of each one spent in routing, dependency solving,
validation wrappers and middleware, not in what it does. `AgentFastPath` wraps the
FastAPI app and answers exactly those two requests in their ordinary, valid form itself,
with the same implementation as the routes (`routes.agent.desired_answer` and
`status_report`) and the same authentication (`auth.authenticate`). Anything else — another
path, an unknown or malformed parameter, a body that does not validate, a token that is
refused, a host not registered — goes to the app untouched, so errors, audit records of
refusals and the OpenAPI contract are the app's, and stay one.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError as PydanticError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from yunhan.api.auth import Caller, authenticate
from yunhan.api.deps import MAX_REVISION, AppState
from yunhan.api.journal import REQUEST_ID, request_id
from yunhan.api.routes.agent import STORE_HEADER, desired_answer, status_report
from yunhan.errors import YunhanError
from yunhan.model.schemas import HostStatusReport

_PATH = re.compile(r"^/v1/agent/hosts/([a-z0-9]([-a-z0-9]*[a-z0-9])?)/(desired|status)$")
_MAX_BODY = 1 << 20


class AgentFastPath:
    """ASGI wrapper: answer valid agent polls and reports directly; pass the rest on."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.st = state
        self.served = 0  # requests answered here (tests and metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = _PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if m is None:
            await self.app(scope, receive, send)
            return
        name, what = m.group(1), m.group(3)
        if what == "desired" and scope["method"] == "GET":
            await self._desired(name, scope, receive, send)
        elif what == "status" and scope["method"] == "POST":
            await self._status(name, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _caller(self, scope: Scope, name: str) -> Caller | None:
        """The caller if it may use host `name`'s agent endpoints and the host is
        registered; None for anything the app should answer (and audit) itself."""
        header = authorization(scope)
        st = self.st
        try:
            with st.store.read() as r:
                c = authenticate(r, header, st.admin_hash, st.admin_project_id, st.clock())
                if r.by_name("host", st.admin_project_id, name) is None:
                    return None
        except YunhanError:
            return None
        if c.admin or (c.kind == "host" and c.host == name):
            return c
        return None

    async def _desired(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        params = _query(scope)
        if params is None or not set(params) <= {"after", "timeout", "digest"}:
            await self.app(scope, receive, send)
            return
        try:
            after = int(params.get("after", "0"))
            timeout = float(params.get("timeout", "0"))
        except ValueError:
            after, timeout = -1, math.nan
        digest = params.get("digest")
        if (
            not 0 <= after <= MAX_REVISION
            or not math.isfinite(timeout)
            or (digest is not None and len(digest) > 64)
            or self._caller(scope, name) is None
        ):
            await self.app(scope, receive, send)
            return
        self.served += 1
        status, body = await desired_answer(self.st, name, after, timeout, digest)
        await _respond(scope, send, status, body, {STORE_HEADER: self.st.admin_project_id})

    async def _status(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        body, complete = await _read_body(receive)
        replay = _replayer(body, receive, more=not complete)
        if not complete or scope.get("query_string") or self._caller(scope, name) is None:
            await self.app(scope, replay, send)
            return
        try:
            report = HostStatusReport.model_validate_json(body)
        except PydanticError:
            await self.app(scope, replay, send)
            return
        self.served += 1
        await status_report(self.st, name, report)
        await _respond(scope, send, 204, b"", {})


def authorization(scope: Scope) -> str | None:
    """The request's Authorization header, as `auth.authenticate` takes it."""
    header = None
    for k, v in scope.get("headers", ()):
        if k == b"authorization":
            header = v.decode("latin-1")
    return header


def _query(scope: Scope) -> dict[str, str] | None:
    """The query as a dict; None when a name repeats (the app says what is wrong)."""
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    out = dict(pairs)
    return out if len(out) == len(pairs) else None


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body (up to _MAX_BODY); `complete` is False when it was cut there."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > _MAX_BODY:
            return b"".join(chunks), False
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replayer(body: bytes, receive: Receive, *, more: bool) -> Receive:
    """A `receive` that gives the body already read, then whatever follows."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


async def _respond(
    scope: Scope, send: Send, status: int, body: bytes, headers: dict[str, str]
) -> None:
    raw: list[tuple[bytes, bytes]] = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw.append((REQUEST_ID.lower().encode(), request_id(scope).encode()))
    if body:
        raw.append((b"content-type", b"application/json"))
    raw.append((b"content-length", str(len(body)).encode()))
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": raw}
    await send(start)
    await send({"type": "http.response.body", "body": body})
