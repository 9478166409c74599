"""The one interface between the planner and a data plane: observe, apply one op, close.

Two implementations: `linux.LinuxDriver` (netlink through pyroute2, nftables through
libnftables) and `fake.FakeDriver` (in memory, with the same errno semantics). Both are
driven by the same `execute` below and checked by the same scenario tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from yunhan.errors import DriverError
from yunhan.net.natgw import VethPair
from yunhan.net.state import Key, Op, State, Veth


class Driver(Protocol):
    # Namespaces the last `observe()` could not read (name -> why); they are listed as
    # Netns only, without their content.
    unobserved: dict[str, DriverError]

    def observe(self) -> State:
        """Every object of ours that exists now (see `state` for what counts as ours)."""
        ...

    def apply(self, op: Op) -> None:
        """Make one op true, ensure-style; raises DriverError (with errno) on refusal."""
        ...

    def close(self) -> None: ...


class Sandbox(Protocol):
    """The instance runtime behind `Uts` and `Process` objects: the linux driver realises
    them through it, so that net never imports compute (`compute.netns_sandbox.NetnsSandbox`
    is the real one; the agent's `DataPlane` plugs it in). Listings are by name prefix."""

    def list_uts(self, prefix: str) -> dict[str, str]:
        """netns name -> hostname of every persistent UTS namespace ("" when unreadable)."""
        ...

    def ensure_uts(self, netns: str, hostname: str) -> None: ...

    def remove_uts(self, netns: str) -> None: ...

    def running(self, prefix: str) -> dict[str, tuple[str, ...]]:
        """netns name -> argv of its live process. A process left in a namespace that was
        since replaced reads as ("<stale netns>", *argv), so that a plan replaces it."""
        ...

    def start(self, netns: str, argv: Sequence[str]) -> None: ...

    def stop(self, netns: str) -> None: ...


@dataclass
class ExecResult:
    done: list[Op] = field(default_factory=list)
    failed: list[tuple[Op, DriverError]] = field(default_factory=list)
    skipped: list[Op] = field(default_factory=list)


def execute(driver: Driver, ops: list[Op]) -> ExecResult:
    """Apply `ops` in order; a failure is recorded and does not stop unrelated ops.

    An op whose namespace could not be created, or whose link could not be created, is
    skipped (it would only fail with ENOENT and hide the first error); so is every later op
    on a port whose anti-spoofing chain could not be written (bringing it up above all).
    """
    res = ExecResult()
    broken_ns: set[str] = set()
    broken_links: set[tuple[str, str]] = set()
    for op in ops:
        o = op.obj
        ns = getattr(o, "name", None) if op.obj.key[0] == "netns" else getattr(o, "netns", None)
        dev = getattr(o, "ifname", None) or getattr(o, "dev", None)
        if op.action != "delete" and (
            ns in broken_ns or (ns is not None and dev is not None and (ns, dev) in broken_links)
        ):
            res.skipped.append(op)
            continue
        try:
            driver.apply(op)
            res.done.append(op)
        except DriverError as exc:
            res.failed.append((op, exc))
            if op.action != "delete":
                key: Key = o.key
                if key[0] == "netns" and ns is not None:
                    broken_ns.add(ns)
                elif key[0] == "link" and ns is not None and dev is not None:
                    broken_links.add((ns, dev))
                    if isinstance(o, Veth | VethPair) and o.peer_netns is not None:
                        broken_links.add((o.peer_netns, o.peer_ifname))
                elif key[0] == "filter" and ns is not None and dev is not None:
                    broken_links.add((ns, dev))  # fail closed: no port up without its chain
    return res
