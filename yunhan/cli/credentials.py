"""`yunhan token …`, `yunhan audit …` and `yunhan events`: credentials, the audit trail,
and what a user must know about (docs/credentials.md)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from yunhan.cli import views, yamlout
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo
from yunhan.errors import YunhanError

OUTPUT = Opt(("-o", "--output"), "output", "output format", choices=views.FORMATS)
JSON = Opt(("--json",), "as_json", "print JSON for scripts (same as -o json)", kind=bool)
SHOWN = (OUTPUT, JSON)

TOKEN_COLUMNS = ("id", "kind", "project", "host", "created_at", "expires", "revoked")
TOKEN_WIDE = (*TOKEN_COLUMNS, "description")
AUDIT_COLUMNS = ("seq", "time", "project", "token_id", "method", "path", "result")
AUDIT_WIDE = ("seq", "time", "project", "token_id", "request_id", "method", "path", "resource",
              "result", "status", "hash")  # fmt: skip
EVENT_COLUMNS = ("last_time", "reason", "object", "count", "message")
EVENT_WIDE = ("first_time", "last_time", "project", "reason", "object", "count", "message")


class AuditBroken(YunhanError):
    """`audit verify` found a broken record (exit 1, naming it)."""

    code = "audit_broken"


def _show(rows: list[dict[str, Any]], ctx: Ctx, what: str, cols: tuple[str, ...],
          wide: tuple[str, ...]) -> None:  # fmt: skip
    f = views.output_format(ctx["output"], ctx["as_json"])
    if f == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif f == "yaml":
        sys.stdout.write(yamlout.dumps(rows))
    elif not rows:
        echo(f"no {what}")
    else:
        echo(views.table(wide if f == "wide" else cols, rows))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _token_row(t: dict[str, Any]) -> dict[str, Any]:
    def when(x: Any) -> str | None:
        return _iso(float(x)) if x is not None else None

    return {**t, "expires": when(t.get("expires_at")), "revoked": when(t.get("revoked_at"))}


def token_list(ctx: Ctx) -> None:
    c = ctx.client()
    items = c.items("/v1/tokens", project=ctx["project"], host=ctx["host"], kind=ctx["kind"])
    _show([_token_row(t) for t in items], ctx, "tokens", TOKEN_COLUMNS, TOKEN_WIDE)


def token_create(ctx: Ctx) -> None:
    body = {"description": ctx["description"], "expires_in": ctx["expires_in"]}
    ans = ctx.client().post(f"/v1/projects/{ctx['ref']}/tokens", body)
    echo(f"token {ans['id']} for project {ctx['ref']} (shown once):")
    echo(ans["token"])


def token_bootstrap(ctx: Ctx) -> None:
    body = {"description": ctx["description"], "expires_in": ctx["expires_in"]}
    ans = ctx.client().post(f"/v1/hosts/{ctx['host_name']}/bootstrap-tokens", body)
    echo(f"bootstrap token {ans['id']} for host {ctx['host_name']}, one use, "
         f"until {_iso(float(ans['expires_at']))} (shown once):")  # fmt: skip
    echo(ans["token"])


def token_revoke(ctx: Ctx) -> None:
    ans = ctx.client().delete(f"/v1/tokens/{ctx['token_id']}")
    echo(f"revoked token {ans['id']}")


def audit_list(ctx: Ctx) -> None:
    c = ctx.client()
    items = c.items("/v1/audit", project=ctx["project"], since=ctx["since"])
    _show(items, ctx, "audit records", AUDIT_COLUMNS, AUDIT_WIDE)


def audit_verify(ctx: Ctx) -> None:
    ans = ctx.client().get("/v1/audit/verify")
    if not ans["ok"]:
        b = ans["broken"]
        raise AuditBroken(f"the audit trail is broken at record {b['seq']}: {b['reason']}")
    echo("the audit trail holds together")


def events(ctx: Ctx) -> None:
    items = ctx.client().items("/v1/events", **{"for": ctx["for_"]})
    _show(items, ctx, "events", EVENT_COLUMNS, EVENT_WIDE)


TOKEN = Group(
    "token",
    "API tokens: list, issue, revoke (admin only); bootstrap tokens for hosts' agents",
    (
        Cmd(
            "list",
            "List tokens: metadata only, never a token.",
            token_list,
            (
                Opt(("--project",), "project", "of this project", complete="project"),
                Opt(("--host",), "host", "serving this host"),
                Opt(("--kind",), "kind", "of this kind", choices=("project", "host", "bootstrap")),
                *SHOWN,
            ),
        ),
        Cmd(
            "create",
            "Issue a token for a project and print it (the only time it is shown).",
            token_create,
            (
                Arg("ref", "the project's name or id", metavar="PROJECT", complete="project"),
                Opt(("--expires-in",), "expires_in", "seconds until it expires", float),
                Opt(("--description",), "description", "what it is for"),
            ),
        ),
        Cmd(
            "bootstrap",
            "Make a one-time token for a host's agent (`yunhan agent --token-file`), which "
            "exchanges it for a token valid only for that host.",
            token_bootstrap,
            (
                Arg("host_name", "the host's name", metavar="HOST"),
                Opt(("--expires-in",), "expires_in", "seconds it stays usable", float, 900.0),
                Opt(("--description",), "description", "what it is for"),
            ),
        ),
        Cmd(
            "revoke",
            "Revoke a token: refused from its next request on.",
            token_revoke,
            (Arg("token_id", "the token's id (tok-…)", metavar="ID"),),
        ),
    ),
)
AUDIT = Group(
    "audit",
    "The audit trail: every accepted write and refused authorisation",
    (
        Cmd(
            "list",
            "List audit records, oldest first (the admin sees all; a project its own).",
            audit_list,
            (
                Opt(("--project",), "project", "of this project", complete="project"),
                Opt(("--since",), "since", "from this time (ISO 8601 or unix seconds)"),
                *SHOWN,
            ),
        ),
        Cmd(
            "verify",
            "Check the hash chain of the whole trail (admin); exit 1 naming the first "
            "broken record.",
            audit_verify,
        ),
    ),
)
EVENTS = Cmd(
    "events",
    "What you must know about: hosts gone silent, instances that failed, apply errors, "
    "refused placements (deduplicated, kept one hour).",
    events,
    (Opt(("--for",), "for_", "about this resource (name or id)", metavar="RESOURCE"), *SHOWN),
)

COMMANDS: tuple[Cmd | Group, ...] = (TOKEN, AUDIT, EVENTS)
