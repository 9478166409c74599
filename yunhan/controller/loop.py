"""The controller: a thin level-triggered loop around the pure reconcilers.

A pass (1) places instances that have no host yet (a short write transaction, only when
there are any), (2) reads a consistent snapshot of the model at revision B and compiles
every host's desired document from it, outside any write lock so that API writes are not
held up, and (3) publishes, in one write transaction, only the documents whose content
changed, each recorded as "compiled from B". A pass that finds nothing to do writes no
resource, so the revision does not move; it only records how far it has compiled
(`compiled_revision` = B, bookkeeping that `converged` reads).

Documents are compared by a hash of their JSON, kept in the document's status, so that a
pass never decodes the (large) published documents.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from yunhan.controller.netcompile import HostIn, InstanceIn, SubnetIn, VpcIn, compile_hosts
from yunhan.controller.scheduler import Candidate, schedule
from yunhan.net.desired import HostDesired
from yunhan.net.naming import short_id
from yunhan.store import Liveness, Reader, Resource, Store, Tx

log = logging.getLogger("yunhan.controller")

HEALTHY_WITHIN = 15.0  # seconds since the last heartbeat (docs/api.md)


def host_healthy(lv: Liveness | None, now: float) -> bool:
    return lv is not None and now - lv.heartbeat_at < HEALTHY_WITHIN


def candidates(r: Reader, now: float) -> list[Candidate]:
    """Hosts as the scheduler sees them (health from heartbeats, load from instances)."""
    live = r.liveness()
    load: dict[str, int] = {}
    for inst in r.list("instance"):
        h = inst.status.get("host")
        if h:
            load[h] = load.get(h, 0) + 1
    return [
        Candidate(
            name=h.name,
            zone=h.spec["zone"],
            healthy=host_healthy(live.get(h.name), now),
            instances=load.get(h.name, 0),
        )
        for h in r.list("host")
    ]


def doc_id(host: Resource) -> str:
    return f"hd-{short_id(host.id)}"


def _compile_inputs(
    r: Reader,
) -> tuple[list[HostIn], list[VpcIn], list[SubnetIn], list[InstanceIn]]:
    hosts = [
        HostIn(
            name=h.name,
            vtep_index=int(h.status["vtep_index"]),
            underlay_ip=h.spec["underlay_ip"],
            mtu=int(h.spec.get("mtu", 1500)),
        )
        for h in r.list("host")
        if h.status.get("vtep_index")
    ]
    vpcs = [
        VpcIn(id=v.id, vni=int(v.status["vni"]), cidrs=tuple(v.spec["cidrs"]))
        for v in r.list("vpc")
        if v.status.get("vni")
    ]
    subnets = [SubnetIn(id=s.id, vpc=s.spec["vpc"], cidr=s.spec["cidr"]) for s in r.list("subnet")]
    instances = [
        InstanceIn(
            id=i.id,
            name=i.name,
            subnet=i.spec["subnet"],
            ip=i.status.get("ip"),
            mac=i.status.get("mac"),
            host=i.status.get("host"),
            command=tuple(i.spec["command"]) if i.spec.get("command") else None,
        )
        for i in r.list("instance")
    ]
    return hosts, vpcs, subnets, instances


def _digest(doc: HostDesired) -> str:
    return hashlib.sha256(doc.model_dump_json().encode()).hexdigest()


def schedule_pending(tx: Tx, now: float) -> int:
    """Place instances that have no host (their zone had none when they were created).

    Returns how many were placed. Instances whose zone still has no host stay pending.
    """
    pending = [i for i in tx.list("instance") if not i.status.get("host")]
    if not pending:
        return 0
    zones = {z.id: z.name for z in tx.list("zone")}
    cands = candidates(tx, now)
    placed = 0
    for inst in pending:
        zone = inst.spec["zone"]
        if not any(c.zone == zone for c in cands):
            continue
        name = schedule(zone, zones.get(zone, zone), cands)
        tx.update(inst, status={**inst.status, "host": name, "phase": "scheduled"})
        placed += 1
        cands = [
            Candidate(c.name, c.zone, c.healthy, c.instances + (c.name == name)) for c in cands
        ]
    return placed


@dataclass(frozen=True)
class Plan:
    """What one compile pass wants written: documents that changed, documents to drop."""

    input_revision: int
    changed: dict[str, tuple[Resource, Resource | None, HostDesired, str]]
    stale: tuple[Resource, ...]


def plan(r: Reader) -> Plan:
    """Compile every host's document from the snapshot `r`; keep those that changed."""
    docs = compile_hosts(*_compile_inputs(r))
    hosts = {h.name: h for h in r.list("host")}
    existing = {d.name: d for d in r.list("hostdesired", spec=False)}
    changed: dict[str, tuple[Resource, Resource | None, HostDesired, str]] = {}
    for name, doc in docs.items():
        digest = _digest(doc)
        old = existing.get(name)
        if old is None or old.status.get("sha256") != digest:
            changed[name] = (hosts[name], old, doc, digest)
    stale = tuple(d for name, d in existing.items() if name not in docs)
    return Plan(r.revision, changed, stale)


def publish(tx: Tx, p: Plan) -> None:
    """Write a plan's documents; record how far the controller has compiled."""
    for name, (host, old, doc, digest) in sorted(p.changed.items()):
        spec = doc.model_dump(mode="json")
        status = {"sha256": digest, "input_revision": p.input_revision}
        current = tx.get("hostdesired", old.id) if old else None
        if current is None:
            if tx.get("host", host.id) is None:
                continue  # the host went away since the snapshot
            tx.create("hostdesired", doc_id(host), host.project, name, spec, status)
        else:
            tx.update(current, spec=spec, status=status)
        tx.record_doc(name, p.input_revision)
    for old in p.stale:
        if tx.get("hostdesired", old.id) is not None:
            tx.delete(old)
    tx.set_compiled_revision(max(tx.compiled_revision, p.input_revision))


def reconcile(tx: Tx, now: float) -> None:
    """One full pass inside one transaction (schedule, compile, publish). Idempotent."""
    schedule_pending(tx, now)
    p = plan(tx)
    # Inside one transaction the snapshot includes this pass's own scheduling writes.
    publish(tx, Plan(tx.next_revision if tx.wrote else tx.revision, p.changed, p.stale))


class Controller:
    """Runs `reconcile` whenever the store revision moves. Stop it with the `stop` event."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def reconcile_once(self) -> int:
        """One pass; returns the revision compiled through."""
        with self.store.read() as r:
            unplaced = any(not i.status.get("host") for i in r.list("instance", spec=False))
        if unplaced:
            with self.store.transaction() as tx:
                schedule_pending(tx, self.clock())
        with self.store.read() as r:
            p = plan(r)
        with self.store.transaction() as tx:
            publish(tx, p)
            compiled = max(tx.compiled_revision, p.input_revision)
            written = tx.next_revision if tx.wrote else None
        if written is not None:
            log.info(
                "published %d host document(s) at revision %d (compiled from %d): %s",
                len(p.changed),
                written,
                p.input_revision,
                ", ".join(sorted(p.changed)[:10]) + (" …" if len(p.changed) > 10 else ""),
            )
        return compiled

    async def run(self, stop: asyncio.Event, *, retry_delay: float = 1.0) -> None:
        """Reconcile on every change until `stop` is set. A failing pass is retried."""
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                try:
                    seen = await asyncio.to_thread(self.reconcile_once)
                except Exception:
                    log.exception("controller pass failed; retrying")
                    seen = -1
                    waiting: asyncio.Task[Any] = asyncio.create_task(asyncio.sleep(retry_delay))
                else:
                    waiting = asyncio.create_task(self.store.wait_revision_async(seen, 30.0))
                await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                with suppress(asyncio.CancelledError):
                    await waiting
        finally:
            stopping.cancel()
            with suppress(asyncio.CancelledError):
                await stopping
