"""Response shapes of the HTTP API (docs/api.md), as pydantic models.

They are what /openapi.json publishes (generated clients get types), and FastAPI checks
every answer against them: an answer that strays from its schema is a server error caught
in tests, never a silent surprise for a client.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from yunhan.model.schemas import Labels


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ErrorDetail(_Out):
    code: str = Field(description="invalid, bad_request, not_found, conflict, unauthorized, …")
    message: str = Field(description="a sentence a person can act on")
    details: dict[str, Any]


class ErrorBody(_Out):
    """Every error answer."""

    error: ErrorDetail


class _Envelope(_Out):
    id: str
    name: str
    project: str
    revision: int = Field(description="the store revision of the resource's last write")
    created_at: str
    labels: Labels


class Empty(_Out):
    pass


class ZoneSpec(_Out):
    underlay_cidr: str


class Zone(_Envelope):
    kind: Literal["zone"]
    spec: ZoneSpec
    status: Empty


class HostSpec(_Out):
    zone: str
    underlay_ip: str
    mtu: int
    volume_pool: int | None = Field(None, description="bytes of volume space (null: 100 GiB)")


class HostFunctions(_Out):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    endpoint: str = Field(description="where the router calls this host's function host")
    key: str | None = Field(None, description="its bearer key (shown to the admin only)")
    memory_mb: int = Field(description="the most one function may have")
    workers: int | None = Field(None, description="workers it held at its last report")


class HostDatapath(_Out):
    """docs/datapath.md. `instances`, `packets` and `errors` name every project's
    instances: the admin's only (a tenant sees the mode and why)."""

    mode: Literal["fast", "kernel"] | None = None
    reason: str | None = None
    instances: dict[str, str] | None = None
    packets: dict[str, int] | None = None
    errors: list[str] | None = None


class HostStatus(_Out):
    vtep_index: int | None
    desired_revision: int | None
    applied_revision: int | None
    heartbeat_at: str | None
    healthy: bool
    condition: Literal["ready", "lost"] | None = Field(
        None, description="the controller's verdict on its lease (written on each change)"
    )
    error: str | None
    functions: HostFunctions | None = Field(
        None, description="its function host, when it runs functions"
    )
    datapath: HostDatapath | None = Field(
        None, description="which data path it forwards with, as its agent last said"
    )


class Host(_Envelope):
    kind: Literal["host"]
    spec: HostSpec
    status: HostStatus


class VpcSpec(_Out):
    cidrs: list[str]


class VpcStatus(_Out):
    vni: int
    next_index: int | None = Field(None, description="the next per-VPC index to give out")


class Vpc(_Envelope):
    kind: Literal["vpc"]
    spec: VpcSpec
    status: VpcStatus


class SubnetSpec(_Out):
    vpc: str
    cidr: str
    route_table: str | None = Field(None, description="its route table (absent: the default)")
    acl: str | None = Field(None, description="its network ACL (absent: none, all passes)")
    location: str | None = Field(None, description="absent: the cloud; `idc:SITE`: an IDC's")
    serve: str | None = Field(
        None, description="an IDC subnet: where it is served now, `idc` or `cloud`"
    )


class SubnetStatus(_Out):
    gateway: str
    available: int
    index: int | None = Field(None, description="its selector in the VPC's data plane")


class Subnet(_Envelope):
    kind: Literal["subnet"]
    spec: SubnetSpec
    status: SubnetStatus


class InstanceSpec(_Out):
    subnet: str
    zone: str
    ip: str | None
    command: list[str] | None
    security_groups: list[str] = Field(
        default_factory=list, description="its security group ids (none: unfiltered)"
    )


class Migration(_Out):
    at: str
    from_host: str | None
    to_host: str
    from_zone: str
    to_zone: str


class InstanceStatus(_Out):
    ip: str
    mac: str
    vpc: str
    host: str | None
    phase: Literal["pending", "scheduled", "running", "failed", "stopped"]
    message: str | None = None
    netns: str | None = None
    uts: str | None = None
    migrations: list[Migration] = Field(
        default_factory=list, description="its last moves between hosts, oldest first"
    )


class Instance(_Envelope):
    kind: Literal["instance"]
    spec: InstanceSpec
    status: InstanceStatus


class Project(_Envelope):
    kind: Literal["project"]
    spec: Empty
    status: Empty


class _Page(_Out):
    next: str | None = Field(
        description="opaque cursor of the next page (`?cursor=`), null on the last page"
    )
    revision: int = Field(description="the store revision the page was read at")


class ZoneList(_Page):
    items: list[Zone]


class HostList(_Page):
    items: list[Host]


class VpcList(_Page):
    items: list[Vpc]


class SubnetList(_Page):
    items: list[Subnet]


class InstanceList(_Page):
    items: list[Instance]


class ProjectList(_Page):
    items: list[Project]


class Whoami(_Out):
    project: Project
    admin: bool


class ProjectCreated(_Out):
    project: Project
    token: str


class TokenCreated(_Out):
    token: str


class Revision(_Out):
    revision: int


class Converged(_Out):
    model_config = ConfigDict(extra="allow")

    revision: int
    converged: bool
    pending: list[str]
    unhealthy: list[str]
    failed: list[str]
    controller_revision: int


# -- distributed routing (docs/routing.md) ----------------------------------------------


class NextHopSpec(_Out):
    type: Literal["instance", "natgw", "vip", "blackhole", "hybrid"]
    id: str | None = None
    ip: str | None = None


class RouteTableSpec(_Out):
    vpc: str
    default: bool


class RouteTableStatus(_Out):
    index: int


class RouteTable(_Envelope):
    kind: Literal["route_table"]
    spec: RouteTableSpec
    status: RouteTableStatus


class RouteTableList(_Page):
    items: list[RouteTable]


class RouteSpec(_Out):
    vpc: str
    table: str
    dst: str
    priority: int
    next_hop: NextHopSpec


class Route(_Envelope):
    kind: Literal["route"]
    spec: RouteSpec
    status: Empty


class PolicyRouteSpec(_Out):
    vpc: str
    table: str
    priority: int
    src: str | None
    dst: str | None
    proto: Literal["tcp", "udp", "icmp", "any"]
    port: list[int] | None = Field(description="[lo, hi] destination ports, or null")
    action: Literal["drop", "allow", "reroute"]
    next_hop: NextHopSpec | None


class PolicyRouteStatus(_Out):
    index: int


class PolicyRoute(_Envelope):
    kind: Literal["policy_route"]
    spec: PolicyRouteSpec
    status: PolicyRouteStatus


class TableEntry(_Out):
    """One route of a table as it stands now (docs/routing.md, "Route types")."""

    type: Literal["direct", "host", "default", "custom", "hybrid"]
    dst: str
    priority: int | None = Field(description="custom routes only")
    next_hop: str | None = Field(description="instance:NAME, natgw:NAME, vip:IP, blackhole; "
                                 "null for direct routes")  # fmt: skip
    state: Literal["active", "standby", "unreachable"]
    id: str | None = Field(description="the route's id (custom routes only)")
    subnet: str | None = Field(description="default routes: the subnet it serves (name)")
    host: str | None = Field(description="host routes: where the instance runs")


class PolicyEntry(_Out):
    id: str
    priority: int
    src: str | None
    dst: str | None
    proto: str
    port: list[int] | None
    action: str
    next_hop: str | None
    state: Literal["active", "unreachable"]


class TableRoutes(_Out):
    """Every route of a table: generated (direct, host, default) and custom, ordered by
    prefix length (longest first), then type, then priority; and its policy routes."""

    table: str
    name: str
    vpc: str
    default: bool
    subnets: list[str] = Field(description="names of the subnets associated with it")
    revision: int
    routes: list[TableEntry]
    policies: list[PolicyEntry]


class Forward(_Out):
    proto: Literal["tcp", "udp"]
    port: int
    instance: str
    to_port: int


class NatGwSpec(_Out):
    vpc: str
    subnets: list[str]
    forwards: list[Forward]


class NatGwMove(_Out):
    at: str
    to: str | None
    reason: str
    model_config = ConfigDict(extra="allow")


class NatGwStatus(_Out):
    index: int
    host: str | None
    public_ip: str
    phase: Literal["pending", "active", "unplaced"]
    moved_at: str | None
    history: list[NatGwMove]


class NatGw(_Envelope):
    kind: Literal["natgw"]
    spec: NatGwSpec
    status: NatGwStatus


class NatGwList(_Page):
    items: list[NatGw]


class EipStatus(_Out):
    address: str
    instance: str | None
    natgw: str | None


class Eip(_Envelope):
    kind: Literal["eip"]
    spec: Empty
    status: EipStatus


class EipList(_Page):
    items: list[Eip]


# -- trace (GET /v1/trace; yunhan.net.trace) ------------------------------------------------


class TracePolicy(_Out):
    id: str
    table: str = Field(description="the route table the policy route belongs to")
    priority: int
    action: Literal["drop", "allow", "reroute"]
    rule_pref: int = Field(description="the pref of its ip rule in the VPC namespace")
    match: str
    nexthop: str
    taken: bool = Field(description="false: a reroute whose next hop is down (falls through)")


class TraceRoute(_Out):
    type: Literal["custom", "policy", "default", "direct", "host", "local", "nat"]
    dst: str
    kernel_table: int
    id: str
    table: str
    priority: int | None
    target: str
    via: Literal["local", "remote", "blackhole", "unreachable", "deliver", "uplink"]
    port: str
    peer: str
    host_route: str


class TraceHop(_Out):
    host: str
    place: Literal["instance", "vpc", "natgw", "host", "internet"]
    ref: str
    vni: int | None
    iif: str
    oif: str
    mark: int | None
    subnet: str
    table: str
    policy: TracePolicy | None
    route: TraceRoute | None
    nat: str
    note: str
    dropped: bool
    src: str = Field(description="the packet as it arrives at this hop (NAT changes it)")
    dst: str
    proto: str
    dport: int | None


class TraceResult(_Out):
    """What `GET /v1/trace` answers: one packet followed hop by hop (the model)."""

    src: str
    src_ip: str
    src_host: str
    src_port: str
    src_subnet: str
    selector: int | None
    dst: str
    proto: Literal["tcp", "udp", "icmp"]
    port: int | None
    verdict: Literal["delivered", "dropped", "internet"]
    reason: str
    detail: str
    hops: list[TraceHop]
    delivered_to: str
    vpc: str
    dst_instance: str = Field(description='the instance `to` named ("" for an address)')
    dst_host: str | None = Field(description="that instance's host")
    names: dict[str, str] = Field(description="names of the resources the trace mentions")
    text: str = Field(description="the trace for a person (what `yunhan trace` prints)")


# -- security groups ---------------------------------------------------------------------


class SgPeer(_Out):
    cidr: str | None = None
    sg: str | None = Field(None, description="a group of the same VPC (id)")


class SgRule(_Out):
    id: str
    direction: Literal["ingress", "egress"]
    proto: Literal["tcp", "udp", "icmp", "any"]
    port: list[int] | None = Field(description="[lo, hi] destination ports, or null: any")
    peer: SgPeer
    action: Literal["allow", "deny"]
    priority: int


class SecurityGroupSpec(_Out):
    vpc: str
    default: bool
    rules: list[SgRule]


class SecurityGroup(_Envelope):
    kind: Literal["security_group"]
    spec: SecurityGroupSpec
    status: Empty


class SecurityGroupList(_Page):
    items: list[SecurityGroup]


class AclRule(_Out):
    number: int
    direction: Literal["ingress", "egress"]
    proto: Literal["tcp", "udp", "icmp", "any"]
    port: list[int] | None
    cidr: str
    action: Literal["allow", "deny"]


class NetworkAclSpec(_Out):
    vpc: str
    rules: list[AclRule]


class NetworkAcl(_Envelope):
    kind: Literal["network_acl"]
    spec: NetworkAclSpec
    status: Empty


class NetworkAclList(_Page):
    items: list[NetworkAcl]


class FlowLogSpec(_Out):
    vpc: str = Field(description="the VPC of the target (id)")
    scope: Literal["vpc", "subnet", "instance"]
    target: str = Field(description="the id of the VPC, subnet or instance logged")
    filter: Literal["ALL", "ACCEPT", "REJECT"]


class FlowLog(_Envelope):
    kind: Literal["flow_log"]
    spec: FlowLogSpec
    status: Empty


class FlowLogList(_Page):
    items: list[FlowLog]


class FlowRecordOut(_Out):
    """One stored flow record (docs/flowlogs.md); for SKIPDATA, `packets` is the number of
    records the agent dropped, and the traffic fields are null."""

    id: int
    project: str
    vpc: str
    subnet: str
    instance: str
    interface: str | None
    host: str
    flow_direction: Literal["ingress", "egress"] | None
    srcaddr: str | None
    dstaddr: str | None
    srcport: int | None
    dstport: int | None
    protocol: int | None
    packets: int
    bytes: int
    start: float = Field(description="unix seconds")
    end: float = Field(description="unix seconds")
    action: Literal["ACCEPT", "REJECT"] | None
    log_status: Literal["OK", "SKIPDATA"]
    received_at: float = Field(description="unix seconds, the server's clock")


class FlowRecordPage(_Out):
    items: list[FlowRecordOut] = Field(description="newest first (by start)")
    more: bool = Field(description="more records matched than `limit`")


class TopTalker(_Out):
    """One key's totals; the fields of other keys are null (`by=pair`: srcaddr, dstaddr;
    `instance`: instance; `port`: protocol, dstport)."""

    srcaddr: str | None = None
    dstaddr: str | None = None
    instance: str | None = None
    protocol: int | None = None
    dstport: int | None = None
    bytes: int
    packets: int
    flows: int = Field(description="records summed")


class TopTalkers(_Out):
    vpc: str
    by: Literal["pair", "instance", "port"]
    since: float = Field(description="unix seconds: the window's start")
    until: float = Field(description="unix seconds: the window's end (now)")
    items: list[TopTalker] = Field(description="most bytes first")


# -- VIPs (docs/vips.md) ---------------------------------------------------------------------


class VipSpec(_Out):
    subnet: str
    vpc: str
    ip: str
    allowed: list[str] = Field(description="ids of the instances that may hold it")


class VipChange(_Out):
    at: str
    from_: str | None = Field(alias="from", description="the previous holder (instance id)")
    to: str | None = Field(description="the new holder (instance id); null: nobody")
    cause: str = Field(description="claim, move, disallowed, instance deleted")
    epoch: int


class VipStatus(_Out):
    holder: str | None = Field(description="the instance holding it (id); null: nobody")
    holder_zone: str | None
    holder_host: str | None
    epoch: int = Field(description="bumped by every change of holder; fences stale claims")
    delivered_to: str | None = Field(
        description="the instance the data plane delivers it to: the holder, except while "
        "a flap is damped"
    )
    history: list[VipChange] = Field(description="the last 20 changes of holder")
    recent_changes: list[float]
    damped_since: str | None


class Vip(_Envelope):
    kind: Literal["vip"]
    spec: VipSpec
    status: VipStatus


class VipList(_Page):
    items: list[Vip]


class VipClaimResult(_Out):
    vip_ip: str
    vpc: str
    instance: str
    result: Literal["won", "held", "stale", "not_allowed", "not_here", "unknown"]
    vip: str | None = Field(description="the VIP's id (null: no VIP at that address)")
    holder: str | None
    epoch: int = Field(description="the VIP's epoch after the claim (the one to claim with)")


class VipClaimResults(_Out):
    results: list[VipClaimResult]


# -- fleet hot patches (docs/fleetpatch.md) -----------------------------------------------------

PatchPhase = Literal["canary", "rolling", "paused", "done", "rolling_back", "rolled_back", "failed"]
HostPatchState = Literal["waiting", "applying", "applied", "failed", "rolling_back", "rolled_back"]


class PatchSpec(_Out):
    digest: str = Field(description="sha256 (hex) of the .yhp file")
    size: int
    patch_id: str = Field(description="the manifest's patch id")
    build_id: str = Field(description="the GNU build-id of the object it patches")
    target: str = Field(description="that object's name (soname or file name)")
    functions: list[str] = Field(description="the functions it replaces (old symbols)")
    zone: str | None = Field(description="only hosts of this zone (id)")
    hosts: list[str] = Field(description="only these hosts (empty: all)")
    labels: dict[str, str] = Field(description="only hosts with all these labels")
    canary: int
    max_parallel: int
    health_window: int = Field(description="seconds")
    auto_rollback: bool


class PatchCounts(_Out):
    applied: int
    refused: int
    died: int
    busy: int
    rolled_back: int


class PatchHost(PatchCounts):
    want: Literal["apply", "rollback"] | None = Field(
        description="what the host's agent is asked to do (null: nothing yet)"
    )
    state: HostPatchState = Field(description="what the host's agent last said")
    applied_at: str | None = Field(description="when its state became applied")
    reported_at: str | None
    message: str | None = Field(None, description="the agent's reason, when it failed")


class PatchStatus(_Out):
    phase: PatchPhase
    message: str
    targets: list[str] = Field(description="the hosts chosen at create, in rollout order")
    canary_hosts: list[str]
    started_at: str
    finished_at: str | None
    hosts: dict[str, PatchHost]
    counts: PatchCounts = Field(description="processes per result, over every host")


class FleetPatch(_Envelope):
    kind: Literal["patch"]
    spec: PatchSpec
    status: PatchStatus


class FleetPatchList(_Page):
    items: list[FleetPatch]


class PatchProcess(_Out):
    host: str
    pid: int
    start: int = Field(description="the process's start time (clock ticks since boot)")
    comm: str
    instance: str | None
    result: Literal["applied", "refused", "busy", "died", "rolled_back", "rollback_failed"]
    reason: str | None
    at: float = Field(description="when the agent saw it (unix seconds)")


class FleetPatchDetail(FleetPatch):
    processes: list[PatchProcess] = Field(description="at most 1000, newest report first")


class PatchProcesses(_Out):
    items: list[PatchProcess] = Field(description="newest report first")
    more: bool = Field(description="more rows than `limit` matched")


class AgentPatch(_Out):
    id: str
    name: str
    digest: str
    patch_id: str
    build_id: str
    want: Literal["apply", "rollback"]
    health_window: int


class AgentPatches(_Out):
    patches: list[AgentPatch]
    etag: str = Field(
        "", description="names this list: given back as ?etag=, the call waits until it changes"
    )


# -- functions (docs/functions.md) -----------------------------------------------------------


class FunctionSpecOut(_Out):
    concurrency: int = Field(description="target in-flight requests per worker")
    min_scale: int = Field(description="workers kept warm")
    max_scale: int = Field(description="workers at most")
    idle_grace_s: int = Field(description="seconds idle before scaling to zero")
    scale_window_s: int = Field(
        60, description="the scaler's stable window (s); its panic window is a tenth"
    )
    traffic: dict[str, int] | None = Field(
        description='{"<version>": percent} summing to 100; null: all to the latest'
    )
    vpc: str | None = Field(description="the VPC's id (null: an isolated network)")
    subnet: str | None = Field(description="the subnet's id")


class FunctionVersionSummary(_Out):
    version: int
    sha256: str = Field(description="sha256 of the source tar.gz")
    handler: str
    memory_mb: int
    timeout_s: float
    created: float = Field(description="unix seconds")


class FunctionStatus(_Out):
    # The router adds what it observes (workers per version): kept, not stripped.
    model_config = ConfigDict(extra="allow")

    latest_version: int
    versions: list[FunctionVersionSummary] = Field(description="oldest first")
    traffic: dict[str, int] = Field(
        description="the effective split: version -> percent, only versions that get some"
    )


class Function(_Envelope):
    kind: Literal["function"]
    spec: FunctionSpecOut
    status: FunctionStatus


class FunctionList(_Page):
    items: list[Function]


class FunctionVersion(FunctionVersionSummary):
    env: dict[str, str]


class FunctionVersions(_Out):
    function: str = Field(description="the function's id")
    items: list[FunctionVersion] = Field(description="oldest first")


class UsageTotals(_Out):
    requests: int
    errors: int
    cold_starts: int
    billed_ms: int
    gb_seconds: float
    cost: float


class UsageItem(UsageTotals):
    project: str = Field(description="the project's id")
    project_name: str | None = Field(description="the project's name (null: deleted since)")
    function: str | None = Field(description="the function's id (by function)")
    name: str | None = Field(description="the function's name (by function)")
    day: str | None = Field(description="YYYY-MM-DD, UTC (by day)")


class UsageReport(_Out):
    by: Literal["function", "day"]
    since: float | None
    project: str | None = Field(description="the project's id (null: every project)")
    currency: str
    prices: dict[str, float | str] = Field(description="per_request, per_gb_second, currency")
    items: list[UsageItem]
    totals: UsageTotals


# -- function invocations (yunhan.api.routes.invoke) --------------------------------------


class FunctionInvocation(_Out):
    request_id: str = Field(description="also the X-Request-Id of the response")
    version: int = Field(description="the version that ran (traffic split)")
    ok: bool = Field(description="false when the handler raised, timed out or ran out of memory")
    result: Any = Field(None, description="the handler's return value (when ok)")
    error: str | None = Field(None, description="what went wrong (when not ok)")
    traceback: str | None = Field(None, description="the handler's traceback, when it raised")
    duration_ms: float = Field(description="the handler's run time, measured in the worker")
    billed_duration_ms: int = Field(description="the duration rounded up to 1 ms")
    memory_mb: int
    cold_start: bool = Field(description="a worker was started for this request")


class FunctionLogs(_Out):
    function: str
    lines: list[str] = Field(description="host by host, each line prefixed by its host")


# -- AI services (yunhan.api.routes.ai) ----------------------------------------------------


class AiService(_Out):
    name: str
    input: Literal["text", "image", "audio"] = Field(description="what its event carries")
    memory_mb: int
    timeout_s: float
    enabled: bool = Field(description="deployed in this project as function ai-<name>")
    function: str | None = Field(description="that function's id, when enabled")


class AiServices(_Out):
    items: list[AiService]


# -- volumes (docs/volumes.md) ---------------------------------------------------------------

VolumePhase = Literal[
    "creating", "available", "attaching", "attached", "detaching", "restoring", "error", "deleting"
]


class VolumeTier(_Out):
    keep_s: int
    every_s: int


class VolumeAttachment(_Out):
    instance: str = Field(description="the instance's id")
    path: str


class VolumeRestoreSpec(_Out):
    to_ns: int
    serial: int = Field(description="bumped by every restore asked for")


class VolumeSource(_Out):
    volume: str = Field(description="the volume it was cloned from (id)")
    at_ns: int


class VolumeSpec(_Out):
    size: int = Field(description="bytes")
    zone: str
    tiers: list[VolumeTier] | None = Field(description="null: not protected")
    attachment: VolumeAttachment | None
    restore: VolumeRestoreSpec | None
    source: VolumeSource | None


class TimelineRangeOut(_Out):
    from_ns: int
    to_ns: int
    every_s: int


class VolumeStatus(_Out):
    phase: VolumePhase
    home: str | None = Field(description="the host chosen at create")
    host: str | None = Field(description="the host whose agent serves it now")
    message: str | None = None
    error: str | None = None
    device: str | None = None
    mounted: bool = False
    used_bytes: int = 0
    journal_bytes: int = 0
    base_bytes: int = 0
    timeline: list[TimelineRangeOut] = Field(default_factory=list)
    restored_serial: int = 0
    fill: float = 0.0


class Volume(_Envelope):
    kind: Literal["volume"]
    spec: VolumeSpec
    status: VolumeStatus


class VolumeList(_Page):
    items: list[Volume]


class TimelinePoint(_Out):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    every_s: int


class VolumeTimeline(_Out):
    tiers: list[VolumeTier] | None
    points: list[TimelinePoint]
    oldest: str | None
    newest: str | None
    journal_bytes: int
    base_bytes: int
