"""Repairs of what older versions left in the store, run once per term as leader: every
VPC gets its default route table, an index counter and its default security group, every
subnet an index and its table (docs/routing.md), every instance made before security
groups existed the default group of its VPC (docs/secgroups.md): left without one it
would be open to all, yet unreachable from the instances made since, which admit only
their group's members. Level-triggered: a store that needs nothing gets no write."""

from __future__ import annotations

from yunhan.controller.secgroups import default_group, ensure_default_group
from yunhan.controller.tables import default_table, ensure_default_table, take_index
from yunhan.store import Reader, Tx


def needs_repair(r: Reader) -> bool:
    """Is there a VPC without its default table or group, a subnet without its index, or an
    instance without security groups?"""
    return (
        any(default_table(r, v.id) is None or default_group(r, v.id) is None for v in r.list("vpc"))
        or any(
            s.status.get("index") is None or not s.spec.get("route_table") for s in r.list("subnet")
        )
        or any("security_groups" not in i.spec for i in r.list("instance"))
    )


def repair(tx: Tx) -> int:
    """Make what `needs_repair` finds missing; returns how many objects it wrote."""
    n = 0
    for vpc in tx.list("vpc"):
        if default_table(tx, vpc.id) is None:
            ensure_default_table(tx, vpc)
            n += 1
        if default_group(tx, vpc.id) is None:
            ensure_default_group(tx, vpc)
            n += 1
    for sub in tx.list("subnet"):
        found = tx.get("vpc", sub.spec["vpc"])
        if found is None:
            continue
        vpc = found
        spec, status = sub.spec, sub.status
        if status.get("index") is None:
            index, vpc = take_index(tx, vpc)
            status = {**status, "index": index}
        if not spec.get("route_table"):
            table, vpc = ensure_default_table(tx, vpc)
            spec = {**spec, "route_table": table.id}
        tx.update(sub, spec=spec, status=status)
        n += 1 if (spec, status) != (sub.spec, sub.status) else 0
    for inst in tx.list("instance"):
        if "security_groups" in inst.spec:
            continue
        home = tx.get("subnet", inst.spec["subnet"])
        owner = tx.get("vpc", home.spec["vpc"]) if home is not None else None
        if owner is None:
            continue
        group = ensure_default_group(tx, owner)
        tx.update(inst, spec={**inst.spec, "security_groups": [group.id]})
        n += 1
    return n
