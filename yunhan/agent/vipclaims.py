"""The agent's part of VIP claims (docs/vips.md): gratuitous ARP seen on this host's
instance ports becomes a local head start and a claim reported to the control plane.

An instance that takes a VIP (keepalived becoming master) announces it with gratuitous ARP:
an ARP request or reply whose sender and target addresses are both the VIP. An ordinary
request with the VIP as its sender is no announcement: the kernel of an instance that
still has the address (a keepalived killed, a VIP moved away by the API) sends one to
resolve a neighbour whenever it sends from it; it counts as sending from the VIP (a
`traffic` claim, below), which must not take the VIP back. The applied document says which
addresses are VIPs of each VPC, which instances may hold each and its epoch
(`VpcDesired.vips`). When an allowed instance of this host announces one:

* at once, before the control plane answers, the agent re-points the VIP on this host: the
  document it applies is the controller's with the VIP moved to the claimant's port
  (`head_start`: the /32 route to its port, its port's filter passing the VIP as a source,
  the neighbour entry), applied like any document, so the data plane does it with the
  same planner, from memory, without a second path;
* it reports the claim `{vip_ip, vpc, instance, epoch_seen, at}` with the epoch it knew
  when it saw the announcement, and takes each result's epoch as its new one.

The controller is the authority; the local re-pointing is only a head start. It is dropped
as soon as an applied document carries an epoch newer than the one claimed with (the
control plane decided after the claim: whatever that document says wins), when the claim
comes back anything but `won`, or when the VIP, the claimant's port or its permission is
gone. An announcement by an instance that is not allowed is reported (the control plane
counts it) and changes nothing here.

Announcements are deduplicated: an instance's announcements of a VIP are claimed once per
epoch of the VIP (keepalived sends several; `held` answers need no repeating); a `stale`
result forgets that, so the next announcement claims again with the newer epoch. Claims
wait in a queue of at most one allowed claim per VIP (the latest announcement wins) and one
per refused instance and VIP, MAX_PENDING in all, the oldest dropped beyond; they are posted
in batches after BATCH_DELAY and, on failure, retried with a backoff doubling up to
MAX_BACKOFF. They are never dropped for age: the epoch fences a late one.

Threads: one ARP reader per VPC namespace that has VIPs and ports here, one worker that
posts, and one that re-points (side by side: the claim never waits for the head start).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from yunhan.net.arpwatch import Arp, ArpError, ArpSocket, Sent
from yunhan.net.desired import HostDesired, Route, VipDesired, VpcDesired
from yunhan.net.naming import VXLAN_IFNAME, Naming

log = logging.getLogger("yunhan.agent.vipclaims")

MAX_PENDING = 1000  # claims waiting (yunhan.model.schemas.MAX_VIP_CLAIMS per post)
MAX_BATCH = 1000
BATCH_DELAY = 0.01  # seconds to gather the announcements of several VIPs in one post
MAX_BACKOFF = 30.0
READ_TIMEOUT = 0.5

Seen = Literal["not_a_port", "not_a_vip", "duplicate", "not_allowed", "claimed", "repointed"]
How = Literal["garp", "traffic"]


@dataclass(frozen=True)
class Claim:
    """One claim to report; `allowed` is the agent's own reading of the document."""

    vip_ip: str
    vpc: str
    instance: str
    epoch_seen: int
    at: float
    allowed: bool
    how: How = "garp"

    def to_json(self) -> dict[str, Any]:
        return {
            "vip_ip": self.vip_ip,
            "vpc": self.vpc,
            "instance": self.instance,
            "epoch_seen": self.epoch_seen,
            "at": self.at,
            "how": self.how,
        }


@dataclass(frozen=True)
class _Head:
    instance: str
    epoch_seen: int


def head_start(desired: HostDesired, heads: Mapping[tuple[str, str], str]) -> HostDesired:
    """`desired` with each VIP (vpc id, address) of `heads` delivered to the local port of
    the instance named (pure): the address leaves every other port's `allowed_ips` and
    joins that port's, and its /32 route (local or remote) becomes a local one to that
    port. A VIP whose instance has no port here is left as it is.

    Not moved: security group member lists and `vip:` next hops of custom routes, which
    follow the controller's document when it comes.
    """
    by_vpc: dict[str, dict[str, str]] = {}
    for (vpc, ip), inst in heads.items():
        by_vpc.setdefault(vpc, {})[ip] = inst
    if not by_vpc:
        return desired
    vpcs: list[VpcDesired] = []
    for v in desired.vpcs:
        ifname_of = {p.instance_id: p.ifname for p in v.ports}
        moves = {
            ip: ifname_of[inst] for ip, inst in by_vpc.get(v.id, {}).items() if inst in ifname_of
        }
        if not moves:
            vpcs.append(v)
            continue
        ports = []
        for p in v.ports:
            ips = {a for a in p.allowed_ips if a not in moves}
            ips.update(ip for ip, ifname in moves.items() if ifname == p.ifname and ip != p.ip)
            ports.append(
                p.model_copy(update={"allowed_ips": tuple(sorted(ips, key=ipaddress.IPv4Address))})
            )
        dsts = {f"{ip}/32" for ip in moves}
        routes = [r for r in v.routes if r.dst not in dsts]
        routes.extend(Route(dst=f"{ip}/32", kind="local", port=n) for ip, n in moves.items())
        routes.sort(key=lambda r: _net_key(r.dst))  # stable: the compiler's order otherwise
        vpcs.append(v.model_copy(update={"ports": tuple(ports), "routes": tuple(routes)}))
    return desired.model_copy(update={"vpcs": tuple(vpcs)})


def _net_key(cidr: str) -> tuple[int, int]:
    n = ipaddress.IPv4Network(cidr)
    return (int(n.network_address), n.prefixlen)


class ArpSource(Protocol):
    def watch(self, sources: Mapping[str, Sequence[str]]) -> None: ...
    def receive(self, timeout: float) -> list[tuple[str, Arp | Sent]]: ...
    def close(self) -> None: ...


def next_delay(delay: float, ok: bool) -> float:
    """The worker's wait before posting again: none after a success; after each failure
    doubled (from BATCH_DELAY), up to MAX_BACKOFF."""
    return 0.0 if ok else min(max(delay * 2, 0.5), MAX_BACKOFF)


class VipClaims:
    """Gratuitous ARP on this host's instance ports, followed (see the module).

    `update(applied)` after each apply with the document applied; `overlay(desired)` gives
    the document to apply (the controller's with the head starts); `repoint` is called
    (from the worker) when the head starts changed and the agent must apply again.
    `start()` once, `stop()` stops every thread. `announce` and `flush_once` are the
    readers' and the worker's steps, callable directly (tests).
    """

    def __init__(
        self,
        *,
        naming: Naming,
        client: httpx.Client,
        path: Callable[[str], str],
        repoint: Callable[[], None],
        clock: Callable[[], float] = time.time,
        source: Callable[[str], ArpSource] = ArpSocket,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.naming = naming
        self._client = client
        self._path = path
        self._repoint = repoint
        self._clock = clock
        self._source = source
        self._on_error = on_error
        self._lock = threading.Lock()
        self._vips: dict[tuple[str, str], VipDesired] = {}  # (vpc, ip)
        self._ports: dict[str, dict[str, tuple[str, str]]] = {}  # netns -> ifname -> (vpc, inst)
        self._delivered: dict[tuple[str, str], str] = {}  # (vpc, ip) -> local instance
        # netns -> VIP address -> the interfaces whose packets from it are no news
        self._sources: dict[str, dict[str, tuple[str, ...]]] = {}
        self._epochs: dict[str, int] = {}  # VIP id -> the newest epoch known
        self._marks: dict[tuple[str, str, str, How], int] = {}  # (vpc, ip, inst, how) -> epoch
        self._heads: dict[tuple[str, str], _Head] = {}
        self._pending: dict[tuple[str, str, How, str], Claim] = {}
        self._repoint_due = False
        self._readers: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._running = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._repoint_wake = threading.Event()
        self._repointer: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self.dropped = 0  # claims dropped for room, since start
        self.refused = 0  # claims the server refused for good (422)
        self.failures = 0  # posts that failed and are retried

    # -- what the documents say --------------------------------------------------------

    def epoch(self, vip_id: str) -> int:
        """The newest epoch known of a VIP (from documents and claim results)."""
        with self._lock:
            return self._epochs.get(vip_id, 0)

    @property
    def heads(self) -> dict[tuple[str, str], str]:
        """(vpc id, VIP address) -> instance: the VIPs re-pointed here ahead of the
        controller."""
        with self._lock:
            return {k: h.instance for k, h in self._heads.items()}

    @property
    def pending(self) -> list[Claim]:
        with self._lock:
            return list(self._pending.values())

    @property
    def namespaces(self) -> list[str]:
        with self._lock:
            return sorted(self._readers if self._running else self._ports)

    def overlay(self, desired: HostDesired) -> HostDesired:
        """The document to apply: `desired` with the head starts that it does not
        override (see the module); those it overrides are forgotten."""
        with self._lock:
            for key, head in list(self._heads.items()):
                vpc_id, ip = key
                v = next((v for v in desired.vpcs if v.id == vpc_id), None)
                vips = v.vips if v else ()
                ports = v.ports if v else ()
                vip = next((x for x in vips if x.ip == ip), None)
                port = next((p for p in ports if p.instance_id == head.instance), None)
                if (
                    vip is None
                    or port is None
                    or head.instance not in vip.allowed
                    or vip.epoch > head.epoch_seen
                    or ip in port.allowed_ips  # the controller delivers it there already
                ):
                    del self._heads[key]
            heads = {k: h.instance for k, h in self._heads.items()}
        return head_start(desired, heads)

    def update(self, applied: HostDesired) -> None:
        """Learn the VIPs and ports of the document just applied; watch exactly the VPC
        namespaces with VIPs and ports here. Never raises."""
        try:
            vips: dict[tuple[str, str], VipDesired] = {}
            ports: dict[str, dict[str, tuple[str, str]]] = {}
            delivered: dict[tuple[str, str], str] = {}
            sources: dict[str, dict[str, tuple[str, ...]]] = {}
            for v in applied.vpcs:
                if not v.vips or not v.ports:
                    continue
                ns = self.naming.vpc_netns(v.vni)
                vips.update(((v.id, x.ip), x) for x in v.vips)
                ports[ns] = {p.ifname: (v.id, p.instance_id) for p in v.ports}
                holder_port = {a: p.ifname for p in v.ports for a in p.allowed_ips}
                for p in v.ports:
                    delivered.update(((v.id, a), p.instance_id) for a in p.allowed_ips)
                sources[ns] = {
                    x.ip: (VXLAN_IFNAME, holder_port[x.ip])
                    if x.ip in holder_port
                    else (VXLAN_IFNAME,)
                    for x in v.vips
                }
        except Exception:  # a document we cannot read must not stop the apply loop
            log.exception("vip claims: cannot read the document's VIPs")
            return
        with self._lock:
            self._vips, self._ports, self._delivered = vips, ports, delivered
            self._sources = sources
            for x in vips.values():
                self._epochs[x.id] = max(self._epochs.get(x.id, 0), x.epoch)
            ids = {x.id for x in vips.values()}
            self._epochs = {k: e for k, e in self._epochs.items() if k in ids}
            self._marks = {k: e for k, e in self._marks.items() if k[:2] in vips}
            if self._running:
                self._watch(set(ports))

    def _watch(self, want: set[str]) -> None:
        # Under the lock: start a reader per namespace wanted, stop the others.
        for ns in [ns for ns in self._readers if ns not in want]:
            _thread, stop = self._readers.pop(ns)
            stop.set()  # it exits within READ_TIMEOUT; nobody waits for it
            log.info("vip claims: no more VIPs to watch in %s", ns)
        for ns in want - self._readers.keys():
            stop = threading.Event()
            t = threading.Thread(target=self._read_loop, args=(ns, stop), name=f"arp:{ns}")
            t.daemon = True
            self._readers[ns] = (t, stop)
            t.start()
            log.info("vip claims: watching ARP in %s", ns)

    # -- announcements -----------------------------------------------------------------

    def announce(self, netns: str, ifname: str, arp: Arp | Sent, now: float | None = None) -> Seen:
        """An ARP packet (or an IPv4 packet from a VIP) received on `ifname` in `netns`:
        what the agent makes of it.

        A packet sent from a VIP is a weaker sign than an announcement: it is claimed as
        `traffic`, which the control plane grants only while nobody holds the VIP (an old
        holder's stray packets must not take it back), so it gets no head start here. So
        is an ARP packet from the VIP that is not gratuitous: a kernel resolving a
        neighbour to send from the address.
        """
        at = self._clock() if now is None else now
        how: How = "garp" if isinstance(arp, Arp) and arp.gratuitous else "traffic"
        ip = arp.sender_ip if isinstance(arp, Arp) else arp.src_ip
        with self._lock:
            who = self._ports.get(netns, {}).get(ifname)
            if who is None:
                return "not_a_port"
            vpc_id, inst = who
            vip = self._vips.get((vpc_id, ip))
            if vip is None:
                return "not_a_vip"
            if how == "traffic" and self._delivered.get((vpc_id, vip.ip)) == inst:
                return "duplicate"  # the holder's own traffic (the filter lets none through)
            epoch = max(self._epochs.get(vip.id, 0), vip.epoch)
            mark = (vpc_id, vip.ip, inst, how)
            if self._marks.get(mark) == epoch:
                return "duplicate"
            self._marks[mark] = epoch
            allowed = inst in vip.allowed
            self._queue(Claim(vip.ip, vpc_id, inst, epoch, at, allowed, how))
            seen: Seen = "claimed" if allowed else "not_allowed"
            if allowed and how == "garp" and self._delivered.get((vpc_id, vip.ip)) != inst:
                self._heads[(vpc_id, vip.ip)] = _Head(inst, epoch)
                self._delivered[(vpc_id, vip.ip)] = inst
                self._repoint_due = True
                seen = "repointed"
        log.info("vip claims: %s %s %s (epoch %d): %s", inst,
                 "announced" if how == "garp" else "sends from", vip.ip, epoch, seen)  # fmt: skip
        self._wake.set()
        if seen == "repointed":
            self._repoint_wake.set()
        return seen

    def _queue(self, claim: Claim) -> None:
        # Under the lock. The latest announcement of a VIP by an allowed instance replaces
        # the one before (a batch with both would make the later one stale); refused ones
        # are kept per instance (the control plane counts each).
        key = (claim.vpc, claim.vip_ip, claim.how, "" if claim.allowed else claim.instance)
        self._pending.pop(key, None)
        self._pending[key] = claim
        while len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]
            self.dropped += 1

    # -- reporting ---------------------------------------------------------------------

    def flush_once(self) -> bool:
        """Post the pending claims (at most MAX_BATCH) and take in the results. True when
        they reached the server, were refused for good (dropped, counted) or there was
        nothing to send; False when they are to be retried."""
        with self._lock:
            batch = list(self._pending.items())[:MAX_BATCH]
        if not batch:
            return True
        body = {"claims": [c.to_json() for _k, c in batch]}
        try:
            r = self._client.post(self._path("/vip-claims"), json=body)
        except httpx.HTTPError as exc:
            self.failures += 1
            log.warning("vip claims: reporting %d claims failed: %s", len(batch), exc)
            if self._on_error is not None:
                self._on_error(exc)
            return False
        if r.status_code in (400, 422):
            self.refused += len(batch)  # retrying the same body cannot help
            log.error("vip claims: %d claims refused: %s", len(batch), r.text[:300])
            self._done(batch, [])
            return True
        if r.status_code >= 300:
            self.failures += 1
            log.warning("vip claims: report refused: %s %s", r.status_code, r.text[:300])
            return False
        try:
            results = list(r.json()["results"])
        except (ValueError, KeyError, TypeError) as exc:
            self.failures += 1
            log.warning("vip claims: unreadable answer (%s); retrying", exc)
            return False
        if self._done(batch, results):
            self._repoint()
        return True

    def _done(
        self, batch: list[tuple[tuple[str, str, How, str], Claim]], results: list[dict[str, Any]]
    ) -> bool:
        """Forget the claims posted and learn from their results; True when a head start
        was dropped (the agent must apply the controller's document again)."""
        dropped = False
        with self._lock:
            for i, (key, claim) in enumerate(batch):
                if self._pending.get(key) is claim:  # not replaced meanwhile
                    del self._pending[key]
                if i >= len(results):
                    continue
                res = results[i]
                result, vid, epoch = res.get("result"), res.get("vip"), int(res.get("epoch", 0))
                if vid:
                    self._epochs[vid] = max(self._epochs.get(vid, 0), epoch)
                log.info(
                    "vip claims: %s claiming %s at epoch %d: %s (epoch %d)",
                    claim.instance,
                    claim.vip_ip,
                    claim.epoch_seen,
                    result,
                    epoch,
                )
                mark = (claim.vpc, claim.vip_ip, claim.instance, claim.how)
                if self._marks.get(mark) == claim.epoch_seen:
                    if result == "stale":
                        del self._marks[mark]  # the next announcement claims at the new epoch
                    else:
                        self._marks[mark] = epoch  # repeats at this epoch are duplicates
                head = self._heads.get((claim.vpc, claim.vip_ip))
                if (
                    result != "won"
                    and head is not None
                    and head == _Head(claim.instance, claim.epoch_seen)
                ):
                    del self._heads[(claim.vpc, claim.vip_ip)]
                    # Until the agent has applied again, nobody here holds it by our hand.
                    self._delivered.pop((claim.vpc, claim.vip_ip), None)
                    dropped = True
        return dropped

    # -- threads -----------------------------------------------------------------------

    def _read_loop(self, netns: str, stop: threading.Event) -> None:
        sock: ArpSource | None = None
        watched: dict[str, tuple[str, ...]] | None = None
        backoff = 0.2
        try:
            while not stop.is_set() and not self._stop.is_set():
                if sock is None:
                    try:
                        sock = self._source(netns)
                        watched = None  # a new socket keeps ARP only until it is told
                        backoff = 0.2
                    except ArpError as exc:  # the namespace is not there (yet)
                        log.warning("vip claims: %s; retrying in %.1f s", exc, backoff)
                        stop.wait(backoff)
                        backoff = min(backoff * 2, 10.0)
                        continue
                try:
                    with self._lock:
                        want = self._sources.get(netns, {})
                    if want != watched:
                        sock.watch(want)
                        watched = want
                    frames = sock.receive(READ_TIMEOUT)
                except ArpError as exc:
                    log.warning("vip claims: %s; reopening", exc)
                    sock.close()
                    sock = None
                    continue
                for ifname, arp in frames:
                    try:
                        self.announce(netns, ifname, arp)
                    except Exception:  # one bad packet must not end the reader
                        log.exception("vip claims: announcement on %s failed", ifname)
        finally:
            if sock is not None:
                sock.close()

    def _work_loop(self) -> None:
        delay = 0.0
        next_post: float | None = None  # monotonic time of the next post; None: none due
        while not self._stop.is_set():
            timeout = 1.0 if next_post is None else next_post - time.monotonic()
            if timeout > 0:
                self._wake.wait(timeout)  # an announcement wakes it: re-point at once
            self._wake.clear()
            woke = time.monotonic()
            if self._stop.is_set():
                break
            with self._lock:
                waiting = bool(self._pending)
            now = time.monotonic()
            if not waiting:
                next_post = None
                continue
            if next_post is None:
                # Gather what is announced with it, counting from the announcement; the head
                # start is applied meanwhile by the re-pointer thread (tens of ms): the claim
                # never waits for it.
                next_post = woke + BATCH_DELAY
                continue
            if now < next_post:
                continue
            try:
                ok = self.flush_once()
            except Exception:  # the worker must survive a bug in one answer
                log.exception("vip claims: reporting failed")
                ok = False
            delay = next_delay(delay, ok)
            next_post = time.monotonic() + max(delay, BATCH_DELAY)

    def _repoint_loop(self) -> None:
        # Its own thread: the head start (an apply of the host's document) and the claim's
        # post run side by side, so the controller hears of the claim as early as it can.
        while not self._stop.is_set():
            self._repoint_wake.wait(1.0)
            self._repoint_wake.clear()
            if self._stop.is_set():
                break
            with self._lock:
                due, self._repoint_due = self._repoint_due, False
            if due:
                try:
                    self._repoint()
                except Exception:
                    log.exception("vip claims: re-pointing failed")

    def start(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
            self._watch(set(self._ports))
            self._worker = threading.Thread(target=self._work_loop, name="vip-claims")
            self._worker.daemon = True
            self._worker.start()
            self._repointer = threading.Thread(target=self._repoint_loop, name="vip-repoint")
            self._repointer.daemon = True
            self._repointer.start()

    def stop(self) -> None:
        """Stop every thread; claims still pending are not reported."""
        self._stop.set()
        self._wake.set()
        self._repoint_wake.set()
        with self._lock:
            self._running = False
            readers = list(self._readers.values())
            self._readers.clear()
        for _t, stop in readers:
            stop.set()
        for t, _stop in readers:
            t.join(timeout=READ_TIMEOUT + 2.0)
        if self._worker is not None:
            self._worker.join(timeout=5.0)
        if self._repointer is not None:
            self._repointer.join(timeout=5.0)
