"""`POST /ucloud`: the UCloud-compatible Action API (docs/ucloud-api.md).

Every answer is HTTP 200 with a RetCode, as UCloud's clients expect. The request is
checked in UCloud's order: an Action (160), a known one (161), a signature (170), a known
public key (172), the signature itself (171), the project (292); then the action runs as
the key's project through Yunhan's own API, in-process (`deps.INTERNAL_HEADER`), so that
validation, idempotency and the audit trail are the API's.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from yunhan.api.deps import ACT_AS_HEADER, INTERNAL_HEADER, state_of
from yunhan.api.ucloud import wire
from yunhan.api.ucloud.actions import ACTIONS, INSTEAD, ActionError, Ctx

log = logging.getLogger("yunhan.api.ucloud")

router = APIRouter(tags=["ucloud"])

MAX_BODY = 1 << 20

# Yunhan's error codes -> RetCodes (the HTTP status of the inner call decides).
_BY_STATUS = {400: wire.INVALID_PARAM, 404: wire.NOT_FOUND, 409: wire.CONFLICT,
              412: wire.CONFLICT, 422: wire.INVALID_PARAM}  # fmt: skip


async def _params(request: Request) -> dict[str, str]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ActionError(wire.INVALID_PARAM, "the request is larger than 1 MiB")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ActionError(wire.INVALID_PARAM, f"the JSON body does not parse: {exc}") from exc
        if not isinstance(body, dict):
            raise ActionError(wire.INVALID_PARAM, "the JSON body must be an object")
        return wire.flatten(body)
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


@router.post("/ucloud", include_in_schema=False)
async def action_api(request: Request) -> JSONResponse:
    action = ""
    try:
        params = await _params(request)
        action = params.get("Action", "")
        return JSONResponse(await _run(request, action, params))
    except ActionError as exc:
        return JSONResponse(wire.answer(action or "Unknown", exc.code, exc.message))


async def _run(request: Request, action: str, params: dict[str, str]) -> dict[str, Any]:
    st = state_of(request)
    if not action:
        raise ActionError(wire.MISSING_ACTION, "Missing Action")
    handler = ACTIONS.get(action)
    if handler is None:
        instead = INSTEAD.get(action)
        offer = f"; Yunhan offers {instead}" if instead else (
            f"; supported actions: {', '.join(sorted(ACTIONS))}"
        )  # fmt: skip
        raise ActionError(wire.UNKNOWN_ACTION, f"Action [{action}] not available{offer}")
    if not params.get("Signature"):
        raise ActionError(wire.MISSING_SIGNATURE, "Missing signature")
    key = st.api_keys.by_public(params.get("PublicKey", ""))
    if key is None:
        raise ActionError(wire.UNKNOWN_USER, "User not found: no key pair has this PublicKey")
    if not wire.signature_ok(params, key.private_key):
        raise ActionError(wire.BAD_SIGNATURE, "Signature VerifyAC Error")
    if key.revoked_at is not None:
        raise ActionError(wire.UNKNOWN_USER, f"key pair {key.id} was revoked")
    with st.store.read() as r:
        project = r.get("project", key.project)
    asked = params.get("ProjectId")
    if project is None or (asked and asked not in (project.id, project.name)):
        raise ActionError(wire.UNKNOWN_PROJECT, f"Project [{asked}] not found for this key")
    signature = params["Signature"]
    posts: list[str] = []
    transport = httpx.ASGITransport(app=request.app)
    headers = {INTERNAL_HEADER: st.internal_secret, ACT_AS_HEADER: f"{project.id} {key.id}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://yunhan.internal", headers=headers, timeout=120
    ) as client:

        async def call(
            method: str,
            path: str,
            json: Any = None,
            params: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None,
        ) -> Any:
            if method == "POST":
                # The SDK retries a request as it was (same parameters, same signature):
                # the signature is its idempotency key, so a retry after an answer that
                # was lost (or a code above 2000) writes nothing twice.
                posts.append(path)
                key = f"ucloud-{signature}-{len(posts)}"
                headers = {**(headers or {}), "Idempotency-Key": key}
            r = await client.request(method, path, json=json, params=params, headers=headers)
            if r.status_code < 300:
                return r.json() if r.content else {}
            try:
                msg = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = r.text[:300]
            code = _BY_STATUS.get(r.status_code, wire.SERVER_ERROR)
            raise ActionError(code, msg)

        try:
            fields = await handler(Ctx(params=params, call=call))
        except ActionError:
            raise
        except Exception as exc:  # a bug of ours: the SDK retries codes above 2000
            log.exception("action %s failed", action)
            raise ActionError(wire.SERVER_ERROR, f"internal error: {exc}") from exc
    return wire.answer(action, **fields)
