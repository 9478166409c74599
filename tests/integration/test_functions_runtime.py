"""The function runtime on the real kernel: a zygote, workers in cgroups v1, network
namespaces, their own uids, read-only code. Each test names what it makes with a unique
prefix; the last tests prove that nothing is left behind."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fnruntime import running
from yunhan import procstat
from yunhan.errors import ValidationError
from yunhan.functions import Deployment, FunctionRuntime, FunctionSpec, WorkerGone
from yunhan.functions.cgroups import CgroupLayout
from yunhan.net import nsutil
from yunhan.polling import poll_until

pytestmark = pytest.mark.root

HANDLERS = {
    "echo": """
        def handler(event, context):
            return {"echo": event, "fn": context.function_name,
                    "left_ms": context.get_remaining_time_in_millis()}
    """,
    "probe": """
        import csv, os, socket  # csv: not preloaded by the zygote

        def handler(event, context):
            out = {"uid": os.getuid(), "gid": os.getgid(), "env": os.environ.get("SECRET"),
                   "links": [name for _, name in socket.if_nameindex()],
                   "netns": os.readlink("/proc/self/ns/net")}
            for key, path in event.get("read", {}).items():
                try:
                    with open(path, "rb") as f:
                        f.read(1)
                    out[key] = "read"
                except OSError as exc:
                    out[key] = type(exc).__name__
            try:
                with open(__file__, "a"):
                    out["write_own_code"] = "written"
            except OSError as exc:
                out["write_own_code"] = type(exc).__name__
            return out
    """,
    "stdlib": """
        def handler(event, context):
            # Submodules of packages the zygote preloaded (urllib for urllib.parse, json,
            # logging), and a package it did not: each found by the worker's own uid.
            import email.mime.text
            import json.tool
            import logging.handlers
            import urllib.request

            mods = (urllib.request, json.tool, logging.handlers, email.mime.text)
            return [m.__name__ for m in mods]
    """,
    "hog": """
        def handler(event, context):
            hold = []
            while True:
                hold.append(bytearray(8 << 20))  # zero-filled: every page is touched
    """,
    "sleeper": """
        import os, time

        def handler(event, context):
            if event.get("fork"):
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
            time.sleep(event.get("s", 10))
            return "woke"
    """,
    "boom": """
        def helper(x):
            raise ValueError(f"boom {x}")

        def handler(event, context):
            print("about to fail")
            return helper(event["x"])
    """,
}


@pytest.fixture(scope="module")
def rt(run_prefix: str) -> Iterator[FunctionRuntime]:
    with running(run_prefix, "fn") as runtime:
        yield runtime


def _gone(pid: int) -> bool:
    """Exited (a zombie that init has yet to reap counts: it runs nothing)."""
    st = procstat.read(pid)
    return st is None or not st.alive


def _source(tmp_path: Path, name: str, body: str) -> Path:
    d = tmp_path / f"src-{name}"
    d.mkdir()
    (d / "main.py").write_text(textwrap.dedent(body))
    return d


@pytest.fixture
def make(
    rt: FunctionRuntime, tmp_path: Path, uniq: Callable[[str], str]
) -> Callable[..., Deployment]:
    def deploy(kind: str, **kw: object) -> Deployment:
        name = uniq(kind).lower()
        name = "f" + name.replace("_", "-")  # a letter first, whatever the run prefix
        spec = FunctionSpec(name, 1, "main.handler", **kw)  # type: ignore[arg-type]
        return rt.deploy(spec, _source(tmp_path, name, HANDLERS[kind]))

    return deploy


def test_a_handler_returns_json_with_its_duration_and_billed_duration(
    rt: FunctionRuntime, make: Callable[..., Deployment]
) -> None:
    dep = make("echo", timeout_s=2.0)
    w = rt.spawn(dep)
    try:
        inv = rt.invoke(w, {"a": [1, "two"]}, request_id="req-1")
        assert inv.ok, inv.error
        assert inv.request_id == "req-1"
        assert inv.result["echo"] == {"a": [1, "two"]}
        assert inv.result["fn"] == dep.spec.name
        assert 0 < inv.result["left_ms"] <= 2000
        assert inv.duration_ms > 0
        assert inv.billed_ms == max(1, math.ceil(inv.duration_ms))
    finally:
        rt.stop_worker(w)


def test_cold_start_imports_only_user_code_then_warm_invokes_reuse_it(
    rt: FunctionRuntime, make: Callable[..., Deployment]
) -> None:
    dep = make("echo")
    w = rt.spawn(dep)
    try:
        warm = [rt.invoke(w, i) for i in range(20)]
        assert [i.result["echo"] for i in warm] == list(range(20))
        assert rt.workers().count(w) == 1
        # Information only (the bench measures): the machine is shared.
        print(f"cold start {w.cold_start_ms:.1f} ms, warm {warm[-1].duration_ms:.3f} ms")
    finally:
        rt.stop_worker(w)
    assert procstat.read(w.pid) is None
    with pytest.raises(WorkerGone):
        rt.invoke(w, 1)


def test_a_handler_imports_submodules_of_preloaded_stdlib_packages(
    rt: FunctionRuntime, make: Callable[..., Deployment]
) -> None:
    w = rt.spawn(make("stdlib"))
    try:
        inv = rt.invoke(w, {})
        assert inv.ok, inv.traceback
        assert inv.result == ["urllib.request", "json.tool", "logging.handlers", "email.mime.text"]
    finally:
        rt.stop_worker(w)


def test_workers_of_two_functions_cannot_read_each_others_code_or_environment(
    rt: FunctionRuntime, make: Callable[..., Deployment]
) -> None:
    a = make("probe", env={"SECRET": "a-secret"})
    b = make("probe", env={"SECRET": "b-secret"})
    assert a.uid != b.uid
    wa, wb = rt.spawn(a), rt.spawn(b)
    try:
        got = rt.invoke(
            wa,
            {
                "read": {
                    "b_code": str(b.code_dir / "main.py"),
                    "b_environ": f"/proc/{wb.pid}/environ",
                    "b_code_via_proc": f"/proc/{wb.pid}/cwd/main.py",  # its cwd is its code
                    "own_code": "main.py",  # its working directory is its code
                    "own_code_by_host_path": str(a.code_dir / "main.py"),
                }
            },
        )
        assert got.ok, got.traceback
        r = got.result
        assert (r["uid"], r["gid"]) == (a.uid, a.uid)
        assert r["env"] == "a-secret"
        assert r["b_code"] == "PermissionError"
        assert r["b_environ"] == "PermissionError"
        assert r["b_code_via_proc"] == "PermissionError"
        assert r["own_code"] == "read"
        # The host's directories above the code are closed to workers: their own code is
        # reached only through the descriptor their working directory is.
        assert r["own_code_by_host_path"] == "PermissionError"
        assert r["write_own_code"] == "PermissionError"  # read-only to its own function
        # A fresh network namespace of its own, with nothing but lo.
        assert r["links"] == ["lo"]
        assert r["netns"] != os.readlink("/proc/self/ns/net")
        assert rt.invoke(wb, {}).result["netns"] != r["netns"]
    finally:
        rt.stop_worker(wa)
        rt.stop_worker(wb)


def test_a_worker_given_a_network_namespace_runs_in_it(
    rt: FunctionRuntime, make: Callable[..., Deployment], uniq: Callable[[str], str]
) -> None:
    ns = uniq("fnvpc")
    nsutil.create_netns(ns)
    try:
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "vpc0", "type", "veth", "peer", "vpc1"], check=True
        )
        w = rt.spawn(make("probe"), netns=ns)
        try:
            r = rt.invoke(w, {}).result
            assert sorted(r["links"]) == ["lo", "vpc0", "vpc1"]
            assert r["netns"] == f"net:[{os.stat(nsutil.netns_path(ns)).st_ino}]"
        finally:
            rt.stop_worker(w)
    finally:
        nsutil.remove_ns_file(nsutil.netns_path(ns))


def test_a_handler_beyond_its_memory_is_oom_killed_and_reported(
    rt: FunctionRuntime, make: Callable[..., Deployment]
) -> None:
    dep = make("hog", memory_mb=64, timeout_s=20.0)
    w = rt.spawn(dep)
    inv = rt.invoke(w, {})
    assert not inv.ok
    assert inv.error == "out of memory (limit 64 MB)"
    assert inv.worker_exited and not w.alive
    assert w.exit is not None and w.exit.oom and w.exit.signal == signal.SIGKILL
    assert (64 << 20) - (8 << 20) <= w.exit.max_memory_bytes <= 64 << 20
    assert "out of memory" in rt.log_path(dep.spec.name).read_text()
    # The next invocation gets a new worker, which works (until it eats too much again).
    w2 = rt.spawn(dep)
    try:
        assert w2.pid != w.pid and w2.alive
    finally:
        rt.stop_worker(w2)


def test_a_timeout_kills_the_worker_and_all_it_started_and_says_so(
    rt: FunctionRuntime, make: Callable[..., Deployment]
) -> None:
    dep = make("sleeper", timeout_s=0.5)
    w = rt.spawn(dep)
    inv = rt.invoke(w, {"fork": True})
    assert not inv.ok
    assert inv.error == "timed out after 0.5 s"
    assert inv.worker_exited and not w.alive
    assert 500 <= inv.duration_ms < 5000
    assert procstat.read(w.pid) is None
    assert not w.cgroup.pids()  # the forked sleeper went too
    assert "timed out after 0.5 s" in rt.log_path(dep.spec.name).read_text()
    w2 = rt.spawn(dep)
    try:
        assert rt.invoke(w2, {"s": 0}).result == "woke"
    finally:
        rt.stop_worker(w2)


def test_a_raising_handler_returns_its_error_and_traceback_and_lives_on(
    rt: FunctionRuntime, make: Callable[..., Deployment]
) -> None:
    dep = make("boom")
    w = rt.spawn(dep)
    try:
        inv = rt.invoke(w, {"x": 7})
        assert not inv.ok and not inv.worker_exited
        assert inv.error == "ValueError: boom 7"
        assert inv.traceback is not None
        # Named as the user knows the file, not through the descriptor the worker uses.
        assert 'File "main.py", line 3, in helper' in inv.traceback
        assert "/proc/self/fd" not in inv.traceback
        assert "worker.py" not in inv.traceback  # the harness's frames are left out
        assert inv.billed_ms >= 1
        log = rt.log_path(dep.spec.name).read_text()
        assert "about to fail" in log and "ValueError: boom 7" in log
        assert not rt.invoke(w, {}).ok  # KeyError, and still the same worker
        assert w.alive
    finally:
        rt.stop_worker(w)


@pytest.mark.parametrize(
    ("body", "handler", "memory", "says"),
    [
        ("def handler(e, c):\n    return (\n", "main.handler", 128, "syntax error"),
        ("def other(e, c):\n    return 1\n", "main.handler", 128, "main has no 'handler'"),
        ("def handler(e, c):\n    return 1\n", "nomod.handler", 128, "no module 'nomod'"),
        ("import nosuchlib\n", "main.handler", 128, "No module named 'nosuchlib'"),
        ("def handler(e, c):\n    return 1\n", "main.handler", 32, "between 64 MB"),
    ],
)
def test_deploy_refuses_bad_code_whole(
    rt: FunctionRuntime,
    tmp_path: Path,
    uniq: Callable[[str], str],
    body: str,
    handler: str,
    memory: int,
    says: str,
) -> None:
    name = "f" + uniq("bad").lower()
    src = tmp_path / "src"
    src.mkdir()
    (src / "main.py").write_text(body)
    spec = FunctionSpec(name, 1, handler, memory_mb=memory)
    with pytest.raises(ValidationError) as exc:
        rt.deploy(spec, src)
    assert says in exc.value.message
    assert not (rt.state_dir / "code" / name).exists()  # nothing kept


def test_two_workers_serve_threads_at_once_one_invocation_each_at_a_time(
    rt: FunctionRuntime, make: Callable[..., Deployment]
) -> None:
    dep = make("echo")
    ws = [rt.spawn(dep), rt.spawn(dep)]
    try:
        with ThreadPoolExecutor(4) as pool:  # two threads per worker: they take turns
            got = list(pool.map(lambda i: rt.invoke(ws[i % 2], i), range(200)))
        assert [g.result["echo"] for g in got] == list(range(200))
    finally:
        for w in ws:
            rt.stop_worker(w)


def test_the_zygote_is_single_threaded_and_workers_keep_no_inherited_fds(
    rt: FunctionRuntime, make: Callable[..., Deployment]
) -> None:
    assert rt.zygote_pid is not None
    assert os.listdir(f"/proc/{rt.zygote_pid}/task") == [str(rt.zygote_pid)]
    w = rt.spawn(make("echo"))
    try:
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{w.pid}/fd"))
        assert fds[:4] == [0, 1, 2, 3]
        for fd in fds[4:]:  # only import directories the worker's uid cannot reach by name
            assert os.path.isdir(os.readlink(f"/proc/{w.pid}/fd/{fd}"))
        with open(f"/proc/{w.pid}/status") as f:
            status = dict(line.split(":\t", 1) for line in f if ":\t" in line)
        assert status["NoNewPrivs"].strip() == "1"
        assert status["CapEff"].strip() == "0" * 16
    finally:
        rt.stop_worker(w)


_OWNER = """
import sys, time
from pathlib import Path
from yunhan.functions import FunctionRuntime, FunctionSpec
rt = FunctionRuntime(Path(sys.argv[1]), sys.argv[2])
rt.start()
dep = rt.deploy(FunctionSpec("owned", 1, "main.handler"), Path(sys.argv[3]))
w = rt.spawn(dep)
print(rt.zygote_pid, w.pid, flush=True)
time.sleep(60)
"""


def test_killing_the_owner_takes_the_zygote_and_its_workers_along(
    tmp_path: Path, uniq: Callable[[str], str]
) -> None:
    prefix = uniq("own")
    src = _source(tmp_path, "owned", HANDLERS["echo"])
    state = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))  # pytest's tmp_path is 0700
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(state), prefix, str(src)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    layout = CgroupLayout.discover()
    try:
        assert owner.stdout is not None
        zygote, worker = (int(x) for x in owner.stdout.readline().split())
        owner.kill()
        owner.wait()
        # End of file on the control socket ends the zygote; the worker dies with it.
        assert poll_until(lambda: _gone(zygote), 5.0)
        assert poll_until(lambda: _gone(worker), 5.0)
    finally:
        owner.kill()
        owner.wait()
        # The owner could not remove its cgroups: the next start of that prefix sweeps.
        FunctionRuntime(state, prefix, layout=layout).sweep()
        shutil.rmtree(state, ignore_errors=True)
    assert not layout.groups(prefix)


def test_a_zygote_killed_outright_takes_its_workers_along(
    tmp_path: Path, uniq: Callable[[str], str]
) -> None:
    prefix = uniq("zkill")
    state = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    rt = FunctionRuntime(state, prefix)
    rt.start()
    try:
        dep = rt.deploy(
            FunctionSpec("zk", 1, "main.handler"), _source(tmp_path, "z", HANDLERS["echo"])
        )
        w = rt.spawn(dep)
        assert rt.zygote_pid is not None
        os.kill(rt.zygote_pid, signal.SIGKILL)
        # The parent death signal, set after the uid switch (which clears it), fires.
        assert poll_until(lambda: _gone(w.pid), 5.0)
        assert poll_until(lambda: not rt.zygote_alive, 5.0)
        inv = rt.invoke(w, 1)
        assert not inv.ok and inv.worker_exited
    finally:
        rt.stop()
        shutil.rmtree(state)
    assert not rt.layout.groups(prefix)


def test_stop_leaves_no_process_cgroup_or_temp_dir(
    tmp_path: Path, uniq: Callable[[str], str]
) -> None:
    prefix = uniq("clean")
    state = tmp_path / "closed" / "state"  # under directories closed to the workers' uids
    state.parent.mkdir(mode=0o700)
    rt = FunctionRuntime(state, prefix)
    rt.start()
    try:
        dep = rt.deploy(
            FunctionSpec("clean", 1, "main.handler"), _source(tmp_path, "c", HANDLERS["echo"])
        )
        workers = [rt.spawn(dep) for _ in range(3)]
        assert rt.invoke(workers[0], {"x": 1}).ok  # its code reached through a descriptor
        zygote = rt.zygote_pid
        assert len(rt.layout.groups(prefix)) == 3
    finally:
        rt.stop()
    assert zygote is not None and procstat.read(zygote) is None
    assert all(procstat.read(w.pid) is None for w in workers)
    assert not rt.layout.groups(prefix)
    assert not rt.workers()
    assert [p.name for p in (state / "code" / "clean").iterdir()] == ["v1"]  # no .tmp left
    shutil.rmtree(state)
