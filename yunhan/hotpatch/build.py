"""`yunhan hotpatch build`: compile a patch source into a .yhp with its manifest."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from yunhan.errors import HotpatchError, ValidationError
from yunhan.hotpatch import elf
from yunhan.hotpatch.manifest import (
    RECORDS,
    SECTION,
    Manifest,
    Replacement,
    code_digest,
    parse_records,
    read_section,
)


def include_dir() -> Path:
    """The folder holding <yunhan/hotpatch.h>, put on the compiler's include path."""
    return Path(str(resources.files("yunhan.hotpatch") / "include"))


def _run(argv: list[str]) -> None:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise HotpatchError(f"{argv[0]} not found: install it (gcc, binutils)") from exc
    if p.returncode != 0:
        raise HotpatchError(
            f"{Path(argv[0]).name} failed:\n{p.stderr.strip()}", argv=argv, rc=p.returncode
        )


def build(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    patch_id: str | None = None,
    cc: str = "gcc",
    cflags: tuple[str, ...] = ("-O2",),
) -> Manifest:
    """Compile `source` against `target` into `output` and return the embedded manifest.

    Refuses (nothing written) if the target has no build-id, if the source declares no
    YUNHAN_PATCH, or if an old symbol is not a patchable function of the target.
    """
    target_info = elf.load(str(target))
    if not target_info.build_id:
        raise ValidationError(
            f"{target}: no GNU build-id note; cannot tie a patch to this build "
            "(link it with -Wl,--build-id)",
            target=str(target),
        )
    if target_info.machine != "EM_X86_64":
        raise ValidationError(f"{target}: {target_info.machine} is not x86_64")
    out = Path(output)
    pid_ = patch_id or out.name.removesuffix(".yhp")
    with tempfile.TemporaryDirectory(prefix="yunhan-hotpatch-") as tmp:
        so = os.path.join(tmp, "patch.so")
        _run([cc, "-fPIC", "-shared", *cflags, "-I", str(include_dir()), str(source), "-o", so])
        records = read_section(so, RECORDS)
        if not records:
            raise ValidationError(f"{source}: declares no YUNHAN_PATCH(old_symbol, new_function)")
        pairs = parse_records(records)
        patch_info = elf.load(so)
        replacements = []
        seen: set[str] = set()
        for old, new in pairs:
            if old in seen:
                raise ValidationError(f"{source}: {old} is replaced twice", symbol=old)
            seen.add(old)
            sym = target_info.function(old)
            if sym is None:
                raise ValidationError(
                    f"{old} is not a function in {target} (neither .dynsym nor .symtab; "
                    "a stripped binary has no static symbols)",
                    symbol=old,
                )
            if sym.value < 0:
                raise ValidationError(
                    f"{old} in {target} is an IFUNC resolver: patch the implementation "
                    "it selects instead",
                    symbol=old,
                )
            if patch_info.function(new) is None:
                raise ValidationError(f"{new} is not a function in the patch", symbol=new)
            replacements.append(Replacement(old, new, sym.value, sym.size))
        manifest = Manifest(
            patch_id=pid_,
            target_path=os.path.abspath(target),
            target_name=target_info.soname or Path(target).name,
            build_id=target_info.build_id,
            replacements=tuple(replacements),
            digest=code_digest(so),
        )
        mfile = os.path.join(tmp, "manifest.json")
        Path(mfile).write_text(manifest.to_json())
        tmp_out = os.path.join(tmp, "out.yhp")
        _run(
            [
                shutil.which("objcopy") or "objcopy",
                f"--add-section={SECTION}={mfile}",
                f"--set-section-flags={SECTION}=noload,readonly",
                so,
                tmp_out,
            ]
        )
        shutil.copyfile(tmp_out, out)
    return manifest
