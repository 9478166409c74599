"""The conventions every endpoint shares (docs/api.md): lists and their cursors, label
selectors, If-Match, Idempotency-Key, merge patches, and the error answers each operation
declares. A leaf module: routers import it, it imports no router.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from pydantic import StringConstraints
from pydantic.json_schema import SkipJsonSchema

from yunhan.api.auth import Caller
from yunhan.api.models import ErrorBody
from yunhan.errors import BadRequest, IdempotencyKeyReused, PreconditionFailed, ValidationError
from yunhan.model.schemas import MAX_LABELS, SELECTOR_PATTERN, Patch
from yunhan.store import Answer, Resource, Tx

# An optional query parameter or header: absent, or a string (never `null`, which a query
# string or a header cannot carry).
Optional = SkipJsonSchema[None]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_WHY = {
    400: "the request does not match this operation's schema (body, query or header)",
    401: "no token, or a token that is not valid",
    403: "the token may not do this",
    404: "no such resource (or one of another project)",
    409: "conflicts with what exists (a name taken, a resource still in use)",
    412: "If-Match: the resource's revision is not the one given; nothing was written",
    422: "well formed, but refused by a rule the schema cannot state; nothing was written",
    429: "too many requests already waiting (a function's held requests); retry later",
    502: "the function failed: its error and traceback (the gateway)",
    503: "nothing can serve it now (no function host, the router not running)",
    504: "no answer in time (a function's timeout)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of an operation: the error answers it can give, besides 400 and
    401, which every operation with a token and parameters can give."""
    return {c: {"model": ErrorBody, "description": _WHY[c]} for c in sorted({400, 401, *codes})}


# -- unknown query parameters --------------------------------------------------------------


def reject_unknown_query(request: Request) -> None:
    """App-wide dependency: a query parameter the operation does not declare is a 400, so
    that a misspelt filter is never silently ignored (the list would look filtered)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise BadRequest(
            f"unknown query parameter(s) {', '.join(unknown)} (this operation takes: {allowed})",
            unknown=unknown,
        )


def _query_names(d: Dependant) -> set[str]:
    names = {p.alias for p in d.query_params}
    for sub in d.dependencies:
        names |= _query_names(sub)
    return names


# -- lists -----------------------------------------------------------------------------


def _encode_cursor(o: Resource) -> str:
    raw = json.dumps([o.name, o.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        name, id = json.loads(raw)
        if isinstance(name, str) and isinstance(id, str):
            return name, id
    except (binascii.Error, ValueError, TypeError):
        pass
    raise ValidationError(
        "the cursor is not one this API gave out; start again without `cursor`", cursor=cursor
    )


@dataclass(frozen=True)
class Page:
    """What every list takes: where to start, how many, and the label selector."""

    limit: int
    cursor: str | None
    selector: tuple[tuple[str, str], ...]


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"items per page (max {MAX_LIMIT})")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        Annotated[str, StringConstraints(max_length=2048)] | Optional,
        Query(description="the `next` of the previous page (opaque)"),
    ] = None,
    label: Annotated[
        list[Annotated[str, StringConstraints(pattern=SELECTOR_PATTERN)]],
        Query(
            description="`key=value`: only resources with this label (repeatable: all of them)",
        ),
    ] = [],  # noqa: B006 (FastAPI copies defaults)
) -> Page:
    selector = tuple(tuple(term.split("=", 1)) for term in label)
    return Page(limit, cursor, selector)  # type: ignore[arg-type]


PageDep = Annotated[Page, Depends(page_params)]


def paginate(
    objs: Iterable[Resource],
    page: Page,
    revision: int,
    view: Callable[[Resource], Any],
    keep: Callable[[Resource], bool] = lambda _o: True,
) -> dict[str, Any]:
    """One page of `objs` ordered by (name, id), after the cursor's position.

    The cursor is the last (name, id) returned, not an offset: names never change, so an
    object that exists throughout a walk is returned exactly once however many objects are
    created or deleted meanwhile (an object created behind the cursor is simply not seen).
    """
    after = _decode_cursor(page.cursor) if page.cursor else None
    ordered = sorted(objs, key=lambda o: (o.name, o.id))
    items: list[Resource] = []
    more = False
    for o in ordered:
        if after is not None and (o.name, o.id) <= after:
            continue
        if any(o.labels.get(k) != v for k, v in page.selector) or not keep(o):
            continue
        if len(items) == page.limit:
            more = True
            break
        items.append(o)
    return {
        "items": [view(o) for o in items],
        "next": _encode_cursor(items[-1]) if more else None,
        "revision": revision,
    }


# -- If-Match --------------------------------------------------------------------------

# An empty header is the same as none (RFC 9110 allows empty field values).
IF_MATCH_PATTERN = r'^(\*|(W/)?"?[0-9]{1,19}"?)?$'
IfMatch = Annotated[
    Annotated[str, StringConstraints(pattern=IF_MATCH_PATTERN)] | Optional,
    Header(
        alias="If-Match",
        description="the revision the change is meant for: 412 if the resource has moved on",
    ),
]


def check_if_match(res: Resource, if_match: str | None) -> None:
    """Refuse (412) a write meant for another revision of `res`. Called in the write
    transaction, before anything is written."""
    if if_match is None or if_match.strip() in ("", "*"):
        return
    digits = re.sub(r'^W/|"', "", if_match.strip())
    if not digits.isdigit():
        raise BadRequest(f"If-Match wants a revision (a number), not {if_match!r}")
    if int(digits) != res.revision:
        raise PreconditionFailed(
            f"{res.kind} {res.name} is at revision {res.revision}, not {int(digits)}: it "
            "changed since you read it; read it again and redo your change",
            revision=res.revision,
        )


# -- Idempotency-Key -------------------------------------------------------------------

KEY_PATTERN = r"^[\x21-\x7e]{0,255}$"  # visible ASCII; empty is the same as none
REPLAYED = "Idempotent-Replayed"


@dataclass(frozen=True)
class Idempotency:
    """A POST's Idempotency-Key (None: the POST has none) and its body's sha256."""

    key: str | None
    method: str
    path: str
    body_sha256: str
    now: float  # the API clock when the request came

    def replay(self, tx: Tx, c: Caller) -> JSONResponse | None:
        """The first answer to this key, when there is one (call first in the write
        transaction: it holds the database's write lock, so a concurrent retry waits for
        the first to commit and then finds its answer)."""
        if self.key is None:
            return None
        found = tx.answer(c.project.id, self.key, self.now)
        if found is None:
            return None
        if (found.method, found.path, found.body_sha256) != (
            self.method,
            self.path,
            self.body_sha256,
        ):
            raise IdempotencyKeyReused(
                f"Idempotency-Key {self.key!r} was used for another request "
                f"({found.method} {found.path} with another body) less than 24 h ago; "
                "use a new key for a new request",
                key=self.key,
            )
        return JSONResponse(
            json.loads(found.response), status_code=found.status, headers={REPLAYED: "true"}
        )

    def keep(self, tx: Tx, c: Caller, status: int, body: Any) -> Any:
        """Store `body` as the answer to this key with the transaction's writes; returns
        `body`."""
        if self.key is not None:
            tx.remember(
                Answer(
                    c.project.id,
                    self.key,
                    self.method,
                    self.path,
                    self.body_sha256,
                    status,
                    json.dumps(body, separators=(",", ":")),
                    self.now,
                )
            )
        return body


async def idempotency(
    request: Request,
    key: Annotated[
        Annotated[str, StringConstraints(pattern=KEY_PATTERN)] | Optional,
        Header(
            alias="Idempotency-Key",
            description="retry-safe POST: a retry with this key and the same body within 24 h "
            "gets the first answer without a second write; another body gets 422",
        ),
    ] = None,
) -> Idempotency:
    raw = await request.body()
    try:
        canonical = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = raw
    return Idempotency(
        key or None,
        request.method,
        request.url.path,
        hashlib.sha256(canonical).hexdigest(),
        request.app.state.yunhan.clock(),
    )


IdempotencyDep = Annotated[Idempotency, Depends(idempotency)]


# -- merge patch -----------------------------------------------------------------------

MERGE_PATCH = "application/merge-patch+json"


def patched_labels(res: Resource, body: Patch) -> dict[str, str]:
    """RFC 7396 on the labels: absent keeps them, null clears them all, a key set to null
    removes that label, others are set."""
    if "labels" not in body.model_fields_set:
        return res.labels
    if body.labels is None:
        return {}
    out = dict(res.labels)
    for k, v in body.labels.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    if len(out) > MAX_LABELS:
        raise ValidationError(
            f"{res.kind} {res.name} would have {len(out)} labels; at most {MAX_LABELS}",
            labels=len(out),
        )
    return out


def patch_body(model: type[Any]) -> dict[str, Any]:
    """`openapi_extra` of a PATCH: its body in both media types it accepts."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "content": {MERGE_PATCH: {"schema": ref}, "application/json": {"schema": ref}},
        }
    }
