"""What the linux driver takes for its own (no kernel needed: listings come from fakes)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from yunhan.net import linux
from yunhan.net.naming import Naming


class _Listed:
    """A sandbox (net.driver.Sandbox) that holds UTS namespaces and processes by name."""

    def __init__(self, uts: dict[str, str], procs: dict[str, tuple[str, ...]]) -> None:
        self.uts, self.procs = uts, procs

    def list_uts(self, prefix: str) -> dict[str, str]:
        return {ns: h for ns, h in self.uts.items() if ns.startswith(prefix)}

    def ensure_uts(self, netns: str, hostname: str) -> None:
        self.uts[netns] = hostname

    def remove_uts(self, netns: str) -> None:
        self.uts.pop(netns, None)

    def running(self, prefix: str) -> dict[str, tuple[str, ...]]:
        return {ns: a for ns, a in self.procs.items() if ns.startswith(prefix)}

    def start(self, netns: str, argv: Sequence[str]) -> None:
        self.procs[netns] = tuple(argv)

    def stop(self, netns: str) -> None:
        self.procs.pop(netns, None)


def test_uts_and_processes_of_a_longer_prefix_are_not_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Host "az1-h1" of region "r" has prefix "r-az1-h1-"; region "r-az1-h1" (a valid
    # prefix) has a host whose instances are "r-az1-h1-az1-h1-i-…". Namespaces are matched
    # exactly; UTS files and process records must be too, or a teardown of the first
    # unmounts the hostnames of the second.
    ours = "r-az1-h1-i-0000a001"
    theirs = "r-az1-h1-az1-h1-i-0000a001"
    monkeypatch.setattr(linux.netns, "listnetns", lambda: [])
    sandbox = _Listed({ours: "a", theirs: "b"}, {ours: ("sleep",), theirs: ("sleep",)})
    d = linux.LinuxDriver(naming=Naming("r-az1-h1-"), host_netns=None, sandbox=sandbox)
    keys = set(d.observe())
    assert keys == {("uts", ours), ("proc", ours)}
