"""Host conditions and NAT gateway placement: the leader's verdicts on leases.

* A host's `status.condition` is "ready" while its agent's lease is fresh and "lost" once
  it is not (`scheduler.host_healthy`). It is written once per transition, never per tick:
  the data plane's next hops (docs/routing.md) follow it, and every write reaches hosts.
* A NAT gateway runs on one healthy host, any zone, the one with the fewest gateways
  (status.host, phase "active"). When its host is lost it moves to another healthy host
  (`moved_at`, and the move in `history`, the last 20 kept); with none to go to it stays
  where it was, phase "unplaced", until a host is ready again.
* For `STARTUP_GRACE` seconds after a controller starts leading, no host is judged lost:
  leases read back from the database after a control-plane outage are all stale, and
  agents need one heartbeat to say they are alive. Without this, a restart of the
  control plane would move every gateway.

Moves and gateways left without a host are also events of the gateway's project
(`NatGatewayMoved`, `NatGatewayUnplaced`: docs/credentials.md, "Events").

`plan` decides from plain inputs; `apply` writes its answer in the controller's
transaction. Both are level-triggered: a pass over a settled region writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from yunhan.controller.scheduler import HEALTHY_WITHIN, Heartbeat, host_healthy
from yunhan.store import Notice, Reader, Resource, Tx

STARTUP_GRACE = HEALTHY_WITHIN
HISTORY = 20
MOVED = "NatGatewayMoved"
UNPLACED = "NatGatewayUnplaced"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verdicts(
    hosts: list[Resource], leases: Mapping[str, Heartbeat], now: float, judge_lost: bool
) -> dict[str, str | None]:
    """host name -> "ready" (fresh lease), "lost" (stale, or none after having been
    ready), or None: never heard from, or not judged yet (startup grace)."""
    out: dict[str, str | None] = {}
    for h in hosts:
        lease = leases.get(h.name)
        if host_healthy(lease, now):
            out[h.name] = "ready"
        elif judge_lost and (lease is not None or h.status.get("condition") is not None):
            out[h.name] = "lost"
        else:
            out[h.name] = h.status.get("condition")
    return out


@dataclass
class Plan:
    """What a pass writes: host conditions, gateway statuses."""

    conditions: dict[str, str] = field(default_factory=dict)  # host id -> condition
    gateways: dict[str, dict[str, Any]] = field(default_factory=dict)  # natgw id -> status
    notices: list[Notice] = field(default_factory=list)  # what the gateways' owners learn

    def __bool__(self) -> bool:
        return bool(self.conditions or self.gateways)


def plan(
    hosts: list[Resource],
    gateways: list[Resource],
    verdict: Mapping[str, str | None],
    now: float,
) -> Plan:
    """The writes that bring conditions and gateway placements in line with `verdict`."""
    out = Plan()
    for h in hosts:
        v = verdict.get(h.name)
        if v is not None and h.status.get("condition") != v:
            out.conditions[h.id] = v
    load = {h.name: 0 for h in hosts}
    for g in gateways:
        if g.status.get("host") in load:
            load[g.status["host"]] += 1
    ready = sorted(n for n, v in verdict.items() if v == "ready")

    def lightest(but: str | None) -> str | None:
        choices = [n for n in ready if n != but]
        return min(choices, key=lambda n: (load[n], n)) if choices else None

    for g in sorted(gateways, key=lambda g: g.id):
        st = g.status
        host = st.get("host")
        if host is not None and verdict.get(host) == "ready":
            if st.get("phase") != "active":
                out.gateways[g.id] = {**st, "phase": "active"}
            continue
        if host is not None and host in load and verdict.get(host) != "lost":
            continue  # not judged yet (startup grace, never heard from): leave it there
        new = lightest(host)
        if new is None:
            if st.get("phase") != "unplaced":
                out.gateways[g.id] = {**st, "phase": "unplaced"}
                if host is not None:
                    why = (
                        f"NAT gateway {g.name}: its host {host} is lost and no other host is "
                        "healthy; the subnets it serves have no internet access until one is"
                    )
                    out.notices.append(Notice(g.project, g.id, UNPLACED, why, now))
            continue
        load[new] += 1
        if host in load:
            load[host] -= 1
        reason = "placed" if host is None else f"host {host} lost"
        move = {"at": _iso(now), "from": host, "to": new, "reason": reason}
        history = [*(st.get("history") or []), move][-HISTORY:]
        status = {**st, "host": new, "phase": "active", "history": history}
        if host is not None:
            status["moved_at"] = move["at"]
            why = (
                f"NAT gateway {g.name} moved from host {host} (lost) to {new}: new "
                f"connections work again once {new} has built it; those open through "
                f"{host} are lost"
            )
            out.notices.append(Notice(g.project, g.id, MOVED, why, now))
        out.gateways[g.id] = status
    return out


def decide(
    r: Reader, leases: Mapping[str, Heartbeat], now: float, judge_lost: bool
) -> tuple[Plan, list[Resource], list[Resource]]:
    hosts = r.list("host")
    gateways = r.list("natgw")
    return plan(hosts, gateways, verdicts(hosts, leases, now, judge_lost), now), hosts, gateways


def apply(tx: Tx, p: Plan) -> int:
    """Write a plan; returns how many objects it changed."""
    n = 0
    for hid, condition in p.conditions.items():
        h = tx.get("host", hid)
        if h is not None and tx.update(h, status={**h.status, "condition": condition}) is not h:
            n += 1
    for gid, status in p.gateways.items():
        g = tx.get("natgw", gid)
        if g is not None and tx.update(g, status=status) is not g:
            n += 1
    tx.add_notices(p.notices)
    return n
