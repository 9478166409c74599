"""What a function is, described before anything is built: pure data and the rules on it.

Leaf module (stdlib only): the control plane can validate a deploy with it, and the worker
harness imports it for `billed_ms`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from yunhan.errors import ValidationError

MIN_MEMORY_MB = 64
LAMBDA_MB_PER_VCPU = 1769  # Lambda gives one full vCPU at 1769 MB; shares follow memory
DEFAULT_PIDS_MAX = 64

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FunctionSpec:
    """One immutable version of a function, as the runtime needs it."""

    name: str
    version: int
    handler: str  # "module.func" (module may be dotted: "pkg.mod.func")
    memory_mb: int = 128
    timeout_s: float = 3.0
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return self.handler.rpartition(".")[0]

    @property
    def func(self) -> str:
        return self.handler.rpartition(".")[2]

    @property
    def key(self) -> str:
        """ "name:vN": how logs and errors name this version."""
        return f"{self.name}:v{self.version}"


def validate(spec: FunctionSpec, *, host_memory_mb: int) -> None:
    """Refuse a spec whole (ValidationError) before anything is written."""
    if not _NAME.match(spec.name):
        raise ValidationError(
            f"function name {spec.name!r}: lower-case letters, digits and '-', "
            "starting with a letter, at most 63",
            field="name",
        )
    if spec.version < 1:
        raise ValidationError(f"version {spec.version}: versions start at 1", field="version")
    module, _, func = spec.handler.rpartition(".")
    if not module or not _MODULE.match(module) or not _IDENT.match(func):
        raise ValidationError(
            f"handler {spec.handler!r}: expected module.func (for example main.handler)",
            field="handler",
        )
    if not MIN_MEMORY_MB <= spec.memory_mb <= host_memory_mb:
        raise ValidationError(
            f"memory {spec.memory_mb} MB: must be between {MIN_MEMORY_MB} MB and the "
            f"host's limit of {host_memory_mb} MB",
            field="memory",
        )
    if not 0 < spec.timeout_s <= 900:
        raise ValidationError(
            f"timeout {spec.timeout_s} s: must be above 0 and at most 900", field="timeout"
        )
    for k, v in spec.env.items():
        if not _ENV_KEY.match(k) or "\0" in v:
            raise ValidationError(f"environment variable {k!r}: bad name or value", field="env")


def cpu_shares(memory_mb: int) -> int:
    """cgroup v1 cpu.shares in proportion to memory, as Lambda does: 1769 MB buys one
    vCPU (1024 shares, the weight of an ordinary process); 2 is the kernel's minimum."""
    return max(2, 1024 * memory_mb // LAMBDA_MB_PER_VCPU)


def billed_ms(duration_ns: int) -> int:
    """Duration rounded up to the next whole millisecond (at least 1), as billed."""
    return max(1, math.ceil(duration_ns / 1_000_000))


@dataclass(frozen=True)
class UidRange:
    """The uids (and equal gids) handed to functions, one per function.

    70000-79999 by default: above the Debian/systemd system and dynamic ranges
    (systemd's DynamicUser takes 61184-65519, nobody is 65534) and below the 100000 where
    useradd starts /etc/subuid ranges.
    """

    base: int = 70000
    size: int = 10000


def choose_uid(
    function: str, taken: Mapping[int, str], reserved: Collection[int], uids: UidRange
) -> int:
    """The uid of `function`: its own if `taken` (uid -> function) already holds one, else
    the first free one probing upward from base + sha256(name) mod size. Deterministic, so
    a function keeps its uid across hosts when nothing collides; never shared by two
    functions; never one in `reserved` (uids of the host's own users)."""
    for uid, owner in taken.items():
        if owner == function:
            return uid
    start = int.from_bytes(hashlib.sha256(function.encode()).digest()[:8], "big") % uids.size
    for i in range(uids.size):
        uid = uids.base + (start + i) % uids.size
        if uid not in taken and uid not in reserved:
            return uid
    raise ValidationError(f"no uid left for function {function!r}: all {uids.size} are taken")
