"""The worker harness: what a child of the zygote runs right after fork.

It makes itself a sandbox (cgroups, network namespace, descriptors, user), imports the
user's module, and serves invocations one at a time on its channel (fd 3). It runs in a
fork of a single-threaded process, so it may use anything the zygote had imported; it
must never return into the zygote's loop (`run` ends in `os._exit`).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import resource
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from yunhan.functions import framing
from yunhan.functions.spec import billed_ms
from yunhan.net import nsutil

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = nsutil.CLONE_NEWNET
CHANNEL_FD = 3  # 0: /dev/null, 1 and 2: the log, 3: the runtime's socket, 4...: imports
WORKER_PATH = "/usr/local/bin:/usr/bin:/bin"

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFREQ = struct.Struct("16sH22x")


@dataclass(frozen=True)
class Setup:
    """Everything a worker needs to make its sandbox, as sent by the runtime."""

    worker_id: str
    function: str
    version: int
    handler: str
    code_dir: str
    memory_mb: int
    uid: int
    gid: int
    env: Mapping[str, str]
    cgroup_procs: tuple[str, ...]
    own_netns: bool  # True: a fresh empty one (only lo); False: the one handed over

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["env"], d["cgroup_procs"] = dict(self.env), list(self.cgroup_procs)
        return d

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Setup:
        return Setup(**{**d, "env": dict(d["env"]), "cgroup_procs": tuple(d["cgroup_procs"])})


class Context:
    """The second argument of a handler (Lambda's names, so that handlers port)."""

    def __init__(self, setup: Setup, request_id: str, deadline_ns: int) -> None:
        self.function_name = setup.function
        self.function_version = str(setup.version)
        self.memory_limit_in_mb = setup.memory_mb
        self.request_id = self.aws_request_id = request_id
        self.deadline_ns = deadline_ns

    def get_remaining_time_in_millis(self) -> int:
        return max(0, (self.deadline_ns - time.monotonic_ns()) // 1_000_000)


def _lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0))
        flags = _IFREQ.unpack(got)[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | 1))  # IFF_UP


def _place_fds(channel: int, log: int, imports: tuple[int, ...], code: int) -> None:
    """0 = /dev/null, 1 = 2 = log, 3 = channel, 4... = the import dirs' descriptors, then
    the code dir's; every other inherited descriptor (the zygote's control socket, other
    workers' pidfds) is closed."""
    null = os.open(os.devnull, os.O_RDWR)
    srcs = [null, log, log, channel, *imports, code]
    floor = max(*srcs, CHANNEL_FD) + 1
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for fd in srcs]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=False)
    os.closerange(len(srcs), os.sysconf("SC_OPEN_MAX"))
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def reachable_by_others(path: str) -> bool:
    """Could a user that is neither owner nor group list `path` and walk down to it?"""
    p = os.path.abspath(path)
    try:
        if os.stat(p).st_mode & 0o005 != 0o005:
            return False
        while p != "/":
            p = os.path.dirname(p)
            if not os.stat(p).st_mode & 0o001:
                return False
    except OSError:
        return False
    return True


def import_dirs(path: list[str]) -> list[str]:
    """The interpreter's own import directories (stdlib, lib-dynload, site-packages) that
    a function's uid could not reach by name, such as a pyenv build under /root (0700).
    The zygote opens each once, as root; workers keep those descriptors and import
    through /proc/self/fd/N, which resolves to the directory without walking its
    parents (the kernel lets a task use its own fds even when it is not dumpable)."""
    return [
        p for p in path if _stdlib_or_site(p) and os.path.isdir(p) and not reachable_by_others(p)
    ]


def _enter(setup: Setup, channel: int, log: int, netns: int, imports: Mapping[str, int]) -> None:
    os.setsid()  # its own session: no terminal signal of the zygote's group reaches it
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    # Into its cgroups first, so that everything after (the user's import) is charged.
    for procs in setup.cgroup_procs:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    if setup.own_netns:
        nsutil.unshare(CLONE_NEWNET)
        _lo_up()
    else:
        nsutil.setns_fd(netns, CLONE_NEWNET, "function netns")
    # The code dir is opened here, as root: the worker reaches it through this descriptor
    # (/proc/self/fd/N), so no directory above it need be open to other users.
    code = os.open(setup.code_dir, os.O_RDONLY | os.O_DIRECTORY)
    _place_fds(channel, log, tuple(imports.values()), code)


def _become(setup: Setup, zygote: int, imports: Mapping[str, int]) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.setgroups([])
    os.setresgid(setup.gid, setup.gid, setup.gid)
    os.setresuid(setup.uid, setup.uid, setup.uid)
    nsutil.prctl(PR_SET_NO_NEW_PRIVS, 1)  # no setuid binary gives anything back
    # The kernel clears the parent-death signal when credentials change (commit_creds):
    # it is set here, after the switch, and then the parent is checked again, as it may
    # have died before (the signal would never come).
    nsutil.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote:
        os._exit(0)
    code_dir = f"/proc/self/fd/{CHANNEL_FD + 1 + len(imports)}"
    os.chdir(code_dir)  # as the function's user: proves it may read its code
    os.environ.clear()
    os.environ.update({"PATH": WORKER_PATH, "LANG": "C.UTF-8", "HOME": code_dir, **setup.env})
    os.environ["YUNHAN_FUNCTION"] = setup.function
    os.environ["YUNHAN_FUNCTION_VERSION"] = str(setup.version)
    sys.dont_write_bytecode = True  # the code dir is read-only; deploy compiled it
    by_fd = {p: f"/proc/self/fd/{CHANNEL_FD + 1 + i}" for i, p in enumerate(imports)}
    sys.path[:] = [code_dir, *(by_fd.get(p, p) for p in sys.path if _stdlib_or_site(p))]
    _repath_packages(by_fd)
    # Tracebacks name files as the user knows them: the code's relative to its root, the
    # interpreter's by their real path, not through our descriptors.
    _SHOWN[:] = [
        (f'File "{code_dir}/', 'File "'),
        *((f'"{v}/', f'"{k}/') for k, v in by_fd.items()),
    ]
    importlib.invalidate_caches()


def _repath_packages(by_fd: Mapping[str, str]) -> None:
    """Packages the zygote preloaded (urllib for urllib.parse, json, logging …) search
    their submodules in their own `__path__`, named by the path the zygote saw: point it
    through the same descriptors, or `import urllib.request` fails in a worker whose uid
    cannot walk that path."""
    if not by_fd:
        return
    dirs = sorted(by_fd, key=len, reverse=True)
    for mod in list(sys.modules.values()):
        paths = getattr(mod, "__path__", None)
        if not isinstance(paths, list):
            continue
        for i, p in enumerate(paths):
            base = next((d for d in dirs if p == d or p.startswith(d + os.sep)), None)
            if base is not None:
                paths[i] = by_fd[base] + p[len(base) :]


def _stdlib_or_site(p: str) -> bool:
    return bool(p) and (p.startswith((sys.base_prefix, sys.prefix)))


def _load(setup: Setup) -> Callable[..., Any]:
    module, _, func = setup.handler.rpartition(".")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module or module.startswith(f"{exc.name}."):
            raise LookupError(f"handler module {module!r} not found in the code") from exc
        raise
    fn = getattr(mod, func, None)
    if fn is None:
        raise LookupError(f"handler {setup.handler!r} not found: {module} has no {func!r}")
    if not callable(fn):
        raise LookupError(f"handler {setup.handler!r} is not callable")
    return fn  # type: ignore[no-any-return]


_SHOWN: list[tuple[str, str]] = []  # (path through a descriptor, path shown), set in _become


def _error(exc: BaseException, *, skip_frames: int = 0) -> dict[str, Any]:
    tb = exc.__traceback__
    for _ in range(skip_frames):  # the harness's own frames tell the user nothing
        tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    for ours, shown in _SHOWN:
        text = text.replace(ours, shown)
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": text}


def _answer(req: Mapping[str, Any], setup: Setup, handler: Callable[..., Any]) -> bytes:
    ctx = Context(setup, req["id"], req["deadline_ns"])
    out: dict[str, Any] = {"id": req["id"]}
    t0 = time.monotonic_ns()
    try:
        result = handler(req["event"], ctx)
    except BaseException as exc:  # SystemExit too: the handler's error, not the worker's
        ns = time.monotonic_ns() - t0
        out.update(ok=False, **_error(exc, skip_frames=1))
        print(f"[{req['id']}] {out['traceback']}", file=sys.stderr, end="")
    else:
        ns = time.monotonic_ns() - t0
        out.update(ok=True, result=result)
    out.update(duration_ms=ns / 1e6, billed_ms=billed_ms(ns))
    with contextlib.suppress(Exception):  # a handler may have replaced or closed them
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        return framing.encode(out)
    except (TypeError, ValueError, framing.FrameError) as exc:
        out.update(ok=False, result=None, error=f"the result cannot be returned: {exc}")
        out["traceback"] = None
        return framing.encode(out)


def serve(sock: socket.socket, setup: Setup, handler: Callable[..., Any]) -> None:
    """Answer requests {id, event, deadline_ns} until the runtime closes the channel.
    The duration is measured here, around the handler call alone (monotonic ns)."""
    decoder = framing.Decoder()
    while True:
        try:
            req = framing.recv(sock, decoder)
        except (framing.FrameError, OSError):
            return
        sock.sendall(_answer(req, setup, handler))


def _refuse(setup: Setup, exc: BaseException, channel: int, log: int) -> NoReturn:
    os.write(log, f"worker {setup.worker_id}: sandbox: {exc}\n".encode())
    framing.send(socket.socket(fileno=channel), {"ready": False, "stage": "sandbox", **_error(exc)})
    os._exit(70)


def run(
    setup: Setup,
    channel: int,
    log: int,
    netns: int,
    zygote: int,
    imports: Mapping[str, int],
) -> NoReturn:
    """The child's whole life: sandbox, import, ready message, serve; never returns.
    `imports` maps import directories the function's uid cannot reach by name to the
    zygote's descriptors of them (see `import_dirs`)."""
    code = 0
    marks = {"forked": time.monotonic_ns()}
    try:
        try:
            _enter(setup, channel, log, netns, imports)
        except BaseException as exc:
            _refuse(setup, exc, os.dup(channel), log)
        try:
            _become(setup, zygote, imports)
        except BaseException as exc:
            _refuse(setup, exc, CHANNEL_FD, 2)
        marks["sandboxed"] = time.monotonic_ns()
        sock = socket.socket(fileno=CHANNEL_FD)
        try:
            handler = _load(setup)
        except BaseException as exc:
            msg = str(exc) if isinstance(exc, LookupError) else _error(exc)["error"]
            print(f"init error: {msg}\n{traceback.format_exc()}", file=sys.stderr, end="")
            framing.send(sock, {"ready": False, "stage": "import", **_error(exc), "error": msg})
            os._exit(1)
        marks["imported"] = time.monotonic_ns()
        framing.send(sock, {"ready": True, "marks": marks})
        serve(sock, setup, handler)
    except BaseException:
        code = 1
    finally:
        os._exit(code)
