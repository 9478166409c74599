"""Agent endpoints (the host's own token, or the admin's): register, watch the desired
document, report status."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from yunhan.api.conventions import errors
from yunhan.api.deps import MAX_REVISION, AgentDep, AppState, state_of
from yunhan.api.journal import AGENT_RESTARTED, APPLY_ERROR, INSTANCE_FAILED
from yunhan.api.models import Host, VipClaimResults
from yunhan.api.views import host_view, resolve
from yunhan.controller.status import reflect
from yunhan.controller.vips import CLAIM_REFUSED, FLAPPING, ClaimResult, apply_claim
from yunhan.controller.volumes import VOLUME_DELETED, settle
from yunhan.errors import Conflict, NotFound
from yunhan.model import new_id, parse_ip, validate_mtu, validate_name
from yunhan.model.schemas import FunctionsReport, HostRegister, HostStatusReport, VipClaims
from yunhan.store import Resource

router = APIRouter(prefix="/v1/agent", tags=["agent"])

# Names the store that answers a desired-document poll (the admin project's id, random per
# database): revisions of one store mean nothing to another, so an agent that sees this
# change forgets the revision it applied and asks for the new store's document whole.
STORE_HEADER = "X-Yunhan-Store"


@router.put("/hosts/{name}", response_model=Host, responses=errors(403, 404, 409, 422))
def register_host(name: str, body: HostRegister, request: Request, _: AgentDep) -> dict[str, Any]:
    """Register or update a host. Its `vtep_index` is assigned on first registration and
    kept forever after: peers' neighbour and FDB entries are derived from it."""
    st = state_of(request)
    validate_name("host", name)
    underlay_ip = str(parse_ip(body.underlay_ip, "underlay_ip"))
    mtu = validate_mtu(body.mtu)
    with st.store.transaction() as tx:
        zone = resolve(tx, "zone", st.admin_project_id, body.zone)
        for other in tx.find("host", "underlay_ip", underlay_ip):
            if other.name != name:
                raise Conflict(
                    f"underlay IP {underlay_ip} is already registered by host {other.name}",
                    host=other.name,
                )
        spec: dict[str, Any] = {"zone": zone.id, "underlay_ip": underlay_ip, "mtu": mtu}
        if body.volume_pool is not None:
            spec["volume_pool"] = body.volume_pool
        host = tx.by_name("host", st.admin_project_id, name)
        if host is None:
            hosts = tx.list("host", st.admin_project_id)
            vtep = max((int(h.status.get("vtep_index") or 0) for h in hosts), default=0) + 1
            host = tx.create(
                "host", new_id("host"), st.admin_project_id, name, spec, {"vtep_index": vtep}
            )
        else:
            if host.spec.get("zone") != zone.id:
                # Its instances asked for the zone it was in when they were placed.
                carried = sorted(i.name for i in tx.find("instance", "host", name))
                if carried:
                    raise Conflict(
                        f"host {name} carries instance(s) {', '.join(carried)} of its zone; "
                        f"delete them before moving the host to zone {zone.name}",
                        instances=carried,
                    )
            host = tx.update(host, spec=spec)
    if body.restart is not None:
        st.journal.notice(
            st.admin_project_id,
            host.id,
            AGENT_RESTARTED,
            f"the agent of host {name} was restarted ({body.restart.count}): its previous run "
            f"{body.restart.cause}; it adopted the host's data plane as it found it",
        )
    return host_view(host, st.fleet.doc_revision(name), st.fleet.leases.get(name), st.clock())


@router.get(
    "/hosts/{name}/desired",
    response_model=None,
    responses={
        200: {"description": "a delta or a snapshot of the host's document (docs/api.md)"},
        204: {"description": "the document did not change within `timeout`"},
        **errors(403, 404),
    },
)
async def get_desired(
    name: str,
    request: Request,
    _: AgentDep,
    after: int = Query(0, ge=0, le=MAX_REVISION),
    timeout: float = Query(0.0, allow_inf_nan=False),
    digest: Annotated[Annotated[str, Field(max_length=64)] | SkipJsonSchema[None], Query()] = None,
) -> Response:
    """The changes of the host's document since revision `after` (docs/api.md): a delta, or
    the whole document (`snapshot`) when `after` is 0, unknown to this store, or the
    agent's `digest` of its copy disagrees. 204 when nothing changed within `timeout` s."""
    st = state_of(request)
    with st.store.read() as r:
        if r.by_name("host", st.admin_project_id, name) is None:
            raise NotFound(f"host {name} is not registered; PUT /v1/agent/hosts/{name} first")
    status, body = await desired_answer(st, name, after, timeout, digest)
    return Response(
        content=body,
        status_code=status,
        media_type="application/json" if body else None,
        headers={STORE_HEADER: st.admin_project_id},
    )


async def desired_answer(
    st: AppState, name: str, after: int, timeout: float, digest: str | None
) -> tuple[int, bytes]:
    """(status, body) of a desired-document poll of a registered host (the route's and the
    server's fast path's one implementation)."""
    delta = await st.fleet.desired(
        name, after, min(max(timeout, 0.0), st.max_long_poll), digest=digest
    )
    if delta is None:
        return 204, b""
    body = json.dumps(delta.to_json(), separators=(",", ":")).encode()
    st.fleet.bytes_sent += len(body)
    return 200, body


@router.post(
    "/hosts/{name}/status", status_code=204, responses=errors(403, 404), response_model=None
)
async def report_status(
    name: str, body: HostStatusReport, request: Request, _: AgentDep
) -> Response:
    """Heartbeat + applied revision (a lease, in memory) + per-instance facts, reflected
    into instance status only when they change what is stored."""
    st = state_of(request)
    with st.store.read() as r:
        if r.by_name("host", st.admin_project_id, name) is None:
            raise NotFound(f"host {name} is not registered; PUT /v1/agent/hosts/{name} first")
    await status_report(st, name, body)
    return Response(status_code=204)


async def status_report(st: AppState, name: str, body: HostStatusReport) -> None:
    """Take a registered host's status report (the route's and the fast path's one
    implementation): the lease in memory, instance facts written only when they change."""
    changes: list[tuple[str, dict[str, Any]]] = []
    with st.store.read() as r:
        host = r.by_name("host", st.admin_project_id, name)
        if host is None:
            raise NotFound(f"host {name} is not registered; PUT /v1/agent/hosts/{name} first")
        for iid, report in body.instances.items():
            inst = r.get("instance", iid)
            if inst is None or inst.status.get("host") != name:
                continue
            new = reflect(inst.status, report.model_dump(exclude_unset=True))
            if new != inst.status:
                changes.append((iid, new))
                if new.get("phase") == "failed" and inst.status.get("phase") != "failed":
                    # The instance's project sees this (its own instance, its own message).
                    st.journal.notice(
                        inst.project,
                        inst.id,
                        INSTANCE_FAILED,
                        f"instance {inst.name} failed to start on host {name}: "
                        f"{new.get('message') or 'no reason given'}",
                    )
        now = st.clock()
        vol_changes: list[tuple[str, dict[str, Any]]] = []
        for vid, vreport in body.volumes.items():
            vol = r.get("volume", vid)
            if vol is None or vol.status.get("host") != name:
                continue  # only the host that serves it now speaks for it
            new = settle(vol.spec, vol.status, vreport.model_dump(), now)
            if new != vol.status:
                vol_changes.append((vid, new))
    lease = st.fleet.leases.get(name)
    if body.error and (lease is None or lease.error != body.error):
        # The text may name other projects' resources: the admin's only. Tenants learn of
        # it through their instances' phase and message.
        st.journal.notice(st.admin_project_id, host.id, APPLY_ERROR, f"host {name}: {body.error}")
    st.fleet.ack(name, body.applied_revision, body.error)
    lease = st.fleet.leases.get(name)
    if lease is not None:
        lease.function_workers = body.functions.workers if body.functions else None
        lease.datapath = body.datapath.model_dump() if body.datapath else None
    if changes:
        await _write_phases(st, name, changes)
    if vol_changes:
        await _write_volumes(st, name, vol_changes)
    functions = stored_functions(body.functions)
    if host.status.get("functions") != functions:
        await _write_functions(st, name, functions)


def stored_functions(report: FunctionsReport | None) -> dict[str, Any] | None:
    """What the host's status keeps of its function host: what changes only when its
    agent restarts (the worker count stays in memory, on the lease)."""
    if report is None:
        return None
    return {"endpoint": report.endpoint, "key": report.key, "memory_mb": report.memory_mb}


async def _write_functions(st: AppState, host: str, functions: dict[str, Any] | None) -> None:
    def write() -> None:
        with st.store.transaction() as tx:
            h = tx.by_name("host", st.admin_project_id, host)
            if h is None or h.status.get("functions") == functions:
                return
            status = {k: v for k, v in h.status.items() if k != "functions"}
            if functions is not None:
                status["functions"] = functions
            tx.update(h, status=status)

    await asyncio.to_thread(write)


async def _write_phases(st: AppState, host: str, changes: list[tuple[str, Any]]) -> None:
    def write() -> None:
        with st.store.transaction() as tx:
            for iid, status in changes:
                inst = tx.get("instance", iid)
                if inst is not None and inst.status.get("host") == host:
                    tx.update(inst, status={**inst.status, **_agent_fields(status)})

    await asyncio.to_thread(write)


async def _write_volumes(st: AppState, host: str, changes: list[tuple[str, Any]]) -> None:
    def write() -> list[Resource]:
        deleted = []
        with st.store.transaction() as tx:
            for vid, status in changes:
                vol = tx.get("volume", vid)
                # The API may have moved it meanwhile (attach, detach): then this report
                # spoke of a state that is gone, and the next one says what is true.
                if vol is None or vol.status.get("host") != host:
                    continue
                if vol.spec.get("deleting") and status.get("phase") == "deleted":
                    tx.delete(vol)  # its host removed its data: now the resource goes
                    deleted.append(vol)
                else:
                    tx.update(vol, status=status)
        return deleted

    for vol in await asyncio.to_thread(write):
        st.journal.notice(vol.project, vol.id, VOLUME_DELETED, f"volume {vol.name} deleted")


def _agent_fields(status: dict[str, Any]) -> dict[str, Any]:
    return {k: status.get(k) for k in ("phase", "message", "netns", "uts") if k in status}


@router.post("/hosts/{name}/vip-claims", response_model=VipClaimResults, responses=errors(403, 404))
async def report_vip_claims(
    name: str, body: VipClaims, request: Request, _: AgentDep
) -> dict[str, Any]:
    """Claims of VIPs the host's agent saw its instances announce (docs/vips.md), decided
    in order, in one write: a claim by an allowed instance on this host whose `epoch_seen`
    is not older than the VIP's epoch wins (a new epoch); a stale one loses; one by an
    instance that is not allowed changes nothing and is noticed. Each result carries the
    VIP's epoch after it, the one the agent should claim with next."""
    st = state_of(request)
    with st.store.read() as r:
        if r.by_name("host", st.admin_project_id, name) is None:
            raise NotFound(f"host {name} is not registered; PUT /v1/agent/hosts/{name} first")

    def write() -> list[ClaimResult]:
        now = st.clock()
        with st.store.transaction() as tx:
            return [
                apply_claim(
                    tx,
                    name,
                    c.vip_ip,
                    c.vpc,
                    c.instance,
                    c.epoch_seen,
                    now,
                    st.vip_damping,
                    c.how,
                )
                for c in body.claims
            ]

    results = await asyncio.to_thread(write) if body.claims else []
    for claim, res in zip(body.claims, results, strict=True):
        st.vip_claims[res.result] += 1
        vip = res.vip
        if vip is None:
            continue
        if res.result == "not_allowed":
            st.journal.notice(
                vip.project,
                vip.id,
                CLAIM_REFUSED,
                f"instance {res.instance} on host {name} "
                f"{'announced' if claim.how == 'garp' else 'sent packets from'} VIP {vip.name} "
                f"({vip.spec['ip']}) but is not allowed to hold it; ignored, and its port "
                "drops packets from that address",
            )
        if res.began_damping:
            st.journal.notice(
                vip.project,
                vip.id,
                FLAPPING,
                f"VIP {vip.name} ({vip.spec['ip']}) changed holder more than "
                f"{st.vip_damping.changes} times in {st.vip_damping.window:g} s: hosts keep "
                f"delivering it to {vip.status.get('delivered_to') or 'nobody'} until it has "
                f"been quiet for {st.vip_damping.window:g} s, then to the latest holder",
            )
    return {"results": [res.view() for res in results]}
