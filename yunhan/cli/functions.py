"""`yunhan function …` and `yunhan usage`: functions over the API (docs/functions.md).

The forms are the issue's: `function deploy NAME --source FILE_OR_DIR --handler
module.func [--memory MB] [--timeout S] [--concurrency N] [--min N] [--max N] [--env K=V …]
[--vpc V --subnet S] [--traffic v1=90,v2=10]` (a deploy, then the split when given),
`function list|show|delete`, `function versions NAME`, `function traffic NAME v1=90,v2=10`
(`latest`: all to the newest version), `usage [--project P] [--since T] [--by
function|day]`. The source is packed here (`yunhan.functions.bundle.pack`) and checked
by the API before anything is written.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

from yunhan.cli import views
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo
from yunhan.cli.resources import LABEL, LISTED, SHOWN, fmt, labels, ref
from yunhan.errors import ValidationError

PATH = "/v1/functions"
INVOKE_TIMEOUT = 960.0  # the longest function timeout (900 s), a cold start, and slack


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _split(traffic: dict[str, int] | None) -> str:
    return ", ".join(f"v{v}={p}%" for v, p in (traffic or {}).items())


def function_row(res: dict[str, Any]) -> dict[str, Any]:
    spec, st = res.get("spec") or {}, res.get("status") or {}
    versions = st.get("versions") or []
    latest = versions[-1] if versions else {}
    return {
        "name": res.get("name"),
        "id": res.get("id"),
        "latest": st.get("latest_version"),
        "traffic": _split(st.get("traffic")),
        "workers": ", ".join(f"v{v}={n}" for v, n in (st.get("workers") or {}).items()) or None,
        "handler": latest.get("handler"),
        "memory_mb": latest.get("memory_mb"),
        "timeout_s": latest.get("timeout_s"),
        "concurrency": spec.get("concurrency"),
        "min": spec.get("min_scale"),
        "max": spec.get("max_scale"),
        "idle_grace_s": spec.get("idle_grace_s"),
        "scale_window_s": spec.get("scale_window_s"),
        "vpc": spec.get("vpc"),
        "subnet": spec.get("subnet"),
        "versions": [v.get("version") for v in versions],
        "revision": res.get("revision"),
        "created_at": res.get("created_at"),
    }


def _version_row(v: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": v.get("version"),
        "handler": v.get("handler"),
        "memory_mb": v.get("memory_mb"),
        "timeout_s": v.get("timeout_s"),
        "sha256": str(v.get("sha256", ""))[:12],
        "env": ", ".join(sorted(v.get("env") or {})),
        "created": _iso(v.get("created")),
    }


def _print_function(ctx: Ctx, res: dict[str, Any]) -> None:
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("function", res, f)
        return
    views.print_one("function", function_row(res), f)


def env_pairs(values: list[str] | None) -> dict[str, str]:
    """`--env K=V` (repeatable) as a mapping; a K given twice keeps its last value."""
    out: dict[str, str] = {}
    for v in values or ():
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise ValidationError(f"--env wants KEY=VALUE, not {v!r}", field="env")
        out[key] = value
    return out


def _traffic_body(text: str) -> dict[str, Any]:
    from yunhan.functions.catalog import parse_traffic

    if text.strip() == "latest":
        return {"spec": {"traffic": None}}
    return {"spec": {"traffic": parse_traffic(text)}}


def function_deploy(ctx: Ctx) -> None:
    from yunhan.functions.bundle import pack

    body: dict[str, Any] = {
        "name": ctx["name"],
        "handler": ctx["handler"],
        "source": {"tar_gz": base64.b64encode(pack(Path(ctx["source"]))).decode()},
        "memory_mb": ctx["memory"],
        "timeout_s": ctx["timeout"],
        "env": env_pairs(ctx["env"]),
    }
    traffic = _traffic_body(ctx["traffic"]) if ctx["traffic"] else None  # checked first
    for opt, key in (
        ("concurrency", "concurrency"),
        ("min", "min_scale"),
        ("max", "max_scale"),
        ("idle_grace", "idle_grace_s"),
        ("scale_window", "scale_window_s"),
        ("vpc", "vpc"),
        ("subnet", "subnet"),
    ):
        if ctx[opt] is not None:
            body[key] = ctx[opt]
    if ctx["label"]:
        body["labels"] = labels(ctx)
    c = ctx.client()
    res = c.post(PATH, body)
    if traffic is not None:
        res = c.request("PATCH", f"{PATH}/{res['id']}", json=traffic)
    if fmt(ctx) in ("json", "yaml"):
        _print_function(ctx, res)
    else:
        st = res.get("status") or {}
        echo(
            f"deployed function {res['name']} version {st.get('latest_version')} "
            f"(traffic {_split(st.get('traffic'))})"
        )


def function_list(ctx: Ctx) -> None:
    c = ctx.client()
    params: dict[str, Any] = {}
    if ctx["selector"]:
        params["label"] = list(ctx["selector"])
    rows = [function_row(i) for i in c.items(PATH, **params)]
    views.print_list("function", rows, fmt(ctx))


def function_show(ctx: Ctx) -> None:
    _print_function(ctx, ctx.client().get(f"{PATH}/{ctx['ref']}"))


def function_versions(ctx: Ctx) -> None:
    ans = ctx.client().get(f"{PATH}/{ctx['ref']}/versions")
    f = fmt(ctx)
    items = ans.get("items") or []
    rows = items if f in ("json", "yaml") else [_version_row(v) for v in items]
    views.print_list("function_version", rows, f)


def function_delete(ctx: Ctx) -> None:
    res = ctx.client().delete(f"{PATH}/{ctx['ref']}")
    if fmt(ctx) in ("json", "yaml"):
        _print_function(ctx, res)
    else:
        echo(f"deleted function {res.get('name')}")


def function_traffic(ctx: Ctx) -> None:
    body = _traffic_body(ctx["split"])
    res = ctx.client().request("PATCH", f"{PATH}/{ctx['ref']}", json=body)
    if fmt(ctx) in ("json", "yaml"):
        _print_function(ctx, res)
    else:
        echo(f"function {res['name']}: traffic {_split((res.get('status') or {}).get('traffic'))}")


def event_of(data: str | None) -> Any:
    """`--data JSON` or `--data @file` (a file of JSON; `@-` reads stdin); none: {}."""
    import json
    import sys

    if data is None:
        return {}
    text = data
    if data.startswith("@"):
        name = data[1:]
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
        except OSError as exc:
            raise ValidationError(f"--data {data}: {exc.strerror}", field="data") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"--data is not JSON: {exc}", field="data") from exc


def function_invoke(ctx: Ctx) -> None:
    """The result on stdout; request id, version and durations on stderr (the whole
    envelope with --json). Exit status 1 when the function failed."""
    import json
    import sys

    event = event_of(ctx["data"])
    path = f"{PATH}/{ctx['ref']}/invoke"
    if ctx["version"] is not None:
        path += f"?version={int(ctx['version'])}"
    ans = ctx.client().request("POST", path, json=event, timeout=INVOKE_TIMEOUT)
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("invocation", ans, f)
    elif ans.get("ok"):
        echo(json.dumps(ans.get("result"), indent=2, ensure_ascii=False))
    if f not in ("json", "yaml"):
        print(
            f"request {ans['request_id']}  version {ans['version']}  "
            f"duration {ans['duration_ms']:.2f} ms  billed {ans['billed_duration_ms']} ms  "
            f"memory {ans['memory_mb']} MB" + ("  cold start" if ans.get("cold_start") else ""),
            file=sys.stderr,
        )
        if not ans.get("ok"):
            print(f"error: {ans.get('error')}", file=sys.stderr)
            if ans.get("traceback"):
                print(ans["traceback"].rstrip(), file=sys.stderr)
    if not ans.get("ok"):
        raise SystemExit(1)


def function_logs(ctx: Ctx) -> None:
    ans = ctx.client().get(f"{PATH}/{ctx['ref']}/logs", tail=ctx["tail"])
    for line in ans.get("lines") or []:
        echo(line)


def usage(ctx: Ctx) -> None:
    from yunhan.cli.flowlogs import when

    params: dict[str, Any] = {"by": ctx["by"], "project": ctx["project"]}
    if ctx["since"]:
        params["since"] = when(ctx["since"])
    ans = ctx.client().get("/v1/usage", **params)
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("usage", ans, f)
        return
    by = ans["by"]
    rows = [
        {
            "project": u.get("project_name") or u["project"],
            "function": u.get("name"),
            "id": u.get("function"),
            "day": u.get("day"),
            "requests": u["requests"],
            "errors": u["errors"],
            "cold_starts": u["cold_starts"],
            "billed_ms": u["billed_ms"],
            "gb_s": f"{u['gb_seconds']:.3f}",
            "cost": f"{u['cost']:.6f}",
        }
        for u in ans["items"]
    ]
    views.print_list(f"usage_{by}", rows, f)
    t = ans["totals"]
    echo(
        f"total: {t['requests']} requests, {t['gb_seconds']:.3f} GB-s, "
        f"{t['cost']:.6f} {ans['currency']}"
    )


FUNCTION_REF = ref("function")
COMMANDS = (
    Group(
        "function",
        "Serverless functions: deploy Python handlers as immutable versions, split traffic "
        "between versions, scale from zero (docs/functions.md)",
        (
            Cmd(
                "deploy",
                "Deploy a function's code as its next version (version 1 the first time), "
                "e.g. `yunhan function deploy hello --source hello.py --handler "
                "hello.handler`. Refused whole, nothing changed, for a syntax error, a "
                "missing handler, or memory outside 64 MB..the hosts' limit.",
                function_deploy,
                (
                    Arg("name", "its name"),
                    Opt(
                        ("--source",),
                        "source",
                        "a .py file or a directory of them",
                        required=True,
                        metavar="FILE_OR_DIR",
                    ),
                    Opt(
                        ("--handler",),
                        "handler",
                        "module.func called as func(event, context)",
                        required=True,
                    ),
                    Opt(("--memory",), "memory", "MB (64 up to the hosts' limit)", int, 128),
                    Opt(("--timeout",), "timeout", "seconds an invocation may run", float, 3.0),
                    Opt(
                        ("--concurrency",),
                        "concurrency",
                        "target in-flight requests per worker (default 1)",
                        int,
                    ),
                    Opt(("--min",), "min", "workers kept warm (default 0)", int),
                    Opt(("--max",), "max", "workers at most (default 10)", int),
                    Opt(
                        ("--idle-grace",),
                        "idle_grace",
                        "seconds idle before scaling to zero (default 30)",
                        int,
                    ),
                    Opt(
                        ("--scale-window",),
                        "scale_window",
                        "the scaler's stable window in seconds (default 60, at least 6); "
                        "its panic window is a tenth of it",
                        int,
                    ),
                    Opt(
                        ("--env",),
                        "env",
                        "an environment variable KEY=VALUE (repeatable)",
                        many=True,
                        metavar="K=V",
                    ),
                    Opt(("--vpc",), "vpc", "run in this VPC (with --subnet)", complete="vpc"),
                    Opt(("--subnet",), "subnet", "run in this subnet", complete="subnet"),
                    Opt(
                        ("--traffic",),
                        "traffic",
                        "then split requests between versions, e.g. v1=90,v2=10",
                        metavar="SPLIT",
                    ),
                    LABEL,
                    *SHOWN,
                ),
            ),
            Cmd(
                "list",
                "List the project's functions.",
                function_list,
                LISTED,
            ),
            Cmd(
                "show",
                "Show a function: its versions, traffic split and scaling.",
                function_show,
                (FUNCTION_REF, *SHOWN),
            ),
            Cmd(
                "versions",
                "List a function's versions with the config each was deployed with.",
                function_versions,
                (FUNCTION_REF, *SHOWN),
            ),
            Cmd(
                "traffic",
                "Split requests between versions, e.g. `yunhan function traffic hello "
                "v1=90,v2=10` (whole percents summing to 100); `latest` sends all to the "
                "newest version, as new deploys then do.",
                function_traffic,
                (
                    FUNCTION_REF,
                    Arg("split", "VERSION=PERCENT,… or latest", metavar="SPLIT"),
                    *SHOWN,
                ),
            ),
            Cmd(
                "invoke",
                "Run a function once, e.g. `yunhan function invoke hello --data "
                '\'{"name": "x"}\'`: the result on stdout, request id, version and '
                "durations on stderr; exit status 1 when the function failed.",
                function_invoke,
                (
                    FUNCTION_REF,
                    Opt(
                        ("--data",),
                        "data",
                        "the event: JSON, or @FILE of JSON (@- for stdin); default {}",
                        metavar="JSON|@FILE",
                    ),
                    Opt(
                        ("--version",),
                        "version",
                        "run this version, whatever the traffic split",
                        int,
                    ),
                    *SHOWN,
                ),
            ),
            Cmd(
                "logs",
                "What a function's workers printed (and their errors), from every host.",
                function_logs,
                (
                    FUNCTION_REF,
                    Opt(("--tail",), "tail", "the last N lines per host", int, 100),
                ),
            ),
            Cmd(
                "delete",
                "Delete a function with all its versions (its usage is kept).",
                function_delete,
                (FUNCTION_REF, *SHOWN),
            ),
        ),
    ),
    Cmd(
        "usage",
        "Function usage: requests, GB-seconds and cost from the server's price table, per "
        "function or per day, e.g. `yunhan usage --since 24h --by day`.",
        usage,
        (
            Opt(
                ("--project",),
                "project",
                "this project's (admin: any; default: every project for the admin, else your own)",
                complete="project",
            ),
            Opt(
                ("--since",),
                "since",
                "from T on: a duration back (24h, 7d), ISO 8601 or unix seconds",
                metavar="T",
            ),
            Opt(("--by",), "by", "group by", choices=("function", "day"), default="function"),
            *SHOWN,
        ),
    ),
)
