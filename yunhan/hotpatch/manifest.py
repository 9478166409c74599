"""The patch description: what a .yhp file replaces, in which object, for which build.

A .yhp file is the patch shared object itself with this manifest (JSON) in a non-loaded
section `.yunhan.manifest`: one file to ship, and the target's dlopen maps only the code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from yunhan.errors import HotpatchError, ValidationError

FORMAT = 1
SECTION = ".yunhan.manifest"
RECORDS = ".yunhan.patches"


@dataclass(frozen=True)
class Replacement:
    old: str  # symbol in the target object
    new: str  # symbol in the patch object
    old_value: int  # link-time address of `old` in the target (checked again at apply)
    old_size: int


@dataclass(frozen=True)
class Manifest:
    patch_id: str
    target_path: str  # the file the patch was built against
    target_name: str  # its soname, or file name for an executable
    build_id: str
    replacements: tuple[Replacement, ...]
    digest: str  # sha256 of the compiled code, to tell two builds of one id apart

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "patch_id": self.patch_id,
                "target": {
                    "path": self.target_path,
                    "name": self.target_name,
                    "build_id": self.build_id,
                },
                "digest": self.digest,
                "replacements": [
                    {"old": r.old, "new": r.new, "old_value": r.old_value, "old_size": r.old_size}
                    for r in self.replacements
                ],
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise ValidationError(f"unsupported patch format {d.get('format')!r}")
            return cls(
                patch_id=d["patch_id"],
                target_path=d["target"]["path"],
                target_name=d["target"]["name"],
                build_id=d["target"]["build_id"],
                digest=d["digest"],
                replacements=tuple(
                    Replacement(r["old"], r["new"], int(r["old_value"]), int(r["old_size"]))
                    for r in d["replacements"]
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"malformed patch manifest: {exc}") from exc


def parse_records(data: bytes) -> list[tuple[str, str]]:
    """Decode the `.yunhan.patches` section: NUL-separated (old, new) name pairs."""
    names = [n.decode() for n in data.split(b"\0") if n]
    if len(names) % 2:
        raise ValidationError("corrupt .yunhan.patches section (odd number of names)")
    return list(zip(names[::2], names[1::2], strict=True))


def code_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_section(path: str, name: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            sec = ELFFile(f).get_section_by_name(name)
            return None if sec is None else sec.data()
    except (ELFError, OSError) as exc:
        raise HotpatchError(f"{path}: not a readable patch file ({exc})", path=path) from exc


def read_manifest(path: str) -> Manifest:
    """The manifest embedded in a .yhp file; ValidationError if there is none."""
    data = read_section(path, SECTION)
    if data is None:
        raise ValidationError(
            f"{path} has no {SECTION} section: build it with `yunhan hotpatch build`",
            path=path,
        )
    return Manifest.from_json(data.decode())
