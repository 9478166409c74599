"""What the API writes down besides resources: the audit trail and user-facing notices.

Neither may cost a database transaction per request: both are queued in memory here and
written by `flush` in one store transaction (the server calls `tick` every
FLUSH_INTERVAL seconds; reads of /v1/audit and /v1/events flush first, so a client reads
its own writes). The audit chain itself is computed by the store at commit, under the
database's write lock (yunhan.store.audit), so replicas append to one chain.

`AuditMiddleware` is a plain ASGI middleware: it gives every request an id (the incoming
X-Request-Id if it is sane, else a new one), returns it on every response, and records
every accepted write and every refused authorisation (401/403). Agents' status reports are
bookkeeping (a heartbeat every few seconds per host), not writes worth auditing.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
from collections.abc import Callable
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from yunhan.api.fleet import Fleet
from yunhan.controller.scheduler import host_healthy
from yunhan.store import AuditEntry, Notice, Store

log = logging.getLogger("yunhan.journal")

FLUSH_INTERVAL = 0.5
MAX_PENDING = 100_000  # records kept while the database cannot be written; oldest dropped
REQUEST_ID = "X-Request-Id"
# Attributes of `request.state` (scope["state"]) set by the auth dependencies (api.deps).
CALLER = "yunhan_caller"
REQUEST = "yunhan_request_id"  # the request's id, as returned in X-Request-Id
REFUSED = "yunhan_refused_token"
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Agents' reports and flow records: every few seconds from every host, not changes anyone
# audits (an audit record each would cost more than the report).
_BOOKKEEPING = re.compile(r"^/v1/agent/hosts/[^/]+/(status|flows|traffic)$")
# Function invocations are the data plane (a function called thousands of times a second),
# metered in usage records; deploying and changing functions is audited like any write.
_DATA_PLANE = re.compile(r"^(/fn/.*|/v1/functions/[^/]+/invoke|/v1/ai/[^/]+)$")
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_MAX_CAPTURE = 1 << 20

# Notice reasons (docs/credentials.md, events).
HOST_NOT_HEARTBEATING = "HostNotHeartbeating"
INSTANCE_FAILED = "InstanceFailed"
APPLY_ERROR = "ApplyError"
SCHEDULING_REFUSED = "SchedulingRefused"
AGENT_RESTARTED = "AgentRestarted"
SERVER_RESTARTED = "ServerRestarted"


class Journal:
    """Pending audit records and notices of one API process (thread-safe)."""

    def __init__(
        self, store: Store, fleet: Fleet, clock: Callable[[], float], admin_project_id: str
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.clock = clock
        self.admin_project_id = admin_project_id
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._audit: list[AuditEntry] = []
        self._notices: list[Notice] = []
        self._healthy: dict[str, bool] = {}

    def audit(self, entry: AuditEntry) -> None:
        with self._lock:
            self._audit.append(entry)
            if len(self._audit) > MAX_PENDING:
                del self._audit[: len(self._audit) - MAX_PENDING]
                log.error("audit records dropped: the database has not been writable")

    def notice(self, project: str, obj: str, reason: str, message: str) -> None:
        with self._lock:
            self._notices.append(Notice(project, obj, reason, message, self.clock()))
            if len(self._notices) > MAX_PENDING:
                del self._notices[: len(self._notices) - MAX_PENDING]

    def check_leases(self) -> None:
        """Notice hosts whose lease has just expired (no heartbeat for HEALTHY_WITHIN s)."""
        now = self.clock()
        for name, lease in list(self.fleet.leases.items()):
            healthy = host_healthy(lease, now)
            was = self._healthy.get(name, True)
            self._healthy[name] = healthy
            if was and not healthy:
                with self.store.read() as r:
                    host = r.by_name("host", self.admin_project_id, name)
                if host is None:
                    continue
                self.notice(
                    self.admin_project_id,
                    host.id,
                    HOST_NOT_HEARTBEATING,
                    f"host {name} has sent no heartbeat for {now - lease.heartbeat_at:.0f} s "
                    "(its agent's lease expired): its instances keep running, but changes "
                    "do not reach it and new instances go to other hosts of its zone",
                )

    def flush(self) -> int:
        """Write what is pending in one store transaction; returns how many records."""
        with self._flush_lock:  # one at a time: records reach the chain in arrival order
            with self._lock:
                audit, self._audit = self._audit, []
                notices, self._notices = self._notices, []
            if not audit and not notices:
                return 0
            try:
                with self.store.transaction() as tx:
                    tx.add_audit(audit)
                    tx.add_notices(notices)
            except BaseException:
                with self._lock:  # keep them, in order, for the next try
                    self._audit[:0] = audit
                    self._notices[:0] = notices
                raise
            return len(audit) + len(notices)

    def tick(self) -> None:
        self.check_leases()
        self.flush()


def _request_id(scope: Scope) -> str:
    for k, v in scope.get("headers", ()):
        if k == b"x-request-id":
            rid = bytes(v).decode("latin-1")
            if _SANE_ID.fullmatch(rid):
                return rid
            break
    return f"req-{secrets.token_hex(8)}"


def _resource(body: bytes, path_params: dict[str, Any]) -> str | None:
    if body:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            for obj in (data, data.get("project")):
                if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                    return str(obj["id"])[:64]
    for v in path_params.values():
        return str(v)[:64]
    return None


def request_id(scope: Scope) -> str:
    """The request's id: a sane X-Request-Id it came with, else a new one; the same on
    every call for one request (kept in its scope's state), so that the id a function
    ran under is the one its answer carries."""
    state = scope.setdefault("state", {})
    rid = state.get(REQUEST)
    if not isinstance(rid, str):
        rid = state[REQUEST] = _request_id(scope)
    return rid


class AuditMiddleware:
    """Request ids on every response; audit records of accepted writes and refusals."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        state = scope.setdefault("state", {})
        state[REQUEST] = rid
        method = scope["method"]
        status = 0
        chunks: list[bytes] = []
        size = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID, rid)
            elif message["type"] == "http.response.body" and method in WRITES and status < 300:
                body = message.get("body", b"")
                if size + len(body) <= _MAX_CAPTURE:
                    chunks.append(body)
                    size += len(body)
            await send(message)

        await self.app(scope, receive, send_with_id)
        path = scope["path"]
        if status in (401, 403):
            result = "unauthorized" if status == 401 else "forbidden"
        elif (
            method in WRITES
            and 200 <= status < 400
            and not _BOOKKEEPING.match(path)
            and not _DATA_PLANE.match(path)
        ):
            result = "accepted"
        else:
            return
        yunhan = getattr(scope["app"].state, "yunhan", None)
        if yunhan is None:
            return
        who = state.get(CALLER)
        query = scope.get("query_string", b"").decode("latin-1")
        yunhan.journal.audit(
            AuditEntry(
                at=yunhan.clock(),
                project=who.project.id if who is not None else None,
                token_id=who.token_id if who is not None else state.get(REFUSED),
                request_id=rid,
                method=method,
                path=f"{path}?{query}"[:2000] if query else path[:2000],
                resource=_resource(b"".join(chunks), scope.get("path_params") or {}),
                result=result,
                status=status,
            )
        )
