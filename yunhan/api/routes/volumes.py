"""Volumes: block devices of a zone, attached to one instance at a time, optionally
protected by a journal of every write that can restore them to a past second
(docs/volumes.md). Every check runs before anything is written; the API writes the
transitional phase (creating, attaching, detaching, restoring) and the agent of the
volume's host settles it by its reports (`controller.volumes.settle`)."""

from __future__ import annotations

import posixpath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

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
from yunhan.api.models import Volume, VolumeList, VolumeTimeline
from yunhan.api.views import resolve
from yunhan.controller.scheduler import host_healthy
from yunhan.controller.volumes import (
    VOLUME_ATTACHED,
    VOLUME_CLONED,
    VOLUME_CREATED,
    VOLUME_DELETING,
    VOLUME_DETACHED,
    VOLUME_PROTECTED,
    VOLUME_RESIZED,
    VOLUME_RESTORED,
    VOLUME_UNPROTECTED,
    choose_home,
    free_on,
)
from yunhan.errors import Conflict, ValidationError
from yunhan.model import new_id, validate_name
from yunhan.model.schemas import (
    Tiers,
    TimeIn,
    VolumeAttachIn,
    VolumeClone,
    VolumeCreate,
    VolumePatch,
    VolumeProtect,
    VolumeRestore,
)
from yunhan.model.volumes import (
    NS,
    check_size,
    format_size,
    format_tiers,
    iso_ns,
    parse_tiers,
    parse_time_ns,
    restorable,
    tiers_json,
)
from yunhan.store import Resource, Tx

router = APIRouter(prefix="/v1", tags=["volumes"])


def _tiers(value: Tiers | None) -> list[dict[str, int]] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tiers_json(parse_tiers(value))
    return tiers_json(parse_tiers([t.model_dump() for t in value]))


def _initial_status(host: str) -> dict[str, Any]:
    return {"phase": "creating", "home": host, "host": host, "restored_serial": 0}


def _volume(tx: Tx, project: str, ref: str) -> Resource:
    """The volume `ref`, refused while it is being deleted (its data is going)."""
    vol = resolve(tx, "volume", project, ref)
    if vol.spec.get("deleting"):
        raise Conflict(f"volume {vol.name} is being deleted", volume=vol.name)
    return vol


def _notice(st: AppState, vol: Resource, reason: str, message: str) -> None:
    st.journal.notice(vol.project, vol.id, reason, message)


@router.post("/volumes", status_code=201, response_model=Volume, responses=errors(404, 409, 422))
def create_volume(body: VolumeCreate, request: Request, c: CallerDep, idem: IdempotencyDep) -> Any:
    """A volume of `size` bytes (whole GiB) in `zone`, kept on the zone's live host with
    the most free volume space; protected by `tiers` when given."""
    st = state_of(request)
    name = validate_name("volume", body.name)
    size = check_size(body.size)
    tiers = _tiers(body.tiers)
    with st.store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        zone = resolve(tx, "zone", st.admin_project_id, body.zone)
        if tx.by_name("volume", c.project.id, name) is not None:
            raise Conflict(f"a volume named {name} already exists", name=name)
        home = choose_home(tx, zone, size, st.fleet.leases, st.clock())
        spec = {
            "size": size,
            "zone": zone.id,
            "tiers": tiers,
            "attachment": None,
            "restore": None,
            "source": None,
        }
        vol = tx.create(
            "volume", new_id("volume"), c.project.id, name, spec, _initial_status(home),
            labels=body.labels,
        )  # fmt: skip
        answer = idem.keep(tx, c, 201, vol.envelope())
    _notice(
        st, vol, VOLUME_CREATED,
        f"volume {name} ({format_size(size)}, {format_tiers(tiers)}) created in zone "
        f"{zone.name} on host {home}",
    )  # fmt: skip
    return answer


@router.get("/volumes", response_model=VolumeList, responses=errors(404, 422))
def list_volumes(
    request: Request,
    c: CallerDep,
    page: PageDep,
    zone: Annotated[str | Optional, Query(description="only this zone's (name or id)")] = None,
    instance: Annotated[
        str | Optional, Query(description="only the one attached to it (name or id)")
    ] = None,
) -> Any:
    st = state_of(request)
    with st.store.read() as r:
        if instance is not None:
            objs = r.find("volume", "instance", resolve(r, "instance", c.project.id, instance).id)
        elif zone is not None:
            objs = r.find("volume", "zone", resolve(r, "zone", st.admin_project_id, zone).id)
        else:
            objs = r.list("volume", c.project.id)
        zid = resolve(r, "zone", st.admin_project_id, zone).id if zone is not None else None
        return paginate(
            objs,
            page,
            r.revision,
            Resource.envelope,
            lambda o: o.project == c.project.id and (zid is None or o.spec["zone"] == zid),
        )


@router.get("/volumes/{ref}", response_model=Volume, responses=errors(404))
def get_volume(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return resolve(r, "volume", c.project.id, ref).envelope()


@router.patch(
    "/volumes/{ref}",
    response_model=Volume,
    responses=errors(404, 409, 412, 422),
    openapi_extra=patch_body(VolumePatch),
)
def patch_volume(
    ref: str, body: VolumePatch, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    """JSON merge patch: labels, and `spec.size` (grow only, detached, within its home
    host's free volume space)."""
    st = state_of(request)
    with st.store.transaction() as tx:
        vol = _volume(tx, c.project.id, ref)
        check_if_match(vol, if_match)
        spec = vol.spec
        old = int(vol.spec["size"])
        size = body.spec.size
        if size is not None and size != old:
            check_size(size)
            if size < old:
                raise ValidationError(
                    f"volume {vol.name} is {format_size(old)}: a volume only grows, and "
                    f"{format_size(size)} is smaller",
                    field="size",
                    value=size,
                )
            if vol.spec.get("attachment"):
                raise Conflict(
                    f"volume {vol.name} is attached; detach it first, then resize it",
                    volume=vol.name,
                )
            zone = tx.get("zone", vol.spec["zone"])
            assert zone is not None
            choose_home(
                tx, zone, size - old, st.fleet.leases, st.clock(), grow_on=vol.status["home"]
            )
            spec = {**vol.spec, "size": size}
        elif size is not None:
            raise ValidationError(
                f"volume {vol.name} is {format_size(old)} already: a resize must grow it",
                field="size",
                value=size,
            )
        new = tx.update(vol, spec=spec, labels=patched_labels(vol, body))
    if spec is not vol.spec:
        _notice(
            st, vol, VOLUME_RESIZED,
            f"volume {vol.name} grew from {format_size(old)} to {format_size(spec['size'])}",
        )  # fmt: skip
    return new.envelope()


@router.delete("/volumes/{ref}", response_model=Volume, responses=errors(404, 409, 412))
def delete_volume(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Delete a detached volume and its data (its journal, its restore points): phase
    `deleting` until its host has removed the data, then gone."""
    st = state_of(request)
    with st.store.transaction() as tx:
        vol = resolve(tx, "volume", c.project.id, ref)
        check_if_match(vol, if_match)
        att = vol.spec.get("attachment")
        if att:
            inst = tx.get("instance", att["instance"])
            raise Conflict(
                f"volume {vol.name} is attached to instance "
                f"{inst.name if inst else att['instance']}; detach it first",
                volume=vol.name,
            )
        if vol.spec.get("deleting"):
            return vol.envelope()  # asked again: it is on its way
        # Its host removes its data first (the document says `delete`), then its report
        # ends the resource (routes/agent.py): a volume never vanishes with its data left.
        vol = tx.update(
            vol,
            spec={**vol.spec, "deleting": True},
            status={**vol.status, "phase": "deleting"},
        )
    _notice(st, vol, VOLUME_DELETING, f"volume {vol.name} is being deleted")
    return vol.envelope()


def _check_path(path: str) -> str:
    norm = posixpath.normpath(path) if path.startswith("/") else ""
    if not norm or norm == "/" or norm != path or "\x00" in path:
        raise ValidationError(
            f"mount path {path!r} is invalid: give an absolute, normal path other than /, "
            "like /data",
            field="path",
            value=path,
        )
    return path


@router.post("/volumes/{ref}/attach", response_model=Volume, responses=errors(404, 409, 422))
def attach_volume(ref: str, body: VolumeAttachIn, request: Request, c: CallerDep) -> Any:
    """Attach the volume to an instance of its zone, mounted at `path` inside it. Its
    host becomes the instance's host."""
    st = state_of(request)
    path = _check_path(body.path)
    with st.store.transaction() as tx:
        vol = _volume(tx, c.project.id, ref)
        inst = resolve(tx, "instance", c.project.id, body.instance)
        att = vol.spec.get("attachment")
        if att:
            holder = tx.get("instance", att["instance"])
            raise Conflict(
                f"volume {vol.name} is already attached to instance "
                f"{holder.name if holder else att['instance']}; detach it first",
                volume=vol.name,
            )
        if vol.spec["zone"] != inst.spec.get("zone"):
            vz, iz = tx.get("zone", vol.spec["zone"]), tx.get("zone", inst.spec.get("zone", ""))
            raise ValidationError(
                f"volume {vol.name} is in zone {vz.name if vz else vol.spec['zone']}, instance "
                f"{inst.name} in {iz.name if iz else inst.spec.get('zone')}: a volume attaches "
                "only to instances of its own zone",
                volume=vol.name,
                instance=inst.name,
            )
        for other in tx.find("volume", "instance", inst.id):
            if other.spec["attachment"]["path"] == path:
                raise Conflict(
                    f"instance {inst.name} already has volume {other.name} at {path}; "
                    "choose another --path",
                    path=path,
                )
        if vol.status.get("phase") == "restoring":
            raise Conflict(
                f"volume {vol.name} is being restored; attach it once it is available",
                volume=vol.name,
            )
        host = inst.status.get("host")
        if not host:
            raise Conflict(
                f"instance {inst.name} is not placed on a host yet; attach once it is",
                instance=inst.name,
            )
        new = tx.update(
            vol,
            spec={**vol.spec, "attachment": {"instance": inst.id, "path": path}},
            status={**vol.status, "host": host, "phase": "attaching"},
        )
    _notice(
        st, vol, VOLUME_ATTACHED,
        f"volume {vol.name} attached to instance {inst.name} at {path} (host {host})",
    )  # fmt: skip
    return new.envelope()


@router.post("/volumes/{ref}/detach", response_model=Volume, responses=errors(404, 409))
def detach_volume(ref: str, request: Request, c: CallerDep) -> Any:
    """Flush, unmount and detach: the volume goes back to its home host."""
    st = state_of(request)
    with st.store.transaction() as tx:
        vol = _volume(tx, c.project.id, ref)
        att = vol.spec.get("attachment")
        if not att:
            raise Conflict(f"volume {vol.name} is not attached", volume=vol.name)
        new = tx.update(
            vol,
            spec={**vol.spec, "attachment": None},
            status={**vol.status, "host": vol.status.get("home"), "phase": "detaching"},
        )
        inst = tx.get("instance", att["instance"])
    _notice(
        st, vol, VOLUME_DETACHED,
        f"volume {vol.name} detached from instance {inst.name if inst else att['instance']}",
    )  # fmt: skip
    return new.envelope()


@router.post("/volumes/{ref}/protect", response_model=Volume, responses=errors(404, 422))
def protect_volume(ref: str, body: VolumeProtect, request: Request, c: CallerDep) -> Any:
    """Journal every write, keeping restore points by `tiers` (default 12h:1s,24h:1h,3d:1d).
    New tiers on a protected volume replace the old ones."""
    st = state_of(request)
    tiers = _tiers(body.tiers)
    with st.store.transaction() as tx:
        vol = _volume(tx, c.project.id, ref)
        if vol.spec.get("tiers") == tiers:
            return vol.envelope()
        new = tx.update(vol, spec={**vol.spec, "tiers": tiers})
    _notice(st, vol, VOLUME_PROTECTED, f"volume {vol.name} protected ({format_tiers(tiers)})")
    return new.envelope()


@router.post("/volumes/{ref}/unprotect", response_model=Volume, responses=errors(404))
def unprotect_volume(ref: str, request: Request, c: CallerDep) -> Any:
    """Stop journaling; the restore points kept so far are dropped."""
    st = state_of(request)
    with st.store.transaction() as tx:
        vol = _volume(tx, c.project.id, ref)
        if vol.spec.get("tiers") is None:
            return vol.envelope()
        new = tx.update(vol, spec={**vol.spec, "tiers": None})
    _notice(st, vol, VOLUME_UNPROTECTED, f"volume {vol.name} is no longer protected")
    return new.envelope()


@router.get("/volumes/{ref}/timeline", response_model=VolumeTimeline, responses=errors(404))
def volume_timeline(ref: str, request: Request, c: CallerDep) -> Any:
    """What the volume can be restored to: as its agent last reported it, up to now while
    its host is live (`live_timeline`)."""
    st = state_of(request)
    with st.store.read() as r:
        vol = resolve(r, "volume", c.project.id, ref)
    ranges = sorted(live_timeline(st, vol, st.clock()), key=lambda x: x["from_ns"])
    return {
        "tiers": vol.spec.get("tiers"),
        "points": [
            {"from": iso_ns(x["from_ns"]), "to": iso_ns(x["to_ns"]), "every_s": x["every_s"]}
            for x in ranges
        ],
        "oldest": iso_ns(ranges[0]["from_ns"]) if ranges else None,
        "newest": iso_ns(max(x["to_ns"] for x in ranges)) if ranges else None,
        "journal_bytes": int(vol.status.get("journal_bytes") or 0),
        "base_bytes": int(vol.status.get("base_bytes") or 0),
    }


def live_timeline(st: AppState, vol: Resource, now: float) -> list[dict[str, int]]:
    """The reported timeline, its finest range reaching up to now while the volume's host
    is heartbeating and the volume is sound: its journal then holds every write
    acknowledged up to now (a write is journaled before it is acknowledged), so any instant
    since its last report is a restore point too; reports are refreshed only every few
    seconds."""
    ranges = sorted(vol.status.get("timeline") or (), key=lambda x: x["to_ns"])
    if not ranges or vol.spec.get("tiers") is None or vol.status.get("phase") == "error":
        return ranges
    host = vol.status.get("host")
    if host is None or not host_healthy(st.fleet.leases.get(host), now):
        return ranges
    last = ranges[-1]
    return [*ranges[:-1], {**last, "to_ns": max(int(last["to_ns"]), round(now * NS))}]


def _restore_point(st: AppState, vol: Resource, value: TimeIn, now: float) -> int:
    """The time asked for, in ns, checked against the volume's timeline."""
    t = parse_time_ns(value)
    if t > round(now * NS):
        raise ValidationError(
            f"time {iso_ns(t)} is in the future (now is {iso_ns(round(now * NS))})",
            field="time",
        )
    if vol.spec.get("tiers") is None:
        raise ValidationError(
            f"volume {vol.name} is not protected: it has no restore points "
            f"(yunhan volume protect {vol.name})",
            volume=vol.name,
        )
    timeline = live_timeline(st, vol, now)
    if not timeline:
        raise ValidationError(
            f"volume {vol.name} has no restore points reported yet; try again shortly",
            volume=vol.name,
        )
    oldest = min(x["from_ns"] for x in timeline)
    newest = max(x["to_ns"] for x in timeline)
    if t < oldest:
        raise ValidationError(
            f"time {iso_ns(t)} is before the oldest restore point of volume {vol.name}, "
            f"{iso_ns(oldest)}",
            field="time",
        )
    if t > newest:
        raise ValidationError(
            f"time {iso_ns(t)} is after the newest restore point reported for volume "
            f"{vol.name}, {iso_ns(newest)}; try again in a few seconds",
            field="time",
        )
    if not restorable(timeline, t):
        raise ValidationError(
            f"time {iso_ns(t)} is not a restore point of volume {vol.name}: older journal "
            f"is kept only at coarser intervals (yunhan volume timeline {vol.name})",
            field="time",
        )
    return t


@router.post("/volumes/{ref}/restore", response_model=Volume, responses=errors(404, 409, 422))
def restore_volume(ref: str, body: VolumeRestore, request: Request, c: CallerDep) -> Any:
    """Restore the detached volume in place to `to`: exactly the writes acknowledged
    before it. Readable at once; the old data is copied in the background."""
    st = state_of(request)
    with st.store.transaction() as tx:
        vol = _volume(tx, c.project.id, ref)
        if vol.spec.get("attachment"):
            raise Conflict(
                f"volume {vol.name} is attached; detach it first, then restore it",
                volume=vol.name,
            )
        t = _restore_point(st, vol, body.to, st.clock())
        serial = int((vol.spec.get("restore") or {}).get("serial", 0)) + 1
        new = tx.update(
            vol,
            spec={**vol.spec, "restore": {"to_ns": t, "serial": serial}},
            status={**vol.status, "phase": "restoring"},
        )
    _notice(st, vol, VOLUME_RESTORED, f"volume {vol.name} restored to {iso_ns(t)}")
    return new.envelope()


@router.post(
    "/volumes/{ref}/clone", status_code=201, response_model=Volume, responses=errors(404, 409, 422)
)
def clone_volume(
    ref: str, body: VolumeClone, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    """A new volume as `ref` was at `at`, on the source's current host, readable at once
    (it reads the source's journal until its own copy is done)."""
    st = state_of(request)
    name = validate_name("volume", body.name)
    with st.store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        src = _volume(tx, c.project.id, ref)
        if tx.by_name("volume", c.project.id, name) is not None:
            raise Conflict(f"a volume named {name} already exists", name=name)
        t = _restore_point(st, src, body.at, st.clock())
        host_name = src.status.get("host") or src.status["home"]
        host = tx.by_name("host", st.admin_project_id, host_name)
        if host is None or not host_healthy(st.fleet.leases.get(host_name), st.clock()):
            raise Conflict(
                f"host {host_name}, where volume {src.name} is, is not heartbeating; "
                "clone it once it is back",
                host=host_name,
            )
        size = int(src.spec["size"])
        if free_on(tx, host) < size:
            raise ValidationError(
                f"host {host_name}, where volume {src.name} is, has "
                f"{format_size(max(free_on(tx, host), 0))} of volume space free, less than "
                f"its {format_size(size)}",
                field="size",
            )
        spec = {
            "size": size,
            "zone": src.spec["zone"],
            "tiers": src.spec.get("tiers"),
            "attachment": None,
            "restore": None,
            "source": {"volume": src.id, "at_ns": t},
        }
        vol = tx.create(
            "volume", new_id("volume"), c.project.id, name, spec, _initial_status(host_name),
            labels=body.labels,
        )  # fmt: skip
        answer = idem.keep(tx, c, 201, vol.envelope())
    _notice(st, vol, VOLUME_CLONED, f"volume {name} cloned from {src.name} at {iso_ns(t)}")
    return answer
