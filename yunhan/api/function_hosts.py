"""The hosts the router may place function workers on, with what it needs to call them.

Hosts report their function host (endpoint, key, memory) in their status (agent.functions,
api.routes.agent.status_report); the key is secret, shown to the admin only by the host
views, and read here, server side, for the router.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from yunhan.api.fleet import Lease
from yunhan.controller.scheduler import host_healthy
from yunhan.store import Reader


@dataclass(frozen=True)
class FunctionHostInfo:
    host: str  # the host's name
    zone: str  # its zone's id
    endpoint: str  # the function host's URL (HostClient's endpoint)
    key: str  # its bearer key
    memory_mb: int  # the most one function may have there
    workers: int | None  # workers it held at its last report (None: not known here)


def function_hosts(
    r: Reader, admin_project: str, leases: Mapping[str, Lease], now: float
) -> list[FunctionHostInfo]:
    """The healthy hosts that run functions, by name. A host whose agent stopped
    reporting is left out: its endpoint may be gone, or be another agent's by now."""
    out: list[FunctionHostInfo] = []
    for h in r.list("host", admin_project):
        fn = h.status.get("functions")
        lease = leases.get(h.name)
        if not isinstance(fn, dict) or not host_healthy(lease, now):
            continue
        try:
            info = FunctionHostInfo(
                host=h.name,
                zone=str(h.spec.get("zone")),
                endpoint=str(fn["endpoint"]),
                key=str(fn["key"]),
                memory_mb=int(fn["memory_mb"]),
                workers=lease.function_workers if lease else None,
            )
        except (KeyError, TypeError, ValueError):
            continue
        out.append(info)
    return sorted(out, key=lambda i: i.host)
