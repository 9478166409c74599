"""A small HTTP client for the Yunhan API (docs/api.md), for the CLI.

It turns the API's error shape {"error": {"code", "message", "details"}} into our own
exception tree (yunhan.errors), so that the CLI prints one line a person can act on and
exits 1, and turns "nothing listens there" into a hint instead of a traceback.

The wire sits behind one small interface, `Transport` (STYLE §3): `HttpTransport` speaks
HTTP/1.1 over http.client (importing httpx alone costs the CLI ~0.15-0.3 s of CPU, more
than a whole `yunhan vpc list` may take); tests pass a transport that calls the real ASGI
app in process.
"""

from __future__ import annotations

import json as jsonlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlencode, urlsplit

from yunhan.errors import (
    Conflict,
    Forbidden,
    NotFound,
    TimedOut,
    Unauthorized,
    Unreachable,
    ValidationError,
    YunhanError,
)

_BY_CODE: dict[str, type[YunhanError]] = {
    "invalid": ValidationError,
    "bad_request": ValidationError,
    "idempotency_key_reused": ValidationError,
    "precondition_failed": Conflict,
    "not_found": NotFound,
    "conflict": Conflict,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "timeout": TimedOut,
}
_BY_STATUS: dict[int, type[YunhanError]] = {
    400: ValidationError,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: Conflict,
    422: ValidationError,
    504: TimedOut,
}


class Reply(NamedTuple):
    """An HTTP answer: status, headers (lower-case names) and the body."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = {}  # never mutated
    reason: str = ""


class Transport(Protocol):
    """Sends one request to `base` + `target` (path and query). Raises ConnectionError
    when nothing answers there and TimeoutError when the answer takes longer than
    `timeout` seconds."""

    def __call__(
        self,
        base: str,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Reply: ...

    def close(self) -> None: ...


class HttpTransport:
    """HTTP/1.1 over http.client, one kept-alive connection per endpoint."""

    def __init__(self) -> None:
        self._conns: dict[str, Any] = {}

    def __call__(
        self,
        base: str,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Reply:
        import http.client

        url = urlsplit(base)
        for attempt in (1, 2):  # once more on a fresh connection if a kept one went stale
            conn = self._conns.get(base)
            fresh = conn is None
            if conn is None:
                cls = (
                    http.client.HTTPSConnection
                    if url.scheme == "https"
                    else http.client.HTTPConnection
                )
                conn = cls(url.hostname or "localhost", url.port, timeout=timeout)
                self._conns[base] = conn
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(method, url.path.rstrip("/") + target, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
            except TimeoutError:
                self._drop(base)
                raise
            except (ConnectionRefusedError, OSError, http.client.HTTPException) as exc:
                self._drop(base)
                if fresh or attempt == 2 or isinstance(exc, ConnectionRefusedError):
                    raise ConnectionError(str(exc) or type(exc).__name__) from exc
                continue
            return Reply(r.status, data, {k.lower(): v for k, v in r.getheaders()}, r.reason)
        raise AssertionError("unreachable")

    def _drop(self, base: str) -> None:
        conn = self._conns.pop(base, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for base in list(self._conns):
            self._drop(base)


def error_from_reply(method: str, path: str, r: Reply) -> YunhanError:
    """The exception an error answer stands for, with the API's own message."""
    try:
        body = jsonlib.loads(r.body) if r.body else None
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        cls = _BY_CODE.get(str(err.get("code")), _BY_STATUS.get(r.status, YunhanError))
        details = err.get("details")
        return cls(str(err["message"]), **(details if isinstance(details, dict) else {}))
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        # FastAPI's own validation answer (a malformed body), should the server let one out.
        msgs = [
            f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in body["detail"]
        ]
        return ValidationError("; ".join(msgs))
    cls = _BY_STATUS.get(r.status, YunhanError)
    text = r.body.decode(errors="replace").strip()[:200] or r.reason
    return cls(f"{method} {path} failed: HTTP {r.status} {text}")


class Client:
    """The API, one method per HTTP verb; every non-2xx answer raises a YunhanError."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        transport: Transport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self._transport: Transport = transport or HttpTransport()
        self._timeout = timeout

    @property
    def token(self) -> str:
        """The bearer token (a lab helper acting for the caller, such as a dual-write
        consumer, is handed it)."""
        return self._token

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        target = path + ("?" + urlencode(params, doseq=True) if params else "")
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        try:
            r = self._transport(
                self.endpoint, method, target, headers, body, timeout or self._timeout
            )
        except ConnectionError as exc:
            raise Unreachable(
                f"cannot reach the Yunhan API at {self.endpoint} ({exc}); is a region up? "
                "(`yunhan status`, `yunhan up --detach`)"
            ) from exc
        except TimeoutError as exc:
            raise TimedOut(f"the Yunhan API at {self.endpoint} did not answer in time") from exc
        if r.status >= 400:
            raise error_from_reply(method, path, r)
        if r.status == 204 or not r.body:
            return None
        try:
            return jsonlib.loads(r.body)
        except ValueError as exc:
            raise YunhanError(
                f"{self.endpoint} answered {method} {path} with something that is not JSON "
                f"(HTTP {r.status}, {r.headers.get('content-type') or 'no content type'}); "
                "is it the Yunhan API? (--endpoint, $YUNHAN_ENDPOINT)"
            ) from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def items(self, path: str, **params: Any) -> list[Any]:
        """Every item of a collection: a bare array, or pages {"items", "next"} whose
        opaque `next` cursor is followed until it is null."""
        ans = self.get(path, **params)
        if isinstance(ans, list):
            return ans
        items = list(ans.get("items") or [])
        while ans.get("next"):
            ans = self.get(path, **{**params, "cursor": ans["next"]})
            items.extend(ans.get("items") or [])
        return items

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params or None)

    def wait_converged(
        self,
        revision: int,
        timeout: float,
        *,
        on_pending: Callable[[list[str]], None] | None = None,
        poll: float = 20.0,
    ) -> list[str]:
        """Return once every host affected by write `revision` has applied it, with the
        hosts that applied it but report errors.

        Long-polls `GET /v1/converged` in slices of at most `poll` seconds so that a slow
        answer never outlives the overall deadline, telling `on_pending` which hosts are
        still to apply it after each answer; raises TimedOut naming them.
        """
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            asked = time.monotonic()
            slice_ = round(min(left, poll), 1)
            ans = self.request(
                "GET",
                "/v1/converged",
                params={"revision": revision, "timeout": slice_},
                timeout=slice_ + 30.0,
            )
            if ans.get("converged"):
                return [str(h) for h in ans.get("failed") or []]
            pending = [str(h) for h in ans.get("pending") or []]
            if on_pending is not None:
                on_pending(pending)
            if time.monotonic() - asked < 0.1:
                time.sleep(0.1)  # a server that does not long-poll: do not spin
        hosts = ", ".join(pending) if pending else "the controller"
        raise TimedOut(
            f"revision {revision} not applied within {timeout:g}s; still pending: {hosts} "
            "(`yunhan host list` shows agent health)",
            revision=revision,
            pending=pending,
        )
