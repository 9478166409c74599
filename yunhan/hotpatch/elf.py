"""What the loader needs to know about an ELF file: build-id, function symbols, bytes.

Everything here reads files only; nothing touches a process.  Results are cached per file
identity (device, inode, size, mtime) because one apply asks the same questions about the
same object several times and a benchmark applies hundreds of patches to one target.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import capstone
from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection

from yunhan.errors import HotpatchError

ENDBR64 = bytes.fromhex("f30f1efa")


@dataclass(frozen=True)
class FuncSymbol:
    """A function symbol: link-time address (`value`, before the load base) and size."""

    name: str
    value: int
    size: int
    table: str  # ".dynsym" or ".symtab"


@dataclass(frozen=True)
class ElfInfo:
    """The facts about one ELF file the loader uses; immutable and cheap to share."""

    path: str
    machine: str
    elf_type: str  # ET_EXEC or ET_DYN
    build_id: str | None
    soname: str | None
    first_load_vaddr: int
    functions: dict[str, FuncSymbol]
    # (vaddr, file offset, file size) of every PT_LOAD, to read code from the file.
    segments: tuple[tuple[int, int, int], ...]

    def function(self, name: str) -> FuncSymbol | None:
        return self.functions.get(name)

    def cold_parts(self, name: str) -> list[FuncSymbol]:
        """The pieces gcc split off a function (`name.cold`, `name.cold.N`)."""
        prefix = name + ".cold"
        return [s for n, s in self.functions.items() if n == prefix or n.startswith(prefix + ".")]

    def read(self, vaddr: int, size: int) -> bytes:
        """The bytes the file puts at link-time address `vaddr` (code as built)."""
        for seg_vaddr, offset, filesz in self.segments:
            if seg_vaddr <= vaddr and vaddr + size <= seg_vaddr + filesz:
                with open(self.path, "rb") as f:
                    f.seek(offset + vaddr - seg_vaddr)
                    return f.read(size)
        raise HotpatchError(
            f"{self.path}: address {vaddr:#x}+{size} is not in a loaded segment",
            path=self.path,
        )


def load(path: str) -> ElfInfo:
    """Parse `path`, cached by file identity (device, inode, size, mtime), not by name:
    the same library reached through two /proc/PID/map_files links is parsed once."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise HotpatchError(f"cannot read {path}: {exc.strerror}", path=path) from exc
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    info = _cache.get(key)
    if info is None:
        info = _cache[key] = _parse(path)
    return info if info.path == path else dataclasses.replace(info, path=path)


_cache: dict[tuple[int, int, int, int], ElfInfo] = {}


def _parse(path: str) -> ElfInfo:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            build_id = None
            for sec in elf.iter_sections():
                if not isinstance(sec, NoteSection):
                    continue
                for note in sec.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        build_id = note["n_desc"]
            soname = None
            dyn = elf.get_section_by_name(".dynamic")
            if isinstance(dyn, DynamicSection):
                for tag in dyn.iter_tags():
                    if tag.entry.d_tag == "DT_SONAME":
                        soname = str(getattr(tag, "soname", "")) or None
            functions: dict[str, FuncSymbol] = {}
            # .symtab last: it also holds static functions and wins for duplicate names,
            # since both tables agree on exported ones.
            for table in (".dynsym", ".symtab"):
                symtab = elf.get_section_by_name(table)
                if not isinstance(symtab, SymbolTableSection):
                    continue
                for sym in symtab.iter_symbols():
                    if (
                        sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC")
                        and sym["st_shndx"] != "SHN_UNDEF"
                        and sym.name
                    ):
                        name = sym.name.split("@", 1)[0]
                        if sym["st_info"]["type"] == "STT_GNU_IFUNC":
                            # The symbol is the resolver, not the code callers reach.
                            functions.setdefault(name, FuncSymbol(name, -1, 0, table))
                            continue
                        functions[name] = FuncSymbol(name, sym["st_value"], sym["st_size"], table)
            segments = tuple(
                (seg["p_vaddr"], seg["p_offset"], seg["p_filesz"])
                for seg in elf.iter_segments()
                if seg["p_type"] == "PT_LOAD"
            )
            executable = any(s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR for s in elf.iter_sections())
            if not segments or not executable:
                raise HotpatchError(f"{path}: no loadable code", path=path)
            first = min(segments)[0]
            return ElfInfo(
                path=path,
                machine=elf["e_machine"],
                elf_type=elf["e_type"],
                build_id=build_id,
                soname=soname,
                first_load_vaddr=first,
                functions=functions,
                segments=segments,
            )
    except (ELFError, OSError) as exc:
        raise HotpatchError(f"{path}: not a readable ELF file ({exc})", path=path) from exc


_RT_SIGRETURN = bytes.fromhex("48c7c00f0000000f05")  # mov $15, %rax; syscall
_restorers: dict[str, int | None] = {}


def signal_restorer(info: ElfInfo) -> int | None:
    """Link-time address of libc's signal-return trampoline (`__restore_rt`), or None.

    It is what a signal handler returns to, so finding it on a stack marks a signal frame,
    and in that frame the PC the signal interrupted. The symbol is local to libc (absent
    from .dynsym), so it is found by its two instructions, once per libc build.
    """
    key = info.build_id or info.path
    if key not in _restorers:
        with open(info.path, "rb") as f:
            data = f.read()
        at = data.find(_RT_SIGRETURN)
        found = None
        if at >= 0 and data.find(_RT_SIGRETURN, at + 1) < 0:
            for vaddr, offset, filesz in info.segments:
                if offset <= at < offset + filesz:
                    found = vaddr + at - offset
        _restorers[key] = found
    return _restorers[key]


_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_md.detail = True


def return_sites(code: bytes, address: int) -> frozenset[int]:
    """Addresses right after each call instruction in `code` (loaded at `address`).

    A stack word equal to one of these is a return address into the function; matching
    only these (and not every word that falls in the function's range) keeps stale stack
    slots and stored function pointers from making a function look active forever.
    """
    sites = set()
    offset = 0
    while offset < len(code):
        decoded = False
        for insn in _md.disasm(code[offset:], address + offset):
            decoded = True
            if capstone.CS_GRP_CALL in insn.groups:
                sites.add(insn.address + insn.size)
            offset = insn.address + insn.size - address
        if not decoded:
            offset += 1  # data or padding capstone cannot decode: step over it
    return frozenset(sites)
