"""Instances: address, MAC and host are chosen inside the create transaction."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

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
from yunhan.api.models import Instance, InstanceList
from yunhan.api.routes.network import refresh_available
from yunhan.api.routes.secgroups import groups_for
from yunhan.api.views import resolve
from yunhan.controller.ipam import allocate_ip, allocate_mac
from yunhan.controller.placement import choose
from yunhan.controller.scheduler import NoHost, host_healthy
from yunhan.controller.tables import release_public
from yunhan.controller.vips import follow_instance, iso, release_instance, unhold_instance
from yunhan.controller.volumes import VOLUME_DETACHED, detach_all
from yunhan.errors import Conflict
from yunhan.model import new_id, validate_name
from yunhan.model.schemas import InstanceCreate, InstanceMigrate, LabelsPatch
from yunhan.store import Reader, Resource

router = APIRouter(prefix="/v1", tags=["instances"])


@router.post(
    "/instances", status_code=201, response_model=Instance, responses=errors(404, 409, 422)
)
def create_instance(
    body: InstanceCreate, request: Request, c: CallerDep, idem: IdempotencyDep
) -> Any:
    st = state_of(request)
    name = validate_name("instance", body.name)
    hinted: list[tuple[str, str]] = []  # (subnet, address) the IPAM hint moved past
    try:
        return _create(st, body, name, c, hinted, idem)
    except BaseException:
        for sub_id, ip in hinted:  # its batch failed to commit: not taken after all
            st.ipam.freed(sub_id, ip)
        raise


def _create(
    st: AppState,
    body: InstanceCreate,
    name: str,
    c: Caller,
    hinted: list[tuple[str, str]],
    idem: IdempotencyDep,
) -> Any:
    with st.store.transaction() as tx:
        if (replay := idem.replay(tx, c)) is not None:
            return replay
        sub = resolve(tx, "subnet", c.project.id, body.subnet)
        zone = resolve(tx, "zone", st.admin_project_id, body.zone)
        # The one placement decision (`placement.choose`), taken in the create transaction:
        # the instance is written once, with its host; a zone without hosts refuses it.
        host = choose(tx, zone.id, st.fleet.leases, st.clock(), st.loads)
        ip = allocate_ip(
            sub.name, sub.spec["cidr"], AddressesInUse(tx, sub.id), body.ip, st.ipam.start(sub.id)
        )
        mac = allocate_mac(_MacsInUse(tx))
        vpc = tx.get("vpc", sub.spec["vpc"])
        assert vpc is not None
        groups = groups_for(tx, c.project.id, vpc, body.security_groups)
        inst = tx.create(
            "instance",
            new_id("instance"),
            c.project.id,
            name,
            {
                "subnet": sub.id,
                "zone": zone.id,
                "ip": body.ip,
                "command": body.command,
                "security_groups": groups,
            },
            {
                "ip": ip,
                "mac": mac,
                "vpc": sub.spec["vpc"],
                "host": host,
                "phase": "scheduled",
                "message": None,
                "netns": None,
                "uts": None,
                "migrations": [],
            },
            labels=body.labels,
        )
        refresh_available(tx, sub)
        if body.ip is None:  # the lowest free one was taken; a fixed one says nothing of it
            st.ipam.taken(sub.id, ip)
            hinted.append((sub.id, ip))
        return idem.keep(tx, c, 201, inst.envelope())


class AddressesInUse(Mapping[str, str]):
    """A subnet's addresses in use (address -> instance name, or "VIP <name>"), through the
    store's indexes: instances and VIPs share a subnet's addresses, never one address."""

    def __init__(self, r: Reader, subnet_id: str) -> None:
        self._r = r
        self._subnet = subnet_id

    def __getitem__(self, ip: str) -> str:
        found = self._r.find("instance", "addr", f"{self._subnet}|{ip}")
        if found:
            return found[0].name
        vips = self._r.find("vip", "addr", f"{self._subnet}|{ip}")
        if vips:
            return f"VIP {vips[0].name}"
        raise KeyError(ip)

    def __iter__(self) -> Iterator[str]:
        yield from (i.status["ip"] for i in self._r.find("instance", "subnet", self._subnet))
        yield from (v.spec["ip"] for v in self._r.find("vip", "subnet", self._subnet))

    def __len__(self) -> int:
        return self._r.count_of("instance", "subnet", self._subnet) + self._r.count_of(
            "vip", "subnet", self._subnet
        )


class _MacsInUse:
    """`mac in used` through the store's MAC index (no walk over every instance)."""

    def __init__(self, r: Reader) -> None:
        self._r = r

    def __contains__(self, mac: object) -> bool:
        return isinstance(mac, str) and self._r.count_of("instance", "mac", mac) > 0


MIGRATIONS = 10  # moves kept in status.migrations
INSTANCE_MIGRATED = "InstanceMigrated"


@router.post(
    "/instances/{ref}/migrate", response_model=Instance, responses=errors(404, 409, 412, 422)
)
def migrate_instance(
    ref: str, body: InstanceMigrate, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    """Move the instance to a host of `zone` (another zone, or another host of its own),
    keeping its id, name, address, MAC, labels, groups and VIP permissions; a VIP it holds
    goes with it. The old host stops it and the new one starts it (its command again): a
    cold move, its processes and connections do not survive it (docs/instances.md)."""
    st = state_of(request)
    with st.store.transaction() as tx:
        inst = resolve(tx, "instance", c.project.id, ref)
        check_if_match(inst, if_match)
        zone = resolve(tx, "zone", st.admin_project_id, body.zone)
        attached = sorted(v.name for v in tx.find("volume", "instance", inst.id))
        if attached:
            raise Conflict(
                f"instance {inst.name} has volume(s) {', '.join(attached)} attached; detach "
                "them first (a volume stays in its zone and host while attached)",
                volumes=attached,
            )
        old_host = inst.status.get("host")
        now = st.clock()
        if body.host is not None:
            host = resolve(tx, "host", st.admin_project_id, body.host)
            if host.spec.get("zone") != zone.id:
                raise Conflict(
                    f"host {host.name} is not in zone {zone.name}", host=host.name, zone=zone.name
                )
            if host.name == old_host:
                raise Conflict(
                    f"instance {inst.name} already runs on host {host.name}", host=host.name
                )
            if not host_healthy(st.fleet.leases.get(host.name), now):
                raise Conflict(
                    f"host {host.name} is not heartbeating; choose another host of zone "
                    f"{zone.name}, or none to let the scheduler choose",
                    host=host.name,
                )
            new_host = host.name
        else:
            try:
                new_host = choose(tx, zone.id, st.fleet.leases, now, st.loads, exclude=old_host)
            except NoHost as exc:
                raise Conflict(
                    f"zone {zone.name} has no host other than {old_host} to move instance "
                    f"{inst.name} to"
                    if old_host and _zone_has_hosts(tx, zone.id)
                    else exc.message,
                    zone=zone.name,
                ) from exc
        old_zone = tx.get("zone", inst.spec["zone"])
        move = {
            "at": iso(now),
            "from_host": old_host,
            "to_host": new_host,
            "from_zone": old_zone.name if old_zone is not None else inst.spec["zone"],
            "to_zone": zone.name,
        }
        status = {
            **inst.status,
            "host": new_host,
            "phase": "scheduled",
            "message": f"migrating from host {old_host or 'none'}",
            "netns": None,
            "uts": None,
            "migrations": [*inst.status.get("migrations", ()), move][-MIGRATIONS:],
        }
        moved = tx.update(inst, spec={**inst.spec, "zone": zone.id}, status=status)
        follow_instance(tx, moved)
    st.journal.notice(
        c.project.id,
        inst.id,
        INSTANCE_MIGRATED,
        f"instance {inst.name} migrated from host {old_host or 'none'} ({move['from_zone']}) "
        f"to host {new_host} ({zone.name})",
    )
    return moved.envelope()


INSTANCE_STOPPED = "InstanceStopped"
INSTANCE_STARTED = "InstanceStarted"


@router.post("/instances/{ref}/stop", response_model=Instance, responses=errors(404, 409, 412))
def stop_instance(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Stop the instance: its host ends its processes and removes its namespace, and it
    runs nowhere until started. It keeps its id, name, zone, address, MAC, groups, labels
    and VIP permissions (a VIP it holds is left for another allowed instance to claim).
    Refused while volumes are attached (they are mounted in it). Stopping a stopped
    instance changes nothing."""
    st = state_of(request)
    with st.store.transaction() as tx:
        inst = resolve(tx, "instance", c.project.id, ref)
        check_if_match(inst, if_match)
        if inst.status.get("phase") == "stopped":
            return inst.envelope()
        attached = sorted(v.name for v in tx.find("volume", "instance", inst.id))
        if attached:
            raise Conflict(
                f"instance {inst.name} has volume(s) {', '.join(attached)} attached; detach "
                "them first",
                volumes=attached,
            )
        old_host = inst.status.get("host")
        status = {
            **inst.status,
            "host": None,
            "phase": "stopped",
            "message": f"stopped (was on host {old_host or 'none'})",
            "netns": None,
            "uts": None,
        }
        stopped = tx.update(inst, status=status)
        unhold_instance(tx, stopped, st.clock(), st.vip_damping, "instance stopped")
    st.journal.notice(
        c.project.id,
        inst.id,
        INSTANCE_STOPPED,
        f"instance {inst.name} stopped on host {old_host or 'none'}",
    )
    return stopped.envelope()


@router.post("/instances/{ref}/start", response_model=Instance, responses=errors(404, 409, 412))
def start_instance(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Start a stopped instance on a host of its zone that the scheduler chooses: its
    command runs again from the start, at the same address."""
    st = state_of(request)
    with st.store.transaction() as tx:
        inst = resolve(tx, "instance", c.project.id, ref)
        check_if_match(inst, if_match)
        phase = inst.status.get("phase")
        if phase != "stopped":
            raise Conflict(f"instance {inst.name} is not stopped (it is {phase})", phase=phase)
        try:
            host = choose(tx, inst.spec["zone"], st.fleet.leases, st.clock(), st.loads)
        except NoHost as exc:
            raise Conflict(exc.message) from exc
        status = {
            **inst.status,
            "host": host,
            "phase": "scheduled",
            "message": "starting",
            "netns": None,
            "uts": None,
        }
        started = tx.update(inst, status=status)
    st.journal.notice(
        c.project.id, inst.id, INSTANCE_STARTED, f"instance {inst.name} started on host {host}"
    )
    return started.envelope()


def _zone_has_hosts(r: Reader, zone_id: str) -> bool:
    """Has the zone any host at all?"""
    return r.count_of("host", "zone", zone_id) > 0


Phase = Literal["pending", "scheduled", "running", "failed", "stopped"]


@router.get("/instances", response_model=InstanceList, responses=errors(404, 422))
def list_instances(
    request: Request,
    c: CallerDep,
    page: PageDep,
    vpc: Annotated[str | Optional, Query(description="only this VPC's (name or id)")] = None,
    subnet: Annotated[str | Optional, Query(description="only this subnet's (name or id)")] = None,
    zone: Annotated[str | Optional, Query(description="only this zone's (name or id)")] = None,
    host: Annotated[str | Optional, Query(description="only those on this host (name)")] = None,
    name: Annotated[str | Optional, Query(description="only the one with this name")] = None,
    phase: Annotated[Phase | Optional, Query(description="only those in this phase")] = None,
) -> Any:
    st = state_of(request)
    with st.store.read() as r:
        want: dict[str, str] = {}
        if vpc is not None:
            want["vpc"] = resolve(r, "vpc", c.project.id, vpc).id
        if subnet is not None:
            want["subnet"] = resolve(r, "subnet", c.project.id, subnet).id
        if zone is not None:
            want["zone"] = resolve(r, "zone", st.admin_project_id, zone).id
        if host is not None:
            want["host"] = resolve(r, "host", st.admin_project_id, host).name
        # Start from the narrowest index there is; the rest is checked per instance.
        if "subnet" in want:
            objs = r.find("instance", "subnet", want["subnet"])
        elif "host" in want:
            objs = r.find("instance", "host", want["host"])
        elif "zone" in want:
            objs = r.find("instance", "zone", want["zone"])
        else:
            objs = r.list("instance", c.project.id)

        def keep(o: Resource) -> bool:
            return (
                o.project == c.project.id
                and (name is None or o.name == name)
                and (phase is None or o.status.get("phase") == phase)
                and all(
                    (o.status if k in ("vpc", "host") else o.spec).get(k) == v
                    for k, v in want.items()
                )
            )

        return paginate(objs, page, r.revision, Resource.envelope, keep)


@router.get("/instances/{ref}", response_model=Instance, responses=errors(404))
def get_instance(ref: str, request: Request, c: CallerDep) -> Any:
    with state_of(request).store.read() as r:
        return resolve(r, "instance", c.project.id, ref).envelope()


@router.patch(
    "/instances/{ref}",
    response_model=Instance,
    responses=errors(404, 412, 422),
    openapi_extra=patch_body(LabelsPatch),
)
def patch_instance(
    ref: str, body: LabelsPatch, request: Request, c: CallerDep, if_match: IfMatch = None
) -> Any:
    """JSON merge patch of an instance's labels. Its subnet, zone, address and command are
    fixed at create (the agent starts the process once): delete and create it again."""
    with state_of(request).store.transaction() as tx:
        inst = resolve(tx, "instance", c.project.id, ref)
        check_if_match(inst, if_match)
        return tx.update(inst, labels=patched_labels(inst, body)).envelope()


@router.delete("/instances/{ref}", response_model=Instance, responses=errors(404, 412))
def delete_instance(ref: str, request: Request, c: CallerDep, if_match: IfMatch = None) -> Any:
    """Delete the instance; volumes attached to it are detached (they stay)."""
    with state_of(request).store.transaction() as tx:
        inst = resolve(tx, "instance", c.project.id, ref)
        check_if_match(inst, if_match)
        detached = detach_all(tx, inst)
        gone = tx.delete(inst)
        for fl in tx.find("flow_log", "target", inst.id):  # flow logs go with their target
            tx.delete(fl)
        release_public(tx, inst)
        st = state_of(request)
        release_instance(tx, inst, st.clock(), st.vip_damping, "instance deleted")
        sub = tx.get("subnet", inst.spec["subnet"])
        if sub is not None:
            refresh_available(tx, sub)
    for vol in detached:
        state_of(request).journal.notice(
            vol.project,
            vol.id,
            VOLUME_DETACHED,
            f"volume {vol.name} detached: instance {inst.name} was deleted",
        )
    if inst.status.get("ip"):
        state_of(request).ipam.freed(inst.spec["subnet"], inst.status["ip"])
    return gone.envelope()
