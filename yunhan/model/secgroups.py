"""Security group rules: the pure checks (docs/secgroups.md).

A rule is stored in its group's spec as
``{"id", "direction", "proto", "port": [lo, hi] | None, "peer": {"cidr": C} | {"sg": ID},
"action", "priority"}``. Rules of all the groups of a port are evaluated together, by
priority (lower first; at one priority a deny before an allow), the first match decides;
nothing matched is denied.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from yunhan.errors import ValidationError
from yunhan.model.routing import parse_port_range

MAX_RULES_PER_GROUP = 1000
MAX_GROUPS_PER_INSTANCE = 5
DEFAULT_GROUP = "default"
DEFAULT_PRIORITY = 100
DIRECTIONS = ("ingress", "egress")
PROTOS = ("tcp", "udp", "icmp", "any")
ACTIONS = ("allow", "deny")


def parse_peer(text: object) -> tuple[str, str]:
    """`CIDR` or `sg:NAME` as ("cidr", normalised CIDR) or ("sg", NAME)."""
    s = str(text).strip()
    if s.startswith("sg:"):
        name = s[3:]
        if not name:
            raise ValidationError("peer sg: needs a group name or id (sg:NAME)", field="peer")
        return "sg", name
    try:
        net = ipaddress.IPv4Network(s, strict=False)
    except ValueError:
        raise ValidationError(
            f"peer {s!r} is neither an IPv4 CIDR nor sg:NAME", field="peer", value=s
        ) from None
    return "cidr", str(net)


def validate_rule(proto: str, port: object | None) -> tuple[int, int] | None:
    """A port (N or N-M, start <= end) only with tcp or udp. Returns the range."""
    if proto not in PROTOS:
        raise ValidationError(f"protocol {proto!r} is not one of {', '.join(PROTOS)}")
    if port is None:
        return None
    if proto not in ("tcp", "udp"):
        raise ValidationError(
            f"a port matches only tcp or udp, not protocol {proto}; drop --port or give "
            "--proto tcp or udp",
            field="port",
            value=port,
        )
    return parse_port_range(port)


def rule_order(rule: dict[str, Any]) -> tuple[int, int, str]:
    """Evaluation order of rules: priority, deny before allow, then id."""
    return (int(rule["priority"]), 0 if rule["action"] == "deny" else 1, str(rule["id"]))


def default_rules(group_id: str) -> list[dict[str, Any]]:
    """The default group's rules: all egress, ingress from its own members."""
    return [
        {"id": "r-egress", "direction": "egress", "proto": "any", "port": None,
         "peer": {"cidr": "0.0.0.0/0"}, "action": "allow", "priority": DEFAULT_PRIORITY},
        {"id": "r-self", "direction": "ingress", "proto": "any", "port": None,
         "peer": {"sg": group_id}, "action": "allow", "priority": DEFAULT_PRIORITY},
    ]  # fmt: skip


# -- network ACLs ------------------------------------------------------------------------

MAX_ACL_RULES = 200  # per direction
ACL_NUMBERS = (1, 32766)


def acl_order(rule: dict[str, Any]) -> tuple[str, int]:
    """Rules of an ACL: by direction, then number (lower first; the first match decides)."""
    return (str(rule["direction"]), int(rule["number"]))
