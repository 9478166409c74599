"""`GET /v1/trace`: where a packet from an instance goes, read off the hosts' documents.

The answer is the model trace of `yunhan.net.trace` over the documents the app's engine
serves the agents (assembled as the agents assemble them), so it explains what the data
plane is told to do. A tenant's trace stops at the edge of its project: another project's
public address is the internet to it, and no other project's VPC is entered or named.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from yunhan.api.auth import Caller
from yunhan.api.conventions import Optional, errors
from yunhan.api.deps import CallerDep, state_of
from yunhan.api.models import TraceResult
from yunhan.api.views import resolve
from yunhan.controller.engine import Engine
from yunhan.errors import Conflict, NotFound, ValidationError
from yunhan.net.desired import HostDesired
from yunhan.net.docentries import assemble
from yunhan.net.trace import Directory, PublicAddress, TraceError, trace
from yunhan.store import Reader, Resource

router = APIRouter(prefix="/v1", tags=["network"])

# Kinds whose names a trace shows (the caller's own only).
_NAMED = ("instance", "subnet", "route_table", "natgw", "eip", "vpc")


class _Docs(Mapping[str, HostDesired]):
    """The hosts' documents, assembled on first use (a trace reads a handful)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._done: dict[str, HostDesired] = {}

    def __getitem__(self, host: str) -> HostDesired:
        if host not in self._done:
            try:
                entries = self._engine.snapshot(host)
            except KeyError:
                raise KeyError(host) from None
            self._done[host] = assemble(entries, host)
        return self._done[host]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._engine.hosts()))

    def __len__(self) -> int:
        return len(self._engine.hosts())


def _directory(r: Reader, c: Caller) -> Directory:
    project = None if c.admin else c.project.id
    names: dict[str, str] = {}
    for kind in _NAMED:
        for res in r.list(kind, project):
            names[res.id] = res.name
    gateways = {g.id: g for g in r.list("natgw", project)}
    public: dict[str, PublicAddress] = {}
    for g in gateways.values():
        if g.status.get("public_ip"):
            addr = str(g.status["public_ip"])
            public[addr] = PublicAddress(addr, g.id, g.status.get("host") or None)
    for e in r.list("eip", project):
        gw = gateways.get(str(e.status.get("natgw") or ""))
        if gw is not None and e.status.get("address") and e.status.get("instance"):
            addr = str(e.status["address"])
            public[addr] = PublicAddress(addr, gw.id, gw.status.get("host") or None, eip=e.id)
    vpcs = None if project is None else frozenset(v.id for v in r.list("vpc", project))
    # The API does not know what lies beyond the region's uplink: an address no gateway
    # holds is "the internet" (the lab's live trace knows its internet and says more).
    return Directory(names=names, public=public, internet=None, vpcs=vpcs)


def _destination(r: Reader, project: str, to: str) -> tuple[str, Resource | None]:
    try:
        return str(ipaddress.IPv4Address(to)), None
    except ValueError:
        pass
    try:
        inst = resolve(r, "instance", project, to)
    except NotFound:
        eip = next(
            (e for e in r.list("eip", project) if to in (e.id, e.name)),
            None,
        )
        if eip is None or not eip.status.get("address"):
            raise NotFound(
                f"no instance or EIP {to!r} in this project (TO is an instance, an IP "
                "address or an EIP)",
                ref=to,
            ) from None
        return str(eip.status["address"]), None
    if not inst.status.get("ip"):
        raise Conflict(f"instance {inst.name} has no address yet", instance=inst.name)
    return str(inst.status["ip"]), inst


@router.get("/trace", response_model=TraceResult, responses=errors(404, 409, 422))
def get_trace(
    request: Request,
    c: CallerDep,
    src: Annotated[str, Query(alias="from", description="the source instance (name or id)")],
    to: Annotated[str, Query(description="an instance (name or id), an IP address or an EIP")],
    proto: Annotated[Literal["tcp", "udp", "icmp"], Query()] = "icmp",
    port: Annotated[
        Annotated[int, Field(ge=1, le=65535)] | Optional, Query(description="tcp/udp only")
    ] = None,
) -> Any:
    """The model trace of one packet from instance `from` to `to`."""
    if proto in ("tcp", "udp") and port is None:
        raise ValidationError(f"a {proto} trace needs a destination port (port=N)")
    if proto == "icmp" and port is not None:
        raise ValidationError("an icmp trace takes no port")
    st = state_of(request)
    with st.store.read() as r:
        inst = resolve(r, "instance", c.project.id, src)
        host = inst.status.get("host")
        if not host or not inst.status.get("ip"):
            raise Conflict(
                f"instance {inst.name} is not placed yet: there is no port to trace from",
                instance=inst.name,
            )
        dst, dst_inst = _destination(r, c.project.id, to)
        directory = _directory(r, c)
        docs = _Docs(st.fleet.engine)
        try:
            t = trace(docs, str(host), inst.id, dst, proto, port, directory)
        except TraceError as exc:
            raise Conflict(f"cannot trace from {inst.name}: {exc}", instance=inst.name) from exc
    body = t.to_json()
    return {
        **body,
        "dst_instance": dst_inst.id if dst_inst else "",
        "dst_host": dst_inst.status.get("host") if dst_inst else None,
        "names": _mentioned(body, directory),
        "text": t.render(directory),
    }


def _mentioned(body: Any, d: Directory) -> dict[str, str]:
    """The names of every id the trace mentions."""
    found: dict[str, str] = {}

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v)
        elif isinstance(x, str):
            ref = x.split(":", 1)[-1]
            if ref in d.names:
                found[ref] = d.names[ref]

    walk(body)
    return found
