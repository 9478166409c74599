"""A function version's code on the host: copied, checked, compiled and made read-only.

Layout under the runtime's state dir:

    code/                      root 0711   (traversable, not listable)
    code/<name>/               root:<fn gid> 0750
    code/<name>/v<version>/    root:<fn gid> 0750, files 0640, compiled __pycache__

Read-only by ownership rather than by a read-only bind mount: the worker's uid is not the
owner, so it can neither write nor chmod; the group bit lets that one function read, and
no other function's uid (nor anyone else) can. A bind mount would need a mount namespace
per worker, which costs a copy of the host's mount table at each cold start and pins
every namespace file mounted on the host (/run/netns/*) for as long as the worker lives.
"""

from __future__ import annotations

import contextlib
import os
import py_compile
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from yunhan.errors import ValidationError
from yunhan.functions.spec import FunctionSpec


def syntax_errors(sources: Mapping[str, str]) -> list[str]:
    """ "file:line: message" for each source (relative path -> text) that does not compile."""
    out: list[str] = []
    for rel, text in sorted(sources.items()):
        try:
            compile(text, rel, "exec", dont_inherit=True)
        except SyntaxError as exc:
            out.append(f"{rel}:{exc.lineno}: {exc.msg}")
        except ValueError as exc:  # null bytes
            out.append(f"{rel}: {exc}")
    return out


def module_candidates(module: str) -> list[str]:
    """The files (relative to the code dir) that may hold `module`."""
    base = module.replace(".", "/")
    return [f"{base}.py", f"{base}/__init__.py"]


def _py_files(root: Path) -> Iterable[Path]:
    return (p for p in root.rglob("*.py") if p.is_file())


def function_dir(state_dir: Path, name: str) -> Path:
    return state_dir / "code" / name


def code_dir(state_dir: Path, spec: FunctionSpec) -> Path:
    return function_dir(state_dir, spec.name) / f"v{spec.version}"


def install(source: Path, dest: Path, gid: int, spec: FunctionSpec) -> None:
    """Copy `source` (a .py file or a directory) to `dest`, refusing it whole
    (ValidationError, nothing left behind) when a file does not compile or the handler's
    module is missing. Compiles .pyc as root so that workers never write."""
    if dest.exists():
        raise ValidationError(
            f"{spec.key} is already deployed: versions are immutable", field="version"
        )
    if not source.exists():
        raise ValidationError(f"source {source} does not exist", field="source")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.chown(dest.parent, 0, gid)
    dest.parent.chmod(0o750)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if source.is_dir():
            # Links are copied as links and then refused: followed (as root) they
            # would copy whatever they point at on the host into the function.
            shutil.copytree(source, tmp, symlinks=True)
            links = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_symlink()]
            if links:
                raise ValidationError(
                    f"{spec.key}: symbolic links are not allowed in the source: "
                    + ", ".join(sorted(links)),
                    field="source",
                )
        else:
            tmp.mkdir()
            shutil.copy2(source, tmp / source.name)
        files = {
            str(p.relative_to(tmp)): p.read_bytes().decode(errors="replace") for p in _py_files(tmp)
        }
        bad = syntax_errors(files)
        if bad:
            raise ValidationError(
                f"{spec.key}: syntax error in the source: {'; '.join(bad)}",
                field="source",
                errors=bad,
            )
        if not any((tmp / c).is_file() for c in module_candidates(spec.module)):
            raise ValidationError(
                f"handler {spec.handler!r}: no module {spec.module!r} in the source "
                f"(looked for {' and '.join(module_candidates(spec.module))})",
                field="handler",
            )
        for p in _py_files(tmp):
            py_compile.compile(str(p), doraise=True)
        _lock_down(tmp, gid)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            dest.parent.rmdir()  # a function's first version, refused: no trace of it
        raise


def _lock_down(root: Path, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chown(dirpath, 0, gid)
        os.chmod(dirpath, 0o750)
        for f in filenames:
            p = os.path.join(dirpath, f)
            os.chown(p, 0, gid, follow_symlinks=False)
            os.chmod(p, 0o640)
        del dirnames  # walked on


def remove(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    with contextlib.suppress(OSError):
        dest.parent.rmdir()  # the function's dir, when its last version goes


def deployed_gids(state_dir: Path) -> dict[int, str]:
    """gid (= uid) -> function, read back from the code dirs: the uid table survives a
    restart of the runtime without a file of its own."""
    out: dict[int, str] = {}
    root = state_dir / "code"
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and not d.name.startswith("."):
                out[d.stat().st_gid] = d.name
    return out
