"""`yunhan hotpatch build|apply|list|rollback` (also `python -m yunhan.cli.hotpatch`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from yunhan import hotpatch
from yunhan.errors import YunhanError

app = typer.Typer(help="Application hot patching: fix functions of a running process.")

JournalOpt = Annotated[
    Path | None,
    typer.Option(
        "--journal-dir",
        help="Journal folder (default $YUNHAN_HOME/hotpatch or /var/lib/yunhan/hotpatch).",
    ),
]


def _fail(exc: YunhanError) -> typer.Exit:
    typer.echo(f"error: {exc.message}", err=True)
    return typer.Exit(1)


@app.command()
def build(
    source: Annotated[Path, typer.Argument(help="Patch source (C) using YUNHAN_PATCH.")],
    target: Annotated[Path, typer.Option("--target", help="Binary or library to patch.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Patch file to write.")],
    patch_id: Annotated[str | None, typer.Option("--id", help="Patch id (default: name).")] = None,
    cflags: Annotated[str, typer.Option("--cflags", help="Extra compiler flags.")] = "-O2",
) -> None:
    """Compile SOURCE into a .yhp patch for TARGET (gcc -fPIC -shared + manifest)."""
    try:
        m = hotpatch.build(source, target, output, patch_id=patch_id, cflags=tuple(cflags.split()))
    except YunhanError as exc:
        raise _fail(exc) from exc
    for r in m.replacements:
        typer.echo(f"{m.patch_id}: {r.old} -> {r.new}")
    typer.echo(f"wrote {output} (target {m.target_name}, build-id {m.build_id})")


@app.command()
def apply(
    pid: int,
    patch: Path,
    journal_dir: JournalOpt = None,
    attempts: Annotated[int, typer.Option(help="Switch attempts while functions are active.")] = 30,
) -> None:
    """Apply PATCH to the running process PID."""
    try:
        out = hotpatch.apply(
            pid, patch, journal_dir=journal_dir, retry=hotpatch.Retry(attempts=attempts)
        )
    except YunhanError as exc:
        raise _fail(exc) from exc
    for s in out.sites:
        typer.echo(f"{out.patch_id}: {s.symbol} @ {s.write_addr:#x} -> {s.new_func:#x}")
    typer.echo(
        f"applied {out.patch_id} to {pid}: paused {out.pause_ms:.3f} ms, attempt {out.attempts}"
    )


def _record_row(r: hotpatch.journal.PatchRecord) -> dict[str, object]:
    return {
        "patch_id": r.patch_id,
        "state": r.state,
        "target": r.target,
        "functions": [s.symbol for s in r.sites],
    }


@app.command("list")
def list_(
    pid: Annotated[int | None, typer.Argument()] = None,
    journal_dir: JournalOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List patches recorded for PID (or for every process)."""
    try:
        procs = hotpatch.list_patches(pid, journal_dir=journal_dir)
    except YunhanError as exc:
        raise _fail(exc) from exc
    if as_json:
        rows = [
            {
                "pid": p.pid,
                "alive": p.alive,
                "patches": [_record_row(r) for r in p.patches],
            }
            for p in procs
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    for p in procs:
        typer.echo(f"pid {p.pid}{'' if p.alive else ' (exited)'}")
        for r in p.patches:
            funcs = ", ".join(s.symbol for s in r.sites)
            typer.echo(f"  {r.patch_id:24} {r.state:13} {Path(r.target).name}: {funcs}")


@app.command()
def rollback(
    pid: int,
    patch_id: Annotated[str | None, typer.Argument(help="Patch id (default: the top).")] = None,
    journal_dir: JournalOpt = None,
    attempts: Annotated[int, typer.Option(help="Switch attempts while functions are active.")] = 30,
    unload: Annotated[
        bool, typer.Option(help="Also unload the patch code (unsafe if it registered callbacks).")
    ] = False,
) -> None:
    """Roll back the top patch of PID (or PATCH_ID, if nothing is stacked on it)."""
    try:
        out = hotpatch.rollback(
            pid,
            patch_id,
            journal_dir=journal_dir,
            retry=hotpatch.Retry(attempts=attempts),
            unload=unload,
        )
    except YunhanError as exc:
        raise _fail(exc) from exc
    typer.echo(f"rolled back {out.patch_id} in {pid}: paused {out.pause_ms:.3f} ms")


if __name__ == "__main__":
    app()
