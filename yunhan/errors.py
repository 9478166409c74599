"""One exception tree for all of Yunhan.

    YunhanError                 base; carries a message a person can act on
    ├── ValidationError         refused input; nothing was changed        (HTTP 422)
    │   ├── BadRequest          the request does not match the schema     (HTTP 400)
    │   └── IdempotencyKeyReused  a key already used for another request  (HTTP 422)
    ├── NotFound                no such resource in this project          (HTTP 404)
    ├── Conflict                name taken, address in use, still in use  (HTTP 409)
    │   └── Fenced              a deposed controller's write, refused       (HTTP 409)
    ├── PreconditionFailed      If-Match names a revision that is not current (HTTP 412)
    ├── Unauthorized            no or bad token                           (HTTP 401)
    ├── Forbidden               token valid, action not allowed           (HTTP 403)
    ├── TimedOut                a wait did not converge in time           (HTTP 504)
    ├── DriverError             the kernel (netlink, nftables) refused; keeps errno
    ├── HotpatchError           the loader refused or failed; target left as it was
    ├── FunctionRuntimeError    the function zygote is gone or a worker would not start
    ├── WorkerGone              the function worker asked for has exited  (HTTP 409)
    ├── PgServerError           a throwaway PostgreSQL cluster would not start or stop
    └── VolumeError             the storage process of a volume would not build, start or stop

The API turns each into one JSON shape: {"error": {"code", "message", "details"}}.
Drivers translate errno and library errors into these with `raise X(...) from exc`.
"""

from __future__ import annotations

from typing import Any


class YunhanError(Exception):
    code = "internal"
    http_status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class ValidationError(YunhanError):
    """Well-formed input that a rule refuses (a CIDR outside the private ranges, an address
    in use by nobody but reserved): 422, as the schema cannot state these rules."""

    code = "invalid"
    http_status = 422


class BadRequest(ValidationError):
    """The request does not match its operation's schema (body, query, header)."""

    code = "bad_request"
    http_status = 400


class IdempotencyKeyReused(ValidationError):
    code = "idempotency_key_reused"
    http_status = 422


class NotFound(YunhanError):
    code = "not_found"
    http_status = 404


class Conflict(YunhanError):
    code = "conflict"
    http_status = 409


class Fenced(Conflict):
    """The write carried a leader epoch that is no longer current (store/leader.py): another
    controller has taken over since, and this one must stop writing."""

    code = "fenced"


class PreconditionFailed(YunhanError):
    code = "precondition_failed"
    http_status = 412


class Unauthorized(YunhanError):
    code = "unauthorized"
    http_status = 401


class Forbidden(YunhanError):
    code = "forbidden"
    http_status = 403


class TimedOut(YunhanError):
    code = "timeout"
    http_status = 504


class Unreachable(YunhanError):
    """The API could not be reached at all (connection refused, no route)."""

    code = "unreachable"
    http_status = 503


class DriverError(YunhanError):
    code = "driver"
    http_status = 500

    def __init__(self, message: str, *, errno: int | None = None, **details: Any) -> None:
        super().__init__(message, errno=errno, **details)
        self.errno = errno


class HotpatchError(YunhanError):
    code = "hotpatch"
    http_status = 500


class FunctionRuntimeError(YunhanError):
    code = "function_runtime"
    http_status = 500


class WorkerGone(YunhanError):
    """The function worker asked for has exited (timeout, OOM, stopped): spawn another."""

    code = "worker_gone"
    http_status = 409


class Throttled(YunhanError):
    """Too many requests held for a function's workers already: try again later."""

    code = "throttled"
    http_status = 429


class PgServerError(YunhanError):
    code = "pgserver"
    http_status = 500


class VolumeError(YunhanError):
    """The storage process of a volume (yunhan-cdpd) would not build, start or stop; the
    details keep the volume name, the exit code and the end of its log."""

    code = "volume"
    http_status = 500
