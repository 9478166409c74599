"""How many instances each host carries, ordered per zone, kept as writes commit.

The scheduler wants "the least loaded healthy host of zone Z". Asking every host of the
zone for its count costs the zone's size on every create (500 hosts a zone at 1,000 hosts
is most of a create's time). `HostLoads` follows the change log (a store subscriber) and
keeps, per zone, the hosts bucketed by load, so the few lightest hosts are found at once;
the scheduler then checks those few against the transaction it runs in (whose own,
uncommitted creates the log has not seen yet).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from yunhan.store import Event, Resource


class HostLoads:
    """Per zone: load -> sorted host names. Fed by `load` and `apply` (store subscriber)."""

    def __init__(self) -> None:
        self._zone: dict[str, str] = {}  # host name -> zone id
        self._count: dict[str, int] = {}  # host name -> instances on it
        self._buckets: dict[str, dict[int, list[str]]] = {}  # zone -> load -> names
        self._where: dict[str, str] = {}  # instance id -> host name (as last counted)
        self._host_of: dict[str, str] = {}  # host id -> name

    def load(self, _revision: int, objs: Iterable[Resource]) -> None:
        self.__init__()  # type: ignore[misc]
        objs = list(objs)
        for o in objs:
            if o.kind == "host":
                self._put_host(o)
        for o in objs:
            if o.kind == "instance":
                self._put_instance(o)

    def apply(self, _revision: int, events: list[Event]) -> None:
        for ev in events:
            if ev.kind == "host":
                if ev.op == "delete":
                    self._drop_host(ev.obj.name)
                else:
                    self._put_host(ev.obj)
            elif ev.kind == "instance":
                if ev.op == "delete":
                    self._move(ev.id, None)
                else:
                    self._put_instance(ev.obj)

    def _put_host(self, h: Resource) -> None:
        old = self._host_of.get(h.id)
        if old is not None and old != h.name:
            self._drop_host(old)
        self._host_of[h.id] = h.name
        zone = h.spec.get("zone")
        if not isinstance(zone, str):
            return
        if self._zone.get(h.name) == zone:
            return
        if h.name in self._zone:
            self._unbucket(h.name)
        self._zone[h.name] = zone
        self._count.setdefault(h.name, 0)
        self._bucket(h.name)

    def _drop_host(self, name: str) -> None:
        if name in self._zone:
            self._unbucket(name)
            del self._zone[name]
        self._host_of = {i: n for i, n in self._host_of.items() if n != name}

    def _put_instance(self, i: Resource) -> None:
        host = i.status.get("host")
        self._move(i.id, host if isinstance(host, str) else None)

    def _move(self, instance: str, host: str | None) -> None:
        old = self._where.pop(instance, None)
        if old == host:
            if host is not None:
                self._where[instance] = host
            return
        if old is not None:
            self._add(old, -1)
        if host is not None:
            self._where[instance] = host
            self._add(host, +1)

    def _add(self, host: str, n: int) -> None:
        if host in self._zone:
            self._unbucket(host)
            self._count[host] = self._count.get(host, 0) + n
            self._bucket(host)
        else:  # a host not registered (yet): count it for when it is
            self._count[host] = self._count.get(host, 0) + n

    def _bucket(self, host: str) -> None:
        b = self._buckets.setdefault(self._zone[host], {}).setdefault(self._count[host], [])
        bisect.insort(b, host)

    def _unbucket(self, host: str) -> None:
        zb = self._buckets.get(self._zone[host], {})
        b = zb.get(self._count.get(host, 0))
        if b is not None:
            i = bisect.bisect_left(b, host)
            if i < len(b) and b[i] == host:
                del b[i]
            if not b:
                del zb[self._count.get(host, 0)]

    def lightest(self, zone: str, healthy: Callable[[str], bool], k: int = 32) -> list[str]:
        """Up to `k` hosts of `zone` in (load, name) order, healthy ones first: what the
        scheduler should look at. Cost: the hosts skipped as unhealthy, plus k.

        `k` is larger than a batch of concurrent creates: they count each other's
        placements (the transaction's index), but only among these candidates, so fewer
        candidates than creates would pile a burst onto them.
        """
        zb = self._buckets.get(zone, {})
        chosen: list[str] = []
        sick: list[str] = []
        for load in sorted(zb):
            for host in zb[load]:
                if healthy(host):
                    chosen.append(host)
                    if len(chosen) >= k:
                        return chosen
                elif len(sick) < k:
                    sick.append(host)
        return (chosen + sick)[:k]

    def count(self, host: str) -> int:
        return self._count.get(host, 0)
