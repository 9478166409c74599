"""UCloud's wire format, pure: signatures, flattened lists, answers, and IDs.

Signature (as the official SDK computes it): the parameters, `PublicKey` among them and
`Signature` not, sorted by key; each key and its value concatenated without separators;
the private key appended; SHA-1 in hex. Values are as sent (booleans "true"/"false").
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

from yunhan.model.names import KIND_PREFIX

# Common RetCodes (UCloud's public ones, and ours where UCloud's per-product codes are not
# reproduced: docs/ucloud-api.md says which).
OK = 0
MISSING_ACTION = 160
UNKNOWN_ACTION = 161
MISSING_SIGNATURE = 170
BAD_SIGNATURE = 171
UNKNOWN_USER = 172
UNKNOWN_PROJECT = 292
MISSING_PARAM = 230
INVALID_PARAM = 231  # a value Yunhan refuses (its message says why)
NOT_FOUND = 233  # no such resource in the project
CONFLICT = 234  # the resource's state forbids it (in use, already exists)
SERVER_ERROR = 5000  # above 2000: the SDK retries


def encode_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v % 1 == 0 else str(v)
    return str(v)


def flatten(params: Mapping[str, Any]) -> dict[str, str]:
    """A JSON body in the flat form a form-encoded one has (`Network.0`, `Rule.1.Port`)."""
    out: dict[str, str] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, Mapping):
            for k, x in v.items():
                walk(f"{prefix}.{k}", x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(f"{prefix}.{i}", x)
        elif v is not None:
            out[prefix] = encode_value(v)

    for k, v in params.items():
        walk(str(k), v)
    return out


def signature(params: Mapping[str, str], private_key: str) -> str:
    text = "".join(f"{k}{params[k]}" for k in sorted(params) if k != "Signature")
    return hashlib.sha1((text + private_key).encode()).hexdigest()


def signature_ok(params: Mapping[str, str], private_key: str) -> bool:
    return hmac.compare_digest(signature(params, private_key), params.get("Signature", ""))


def listed(params: Mapping[str, str], name: str) -> list[str]:
    """`Name.0`, `Name.1`, … in index order (a gap ends nothing: UCloud's clients number
    from 0 without gaps, and a stray index is still the caller's value)."""
    pat = re.compile(rf"^{re.escape(name)}\.(\d+)$")
    found = sorted((int(m.group(1)), v) for k, v in params.items() if (m := pat.match(k)))
    return [v for _, v in found]


def answer(action: str, code: int = OK, message: str = "", **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"Action": f"{action}Response", "RetCode": code}
    if message or code != OK:
        out["Message"] = message
    out.update(fields)
    return out


# UCloud ID prefixes by Yunhan kind: the random part is kept, so either id names one
# resource (a VPC is `uvnet-3fa9c2d1` there and `vpc-3fa9c2d1` here).
PREFIXES = {
    "vpc": "uvnet",
    "subnet": "subnet",
    "instance": "uhost",
    "route_table": "rt",
    "natgw": "natgw",
    "eip": "eip",
    "vip": "vip",
    "security_group": "firewall",
    "volume": "bsm",
}


def to_ucloud(kind: str, yunhan_id: str) -> str:
    _, _, rand = yunhan_id.rpartition("-")
    return f"{PREFIXES[kind]}-{rand}"


def to_yunhan(kind: str, ucloud_id: str) -> str:
    """`uvnet-3fa9c2d1` -> `vpc-3fa9c2d1`; anything else (a Yunhan id, a name) passes, so
    that resources made through Yunhan's API can be named either way."""
    head, _, rand = ucloud_id.rpartition("-")
    if head == PREFIXES[kind] and rand:
        return f"{KIND_PREFIX[kind]}-{rand}"
    return ucloud_id
