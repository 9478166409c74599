"""Security groups in the store: the default group of each VPC."""

from __future__ import annotations

from yunhan.model import new_id
from yunhan.model.secgroups import DEFAULT_GROUP, default_rules
from yunhan.store import Reader, Resource, Tx


def default_group(r: Reader, vpc_id: str) -> Resource | None:
    for g in r.find("security_group", "vpc", vpc_id):
        if g.spec.get("default"):
            return g
    return None


def _free_name(r: Reader, project: str, vpc_name: str) -> str:
    base = f"{vpc_name[:54]}-{DEFAULT_GROUP}"
    name, n = base, 1
    while r.by_name("security_group", project, name) is not None:
        n += 1
        name = f"{base}-{n}"
    return name


def ensure_default_group(tx: Tx, vpc: Resource) -> Resource:
    """The VPC's default group ("<vpc>-default"), made now if it has none."""
    found = default_group(tx, vpc.id)
    if found is not None:
        return found
    gid = new_id("security_group")
    return tx.create(
        "security_group",
        gid,
        vpc.project,
        _free_name(tx, vpc.project, vpc.name),
        {"vpc": vpc.id, "default": True, "rules": default_rules(gid)},
        {},
    )
