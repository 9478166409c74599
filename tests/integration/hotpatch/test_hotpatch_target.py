"""Hot patching a live PIE target: static, library, libc and variadic functions, refusals
that leave the process exactly as it was, stacking, the journal and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hotpatch_support import CFLAGS, CSRC, Built, Proc, cc, function_range, load_base, snapshot

from tests.polling import wait_for
from yunhan import hotpatch
from yunhan.errors import Conflict, HotpatchError, NotFound, ValidationError
from yunhan.hotpatch import inject, journal, loader, procfs

pytestmark = pytest.mark.root

SYS_READ, SYS_PAUSE, SYS_CLOCK_NANOSLEEP, SYS_EPOLL_WAIT = 0, 34, 230, 232

FIX_COMPUTE = """
#include <yunhan/hotpatch.h>
static int compute_v2(int x) { return x * 100; }
YUNHAN_PATCH(compute, compute_v2);
"""
FIX_COMPUTE_V3 = FIX_COMPUTE.replace("100", "1000").replace("v2", "v3")
FIX_DEMO = """
#include <yunhan/hotpatch.h>
int demo_fixed(int x) { return -x; }
YUNHAN_PATCH(demo_value, demo_fixed);
"""
# In the spirit of the GHOST fix: a libc parser made strict in a live process.
FIX_ATON = """
#include <arpa/inet.h>
#include <yunhan/hotpatch.h>
static int strict_inet_aton(const char *cp, struct in_addr *inp) {
    return inet_pton(AF_INET, cp, inp) == 1;
}
YUNHAN_PATCH(inet_aton, strict_inet_aton);
"""
FIX_VSUM = """
#include <stdarg.h>
#include <yunhan/hotpatch.h>
double vsum_v2(int n, ...) {
    va_list ap;
    double s = 0;
    va_start(ap, n);
    for (int i = 0; i < n; i++) s += va_arg(ap, double);
    va_end(ap);
    return s * 10;
}
YUNHAN_PATCH(vsum, vsum_v2);
"""
FIX_TINY = """
#include <yunhan/hotpatch.h>
static int tiny_v2(void) { return 1; }
YUNHAN_PATCH(tiny, tiny_v2);
"""
FIX_HOLD = """
#include <unistd.h>
#include <yunhan/hotpatch.h>
static void hold_v2(void) { for (;;) pause(); }
YUNHAN_PATCH(hold, hold_v2);
"""
FIX_PROBE = """
#include <yunhan/hotpatch.h>
int probe_v2(int x) { return x * 100; }
YUNHAN_PATCH(probe, probe_v2);
"""

MakePatch = Callable[[str, str, Path], Path]


def started(spawn: Callable[..., Proc], *argv: str | Path) -> Proc:
    p = spawn(*argv)
    assert p.readline() == "ready"
    return p


@pytest.fixture
def target(built: Built, spawn: Callable[..., Proc]) -> Proc:
    p = started(spawn, built.target)
    assert p.ask("c 5") == "11"
    p.wait_blocked_in(SYS_READ)
    return p


def _libc_path(pid: int) -> Path:
    for m in procfs.read_maps(pid):
        if Path(m.path).name.startswith("libc.so") and m.offset == 0:
            return Path(m.path)
    raise AssertionError("no libc")


def test_static_function_of_pie_with_cold_part(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    out = hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    assert target.ask("c 5") == "500"
    (site,) = out.sites
    assert len(site.old_ranges) == 2, "the activeness check covers compute.cold too"
    # -fcf-protection: the entry keeps its endbr64, the jump goes after it.
    base = load_base(target.pid, built.target)
    start, _ = function_range(built.target, "compute", base)
    assert site.func_addr == start
    hotpatch.rollback(target.pid, journal_dir=journal_dir)
    assert target.ask("c 5") == "11"


def test_matching_processes_finds_targets_by_build_id(
    built: Built, target: Proc, spawn: Callable[..., Proc], make_patch: MakePatch
) -> None:
    other = started(spawn, built.regs)
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    found = hotpatch.matching_processes(hotpatch.read_manifest(yhp))
    assert target.pid in found and other.pid not in found


def test_absolute_jump_when_no_page_can_be_mapped_near(
    built: Built,
    target: Proc,
    make_patch: MakePatch,
    journal_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No free page within 2 GiB of the PIE (simulated): the trampoline page lands near the
    # libraries, out of rel32 reach, and the entry gets `jmp [rip+0]; .quad new` in place.
    monkeypatch.setattr(loader, "_near_page", lambda *_: [])
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    (site,) = hotpatch.apply(target.pid, yhp, journal_dir=journal_dir).sites
    assert site.new.startswith("ff2500000000") and len(site.new) == 2 * 14
    assert target.ask("c 5") == "500"
    hotpatch.rollback(target.pid, journal_dir=journal_dir)
    assert target.ask("c 5") == "11"


def test_blocked_read_completes_normally_after_patch(
    built: Built, spawn: Callable[..., Proc], make_patch: MakePatch, journal_dir: Path
) -> None:
    target = started(spawn, built.target, "single")
    assert procfs.threads(target.pid) == [target.pid]
    target.wait_blocked_in(SYS_READ)
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    # The only thread was blocked in read(2) on its stdin pipe, was borrowed for dlopen and
    # stopped for the switch; the same read is restarted and now completes with our data
    # (an EINTR would print "ERR ..."). Detached, the thread re-enters read(2) on its own
    # time: right after `apply` returns it may not be back in it yet (a CI run saw that).
    target.wait_blocked_in(SYS_READ)
    assert target.ask("c 7") == "700"
    assert target.ask("c 8") == "800"
    hotpatch.rollback(target.pid, journal_dir=journal_dir)
    assert target.ask("c 7") == "15"


def test_borrowed_thread_gets_every_register_back(
    built: Built, spawn: Callable[..., Proc], make_patch: MakePatch, journal_dir: Path
) -> None:
    # The only thread holds known values in %xmm0-15 and %r12-15 across a raw read(2); it
    # runs our dlopen (SSE/AVX-heavy) and is stopped for the switch, then its read resumes.
    target = started(spawn, built.regs)
    target.wait_blocked_in(SYS_READ)
    yhp = make_patch("fix_probe", FIX_PROBE, built.regs)
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    assert target.ask("abc") == "ok 4 400"
    target.wait_blocked_in(SYS_READ)
    hotpatch.rollback(target.pid, journal_dir=journal_dir)
    assert target.ask("abc") == "ok 4 5"


def test_event_loop_blocked_in_epoll_wait(
    built: Built, spawn: Callable[..., Proc], make_patch: MakePatch, journal_dir: Path
) -> None:
    # The only thread is in epoll_wait, which a stop interrupts with EINTR; it can still be
    # borrowed, and the loop (which retries on EINTR, as event loops do) carries on.
    target = started(spawn, built.evloop)
    target.wait_blocked_in(SYS_EPOLL_WAIT)
    yhp = make_patch("fix_probe", FIX_PROBE, built.evloop)
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    value, eintr = target.ask("3").split()
    assert value == "300" and int(eintr) >= 1


def test_rollback_with_unload_returns_the_mappings_too(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    ranges = _untouched_ranges(built, target.pid, "compute")
    before = snapshot(target.pid, ranges)
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    assert target.ask("c 5") == "500"
    hotpatch.rollback(target.pid, journal_dir=journal_dir, unload=True)
    assert target.ask("c 5") == "11"
    assert snapshot(target.pid, ranges) == before  # no patch object, no trampoline page
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)  # and it loads again
    assert target.ask("c 5") == "500"


FIX_COMPUTE_TAIL = """
#include <unistd.h>
#include <yunhan/hotpatch.h>
__attribute__((noipa)) static int slow(int x) {
    for (int i = 0; i < 100; i++) usleep(10000);
    return x * 100;
}
static int compute_v2(int x) { return slow(x); } /* a tail call: jmp slow */
YUNHAN_PATCH(compute, compute_v2);
"""


def test_rollback_with_unload_waits_for_a_thread_in_other_code_of_the_patch(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    # compute_v2 tail-calls a helper of the patch: a thread in that helper has no return
    # address into compute_v2, yet unloading the patch would pull its code from under it.
    yhp = make_patch("compute-tail", FIX_COMPUTE_TAIL, built.target)
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    assert target.p.stdin is not None
    target.p.stdin.write(b"c 5\n")
    target.p.stdin.flush()
    target.wait_blocked_in(SYS_CLOCK_NANOSLEEP)  # main thread inside slow()
    retry = hotpatch.Retry(attempts=3, first_backoff=0.001)
    with pytest.raises(HotpatchError, match="stayed active"):
        hotpatch.rollback(target.pid, journal_dir=journal_dir, unload=True, retry=retry)
    assert target.readline() == "500"  # the helper was still there to finish
    target.wait_blocked_in(SYS_READ)
    hotpatch.rollback(target.pid, journal_dir=journal_dir, unload=True)
    assert target.ask("c 5") == "11"


def test_function_of_a_test_library(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    assert target.ask("d 5") == "105"
    yhp = make_patch("fix_demo", FIX_DEMO, built.libdemo)
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    assert target.ask("d 5") == "-5"
    hotpatch.rollback(target.pid, journal_dir=journal_dir)
    assert target.ask("d 5") == "105"


def test_libc_function_ghost_style(target: Proc, make_patch: MakePatch, journal_dir: Path) -> None:
    assert target.ask("a 10.1.2.3 trailing junk") == "1"  # glibc accepts it
    yhp = make_patch("fix_aton", FIX_ATON, _libc_path(target.pid))
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    assert target.ask("a 10.1.2.3 trailing junk") == "0"
    assert target.ask("a 10.1.2.3") == "1"
    hotpatch.rollback(target.pid, journal_dir=journal_dir)
    assert target.ask("a 10.1.2.3 trailing junk") == "1"


def test_variadic_function_with_floating_point_arguments(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    assert target.ask("v 4") == "7.750"
    yhp = make_patch("fix_vsum", FIX_VSUM, built.target)
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    # %al (vector register count) and %xmm0-2 reach the new function intact.
    assert target.ask("v 4") == "77.500"
    assert target.ask("v 10") == "137.500"


def _untouched_ranges(built: Built, pid: int, *symbols: str) -> list[tuple[int, int]]:
    base = load_base(pid, built.target)
    return [function_range(built.target, s, base) for s in symbols]


def test_function_shorter_than_jump_is_refused(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    ranges = _untouched_ranges(built, target.pid, "tiny", "compute")
    before = snapshot(target.pid, ranges)
    yhp = make_patch("fix_tiny", FIX_TINY, built.target)
    with pytest.raises(HotpatchError, match="too short"):
        hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    assert snapshot(target.pid, ranges) == before
    assert target.ask("t") == "0"


def test_patch_for_another_build_id_is_refused(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "target"  # same name, different build
    cc(*CFLAGS, "-O1", "-fPIE", "-pie", "-pthread", CSRC / "target.c", "-o", other,
       f"-L{built.dir}", "-ldemo")  # fmt: skip
    yhp = make_patch("fix_other", FIX_COMPUTE, other)
    ranges = _untouched_ranges(built, target.pid, "compute")
    before = snapshot(target.pid, ranges)
    with pytest.raises(HotpatchError, match="build-id mismatch"):
        hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    assert snapshot(target.pid, ranges) == before
    assert target.ask("c 5") == "11"


def test_always_active_function_is_refused_and_target_untouched(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    holder = max(procfs.threads(target.pid))
    target.wait_blocked_in(SYS_CLOCK_NANOSLEEP, tid=holder)
    ranges = _untouched_ranges(built, target.pid, "hold", "compute")
    before = snapshot(target.pid, ranges)
    yhp = make_patch("fix_hold", FIX_HOLD, built.target)
    retry = hotpatch.Retry(attempts=4, first_backoff=0.001)
    with pytest.raises(HotpatchError, match=r"stayed active after 4 attempts.*return into hold"):
        hotpatch.apply(target.pid, yhp, journal_dir=journal_dir, retry=retry)
    # Bytes, mappings (patch unloaded, trampoline page unmapped), no tracer, none stopped.
    assert snapshot(target.pid, ranges) == before
    assert target.ask("c 5") == "11"
    (proc,) = hotpatch.list_patches(target.pid, journal_dir=journal_dir)
    assert [r.state for r in proc.patches] == ["failed"]


def test_function_interrupted_by_a_signal_handler_is_active(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    before_threads = set(procfs.threads(target.pid))
    assert target.ask("s") == "ok"
    (victim,) = set(procfs.threads(target.pid)) - before_threads
    target.wait_blocked_in(SYS_PAUSE, tid=victim)  # in the handler, victim() interrupted
    ranges = _untouched_ranges(built, target.pid, "victim")
    before = snapshot(target.pid, ranges)
    fix = "#include <yunhan/hotpatch.h>\nstatic void victim_v2(void) {}\n"
    yhp = make_patch("fix_victim", fix + "YUNHAN_PATCH(victim, victim_v2);\n", built.target)
    with pytest.raises(HotpatchError, match="signal handler that interrupted victim"):
        hotpatch.apply(target.pid, yhp, journal_dir=journal_dir, retry=hotpatch.Retry(attempts=2))
    assert snapshot(target.pid, ranges) == before


def test_a_thread_running_a_signal_handler_is_not_borrowed(
    built: Built, spawn: Callable[..., Proc]
) -> None:
    # The victim thread is the only idle sleeper (first choice), but it sits in a signal
    # handler, where dlopen could deadlock on a lock the interrupted code holds.
    target = started(spawn, built.target, "single")
    assert target.ask("s") == "ok"
    (victim,) = set(procfs.threads(target.pid)) - {target.pid}
    target.wait_blocked_in(SYS_PAUSE, tid=victim)
    target.wait_blocked_in(SYS_READ)
    maps = procfs.read_maps(target.pid)
    with procfs.Memory(target.pid) as mem:
        restorer = loader._libc_restorer(target.pid, maps)
        with inject.Hijack(target.pid, mem, restorer=restorer) as hj:
            assert hj.tid == target.pid
    assert target.ask("c 1") == "3"


def test_modified_function_is_refused(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    (rng,) = _untouched_ranges(built, target.pid, "compute")
    with procfs.Memory(target.pid) as mem:
        original = mem.read(rng[0], 8)
        mem.write(rng[0] + 4, b"\x90")  # someone else's hook, after the endbr64
        try:
            yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
            with pytest.raises(HotpatchError, match="was modified"):
                hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
        finally:
            mem.write(rng[0], original)


def test_function_modified_while_the_patch_loads_is_refused(
    built: Built,
    target: Proc,
    make_patch: MakePatch,
    journal_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another tool hooks compute after our preflight compared it with the file, while the
    # patch is being loaded: the switch must not overwrite (and later "restore") its hook.
    (rng,) = _untouched_ranges(built, target.pid, "compute")
    real_load = loader._load

    def load_then_hook(*args: object, **kwargs: object) -> object:
        out = real_load(*args, **kwargs)  # type: ignore[arg-type]
        with procfs.Memory(target.pid) as m:
            m.write(rng[0] + 4, b"\x90")
        return out

    monkeypatch.setattr(loader, "_load", load_then_hook)
    with procfs.Memory(target.pid) as mem:
        original = mem.read(rng[0], 8)
        try:
            yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
            with pytest.raises(HotpatchError, match="changed under us"):
                hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
            assert mem.read(rng[0], 8) == original[:4] + b"\x90" + original[5:]
        finally:
            mem.write(rng[0], original)
    assert target.ask("c 5") == "11"


def test_stacking_and_rollback_of_the_top(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    v2 = make_patch("compute-v2", FIX_COMPUTE, built.target)
    v3 = make_patch("compute-v3", FIX_COMPUTE_V3, built.target)
    hotpatch.apply(target.pid, v2, journal_dir=journal_dir)
    assert target.ask("c 3") == "300"
    with pytest.raises(Conflict, match="already applied"):
        hotpatch.apply(target.pid, v2, journal_dir=journal_dir)
    hotpatch.apply(target.pid, v3, journal_dir=journal_dir)
    assert target.ask("c 3") == "3000"
    with pytest.raises(Conflict, match="compute-v3 is stacked"):
        hotpatch.rollback(target.pid, "compute-v2", journal_dir=journal_dir)
    (proc,) = hotpatch.list_patches(target.pid, journal_dir=journal_dir)
    assert [(r.patch_id, r.state) for r in proc.patches] == [
        ("compute-v2", "applied"),
        ("compute-v3", "applied"),
    ]
    assert hotpatch.rollback(target.pid, journal_dir=journal_dir).patch_id == "compute-v3"
    assert target.ask("c 3") == "300"
    assert hotpatch.rollback(target.pid, journal_dir=journal_dir).patch_id == "compute-v2"
    assert target.ask("c 3") == "7"


def test_rollback_finishes_a_switch_the_tool_died_in(
    built: Built, target: Proc, make_patch: MakePatch, journal_dir: Path
) -> None:
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    # What a tool killed right after writing the jumps leaves: the record says "switching".
    st = procfs.proc_state(target.pid)
    jr = journal.load(journal_dir, target.pid, st.start_time)
    jr.patches[-1].state = "switching"
    jr.save()
    with pytest.raises(Conflict, match="interrupted"):
        hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    hotpatch.rollback(target.pid, journal_dir=journal_dir)
    assert target.ask("c 5") == "11"


def test_build_refuses_unknown_symbol_and_missing_build_id(built: Built, tmp_path: Path) -> None:
    src = tmp_path / "bad.c"
    src.write_text(FIX_COMPUTE.replace("YUNHAN_PATCH(compute", "YUNHAN_PATCH(no_such_fn"))
    with pytest.raises(ValidationError, match="no_such_fn is not a function"):
        hotpatch.build(src, built.target, tmp_path / "bad.yhp")
    nobid = tmp_path / "nobid"
    cc("-O2", "-Wl,--build-id=none", "-pthread", CSRC / "target.c", "-o", nobid,
       f"-L{built.dir}", "-ldemo")  # fmt: skip
    src.write_text(FIX_COMPUTE)
    with pytest.raises(ValidationError, match="build-id"):
        hotpatch.build(src, nobid, tmp_path / "bad.yhp")
    assert not (tmp_path / "bad.yhp").exists()


def test_cli_build_apply_list_rollback(built: Built, target: Proc, tmp_path: Path) -> None:
    src = tmp_path / "fix.c"
    src.write_text(FIX_COMPUTE)
    yhp = tmp_path / "fix.yhp"
    jd = ["--journal-dir", str(tmp_path / "j")]

    def cli(*args: str) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "yunhan.cli.hotpatch", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    cli("build", str(src), "--target", str(built.target), "-o", str(yhp))
    cli("apply", str(target.pid), str(yhp), *jd)
    assert target.ask("c 2") == "200"
    rows = json.loads(cli("list", str(target.pid), "--json", *jd))
    assert rows[0]["patches"][0] | {"target": ""} == {
        "patch_id": "fix",
        "state": "applied",
        "target": "",
        "functions": ["compute"],
    }
    cli("rollback", str(target.pid), "fix", *jd)
    assert target.ask("c 2") == "5"


def test_target_in_another_mount_namespace(
    built: Built,
    spawn: Callable[..., Proc],
    make_patch: MakePatch,
    journal_dir: Path,
    tmp_path: Path,
) -> None:
    # The binary lives on a tmpfs only the target's mount namespace sees; we read it
    # through /proc/PID/map_files and hand the patch over as a memfd.
    private = tmp_path / "private"
    private.mkdir()
    script = (
        f"mount -t tmpfs yh {private} && "
        f"cp {built.target} {private}/target && exec {private}/target single"
    )
    target = started(spawn, "unshare", "--mount", "--propagation", "private", "sh", "-c", script)
    assert not (private / "target").exists()
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    assert target.ask("c 4") == "400"
    hotpatch.rollback(target.pid, journal_dir=journal_dir)
    assert target.ask("c 4") == "9"


def test_preflight_refuses_missing_zombie_and_traced_processes(
    built: Built,
    target: Proc,
    spawn: Callable[..., Proc],
    make_patch: MakePatch,
    journal_dir: Path,
) -> None:
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    with pytest.raises(NotFound, match="does not exist"):
        hotpatch.apply(2**22 + 7, yhp, journal_dir=journal_dir)

    zombie = subprocess.Popen(["true"])  # exits at once; not reaped until we wait
    try:
        wait_for(lambda: procfs.proc_state(zombie.pid).state == "Z", 10, "a zombie")
        with pytest.raises(HotpatchError, match="zombie"):
            hotpatch.apply(zombie.pid, yhp, journal_dir=journal_dir)
    finally:
        zombie.wait()

    tracer = spawn(
        sys.executable,
        "-c",
        "import sys; from yunhan.hotpatch import ptrace; ptrace.seize(int(sys.argv[1])); "
        "print('attached', flush=True); sys.stdin.read()",
        str(target.pid),
    )
    assert tracer.readline() == "attached"
    with pytest.raises(HotpatchError, match=f"already traced by process {tracer.pid}"):
        hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    tracer.kill()
    assert target.ask("c 5") == "11"


def test_a_second_invocation_waits_for_the_first(
    built: Built,
    target: Proc,
    spawn: Callable[..., Proc],
    make_patch: MakePatch,
    journal_dir: Path,
) -> None:
    """While another `yunhan hotpatch` holds the process (its lock, its threads traced), a
    second one waits for it instead of taking it for a debugger."""
    holder = spawn(
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from yunhan.hotpatch import journal, ptrace\n"
        "with journal.locked(Path(sys.argv[2]), int(sys.argv[1])):\n"
        "    ptrace.seize(int(sys.argv[1])); print('holding', flush=True); sys.stdin.read()",
        str(target.pid),
        str(journal_dir),
    )
    assert holder.readline() == "holding"
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
        except BaseException as exc:
            errors.append(exc)

    second = threading.Thread(target=run)
    second.start()
    assert second.native_id is not None
    native_id = second.native_id
    wait_for(
        lambda: not second.is_alive() or procfs.blocked_syscall(os.getpid(), native_id) == 73,
        10,
        "the second invocation to wait in flock (73) or end",
    )
    holder.kill()
    second.join(timeout=30)
    assert not second.is_alive()
    assert errors == []
    assert target.ask("c 5") == "500"


def test_tool_killed_during_the_switch(
    built: Built,
    target: Proc,
    spawn: Callable[..., Proc],
    make_patch: MakePatch,
    journal_dir: Path,
) -> None:
    """SIGKILL the CLI while it retries an always-active switch: the kernel lets every
    thread go, the journal says "switching", and rollback unloads the patch."""
    holder = max(procfs.threads(target.pid))
    target.wait_blocked_in(SYS_CLOCK_NANOSLEEP, tid=holder)
    ranges = _untouched_ranges(built, target.pid, "hold")
    before = snapshot(target.pid, ranges)
    yhp = make_patch("fix_hold", FIX_HOLD, built.target)
    tool = spawn(
        sys.executable, "-m", "yunhan.cli.hotpatch", "apply", str(target.pid), str(yhp),
        "--attempts", "100000", "--journal-dir", str(journal_dir),
    )  # fmt: skip
    start = procfs.proc_state(target.pid).start_time
    wait_for(lambda: journal.load(journal_dir, target.pid, start).stack, 20, "the switch")
    tool.kill()
    (record,) = journal.load(journal_dir, target.pid, start).stack
    assert record.state == "switching"
    with pytest.raises(Conflict, match="interrupted"):
        hotpatch.apply(target.pid, yhp, journal_dir=journal_dir)
    hotpatch.rollback(target.pid, journal_dir=journal_dir)
    assert snapshot(target.pid, ranges) == before  # unloaded, untraced, running
    assert target.ask("c 5") == "11"
