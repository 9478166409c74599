"""The few bpf(2) commands the fast path needs, through ctypes (no libbpf binding).

Objects are loaded by `bpftool prog loadall` (yunhan.net.fastpath); from then on the agent
works with pinned objects only: open them by path, read and write map entries, and attach
programs to devices with tcx (kernel 6.6+), which keeps several programs in order on one
hook, so a new generation is attached before the old one leaves (no gap). Every failure
is an OSError with the kernel's errno.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
from collections.abc import Iterator

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
OBJ_GET, PROG_ATTACH, PROG_DETACH = 7, 8, 9
PROG_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, PROG_QUERY = 13, 15, 16
TCX_INGRESS = 46
ANY = 0


def _call(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    r = _libc.syscall(_NR_BPF, cmd, attr, len(attr))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf({cmd}): {os.strerror(e)}")
    return int(r)


def _attr(*fields: tuple[int, int, int]) -> ctypes.Array[ctypes.c_char]:
    """A zeroed 128-byte `union bpf_attr` with (offset, size, value) integers set."""
    buf = ctypes.create_string_buffer(128)
    for off, size, value in fields:
        ctypes.memmove(ctypes.addressof(buf) + off, value.to_bytes(size, "little"), size)
    return buf


def _addr(b: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(b)


def obj_get(path: str) -> int:
    """A new fd of the pinned object at `path` (the caller closes it)."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    return _call(OBJ_GET, _attr((0, 8, _addr(p))))


class Map:
    """A pinned map with fixed key and value sizes; values of a per-CPU map come back as
    one bytes per possible CPU."""

    def __init__(self, path: str, key_size: int, value_size: int, percpu: bool = False):
        self.fd = obj_get(path)
        self.key_size, self.value_size = key_size, value_size
        self.cpus = _possible_cpus() if percpu else 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _vsize(self) -> int:
        return self.value_size * self.cpus

    def lookup(self, key: bytes) -> bytes | None:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(self._vsize())
        try:
            _call(MAP_LOOKUP_ELEM, _attr((0, 4, self.fd), (8, 8, _addr(k)), (16, 8, _addr(v))))
        except FileNotFoundError:
            return None
        return v.raw

    def update(self, key: bytes, value: bytes) -> None:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(value, self._vsize())
        _call(
            MAP_UPDATE_ELEM,
            _attr((0, 4, self.fd), (8, 8, _addr(k)), (16, 8, _addr(v)), (24, 8, ANY)),
        )

    def delete(self, key: bytes) -> None:
        k = ctypes.create_string_buffer(key, self.key_size)
        with contextlib.suppress(FileNotFoundError):  # already gone: what was wanted
            _call(MAP_DELETE_ELEM, _attr((0, 4, self.fd), (8, 8, _addr(k))))

    def keys(self) -> Iterator[bytes]:
        cur: ctypes.Array[ctypes.c_char] | None = None
        while True:
            nxt = ctypes.create_string_buffer(self.key_size)
            at = 0 if cur is None else _addr(cur)
            try:
                _call(MAP_GET_NEXT_KEY, _attr((0, 4, self.fd), (8, 8, at), (16, 8, _addr(nxt))))
            except FileNotFoundError:
                return
            yield nxt.raw
            cur = nxt

    def items(self) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                out[k] = v
        return out

    def percpu_sum(self, key: bytes) -> int:
        """The sum over CPUs of a per-CPU u64 value."""
        raw = self.lookup(key) or b""
        return sum(
            int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), self.value_size)
        )


def _possible_cpus() -> int:
    """Per-CPU maps hold one value per *possible* CPU (not online, not os.cpu_count())."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


# -- tcx: programs on a device's ingress, in the calling thread's network namespace ------


def tcx_attach(ifindex: int, prog_fd: int) -> None:
    """Append the program to the device's tcx ingress (after any already there)."""
    _call(PROG_ATTACH, _attr((0, 4, ifindex), (4, 4, prog_fd), (8, 4, TCX_INGRESS)))


def tcx_detach(ifindex: int, prog_fd: int) -> None:
    _call(PROG_DETACH, _attr((0, 4, ifindex), (4, 4, prog_fd), (8, 4, TCX_INGRESS)))


def tcx_query(ifindex: int) -> list[int]:
    """The ids of the programs on the device's tcx ingress, in the order they run."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _attr((0, 4, ifindex), (4, 4, TCX_INGRESS), (16, 8, ctypes.addressof(ids)), (24, 4, 64))
    _call(PROG_QUERY, attr)
    count = int.from_bytes(attr.raw[24:28], "little")
    return list(ids[:count])


def prog_fd_by_id(prog_id: int) -> int:
    return _call(PROG_GET_FD_BY_ID, _attr((0, 4, prog_id)))


def prog_name(fd: int) -> str:
    """The program's name (15 characters at most: the kernel cuts it)."""
    info = ctypes.create_string_buffer(256)
    _call(OBJ_GET_INFO_BY_FD, _attr((0, 4, fd), (4, 4, len(info)), (8, 8, _addr(info))))
    return info.raw[64:80].split(b"\0", 1)[0].decode()


def prog_id(fd: int) -> int:
    info = ctypes.create_string_buffer(256)
    _call(OBJ_GET_INFO_BY_FD, _attr((0, 4, fd), (4, 4, len(info)), (8, 8, _addr(info))))
    return int.from_bytes(info.raw[4:8], "little")
