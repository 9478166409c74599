"""`GET /metrics`: the control plane's own figures in the Prometheus text format.

Counters are totals since the process started (Prometheus derives rates: events per
second, compile time per change = compile seconds / compiles). Per-host apply lag names
hosts, which are the region's: those lines are for the admin token only.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from yunhan.api.conventions import errors
from yunhan.api.deps import CallerDep, state_of

router = APIRouter(tags=["metrics"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _num(value: float) -> str:
    # Exact: a counter of bytes or a revision past a million must not print as 1.2e+06.
    return str(value) if isinstance(value, int) else repr(float(value))


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {_num(value)}"
    return f"{name} {_num(value)}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}, "description": "OK"},
        **errors(),
    },
)
def metrics(request: Request, c: CallerDep) -> Response:
    """Events, compile time, documents and bytes sent, long polls, store commit time, and
    (admin) apply lag per host."""
    st = state_of(request)
    store, fleet = st.store, st.fleet
    out: list[str] = []

    def metric(name: str, kind: str, help: str, value: float) -> None:
        out.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", _line(name, value)])

    metric(
        "yunhan_store_revision",
        "gauge",
        "Revision this process has followed the log to.",
        store.revision(),
    )
    metric(
        "yunhan_store_events_total",
        "counter",
        "Change-log events applied to the model.",
        store.events_applied,
    )
    metric(
        "yunhan_store_transactions_total",
        "counter",
        "Write transactions committed.",
        store.transactions,
    )
    metric(
        "yunhan_store_commits_total",
        "counter",
        "Database commits (group commit: one per batch of transactions).",
        store.batches,
    )
    metric(
        "yunhan_store_commit_seconds_total",
        "counter",
        "Time spent committing batches.",
        store.commit_seconds,
    )
    metric(
        "yunhan_compiles_total", "counter", "Writes compiled into host documents.", fleet.compiles
    )
    metric(
        "yunhan_compile_seconds_total",
        "counter",
        "Time spent compiling writes into host documents.",
        fleet.compile_seconds,
    )
    metric(
        "yunhan_documents_sent_total",
        "counter",
        "Desired-document answers sent to agents.",
        fleet.documents_sent,
    )
    metric(
        "yunhan_snapshots_sent_total",
        "counter",
        "Of those answers, whole documents (an agent's first, or one too far behind).",
        fleet.snapshots_sent,
    )
    metric(
        "yunhan_document_bytes_sent_total", "counter", "Bytes of those answers.", fleet.bytes_sent
    )
    metric(
        "yunhan_long_polls_open",
        "gauge",
        "Agents' document long polls waiting now.",
        fleet.long_polls,
    )
    flows = st.flows
    metric(
        "yunhan_flow_records_received_total",
        "counter",
        "Flow log records posted by agents.",
        flows.received,
    )
    metric(
        "yunhan_flow_records_discarded_total",
        "counter",
        "Of those, records discarded: not of an instance on the posting host.",
        flows.discarded,
    )
    metric(
        "yunhan_flow_records_skipped_total",
        "counter",
        "Records agents reported dropped (stored as SKIPDATA records).",
        flows.skipped,
    )
    metric(
        "yunhan_flow_records_pruned_total",
        "counter",
        "Flow log records pruned by age or by the row cap.",
        flows.pruned,
    )
    metric("yunhan_hosts", "gauge", "Hosts with a desired document.", len(fleet.engine.hosts()))
    name = "yunhan_vip_claims_total"
    out.extend(
        [
            f"# HELP {name} VIP claims reported by agents, by outcome (docs/vips.md).",
            f"# TYPE {name} counter",
            *(_line(name, n, {"result": k}) for k, n in sorted(st.vip_claims.items())),
        ]
    )
    if c.admin:
        name = "yunhan_host_apply_lag_revisions"
        out += [
            f"# HELP {name} Revisions between a host's document and what its agent applied.",
            f"# TYPE {name} gauge",
        ]
        lag_s = "yunhan_host_heartbeat_age_seconds"
        ages = [
            f"# HELP {lag_s} Seconds since the host's agent last reported.",
            f"# TYPE {lag_s} gauge",
        ]
        now = st.clock()
        with store.read():
            hosts = sorted(fleet.engine.hosts())
            docs = {h: fleet.engine.doc_revision(h) or 0 for h in hosts}
        for h in hosts:
            lease = fleet.leases.get(h)
            applied = lease.applied_revision if lease else 0
            out.append(_line(name, max(docs[h] - applied, 0), {"host": h}))
            if lease is not None:
                ages.append(_line(lag_s, round(now - lease.heartbeat_at, 3), {"host": h}))
        out += ages
    return Response("\n".join(out) + "\n", media_type=CONTENT_TYPE)
