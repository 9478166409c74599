"""A name of ours under /run/netns that is in fact the agent's own (root) namespace: nothing
may be observed, planned, programmed or killed through it (root needed). It is made with a
bind mount of our own /proc/<pid>/ns/net, which adds nothing to the root namespace."""

from __future__ import annotations

import errno
import os
import pathlib
from collections.abc import Callable, Iterator

import pytest

from yunhan import nsexec
from yunhan.agent.dataplane import DataPlane
from yunhan.compute import netns_sandbox
from yunhan.lab import cleanup
from yunhan.net import nsutil
from yunhan.net.desired import HostDesired, VpcDesired
from yunhan.net.naming import Naming
from yunhan.net.state import Netns

pytestmark = pytest.mark.root


@pytest.fixture
def alias(uniq: Callable[[str], str]) -> Iterator[str]:
    prefix = uniq("ra")
    name = f"{prefix}-v7"
    path = nsexec.netns_path(name)
    nsexec.NETNS_DIR.mkdir(exist_ok=True)
    path.touch()
    try:
        nsutil.mount(f"/proc/{os.getpid()}/ns/net", str(path), nsutil.MS_BIND)
        yield name
    finally:
        nsutil.umount(str(path))
        path.unlink(missing_ok=True)


def test_cleanup_never_lists_the_processes_of_the_root_namespace(alias: str) -> None:
    assert cleanup.pids_in_netns([alias]) == []


def test_the_agent_never_programs_the_root_namespace_through_a_name(
    alias: str, tmp_path: pathlib.Path
) -> None:
    prefix = alias.removesuffix("v7")
    dp = DataPlane(naming=Naming(prefix), host_netns=None, state_dir=tmp_path)
    # The name is one the document wants: nothing found through it may be adopted (or
    # deleted: the root namespace's addresses), it is replaced by a namespace of its own.
    vpc = VpcDesired(id="vpc-x", vni=7, cidrs=("10.99.0.0/16",), gateways=("10.99.1.1/24",))
    doc = HostDesired(host="h1", underlay_ip="198.18.1.11", vtep_index=1, vpcs=(vpc,))
    try:
        ops = dp.plan(doc)  # plan only: nothing is changed before this is checked
        assert [op for op in ops if op.action == "delete"] == []
        netns_ops = [op for op in ops if isinstance(op.obj, Netns)]
        assert [(op.action, op.old) for op in netns_ops] == [("replace", Netns(alias, "stale"))]
        r = dp.apply(doc)
        assert r.errors == []
        assert os.stat(nsexec.netns_path(alias)).st_ino != os.stat("/proc/self/ns/net").st_ino
    finally:
        dp.teardown()
    assert not nsexec.netns_path(alias).exists()


def test_a_uts_file_bound_to_the_machines_uts_namespace_is_never_entered(
    uniq: Callable[[str], str],
) -> None:
    name = f"{uniq('ru')}-i-0000a001"
    path = netns_sandbox.uts_path(name)
    nsutil.ensure_private_dir(path.parent)
    path.touch()
    before = os.uname().nodename
    try:
        nsutil.mount(f"/proc/{os.getpid()}/ns/uts", str(path), nsutil.MS_BIND)
        # Checked first, and read-only: entering it to set a hostname would rename the machine.
        with pytest.raises(OSError) as exc:
            nsutil.get_hostname(path)
        assert exc.value.errno == errno.EINVAL
        netns_sandbox.ensure_uts(name, "vm-0000a001")  # replaced by a namespace of its own
        assert nsutil.get_hostname(path) == "vm-0000a001"
        assert os.uname().nodename == before
    finally:
        netns_sandbox.remove_uts(name)  # its mount namespace too
    assert os.uname().nodename == before
