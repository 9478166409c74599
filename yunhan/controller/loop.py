"""The controller: a thin level-triggered loop around the pure reconcilers.

Each pass re-reads the whole model inside ONE write transaction (so it compiles a
consistent snapshot and nobody writes in between), places unplaced instances, compiles
every host's desired document and publishes only the documents whose content changed.
A pass that finds nothing to do writes no resource, so the revision does not move; it only
records how far it has compiled (`compiled_revision`, bookkeeping that `converged` reads).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from yunhan.controller.netcompile import HostIn, InstanceIn, SubnetIn, VpcIn, compile_hosts
from yunhan.controller.scheduler import Candidate, schedule
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


def _dump(d: Any) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def reconcile(tx: Tx, now: float) -> None:
    """One full pass: schedule, compile, publish changed documents. Idempotent."""
    # 1. Place instances that have no host yet (their zone had none when created).
    zones = {z.id: z.name for z in tx.list("zone")}
    cands = candidates(tx, now)
    for inst in tx.list("instance"):
        if inst.status.get("host"):
            continue
        zone = inst.spec["zone"]
        if not any(c.zone == zone for c in cands):
            continue
        name = schedule(zone, zones.get(zone, zone), cands)
        tx.update(inst, status={**inst.status, "host": name, "phase": "scheduled"})
        cands = [
            Candidate(c.name, c.zone, c.healthy, c.instances + (c.name == name)) for c in cands
        ]

    # 2. Compile every host's document; publish only those whose content changed.
    docs = compile_hosts(*_compile_inputs(tx))
    hosts = {h.name: h for h in tx.list("host")}
    existing = {d.name: d for d in tx.list("hostdesired")}
    for name, doc in docs.items():
        spec = doc.model_dump(mode="json")
        old = existing.get(name)
        if old is None:
            host = hosts[name]
            tx.create("hostdesired", doc_id(host), host.project, name, spec)
            tx.record_doc(name)
        elif _dump(old.spec) != _dump(spec):
            tx.update(old, spec=spec)
            tx.record_doc(name)
    for name, old in existing.items():
        if name not in docs:
            tx.delete(old)

    # 3. Bookkeeping: this pass saw everything up to the revision it is about to commit.
    tx.set_compiled_revision(tx.next_revision if tx.wrote else tx.revision)


class Controller:
    """Runs `reconcile` whenever the store revision moves. Stop it with the `stop` event."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def reconcile_once(self) -> int:
        """One pass; returns the revision compiled through."""
        with self.store.transaction() as tx:
            reconcile(tx, self.clock())
        with self.store.read() as r:
            return r.compiled_revision

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
