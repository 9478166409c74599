"""Folding a whole journal into base.img: what unprotecting a volume does.

An unprotected volume is served in `plain` mode, which writes base.img in place; a journal
left beside it would still override those blocks at the next protected start. So before
plain mode every block the journal maps is written into base.img (zeroed ranges punched),
base.img is synced, and only then are the journal's files removed.

A crash at any step leaves a volume that reads the same: until the removal, the journal
maps each folded block to the very content base.img now has; during it, a header log
without its data log ends at its first record (its data is "outside the data log"), and a
data log without headers is never read.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from yunhan.volume import journal as j

_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2


def _punch(fd: int, off: int, length: int) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if libc.fallocate(fd, mode, ctypes.c_long(off), ctypes.c_long(length)) != 0:
        os.pwrite(fd, bytes(length), off)  # a filesystem without holes: write the zeros


def journal_files(directory: Path) -> list[Path]:
    names = ("journal.", "data.", "ck.")
    return sorted(
        p
        for p in directory.iterdir()
        if p.name.startswith(names) or p.name in (j.SEGMENTS_FILE, "remap")
    )


def fold_all(directory: str | os.PathLike[str], volume_size: int) -> int:
    """Write the journal of `directory` into its base.img and remove it; returns the number
    of blocks written. Nothing may serve the directory meanwhile."""
    d = Path(directory)
    index = j.index_at(d, volume_size, None, verify_data=True)
    blocks = index.blocks
    written = 0
    fd = os.open(d / j.BASE_FILE, os.O_RDWR)
    try:
        i, n = 0, len(blocks)
        while i < n:
            kind = blocks[i]
            if kind == j.BASE:
                i += 1
                continue
            k = i
            while k < n and k - i < 256 and (blocks[k] == j.ZEROED) == (kind == j.ZEROED):
                if blocks[k] == j.BASE:
                    break
                k += 1
            if kind == j.ZEROED:
                _punch(fd, i * j.BLOCK, (k - i) * j.BLOCK)
            else:
                os.pwrite(fd, j.read_blocks(d, index, i, k - i), i * j.BLOCK)
            written += k - i
            i = k
        os.fsync(fd)
    finally:
        os.close(fd)
    for p in journal_files(d):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return written
