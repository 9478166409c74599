"""Flow logs (docs/flowlogs.md): the resources that say what is logged, the records agents
ship, and the queries over them.

A flow log names one target (a VPC, a subnet or an instance) and a filter; it goes away with
its target (the target's delete deletes it, in the same transaction). Records are not
resources: they are written by `POST /v1/agent/hosts/{name}/flows` in one transaction per
batch, outside the model and the change log (`yunhan.store.flows`), so ingest moves no
revision and wakes no watcher.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException

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
from yunhan.api.deps import AgentDep, CallerDep, state_of
from yunhan.api.models import FlowLog, FlowLogList, FlowRecordPage, TopTalkers
from yunhan.api.views import resolve
from yunhan.errors import Conflict, NotFound, ValidationError
from yunhan.model import new_id
from yunhan.model.schemas import MAX_FLOW_RECORDS, FlowBatch, FlowLogCreate
from yunhan.store import Reader, Resource, Store
from yunhan.store.flows import FlowRecord
from yunhan.store.flows import Query as RecordQuery

router = APIRouter(prefix="/v1", tags=["flow logs"])

SCOPES = ("vpc", "subnet", "instance")
DEFAULT_RECORDS = 100
MAX_RECORDS = 10_000
DEFAULT_WINDOW = 300
MAX_WINDOW = 7 * 24 * 3600
MAX_TOP = 1000
# Constraints inside the optional type: on the union, FastAPI would publish them as keys
# JSON Schema does not know ("ge", "le"), and clients would not see them.
UnixTime = Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False)]
# Paths beside /flow-logs/{ref}: no flow log may take these names, and a method the
# concrete path lacks is a 405 there, not a flow log named "records".
_VIEWS = ("records", "top")
_NAME_ROOM = 50  # of a default name's 63 characters, what the target's name may take


def _target(r: Reader, c: Caller, kind: str, ref: str) -> Resource:
    """A VPC, subnet or instance of the caller's project; the admin may also name any
    project's by id (to read another project's records)."""
    try:
        return resolve(r, kind, c.project.id, ref)
    except NotFound:
        if c.admin and (res := r.get(kind, ref)) is not None:
            return res
        raise


def _vpc_of(target: Resource) -> str:
    if target.kind == "vpc":
        return target.id
    if target.kind == "subnet":
        return str(target.spec["vpc"])
    return str(target.status["vpc"])


def _default_name(r: Reader, project: str, target: Resource, filt: str) -> str:
    base = f"{target.name[:_NAME_ROOM].rstrip('-')}-{target.kind}-{filt.lower()}"
    name, n = base, 1
    while r.by_name("flow_log", project, name) is not None:
        n += 1
        name = f"{base}-{n}"
    return name


# -- flow logs ---------------------------------------------------------------------------


@router.post("/flow-logs", status_code=201, response_model=FlowLog, responses=errors(404, 409, 422))
def create_flow_log(
    body: FlowLogCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """Log one target's traffic: exactly one of `vpc`, `subnet`, `instance`."""
    given = [k for k in SCOPES if getattr(body, k) is not None]
    if len(given) != 1:
        raise ValidationError(
            "a flow log logs exactly one target: give one of vpc, subnet and instance"
            + (f" (not {' and '.join(given)})" if given else ""),
            targets=given,
        )
    scope = given[0]
    with state_of(request).store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        target = resolve(tx, scope, c.project.id, getattr(body, scope))
        filt = body.traffic_type
        for other in tx.find("flow_log", "target", target.id):
            if other.spec["filter"] == filt:
                raise Conflict(
                    f"flow log {other.name} already logs {filt} traffic of {scope} {target.name}",
                    flow_log=other.name,
                )
        name = body.name or _default_name(tx, c.project.id, target, filt)
        if name in _VIEWS:
            raise ValidationError(
                f"{name!r} cannot name a flow log (GET /v1/flow-logs/{name} is the {name} "
                "query); choose another name",
                name=name,
            )
        if tx.by_name("flow_log", c.project.id, name) is not None:
            raise Conflict(f"a flow log named {name} already exists", name=name)
        fl = tx.create(
            "flow_log",
            new_id("flow_log"),
            c.project.id,
            name,
            {"vpc": _vpc_of(target), "scope": scope, "target": target.id, "filter": filt},
            {},
            labels=body.labels,
        )
        return idem.keep(tx, c, 201, fl.envelope())


@router.get("/flow-logs", response_model=FlowLogList, responses=errors(404, 422))
def list_flow_logs(
    request: Request,
    c: CallerDep,
    page: PageDep,
    vpc: Annotated[str | Optional, Query(description="only this VPC's (name or id)")] = None,
) -> Any:
    with state_of(request).store.read() as r:
        if vpc is not None:
            objs = r.find("flow_log", "vpc", resolve(r, "vpc", c.project.id, vpc).id)
        else:
            objs = r.list("flow_log", c.project.id)
        return paginate(objs, page, r.revision, Resource.envelope)


# Declared before /flow-logs/{ref}: "records" and "top" are not flow log names.


@router.get("/flow-logs/records", response_model=FlowRecordPage, responses=errors(404))
def query_records(
    request: Request,
    c: CallerDep,
    vpc: Annotated[str | Optional, Query(description="only this VPC's (name or id)")] = None,
    subnet: Annotated[str | Optional, Query(description="only this subnet's (name or id)")] = None,
    instance: Annotated[
        str | Optional, Query(description="only this instance's (name or id)")
    ] = None,
    action: Annotated[
        Literal["ACCEPT", "REJECT"] | Optional, Query(description="only accepted or rejected")
    ] = None,
    since: Annotated[
        UnixTime | Optional, Query(description="only records that started at or after (unix s)")
    ] = None,
    until: Annotated[
        UnixTime | Optional, Query(description="only records that started before (unix s)")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_RECORDS, description=f"records at most (max {MAX_RECORDS})")
    ] = DEFAULT_RECORDS,
) -> Any:
    """Stored records of the caller's project (the admin's: every project's), newest first."""
    st = state_of(request)
    q = _record_query(st.store, c, vpc, subnet, instance)
    items, more = st.flows.query(
        RecordQuery(**{**q, "action": action, "since": since, "until": until}), limit
    )
    return {"items": items, "more": more}


def _record_query(
    store: Store, c: Caller, vpc: str | None, subnet: str | None, instance: str | None
) -> dict[str, Any]:
    with store.read() as r:
        return {
            "projects": None if c.admin else (c.project.id,),
            "vpc": _target(r, c, "vpc", vpc).id if vpc is not None else None,
            "subnet": _target(r, c, "subnet", subnet).id if subnet is not None else None,
            "instance": _target(r, c, "instance", instance).id if instance is not None else None,
        }


@router.get("/flow-logs/top", response_model=TopTalkers, responses=errors(404))
def top_talkers(
    request: Request,
    c: CallerDep,
    vpc: Annotated[str, Query(description="the VPC (name or id)")],
    window: Annotated[
        int, Query(ge=1, le=MAX_WINDOW, description="seconds back from now")
    ] = DEFAULT_WINDOW,
    by: Annotated[
        Literal["pair", "instance", "port"],
        Query(description="pair: (src, dst); instance; port: (protocol, dstport)"),
    ] = "pair",
    limit: Annotated[int, Query(ge=1, le=MAX_TOP, description="rows at most")] = 10,
) -> Any:
    """Top talkers of a VPC by bytes over the last `window` seconds (records by start)."""
    st = state_of(request)
    q = _record_query(st.store, c, vpc, None, None)
    now = st.clock()
    since = now - window
    items = st.flows.top(RecordQuery(**{**q, "since": since}), by, limit)
    return {"vpc": q["vpc"], "by": by, "since": since, "until": now, "items": items}


@router.get("/flow-logs/{ref}", response_model=FlowLog, responses=errors(404))
def get_flow_log(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return resolve(r, "flow_log", c.project.id, ref).envelope()


@router.delete("/flow-logs/{ref}", response_model=FlowLog, responses=errors(404, 412))
def delete_flow_log(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Stop logging (records already stored stay until retention prunes them)."""
    if ref in _VIEWS:
        raise StarletteHTTPException(405)
    with state_of(request).store.transaction() as tx:
        fl = resolve(tx, "flow_log", c.project.id, ref)
        check_if_match(fl, if_match)
        gone = tx.delete(fl)
    return gone.envelope()


# -- ingest ------------------------------------------------------------------------------


@router.post(
    "/agent/hosts/{name}/flows",
    status_code=204,
    response_class=Response,
    responses=errors(403, 404, 422),
)
async def ingest_flows(name: str, body: FlowBatch, request: Request, _: AgentDep) -> Response:
    """A batch of records from host `name`'s agent (docs/flowlogs.md). Only records of
    instances on that host now are kept; the others are discarded and counted."""
    st = state_of(request)
    if len(body.records) > MAX_FLOW_RECORDS:
        raise ValidationError(
            f"{len(body.records)} records in one request; at most {MAX_FLOW_RECORDS}: "
            "send them in several",
            records=len(body.records),
        )
    for i, rec in enumerate(body.records):
        for field in ("srcaddr", "dstaddr"):
            try:
                ipaddress.ip_address(getattr(rec, field))
            except ValueError:
                raise ValidationError(
                    f"records[{i}].{field}: {getattr(rec, field)!r} is not an IP address",
                    field=field,
                ) from None
        if rec.end < rec.start:
            raise ValidationError(f"records[{i}]: end is before start", field="end")
    now = st.clock()
    rows: list[FlowRecord] = []
    discarded = 0
    skipped = 0
    with st.store.read() as r:
        if r.by_name("host", st.admin_project_id, name) is None:
            raise NotFound(f"host {name} is not registered; PUT /v1/agent/hosts/{name} first")
        local: dict[str, Resource | None] = {}

        def here(iid: str) -> Resource | None:
            if iid not in local:
                inst = r.get("instance", iid)
                ok = inst is not None and inst.status.get("host") == name
                local[iid] = inst if ok and inst is not None and inst.status.get("vpc") else None
            return local[iid]

        for rec in body.records:
            inst = here(rec.instance)
            if inst is None:
                discarded += 1
                continue
            rows.append(
                FlowRecord(
                    project=inst.project,
                    vpc=inst.status["vpc"],
                    subnet=inst.spec["subnet"],
                    instance=inst.id,
                    interface=rec.interface,
                    host=name,
                    flow_direction=rec.flow_direction,
                    srcaddr=rec.srcaddr,
                    dstaddr=rec.dstaddr,
                    srcport=rec.srcport,
                    dstport=rec.dstport,
                    protocol=rec.protocol,
                    packets=rec.packets,
                    bytes=rec.bytes,
                    start=rec.start,
                    end=rec.end,
                    action=rec.action,
                    log_status="OK",
                    received_at=now,
                )
            )
        for iid, count in body.skipped.items():
            inst = here(iid)
            if inst is None:
                discarded += count  # records it lost of an instance not its own
                continue
            if count == 0:
                continue
            skipped += count
            rows.append(
                FlowRecord(
                    project=inst.project,
                    vpc=inst.status["vpc"],
                    subnet=inst.spec["subnet"],
                    instance=inst.id,
                    interface=None,
                    host=name,
                    flow_direction=None,
                    srcaddr=None,
                    dstaddr=None,
                    srcport=None,
                    dstport=None,
                    protocol=None,
                    packets=count,
                    bytes=0,
                    start=now,
                    end=now,
                    action=None,
                    log_status="SKIPDATA",
                    received_at=now,
                )
            )
    await asyncio.to_thread(st.flows.add, rows)
    st.flows.received += len(body.records)
    st.flows.discarded += discarded
    st.flows.skipped += skipped
    return Response(status_code=204)
