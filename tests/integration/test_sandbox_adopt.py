"""An instance process that an agent started but could not record (killed in between) is
adopted by the restarted agent, never started a second time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pyroute2 import netns

from tests.polling import wait_for
from yunhan.compute import netns_sandbox
from yunhan.net import nsutil

pytestmark = pytest.mark.root


def test_an_unrecorded_process_is_adopted(uniq: Callable[[str], str], tmp_path: Path) -> None:
    name = uniq("adopt")
    argv = ["sleep", "300"]
    nsutil.create_netns(name)
    orphan = None
    try:
        # What a killed agent left: the process runs in the sandbox, no record names it.
        orphan = subprocess.Popen(["nsenter", f"--net={nsutil.netns_path(name)}", "--", *argv],
                                  start_new_session=True)  # fmt: skip
        # In its namespace and exec'd: nsenter enters the namespace before it execs the
        # command, and until then its command line is nsenter's own (a flake seen in CI).
        wait_for(
            lambda: (
                os.stat(f"/proc/{orphan.pid}/ns/net").st_ino
                == os.stat(nsutil.netns_path(name)).st_ino
                and Path(f"/proc/{orphan.pid}/cmdline").read_bytes().split(b"\0")[:-1]
                == [a.encode() for a in argv]
            ),
            5,
            "the process in its namespace",
        )
        assert netns_sandbox.running(tmp_path, name) == {}
        rec = netns_sandbox.start(tmp_path, name, argv)
        assert rec.pid == orphan.pid
        assert set(netns_sandbox.running(tmp_path, name)) == {name}
        # Another command line is another process: started, not adopted.
        other = netns_sandbox.start(tmp_path, name, ["sleep", "301"])
        assert other.pid != orphan.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(other.pid, signal.SIGKILL)
    finally:
        if orphan is not None:
            orphan.kill()
            orphan.wait()
        netns.remove(name)
