"""Functions as a resource (docs/functions.md): deploys make immutable versions, traffic
splits between them, usage and its cost.

A deploy is checked whole before anything is written (the archive, its syntax, the
handler, memory against the largest host's limit, timeout, env); then the function's
resource, its version row and its code (by sha256) are written in one transaction. The
router (server side) reads versions and code through `AppState.function_rows` and records
each invocation into `AppState.meter`; this module only serves the resource and the
usage report.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from yunhan.api.auth import Caller
from yunhan.api.conventions import (
    IdempotencyDep,
    IfMatch,
    Optional,
    PageDep,
    check_if_match,
    errors,
    paginate,
    patch_body,
    patched_labels,
)
from yunhan.api.deps import AppState, CallerDep, state_of
from yunhan.api.function_ports import check_port, drop_port, ensure_port
from yunhan.api.models import Function, FunctionList, FunctionVersions, UsageReport
from yunhan.api.views import resolve
from yunhan.errors import Forbidden, ValidationError
from yunhan.functions import catalog
from yunhan.functions.bundle import check_bundle
from yunhan.functions.spec import FunctionSpec, validate
from yunhan.model import new_id, validate_name
from yunhan.model.schemas import FunctionCreate, FunctionPatch, FunctionScaling
from yunhan.store import Reader, Resource, Tx
from yunhan.store.functions import (
    UsageTotal,
    VersionRow,
    drop_function,
    notice,
    put_code,
    put_version,
)

router = APIRouter(prefix="/v1", tags=["functions"])

_SCALING = tuple(catalog.SCALING_DEFAULTS)


def emit(st: AppState, fn: Resource, reason: str, message: str) -> None:
    """An event on function `fn` (`yunhan events --for function/NAME`), written with the
    journal's next batch: for the router and autoscaler, outside any transaction."""
    st.journal.notice(fn.project, fn.id, reason, message)


def host_memory_limit(r: Reader, admin_project: str) -> int:
    """The most memory a function may have: the largest limit a host's function endpoint
    reports (`status.functions.memory_mb`); before any does, this machine's memory."""
    reported = [
        int(h.status["functions"]["memory_mb"])
        for h in r.list("host", admin_project)
        if isinstance(h.status.get("functions"), dict)
        and isinstance(h.status["functions"].get("memory_mb"), int)
    ]
    if reported:
        return max(reported)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def _scaling(spec: dict[str, Any], body: FunctionScaling, name: str) -> dict[str, Any]:
    out = dict(spec)
    for k in _SCALING:
        v = getattr(body, k)
        if v is not None:
            out[k] = v
        out.setdefault(k, catalog.SCALING_DEFAULTS[k])
    if out["min_scale"] > out["max_scale"]:
        raise ValidationError(
            f"function {name}: min_scale {out['min_scale']} is above max_scale {out['max_scale']}",
            field="min_scale",
        )
    return out


def _network(tx: Tx, project: str, body: FunctionCreate, spec: dict[str, Any]) -> dict[str, Any]:
    if body.vpc is None and body.subnet is None:
        return {"vpc": spec.get("vpc"), "subnet": spec.get("subnet")}
    if body.subnet is None:
        raise ValidationError(
            "a function in a VPC runs in one of its subnets: give --subnet with --vpc",
            field="subnet",
        )
    sub = resolve(tx, "subnet", project, body.subnet)
    if body.vpc is not None:
        vpc = resolve(tx, "vpc", project, body.vpc)
        if sub.spec["vpc"] != vpc.id:
            raise ValidationError(
                f"subnet {sub.name} is not in VPC {vpc.name}", field="subnet", subnet=sub.name
            )
    return {"vpc": sub.spec["vpc"], "subnet": sub.id}


def _status(fn_status: dict[str, Any], spec: dict[str, Any], row: VersionRow) -> dict[str, Any]:
    summary = {k: v for k, v in row.to_json().items() if k != "env"}
    versions = [*fn_status.get("versions", []), summary]
    split = catalog.traffic_of(spec, row.version)
    return {
        **fn_status,
        "latest_version": row.version,
        "versions": versions,
        "traffic": {str(k): v for k, v in split.items()},
    }


@router.post(
    "/functions", status_code=201, response_model=Function, responses=errors(404, 409, 422)
)
def deploy_function(
    body: FunctionCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """Deploy: the function with version 1, or (a function of that name exists) its next
    version with this code and config; scaling fields given are updated too. A traffic
    split set earlier is kept (the new version gets no share until a PATCH gives it one);
    without one, the new version takes all the traffic. Refused whole (422, nothing
    written) for a bad archive, a syntax error, a missing handler, memory below 64 MB or
    above the largest host's limit, a timeout outside 1..900 s."""
    st = state_of(request)
    name = validate_name("function", body.name)
    try:
        content = base64.b64decode(body.source.tar_gz, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(
            "source.tar_gz is not base64 (RFC 4648, no line breaks)", field="source"
        ) from exc
    with st.store.read() as r:
        limit = host_memory_limit(r, st.admin_project_id)
    env = dict(body.env)
    validate(
        FunctionSpec(name, 1, body.handler, body.memory_mb, body.timeout_s, env),
        host_memory_mb=limit,
    )
    if body.timeout_s < catalog.MIN_TIMEOUT_S:
        raise ValidationError(
            f"timeout {body.timeout_s} s: must be between {catalog.MIN_TIMEOUT_S:g} and "
            f"{catalog.MAX_TIMEOUT_S:g} s",
            field="timeout",
        )
    check_bundle(content, body.handler)
    if body.subnet is not None:
        with st.store.read() as r:
            subnet = resolve(r, "subnet", c.project.id, body.subnet).id
        check_port(request, subnet)
    sha = hashlib.sha256(content).hexdigest()
    now = st.clock()
    with st.store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        fn = tx.by_name("function", c.project.id, name)
        old_spec: dict[str, Any] = dict(fn.spec) if fn is not None else {"traffic": None}
        spec = _scaling(old_spec, body, name)
        spec.update(_network(tx, c.project.id, body, old_spec))
        version = int(fn.status.get("latest_version", 0)) + 1 if fn is not None else 1
        row = VersionRow(
            fn.id if fn is not None else new_id("function"),
            version,
            sha,
            body.handler,
            body.memory_mb,
            float(body.timeout_s),
            env,
            now,
        )
        labels = body.labels
        if fn is None:
            fn = tx.create(
                "function",
                row.function,
                c.project.id,
                name,
                spec,
                _status({}, spec, row),
                labels=labels or {},
            )
        else:
            fn = tx.update(
                fn,
                spec=spec,
                status=_status(fn.status, spec, row),
                labels=fn.labels if labels is None else labels,
            )
        tx.write_rows(put_code(sha, content, now))
        tx.write_rows(put_version(row))
        tx.add_notices(
            [
                notice(
                    fn,
                    catalog.FUNCTION_DEPLOYED,
                    f"function {name}: version {version} deployed ({body.handler}, "
                    f"{body.memory_mb} MB, {body.timeout_s:g} s, code {sha[:12]})",
                    now,
                )
            ]
        )
        answer = idem.keep(tx, c, 201, fn.envelope())
    ensure_port(request, c, fn)  # a function in a subnet gets its port there
    return answer


@router.get("/functions", response_model=FunctionList, responses=errors(422))
def list_functions(request: Request, c: CallerDep, page: PageDep) -> Any:
    with state_of(request).store.read() as r:
        return paginate(r.list("function", c.project.id), page, r.revision, Resource.envelope)


@router.get("/functions/{ref}", response_model=Function, responses=errors(404))
def get_function(ref: str, request: Request, c: CallerDep) -> Any:
    """The function; `status.workers` is what this server's router runs now, per version
    (live, not stored: it changes with every scaling step)."""
    st = state_of(request)
    with st.store.read() as r:
        env = resolve(r, "function", c.project.id, ref).envelope()
    if st.runner is not None:
        live = st.runner.router.workers()
        env["status"]["workers"] = {str(v): n for (f, v), n in live.items() if f == env["id"]}
    return env


@router.get("/functions/{ref}/versions", response_model=FunctionVersions, responses=errors(404))
def get_versions(ref: str, request: Request, c: CallerDep) -> Any:
    """Every version, oldest first, with the config it was deployed with (env included)."""
    st = state_of(request)
    with st.store.read() as r:
        fn = resolve(r, "function", c.project.id, ref)
    return {"function": fn.id, "items": [v.to_json() for v in st.function_rows.versions(fn.id)]}


@router.patch(
    "/functions/{ref}",
    response_model=Function,
    responses=errors(404, 412, 422),
    openapi_extra=patch_body(FunctionPatch),
)
def patch_function(
    ref: str, body: FunctionPatch, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    """JSON merge patch (RFC 7396): labels, `spec.traffic` (existing versions only,
    summing to 100; null: all to the latest) and the scaling fields."""
    st = state_of(request)
    with st.store.transaction() as tx:
        fn = resolve(tx, "function", c.project.id, ref)
        check_if_match(fn, if_match)
        spec = _scaling(fn.spec, body.spec, fn.name)
        latest = int(fn.status.get("latest_version", 0))
        events = []
        if "traffic" in body.spec.model_fields_set:
            split = body.spec.traffic
            if split is None:
                spec["traffic"] = None
            else:
                have = {int(v["version"]) for v in fn.status.get("versions", [])}
                spec["traffic"] = catalog.check_traffic(split, have, fn.name)
            if spec["traffic"] != fn.spec.get("traffic"):
                shares = catalog.traffic_of(spec, latest)
                events.append(
                    notice(
                        fn,
                        catalog.FUNCTION_TRAFFIC,
                        f"function {fn.name}: traffic "
                        + ", ".join(f"v{v}={p}%" for v, p in shares.items()),
                        st.clock(),
                    )
                )
        status = {
            **fn.status,
            "traffic": {str(k): v for k, v in catalog.traffic_of(spec, latest).items()},
        }
        tx.add_notices(events)
        return tx.update(fn, spec=spec, status=status, labels=patched_labels(fn, body)).envelope()


@router.delete("/functions/{ref}", response_model=Function, responses=errors(404, 412))
def delete_function(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Delete the function, its versions and its code (usage stays: it was used). The
    router drains its workers."""
    st = state_of(request)
    with st.store.transaction() as tx:
        fn = resolve(tx, "function", c.project.id, ref)
        check_if_match(fn, if_match)
        gone = tx.delete(fn)
        tx.write_rows(drop_function(fn.id))
    if st.runner is not None:  # other replicas' routers notice on their next look
        st.runner.drop(fn.id)
    drop_port(request, c, fn)
    return gone.envelope()


# -- usage ---------------------------------------------------------------------------------


def _usage_project(st: AppState, c: Caller, project: str | None) -> str | None:
    if project is None:
        return None if c.admin else c.project.id
    if not c.admin:
        if project not in (c.project.id, c.project.name):
            raise Forbidden(
                f"a project sees its own usage only, not project {project}'s", project=project
            )
        return c.project.id
    with st.store.read() as r:
        return resolve(r, "project", "", project).id


@router.get("/usage", response_model=UsageReport, responses=errors(403, 404, 422))
def get_usage(
    request: Request,
    c: CallerDep,
    project: Annotated[
        str | Optional, Query(description="this project's (name or id); admin only for others")
    ] = None,
    since: Annotated[
        Annotated[float, Field(ge=0, le=2**40)] | Optional,
        Query(description="from this unix time on"),
    ] = None,
    by: Annotated[Literal["function", "day"], Query(description="group by")] = "function",
) -> Any:
    """Requests, GB-seconds and cost of functions, per function or per UTC day, from the
    price table of the server's config; with totals. The admin sees every project (or one
    with `project`); a project its own only."""
    st = state_of(request)
    pid = _usage_project(st, c, project)
    st.meter.flush()  # what this server recorded so far counts
    rows = st.function_rows.usage(pid, since, by)
    with st.store.read() as r:
        names = {p.id: p.name for p in r.list("project", "")}
    return _report(st, rows, by, since, pid, names)


def _report(
    st: AppState,
    rows: list[UsageTotal],
    by: str,
    since: float | None,
    project: str | None,
    names: dict[str, str],
) -> dict[str, Any]:
    p = st.prices
    items = [
        {
            "project": u.project,
            "project_name": names.get(u.project),
            "function": u.function,
            "name": u.key if by == "function" else None,
            "day": u.key if by == "day" else None,
            "requests": u.requests,
            "errors": u.errors,
            "cold_starts": u.cold_starts,
            "billed_ms": u.billed_ms,
            "gb_seconds": u.gb_seconds,
            "cost": p.cost(u.requests, u.gb_ms),
        }
        for u in rows
    ]
    gb_ms = sum(u.gb_ms for u in rows)
    requests = sum(u.requests for u in rows)
    totals = {
        "requests": requests,
        "errors": sum(u.errors for u in rows),
        "cold_starts": sum(u.cold_starts for u in rows),
        "billed_ms": sum(u.billed_ms for u in rows),
        "gb_seconds": gb_ms / 1024 / 1000,
        "cost": p.cost(requests, gb_ms),
    }
    return {
        "by": by,
        "since": since,
        "project": project,
        "currency": p.currency,
        "prices": p.to_json(),
        "items": items,
        "totals": totals,
    }
