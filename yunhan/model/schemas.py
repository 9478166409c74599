"""Request bodies of the HTTP API (docs/api.md), as pydantic models.

They check shapes, types and the patterns a schema can state (names, label keys and
values), so that /openapi.json says exactly which bodies are well formed: a body that
breaks them is answered 400. The rules that need the values' meaning or neighbours (private
ranges, overlaps, addresses in use) live in `yunhan.model.network` and run inside the store
transaction (422, or 409 for a conflict with what exists).
Unknown fields of a create are ignored so that newer clients keep working against this
server; a PATCH names every field it may change and refuses the others (400 naming them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic.json_schema import WithJsonSchema

# Names: 1-63 characters [a-z0-9-], starting and ending alphanumeric (yunhan.model.names).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

# Labels as Kubernetes has them: a key is an optional DNS-subdomain prefix and "/", then a
# name of at most 63 characters [A-Za-z0-9-_.] starting and ending alphanumeric; a value is
# empty or such a name. The whole key is at most 253 characters (Kubernetes allows a
# 253-character prefix on top of the name; one bound that a schema can state is ours).
LABEL_NAME = r"[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?"
LABEL_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
LABEL_KEY_PATTERN = rf"^({LABEL_PREFIX})?{LABEL_NAME}$"
LABEL_VALUE_PATTERN = rf"^({LABEL_NAME})?$"
MAX_LABELS = 64
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN, max_length=253)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)]
_VALUE_SCHEMA = {"type": "string", "pattern": LABEL_VALUE_PATTERN, "maxLength": 63}


def _labels_schema(value: dict[str, Any]) -> dict[str, Any]:
    # Spelt out: pydantic's own schema of a constrained key lists the keys that match
    # (patternProperties) without saying that no other key is allowed.
    return {
        "type": "object",
        "maxProperties": MAX_LABELS,
        "propertyNames": {"pattern": LABEL_KEY_PATTERN, "maxLength": 253},
        "additionalProperties": value,
    }


Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(max_length=MAX_LABELS),
    WithJsonSchema(_labels_schema(_VALUE_SCHEMA)),
]
# A merge patch of labels: null removes one; the whole member null removes them all.
LabelsMerge = Annotated[
    Annotated[dict[LabelKey, LabelValue | None], Field(max_length=MAX_LABELS)] | None,
    WithJsonSchema(
        {
            "anyOf": [
                _labels_schema({"anyOf": [_VALUE_SCHEMA, {"type": "null"}]}),
                {"type": "null"},
            ]
        }
    ),
]
# A label selector term of a list: `key=value`.
SELECTOR_PATTERN = rf"^({LABEL_PREFIX})?{LABEL_NAME}=({LABEL_NAME})?$"


def _json_integer(v: object) -> object:
    # JSON Schema's integer: 1500 and 1500.0, but not `true` nor "1500" (which pydantic's
    # lax mode would take, and its strict mode would refuse 1500.0).
    if isinstance(v, bool | str):
        raise ValueError("must be an integer")
    return v


Int = Annotated[int, BeforeValidator(_json_integer)]


def _json_number(v: object) -> object:
    # JSON Schema's number: not `true` nor "1.5", which pydantic's lax mode would take.
    if isinstance(v, bool | str):
        raise ValueError("must be a number")
    return v


Number = Annotated[float, BeforeValidator(_json_number)]
# JSON Schema's boolean: `true`/`false` only, not 0, 1 or "yes" (pydantic's lax mode takes
# them: a schema-violating request would be accepted).
Bool = Annotated[bool, Field(strict=True)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Create(_Body):
    labels: Labels = Field(default_factory=dict)


class ProjectCreate(_Create):
    name: Name


class ZoneCreate(_Create):
    name: Name
    underlay_cidr: str


class VpcCreate(_Create):
    name: Name
    cidrs: list[str] = Field(min_length=1)


class VpcCidrAdd(_Body):
    cidr: str


class SubnetCreate(_Create):
    name: Name
    vpc: str
    cidr: str
    location: str | None = Field(
        None, description="`cloud` (default) or `idc:SITE`: its addresses are that IDC's"
    )


class InstanceCreate(_Create):
    name: Name
    subnet: str
    zone: str
    ip: str | None = None
    command: list[str] | None = None
    security_groups: list[str] | None = Field(
        None, description="its security groups (names or ids; default: its VPC's default)"
    )


class InstanceMigrate(_Body):
    """Where an instance moves: a zone (name or id) and, optionally, one of its hosts."""

    zone: str
    host: str | None = Field(None, description="a host of that zone (default: the scheduler's)")


class AgentRestart(_Body):
    """Why the agent registering now was restarted (its supervisor said so)."""

    count: Int = Field(ge=1, le=2**31)
    cause: str = Field(max_length=300)


class HostRegister(_Body):
    zone: str
    underlay_ip: str
    mtu: Int = 1500
    # (the bounds before the validator, inside the union: otherwise pydantic writes them
    # into the JSON schema as "ge"/"le", which are no JSON Schema keywords, and clients
    # such as schemathesis rightly send what the server then refuses). At most 2**53: a
    # JSON client holds integers as doubles, so 2**62 + 95 looked equal to a bound of 2**62.
    volume_pool: Annotated[int, Field(ge=0, le=2**53), BeforeValidator(_json_integer)] | None = (
        Field(None, description="bytes of volume space (absent: 100 GiB)")
    )
    restart: AgentRestart | None = None


class InstanceReport(_Body):
    phase: str | None = None
    message: str | None = None
    netns: str | None = None
    uts: str | None = None


class FunctionsReport(_Body):
    """The host's function host (yunhan.agent.functions): where the router calls it, with
    which key (secret: the admin's and the server's only), how much memory a function may
    have there, and how many workers it holds now."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    endpoint: str = Field(min_length=1, max_length=300)
    key: str = Field(min_length=1, max_length=200)
    memory_mb: Int = Field(ge=0)
    workers: Int = Field(0, ge=0)


class TimelineRange(_Body):
    from_ns: Int = Field(ge=0)
    to_ns: Int = Field(ge=0)
    every_s: Int = Field(ge=1)


class VolumeReport(_Body):
    """What a volume's agent says of it (docs/volumes.md, the agent contract)."""

    phase: Literal["available", "attached", "error", "restoring", "deleted"]
    message: str | None = Field(None, max_length=2000)
    device: str | None = Field(None, max_length=200)
    mounted: Bool = False
    used_bytes: Int = Field(0, ge=0)
    journal_bytes: Int = Field(0, ge=0)
    base_bytes: Int = Field(0, ge=0)
    timeline: list[TimelineRange] = Field(default_factory=list, max_length=10_000)
    restored_serial: Int = Field(0, ge=0)
    fill: Number = Field(1.0, ge=0, le=1)


class DatapathReport(_Body):
    """Which data path the host forwards with (docs/datapath.md): "fast" (tc-BPF beside
    the kernel path) or "kernel", why, and per instance which path its packets take."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    mode: Literal["fast", "kernel"]
    reason: str = Field("", max_length=2000)
    instances: dict[str, str] = Field(default_factory=dict, max_length=100_000)
    packets: dict[str, Int] = Field(default_factory=dict, max_length=16)
    errors: list[str] = Field(default_factory=list, max_length=1000)


class HostStatusReport(_Body):
    applied_revision: Int = Field(ge=0, le=2**53 - 1)  # exact in JSON (api.deps.MAX_REVISION)
    error: str | None = None
    instances: dict[str, InstanceReport] = Field(default_factory=dict)
    volumes: dict[str, VolumeReport] = Field(default_factory=dict)
    functions: FunctionsReport | None = None  # absent: this host runs no functions
    datapath: DatapathReport | None = None  # absent: an agent from before the fast path


# -- VIPs (docs/vips.md) -------------------------------------------------------------------

MAX_VIP_ALLOWED = 64  # instances that may hold one VIP
MAX_VIP_CLAIMS = 1000  # claims in one report of an agent


class VipCreate(_Create):
    name: Name
    subnet: str = Field(description="the subnet (name or id) the address is taken from")
    ip: str | None = Field(None, description="the address; absent: the lowest free one")
    allowed: list[str] = Field(
        default_factory=list,
        max_length=MAX_VIP_ALLOWED,
        description="instances (names or ids) of the VIP's VPC that may hold it",
    )


class VipInstance(_Body):
    instance: str = Field(description="the instance (name or id)")


class VipClaim(_Body):
    vip_ip: str = Field(description="the VIP's address, as the instance announced it")
    vpc: str = Field(description="the VPC's id")
    instance: str = Field(description="the id of the instance that announced it")
    epoch_seen: Int = Field(ge=0, le=2**53 - 1, description="the VIP's epoch the agent knew")
    at: Number | None = Field(None, description="when the agent saw it (unix seconds)")
    how: Literal["garp", "traffic"] = Field(
        "garp",
        description="garp: the instance announced it; traffic: it sent from it (granted "
        "only while nobody holds the VIP)",
    )


class VipClaims(_Body):
    claims: list[VipClaim] = Field(max_length=MAX_VIP_CLAIMS)


# -- PATCH (JSON merge patch, RFC 7396) -------------------------------------------------
# A member absent leaves the field as it is; a label set to null removes that label;
# "labels": null removes them all. What is not named here cannot change (400 naming it).


class Patch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: LabelsMerge = None


class LabelsPatch(Patch):
    """The PATCH of a zone, host, subnet, instance or project: only its labels change."""


class VpcSpecPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The whole new list of blocks: added ones are checked as `POST .../cidrs` checks them,
    # removed ones as `DELETE .../cidrs` does (no subnet may lie in them).
    cidrs: Annotated[list[str], Field(min_length=1)] = Field(default_factory=list)  # [] = absent


class VpcPatch(Patch):
    """The PATCH of a VPC: its labels and its CIDR blocks."""

    spec: VpcSpecPatch = Field(default_factory=VpcSpecPatch)


# -- distributed routing (docs/routing.md) ----------------------------------------------
# Next hops are written as people write them: instance:NAME, vip:IP, natgw:NAME, blackhole.
NEXT_HOP_DESCRIPTION = (
    "instance:NAME|vip:IP|natgw:NAME|blackhole (hybrid routes are generated from IDC subnets)"
)
PORT_RANGE_PATTERN = r"^[0-9]{1,5}(-[0-9]{1,5})?$"


class RouteTableCreate(_Create):
    name: Name
    vpc: str


class AssociationCreate(_Body):
    subnet: str = Field(description="the subnet (name or id) to associate with the table")


class RouteCreate(_Body):
    dst: str = Field(description="destination CIDR")
    next_hop: str = Field(description=NEXT_HOP_DESCRIPTION)
    priority: Int = Field(100, ge=1, le=65535, description="lower wins among equal prefixes")


class PolicyRouteCreate(_Body):
    priority: Int = Field(ge=1, le=9999, description="unique in the table; lower first")
    src: str | None = Field(None, description="source CIDR (any when absent)")
    dst: str | None = Field(None, description="destination CIDR (any when absent)")
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    port: Annotated[str, StringConstraints(pattern=PORT_RANGE_PATTERN)] | None = Field(
        None, description="destination port N or range N-M (tcp and udp only)"
    )
    action: Literal["drop", "allow", "reroute"]
    next_hop: str | None = Field(None, description=f"reroute only: {NEXT_HOP_DESCRIPTION}")


class NatGwCreate(_Create):
    name: Name
    vpc: str
    subnets: list[str] = Field(min_length=1, description="the subnets it serves (names or ids)")


class ForwardCreate(_Body):
    proto: Literal["tcp", "udp"]
    port: Int = Field(ge=1, le=65535, description="the public port on the gateway's address")
    to: str = Field(description="INSTANCE:PORT (the instance's name or id)")


class EipCreate(_Create):
    name: Name | None = Field(None, description="its name (default: its id)")


class EipBind(_Body):
    instance: str = Field(description="the instance (name or id)")


# -- security groups (docs/secgroups.md) ------------------------------------------------


class SecurityGroupCreate(_Create):
    name: Name
    vpc: str


class SgRuleCreate(_Body):
    direction: Literal["ingress", "egress"]
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    port: Annotated[str, StringConstraints(pattern=PORT_RANGE_PATTERN)] | None = Field(
        None, description="destination port N or range N-M (tcp and udp only)"
    )
    peer: str = Field(description="CIDR or sg:NAME (a group of the same VPC)")
    action: Literal["allow", "deny"] = "allow"
    priority: Int = Field(100, ge=1, le=65535, description="lower first")


class InstanceSecurityGroups(_Body):
    security_groups: list[str] = Field(
        min_length=1, max_length=5, description="the groups (names or ids), replacing its own"
    )


class AclCreate(_Create):
    name: Name
    vpc: str


class AclRuleCreate(_Body):
    number: Int = Field(ge=1, le=32766, description="unique per direction; lower first")
    direction: Literal["ingress", "egress"]
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    port: Annotated[str, StringConstraints(pattern=PORT_RANGE_PATTERN)] | None = Field(
        None, description="destination port N or range N-M (tcp and udp only)"
    )
    cidr: str = Field(description="the other side: source (ingress) or destination (egress)")
    action: Literal["allow", "deny"]


# -- flow logs (docs/flowlogs.md) -------------------------------------------------------

TrafficType = Literal["ALL", "ACCEPT", "REJECT"]


class FlowLogCreate(_Create):
    name: Name | None = Field(None, description="default: derived from the target")
    vpc: str | None = Field(None, description="log this VPC (name or id)")
    subnet: str | None = Field(None, description="log this subnet (name or id)")
    instance: str | None = Field(None, description="log this instance (name or id)")
    traffic_type: TrafficType = Field("ALL", description="which records: ALL, ACCEPT or REJECT")


MAX_FLOW_RECORDS = 5000  # per ingest request (docs/flowlogs.md)
_U64 = 2**53 - 1  # exact in JSON
# Bounds before the validator: nested in a union or a dict, bounds after it are published
# as "ge"/"le" keys that JSON Schema does not know.
_Port = Annotated[int, Field(ge=0, le=65535), BeforeValidator(_json_integer)]
_Count = Annotated[int, Field(ge=0, le=_U64), BeforeValidator(_json_integer)]


class FlowRecordIn(_Body):
    """One direction of one flow on one instance's interface, in one aggregation window."""

    instance: str = Field(max_length=64)
    interface: str = Field(max_length=64)
    flow_direction: Literal["ingress", "egress"]
    srcaddr: str = Field(max_length=45)
    dstaddr: str = Field(max_length=45)
    srcport: _Port | None = None
    dstport: _Port | None = None
    protocol: Int = Field(ge=0, le=255)
    packets: Int = Field(ge=0, le=_U64)
    bytes: Int = Field(ge=0, le=_U64)
    start: Number = Field(ge=0, le=1e11, allow_inf_nan=False, description="unix seconds")
    end: Number = Field(ge=0, le=1e11, allow_inf_nan=False, description="unix seconds")
    action: Literal["ACCEPT", "REJECT"]


class FlowBatch(_Body):
    records: list[FlowRecordIn] = Field(
        default_factory=list, description=f"at most {MAX_FLOW_RECORDS} (422 beyond)"
    )
    skipped: dict[Annotated[str, StringConstraints(max_length=64)], _Count] = Field(
        default_factory=dict,
        description="records dropped by the agent since its last post, per instance id",
    )


# -- fleet hot patches (docs/fleetpatch.md) ---------------------------------------------------

MAX_PATCH_BYTES = 16 << 20  # a .yhp uploaded at most (the base64 text is 4/3 of it)
MAX_HEALTH_WINDOW = 3600
MAX_PATCH_REPORTS = 100  # patches in one report of an agent
MAX_PATCH_PROCESSES = 5000  # processes in one patch's report
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
PatchState = Literal["applying", "applied", "failed", "rolling_back", "rolled_back"]
ProcessResult = Literal["applied", "refused", "busy", "died", "rolled_back", "rollback_failed"]


class PatchCreate(_Body):
    """A fleet patch: the .yhp (`yunhan hotpatch build`) and where and how it rolls out.
    `labels` selects hosts (the patch itself carries none)."""

    name: Name
    content: str = Field(
        max_length=(MAX_PATCH_BYTES + 2) // 3 * 4, description="the .yhp file, base64"
    )
    digest: Sha256 = Field(description="sha256 (hex) of the file, as the client computed it")
    zone: str | None = Field(None, description="only hosts of this zone (name or id)")
    hosts: list[Name] = Field(
        default_factory=list, max_length=10_000, description="only these hosts (empty: all)"
    )
    labels: Labels = Field(
        default_factory=dict, description="only hosts with all these labels (key: value)"
    )
    canary: Int = Field(1, ge=0, le=10_000, description="hosts patched first, alone")
    max_parallel: Int = Field(1, ge=1, le=10_000, description="hosts patched at once after")
    health_window: Int = Field(
        30,
        ge=0,
        le=MAX_HEALTH_WINDOW,
        description="seconds a patched host must stay healthy before the next step",
    )
    auto_rollback: Bool = Field(
        True, description="a process that dies in the health window rolls everything back"
    )


class PatchProcessReport(_Body):
    pid: Int = Field(ge=1, le=2**31 - 1)
    start: Int = Field(ge=0, le=2**53 - 1, description="its start time (clock ticks since boot)")
    comm: str = Field(max_length=64)
    instance: str | None = Field(None, max_length=64, description="its instance's id, if any")
    result: ProcessResult
    reason: str | None = Field(None, max_length=1000)
    at: Number = Field(ge=0, le=1e11, allow_inf_nan=False, description="unix seconds")


class PatchReport(_Body):
    patch: str = Field(max_length=64, description="the patch's id")
    state: PatchState
    message: str | None = Field(None, max_length=1000, description="why, when state is failed")
    processes: list[PatchProcessReport] = Field(
        default_factory=list, max_length=MAX_PATCH_PROCESSES
    )


class PatchReports(_Body):
    reports: list[PatchReport] = Field(max_length=MAX_PATCH_REPORTS)


# -- functions (docs/functions.md) -----------------------------------------------------------
# Memory, timeout and env are checked by the deploy (422 naming the rule and the host's
# limit), not by the schema: their bounds depend on the hosts registered.

MAX_FUNCTION_SOURCE = 50 << 20  # bytes of the tar.gz (yunhan.functions.bundle.MAX_PACKED)
MAX_SCALE = 1000
MAX_IDLE_GRACE = 86_400
MAX_FUNCTION_ENV = 256


class FunctionSource(_Body):
    tar_gz: str = Field(
        max_length=(MAX_FUNCTION_SOURCE + 2) // 3 * 4,
        description="the source as a tar.gz, base64 (`yunhan function deploy --source`)",
    )


# Bounds before the validator, as _Port's: on `Int | None` they would be published as
# "ge"/"le" keys that JSON Schema does not know (and clients would not see them).
_Concurrency = Annotated[int, Field(ge=1, le=MAX_SCALE), BeforeValidator(_json_integer)]
_MinScale = Annotated[int, Field(ge=0, le=MAX_SCALE), BeforeValidator(_json_integer)]
_MaxScale = Annotated[int, Field(ge=1, le=MAX_SCALE), BeforeValidator(_json_integer)]
_IdleGrace = Annotated[int, Field(ge=0, le=MAX_IDLE_GRACE), BeforeValidator(_json_integer)]
_ScaleWindow = Annotated[int, Field(ge=6, le=3600), BeforeValidator(_json_integer)]


class FunctionScaling(_Body):
    """What is not per version; absent: unchanged (defaults on the first deploy)."""

    concurrency: _Concurrency | None = Field(
        default=None, description="target in-flight requests per worker (1)"
    )
    min_scale: _MinScale | None = Field(default=None, description="workers kept warm (0)")
    max_scale: _MaxScale | None = Field(default=None, description="workers at most (10)")
    idle_grace_s: _IdleGrace | None = Field(
        default=None, description="seconds idle before scaling to zero (30)"
    )
    scale_window_s: _ScaleWindow | None = Field(
        default=None,
        description="the scaler's stable window in seconds (60); the panic window is a tenth",
    )


class FunctionCreate(FunctionScaling):
    """A deploy: a new function with version 1, or the next version of the function of
    that name, with this code and config."""

    name: Name
    labels: Labels | None = Field(None, description="its labels (absent: unchanged)")
    handler: str = Field(max_length=255, description="module.func, e.g. main.handler")
    source: FunctionSource
    memory_mb: Int = Field(128, description="MB, 64 to the hosts' limit")
    timeout_s: Number = Field(3.0, description="seconds, 1 to 900")
    env: dict[str, Annotated[str, StringConstraints(max_length=32_768)]] = Field(
        default_factory=dict, max_length=MAX_FUNCTION_ENV, description="environment variables"
    )
    vpc: str | None = Field(None, description="run in this VPC (name or id), with `subnet`")
    subnet: str | None = Field(None, description="run in this subnet (name or id) of the VPC")


class FunctionSpecPatch(FunctionScaling):
    model_config = ConfigDict(extra="forbid")

    traffic: dict[Annotated[str, StringConstraints(pattern=r"^v?[0-9]{1,9}$")], Int] | None = Field(
        default=None,
        max_length=100,
        description='{"<version>": percent} summing to 100; null: all to the latest',
    )


class FunctionPatch(Patch):
    """The PATCH of a function: labels, traffic and scaling (a new version is a deploy)."""

    spec: FunctionSpecPatch = Field(default_factory=lambda: FunctionSpecPatch())


# -- volumes (docs/volumes.md) ---------------------------------------------------------------

MAX_TIERS = 16


class TierIn(_Body):
    keep_s: Int
    every_s: Int


Tiers = (
    Annotated[str, StringConstraints(max_length=200)]
    | Annotated[list[TierIn], Field(max_length=MAX_TIERS)]
)
# A time: ISO 8601 or unix seconds.
TimeIn = Annotated[str, StringConstraints(max_length=64)] | Number


class VolumeCreate(_Create):
    name: Name
    size: Int = Field(description="bytes: whole GiB, at least 1 GiB")
    zone: str = Field(description="the zone (name or id)")
    tiers: Tiers | None = Field(
        None, description='protection tiers, "12h:1s,24h:1h,3d:1d" or a list; absent: none'
    )


class VolumeSpecPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: Int | None = None  # the new size (bytes): larger only


class VolumePatch(Patch):
    """The PATCH of a volume: its labels and its size (grow only, detached)."""

    spec: VolumeSpecPatch = Field(default_factory=VolumeSpecPatch)


class VolumeAttachIn(_Body):
    instance: str = Field(description="the instance (name or id)")
    path: str = Field("/data", max_length=200, description="where it is mounted inside")


class VolumeProtect(_Body):
    tiers: Tiers = "12h:1s,24h:1h,3d:1d"


class VolumeRestore(_Body):
    to: TimeIn = Field(description="ISO 8601 or unix seconds")


class VolumeClone(_Create):
    name: Name
    at: TimeIn = Field(description="ISO 8601 or unix seconds")
