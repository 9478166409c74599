"""The agent's function host on the real kernel: a real FunctionRuntime behind the real
HTTP endpoint, driven as the router drives it (HostClient). Every runtime is named by a
per-run prefix; each host's teardown proves that no worker process, cgroup or directory
is left, even when its test failed."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from yunhan import procstat
from yunhan.agent.functions import FunctionHost
from yunhan.errors import Forbidden, Unreachable, ValidationError, WorkerGone
from yunhan.functions import FunctionRuntime
from yunhan.functions.hostclient import HostClient, VersionMissing
from yunhan.polling import poll_until

pytestmark = pytest.mark.root

HANDLERS = {
    "echo": """
        def handler(event, context):
            print("echo got", event)
            return {"echo": event}
    """,
    "nap": """
        import time

        def handler(event, context):
            start = time.time()
            time.sleep(event.get("s", 0.3))
            return {"start": start, "end": time.time()}
    """,
    "boom": """
        def handler(event, context):
            raise ValueError("boom " + str(event))
    """,
    "bad": """
        def handler(event, context)
            return 1
    """,
}


def _tar_gz(body: str) -> bytes:
    """The same bytes for the same body: no time in the gzip header (mode "w:gz" writes the
    current second there, and two puts of one version that straddled a second differed)."""
    data = textwrap.dedent(body).encode()
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        info = tarfile.TarInfo("main.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _gone(pid: int) -> bool:
    st = procstat.read(pid)
    return st is None or not st.alive


@pytest.fixture
def start_host(run_prefix: str, uniq: Callable[[str], str]) -> Iterator[Callable[..., Any]]:
    """start_host(**kw) -> (FunctionHost, HostClient); stopped and checked at teardown."""
    made: list[tuple[FunctionHost, HostClient, Path]] = []

    def start(**kw: Any) -> tuple[FunctionHost, HostClient]:
        prefix = uniq("fh").replace("-", "")
        state = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        host = FunctionHost(FunctionRuntime(state, prefix), **kw)
        client = HostClient("http://unused", host.key)
        made.append((host, client, state))
        host.start()
        client = HostClient(host.endpoint, host.key)
        made[-1] = (host, client, state)
        return host, client

    yield start
    for host, client, state in made:
        client.close()
        pids = [w.pid for w in host.runtime.workers()]
        zygote = host.runtime.zygote_pid
        host.stop()
        assert not host.runtime.layout.groups(host.runtime.prefix), "cgroups left"
        assert all(poll_until(lambda p=p: _gone(p), 5.0) for p in pids), "workers left"
        assert zygote is None or poll_until(lambda z=zygote: _gone(z), 5.0), "zygote left"
        assert not host.runtime.workers()
        incoming = state / "incoming"
        assert not incoming.exists() or not list(incoming.iterdir()), "unpacked code left"
        shutil.rmtree(state)


@pytest.fixture
def fn(uniq: Callable[[str], str]) -> Callable[[str], str]:
    """A function id unique to the run (the runtime's naming rules: a-z first)."""
    return lambda kind: "fn-" + uniq(kind).lower()


def _put(client: HostClient, function: str, kind: str, **kw: Any) -> None:
    code = _tar_gz(HANDLERS[kind])
    client.put_version(
        function,
        1,
        name=kind,
        handler="main.handler",
        memory_mb=kw.pop("memory_mb", 128),
        timeout_s=kw.pop("timeout_s", 3.0),
        env={},
        tar_gz=code,
        sha256=hashlib.sha256(code).hexdigest(),
    )


def test_deploy_then_spawn_then_invoke_then_stop(
    start_host: Callable[..., Any], fn: Callable[[str], str]
) -> None:
    host, client = start_host()
    f = fn("echo")
    _put(client, f, "echo")
    _put(client, f, "echo")  # idempotent: the same version again changes nothing
    wid, spawn_ms = client.spawn(f, 1, owner="router-a")
    assert spawn_ms > 0
    out = client.invoke(wid, "req-1", {"a": [1, "two"]}, timeout_s=2.0)
    assert out["ok"], out
    assert out["result"] == {"echo": {"a": [1, "two"]}}
    assert out["request_id"] == "req-1"
    assert out["billed_ms"] >= 1
    assert out["worker_exited"] is False
    listed = client.workers("router-a")
    assert [(w["worker"], w["function"], w["version"], w["busy"]) for w in listed] == [
        (wid, f, 1, False)
    ]
    assert client.workers("router-b") == []
    assert host.report()["workers"] == 1
    exit_ = client.stop(wid)
    assert exit_["signal"] == 9 and exit_["oom"] is False
    with pytest.raises(WorkerGone):
        client.invoke(wid, "req-2", {}, timeout_s=2.0)
    with pytest.raises(WorkerGone):
        client.stop(wid)
    assert host.report()["workers"] == 0


def test_spawn_of_a_version_not_deployed_is_version_missing_until_it_is_put(
    start_host: Callable[..., Any], fn: Callable[[str], str]
) -> None:
    _host, client = start_host()
    f = fn("echo")
    with pytest.raises(VersionMissing):
        client.spawn(f, 1, owner="router-a")
    _put(client, f, "echo")
    wid, _ = client.spawn(f, 1, owner="router-a")
    assert client.invoke(wid, "r", 7, timeout_s=2.0)["result"] == {"echo": 7}


def test_refused_code_and_another_version_under_the_same_number(
    start_host: Callable[..., Any], fn: Callable[[str], str]
) -> None:
    _host, client = start_host()
    f = fn("bad")
    with pytest.raises(ValidationError, match="syntax error"):
        _put(client, f, "bad")
    with pytest.raises(VersionMissing):  # nothing of it was kept
        client.spawn(f, 1, owner="router-a")
    g = fn("echo")
    _put(client, g, "echo")
    with pytest.raises(Exception, match="immutable"):
        _put(client, g, "boom")  # version 1 again, with other code


def test_a_wrong_or_missing_key_is_refused(
    start_host: Callable[..., Any], fn: Callable[[str], str]
) -> None:
    host, _client = start_host()
    with HostClient(host.endpoint, "not-the-key") as wrong, pytest.raises(Forbidden):
        wrong.workers()
    r = httpx.get(f"{host.endpoint}/workers")
    assert r.status_code == 401
    assert "error" in r.json()


def test_two_workers_invoked_from_two_threads_run_at_once(
    start_host: Callable[..., Any], fn: Callable[[str], str]
) -> None:
    _host, client = start_host()
    f = fn("nap")
    _put(client, f, "nap")
    wids = [client.spawn(f, 1, owner="router-a")[0] for _ in range(2)]
    out: dict[str, dict[str, Any]] = {}
    barrier = threading.Barrier(2)

    def call(wid: str) -> None:
        barrier.wait(5)
        out[wid] = client.invoke(wid, f"r-{wid}", {"s": 0.3}, timeout_s=5.0)

    threads = [threading.Thread(target=call, args=(w,)) for w in wids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    a, b = (out[w] for w in wids)
    assert a["ok"] and b["ok"], (a, b)
    ra, rb = a["result"], b["result"]
    # Each handler slept 0.3 s; if the host ran them one after the other, the intervals
    # would not overlap.
    assert ra["start"] < rb["end"] and rb["start"] < ra["end"], (ra, rb)


def test_errors_and_timeouts_are_the_runtimes_answers(
    start_host: Callable[..., Any], fn: Callable[[str], str]
) -> None:
    _host, client = start_host()
    boom, nap = fn("boom"), fn("nap")
    _put(client, boom, "boom")
    _put(client, nap, "nap", timeout_s=1.0)
    wid, _ = client.spawn(boom, 1, owner="router-a")
    out = client.invoke(wid, "r1", 5, timeout_s=2.0)
    assert out["ok"] is False and "boom 5" in out["error"] and out["traceback"]
    assert out["worker_exited"] is False
    assert client.invoke(wid, "r2", 6, timeout_s=2.0)["worker_exited"] is False  # lives on
    wid, _ = client.spawn(nap, 1, owner="router-a")
    out = client.invoke(wid, "r3", {"s": 10}, timeout_s=0.5)
    assert out["ok"] is False and out["error"] == "timed out after 0.5 s"
    assert out["worker_exited"] is True
    with pytest.raises(WorkerGone):
        client.invoke(wid, "r4", {}, timeout_s=1.0)


def test_logs_give_the_tail_of_the_functions_log(
    start_host: Callable[..., Any], fn: Callable[[str], str]
) -> None:
    _host, client = start_host()
    f = fn("echo")
    _put(client, f, "echo")
    wid, _ = client.spawn(f, 1, owner="router-a")
    for i in range(5):
        client.invoke(wid, f"r{i}", i, timeout_s=2.0)
    assert poll_until(lambda: "echo got 4" in client.logs(f, tail=100), 5.0)
    assert client.logs(f, tail=2) == ["echo got 3", "echo got 4"]
    assert client.logs(fn("never"), tail=10) == []


def test_an_idle_worker_its_owner_forgot_is_reaped_and_a_busy_one_is_not(
    start_host: Callable[..., Any], fn: Callable[[str], str]
) -> None:
    host, client = start_host(idle_reap_s=0.5, reap_every=0.1)
    f = fn("nap")
    _put(client, f, "nap")
    idle, _ = client.spawn(f, 1, owner="dead-router")
    busy, _ = client.spawn(f, 1, owner="live-router")
    pid = next(w.pid for w in host.runtime.workers() if w.id == idle)
    # Busy for 1.5 s, three times the idle time: the reaper must leave it alone.
    out = client.invoke(busy, "long", {"s": 1.5}, timeout_s=5.0)
    assert out["ok"], out
    assert poll_until(lambda: not client.workers("dead-router"), 5.0)
    assert poll_until(lambda: _gone(pid), 5.0)
    with pytest.raises(WorkerGone):
        client.invoke(idle, "late", {}, timeout_s=1.0)
    assert not any(g.name == idle for g in host.runtime.layout.groups(host.runtime.prefix))


def test_stop_leaves_no_worker_cgroup_or_listener(
    start_host: Callable[..., Any], fn: Callable[[str], str]
) -> None:
    host, client = start_host()
    f = fn("echo")
    _put(client, f, "echo")
    for _ in range(3):
        client.spawn(f, 1, owner="router-a")
    pids = [w.pid for w in host.runtime.workers()]
    assert len(host.runtime.layout.groups(host.runtime.prefix)) == 3
    endpoint = host.endpoint
    host.stop()
    assert all(poll_until(lambda p=p: _gone(p), 5.0) for p in pids)
    assert not host.runtime.layout.groups(host.runtime.prefix)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{endpoint}/workers", timeout=2.0)
    with pytest.raises(Unreachable):  # nor on a connection kept alive from before
        client.workers("router-a")
    started = time.monotonic()
    host.stop()  # again (the fixture's): harmless
    assert time.monotonic() - started < 5.0
