"""FRR for hybrid gateways (yunhan.net.frr) against real namespaces and real FRR daemons.

The rig is what production builds, small: a routed core; the lab's IDC site router (built
by `yunhan.lab.idc.realise`, the code `yunhan lab idc add` runs: VXLAN line with learning
and no FDB entry, `bgp listen range`, MD5, BFD, ECMP) with one server behind it; and two
"replicas", each a namespace with a routed link into the core and its end of the line
(VXLAN, nolearning, one FDB entry to the router's VTEP), running one FRR instance started
by `frr.start(render_session(...))`, as the agent will.

What must hold: both sessions come up over the line with MD5 and BFD; the router's kernel
routes the replicas' prefix over two ECMP next hops; traffic crosses the line to the
server; adding and removing an announced prefix changes what the router learns without
resetting the session; a replica with a wrong secret stays down and says why; losing a
replica (its FRR killed, or its link silently cut) leaves the router one next hop within
BFD's detection time (measured and printed, loosely asserted).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.integration import frrlab
from tests.integration.frrlab import CLOUD_ASN, Replica
from tests.polling import wait_for
from yunhan.errors import DriverError
from yunhan.lab import cleanup, idc
from yunhan.lab.cleanup import run
from yunhan.lab.spec import ECHO_PORT, RegionSpec
from yunhan.net import frr
from yunhan.net.desired import HYBRID_LINE_IFNAME
from yunhan.nsexec import NETNS_DIR

pytestmark = pytest.mark.root

SECRET = "s3cret-line"
CLOUD_PREFIX = "10.20.0.0/16"
EXTRA_PREFIX = "10.30.0.0/24"
LAN = "192.168.100.0/24"


@dataclass
class Rig:
    site: idc.SiteSpec
    replicas: list[Replica]

    @property
    def core(self) -> str:
        return self.site.core_netns

    @property
    def router(self) -> str:
        return self.site.netns

    def replica(self, n: int, secret: str | None = SECRET) -> Replica:
        """The n-th replica (1-based): underlay 198.18.1.(10+n), line .(10+n)."""
        ns = f"{self.core.removesuffix('-core')}-r{n}"
        return frrlab.replica(self.site, ns, n, f"198.18.1.{10 + n}", secret, (CLOUD_PREFIX,))


@pytest.fixture(scope="module")
def rig(run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    prefix = f"{run_prefix}-frr"
    region = RegionSpec.build(prefix=prefix, zones=1, hosts_per_zone=1)
    core = region.core_netns
    site = idc.SiteSpec.build(region, "dc1", 1, [LAN], servers=1, md5=True)
    rig = Rig(site, [])
    try:
        run(["ip", "netns", "add", core])
        run(["ip", "netns", "exec", core, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        run(["ip", "-n", core, "link", "set", "lo", "up"])
        log_dir = tmp_path_factory.mktemp("frr-logs")
        idc.realise(site, SECRET, log_dir=log_dir, region=prefix)
        # (realise again: an ensure, nothing changes and nothing fails)
        echoes = idc.realise(site, SECRET, log_dir=log_dir, region=prefix)
        assert len(echoes) == 1 and echoes[0].alive()
        rig.replicas = [rig.replica(1), rig.replica(2)]
        for r in rig.replicas:
            frrlab.build(rig.site, r)
        yield rig
    finally:
        for r in [*rig.replicas, rig.replica(3)]:
            frrlab.remove(site, r)
        idc.teardown(site)
        cleanup.remove_prefix(prefix)
        left = [n for n in cleanup.list_netns() if cleanup.owned(n, prefix)]
        assert left == []
        assert not [d for d in frr.FRR_STATE_DIR.glob(f"{prefix}-*")]
        assert not [d for d in frr.RUN_ROOT.glob(f"{prefix}-*")]


def _established(rig: Rig, *replicas: Replica) -> Callable[[], bool]:
    def ok() -> bool:
        return all(frr.bgp_status(r.netns).established for r in replicas)

    return ok


def _two_paths(rig: Rig) -> None:
    want = sorted(r.session.router_id for r in rig.replicas)
    wait_for(
        lambda: frrlab.nexthops(rig.router, CLOUD_PREFIX) == want,
        20,
        f"two ECMP next hops {want} for {CLOUD_PREFIX} in the site router",
    )


def _status_when(
    ns: str, ok: Callable[[frr.BgpStatus], bool], timeout: float, what: str
) -> frr.BgpStatus:
    def check() -> frr.BgpStatus | None:
        st = frr.bgp_status(ns)
        return st if ok(st) else None

    found = wait_for(check, timeout, what)
    assert found is not None
    return found


def test_sessions_up_with_md5_and_bfd_and_ecmp_in_the_router(rig: Rig) -> None:
    wait_for(_established(rig, *rig.replicas), 20, "both sessions established")
    learned = frr.LearnedRoute(LAN, rig.site.router_ip, str(rig.site.asn))
    for r in rig.replicas:
        assert frr.running(r.netns)
        st = _status_when(
            r.netns,
            lambda st: st.bfd == "up" and learned in st.learned,
            10,
            "BFD up and the IDC's range learned",
        )
        assert st.state == "Established" and st.reason == "" and st.up_since
        assert st.peer == rig.site.router_ip and st.connections == 1
        assert st.learned == (learned,)
        # The replica's zebra put the IDC's range in its kernel, through the line.
        wait_for(
            functools.partial(frrlab.routes_to, r.netns, LAN, [rig.site.router_ip]),
            10,
            "the IDC's range in the replica's kernel",
        )
    _two_paths(rig)
    sessions = frr.bgp_sessions(rig.router)
    assert sorted(s.peer for s in sessions if s.established) == sorted(
        r.session.router_id for r in rig.replicas
    )
    for s in sessions:
        assert [(x.prefix, x.as_path) for x in s.learned] == [(CLOUD_PREFIX, str(CLOUD_ASN))]
        assert s.bfd == "up"
    # The line carries traffic: a replica fetches the server's page across it (the server
    # sees the replica's line address: no NAT on the way).
    server = rig.site.servers[0].ip.split("/")[0]
    for r in rig.replicas:
        assert frrlab.fetch(r.netns, server, ECHO_PORT) == f"client {r.session.router_id}\n"
    # The router learned each replica's MAC and VTEP from its frames: no static entry.
    fdb = run(["bridge", "-n", rig.router, "fdb", "show", "dev", HYBRID_LINE_IFNAME])
    for r in rig.replicas:
        assert f"dst {r.underlay_ip}" in fdb
    assert "00:00:00:00:00:00" not in fdb


def test_announce_changes_without_resetting_the_session(rig: Rig) -> None:
    wait_for(_established(rig, *rig.replicas), 20, "both sessions established")
    r1 = rig.replicas[0]
    before = frr.bgp_status(r1.netns)
    more = replace(r1.session, announce=(CLOUD_PREFIX, EXTRA_PREFIX))
    assert frr.session_commands(r1.session, more) == [
        f"router bgp {CLOUD_ASN}",
        "address-family ipv4 unicast",
        f"network {EXTRA_PREFIX}",
        "exit-address-family",
        "exit",
    ]
    t0 = time.monotonic()
    frr.apply_session(r1.netns, r1.session, more)
    wait_for(
        lambda: frrlab.nexthops(rig.router, EXTRA_PREFIX) == [r1.session.router_id],
        10,
        f"the router routing {EXTRA_PREFIX} to replica 1",
    )
    print(f"\nannounce -> router kernel: {(time.monotonic() - t0) * 1000:.0f} ms")
    # Incremental equals full: what runs now is what a fresh start with `more` would hold.
    assert frr.observed_session(r1.netns) == more
    assert frr.applied_config(r1.netns) == frr.render_session(more)
    t0 = time.monotonic()
    frr.apply_session(r1.netns, None, r1.session)  # None: read back what runs
    wait_for(
        lambda: frrlab.nexthops(rig.router, EXTRA_PREFIX) == [], 10, f"{EXTRA_PREFIX} withdrawn"
    )
    print(f"withdraw -> router kernel: {(time.monotonic() - t0) * 1000:.0f} ms")
    assert frr.observed_session(r1.netns) == r1.session
    st = frr.bgp_status(r1.netns)
    # Never reset: the same session (FRR's up-since epoch is only good to a second).
    assert st.established and st.connections == before.connections
    assert abs((st.up_since or 0) - (before.up_since or 0)) <= 1
    assert frrlab.nexthops(rig.router, CLOUD_PREFIX) == sorted(
        r.session.router_id for r in rig.replicas
    )
    frr.apply_session(r1.netns, r1.session, r1.session)  # nothing to do: nothing done
    assert frr.bgp_status(r1.netns).connections == before.connections


def test_wrong_secret_stays_down_and_says_why(rig: Rig) -> None:
    bad = rig.replica(3, secret="not-the-secret")
    before = frr.md5_failures(rig.router) or 0
    try:
        frrlab.build(rig.site, bad)
        # The router drops its SYNs: the router's kernel counts them, the replica waits.
        wait_for(
            lambda: (frr.md5_failures(rig.router) or 0) > before, 15, "MD5 failures at the router"
        )
        st = _status_when(
            bad.netns, lambda st: st.state in ("Connect", "Active"), 10, "a session not up"
        )
        assert "MD5" in st.reason and rig.site.router_ip in st.reason, st.reason
        print(f"\nwrong secret: state {st.state}, reason: {st.reason}")
        assert not st.learned and st.up_since is None
        assert bad.session.router_id not in {s.peer for s in frr.bgp_sessions(rig.router)}
        assert frrlab.nexthops(rig.router, CLOUD_PREFIX) == sorted(
            r.session.router_id for r in rig.replicas
        )
        # The right secret, applied in place, brings it up.
        good = replace(bad.session, md5_secret=SECRET)
        frr.apply_session(bad.netns, bad.session, good)
        wait_for(lambda: frr.bgp_status(bad.netns).established, 20, "the fixed session up")
    finally:
        frrlab.remove(rig.site, bad)


def test_a_dead_replica_leaves_one_next_hop_within_bfd_time(rig: Rig) -> None:
    _two_paths(rig)
    r1, r2 = rig.replicas
    one = [r1.session.router_id]

    # 1. Its FRR killed (a crash of the replica's daemons): the TCP session ends with them.
    pids = frr._pids(r2.netns)
    t0 = time.monotonic()
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: frrlab.nexthops(rig.router, CLOUD_PREFIX) == one, 12, "one next hop left")
    killed = time.monotonic() - t0
    st = frr.bgp_status(r2.netns)
    assert st.state == "down" and st.reason == "bgpd is not running"
    frr.start(r2.netns, frr.render_session(r2.session))  # a dead daemon: the whole instance
    _two_paths(rig)

    # 2. Its link cut silently (a host lost): no FIN, no NOTIFICATION, only BFD notices
    # (the hold time is 9 s).
    wait_for(lambda: all(s.bfd == "up" for s in frr.bgp_sessions(rig.router)), 10, "BFD up")
    t0 = time.monotonic()
    run(["ip", "-n", rig.core, "link", "set", r2.core_port, "down"])
    try:
        wait_for(lambda: frrlab.nexthops(rig.router, CLOUD_PREFIX) == one, 12, "one next hop left")
        cut = time.monotonic() - t0
    finally:
        run(["ip", "-n", rig.core, "link", "set", r2.core_port, "up"])
        run(["ip", "-n", rig.core, "route", "replace", f"{r2.underlay_ip}/32",
             "dev", r2.core_port])  # fmt: skip
    print(f"\nfailover, replica FRR killed: {killed * 1000:.0f} ms; "
          f"link cut (BFD 300 ms x 3): {cut * 1000:.0f} ms")  # fmt: skip
    assert cut < frr.HOLD - 2, "BFD, not the hold timer, should have noticed"
    st = _status_when(r2.netns, lambda st: not st.established, 12, "replica 2's session down")
    assert st.reason, st
    _two_paths(rig)  # it comes back by itself once the link is back


def test_status_of_a_namespace_without_frr(rig: Rig) -> None:
    st = frr.bgp_status(rig.core)
    assert (st.state, st.reason, st.learned, st.bfd) == ("down", "bgpd is not running", (), None)
    assert not frr.running(rig.core)
    frr.stop(rig.core)  # nothing to stop: fine


def test_start_refuses_a_bad_config_and_leaves_nothing(rig: Rig, tmp_path: Path) -> None:
    ns = rig.core
    with pytest.raises(DriverError, match=r"Unknown command"):
        frr.start(ns, "router bgp 65000\n no such command here\n")
    assert not frr.running(ns)
    assert frr._strays(ns) == []
    assert not (frr.RUN_ROOT / ns).exists() and not (frr.FRR_STATE_DIR / ns).exists()


def test_reasons_a_user_can_act_on(uniq: Callable[[str], str]) -> None:
    """Two namespaces on a veth, FRR on one side only at first: the reason says what is
    wrong on the other side, from what the kernel and bgpd show."""
    a, b = uniq("ra"), uniq("rb")
    s = frr.Session("10.99.0.1", CLOUD_ASN, "10.99.0.2", 65001, None, False, ())
    try:
        for ns in (a, b):
            run(["ip", "netns", "add", ns])
        run(["ip", "-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v0",
             "netns", b])  # fmt: skip
        for ns, ip in ((a, "10.99.0.1/24"), (b, "10.99.0.2/24")):
            run(["ip", "-n", ns, "-batch", "-"],
                input=f"link set lo up\nlink set v0 up\naddr add {ip} dev v0\n")  # fmt: skip
        frr.start(a, frr.render_session(s))

        # Nothing listens on the peer: its kernel answers the SYN with a reset.
        st = _status_when(a, lambda st: "refused" in st.reason, 15, "a refused connection")
        assert st.state == "Active", st

        # The peer's BGP, but configured for another AS than ours: it sends a NOTIFICATION.
        peer = frr.Session("10.99.0.2", 65001, "10.99.0.1", 65099, None, False, ())
        frr.start(b, frr.render_session(peer))
        # Both sides connect at once, so the first NOTIFICATION may be about the collision
        # ("Unexpected Message in OpenSent State"); the next attempt, 5 s on, names the AS.
        st = _status_when(a, lambda st: "Bad Peer AS" in st.reason, 30, "a Bad Peer AS")
        assert "NOTIFICATION" in st.reason, st
        print(f"\nrefused, then: {st.reason}")

        # Configured right: up.
        frr.apply_session(b, peer, replace(peer, peer_asn=CLOUD_ASN))
        _status_when(a, lambda st: st.established, 15, "the session up")

        # The peer gone from the line: nobody answers ARP for its address.
        frr.stop(b)
        run(["ip", "-n", b, "addr", "flush", "dev", "v0"])
        run(["ip", "-n", a, "neigh", "flush", "dev", "v0"])
        st = _status_when(a, lambda st: "ARP" in st.reason, 20, "no ARP answer")
        print(f"peer gone: {st.reason}")
    finally:
        for ns in (a, b):
            frr.stop(ns)
        cleanup.delete_netns([n for n in (a, b) if (NETNS_DIR / n).exists()])


def test_cleanup_finds_frr_whose_namespace_was_deleted(uniq: Callable[[str], str]) -> None:
    """An FRR instance outlives `ip netns del` (its daemons hold the namespace); the lab's
    cleanup still finds it by its pathspace and removes it with its directories."""
    prefix = uniq("gone")
    ns = f"{prefix}-x"
    try:
        run(["ip", "netns", "add", ns])
        frr.start(ns, frr.render_session(frr.Session("10.0.0.1", 1, "10.0.0.2", 2, None, True, ())))
        pids = sorted(frr._pids(ns).values())
        run(["ip", "netns", "del", ns])
        assert frr.running(ns) and sorted(cleanup.frr_pids(prefix)) == pids
        assert cleanup.frr_pids(prefix, spare=[ns]) == []  # another live region's: spared
        removed = cleanup.remove_prefix(prefix)
        assert set(pids) <= set(removed.processes)
        assert not frr.running(ns) and not (frr.FRR_STATE_DIR / ns).exists()
        assert not (frr.RUN_ROOT / ns).exists()
    finally:
        frr.stop(ns)
        cleanup.remove_prefix(prefix)
