"""Hybrid gateway replicas: where they run, and which line address each holds.

A gateway wants `spec.replicas` replicas, each on its own healthy host (two replicas of one
gateway on one host would share the line's VNI on one UDP socket, and would fail together
anyway). A replica is `{"index", "host", "line_ip", ...}` in `status.replicas`; its agent
adds what it sees of its BGP session (`api.routes.hybrid.report_replicas`).

* Missing replicas are placed on the ready hosts without one, zones with fewer replicas of
  the gateway first, then the hosts with the fewest replicas of any gateway.
* A replica whose host is lost (or removed) is moved (same index, same line address: the
  site router relearns the MAC from the new replica's first frame), its BGP fields reset,
  to a zone the gateway's other replicas leave free if it can. With no host free it stays
  `unplaced` (no host sends to it) until a host is free or its own comes back.
* Extra replicas go highest index first; the others are untouched, so their flows stay.

Level-triggered like `natgw`: a pass over a settled region writes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from yunhan.model.hybrid import line_address
from yunhan.store import Notice, Reader, Resource, Tx

HISTORY = 20
MOVED = "HybridReplicaMoved"
UNPLACED = "HybridReplicaUnplaced"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fresh(index: int, host: str, line_ip: str) -> dict[str, Any]:
    return {
        "index": index,
        "host": host,
        "line_ip": line_ip,
        "state": "pending",
        "reason": "the agent of its host has not reported it yet",
        "since": None,
        "bfd": None,
        "learned": [],
        "announced": [],
    }


def plan(
    hosts: list[Resource],
    gateways: list[Resource],
    verdict: Mapping[str, str | None],
    now: float,
) -> tuple[dict[str, dict[str, Any]], list[Notice]]:
    """gateway id -> its new status, for the gateways whose replicas must change."""
    zone_of = {h.name: str(h.spec.get("zone", "")) for h in hosts}
    ready = sorted(n for n, v in verdict.items() if v == "ready")
    load: Counter[str] = Counter()
    for g in gateways:
        for rep in g.status.get("replicas") or []:
            load[str(rep.get("host"))] += 1
    taken_on_line: dict[str, set[str]] = {}
    for g in gateways:
        cidr = str((g.status.get("line") or {}).get("cidr"))
        for rep in g.status.get("replicas") or []:
            taken_on_line.setdefault(cidr, set()).add(str(rep.get("line_ip")))
    out: dict[str, dict[str, Any]] = {}
    notices: list[Notice] = []
    for g in sorted(gateways, key=lambda g: g.id):
        st = g.status
        want = int(g.spec.get("replicas", 2))
        reps = [dict(r) for r in st.get("replicas") or []]
        history = list(st.get("history") or [])
        changed = False
        line: dict[str, Any] = st.get("line") or {}
        taken = taken_on_line.setdefault(str(line.get("cidr")), set())

        def pick(reps: list[dict[str, Any]]) -> str | None:
            used = {r["host"] for r in reps}
            zones = Counter(zone_of.get(r["host"], "") for r in reps)
            choices = [n for n in ready if n not in used]
            if not choices:
                return None
            return min(choices, key=lambda n: (zones[zone_of.get(n, "")], load[n], n))

        # Replicas on lost hosts (or hosts removed from the region) move (same index and
        # line address); one left unplaced comes back when its host does.
        for i, rep in enumerate(reps):
            judged = verdict.get(rep["host"])
            if rep["host"] in zone_of and judged != "lost":
                if judged == "ready" and rep.get("state") == "unplaced":
                    reps[i] = _fresh(rep["index"], rep["host"], rep["line_ip"])
                    changed = True
                continue
            # the zones of the others: the one it leaves counts for nothing
            new = pick([r for j, r in enumerate(reps) if j != i])
            if new is None:
                if rep.get("state") != "unplaced":
                    reps[i] = {**rep, "state": "unplaced", "reason": f"host {rep['host']} is lost"}
                    changed = True
                    why = (
                        f"hybrid gateway {g.name}: replica {rep['index']} lost its host "
                        f"{rep['host']} and no other host is free; the others carry its flows"
                    )
                    notices.append(Notice(g.project, g.id, UNPLACED, why, now))
                continue
            load[rep["host"]] -= 1
            load[new] += 1
            move = {"at": _iso(now), "replica": rep["index"], "from": rep["host"], "to": new}
            history = [*history, move][-HISTORY:]
            reps[i] = _fresh(rep["index"], new, rep["line_ip"])
            changed = True
            why = (
                f"hybrid gateway {g.name}: replica {rep['index']} moved from host "
                f"{rep['host']} (lost) to {new}"
            )
            notices.append(Notice(g.project, g.id, MOVED, why, now))
        # Too many: the highest indexes go.
        if len(reps) > want:
            reps.sort(key=lambda r: r["index"])
            for rep in reps[want:]:
                load[rep["host"]] -= 1
            reps = reps[:want]
            changed = True
        # Too few: new replicas at the lowest free indexes.
        while len(reps) < want:
            new = pick(reps)
            if new is None:
                break
            used_idx = {r["index"] for r in reps}
            index = next(n for n in range(1, want + len(reps) + 2) if n not in used_idx)
            ip = line_address(str(line["cidr"]), str(line.get("router_ip", "")), taken)
            taken.add(ip)
            load[new] += 1
            reps.append(_fresh(index, new, ip))
            history = [*history, {"at": _iso(now), "replica": index, "from": None, "to": new}][
                -HISTORY:
            ]
            changed = True
        reps.sort(key=lambda r: r["index"])
        placed = sum(1 for r in reps if r.get("state") != "unplaced")
        phase = "active" if placed >= want else ("degraded" if placed else "unplaced")
        if changed or st.get("phase") != phase:
            out[g.id] = {**st, "replicas": reps, "history": history, "phase": phase}
    return out, notices


def decide(
    r: Reader, verdict: Mapping[str, str | None], now: float
) -> tuple[dict[str, dict[str, Any]], list[Notice]]:
    return plan(r.list("host"), r.list("hybrid_gw"), verdict, now)


def apply(tx: Tx, decided: tuple[dict[str, dict[str, Any]], list[Notice]]) -> int:
    statuses, notices = decided
    n = 0
    for gid, status in statuses.items():
        g = tx.get("hybrid_gw", gid)
        if g is not None and tx.update(g, status=status) is not g:
            n += 1
    tx.add_notices(notices)
    return n
