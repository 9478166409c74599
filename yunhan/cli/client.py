"""A small HTTP client for the Yunhan API (docs/api.md), for the CLI.

It turns the API's error shape {"error": {"code", "message", "details"}} into our own
exception tree (yunhan.errors), so that the CLI prints one line a person can act on and
exits 1, and turns "nothing listens there" into a hint instead of a traceback. The
transport is injectable (httpx.MockTransport in unit tests).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx

from yunhan.errors import (
    Conflict,
    Forbidden,
    NotFound,
    TimedOut,
    Unauthorized,
    ValidationError,
    YunhanError,
)

_BY_CODE: dict[str, type[YunhanError]] = {
    "invalid": ValidationError,
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
    422: ValidationError,
    504: TimedOut,
}

# Tests replace this with an httpx.MockTransport; None means a real network transport.
default_transport: httpx.BaseTransport | None = None


def error_from_response(r: httpx.Response) -> YunhanError:
    """The exception an error response stands for, with the API's own message."""
    try:
        body = r.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        cls = _BY_CODE.get(str(err.get("code")), _BY_STATUS.get(r.status_code, YunhanError))
        details = err.get("details")
        return cls(str(err["message"]), **(details if isinstance(details, dict) else {}))
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        # FastAPI's own validation answer (a malformed body), should the server let one out.
        msgs = [
            f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in body["detail"]
        ]
        return ValidationError("; ".join(msgs))
    cls = _BY_STATUS.get(r.status_code, YunhanError)
    text = r.text.strip()[:200] or r.reason_phrase
    return cls(f"{r.request.method} {r.request.url.path} failed: HTTP {r.status_code} {text}")


class Client:
    """The API, one method per HTTP verb; every non-2xx answer raises a YunhanError."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._http = httpx.Client(
            base_url=self.endpoint,
            headers={"Authorization": f"Bearer {token}"},
            transport=transport or default_transport,
            timeout=httpx.Timeout(timeout, read=timeout + 30.0),
        )

    def close(self) -> None:
        self._http.close()

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
    ) -> Any:
        try:
            r = self._http.request(method, path, json=json, params=params)
        except httpx.ConnectError as exc:
            raise YunhanError(
                f"cannot reach the Yunhan API at {self.endpoint} ({exc}); is a region up? "
                "(`yunhan status`, `yunhan up --detach`)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise TimedOut(f"the Yunhan API at {self.endpoint} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise YunhanError(f"talking to {self.endpoint} failed: {exc}") from exc
        if r.status_code >= 400:
            raise error_from_response(r)
        if r.status_code == 204 or not r.content:
            return None
        try:
            return r.json()
        except ValueError as exc:
            raise YunhanError(
                f"{self.endpoint} answered {method} {path} with something that is not JSON "
                f"(HTTP {r.status_code}, {r.headers.get('content-type') or 'no content type'}); "
                "is it the Yunhan API? (--endpoint, $YUNHAN_ENDPOINT)"
            ) from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params or None)

    def wait_converged(self, revision: int, timeout: float) -> None:
        """Return once every host affected by write `revision` has applied it.

        Long-polls `GET /v1/converged` in slices so that a slow answer never outlives the
        overall deadline; raises TimedOut naming the hosts still pending.
        """
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            asked = time.monotonic()
            ans = self.get("/v1/converged", revision=revision, timeout=round(min(left, 20.0), 1))
            if ans.get("converged"):
                failed = [str(h) for h in ans.get("failed") or []]
                if failed:
                    # Applied everywhere, but these hosts report errors: say so, without
                    # failing a write that may not be the cause.
                    sys.stderr.write(
                        f"warning: revision {revision} is applied, but host(s) "
                        f"{', '.join(failed)} report errors (`yunhan host list`)\n"
                    )
                return
            pending = [str(h) for h in ans.get("pending") or []]
            if time.monotonic() - asked < 0.1:
                time.sleep(0.1)  # a server that does not long-poll: do not spin
        hosts = ", ".join(pending) if pending else "the controller"
        raise TimedOut(
            f"revision {revision} not applied within {timeout:g}s; still pending: {hosts} "
            "(`yunhan host list` shows agent health)",
            revision=revision,
            pending=pending,
        )
