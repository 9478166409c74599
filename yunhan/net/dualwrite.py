"""Dual write during a migration window: one change, written to Yunhan and to the IDC
switch, and the comparison of the two sides.

The items a migration carries, in a model neither side owns (each side's consumer
translates; yunhan.lab.dualwrite):

* a route: `prefix` (inside the migrating prefix) to `blackhole`. Yunhan: a custom route
  of the migration's route table (priority ROUTE_PRIORITY, next hop blackhole); the
  switch: a static blackhole route;
* an ACL rule: `seq`, `peer` (a CIDR), `protocol`, `action` (permit | deny), for traffic
  *into* the migrating prefix. Yunhan: ingress rule `seq` of the migration's network ACL
  (cidr = peer, allow | deny); the switch: acl-rule `seq` from `peer` to the prefix.

A change is state, not an operation: `put` makes the key's item equal to the value,
`delete` makes it absent. Applying one twice changes nothing the second time, which is
what makes the consumers idempotent under redelivery. Pure: validating changes, the keys,
and `compare` (the reconciler's differences).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["route", "acl"]
ROUTE_PRIORITY = 100
SIDES = ("yunhan", "idc")
PROTOCOLS = ("any", "icmp", "tcp", "udp")


class ChangeError(ValueError):
    """A change that cannot be written (refused before it is queued)."""


@dataclass(frozen=True)
class Change:
    id: str  # unique: the queue's deduplication id and the API's Idempotency-Key
    kind: Kind
    key: str  # route: its prefix; acl: its seq
    op: Literal["put", "delete"]
    value: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        return cls(str(data["id"]), data["kind"], str(data["key"]), data["op"], data.get("value"))


def _within(prefix: str, cidr: str, what: str) -> str:
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as exc:
        raise ChangeError(f"{what}: {cidr!r} is not an IPv4 prefix ({exc})") from None
    if not net.subnet_of(ipaddress.IPv4Network(prefix)):
        raise ChangeError(f"{what}: {net} is outside the migrating prefix {prefix}")
    return str(net)


def route_change(prefix: str, dst: str, op: str, change_id: str | None = None) -> Change:
    """A change of the blackhole route to `dst` (inside the migrating `prefix`)."""
    dst = _within(prefix, dst, "route")
    if op not in ("put", "delete"):
        raise ChangeError(f"op is put or delete, not {op!r}")
    value = {"prefix": dst, "target": "blackhole"} if op == "put" else None
    return Change(change_id or uuid.uuid4().hex, "route", dst, op, value)  # type: ignore[arg-type]


def acl_change(
    seq: int,
    op: str,
    *,
    peer: str | None = None,
    protocol: str = "any",
    action: str = "deny",
    change_id: str | None = None,
) -> Change:
    """A change of ACL rule `seq` (traffic from `peer` into the migrating prefix)."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= 32766:
        raise ChangeError(f"acl seq: from 1 to 32766, got {seq!r}")
    if op not in ("put", "delete"):
        raise ChangeError(f"op is put or delete, not {op!r}")
    value = None
    if op == "put":
        try:
            net = str(ipaddress.IPv4Network(str(peer), strict=True))
        except ValueError as exc:
            raise ChangeError(f"acl {seq}: peer {peer!r} is not an IPv4 prefix ({exc})") from None
        if protocol not in PROTOCOLS:
            raise ChangeError(f"acl {seq}: protocol is one of {', '.join(PROTOCOLS)}")
        if action not in ("permit", "deny"):
            raise ChangeError(f"acl {seq}: action is permit or deny, not {action!r}")
        value = {"seq": seq, "peer": net, "protocol": protocol, "action": action}
    return Change(change_id or uuid.uuid4().hex, "acl", str(seq), op, value)  # type: ignore[arg-type]


def parse_change(prefix: str, data: Mapping[str, Any]) -> Change:
    """A change as a line of `yunhan migrate apply --changes FILE` gives it:
    {"kind": "route", "op": "put", "prefix": …} or {"kind": "acl", "op": …, "seq": …,
    "peer": …, "protocol": …, "action": …}, an optional "id"."""
    kind, op = data.get("kind"), data.get("op", "put")
    if kind == "route":
        return route_change(prefix, str(data.get("prefix")), str(op), data.get("id"))
    if kind == "acl":
        return acl_change(
            data.get("seq"),  # type: ignore[arg-type]
            str(op),
            peer=data.get("peer"),
            protocol=str(data.get("protocol", "any")),
            action=str(data.get("action", "deny")),
            change_id=data.get("id"),
        )
    raise ChangeError(f"kind is route or acl, not {kind!r}")


Items = dict[tuple[str, str], dict[str, Any]]  # (kind, key) -> value


def apply_to(items: Items, change: Change) -> Items:
    """`items` after `change` (a model of what a side holds; the consumers do the same
    to the real sides)."""
    out = dict(items)
    if change.op == "put" and change.value is not None:
        out[(change.kind, change.key)] = dict(change.value)
    else:
        out.pop((change.kind, change.key), None)
    return out


@dataclass(frozen=True)
class Difference:
    what: Literal["missing", "extra", "different"]
    kind: Kind
    key: str
    truth: dict[str, Any] | None  # the item on the side of truth (None: absent there)
    other: dict[str, Any] | None  # on the lagging side

    def describe(self, truth: str, other: str) -> str:
        item = f"{self.kind} {self.key}"
        if self.what == "missing":
            return f"missing on {other}: {item} {_show(self.truth)}"
        if self.what == "extra":
            return f"extra on {other}: {item} {_show(self.other)} (not on {truth})"
        return (
            f"different: {item} is {_show(self.truth)} on {truth}, {_show(self.other)} on {other}"
        )


def _show(v: Mapping[str, Any] | None) -> str:
    if v is None:
        return "-"
    return " ".join(f"{k}={v[k]}" for k in sorted(v) if k not in ("seq", "prefix"))


def compare(truth: Items, other: Items) -> list[Difference]:
    """What `other` must change to hold what `truth` holds, sorted by kind and key."""
    out = []
    for k in sorted(set(truth) | set(other), key=lambda k: (k[0], _sort_key(k))):
        a, b = truth.get(k), other.get(k)
        if a == b:
            continue
        what: Literal["missing", "extra", "different"] = (
            "missing" if b is None else "extra" if a is None else "different"
        )
        out.append(Difference(what, k[0], k[1], a, b))  # type: ignore[arg-type]
    return out


def _sort_key(k: tuple[str, str]) -> tuple[int, ...]:
    if k[0] == "acl":
        return (int(k[1]),)
    net = ipaddress.IPv4Network(k[1])
    return (int(net.network_address), net.prefixlen)
