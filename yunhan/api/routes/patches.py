"""Fleet hot patches (docs/fleetpatch.md): one .yhp, every matching process on every
chosen host, canary first, with rollback. Admin only: a patch touches every process of
the hosts it reaches, whatever project they run for.

The file is stored with the patch, by its sha256 (`store.patches`), and served to agents,
who verify the digest. The rollout's state is the patch's status, advanced by the leader
(`controller.rollout`); agents learn what to do from `GET /v1/agent/hosts/{name}/patches`
and say what they did through `POST /v1/agent/hosts/{name}/patch-reports`, whose
per-process rows are side-table rows (no revision) and whose counters and host state are
written to the status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import tempfile
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from yunhan.api.auth import Caller
from yunhan.api.conventions import (
    IdempotencyDep,
    IfMatch,
    Optional,
    PageDep,
    check_if_match,
    errors,
    paginate,
)
from yunhan.api.deps import AdminDep, AgentDep, AppState, identify, state_of
from yunhan.api.models import (
    AgentPatches,
    FleetPatch,
    FleetPatchDetail,
    FleetPatchList,
    PatchProcesses,
)
from yunhan.api.views import resolve
from yunhan.controller import rollout
from yunhan.errors import Conflict, Forbidden, HotpatchError, NotFound, ValidationError
from yunhan.model import new_id
from yunhan.model.schemas import PatchCreate, PatchReports
from yunhan.store import Notice, Reader, Resource
from yunhan.store.patches import MAX_ROWS, ProcessRow, drop_patch, put_file

if TYPE_CHECKING:
    from yunhan.hotpatch.manifest import Manifest

router = APIRouter(prefix="/v1", tags=["fleet patches"])

OCTETS = "application/octet-stream"
Digest = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="sha256 (hex) of the file")]
# Per-process results worth an event of their own (the others are counted).
_PROCESS_EVENTS = {
    "refused": (rollout.PATCH_REFUSED, "refused it"),
    "busy": (rollout.PATCH_REFUSED, "stayed busy in a patched function after every retry"),
    "died": (rollout.PATCH_DIED, "died within the health window after it was patched"),
    "rollback_failed": (rollout.PATCH_ROLLBACK_FAILED, "could not be rolled back"),
}


def _manifest(content: bytes) -> Manifest:
    """The manifest of an uploaded .yhp (422 when it is not one)."""
    from yunhan.hotpatch.manifest import read_manifest

    fd, path = tempfile.mkstemp(prefix="yunhan-upload-", suffix=".yhp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        try:
            return read_manifest(path)
        except (HotpatchError, ValidationError) as exc:
            why = exc.message.replace(path, "the file")
            raise ValidationError(
                f"not a .yhp patch: {why} (build one with `yunhan hotpatch build`)"
            ) from exc
    finally:
        os.unlink(path)


def _event(st: AppState, obj: str, reason: str, message: str) -> None:
    st.journal.notice(st.admin_project_id, obj, reason, message)


def _notices(p: Resource, events: list[tuple[str, str]], now: float) -> list[Notice]:
    return [Notice(p.project, p.id, r, f"patch {p.name}: {m}", now) for r, m in events]


# -- the resource --------------------------------------------------------------------------


@router.post(
    "/patches", status_code=201, response_model=FleetPatch, responses=errors(403, 404, 409, 422)
)
def create_patch(body: PatchCreate, request: Request, c: AdminDep, idem: IdempotencyDep) -> Any:
    """Upload a .yhp and start rolling it out: canary hosts first. Refused, changing
    nothing, when the content's sha256 is not `digest`, when it is not a .yhp, when a zone
    or host does not exist, or when a patch still rolling out replaces one of the same
    functions of the same build (a new one stacks on it once that one is done)."""
    st = state_of(request)
    try:
        content = base64.b64decode(body.content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError("content is not base64 (RFC 4648, no line breaks)") from exc
    digest = hashlib.sha256(content).hexdigest()
    if digest != body.digest:
        raise ValidationError(
            f"digest does not match: the content's sha256 is {digest}, the request says "
            f"{body.digest}; the file was damaged on the way, or the digest is another file's",
            digest=body.digest,
            actual=digest,
        )
    m = _manifest(content)
    functions = sorted({r.old for r in m.replacements})
    admin = st.admin_project_id
    now = st.clock()
    with st.store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        if tx.by_name("patch", admin, body.name) is not None:
            raise Conflict(f"a patch named {body.name} already exists", name=body.name)
        zone = resolve(tx, "zone", admin, body.zone) if body.zone is not None else None
        named = {resolve(tx, "host", admin, h).name for h in body.hosts}
        _check_overlap(tx, m.build_id, functions)
        chosen = [
            h
            for h in tx.list("host", admin)
            if (zone is None or h.spec.get("zone") == zone.id)
            and (not named or h.name in named)
            and all(h.labels.get(k) == v for k, v in body.labels.items())
        ]
        zones = {z.id: z.name for z in tx.list("zone", admin)}
        targets = rollout.order_targets(
            (h.name, zones.get(str(h.spec.get("zone")), "")) for h in chosen
        )
        spec = {
            "digest": digest,
            "size": len(content),
            "patch_id": m.patch_id,
            "build_id": m.build_id,
            "target": m.target_name,
            "functions": functions,
            "zone": zone.id if zone is not None else None,
            "hosts": sorted(named),
            "labels": dict(body.labels),
            "canary": body.canary,
            "max_parallel": body.max_parallel,
            "health_window": body.health_window,
            "auto_rollback": body.auto_rollback,
        }
        p = tx.create(
            "patch",
            new_id("patch"),
            admin,
            body.name,
            spec,
            rollout.initial_status(targets, body.canary, now),
        )
        tx.write_rows(put_file(digest, content, now))
        return idem.keep(tx, c, 201, p.envelope())


def _check_overlap(r: Reader, build_id: str, functions: list[str]) -> None:
    for other in r.find("patch", "active", "yes"):
        if other.spec["build_id"] != build_id:
            continue
        same = sorted(set(other.spec["functions"]) & set(functions))
        if same:
            raise Conflict(
                f"patch {other.name} ({other.status['phase']}) also replaces "
                f"{', '.join(same)} of build {build_id[:16]} and is still rolling out; "
                f"wait until it is done (a new patch then stacks on it) or roll it back",
                patch=other.name,
                functions=same,
            )


@router.get("/patches", response_model=FleetPatchList, responses=errors(403, 422))
def list_patches(request: Request, c: AdminDep, page: PageDep) -> Any:
    st = state_of(request)
    with st.store.read() as r:
        objs = r.list("patch", st.admin_project_id)
        return paginate(objs, page, r.revision, Resource.envelope)


def _patch(r: Reader, st: AppState, ref: str) -> Resource:
    return resolve(r, "patch", st.admin_project_id, ref)


@router.get("/patches/{ref}", response_model=FleetPatchDetail, responses=errors(403, 404))
def get_patch(ref: str, request: Request, c: AdminDep) -> Any:
    """The patch, with `processes`: what agents reported of each process (at most 1000,
    newest report first; `GET /v1/patches/{ref}/processes` filters by host)."""
    st = state_of(request)
    with st.store.read() as r:
        p = _patch(r, st, ref)
    rows, _more = st.patches.rows(p.id)
    return {**p.envelope(), "processes": [_process(x) for x in rows]}


def _process(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: row[k] for k in ("host", "pid", "start", "comm", "instance", "result", "reason", "at")
    }


@router.get("/patches/{ref}/processes", response_model=PatchProcesses, responses=errors(403, 404))
def get_processes(
    ref: str,
    request: Request,
    c: AdminDep,
    host: Annotated[str | Optional, Query(description="only this host's (name)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS, description="rows at most")] = MAX_ROWS,
) -> Any:
    """What agents reported of each process, newest report first."""
    st = state_of(request)
    with st.store.read() as r:
        p = _patch(r, st, ref)
        if host is not None:
            host = resolve(r, "host", st.admin_project_id, host).name
    rows, more = st.patches.rows(p.id, host, limit)
    return {"items": [_process(x) for x in rows], "more": more}


@router.get(
    "/patches/{ref}/file",
    response_class=Response,
    responses={200: {"content": {OCTETS: {}}, "description": "the .yhp"}, **errors(403, 404)},
)
def get_patch_file(ref: str, request: Request, c: AdminDep) -> Response:
    st = state_of(request)
    with st.store.read() as r:
        p = _patch(r, st, ref)
    return _file_answer(st, p.spec["digest"])


def _file_answer(st: AppState, digest: str) -> Response:
    data = st.patches.file(digest)
    if data is None:
        raise NotFound(f"no patch file {digest}", digest=digest)
    return Response(data, media_type=OCTETS, headers={"X-Yunhan-Digest": digest})


@router.post("/patches/{ref}/pause", response_model=FleetPatch, responses=errors(403, 404, 409))
def pause_patch(ref: str, request: Request, c: AdminDep) -> Any:
    """No new host is asked to apply; hosts applying now finish."""
    st = state_of(request)
    with st.store.transaction() as tx:
        p = _patch(tx, st, ref)
        new = rollout.pause(p.status, p.name)
        events = (
            [] if new == p.status else [(rollout.PHASE_REASONS["paused"], "paused by the operator")]
        )
        tx.add_notices(_notices(p, events, st.clock()))
        return tx.update(p, status=new).envelope()


@router.post("/patches/{ref}/resume", response_model=FleetPatch, responses=errors(403, 404, 409))
def resume_patch(ref: str, request: Request, c: AdminDep) -> Any:
    """Continue a paused rollout (what stopped it is accepted: it does not stop it again)."""
    st = state_of(request)
    with st.store.transaction() as tx:
        p = _patch(tx, st, ref)
        new = rollout.resume(p.status, p.name)
        events = (
            []
            if new == p.status
            else [(rollout.PHASE_REASONS["canary"], "resumed by the operator")]
        )
        tx.add_notices(_notices(p, events, st.clock()))
        return tx.update(p, status=new).envelope()


@router.post("/patches/{ref}/rollback", response_model=FleetPatch, responses=errors(403, 404, 409))
def rollback_patch(ref: str, request: Request, c: AdminDep) -> Any:
    """Every host asked to apply is asked to roll back (phase rolling_back, then
    rolled_back once all have). 409 when the patch is applied nowhere."""
    st = state_of(request)
    now = st.clock()
    with st.store.transaction() as tx:
        p = _patch(tx, st, ref)
        step = rollout.rollback(p.status, p.name, now)
        tx.add_notices(_notices(p, step.events, now))
        return tx.update(p, status=step.status).envelope()


@router.delete("/patches/{ref}", response_model=FleetPatch, responses=errors(403, 404, 409, 412))
def delete_patch(ref: str, request: Request, c: AdminDep, if_match: IfMatch = None) -> Any:
    """Forget a patch that is applied nowhere (rolled back, or it matched no process), with
    its process rows, and its file unless another patch has the same one."""
    st = state_of(request)
    with st.store.transaction() as tx:
        p = _patch(tx, st, ref)
        check_if_match(p, if_match)
        phase = p.status["phase"]
        if phase != "rolled_back" and (
            phase == "rolling_back" or not rollout.applied_nowhere(p.status)
        ):
            where = sorted(h for h, v in p.status["hosts"].items() if v["want"])
            raise Conflict(
                f"patch {p.name} is {phase} and may be applied on host(s) "
                f"{', '.join(where)}: roll it back first (yunhan patch rollback {p.name} --wait)",
                phase=phase,
                hosts=where,
            )
        digest = p.spec["digest"]
        shared = any(
            o.id != p.id and o.spec.get("digest") == digest
            for o in tx.list("patch", st.admin_project_id)
        )
        gone = tx.delete(p)
        tx.write_rows(drop_patch(p.id, None if shared else digest))
        return gone.envelope()


# -- agents --------------------------------------------------------------------------------


@router.get("/agent/hosts/{name}/patches", response_model=AgentPatches, responses=errors(403, 404))
async def agent_patches(
    name: str,
    request: Request,
    _: AgentDep,
    etag: Annotated[
        str | Optional, Query(description="the etag of the list the agent has: wait for another")
    ] = None,
    timeout: Annotated[float, Query(ge=0, description="seconds to wait at most (long poll)")] = 0,
) -> Any:
    """Every patch host `name` is asked to apply or roll back, oldest first: patches of one
    function stack in creation order, and an agent applies them to a process started later
    in the order it is given (by name, a newer patch created under an earlier name would
    end up beneath the one it stacks on).

    A long poll: given the `etag` of the list it has, the call answers when the list
    differs, or after `timeout` seconds (capped like every long poll) with the same list.
    The list is read again only when the store's revision moves.
    """
    st = state_of(request)
    deadline = asyncio.get_running_loop().time() + min(timeout, st.max_long_poll)
    while True:
        body, seen = await asyncio.to_thread(_assignments, st, name)
        left = deadline - asyncio.get_running_loop().time()
        if etag is None or body["etag"] != etag or left <= 0:
            return body
        if await st.store.wait_revision_async(seen, left) is None:
            return body  # timed out, or the server is stopping: the same list


def _assignments(st: AppState, name: str) -> tuple[dict[str, Any], int]:
    with st.store.read() as r:
        if r.by_name("host", st.admin_project_id, name) is None:
            raise NotFound(f"host {name} is not registered; PUT /v1/agent/hosts/{name} first")
        out = []
        patches = r.list("patch", st.admin_project_id)
        # created_at is to the second; started_at (set at create) to the millisecond.
        for p in sorted(patches, key=lambda p: (p.created_at, p.status.get("started_at") or "")):
            want = (p.status["hosts"].get(name) or {}).get("want")
            if want is None:
                continue
            out.append(
                {
                    "id": p.id,
                    "name": p.name,
                    "digest": p.spec["digest"],
                    "patch_id": p.spec["patch_id"],
                    "build_id": p.spec["build_id"],
                    "want": want,
                    "health_window": p.spec["health_window"],
                }
            )
        tag = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:16]
        return {"patches": out, "etag": tag}, r.revision


async def _host_or_admin(request: Request) -> Caller:
    c = await identify(request)
    if c.admin or c.kind == "host":
        return c
    raise Forbidden("patch files are served to hosts' agents (a host token) and the admin")


@router.get(
    "/agent/patches/{digest}",
    response_class=Response,
    responses={200: {"content": {OCTETS: {}}, "description": "the .yhp"}, **errors(403, 404)},
)
def agent_patch_file(
    digest: Digest, request: Request, c: Annotated[Caller, Depends(_host_or_admin)]
) -> Response:
    """The .yhp whose sha256 is `digest` (the agent checks it before use): to a host's
    agent only when a patch with that file asks the host to do something."""
    st = state_of(request)
    if not c.admin:
        with st.store.read() as r:
            asked = any(
                p.spec["digest"] == digest
                and (p.status["hosts"].get(c.host or "") or {}).get("want") is not None
                for p in r.list("patch", st.admin_project_id)
            )
        if not asked:
            raise NotFound(f"no patch file {digest} for host {c.host}", digest=digest)
    return _file_answer(st, digest)


@router.post(
    "/agent/hosts/{name}/patch-reports",
    status_code=204,
    response_class=Response,
    responses=errors(403, 404),
)
async def report_patches(name: str, body: PatchReports, request: Request, _: AgentDep) -> Response:
    """What host `name`'s agent did (docs/fleetpatch.md): per-process rows upserted, the
    host's state and counters written to each patch's status, events recorded. Reports of
    patches that do not target the host are ignored (and counted)."""
    st = state_of(request)
    with st.store.read() as r:
        host = r.by_name("host", st.admin_project_id, name)
        if host is None:
            raise NotFound(f"host {name} is not registered; PUT /v1/agent/hosts/{name} first")
        kept = []
        for rep in body.reports:
            p = r.get("patch", rep.patch)
            if p is None or name not in p.status["hosts"]:
                st.patches.ignored += 1
                continue
            kept.append(rep)
    rows = [
        ProcessRow(
            rep.patch, name, x.pid, x.start, x.comm[:64], x.instance, x.result, x.reason, x.at
        )
        for rep in kept
        for x in rep.processes
    ]
    await asyncio.to_thread(st.patches.report, rows)
    results: dict[str, Counter[str]] = {}
    for rep in kept:
        results[rep.patch] = await asyncio.to_thread(st.patches.results, rep.patch, name)

    def write() -> list[tuple[Resource, list[tuple[str, str]]]]:
        now = st.clock()
        out = []
        with st.store.transaction() as tx:
            for rep in kept:
                p = tx.get("patch", rep.patch)
                if p is None or name not in p.status["hosts"]:
                    continue
                step = rollout.take_report(
                    p.status, name, rep.state, results[rep.patch], now, rep.message
                )
                out.append((tx.update(p, status=step.status), step.events))
        return out

    written = await asyncio.to_thread(write) if kept else []
    for p, events in written:
        for reason, message in events:
            _event(st, f"{p.id}/{host.id}", reason, f"patch {p.name} {message}")
    for rep in kept:
        p = next((q for q, _e in written if q.id == rep.patch), None)
        if p is None:
            continue
        for x in rep.processes:
            if x.result not in _PROCESS_EVENTS:
                continue
            reason, what = _PROCESS_EVENTS[x.result]
            why = f": {x.reason}" if x.reason else ""
            _event(
                st,
                f"{p.id}/{host.id}/{x.pid}",
                reason,
                f"patch {p.name}: process {x.pid} ({x.comm}) on host {name} {what}{why}",
            )
    return Response(status_code=204)
