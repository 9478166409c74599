"""The agent's VIP claims without a kernel: which announcements become claims and head
starts, deduplication, the epoch bookkeeping, a refused instance left alone, batching and
retries against a fake control plane (httpx.MockTransport) that decides claims as
`controller.vips` does.

The region: host h1 runs r (allowed, holds the VIP at first); host h2, whose agent this is,
runs b (allowed) and c (not allowed).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.polling import wait_for
from tests.worlds import WHost, WInstance, WVpc, documents
from yunhan.agent.vipclaims import (
    MAX_BACKOFF,
    VipClaims,
    head_start,
    next_delay,
)
from yunhan.controller.netcompile import VipIn
from yunhan.net.arpwatch import ARP_REPLY, ARP_REQUEST, Arp, Sent
from yunhan.net.desired import HostDesired, VipDesired
from yunhan.net.naming import Naming, port_ifname

VIP, VIP2 = "10.6.1.100", "10.6.1.101"
VPC = WVpc("vpc-a", 340, ("10.6.0.0/16",), ("10.6.1.0/24",))
R = WInstance("inst-0000a001", "h1", "vpc-a", "10.6.1.10", allowed_ips=(VIP,))
B = WInstance("inst-0000a002", "h2", "vpc-a", "10.6.1.20")
C = WInstance("inst-0000a003", "h2", "vpc-a", "10.6.1.30")
HOSTS = [WHost("h1", "198.18.1.11", 1), WHost("h2", "198.18.1.12", 2)]
NAMING = Naming("t-h2-")
NETNS = NAMING.vpc_netns(VPC.vni)


def doc(epoch: int = 4, holder: WInstance = R, vip2: bool = False) -> HostDesired:
    """h2's document: VIP delivered to `holder` at `epoch` (VIP2, allowed to b, nowhere)."""
    insts = [
        WInstance(i.id, i.host, i.vpc, i.ip, allowed_ips=(VIP,) if i is holder else ())
        for i in (R, B, C)
    ]
    vips = [VipIn("vip-1", VPC.id, VIP, (R.id, B.id), epoch)]
    if vip2:
        vips.append(VipIn("vip-2", VPC.id, VIP2, (B.id,), 0))
    return documents(HOSTS, [VPC], insts, vips=vips)["h2"]


def garp(inst: WInstance, ip: str = VIP, op: int = ARP_REQUEST) -> Arp:
    return Arp(op, inst.mac_or_default(), ip, "00:00:00:00:00:00", ip)


class FakeApi:
    """`POST /v1/agent/hosts/h2/vip-claims` deciding like `controller.vips.decide_claim`
    (without damping); `fail` answers to give instead, first."""

    def __init__(self) -> None:
        self.vips: dict[str, dict[str, Any]] = {
            VIP: {"id": "vip-1", "allowed": {R.id, B.id}, "holder": R.id, "epoch": 4},
            VIP2: {"id": "vip-2", "allowed": {B.id}, "holder": None, "epoch": 0},
        }
        self.on_host = {B.id, C.id}
        self.posts: list[list[dict[str, Any]]] = []
        self.fail: list[int | Exception] = []
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.url.path == "/v1/agent/hosts/h2/vip-claims"
        with self.lock:
            if self.fail:
                f = self.fail.pop(0)
                if isinstance(f, Exception):
                    raise f
                return httpx.Response(f, json={"error": {"message": "no"}})
            claims = json.loads(request.content)["claims"]
            self.posts.append(claims)
            return httpx.Response(200, json={"results": [self._decide(c) for c in claims]})

    def _decide(self, c: dict[str, Any]) -> dict[str, Any]:
        v = self.vips.get(c["vip_ip"])
        if v is None:
            result = "unknown"
        elif c["instance"] not in v["allowed"]:
            result = "not_allowed"
        elif c["instance"] not in self.on_host:
            result = "not_here"
        elif c["epoch_seen"] < v["epoch"]:
            result = "stale"
        elif v["holder"] == c["instance"]:
            result = "held"
        elif c.get("how") == "traffic" and v["holder"] is not None:
            result = "taken"
        else:
            result = "won"
            v["holder"], v["epoch"] = c["instance"], v["epoch"] + 1
        return {**c, "result": result, "vip": v and v["id"], "epoch": v["epoch"] if v else 0}


def make(
    api: FakeApi,
    handle: Callable[[httpx.Request], httpx.Response] | None = None,
    repoint: Callable[[], None] | None = None,
    **kw: Any,
) -> tuple[VipClaims, list[int]]:
    repoints: list[int] = []
    claims = VipClaims(
        naming=NAMING,
        client=httpx.Client(transport=httpx.MockTransport(handle or api.handle)),
        path=lambda tail: f"http://api/v1/agent/hosts/h2{tail}",
        repoint=repoint or (lambda: repoints.append(1)),
        clock=lambda: 1000.0,
        **kw,
    )
    return claims, repoints


def routes_of(d: HostDesired) -> dict[str, tuple[str, str | None]]:
    return {r.dst: (r.kind, r.port or r.peer) for r in d.vpcs[0].routes}


def allowed_of(d: HostDesired) -> dict[str, tuple[str, ...]]:
    return {p.instance_id: p.allowed_ips for p in d.vpcs[0].ports}


# -- the document ------------------------------------------------------------------------


def test_the_document_tells_the_agent_the_vips_who_may_hold_them_and_the_epoch() -> None:
    assert doc().vpcs[0].vips == (VipDesired(id="vip-1", ip=VIP, allowed=(R.id, B.id), epoch=4),)


def test_head_start_moves_the_vip_to_the_claimants_port_and_nothing_else() -> None:
    d = doc()
    assert routes_of(d)[f"{VIP}/32"] == ("remote", "h1")
    moved = head_start(d, {(VPC.id, VIP): B.id})
    assert routes_of(moved)[f"{VIP}/32"] == ("local", port_ifname(B.id))
    assert allowed_of(moved) == {B.id: (VIP,), C.id: ()}
    rest = {k: v for k, v in routes_of(moved).items() if k != f"{VIP}/32"}
    assert rest == {k: v for k, v in routes_of(d).items() if k != f"{VIP}/32"}
    assert moved.vpcs[0].peers == d.vpcs[0].peers
    # from one local port to another; an instance without a port here moves nothing
    here = doc(holder=C)
    assert allowed_of(head_start(here, {(VPC.id, VIP): B.id})) == {B.id: (VIP,), C.id: ()}
    assert head_start(d, {(VPC.id, VIP): R.id}) == d
    assert head_start(d, {}) is d


# -- announcements -----------------------------------------------------------------------


def test_an_allowed_announcement_repoints_at_once_and_is_claimed_once() -> None:
    api = FakeApi()
    claims, _ = make(api)
    claims.update(doc())
    assert claims.announce(NETNS, port_ifname(B.id), garp(B)) == "repointed"
    assert claims.heads == {(VPC.id, VIP): B.id}
    applied = claims.overlay(doc())
    assert routes_of(applied)[f"{VIP}/32"] == ("local", port_ifname(B.id))
    assert allowed_of(applied)[B.id] == (VIP,)
    claims.update(applied)
    # keepalived repeats itself, as requests and as replies: one claim
    for op in (ARP_REQUEST, ARP_REPLY, ARP_REQUEST):
        assert claims.announce(NETNS, port_ifname(B.id), garp(B, op=op)) == "duplicate"
    assert claims.flush_once()
    assert api.posts == [
        [
            {
                "vip_ip": VIP,
                "vpc": VPC.id,
                "instance": B.id,
                "epoch_seen": 4,
                "at": 1000.0,
                "how": "garp",
            }
        ]
    ]
    assert claims.epoch("vip-1") == 5  # the result's epoch is the agent's new one
    assert claims.announce(NETNS, port_ifname(B.id), garp(B)) == "duplicate"
    assert claims.pending == []
    assert claims.flush_once() and len(api.posts) == 1  # nothing to send: no post


def test_what_is_not_a_vip_or_not_a_port_is_ignored() -> None:
    claims, _ = make(FakeApi())
    claims.update(doc())
    assert claims.announce(NETNS, port_ifname(B.id), garp(B, ip=B.ip)) == "not_a_vip"
    assert claims.announce(NETNS, "vxlan0", garp(B)) == "not_a_port"
    assert claims.announce("t-h2-v999", port_ifname(B.id), garp(B)) == "not_a_port"
    assert claims.pending == [] and claims.heads == {}


def test_an_ordinary_request_from_the_vip_is_traffic_not_an_announcement() -> None:
    # An instance that still has the address (the VIP moved away from it, its keepalived
    # killed) resolves a neighbour with the VIP as sender whenever it sends from it: taken
    # for an announcement, it took the VIP back from the holder (e2e test_vips). It is
    # sending from the VIP: a traffic claim, no head start, `taken` while r holds it.
    api = FakeApi()
    claims, repoints = make(api)
    claims.update(doc())
    port_b = port_ifname(B.id)
    for op, seen in ((ARP_REQUEST, "claimed"), (ARP_REPLY, "duplicate")):
        arp = Arp(op, B.mac_or_default(), VIP, "00:00:00:00:00:00", R.ip)
        assert claims.announce(NETNS, port_b, arp) == seen
    assert claims.heads == {} and repoints == []
    assert claims.flush_once()
    assert [(c["instance"], c["how"]) for c in api.posts[0]] == [(B.id, "traffic")]
    assert api.vips[VIP]["holder"] == R.id
    # the holder's own neighbour requests are no news
    claims.update(doc(holder=B))
    arp = Arp(ARP_REQUEST, B.mac_or_default(), VIP, "00:00:00:00:00:00", R.ip)
    assert claims.announce(NETNS, port_b, arp) == "duplicate"
    # announcing it for real is an announcement, as usual
    claims.update(doc())
    assert claims.announce(NETNS, port_b, garp(B)) == "repointed"


def test_a_refused_instance_is_reported_and_changes_nothing_here() -> None:
    api = FakeApi()
    claims, repoints = make(api)
    claims.update(doc())
    assert claims.announce(NETNS, port_ifname(C.id), garp(C)) == "not_allowed"
    assert claims.announce(NETNS, port_ifname(C.id), garp(C)) == "duplicate"
    assert claims.heads == {}
    assert claims.overlay(doc()) == doc()
    assert claims.flush_once()
    assert [c["instance"] for c in api.posts[0]] == [C.id]
    assert claims.announce(NETNS, port_ifname(C.id), garp(C)) == "duplicate"  # same epoch
    assert repoints == [] and api.vips[VIP]["holder"] == R.id


def test_a_later_document_wins_over_the_head_start() -> None:
    claims, _ = make(FakeApi())
    claims.update(doc())
    claims.announce(NETNS, port_ifname(B.id), garp(B))
    assert claims.flush_once()
    # a document from before the decision (epoch 4) keeps the head start
    assert routes_of(claims.overlay(doc(epoch=4)))[f"{VIP}/32"] == ("local", port_ifname(B.id))
    # the controller decided after the claim (damped: still delivered to r): it wins
    assert claims.overlay(doc(epoch=5)) == doc(epoch=5)
    assert claims.heads == {}
    assert claims.overlay(doc(epoch=4)) == doc(epoch=4)  # and the head start is gone


def test_a_document_that_delivers_the_vip_there_ends_the_head_start() -> None:
    claims, _ = make(FakeApi())
    claims.update(doc())
    claims.announce(NETNS, port_ifname(B.id), garp(B))
    assert claims.overlay(doc(epoch=4, holder=B)) == doc(epoch=4, holder=B)
    assert claims.heads == {}


def test_a_stale_claim_drops_the_head_start_and_the_next_announcement_claims_anew() -> None:
    api = FakeApi()
    api.vips[VIP]["epoch"] = 7  # changes the agent has not seen yet
    claims, repoints = make(api)
    claims.update(doc())
    assert claims.announce(NETNS, port_ifname(B.id), garp(B)) == "repointed"
    assert claims.flush_once()
    assert api.posts[0][0]["epoch_seen"] == 4
    assert claims.heads == {} and repoints == [1]  # the agent applies the document again
    assert claims.epoch("vip-1") == 7
    claims.update(claims.overlay(doc()))
    assert claims.announce(NETNS, port_ifname(B.id), garp(B)) == "repointed"
    assert claims.flush_once()
    assert api.posts[1][0]["epoch_seen"] == 7 and claims.epoch("vip-1") == 8
    assert claims.heads == {(VPC.id, VIP): B.id}


def test_a_newer_epoch_in_a_document_makes_a_repeat_a_new_claim() -> None:
    """b claimed at 4 and won (5); r took the VIP back (6): b's next announcement is a
    claim again, made knowing 6."""
    api = FakeApi()
    claims, _ = make(api)
    claims.update(doc())
    claims.announce(NETNS, port_ifname(B.id), garp(B))
    assert claims.flush_once()
    api.vips[VIP].update(holder=R.id, epoch=6)
    claims.update(claims.overlay(doc(epoch=6)))
    assert claims.announce(NETNS, port_ifname(B.id), garp(B)) == "repointed"
    assert claims.flush_once()
    assert [c["epoch_seen"] for p in api.posts for c in p] == [4, 6]
    assert api.vips[VIP] == {"id": "vip-1", "allowed": {R.id, B.id}, "holder": B.id, "epoch": 7}


def test_claims_are_batched_and_retried_until_they_arrive() -> None:
    api = FakeApi()
    errors: list[Exception] = []
    claims, _ = make(api, on_error=errors.append)
    claims.update(doc(vip2=True))
    claims.announce(NETNS, port_ifname(B.id), garp(B))
    claims.announce(NETNS, port_ifname(B.id), garp(B, ip=VIP2))
    claims.announce(NETNS, port_ifname(C.id), garp(C))
    api.fail = [503, httpx.ConnectError("down")]
    assert not claims.flush_once()
    assert not claims.flush_once()
    assert len(errors) == 1 and claims.failures == 2 and len(claims.pending) == 3
    assert claims.flush_once()
    assert [(c["vip_ip"], c["instance"]) for c in api.posts[0]] == [
        (VIP, B.id), (VIP2, B.id), (VIP, C.id)
    ]  # fmt: skip
    assert claims.pending == [] and claims.epoch("vip-2") == 1


def test_a_body_refused_for_good_is_dropped_and_counted() -> None:
    api = FakeApi()
    claims, _ = make(api)
    claims.update(doc())
    claims.announce(NETNS, port_ifname(B.id), garp(B))
    api.fail = [422]
    assert claims.flush_once()
    assert claims.pending == [] and claims.refused == 1


def test_backoff_doubles_up_to_the_bound_and_resets_on_success() -> None:
    d = 0.0
    seen = []
    for _ in range(10):
        d = next_delay(d, ok=False)
        seen.append(d)
    assert seen[:3] == [0.5, 1.0, 2.0] and seen[-1] == MAX_BACKOFF
    assert next_delay(d, ok=True) == 0.0


def test_the_threads_read_announcements_repoint_and_report() -> None:
    """start(): a reader per namespace with VIPs, fed by a fake source; the worker
    re-points before the answer and posts."""
    api = FakeApi()
    frames = [(port_ifname(B.id), garp(B)), (port_ifname(B.id), garp(B))]
    opened: list[str] = []
    watched: list[tuple[str, dict[str, tuple[str, ...]]]] = []

    class Source:
        def __init__(self, netns: str) -> None:
            opened.append(netns)
            self.netns = netns

        def watch(self, sources: dict[str, tuple[str, ...]]) -> None:
            watched.append((self.netns, dict(sources)))

        def receive(self, timeout: float) -> list[tuple[str, Arp | Sent]]:
            out = list(frames)
            frames.clear()
            if not out:
                threading.Event().wait(min(timeout, 0.05))
            return out

        def close(self) -> None:
            pass

    order: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        order.append("post")
        return api.handle(request)

    claims, _ = make(api, handle, lambda: order.append("repoint"), source=Source)
    claims.update(doc())
    claims.start()
    try:
        wait_for(lambda: api.posts, what="a claim posted")
        assert opened == [NETNS]
        # the reader told its socket which VIP sources are news: VIP from anywhere but the
        # overlay and its holder's port (remote here), VIP2 (held by nobody) likewise
        assert watched[0] == (NETNS, {VIP: ("vxlan0",)})
        # both happen, side by side (the claim does not wait for the head start)
        wait_for(lambda: "repoint" in order, what="the head start")
        assert api.posts[0][0]["instance"] == B.id
        assert len(api.posts) == 1 and len(api.posts[0]) == 1
        claims.update(HostDesired(host="h2", underlay_ip="198.18.1.12", vtep_index=2))
        assert claims.namespaces == []
    finally:
        claims.stop()


# -- an instance sending from a VIP ------------------------------------------------------


def test_sending_from_a_vip_is_claimed_as_traffic_without_a_head_start() -> None:
    """A packet from the VIP is a weaker sign than an announcement: claimed as `traffic`,
    which the control plane grants only while nobody holds the VIP; no head start."""
    api = FakeApi()
    claims, repoints = make(api)
    claims.update(doc(vip2=True))
    port_b = port_ifname(B.id)
    # VIP is held by r (on h1): b sending from it is claimed, and taken is the answer
    assert claims.announce(NETNS, port_b, Sent(VIP, B.mac_or_default())) == "claimed"
    assert claims.announce(NETNS, port_b, Sent(VIP, B.mac_or_default())) == "duplicate"
    assert claims.heads == {}
    assert claims.flush_once()
    assert [(c["instance"], c["how"]) for c in api.posts[0]] == [(B.id, "traffic")]
    assert api.vips[VIP]["holder"] == R.id  # taken: r keeps it
    assert claims.announce(NETNS, port_b, Sent(VIP, B.mac_or_default())) == "duplicate"
    # ... but an announcement by b is claimed (its own mark) and re-points at once
    assert claims.announce(NETNS, port_b, garp(B)) == "repointed"
    # VIP2 is held by nobody: b sending from it wins it
    assert claims.announce(NETNS, port_b, Sent(VIP2, B.mac_or_default())) == "claimed"
    assert claims.flush_once()
    assert api.vips[VIP2]["holder"] == B.id and api.vips[VIP]["holder"] == B.id
    # the holder's own traffic is no news; a stranger sending from it is refused
    holder_doc = doc(epoch=5, holder=B)
    claims.update(holder_doc)
    assert claims.announce(NETNS, port_b, Sent(VIP, B.mac_or_default())) == "duplicate"
    assert claims.announce(NETNS, port_ifname(C.id), Sent(VIP, C.mac_or_default())) == (
        "not_allowed"
    )
    assert repoints == []


def test_the_sources_watched_exclude_the_holder_s_port() -> None:
    claims, _ = make(FakeApi())
    claims.update(doc(epoch=5, holder=B, vip2=True))
    with claims._lock:  # what each reader tells its socket
        sources = dict(claims._sources)
    assert sources == {NETNS: {VIP: ("vxlan0", port_ifname(B.id)), VIP2: ("vxlan0",)}}


def test_the_claim_does_not_wait_for_the_head_start() -> None:
    """A slow head start (an apply that reads the whole host) runs beside the claim: the
    claim is posted BATCH_DELAY after the announcement, while the head start goes on."""
    api = FakeApi()
    at: dict[str, float] = {}
    slow = threading.Event()

    class Quiet:
        def __init__(self, netns: str) -> None:
            pass

        def watch(self, sources: dict[str, tuple[str, ...]]) -> None:
            pass

        def receive(self, timeout: float) -> list[tuple[str, Arp | Sent]]:
            threading.Event().wait(min(timeout, 0.05))
            return []

        def close(self) -> None:
            pass

    def repoint() -> None:
        slow.wait(10.0)  # held until the claim has been posted
        at["repointed"] = time.monotonic()

    def handle(request: httpx.Request) -> httpx.Response:
        at.setdefault("posted", time.monotonic())
        slow.set()
        return api.handle(request)

    claims, _ = make(api, handle, repoint, source=Quiet)
    claims.update(doc())
    claims.start()
    try:
        assert claims.announce(NETNS, port_ifname(B.id), garp(B)) == "repointed"
        wait_for(lambda: "repointed" in at, what="the head start")
        assert at["posted"] <= at["repointed"]
    finally:
        slow.set()
        claims.stop()
