"""A function's source as it travels: a tar.gz, packed by the CLI, checked by the API.

The API checks an upload whole before anything is written (`check_bundle`): read in
memory, member by member, never extracted to disk, so that a hostile archive cannot write
outside a directory or fill one. Refused: absolute paths and `..`, links and devices, more
than `MAX_UNPACKED` bytes or `MAX_MEMBERS` entries once unpacked (a gzip bomb stops at the
cap, not at the end of the stream), a syntax error (file:line), no module for the handler,
and a module that binds no name for the handler at its top level (a static check: the
host's deploy imports it in a sandboxed worker and checks again).
"""

from __future__ import annotations

import ast
import gzip
import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from yunhan.errors import ValidationError
from yunhan.functions.deploy import module_candidates, syntax_errors

MAX_UNPACKED = 50 * 1024 * 1024  # bytes of files, unpacked
MAX_PACKED = 50 * 1024 * 1024  # bytes of the tar.gz as uploaded
MAX_MEMBERS = 10_000
_SKIP = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache"}


def pack(source: Path) -> bytes:
    """A tar.gz of `source`: one .py file (at the top of the archive), or a directory's
    contents (relative paths; caches and VCS dirs skipped). Reproducible: the same files
    give the same bytes, hence the same sha256. Links are refused, as the host refuses
    them."""
    buf = io.BytesIO()
    if not source.exists():
        raise ValidationError(f"source {source} does not exist", field="source")
    files: list[tuple[str, Path]]
    if source.is_dir():
        files = []
        for p in sorted(source.rglob("*")):
            rel = p.relative_to(source)
            if any(part in _SKIP for part in rel.parts) or p.suffix == ".pyc":
                continue
            if p.is_symlink():
                raise ValidationError(f"source {source}: {rel} is a symbolic link", field="source")
            if p.is_file():
                files.append((rel.as_posix(), p))
    else:
        files = [(source.name, source)]
    # mtime=0: no timestamp in the gzip header either.
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _member_path(name: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/"):
        raise ValidationError(f"the source archive has an absolute path: {name}", field="source")
    if ".." in p.parts:
        raise ValidationError(f"the source archive has a path with '..': {name}", field="source")
    return p.as_posix()


def read_sources(tar_gz: bytes) -> dict[str, bytes]:
    """Every regular file of the archive (relative path -> bytes), checked as the module
    docstring says (ValidationError on the first problem)."""
    if len(tar_gz) > MAX_PACKED:
        raise ValidationError(
            f"the source archive is {len(tar_gz)} bytes; at most {MAX_PACKED}", field="source"
        )
    out: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_gz), mode="r:gz") as tar:
            for n, m in enumerate(tar, 1):
                if n > MAX_MEMBERS:
                    raise ValidationError(
                        f"the source archive has more than {MAX_MEMBERS} entries",
                        field="source",
                    )
                name = _member_path(m.name)
                if m.isdir():
                    continue
                if not m.isreg():
                    raise ValidationError(
                        f"the source archive has {name}, which is not a regular file "
                        "(links and devices are not allowed)",
                        field="source",
                    )
                total += m.size
                if total > MAX_UNPACKED:
                    raise ValidationError(
                        f"the source is more than {MAX_UNPACKED // (1024 * 1024)} MB unpacked",
                        field="source",
                    )
                f = tar.extractfile(m)
                out[name] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ValidationError(f"the source is not a tar.gz archive: {exc}", field="source") from exc
    return out


def _binds(tree: ast.Module, func: str) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == func:
                return True
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if any(isinstance(x, ast.Name) and x.id == func for x in ast.walk(t)):
                    return True
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for a in node.names:
                if a.name == "*" or (a.asname or a.name.split(".")[0]) == func:
                    return True
        elif isinstance(node, ast.If | ast.Try | ast.With):
            return True  # bound conditionally: left to the import check on the host
    return False


def check_bundle(tar_gz: bytes, handler: str) -> dict[str, bytes]:
    """Refuse a function's source whole (ValidationError) unless it unpacks safely,
    compiles, and has the handler's module binding the handler's name. Returns the files."""
    files = read_sources(tar_gz)
    py = {k: v.decode(errors="replace") for k, v in files.items() if k.endswith(".py")}
    bad = syntax_errors(py)
    if bad:
        raise ValidationError(
            f"syntax error in the source: {'; '.join(bad)}", field="source", errors=bad
        )
    module, _, func = handler.rpartition(".")
    found = [c for c in module_candidates(module) if c in py]
    if not found:
        raise ValidationError(
            f"handler {handler!r}: no module {module!r} in the source "
            f"(looked for {' and '.join(module_candidates(module))})",
            field="handler",
        )
    if not _binds(ast.parse(py[found[0]]), func):
        raise ValidationError(
            f"handler {handler!r}: {found[0]} defines no {func!r} "
            f"(expected def {func}(event, context))",
            field="handler",
        )
    return files
