"""`yunhan patch …`: fleet hot patches over the API (docs/fleetpatch.md), admin only.

The forms are the issue's: `patch create NAME --file fix.yhp [--zone Z] [--host H …]
[--label key=value] [--canary N] [--max-parallel N] [--health-window S]
[--no-auto-rollback] [--wait]`, `patch list`, `patch show NAME`, `patch pause|resume|
rollback NAME [--wait]`, `patch delete NAME`. `--wait` waits for the rollout to stop
(done, rolled_back, failed or paused) and fails unless it stopped where the command meant
it to. `show -o json` gives the patch as the API has it, with its processes.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import Any

from yunhan.cli import views
from yunhan.cli.client import Client
from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo, warn
from yunhan.cli.resources import JSON, LISTED, OUTPUT, SHOWN, TIMEOUT, fmt, ref
from yunhan.errors import Conflict, TimedOut, ValidationError

PATH = "/v1/patches"
STOPPED = ("done", "rolled_back", "failed", "paused")
POLL = 1.0  # seconds between two looks at a rollout under --wait
COUNTS = ("applied", "refused", "died", "busy", "rolled_back")


def patch_row(res: dict[str, Any]) -> dict[str, Any]:
    spec, st = res.get("spec") or {}, res.get("status") or {}
    counts = st.get("counts") or {}
    hosts = st.get("hosts") or {}
    return {
        "name": res.get("name"),
        "id": res.get("id"),
        "phase": st.get("phase"),
        "target": spec.get("target"),
        "functions": spec.get("functions"),
        "hosts": f"{sum(1 for v in hosts.values() if v.get('state') == 'applied')}/{len(hosts)}",
        **{c: counts.get(c, 0) for c in COUNTS},
        "message": st.get("message"),
        "patch_id": spec.get("patch_id"),
        "build_id": spec.get("build_id"),
        "digest": spec.get("digest"),
        "canary_hosts": st.get("canary_hosts"),
        "started_at": st.get("started_at"),
        "finished_at": st.get("finished_at"),
        "revision": res.get("revision"),
    }


def _host_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    st = res.get("status") or {}
    canaries = set(st.get("canary_hosts") or ())
    return [
        {"host": h, "canary": h in canaries, **(st.get("hosts") or {}).get(h, {})}
        for h in st.get("targets") or ()
    ]


def _process_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "pid": p["pid"],
            "command": p["comm"],
            "host": p["host"],
            "instance": p.get("instance"),
            "result": p["result"],
            "reason": p.get("reason"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(p["at"])),
        }
        for p in res.get("processes") or ()
    ]


def _print_patch(ctx: Ctx, res: dict[str, Any]) -> None:
    f = fmt(ctx)
    if f in ("json", "yaml"):
        views.print_one("patch", res, f)
        return
    views.print_one("patch", patch_row(res), f)
    if "processes" not in res:
        return
    echo()
    views.print_list("patch_host", _host_rows(res), f)
    echo()
    views.print_list("patch_process", _process_rows(res), f)


def _wait(c: Client, name: str, want: str, timeout: float) -> dict[str, Any]:
    """The patch once its rollout stopped; Conflict unless it stopped at `want`."""
    deadline = time.monotonic() + timeout
    while True:
        res: dict[str, Any] = c.get(f"{PATH}/{name}")
        st = res["status"]
        if st["phase"] in STOPPED:
            if st["phase"] != want:
                raise Conflict(f"patch {name} is {st['phase']}, not {want}: {st['message']}")
            return res
        if time.monotonic() >= deadline:
            raise TimedOut(
                f"patch {name} is still {st['phase']} after {timeout:g} s ({st['message']}); "
                f"`yunhan patch show {name}` shows where each host is"
            )
        time.sleep(min(POLL, max(deadline - time.monotonic(), 0.0)))


def _after(ctx: Ctx, c: Client, res: dict[str, Any], want: str) -> None:
    if ctx["wait"]:
        res = _wait(c, res["name"], want, ctx["timeout"])
        res = c.get(f"{PATH}/{res['name']}")
    _print_patch(ctx, res)


def _selector(terms: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for term in terms or ():
        key, eq, value = term.partition("=")
        if not eq:
            raise ValidationError(f"--label wants KEY=VALUE, not {term!r}")
        out[key] = value
    return out


def patch_create(ctx: Ctx) -> None:
    path = Path(ctx["file"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}") from exc
    body: dict[str, Any] = {
        "name": ctx["name"],
        "content": base64.b64encode(data).decode(),
        "digest": hashlib.sha256(data).hexdigest(),
        "hosts": list(ctx["host"] or ()),
        "labels": _selector(ctx["label"]),
        "auto_rollback": not ctx["no_auto_rollback"],
    }
    for key in ("zone", "canary", "max_parallel", "health_window"):
        if ctx[key] is not None:
            body[key] = ctx[key]
    c = ctx.client()
    res = c.post(PATH, body)
    if not res["status"]["targets"]:
        warn(f"patch {res['name']}: no host matches the selection; nothing will be patched")
    _after(ctx, c, res, "done")


def patch_list(ctx: Ctx) -> None:
    c = ctx.client()
    params: dict[str, Any] = {}
    if ctx["selector"]:
        params["label"] = list(ctx["selector"])
    rows = [patch_row(i) for i in c.items(PATH, **params)]
    if not rows and fmt(ctx) in ("table", "wide"):
        echo("no patches")
        return
    views.print_list("patch", rows, fmt(ctx))


def patch_show(ctx: Ctx) -> None:
    c = ctx.client()
    _print_patch(ctx, c.get(f"{PATH}/{ctx['ref']}"))


def _action(action: str, want: str) -> Any:
    def run(ctx: Ctx) -> None:
        c = ctx.client()
        _after(ctx, c, c.post(f"{PATH}/{ctx['ref']}/{action}"), want)

    return run


def patch_delete(ctx: Ctx) -> None:
    c = ctx.client()
    res = c.delete(f"{PATH}/{ctx['ref']}")
    if fmt(ctx) in ("json", "yaml"):
        views.print_one("patch", res, fmt(ctx))
    else:
        echo(f"deleted patch {res.get('name')} ({res.get('id')})")


PATCH_REF = ref("patch")
WAIT = Opt(("--wait",), "wait", "return once the rollout stopped (fails unless it went where "
           "this command sends it)", bool)  # fmt: skip
WAITED = (WAIT, TIMEOUT, OUTPUT, JSON)
COMMANDS = (
    Group(
        "patch",
        "Fleet hot patches (admin): one .yhp from `yunhan hotpatch build`, applied to every "
        "process that maps its target build on the chosen hosts, canary first, with rollback",
        (
            Cmd(
                "create",
                "Upload a patch and roll it out, e.g. `yunhan patch create fix-price --file "
                "fix-price.yhp --canary 1 --max-parallel 2 --health-window 60 --wait`.",
                patch_create,
                (
                    Arg("name", "its name"),
                    Opt(("--file",), "file", "the .yhp file", required=True, metavar="FILE"),
                    Opt(("--zone",), "zone", "only hosts of this zone", complete="zone"),
                    Opt(
                        ("--host",),
                        "host",
                        "only this host (repeat for more)",
                        many=True,
                        metavar="HOST",
                        complete="host",
                    ),
                    Opt(
                        ("--label",),
                        "label",
                        "only hosts with this label KEY=VALUE (repeatable: all)",
                        many=True,
                        metavar="KEY=VALUE",
                    ),
                    Opt(
                        ("--canary",),
                        "canary",
                        "hosts patched first, alone (default 1)",
                        int,
                        metavar="N",
                    ),
                    Opt(
                        ("--max-parallel",),
                        "max_parallel",
                        "hosts patched at once after the canary (default 1)",
                        int,
                        metavar="N",
                    ),
                    Opt(
                        ("--health-window",),
                        "health_window",
                        "seconds a patched host must stay healthy (default 30)",
                        int,
                        metavar="S",
                    ),
                    Opt(
                        ("--no-auto-rollback",),
                        "no_auto_rollback",
                        "pause instead of rolling back when a patched process dies",
                        bool,
                    ),
                    *WAITED,
                ),
            ),
            Cmd("list", "List patches with their phase and counts.", patch_list, LISTED),
            Cmd(
                "show",
                "Show a patch: counts per result, each host, each process.",
                patch_show,
                (PATCH_REF, *SHOWN),
            ),
            Cmd(
                "pause",
                "Ask no new host (those applying finish).",
                _action("pause", "paused"),
                (PATCH_REF, *WAITED),
            ),
            Cmd(
                "resume",
                "Continue a paused rollout.",
                _action("resume", "done"),
                (PATCH_REF, *WAITED),
            ),
            Cmd(
                "rollback",
                "Restore every patched process on every host.",
                _action("rollback", "rolled_back"),
                (PATCH_REF, *WAITED),
            ),
            Cmd(
                "delete",
                "Forget a patch applied nowhere (rolled back, or it matched no process).",
                patch_delete,
                (PATCH_REF, *SHOWN),
            ),
        ),
    ),
)
