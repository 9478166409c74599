"""`yunhan ai …`: the built-in AI services (docs/ai.md).

`ai enable SERVICE` deploys the service as the project's function `ai-SERVICE`; `ai call
SERVICE --file img.png` (or `--text`, or `--data JSON`) runs it once, the result on stdout.
A file goes as base64 in the service's input field, as `POST /v1/ai/{service}` takes it;
the API also takes a multipart upload (`curl -F file=@img.png`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from yunhan.cli import views
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo
from yunhan.cli.functions import INVOKE_TIMEOUT, event_of
from yunhan.cli.resources import SHOWN, fmt
from yunhan.errors import ValidationError

# The catalog's names, written out so that `yunhan --help` imports nothing of it
# (tests/unit/test_cli_ai.py holds the two equal).
SERVICE_NAMES = ("faces", "langid", "ocr", "sentiment", "speech")
SERVICE = Arg("service", f"one of {', '.join(SERVICE_NAMES)}", metavar="SERVICE")


def ai_list(ctx: Ctx) -> None:
    rows = ctx.client().get("/v1/ai/services")["items"]
    views.print_list("ai_service", rows, fmt(ctx))


def ai_enable(ctx: Ctx) -> None:
    from yunhan.ai import catalog

    catalog.service(ctx["service"])  # an unknown one is refused before any request
    res = ctx.client().put(f"/v1/ai/services/{ctx['service']}", {})
    if fmt(ctx) in ("json", "yaml"):
        views.print_one("function", res, fmt(ctx))
        return
    st = res.get("status") or {}
    echo(f"AI service {ctx['service']} enabled: function {res['name']} "
         f"version {st.get('latest_version')}")  # fmt: skip


def ai_disable(ctx: Ctx) -> None:
    from yunhan.ai import catalog

    catalog.service(ctx["service"])
    res = ctx.client().delete(f"/v1/ai/services/{ctx['service']}")
    echo(f"AI service {ctx['service']} disabled (function {res.get('name')} deleted)")


def call_event(service: str, file: str | None, text: str | None, data: str | None) -> Any:
    """The event for `ai call`: exactly one of --file, --text, --data."""
    from yunhan.ai import catalog

    given = [x for x in (file, text, data) if x is not None]
    if len(given) != 1:
        raise ValidationError("give one of --file, --text and --data", field="file")
    svc = catalog.service(service)
    if data is not None:
        return event_of(data)
    if text is not None:
        if svc.field != "text":
            raise ValidationError(f"{service} takes a file ({svc.field}), not --text")
        return {"text": text}
    assert file is not None
    try:
        content = Path(file).read_bytes()
    except OSError as exc:
        raise ValidationError(f"--file {file}: {exc.strerror}", field="file") from exc
    return catalog.event_from_file(service, content)  # checked as the API checks uploads


def ai_call(ctx: Ctx) -> None:
    event = call_event(ctx["service"], ctx["file"], ctx["text"], ctx["data"])
    ans = ctx.client().request(
        "POST", f"/v1/ai/{ctx['service']}", json=event, timeout=INVOKE_TIMEOUT
    )
    if fmt(ctx) in ("json", "yaml"):
        views.print_one("invocation", ans, fmt(ctx))
    elif ans.get("ok"):
        echo(json.dumps(ans.get("result"), indent=2, ensure_ascii=False))
    if fmt(ctx) not in ("json", "yaml"):
        print(f"request {ans['request_id']}  duration {ans['duration_ms']:.1f} ms  "
              f"billed {ans['billed_duration_ms']} ms", file=sys.stderr)  # fmt: skip
        if not ans.get("ok"):
            print(f"error: {ans.get('error')}", file=sys.stderr)
    if not ans.get("ok"):
        raise SystemExit(1)


COMMANDS = (
    Group(
        "ai",
        "Built-in AI services (ocr, langid, sentiment, faces, speech), run as functions of "
        "your project: scaled and metered like any other (docs/ai.md)",
        (
            Cmd("list", "List the services and which this project has enabled.", ai_list, SHOWN),
            Cmd(
                "enable",
                "Deploy a service as this project's function ai-SERVICE.",
                ai_enable,
                (SERVICE, *SHOWN),
            ),
            Cmd("disable", "Remove a service's function.", ai_disable, (SERVICE,)),
            Cmd(
                "call",
                "Run a service once, e.g. `yunhan ai call ocr --file img.png`, `yunhan ai "
                "call sentiment --text 'I love it'`.",
                ai_call,
                (
                    SERVICE,
                    Opt(("--file",), "file", "an image (ocr, faces) or a WAV (speech)"),
                    Opt(("--text",), "text", "text (langid, sentiment)"),
                    Opt(("--data",), "data", "the event as JSON, or @FILE", metavar="JSON|@FILE"),
                    *SHOWN,
                ),
            ),
        ),
    ),
)

__all__ = ["COMMANDS"]
