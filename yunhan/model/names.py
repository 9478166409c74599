"""Resource kinds, ids and names.

An id is "<kind prefix>-<8 hex>" (docs/api.md); wherever the API takes a resource it takes
its id or its name, so `looks_like_id` decides which lookup to try first.
"""

from __future__ import annotations

import re
import secrets

from yunhan.errors import ValidationError

KIND_PREFIX: dict[str, str] = {
    "project": "proj",
    "zone": "zone",
    "host": "host",
    "vpc": "vpc",
    "subnet": "subnet",
    "instance": "inst",
    "hostdesired": "hd",
    "route_table": "rtb",
    "route": "rt",
    "policy_route": "pr",
    "natgw": "ngw",
    "eip": "eip",
    "security_group": "sg",
    "network_acl": "acl",
    "flow_log": "fl",
    "vip": "vip",
    "patch": "hp",
    "function": "fn",
    "volume": "vol",
    "idc_site": "idc",
    "hybrid_gw": "hgw",
}
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ID_RE = re.compile(r"^([a-z]+)-([0-9a-f]{8})$")


def new_id(kind: str) -> str:
    """A fresh random id for `kind` (uniqueness is the store's to check)."""
    return f"{KIND_PREFIX[kind]}-{secrets.token_hex(4)}"


def looks_like_id(kind: str, ref: str) -> bool:
    m = _ID_RE.match(ref)
    return bool(m and m.group(1) == KIND_PREFIX[kind])


def validate_name(kind: str, name: object) -> str:
    """Names: 1-63 characters of [a-z0-9-], starting and ending alphanumeric."""
    if not isinstance(name, str) or not name:
        raise ValidationError(f"a {kind} needs a name", field="name")
    if len(name) > 63 or not _NAME_RE.match(name):
        raise ValidationError(
            f"{kind} name {name!r} is invalid: use 1-63 characters a-z, 0-9 and '-', "
            "starting and ending with a letter or digit",
            field="name",
            value=name,
        )
    return name
