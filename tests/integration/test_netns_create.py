"""Named network namespaces created by the agent itself (no fork), as `ip netns` sees them."""

from __future__ import annotations

import errno
import os
import subprocess
import threading

import pytest
from pyroute2 import netns

from yunhan.net import nsutil

pytestmark = pytest.mark.root


def test_create_netns_makes_a_namespace_ip_netns_can_use(run_prefix: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root")
    name = f"{run_prefix}-nscreate"
    try:
        nsutil.create_netns(name)
        assert name in netns.listnetns()
        # A namespace of its own (not the agent's), usable by iproute2 and by setns.
        assert os.stat(nsutil.netns_path(name)).st_ino != os.stat("/proc/self/ns/net").st_ino
        out = subprocess.run(
            ["ip", "-n", name, "-o", "link"], capture_output=True, text=True, check=True
        ).stdout
        assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]
        inside = nsutil.run_in(lambda: os.readlink("/proc/thread-self/ns/net"), net=name)
        assert inside != os.readlink("/proc/self/ns/net")
        with pytest.raises(OSError) as exc:
            nsutil.create_netns(name)
        assert exc.value.errno == errno.EEXIST
    finally:
        if os.path.exists(nsutil.netns_path(name)):
            netns.remove(name)
    assert name not in netns.listnetns()


def test_a_worker_runs_calls_inside_its_namespace_and_ends_on_close(run_prefix: str) -> None:
    name = f"{run_prefix}-nsworker"
    nsutil.create_netns(name)
    try:
        w = nsutil.NsWorker(name)
        target = os.stat(nsutil.netns_path(name)).st_ino
        assert w.call(lambda: os.stat("/proc/thread-self/ns/net").st_ino) == target
        with pytest.raises(ZeroDivisionError):
            w.call(lambda: 1 // 0)
        assert w.call(lambda: "still serving") == "still serving"
        w.close()
        # No thread is left holding the namespace.
        assert f"ns:{name}" not in {t.name for t in threading.enumerate()}
    finally:
        netns.remove(name)


def test_a_worker_refuses_a_file_that_is_no_namespace(run_prefix: str) -> None:
    name = f"{run_prefix}-nsplain"
    path = nsutil.netns_path(name)
    path.touch()
    try:
        with pytest.raises(OSError) as exc:
            nsutil.NsWorker(name)
        assert exc.value.errno == errno.EINVAL
    finally:
        path.unlink()
