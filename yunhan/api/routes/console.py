"""The web console (docs/console.md): its page, its assets and its session.

The console is static files (HTML, one ES module, one stylesheet) that call the same /v1 API
as the CLI: nothing is rendered per user here and nothing comes from outside the server,
so it works in an air-gapped region. Signing in trades a token for a cookie the page's
script cannot read (HttpOnly, SameSite=Strict); `deps.identify` accepts that cookie in place
of the Authorization header, and requires the CSRF token on every write made with it.
"""

from __future__ import annotations

from contextlib import suppress
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, StringConstraints

from yunhan.api.auth import Caller, authenticate
from yunhan.api.deps import SESSION_COOKIE, csrf_token, identify, state_of
from yunhan.api.journal import CALLER
from yunhan.errors import Forbidden, Unauthorized

router = APIRouter(include_in_schema=False)

STATIC = resources.files("yunhan.console") / "static"
SESSION_SECONDS = 12 * 3600  # the cookie's life; the token's own expiry still applies
# The page may run its own module and styles, and talk to its own origin only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


@router.get("/console")
def console_page() -> Response:
    html = (STATIC / "index.html").read_text()
    return HTMLResponse(html, headers=_page_headers())


@router.get("/console/")
def console_slash() -> Response:
    return RedirectResponse("/console", status_code=308)


@router.get("/console/static/{name}")
def console_asset(name: str) -> Response:
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    suffix = name[name.rfind(".") :] if "." in name else ""
    f = STATIC / name
    if "/" in name or suffix not in types or not f.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(f.read_bytes(), media_type=types[suffix], headers=_page_headers())


@router.post("/console/session")
def sign_in(body: SignIn, request: Request) -> Response:
    """Trade a project token (or the admin token) for the session cookie."""
    st = state_of(request)
    with st.store.read() as r:
        c = authenticate(r, f"Bearer {body.token}", st.admin_hash, st.admin_project_id, st.clock())
    setattr(request.state, CALLER, c)
    if c.kind not in ("admin", "project"):
        raise Forbidden(f"a {c.kind} token cannot sign in to the console; use a project token")
    resp = _session_answer(request, c, body.token)
    resp.set_cookie(
        SESSION_COOKIE,
        body.token,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return resp


@router.get("/console/session")
async def session(request: Request) -> Response:
    """Who the session is, and the CSRF token its writes must carry (401: signed out)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise Unauthorized("not signed in to the console")
    c = await identify(request)
    return _session_answer(request, c, token)


@router.delete("/console/session")
async def sign_out(request: Request) -> Response:
    if request.cookies.get(SESSION_COOKIE):
        # A write, so the CSRF token is checked; a token revoked or expired since is no
        # reason to keep its cookie.
        with suppress(Unauthorized):
            await identify(request)
    resp = Response(status_code=204)
    resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return resp


def _session_answer(request: Request, c: Caller, token: str) -> Response:
    st = state_of(request)
    body: dict[str, Any] = {
        "csrf_token": csrf_token(token),
        "project": {"id": c.project.id, "name": c.project.name},
        "admin": c.admin,
        "token_id": c.token_id,
    }
    if c.admin:
        with st.store.read() as r:
            body["projects"] = [{"id": p.id, "name": p.name} for p in r.list("project", "")]
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
