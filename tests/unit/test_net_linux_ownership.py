"""What the linux driver takes for its own (no kernel needed: listings are stubbed)."""

from __future__ import annotations

import pathlib

import pytest

from yunhan.compute import netns_sandbox
from yunhan.net import linux
from yunhan.net.naming import Naming


def test_uts_and_processes_of_a_longer_prefix_are_not_ours(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    # Host "az1-h1" of region "r" has prefix "r-az1-h1-"; region "r-az1-h1" (a valid
    # prefix) has a host whose instances are "r-az1-h1-az1-h1-i-…". Namespaces are matched
    # exactly; UTS files and process records must be too, or a teardown of the first
    # unmounts the hostnames of the second.
    ours = "r-az1-h1-i-0000a001"
    theirs = "r-az1-h1-az1-h1-i-0000a001"
    monkeypatch.setattr(linux.netns, "listnetns", lambda: [])
    monkeypatch.setattr(netns_sandbox, "list_uts", lambda prefix: {ours: "a", theirs: "b"})
    rec = netns_sandbox.ProcRecord(1, 1, ("sleep",))
    monkeypatch.setattr(netns_sandbox, "running", lambda d, prefix: {ours: rec, theirs: rec})
    monkeypatch.setattr(netns_sandbox, "in_sandbox", lambda ns, r: True)
    d = linux.LinuxDriver(naming=Naming("r-az1-h1-"), host_netns=None, state_dir=tmp_path)
    keys = set(d.observe())
    assert keys == {("uts", ours), ("proc", ours)}
