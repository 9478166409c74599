"""The agent's face on the host data plane: apply a `HostDesired`, report what is true.

`apply` is level-triggered (STYLE §4): observe what exists, plan the difference, execute,
and repeat until a pass plans nothing (at most a few passes: a re-created port takes its
dependants with it, and the next pass puts them back). A fresh `DataPlane` on a host that
already carries the state (an agent restarted after SIGKILL) observes it and plans zero
ops; nothing is removed and re-added. Failures are per object: a port that cannot be
built is reported and the rest of the document is still applied. A changed document is
planned against what the last clean apply left, and the kernel is read in full on resync
(see `apply`): reading every namespace was most of the time a new instance waited for.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from yunhan.errors import DriverError
from yunhan.net.desired import HostDesired
from yunhan.net.driver import Driver, execute
from yunhan.net.fastpath import Status as FastStatus
from yunhan.net.naming import Naming
from yunhan.net.natgw import Uplink, VethPair
from yunhan.net.state import (
    Filter,
    Key,
    Netns,
    Obj,
    Op,
    State,
    Veth,
    Vxlan,
    after,
    compile_state,
    owner_keys,
    plan,
)

if TYPE_CHECKING:
    from yunhan.net.fake import FakeFabric
    from yunhan.net.fastpath import FastPath


MAX_PASSES = 4
# How old the last full observation may be before the agent follows an apply with a full
# one, whatever the document (the agent's resync interval, 30 s, is the default).
FULL_OBSERVE_EVERY = 30.0

log = logging.getLogger("yunhan.agent.dataplane")


@dataclass
class InstanceReport:
    phase: str  # "running" | "failed"
    message: str
    netns: str
    uts: str


@dataclass
class ApplyReport:
    changes: int
    errors: list[str]
    instances: dict[str, InstanceReport] = field(default_factory=dict)


class DataPlane:
    """One host's data plane. `driver` is "linux" (the kernel) or "fake" (in memory)."""

    def __init__(
        self,
        *,
        naming: Naming,
        host_netns: str | None,
        driver: str = "linux",
        state_dir: pathlib.Path,
        fabric: FakeFabric | None = None,
        full_every: float = FULL_OBSERVE_EVERY,
        clock: Callable[[], float] = time.monotonic,
        uplink: Uplink | None = None,
        datapath: str = "kernel",
    ) -> None:
        """`uplink`: where to announce the public addresses of the NAT gateways this host
        runs (None: nowhere; in the lab, the core namespace). `datapath`: "fast" adds the
        tc-BPF fast path beside the kernel path where the host supports it (it falls back
        by itself, and says why); "kernel" keeps (or puts) every packet on the kernel path."""
        self.naming = naming
        self.uplink = uplink
        self.full_every = full_every
        self._clock = clock
        # What the host held at the end of the last apply, when that apply ended clean:
        # the next changed document is planned against it without reading the kernel.
        self._have: State | None = None
        self._desired: HostDesired | None = None
        self._full_at = -math.inf  # clock() of the last full observation
        self.host_netns = host_netns
        self.state_dir = state_dir
        self.kind = driver  # "linux": a kernel (flow logs are collected from it)
        self.driver: Driver
        if driver == "linux":
            from yunhan.compute.netns_sandbox import NetnsSandbox
            from yunhan.net.linux import LinuxDriver

            self.driver = LinuxDriver(
                naming=naming,
                host_netns=host_netns,
                sandbox=NetnsSandbox(state_dir),
                uplink=uplink,
            )
        elif driver == "fake":
            from yunhan.net.fake import FakeFabric

            self.fabric = fabric or FakeFabric()
            self.driver = self.fabric.host(naming, host_netns)
        else:
            raise ValueError(f"unknown data-plane driver {driver!r}")
        if datapath not in ("fast", "kernel"):
            raise ValueError(f"unknown datapath {datapath!r} (fast or kernel)")
        self.fastpath: FastPath | None = None
        if driver == "linux":
            from yunhan.net.fastpath import FastPath
            from yunhan.net.linux import LinuxDriver

            assert isinstance(self.driver, LinuxDriver)
            self.fastpath = FastPath(naming, self.driver)
        self.fastpath_on = self.fastpath is not None and datapath == "fast"
        self.datapath_status = FastStatus(
            "kernel",
            "not applied yet" if self.fastpath_on
            else "the fake driver has one path" if driver == "fake"
            else "the agent runs with --datapath kernel",
        )  # fmt: skip

    def compile(self, desired: HostDesired) -> State:
        """The objects `desired` calls for on this host."""
        return compile_state(
            desired, self.naming, uplink=self.uplink is not None, fastpath=self.fastpath_on
        )

    def observe(self) -> State:
        """Every object of ours that exists now (for tests, tools and the oracles)."""
        try:
            return self.driver.observe()
        finally:
            self.driver.close()

    def plan(self, desired: HostDesired) -> list[Op]:
        """What `apply(desired)` would do now (no change made)."""
        try:
            return plan(self.compile(desired), self.driver.observe())
        finally:
            self.driver.close()

    @property
    def full_due(self) -> bool:
        """Is the last full read of the host older than `full_every` seconds? The agent
        then follows the apply it just made with a full one (`apply(…, full=True)`)."""
        return self._clock() - self._full_at >= self.full_every

    def apply(self, desired: HostDesired, *, full: bool = False) -> ApplyReport:
        """Make the host carry `desired`; idempotent. Returns changes made and errors.

        A document that differs from the last one applied is planned against what the
        last clean apply left (no observation: most of an apply's time, most of a new
        instance's wait). The kernel is read in full, and drift repaired, when the same
        document is applied again (the agent's periodic resync), when `full` is asked
        (the agent asks right after an apply once `full_due`: so that a host that never
        stops receiving changes is still checked, without a change ever waiting for the
        read), after any error, and whenever an op planned from memory is refused: then
        the whole apply starts again from a full observation.
        """
        full = full or self._have is None or desired == self._desired
        if self.fastpath is not None and self.fastpath_on:
            try:
                self.fastpath.restrict(desired)  # nothing the new document forbids meanwhile
            finally:
                self.driver.close()
        report = self._apply(desired, None if full else self._have)
        if not full and report.errors:
            again = self._apply(desired, None)
            again.changes += report.changes
            report = again
        self._sync_fastpath(desired, widen=not report.errors)
        return report

    def _sync_fastpath(
        self, desired: HostDesired, *, reload: bool = False, widen: bool = True
    ) -> None:
        """The fast path follows the kernel path's apply (its maps name ports that now
        exist); with datapath "kernel", whatever an earlier run left is detached."""
        if self.fastpath is None:
            return
        try:
            if self.fastpath_on:
                self.datapath_status = self.fastpath.sync(desired, reload=reload, widen=widen)
            elif self.fastpath.loaded():
                self.fastpath.disable(desired)
        finally:
            self.driver.close()

    def datapath_report(self) -> FastStatus:
        """The data path as last applied, with the fast path's counters read now."""
        st = self.datapath_status
        if self.fastpath is None or st.mode != "fast":
            return st
        return replace(st, packets=self.fastpath.packets())

    def reload_fastpath(self, desired: HostDesired) -> None:
        """Load a new generation of the fast path's programs and swap it in (no gap)."""
        self._sync_fastpath(desired, reload=True)

    def _apply(self, desired: HostDesired, remembered: State | None) -> ApplyReport:
        self._have = None  # set again only by an apply that ends clean
        self._desired = desired
        t_start = time.monotonic()
        timing = {"observe": 0.0, "execute": 0.0}
        want = self.compile(desired)
        changes = 0
        errors: dict[Key, str] = {}
        # A refusal will not change by retrying at once: what failed (or was skipped
        # because what it lives in failed) is left out of the later passes, which still
        # run for everything else (a re-created port needs the next pass to come back up).
        blocked: set[Key] = set()
        broken: set[tuple[str, str | None]] = set()

        def held(op: Op) -> bool:
            if op.obj.key in blocked:
                return True
            ns, dev = owner_keys(op.obj)
            return op.action != "delete" and ((ns, None) in broken or (ns, dev) in broken)

        def observe() -> State:
            # A namespace that could not be read is left as it is (its objects out of both
            # sides: creating into it blind would re-create links that exist); the others
            # are applied. It can still be removed when the document drops it.
            t = time.monotonic()
            self._full_at = self._clock()
            have = self.driver.observe()
            timing["observe"] += time.monotonic() - t
            frozen = set(self.driver.unobserved)
            for ns, exc in self.driver.unobserved.items():
                errors[("netns", ns)] = f"observe {ns}: {exc.message}"
            if not frozen:
                return have
            for side in (want, have):
                for k in [k for k, o in side.items() if _touches(o, frozen)]:
                    want.pop(k, None)
                    have.pop(k, None)
            return have

        passes = 0
        try:
            have = observe() if remembered is None else dict(remembered)
            for _ in range(MAX_PASSES):
                ops = [op for op in plan(want, have) if not held(op)]
                if not ops:
                    break
                t = time.monotonic()
                res = execute(self.driver, ops)
                timing["execute"] += time.monotonic() - t
                passes += 1
                changes += len(res.done)
                for op, exc in res.failed:
                    errors[op.obj.key] = f"{op}: {exc.message}"
                    blocked.add(op.obj.key)
                    o = op.obj
                    if isinstance(o, Netns):
                        broken.add((o.name, None))
                    elif isinstance(o, Vxlan | Veth | VethPair | Filter) and op.action != "delete":
                        broken.add((o.netns, o.ifname))
                        if isinstance(o, Veth | VethPair) and o.peer_netns is not None:
                            broken.add((o.peer_netns, o.peer_ifname))
                blocked.update(op.obj.key for op in res.skipped)
                # After a clean pass the kernel holds what the ops said; observing the host
                # again would only confirm it. A failure, or an op that may have taken more
                # with it, is read back from the kernel.
                predicted = None if res.failed else after(have, res.done)
                have = observe() if predicted is None else predicted
            report = self._report(desired, want, have, changes, errors)
            if not errors:
                self._have = have
            if changes or errors:
                # The split of one apply, for bench/reachable.py and for a person reading
                # why a change took long to reach the kernel.
                log.info(
                    "apply %d took %.1f ms: observe %.1f ms%s, execute %.1f ms, "
                    "%d ops in %d passes",
                    desired.revision,
                    (time.monotonic() - t_start) * 1e3,
                    timing["observe"] * 1e3,
                    "" if remembered is None else " (planned from memory)",
                    timing["execute"] * 1e3,
                    changes,
                    passes,
                )
            return report
        except DriverError as exc:
            # Observation itself failed (a namespace vanished mid-read, netlink refused):
            # report it; the next pass starts from a fresh observation.
            errors[("observe",)] = f"observe: {exc.message}"
            return ApplyReport(changes=changes, errors=list(errors.values()), instances={})
        finally:
            self.driver.close()

    def _report(
        self,
        desired: HostDesired,
        want: State,
        have: State,
        changes: int,
        errors: dict[Key, str],
    ) -> ApplyReport:
        missing: dict[tuple[str, str | None], list[Obj]] = {}
        for k, o in want.items():
            if have.get(k) != o:
                missing.setdefault(owner_keys(o), []).append(o)
        err_by_owner: dict[tuple[str, str | None], list[str]] = {}
        for k, msg in errors.items():
            w = want.get(k) or have.get(k)
            if w is not None:
                err_by_owner.setdefault(owner_keys(w), []).append(msg)
        vni_ns = {v.id: self.naming.vpc_netns(v.vni) for v in desired.vpcs}
        instances: dict[str, InstanceReport] = {}
        for inst in desired.instances:
            ns = self.naming.instance_netns(inst.id)
            vpc_ns = vni_ns.get(inst.vpc_id, self.naming.vpc_netns(inst.vni))
            owners = [(ns, None), (ns, "lo"), (ns, "eth0"), (vpc_ns, None), (vpc_ns, inst.port)]
            msgs = [m for ow in owners for m in err_by_owner.get(ow, [])]
            lacking = [o for ow in owners for o in missing.get(ow, [])]
            if not any(p.ifname == inst.port for v in desired.vpcs for p in v.ports):
                msgs.append(f"port {inst.port} is not in the document")
            if msgs or lacking:
                detail = msgs or [f"not yet realised: {lacking[0]}"]
                instances[inst.id] = InstanceReport("failed", "; ".join(detail), ns, str(_uts(ns)))
            else:
                instances[inst.id] = InstanceReport("running", "", ns, str(_uts(ns)))
        return ApplyReport(changes=changes, errors=list(errors.values()), instances=instances)

    def teardown(self) -> None:
        """Remove everything of this host's prefix (namespaces, UTS files, processes)."""
        self._have = self._desired = None
        if self.fastpath is not None:
            self.fastpath.disable()
        try:
            have = self.driver.observe()
            ops = plan({}, have)
            res = execute(self.driver, ops)
            if res.failed:
                _op, exc = res.failed[0]
                raise exc
        finally:
            self.driver.close()


def _touches(o: Obj, namespaces: set[str]) -> bool:
    """Does `o` live in (or, for a port, reach into) one of `namespaces`? Netns never does."""
    if isinstance(o, Netns):
        return False
    return o.netns in namespaces or (isinstance(o, Veth | VethPair) and o.peer_netns in namespaces)


def _uts(netns: str) -> pathlib.Path:
    from yunhan.net.nsutil import UTS_DIR

    return UTS_DIR / netns
