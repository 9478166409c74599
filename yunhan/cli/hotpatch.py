"""`yunhan hotpatch build|apply|list|rollback` (also `python -m yunhan.cli.hotpatch`).

yunhan.hotpatch (ELF parsing, capstone, ptrace) is imported only when one of these runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from yunhan.cli.command import Arg, Cmd, Ctx, Group, Opt, echo

if TYPE_CHECKING:
    from yunhan.hotpatch.journal import PatchRecord
    from yunhan.hotpatch.loader import Outcome

JOURNAL = Opt(
    ("--journal-dir",),
    "journal_dir",
    "journal folder (default $YUNHAN_HOME/hotpatch or /var/lib/yunhan/hotpatch)",
    Path,
)
ATTEMPTS = Opt(("--attempts",), "attempts", "switch attempts while functions are active", int, 30)


def build(ctx: Ctx) -> None:
    from yunhan import hotpatch

    output: Path = ctx["output"]
    m = hotpatch.build(
        ctx["source"],
        ctx["target"],
        output,
        patch_id=ctx["patch_id"],
        cflags=tuple(ctx["cflags"].split()),
    )
    for r in m.replacements:
        echo(f"{m.patch_id}: {r.old} -> {r.new}")
    echo(f"wrote {output} (target {m.target_name}, build-id {m.build_id})")


def _pauses(out: Outcome) -> str:
    if not out.attempts:
        return "nothing to write, not stopped"
    if out.attempts == 1:
        return f"paused {out.pause_ms:.3f} ms, attempt 1"
    return (
        f"paused {out.pause_ms:.3f} ms at most, {out.stopped_ms:.3f} ms in all over "
        f"{out.attempts} stops (attempt {out.attempts})"
    )


def apply(ctx: Ctx) -> None:
    from yunhan import hotpatch

    pid = ctx["pid"]
    out = hotpatch.apply(
        pid,
        ctx["patch"],
        journal_dir=ctx["journal_dir"],
        retry=hotpatch.Retry(attempts=ctx["attempts"]),
    )
    for s in out.sites:
        echo(f"{out.patch_id}: {s.symbol} @ {s.write_addr:#x} -> {s.new_func:#x}")
    echo(f"applied {out.patch_id} to {pid}: {_pauses(out)}")


def _record_row(r: PatchRecord) -> dict[str, object]:
    return {
        "patch_id": r.patch_id,
        "state": r.state,
        "target": r.target,
        "functions": [s.symbol for s in r.sites],
    }


def list_(ctx: Ctx) -> None:
    from yunhan import hotpatch

    procs = hotpatch.list_patches(ctx["pid"], journal_dir=ctx["journal_dir"])
    if ctx["as_json"]:
        rows = [
            {"pid": p.pid, "alive": p.alive, "patches": [_record_row(r) for r in p.patches]}
            for p in procs
        ]
        echo(json.dumps(rows, indent=2))
        return
    for p in procs:
        echo(f"pid {p.pid}{'' if p.alive else ' (exited)'}")
        for r in p.patches:
            funcs = ", ".join(s.symbol for s in r.sites)
            echo(f"  {r.patch_id:24} {r.state:13} {Path(r.target).name}: {funcs}")


def rollback(ctx: Ctx) -> None:
    from yunhan import hotpatch

    pid = ctx["pid"]
    out = hotpatch.rollback(
        pid,
        ctx["patch_id"],
        journal_dir=ctx["journal_dir"],
        retry=hotpatch.Retry(attempts=ctx["attempts"]),
        unload=ctx["unload"],
    )
    echo(f"rolled back {out.patch_id} in {pid}: {_pauses(out)}")


HOTPATCH = Group(
    "hotpatch",
    "Application hot patching: fix functions of a running process.",
    (
        Cmd(
            "build",
            "Compile SOURCE into a .yhp patch for TARGET (gcc -fPIC -shared + manifest).",
            build,
            (
                Arg("source", "patch source (C) using YUNHAN_PATCH", kind=Path),
                Opt(("--target",), "target", "binary or library to patch", Path, required=True),
                Opt(("-o", "--output"), "output", "patch file to write", Path, required=True),
                Opt(("--id",), "patch_id", "patch id (default: name)"),
                Opt(("--cflags",), "cflags", "extra compiler flags", default="-O2"),
            ),
        ),
        Cmd(
            "apply",
            "Apply PATCH to the running process PID.",
            apply,
            (
                Arg("pid", "the process", kind=int),
                Arg("patch", "the .yhp file", kind=Path),
                JOURNAL,
                ATTEMPTS,
            ),
        ),
        Cmd(
            "list",
            "List patches recorded for PID (or for every process).",
            list_,
            (
                Arg("pid", "the process", kind=int, optional=True),
                JOURNAL,
                Opt(("--json",), "as_json", "machine-readable output", bool),
            ),
        ),
        Cmd(
            "rollback",
            "Roll back the top patch of PID (or PATCH_ID, if nothing is stacked on it).",
            rollback,
            (
                Arg("pid", "the process", kind=int),
                Arg("patch_id", "patch id (default: the top)", optional=True),
                JOURNAL,
                ATTEMPTS,
                Opt(
                    ("--unload",),
                    "unload",
                    "also unload the patch code (unsafe if it registered callbacks)",
                    bool,
                ),
            ),
        ),
    ),
)


if __name__ == "__main__":
    from yunhan.cli.command import run

    sys.exit(run(HOTPATCH, sys.argv[1:]))
