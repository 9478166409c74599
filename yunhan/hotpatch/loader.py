"""apply / rollback / list: the shell around the pure planning core.

apply, in order (nothing is written into the target before the load step, nothing into
its code before the switch):
  1. preflight   process alive and not a zombie, x86_64, ptrace allowed, no other tracer,
                 target object mapped with the manifest's build-id, symbols resolve,
                 functions long enough, bytes in memory equal the ELF file's (or the jump
                 of the patch we stack on), no conflict with applied patches;
  2. load        borrow one thread (the others run), map a trampoline page near the
                 target, hand the patch over as a memfd, call the target's dlopen;
  3. journal     record every byte to be written and replaced, fsync;
  4. switch      stop all threads, refuse while any replaced function is active (retry
                 with backoff up to a bound), write the jumps, resume.
A refusal or failure after step 2 unloads the patch again, so the target is left as it was.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import itertools
import os
import platform
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from yunhan import procstat
from yunhan.errors import Conflict, HotpatchError, NotFound, YunhanError
from yunhan.hotpatch import elf, inject, journal, plan, procfs
from yunhan.hotpatch.journal import PatchRecord, Site
from yunhan.hotpatch.manifest import Manifest, read_manifest
from yunhan.hotpatch.switch import Retry, Switched, switch
from yunhan.hotpatch.world import World
from yunhan.procstat import ProcStat

PAGE = 4096
RTLD_NOW = 2
_SLOTS_AT = 16  # page layout: int3 at 0, trampoline slots from 16, strings from 3072
_STRINGS_AT = 3072
_MAX_SLOTS = (_STRINGS_AT - _SLOTS_AT) // plan.SLOT_LEN
DEFAULT_RETRY = Retry()


@dataclass
class Outcome:
    """What an apply or rollback did, for the CLI and the benchmark.

    Each attempt of the switch stops the whole process, the ones that found a replaced
    function active and let it run again included: `pauses_ms` has every stop in order,
    `pause_ms` is the longest of them (what one request could wait at once) and
    `stopped_ms` their sum. A rollback with nothing to write stops nothing (no pauses).
    """

    pid: int
    patch_id: str
    action: str
    pauses_ms: tuple[float, ...]
    sites: list[Site] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return len(self.pauses_ms)

    @property
    def pause_ms(self) -> float:
        return max(self.pauses_ms, default=0.0)

    @property
    def stopped_ms(self) -> float:
        return sum(self.pauses_ms)


def _ms(done: Switched) -> tuple[float, ...]:
    return tuple(p * 1000 for p in done.pauses)


# -- preflight ----------------------------------------------------------------------------


def preflight(pid: int) -> ProcStat:
    """Refuse early, with a message a person can act on, if we cannot touch `pid`."""
    if pid == os.getpid():
        raise HotpatchError("refusing to patch the loader's own process", pid=pid)
    st = procfs.proc_state(pid)
    if st.state in ("Z", "X"):
        raise HotpatchError(f"process {pid} is a zombie (exited, not yet reaped)", pid=pid)
    if platform.machine() != "x86_64":
        raise HotpatchError(f"the loader supports x86_64 only, not {platform.machine()}")
    try:
        with open(f"/proc/{pid}/exe", "rb") as f:
            head = f.read(20)
    except OSError as exc:
        raise HotpatchError(
            f"cannot read the executable of process {pid}: {exc.strerror}", pid=pid
        ) from exc
    if head[:4] != b"\x7fELF" or head[4] != 2 or int.from_bytes(head[18:20], "little") != 62:
        raise HotpatchError(f"process {pid} is not an x86_64 ELF process", pid=pid)
    try:
        scope = int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text())
    except (OSError, ValueError):
        scope = 0
    if scope >= 3:
        raise HotpatchError("ptrace is disabled on this host (kernel.yama.ptrace_scope=3)")
    if scope >= 1 and os.geteuid() != 0:
        raise HotpatchError(
            f"kernel.yama.ptrace_scope={scope}: attaching to process {pid} needs root "
            "(CAP_SYS_PTRACE)",
            pid=pid,
        )
    for tid in procfs.threads(pid):
        tracer = _live_tracer(pid, tid)
        if tracer:
            raise HotpatchError(
                f"thread {tid} of process {pid} is already traced by process {tracer} "
                "(a debugger?); detach it first",
                pid=pid,
                tracer=tracer,
            )
    return st


def _live_tracer(pid: int, tid: int, settle: float = 2.0) -> int:
    """The tracer of `tid`, once a tracer that is exiting has let go of it.

    A process that dies releases its file locks (exit_files) before the kernel detaches
    its tracees (exit_notify -> exit_ptrace): the loader that held the journal lock and
    was killed still shows as TracerPid for a moment after the lock is ours. Such a
    tracer (exiting, a zombie, or gone) is waited for, up to `settle` seconds; a live one
    is not.
    """
    deadline = time.monotonic() + settle
    while True:
        tracer = procfs.tracer_of(pid, tid)
        if not tracer or time.monotonic() > deadline:
            return tracer
        try:
            exiting = procfs.proc_state(tracer).exiting
        except NotFound:
            exiting = True
        if not exiting:
            return tracer
        time.sleep(0.01)  # the kernel detaches within the tracer's exit; poll briefly


@dataclass(frozen=True)
class _Object:
    info: elf.ElfInfo
    base: int
    mapping: procfs.Mapping


def _object_base(info: elf.ElfInfo, first: procfs.Mapping) -> int:
    return first.start - (info.first_load_vaddr & ~(PAGE - 1))


def _mapped_objects(pid: int, maps: list[procfs.Mapping]) -> dict[str, procfs.Mapping]:
    """File path -> its mapping at file offset 0 (where the ELF header is)."""
    out: dict[str, procfs.Mapping] = {}
    for m in maps:
        if m.path.startswith("/") and m.offset == 0 and m.inode and m.path not in out:
            out[m.path] = m
    return out


def locate(
    pid: int, maps: list[procfs.Mapping], manifest: Manifest, *, by_name_only: bool = False
) -> _Object:
    """The mapped object with the manifest's build-id (found by content, not by path).

    Objects named like the target are tried first; `by_name_only` tries only those (a
    quick scan of many processes), else every mapped file is checked (a renamed copy).
    """
    objects = _mapped_objects(pid, maps)
    name = manifest.target_name
    ordered = sorted(objects.items(), key=lambda kv: Path(kv[0]).name != name)
    seen = []
    for path, m in ordered:
        if by_name_only and Path(path).name != name:
            break
        try:
            info = elf.load(procfs.mapped_file(pid, m))
        except HotpatchError:
            continue
        if info.build_id == manifest.build_id:
            return _Object(info, _object_base(info, m), m)
        if Path(path).name == name or info.soname == name:
            seen.append(f"{path} has build-id {info.build_id}")
    detail = "; ".join(seen) if seen else f"{name} is not mapped"
    raise HotpatchError(
        f"build-id mismatch: patch {manifest.patch_id} is for {name} build-id "
        f"{manifest.build_id}, process {pid}: {detail}",
        pid=pid,
        build_id=manifest.build_id,
    )


def matching_processes(manifest: Manifest) -> list[int]:
    """Pids of the processes that map the manifest's target build: what an agent applies a
    patch to. Unreadable or vanishing processes are skipped."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            maps = procfs.read_maps(pid)
            locate(pid, maps, manifest, by_name_only=True)
        except (HotpatchError, NotFound, OSError):
            continue
        out.append(pid)
    return out


def _libc(pid: int, maps: list[procfs.Mapping]) -> tuple[elf.ElfInfo, int]:
    """The target's libc (which, since glibc 2.34, holds dlopen) and its load base."""
    for path, m in _mapped_objects(pid, maps).items():
        if os.path.basename(path).startswith("libc.so"):
            info = elf.load(procfs.mapped_file(pid, m))
            return info, _object_base(info, m)
    raise HotpatchError(f"process {pid} has no glibc mapped (a static binary?)", pid=pid)


def _libc_function(pid: int, maps: list[procfs.Mapping], name: str) -> int:
    info, base = _libc(pid, maps)
    sym = info.function(name)
    if sym is None or sym.value < 0:
        raise HotpatchError(f"the libc of process {pid} has no {name}() (glibc < 2.34?)")
    return base + sym.value


def _libc_restorer(pid: int, maps: list[procfs.Mapping]) -> int | None:
    info, base = _libc(pid, maps)
    at = elf.signal_restorer(info)
    return None if at is None else base + at


# -- the resolved, verified plan ----------------------------------------------------------


@dataclass
class _Target:
    symbol: str
    new_symbol: str
    start: int
    size: int
    file_bytes: bytes
    expected: bytes  # what memory must hold: the file's code, or the jump of the patch below
    write_addr: int
    old_ranges: list[tuple[int, int]]
    old_sites: frozenset[int]


def _resolve(
    mem: procfs.Memory, obj: _Object, manifest: Manifest, jr: journal.Journal
) -> list[_Target]:
    out = []
    for r in manifest.replacements:
        sym = obj.info.function(r.old)
        if sym is None or sym.value < 0:
            raise HotpatchError(f"{r.old} does not resolve in {obj.mapping.path}", symbol=r.old)
        if (sym.value, sym.size) != (r.old_value, r.old_size):
            raise HotpatchError(f"{r.old}: symbol differs from the manifest", symbol=r.old)
        start = obj.base + sym.value
        code = obj.info.read(sym.value, sym.size)
        ranges = [(start, start + sym.size)]
        sites = set(elf.return_sites(code, start))
        for cold in obj.info.cold_parts(r.old):
            cstart = obj.base + cold.value
            ranges.append((cstart, cstart + cold.size))
            sites |= elf.return_sites(obj.info.read(cold.value, cold.size), cstart)
        write_addr = start + 4 if code.startswith(elf.ENDBR64) else start
        # Too short even for the 5-byte form: refuse before loading anything.
        plan.plan_jump(r.old, start, sym.size, code, start, None)
        expected = bytearray(code)
        below = jr.top_site_at(write_addr)
        if below is not None:
            new = bytes.fromhex(below.new)
            expected[write_addr - start : write_addr - start + len(new)] = new
        actual = mem.read(start, sym.size)
        if actual != bytes(expected):
            raise HotpatchError(
                f"{r.old} at {start:#x} is not what {Path(obj.mapping.path).name} contains"
                f"{' under the patch below' if below else ''}: it was modified "
                "(hooked by another tool?); refusing to overwrite it",
                symbol=r.old,
                addr=start,
            )
        out.append(
            _Target(
                r.old,
                r.new,
                start,
                sym.size,
                code,
                bytes(expected),
                write_addr,
                ranges,
                frozenset(sites),
            )
        )
    return out


def _near_page(maps: list[procfs.Mapping], lo_addr: int, hi_addr: int) -> list[int]:
    """Free page addresses from which a rel32 reaches all of [lo_addr, hi_addr), nearest first.

    Gaps just above [heap] or below [stack] are skipped so the page never blocks their
    growth.
    """
    reach_lo = max(hi_addr - 2**31 + 2 * PAGE, 0x10000)
    reach_hi = lo_addr + 2**31 - 2 * PAGE
    spans = sorted(maps, key=lambda m: m.start)
    candidates = []
    for below, above in itertools.pairwise(spans):
        gap_lo, gap_hi = below.end + PAGE, above.start - 2 * PAGE  # one guard page each side
        if below.path == "[heap]" or above.path.startswith("[stack"):
            continue
        lo, hi = max(gap_lo, reach_lo), min(gap_hi, reach_hi)
        if lo > hi:
            continue
        # The page closest to the target inside this gap.
        pick = hi if hi < lo_addr else lo
        candidates.append(pick & ~(PAGE - 1))
    gap_lo = 0x10000
    if spans and spans[0].start - 2 * PAGE >= max(gap_lo, reach_lo):
        candidates.append((spans[0].start - 2 * PAGE) & ~(PAGE - 1))
    return sorted(candidates, key=lambda a: abs(a - lo_addr))[:8]


def _map_page(hj: inject.Hijack, maps: list[procfs.Mapping], lo: int, hi: int) -> int:
    prot = inject.PROT_READ | inject.PROT_EXEC
    flags = inject.MAP_PRIVATE | inject.MAP_ANONYMOUS
    for hint in _near_page(maps, lo, hi):
        noreplace = flags | inject.MAP_FIXED_NOREPLACE
        got = hj.syscall(inject.SYS_MMAP, hint, PAGE, prot, noreplace, -1, 0)
        if got == hint:
            return got
        if got >= 0:  # an old kernel took the hint as a hint only
            hj.syscall(inject.SYS_MUNMAP, got, PAGE)
    got = hj.syscall(inject.SYS_MMAP, 0, PAGE, prot, flags, -1, 0)
    if got < 0:
        raise HotpatchError(f"mmap in the target failed: {os.strerror(-got)}", errno=-got)
    return got


@dataclass
class _Loaded:
    handle: int
    base: int
    page: int
    memfd: int


def _load(
    pid: int,
    mem: procfs.Memory,
    maps: list[procfs.Mapping],
    yhp: bytes,
    manifest: Manifest,
    targets: list[_Target],
    timeout: float,
) -> _Loaded:
    dlopen = _libc_function(pid, maps, "dlopen")
    dlerror = _libc_function(pid, maps, "dlerror")
    dlclose = _libc_function(pid, maps, "dlclose")
    lo = min(t.start for t in targets)
    hi = max(t.start + t.size for t in targets)
    restorer = _libc_restorer(pid, maps)
    with inject.Hijack(pid, mem, timeout=timeout, restorer=restorer) as hj:
        page = _map_page(hj, maps, lo, hi)
        fd = -1
        try:
            # A nonce in the memfd name lets us recognise our own mapping after dlopen.
            tag = f"yunhan-hotpatch:{manifest.patch_id[:160]}:{secrets.token_hex(4)}"
            mem.write(page, b"\xcc")
            mem.write(page + _STRINGS_AT, tag.encode() + b"\0")
            hj.trap_addr = page
            fd = hj.syscall(
                inject.SYS_MEMFD_CREATE, page + _STRINGS_AT, inject.MFD_CLOEXEC | inject.MFD_EXEC
            )
            if fd == -errno.EINVAL:  # kernel older than 6.3: no MFD_EXEC, memfds are exec
                fd = hj.syscall(inject.SYS_MEMFD_CREATE, page + _STRINGS_AT, inject.MFD_CLOEXEC)
            if fd < 0:
                raise HotpatchError(f"memfd_create in the target failed: {os.strerror(-fd)}")
            inject.write_memfd(pid, fd, yhp)
            # /proc/self/fd/N names the memfd inside the target's own namespaces. The fd
            # stays open while the patch is loaded: glibc finds loaded objects by name, and
            # a reused fd number would hand us an older patch instead of loading this one.
            path = f"/proc/self/fd/{fd}".encode() + b"\0"
            mem.write(page + _STRINGS_AT + 256, path)
            handle = hj.call(dlopen, page + _STRINGS_AT + 256, RTLD_NOW)
            if handle == 0:
                msg = inject.read_cstring(mem, hj.call(dlerror)) or "unknown error"
                raise HotpatchError(f"dlopen of the patch in process {pid} failed: {msg}")
            base = int.from_bytes(mem.read(handle, 8), "little")  # link_map.l_addr
            mapped = [m.path for m in procfs.read_maps(pid) if m.contains(base)]
            if not mapped or not mapped[0].startswith(f"/memfd:{tag} "):
                hj.call(dlclose, handle)
                raise HotpatchError(
                    f"dlopen in process {pid} returned another object ({mapped}): "
                    "was a patch memfd closed by the application?"
                )
            return _Loaded(handle, base, page, fd)
        except BaseException:
            if fd >= 0:
                hj.syscall(inject.SYS_CLOSE, fd)
            hj.syscall(inject.SYS_MUNMAP, page, PAGE)
            raise


def _unload(pid: int, mem: procfs.Memory, loaded: _Loaded, timeout: float) -> None:
    """Undo `_load` when the switch never happened: nothing can be running the patch."""
    maps = procfs.read_maps(pid)
    dlclose = _libc_function(pid, maps, "dlclose")
    restorer = _libc_restorer(pid, maps)
    with inject.Hijack(pid, mem, timeout=timeout, restorer=restorer) as hj:
        hj.trap_addr = loaded.page
        hj.call(dlclose, loaded.handle)
        hj.syscall(inject.SYS_CLOSE, loaded.memfd)
        hj.syscall(inject.SYS_MUNMAP, loaded.page, PAGE)


# -- the switch ---------------------------------------------------------------------------


def _switch(
    pid: int,
    mem: procfs.Memory,
    maps: list[procfs.Mapping],
    guards: list[plan.Guard],
    writes: list[tuple[int, bytes, bytes]],
    retry: Retry,
) -> Switched:
    try:
        return switch(
            lambda: World(pid, mem, maps),
            mem,
            guards,
            writes,
            retry,
            restorer=_libc_restorer(pid, maps),
        )
    except HotpatchError as exc:
        raise HotpatchError(f"process {pid}: {exc.message}", pid=pid, **exc.details) from exc


# -- public operations --------------------------------------------------------------------

_MAX_FORK_DEPTH = 8


def inherit(pid: int, *, journal_dir: Path | None = None, _depth: int = 0) -> int:
    """Give a forked process the record of the patches it inherited; how many it got.

    A child forked from a patched process is a copy of its memory: it runs the patches
    (jumps, trampoline page, the loaded patch code) without a record of its own, so it
    could neither be rolled back nor told apart from a function someone else hooked. When
    `pid` has no record, its parent's applied patches are copied to it if, and only if,
    the child's bytes at every site are the parent's jumps (a child forked before the
    patch, or one that exec'd, does not carry them and gets nothing). The parent is
    looked at first the same way (a fork of a fork), a few levels up at most.
    """
    root = journal_dir or journal.default_dir()
    st = procstat.read(pid)
    if st is None or st.ppid <= 1 or _depth > _MAX_FORK_DEPTH:
        return 0
    if journal.load(root, pid, st.start_time).patches:
        return 0  # a record of its own: not ours to touch
    parent_st = procstat.read(st.ppid)
    if parent_st is None or parent_st.start_time > st.start_time:
        return 0  # the parent is gone (its pid may name a younger process now)
    inherit(st.ppid, journal_dir=root, _depth=_depth + 1)
    parent = journal.load(root, st.ppid, parent_st.start_time)
    stack = parent.stack
    if not stack or any(p.state != "applied" for p in stack):
        return 0  # nothing applied, or an operation in flight there: ask again later
    tops = {site.write_addr: site for p in stack for site in p.sites}  # the last wins
    try:
        with journal.locked(root, pid), procfs.Memory(pid) as mem:
            now = procstat.read(pid)
            if now is None or now.start_time != st.start_time:
                return 0
            for site in tops.values():
                jump = bytes.fromhex(site.new)
                if mem.read(site.write_addr, len(jump)) != jump:
                    return 0
            mine = journal.load(root, pid, st.start_time)
            if mine.patches:
                return 0
            mine.patches = [copy.deepcopy(p) for p in stack]
            mine.save()
    except (HotpatchError, NotFound, OSError):
        return 0  # it exited, or its memory cannot be read: nothing inherited
    return len(stack)


@contextlib.contextmanager
def _opened(pid: int) -> Iterator[tuple[ProcStat, procfs.Memory]]:
    """Preflight and open the memory of `pid`, under the journal lock: a concurrent
    invocation tracing the threads is waited for, not taken for a debugger, and a process
    that died while we waited cannot hand its journal to a new one with the same pid."""
    st = preflight(pid)
    with procfs.Memory(pid) as mem:
        if procfs.proc_state(pid).start_time != st.start_time:
            raise NotFound(f"process {pid} exited (its pid now names another)", pid=pid)
        yield st, mem


def apply(
    pid: int,
    patch_file: str | os.PathLike[str],
    *,
    journal_dir: Path | None = None,
    retry: Retry = DEFAULT_RETRY,
    timeout: float = 10.0,
) -> Outcome:
    """Apply a .yhp to a running process; HotpatchError/Conflict leave it as it was."""
    root = journal_dir or journal.default_dir()
    patch_file = str(patch_file)
    manifest = read_manifest(patch_file)
    patch_info = elf.load(patch_file)
    if patch_info.machine != "EM_X86_64":
        raise HotpatchError(f"{patch_file} is not an x86_64 patch")
    with open(patch_file, "rb") as f:
        yhp = f.read()
    if len(manifest.replacements) > _MAX_SLOTS:
        raise HotpatchError(f"a patch may replace at most {_MAX_SLOTS} functions")
    inherit(pid, journal_dir=root)
    with journal.locked(root, pid), _opened(pid) as (st, mem):
        jr = journal.load(root, pid, st.start_time)
        for p in jr.stack:
            if p.state != "applied":
                raise Conflict(
                    f"an operation on patch {p.patch_id} was interrupted ({p.state}): "
                    f"run `yunhan hotpatch rollback {pid} {p.patch_id}` first",
                    patch=p.patch_id,
                )
        maps = procfs.read_maps(pid)
        obj = locate(pid, maps, manifest)
        targets = _resolve(mem, obj, manifest, jr)
        provisional = [
            Site(t.symbol, t.start, t.write_addr, "", "00" * plan.REL32_LEN, "", 0, [], [], [], [])
            for t in targets
        ]
        jr.check_new(manifest.patch_id, provisional)

        loaded = _load(pid, mem, maps, yhp, manifest, targets, timeout)
        try:
            sites = _plan_sites(mem, loaded, patch_info, targets, jr)
            jr.check_new(manifest.patch_id, sites)
            record = PatchRecord(
                patch_id=manifest.patch_id,
                digest=manifest.digest,
                source=os.path.abspath(patch_file),
                target=obj.mapping.path,
                build_id=manifest.build_id,
                state="switching",
                handle=loaded.handle,
                base=loaded.base,
                page=loaded.page,
                memfd=loaded.memfd,
                sites=sites,
            )
            guards = jr.apply_guards(sites)  # before the record joins the stack
            jr.patches.append(record)
            jr.save()
            writes = [
                (s.write_addr, bytes.fromhex(s.original), bytes.fromhex(s.new)) for s in sites
            ]
            maps = procfs.read_maps(pid)
            try:
                done = _switch(pid, mem, maps, guards, writes, retry)
            except BaseException:
                record.state = "failed"
                jr.save()
                raise
        except BaseException as exc:
            try:
                _unload(pid, mem, loaded, timeout)
            except YunhanError as undo:  # keep the first error; say what is left behind
                exc.add_note(f"unloading the patch again failed too: {undo.message}")
            raise
        record.state = "applied"
        record.applied_at = journal.now()
        pauses = _ms(done)
        record.pauses_ms = list(pauses)
        record.pause_ms = max(pauses)
        record.attempts = len(pauses)
        jr.save()
        return Outcome(pid, manifest.patch_id, "applied", pauses, sites)


def _plan_sites(
    mem: procfs.Memory,
    loaded: _Loaded,
    patch_info: elf.ElfInfo,
    targets: list[_Target],
    jr: journal.Journal,
) -> list[Site]:
    sites = []
    for i, t in enumerate(targets):
        sym = patch_info.function(t.new_symbol)
        if sym is None:
            raise HotpatchError(f"{t.new_symbol} is not in the patch", symbol=t.new_symbol)
        new_addr = loaded.base + sym.value
        slot = loaded.page + _SLOTS_AT + i * plan.SLOT_LEN
        jump = plan.plan_jump(t.symbol, t.start, t.size, t.file_bytes, new_addr, slot)
        if jump.via_trampoline:
            mem.write(slot, plan.trampoline_slot(new_addr))
        # The bytes preflight verified, not a fresh read: a hook another tool installed
        # while the patch loaded must make the switch refuse, not be overwritten.
        at = jump.write_addr - t.start
        original = t.expected[at : at + len(jump.code)].hex()
        new_code = patch_info.read(sym.value, sym.size)
        sites.append(
            Site(
                symbol=t.symbol,
                func_addr=t.start,
                write_addr=jump.write_addr,
                original=original,
                new=jump.code.hex(),
                checksum=journal.checksum(original),
                new_func=new_addr,
                old_ranges=t.old_ranges,
                old_sites=sorted(t.old_sites),
                new_ranges=[(new_addr, new_addr + sym.size)],
                new_sites=sorted(elf.return_sites(new_code, new_addr)),
            )
        )
    return sites


def _patch_code_guard(
    mem: procfs.Memory, maps: list[procfs.Mapping], record: PatchRecord
) -> plan.Guard:
    """Every executable mapping of the patch's memfd, with every call's return site."""
    paths = {m.path for m in maps for s in record.sites if m.contains(s.new_func)}
    ranges = [(m.start, m.end) for m in maps if m.executable and m.path in paths]
    sites: set[int] = set()
    for lo, hi in ranges:
        sites |= elf.return_sites(mem.read(lo, hi - lo), lo)
    return plan.Guard(f"patch {record.patch_id}", tuple(ranges), frozenset(sites))


def rollback(
    pid: int,
    patch_id: str | None = None,
    *,
    journal_dir: Path | None = None,
    retry: Retry = DEFAULT_RETRY,
    timeout: float = 10.0,
    unload: bool = False,
) -> Outcome:
    """Remove the top patch (or `patch_id`, which must be on top of its functions).

    Same rules as apply: all threads stopped, neither the old nor the new function active.
    Also finishes or undoes an apply/rollback that a dead tool left halfway. With
    `unload`, the patch's code, memfd and trampoline page are released afterwards.
    """
    root = journal_dir or journal.default_dir()
    inherit(pid, journal_dir=root)
    with journal.locked(root, pid), _opened(pid) as (st, mem):
        jr = journal.load(root, pid, st.start_time)
        stack = jr.stack
        if not stack:
            raise NotFound(f"process {pid} has no applied patch", pid=pid)
        record = stack[-1] if patch_id is None else jr.find(patch_id)
        if record is None:
            raise NotFound(f"patch {patch_id} is not applied to process {pid}", pid=pid)
        jr.check_top(record)
        writes = []
        for s in record.sites:
            new, original = bytes.fromhex(s.new), bytes.fromhex(s.original)
            current = mem.read(s.write_addr, len(new))
            if current == original:
                continue  # never written (the tool died before the switch)
            if current != new:
                raise HotpatchError(
                    f"{s.symbol} at {s.write_addr:#x} holds neither patch {record.patch_id} "
                    "nor the original bytes: modified by someone else; not touching it",
                    symbol=s.symbol,
                )
            writes.append((s.write_addr, new, original))
        prior = record.state
        record.state = "rolling-back"
        jr.save()
        guards = [s.rollback_guard() for s in record.sites]
        if record.page:
            # A thread caught on a trampoline jump is on its way into the new function.
            page = plan.Guard("trampoline", ((record.page, record.page + PAGE),), frozenset())
            guards.append(page)
        maps = procfs.read_maps(pid)
        if unload and record.handle:
            # Unloading also needs no thread in any other code of the patch: a helper the
            # new function tail-called has no return address into the new function.
            guards.append(_patch_code_guard(mem, maps, record))
        pauses: tuple[float, ...] = ()
        if writes:
            try:
                pauses = _ms(_switch(pid, mem, maps, guards, writes, retry))
            except BaseException:
                record.state = prior
                jr.save()
                raise
        # Unloading is safe when no jump was ever written (the tool died before the switch)
        # or on request: the switch just proved no thread is in, or will return into, the
        # new code, and no entry leads there any more. Only a patch that handed out
        # pointers to its own code (callbacks, atexit) would make it unsafe.
        if record.handle and ((prior == "switching" and not writes) or unload):
            loaded = _Loaded(record.handle, record.base, record.page, record.memfd)
            _unload(pid, mem, loaded, timeout)
            record.handle = 0
        record.state = "rolled-back"
        jr.save()
        return Outcome(pid, record.patch_id, "rolled-back", pauses, record.sites)


@dataclass(frozen=True)
class ProcessPatches:
    pid: int
    alive: bool
    patches: list[PatchRecord]


def list_patches(
    pid: int | None = None, *, journal_dir: Path | None = None
) -> list[ProcessPatches]:
    """Patches recorded per process; a journal whose process is gone shows alive=False."""
    root = journal_dir or journal.default_dir()
    out = []
    for jpid, start, _ in journal.all_journals(root):
        if pid is not None and jpid != pid:
            continue
        try:
            alive = procfs.proc_state(jpid).start_time == start
        except NotFound:
            alive = False
        jr = journal.load(root, jpid, start)
        out.append(ProcessPatches(jpid, alive, jr.patches))
    return out
