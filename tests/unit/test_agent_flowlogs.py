"""The agent's flow logs without a kernel: which namespaces get collectors, the bounded
queue and its skipped counts, and shipping against a fake HTTP transport."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import httpx

from yunhan.agent.flowlogs import (
    MAX_BACKOFF,
    MAX_BATCH,
    FlowLogs,
    RecordQueue,
    logged_ports,
    next_delay,
)
from yunhan.net.desired import FlowLogDesired, HostDesired, Port, SubnetDesired, VpcDesired
from yunhan.net.flowcollect import LoggedPort, Record
from yunhan.net.naming import Naming

NAMING = Naming("t-")


def _rec(instance: str = "inst-1", n: int = 0) -> Record:
    return Record(instance, "p-1", "egress", "10.0.1.5", "10.0.1.6", 40000 + n % 20000, 80, 6,
                  1, 60, 1.0, 2.0, "ACCEPT")  # fmt: skip


def _doc(*flowlogs: FlowLogDesired) -> HostDesired:
    ports = (
        Port(instance_id="inst-1", ifname="p-1", ip="10.0.1.5", prefixlen=24,
             gateway="10.0.1.1", mac="02:00:00:00:00:01"),
        Port(instance_id="inst-2", ifname="p-2", ip="10.0.2.5", prefixlen=24,
             gateway="10.0.2.1", mac="02:00:00:00:00:02"),
    )  # fmt: skip
    subnets = (SubnetDesired(id="sub-a", cidr="10.0.1.0/24", index=1, table=1),
               SubnetDesired(id="sub-b", cidr="10.0.2.0/24", index=2, table=1))  # fmt: skip
    vpcs = (
        VpcDesired(id="vpc-1", vni=7, cidrs=("10.0.0.0/16",), gateways=(), ports=ports,
                   subnets=subnets, flowlogs=flowlogs),
        VpcDesired(id="vpc-2", vni=8, cidrs=("10.0.0.0/16",), gateways=()),
    )  # fmt: skip
    return HostDesired(host="h1", underlay_ip="198.18.0.1", vtep_index=1, vpcs=vpcs)


def test_only_namespaces_with_logged_ports_get_a_collector() -> None:
    assert logged_ports(_doc(), NAMING) == {}
    sub = FlowLogDesired(id="fl-1", scope="subnet", target="sub-b", filter="REJECT")
    inst = FlowLogDesired(id="fl-2", scope="instance", target="inst-2", filter="ACCEPT")
    assert logged_ports(_doc(sub), NAMING) == {
        "t-v7": {"p-2": LoggedPort("inst-2", "p-2", "10.0.2.5", "REJECT")}
    }
    assert logged_ports(_doc(sub, inst), NAMING)["t-v7"]["p-2"].filter == "ALL"
    whole = FlowLogDesired(id="fl-3", scope="vpc", target="vpc-1")
    assert set(logged_ports(_doc(whole), NAMING)["t-v7"]) == {"p-1", "p-2"}


def test_the_queue_is_bounded_and_counts_what_it_drops_per_instance() -> None:
    q = RecordQueue(limit=3)
    assert q.put([_rec("inst-1", i) for i in range(2)]) == 0
    assert q.put([_rec("inst-1", 2), _rec("inst-2", 3), _rec("inst-1", 4)]) == 2
    assert len(q) == 3 and q.skipped() == {"inst-1": 1, "inst-2": 1}
    q.skip({"inst-2": 5})
    batch, skipped = q.peek(2)
    assert [r.srcport for r in batch] == [40000, 40001] and skipped == {"inst-1": 1, "inst-2": 6}
    q.put([_rec("inst-3", 9)])  # full: one more skip arrives while the post is in flight
    q.done(len(batch), skipped)
    assert len(q) == 1 and q.skipped() == {"inst-3": 1}  # the new skip is kept


class _Server:
    """A fake control plane: answers with `status` (a list consumed in order) and keeps the
    bodies it accepted."""

    def __init__(self, *status: int) -> None:
        self.status = list(status)
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        code = self.status.pop(0) if self.status else 204
        if code == 204:
            self.bodies.append(json.loads(request.content))
        if code == 0:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(code, json={"detail": "no"} if code >= 300 else None)


def _flowlogs(server: _Server, queue: RecordQueue | None = None, **kw: Any) -> FlowLogs:
    client = httpx.Client(transport=httpx.MockTransport(server))
    return FlowLogs(naming=NAMING, client=client,
                    path=lambda tail: f"http://cp/v1/agent/hosts/h1{tail}", queue=queue,
                    **kw)  # fmt: skip


def test_batches_of_at_most_5000_and_failures_stay_queued() -> None:
    server = _Server(503, 0)
    errors: list[Exception] = []
    fl = _flowlogs(server, RecordQueue(limit=12_000), on_error=errors.append)
    fl.queue.put([_rec("inst-1", i) for i in range(12_000)])
    fl.queue.skip({"inst-1": 4})
    assert not fl.ship_once() and len(fl.queue) == 12_000  # 503: kept
    assert not fl.ship_once() and len(fl.queue) == 12_000 and len(errors) == 1  # unreachable
    sizes = []
    while len(fl.queue):
        assert fl.ship_once()
        sizes.append(len(server.bodies[-1]["records"]))
    assert sizes == [MAX_BATCH, MAX_BATCH, 2000]
    assert server.paths[-1] == "/v1/agent/hosts/h1/flows"
    assert server.bodies[0]["skipped"] == {"inst-1": 4}
    assert server.bodies[1]["skipped"] == {}  # said once
    first = server.bodies[0]["records"][0]
    assert first == {"instance": "inst-1", "interface": "p-1", "flow_direction": "egress",
                     "srcaddr": "10.0.1.5", "dstaddr": "10.0.1.6", "srcport": 40000,
                     "dstport": 80, "protocol": 6, "packets": 1, "bytes": 60, "start": 1.0,
                     "end": 2.0, "action": "ACCEPT"}  # fmt: skip
    assert fl.ship_once() and len(server.bodies) == 3  # nothing to send: no request


def test_a_refused_batch_is_dropped_and_counted_not_retried() -> None:
    server = _Server(422)
    fl = _flowlogs(server)
    fl.queue.put([_rec() for _ in range(3)])
    assert fl.ship_once() and len(fl.queue) == 0 and fl.refused == 3
    assert server.bodies == []


class _Collector:
    def __init__(self, netns: str, ports: Mapping[str, LoggedPort]) -> None:
        self.netns = netns
        self.ports: Mapping[str, LoggedPort] = dict(ports)
        self.started = self.stopped = False
        self.overruns = 0
        self.records: list[Record] = []

    def set_ports(self, ports: Mapping[str, LoggedPort]) -> None:
        self.ports = dict(ports)

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def poll(self) -> tuple[list[Record], Counter[str]]:
        out, self.records = self.records, []
        return out, Counter()


def test_collectors_follow_the_documents_and_stop_with_the_agent() -> None:
    made: dict[str, _Collector] = {}

    def factory(ns: str, ports: Mapping[str, LoggedPort]) -> _Collector:
        made[ns] = _Collector(ns, ports)
        return made[ns]

    fl = _flowlogs(_Server(), RecordQueue(limit=2), factory=factory, interval=3600)
    whole = FlowLogDesired(id="fl-3", scope="vpc", target="vpc-1")
    fl.update(_doc(whole))
    assert fl.namespaces == ["t-v7"] and not made["t-v7"].started
    fl.start()
    assert made["t-v7"].started
    inst = FlowLogDesired(id="fl-2", scope="instance", target="inst-2", filter="ACCEPT")
    fl.update(_doc(inst))
    assert set(made["t-v7"].ports) == {"p-2"}  # the same collector, its ports changed
    # Records beyond the queue's room are skipped; overruns count for REJECT-keeping ports.
    made["t-v7"].records = [_rec("inst-2", i) for i in range(3)]
    made["t-v7"].overruns = 2
    fl.update(_doc(whole))
    assert fl.poll_once() == 3
    assert fl.queue.skipped() == {"inst-2": 2, "inst-1": 1}
    fl.update(_doc())
    assert fl.namespaces == [] and made["t-v7"].stopped
    fl.update(_doc(whole))
    fl.stop()
    assert fl.namespaces == [] and made["t-v7"].stopped


def test_the_shipper_backs_off_on_failure_and_returns_to_the_interval() -> None:
    delays = [5.0]
    for ok in (False, False, False, False, False, False, True):
        delays.append(next_delay(delays[-1], ok, 5.0))
    assert delays == [5.0, 10.0, 20.0, 40.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF, 5.0]


def test_only_an_agent_on_the_kernel_collects(tmp_path: Any) -> None:
    from yunhan.agent.dataplane import DataPlane
    from yunhan.agent.main import Agent, AgentConfig

    def agent(driver: str) -> Agent:
        cfg = AgentConfig(api_url="http://cp", token="t", host_name="h1", zone="z",
                          underlay_ip="198.18.0.1", mtu=1500, host_netns=None, prefix="t-",
                          driver=driver, state_dir=tmp_path / driver)  # fmt: skip
        dp = DataPlane(naming=NAMING, host_netns=None, driver=driver, state_dir=cfg.state_dir)
        return Agent(cfg, dp, transport=httpx.MockTransport(_Server()))

    assert agent("fake").flowlogs is None
    fl = agent("linux").flowlogs
    assert fl is not None and fl.interval == 5.0 and fl.namespaces == []
