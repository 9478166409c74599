"""The agent's fleet patching on real processes (issue 13, agent half).

The test builds a shared library (salted, so that its build-id is this run's own and no
other process of the machine maps it) and a service that answers `fleet_value(N)` for
each line N on its stdin, and a patch of the library with `yunhan.hotpatch.build`. The
services are started detached (`setsid -f`): like real workloads, they are not children
of the agent (the test process). The worker (`agent.patches.Patches`, its real threads,
the real engine, the kernel's process-event connector) runs against a fake control plane
on an `httpx.MockTransport` that serves one assignment and the .yhp and keeps the reports.

Checked by behaviour: the services answer the patched value once reported applied; one
started after the worker (the periodic rescan is off: only the connector can find it) is
patched too; one killed in its health window is reported died; `want: rollback` brings the
old answers back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.polling import wait_for
from yunhan import hotpatch, procstat
from yunhan.agent.patches import LinuxProcesses, Patches
from yunhan.net.naming import Naming

pytestmark = pytest.mark.root

LIB = """
const char *fleet_salt = "%s";
__attribute__((noipa)) int fleet_value(int x) {
    int r = x;
    for (int i = 0; i < 3; i++) r += 7 + (x & i);
    return r;
}
"""
SERVICE = """
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int fleet_value(int x);
int main(void) {
    char buf[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\\n", getpid());
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf - 1);
        if (n <= 0) return 0;
        buf[n] = 0;
        printf("%d\\n", fleet_value(atoi(buf)));
    }
}
"""
PATCH = """
#include <yunhan/hotpatch.h>
static int fleet_value_v2(int x) { return x * 1000; }
YUNHAN_PATCH(fleet_value, fleet_value_v2);
"""
CFLAGS = ["-O2", "-fcf-protection=full", "-Wl,--build-id"]


def old_value(x: int) -> int:
    return x + sum(7 + (x & i) for i in range(3))


def cc(*argv: str | Path) -> None:
    p = subprocess.run(["gcc", *map(str, argv)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


class Service:
    """A service started detached (`setsid -f`: its parent exits at once), in network
    namespace `netns` if given, spoken to over the pipes it inherited."""

    def __init__(self, binary: Path, netns: str | None = None) -> None:
        enter = [] if netns is None else ["nsenter", f"--net=/run/netns/{netns}"]
        self.p = subprocess.Popen(
            [*enter, "setsid", "-f", str(binary)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.p.wait(timeout=10)  # setsid itself; the service runs on
        self._buf = b""
        self.pid = 0
        line = self.readline()
        assert line.startswith("ready "), line
        self.pid = int(line.split()[1])

    def readline(self, timeout: float = 10.0) -> str:
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no answer from {self.pid} in {timeout}s"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                assert chunk, f"service {self.pid} closed its stdout"
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def ask(self, x: int) -> int:
        assert self.p.stdin is not None
        self.p.stdin.write(f"{x}\n".encode())
        self.p.stdin.flush()
        return int(self.readline())

    def kill(self) -> None:
        if self.pid:
            _kill(self.pid)
        for f in (self.p.stdin, self.p.stdout):
            if f is not None:
                f.close()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    # Not our child: init reaps it. Wait until it is gone or a zombie.
    wait_for(
        lambda: not (procstat.read(pid) or procstat.ProcStat("X", 0)).alive,
        10.0,
        f"process {pid} to die",
    )


def _running(binary: Path) -> list[int]:
    """The pids of the processes running `binary`."""
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{e}/exe") == str(binary):
                    out.append(int(e))
    return out


class FakeControlPlane:
    """Host h1's agent routes: one assignment, its file, the reports."""

    def __init__(self, yhp: bytes, patch_id: str, build_id: str) -> None:
        self.yhp = yhp
        self.digest = hashlib.sha256(yhp).hexdigest()
        self.patch_id, self.build_id = patch_id, build_id
        self.want = "apply"
        self.reports: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        with self.lock:
            if path == "/v1/agent/hosts/h1/patches":
                a = {"id": "hp-1", "name": "fleet-fix", "digest": self.digest,
                     "patch_id": self.patch_id, "build_id": self.build_id, "want": self.want,
                     "health_window": 60}  # fmt: skip
                return httpx.Response(200, json={"patches": [a]})
            if path == f"/v1/agent/patches/{self.digest}":
                return httpx.Response(200, content=self.yhp)
            if path == "/v1/agent/hosts/h1/patch-reports":
                self.reports.extend(json.loads(request.content)["reports"])
                return httpx.Response(204)
        return httpx.Response(404, json={"error": {"message": f"no route {path}"}})

    def result(self, pid: int) -> str | None:
        """The last result reported for `pid`."""
        with self.lock:
            rows = [p for r in self.reports for p in r["processes"] if p["pid"] == pid]
        return rows[-1]["result"] if rows else None

    def state(self) -> str | None:
        with self.lock:
            return self.reports[-1]["state"] if self.reports else None


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(service binary, its library, the patch .yhp), this run's own build."""
    lib_c = tmp_path / "libfleet.c"
    lib_c.write_text(LIB % secrets.token_hex(8))
    lib = tmp_path / "libfleet.so"
    cc(*CFLAGS, "-fPIC", "-shared", lib_c, "-o", lib)
    svc_c = tmp_path / "service.c"
    svc_c.write_text(SERVICE)
    svc = tmp_path / "service"
    cc(*CFLAGS, svc_c, "-o", svc, f"-L{tmp_path}", "-lfleet", f"-Wl,-rpath,{tmp_path}")
    patch_c = tmp_path / "fleet-fix.c"
    patch_c.write_text(PATCH)
    yhp = tmp_path / "fleet-fix.yhp"
    hotpatch.build(patch_c, lib, yhp)
    return svc, lib, yhp


@pytest.fixture
def services(built: tuple[Path, Path, Path]) -> Iterator[list[Service]]:
    started: list[Service] = []
    try:
        yield started
    finally:
        for s in started:
            s.kill()
        for pid in _running(built[0]):  # one whose start failed halfway, too
            _kill(pid)


def test_a_library_patch_reaches_every_process_new_ones_included_and_rolls_back(
    built: tuple[Path, Path, Path], services: list[Service], tmp_path: Path
) -> None:
    svc, _lib, yhp = built
    manifest = hotpatch.read_manifest(str(yhp))
    api = FakeControlPlane(yhp.read_bytes(), manifest.patch_id, manifest.build_id)
    for _ in range(2):
        services.append(Service(svc))
    assert [s.ask(5) for s in services] == [old_value(5)] * 2

    worker = Patches(
        naming=Naming("tfleet-"),
        client=httpx.Client(transport=httpx.MockTransport(api.handle)),
        api=lambda tail: f"http://api{tail}",
        host_name="h1",
        host_netns=None,  # a real host: every process (the salted build is ours alone)
        cache_dir=tmp_path / "cache",
        interval=0.2,
        processes=LinuxProcesses(journal_dir=tmp_path / "journal"),
        rescan_interval=3600.0,  # no rescan: a process started later is the connector's
    )
    worker.start()
    try:
        first, second = services
        wait_for(lambda: api.state() == "applied", 30.0, "the patch applied")
        assert api.result(first.pid) == api.result(second.pid) == "applied"
        assert [s.ask(5) for s in services] == [5000, 5000]

        wait_for(lambda: worker.connected, 10.0, "the process-event connector")
        third = Service(svc)
        services.append(third)
        wait_for(lambda: api.result(third.pid) == "applied", 15.0, "the new process patched")
        assert third.ask(7) == 7000
        assert api.state() == "applied"

        # One killed within the health window is reported died, once.
        doomed = Service(svc)
        services.append(doomed)
        wait_for(lambda: api.result(doomed.pid) == "applied", 15.0, "the fourth patched")
        doomed.kill()
        wait_for(lambda: api.result(doomed.pid) == "died", 10.0, "the death reported")
        services.remove(doomed)

        with api.lock:
            api.want = "rollback"
        wait_for(lambda: api.state() == "rolled_back", 30.0, "the rollback")
        assert {api.result(s.pid) for s in services} == {"rolled_back"}
        assert [s.ask(5) for s in services] == [old_value(5)] * 3
        assert (
            hotpatch.list_patches(first.pid, journal_dir=tmp_path / "journal")[0].patches[-1].state
            == "rolled-back"
        )
    finally:
        worker.stop()
    assert not worker.running


@pytest.fixture
def namespaces(run_prefix: str) -> Iterator[list[str]]:
    """Named network namespaces created by the test (deleted after its processes)."""
    made: list[str] = []

    def add(name: str) -> str:
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        return name

    names: list[str] = []
    try:
        host = f"{run_prefix}-fp-host"
        names = [
            add(host),
            add(f"{run_prefix}-fp-h1-i-0000f001"),  # this agent's instance
            add(f"{run_prefix}-fp-h2-i-0000f002"),  # another agent's instance
        ]
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_in_the_lab_an_agent_patches_its_host_and_instance_namespaces_only(
    built: tuple[Path, Path, Path],
    services: list[Service],
    namespaces: list[str],
    run_prefix: str,
    tmp_path: Path,
) -> None:
    """The scope against the kernel: `--host-netns` takes the host namespace and the
    namespaces named like this agent's instances; another agent's instance and the
    machine's own namespace keep the old code."""
    svc, _lib, yhp = built
    host_ns, mine_ns, theirs_ns = namespaces
    manifest = hotpatch.read_manifest(str(yhp))
    api = FakeControlPlane(yhp.read_bytes(), manifest.patch_id, manifest.build_id)
    on_host, in_mine, in_theirs, outside = (
        Service(svc, host_ns),
        Service(svc, mine_ns),
        Service(svc, theirs_ns),
        Service(svc),
    )
    services.extend([on_host, in_mine, in_theirs, outside])
    worker = Patches(
        naming=Naming(f"{run_prefix}-fp-h1-"),
        client=httpx.Client(transport=httpx.MockTransport(api.handle)),
        api=lambda tail: f"http://api{tail}",
        host_name="h1",
        host_netns=host_ns,
        cache_dir=tmp_path / "cache",
        interval=0.2,
        instances=lambda: ["inst-0000f001"],
        processes=LinuxProcesses(journal_dir=tmp_path / "journal"),
        connector=None,
    )
    worker.start()
    try:
        wait_for(lambda: api.state() == "applied", 30.0, "the patch applied")
    finally:
        worker.stop()
    assert [s.ask(3) for s in services] == [3000, 3000, old_value(3), old_value(3)]
    with api.lock:
        rows = {p["pid"]: p for r in api.reports for p in r["processes"]}
    assert sorted(rows) == sorted([on_host.pid, in_mine.pid])
    assert rows[in_mine.pid]["instance"] == "inst-0000f001"
    assert rows[on_host.pid]["instance"] is None
