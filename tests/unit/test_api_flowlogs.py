"""Flow logs through the API (docs/flowlogs.md): the resources and every bad input (refused,
changing nothing), cascade deletes with their targets, tenancy, the ingest endpoint of the
shared contract, the record queries and top talkers, and retention."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from yunhan.store.flows import FlowRecord, FlowRecords, Retention

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]

T0 = 1_800_000_000.0  # the FakeClock's start


@pytest.fixture
def fl(cloud: Cloud, net: dict[str, Any]) -> dict[str, Any]:
    """prod/web with instances a (az1: h1) and b (az2: h2), and subnet db."""
    t = net["t"]
    a = cloud.call("POST", "/v1/instances", t, json={"name": "a", "subnet": "web", "zone": "az1"})
    b = cloud.call("POST", "/v1/instances", t, json={"name": "b", "subnet": "web", "zone": "az2"})
    db = cloud.call(
        "POST", "/v1/subnets", t, json={"name": "db", "vpc": "prod", "cidr": "10.0.2.0/24"}
    )
    assert a["status"]["host"] == "h1" and b["status"]["host"] == "h2"
    return {**net, "a": a, "b": b, "db": db}


def _rec(inst: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = {
        "instance": inst["id"],
        "interface": "p-0001",
        "flow_direction": "ingress",
        "srcaddr": "10.0.1.9",
        "dstaddr": inst["status"]["ip"],
        "srcport": 43122,
        "dstport": 22,
        "protocol": 6,
        "packets": 5,
        "bytes": 1000,
        "start": T0 - 10,
        "end": T0 - 5,
        "action": "ACCEPT",
    }
    r.update(kw)
    return r


def _post(cloud: Cloud, host: str, records: list[dict[str, Any]], **kw: Any) -> Any:
    r = cloud.client.post(
        f"/v1/agent/hosts/{host}/flows", json={"records": records, **kw}, headers=cloud.admin
    )
    return r


def _metric(cloud: Cloud, name: str) -> float:
    text = cloud.client.get("/metrics", headers=cloud.admin).text
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


# -- resources ---------------------------------------------------------------------------


def test_create_list_get_delete(cloud: Cloud, fl: dict[str, Any]) -> None:
    t = fl["t"]
    one = cloud.call("POST", "/v1/flow-logs", t, json={"subnet": "web"})
    assert one["kind"] == "flow_log" and one["id"].startswith("fl-")
    assert one["name"] == "web-subnet-all"
    assert one["spec"] == {
        "vpc": fl["vpc"]["id"],
        "scope": "subnet",
        "target": fl["web"]["id"],
        "filter": "ALL",
    }
    two = cloud.call(
        "POST",
        "/v1/flow-logs",
        t,
        json={"instance": "a", "traffic_type": "REJECT", "name": "a-rej", "labels": {"k": "v"}},
    )
    assert two["spec"]["vpc"] == fl["vpc"]["id"] and two["spec"]["scope"] == "instance"
    assert two["spec"]["filter"] == "REJECT" and two["labels"] == {"k": "v"}
    three = cloud.call("POST", "/v1/flow-logs", t, json={"vpc": fl["vpc"]["id"]})
    assert three["spec"]["target"] == fl["vpc"]["id"] and three["name"] == "prod-vpc-all"
    names = [x["name"] for x in cloud.call("GET", "/v1/flow-logs", t)["items"]]
    assert names == ["a-rej", "prod-vpc-all", "web-subnet-all"]
    assert len(cloud.call("GET", "/v1/flow-logs?vpc=prod", t)["items"]) == 3
    assert cloud.call("GET", f"/v1/flow-logs/{two['id']}", t)["name"] == "a-rej"
    assert cloud.call("GET", "/v1/flow-logs/a-rej", t)["id"] == two["id"]
    gone = cloud.call("DELETE", "/v1/flow-logs/a-rej", t)
    assert gone["id"] == two["id"]
    cloud.rejected("GET", "/v1/flow-logs/a-rej", 404, "no flow_log", t)


def test_flow_log_reaches_the_host_documents(cloud: Cloud, fl: dict[str, Any]) -> None:
    made = cloud.call("POST", "/v1/flow-logs", fl["t"], json={"instance": "a"})
    r = cloud.client.get(
        "/v1/agent/hosts/h1/desired", params={"after": 0, "timeout": 0}, headers=cloud.admin
    )
    key = f"vpc/{fl['vpc']['id']}/fl/{made['id']}"
    assert r.json()["entries"][key]["target"] == fl["a"]["id"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 422, "exactly one target"),
        ({"vpc": "prod", "subnet": "web"}, 422, "not vpc and subnet"),
        ({"subnet": "nope"}, 404, "no subnet 'nope'"),
        ({"instance": "nope"}, 404, "no instance 'nope'"),
        ({"vpc": "prod", "traffic_type": "SOME"}, 400, "traffic_type"),
        ({"vpc": "prod", "name": "Bad Name"}, 400, "name"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(
    cloud: Cloud, fl: dict[str, Any], body: dict[str, Any], status: int, message: str
) -> None:
    cloud.rejected("POST", "/v1/flow-logs", status, message, fl["t"], json=body)
    assert cloud.call("GET", "/v1/flow-logs", fl["t"])["items"] == []


def test_query_paths_are_not_flow_log_names(cloud: Cloud, fl: dict[str, Any]) -> None:
    t = fl["t"]
    cloud.rejected("POST", "/v1/flow-logs", 422, "cannot name a flow log", t,
                   json={"vpc": "prod", "name": "records"})  # fmt: skip
    r = cloud.client.delete("/v1/flow-logs/top", headers=t)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = cloud.client.options("/v1/flow-logs/records", headers=t)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = cloud.client.options("/v1/flow-logs/fl-00000000", headers=t)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, HEAD"


def test_same_target_and_filter_twice_is_409(cloud: Cloud, fl: dict[str, Any]) -> None:
    t = fl["t"]
    cloud.call("POST", "/v1/flow-logs", t, json={"subnet": "web"})
    cloud.rejected(
        "POST", "/v1/flow-logs", 409, "already logs ALL traffic", t, json={"subnet": "web"}
    )
    cloud.rejected(
        "POST",
        "/v1/flow-logs",
        409,
        "already logs ALL traffic",
        t,
        json={"subnet": fl["web"]["id"], "name": "other"},
    )
    # Another filter of the same target is another flow log; a taken name is a conflict.
    cloud.call("POST", "/v1/flow-logs", t, json={"subnet": "web", "traffic_type": "REJECT"})
    cloud.rejected(
        "POST",
        "/v1/flow-logs",
        409,
        "named web-subnet-all already exists",
        t,
        json={"vpc": "prod", "name": "web-subnet-all"},
    )
    assert len(cloud.call("GET", "/v1/flow-logs", t)["items"]) == 2


def test_default_name_steps_aside_for_a_taken_one(cloud: Cloud, fl: dict[str, Any]) -> None:
    t = fl["t"]
    cloud.call("POST", "/v1/flow-logs", t, json={"vpc": "prod", "name": "web-subnet-all"})
    made = cloud.call("POST", "/v1/flow-logs", t, json={"subnet": "web"})
    assert made["name"] == "web-subnet-all-2"


def test_idempotent_create(cloud: Cloud, fl: dict[str, Any]) -> None:
    h = {**fl["t"], "Idempotency-Key": "k1"}
    first = cloud.client.post("/v1/flow-logs", json={"vpc": "prod"}, headers=h)
    again = cloud.client.post("/v1/flow-logs", json={"vpc": "prod"}, headers=h)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["id"] == first.json()["id"]


def test_flow_logs_go_with_their_targets(cloud: Cloud, fl: dict[str, Any]) -> None:
    t = fl["t"]
    cloud.call("POST", "/v1/flow-logs", t, json={"instance": "a"})
    cloud.call("POST", "/v1/flow-logs", t, json={"instance": "a", "traffic_type": "REJECT"})
    keep = cloud.call("POST", "/v1/flow-logs", t, json={"instance": "b"})
    cloud.call("POST", "/v1/flow-logs", t, json={"subnet": "db"})
    cloud.call("POST", "/v1/flow-logs", t, json={"vpc": "prod"})

    def names() -> set[str]:
        return {x["name"] for x in cloud.call("GET", "/v1/flow-logs", t)["items"]}

    before = cloud.revision()
    cloud.call("DELETE", "/v1/instances/a", t)
    assert cloud.revision() == before + 1  # one transaction: the instance and its logs
    assert names() == {"b-instance-all", "db-subnet-all", "prod-vpc-all"}
    cloud.call("DELETE", "/v1/subnets/db", t)
    assert names() == {"b-instance-all", "prod-vpc-all"}
    cloud.call("DELETE", "/v1/instances/b", t)
    cloud.rejected("GET", f"/v1/flow-logs/{keep['id']}", 404, "no flow_log", t)
    cloud.call("DELETE", "/v1/subnets/web", t)
    assert names() == {"prod-vpc-all"}
    cloud.call("DELETE", "/v1/vpcs/prod", t)
    assert names() == set()


def test_tenancy(cloud: Cloud, fl: dict[str, Any]) -> None:
    t = fl["t"]
    mine = cloud.call("POST", "/v1/flow-logs", t, json={"vpc": "prod"})
    other = cloud.project("other")
    cloud.call("POST", "/v1/vpcs", other, json={"name": "prod", "cidrs": ["10.9.0.0/16"]})
    assert cloud.call("GET", "/v1/flow-logs", other)["items"] == []
    cloud.rejected("GET", f"/v1/flow-logs/{mine['id']}", 404, "no flow_log", other)
    cloud.rejected("DELETE", f"/v1/flow-logs/{mine['id']}", 404, "no flow_log", other)
    # Another project's target cannot be named, by name or id.
    cloud.rejected("POST", "/v1/flow-logs", 404, "no subnet", other, json={"subnet": "web"})
    cloud.rejected(
        "POST", "/v1/flow-logs", 404, "no instance", other, json={"instance": fl["a"]["id"]}
    )
    # "prod" of `other` is its own VPC.
    theirs = cloud.call("POST", "/v1/flow-logs", other, json={"vpc": "prod"})
    assert theirs["spec"]["vpc"] != mine["spec"]["vpc"]
    assert [x["id"] for x in cloud.call("GET", "/v1/flow-logs", t)["items"]] == [mine["id"]]


# -- ingest ------------------------------------------------------------------------------


def test_ingest_enriches_and_discards_other_hosts_instances(
    cloud: Cloud, fl: dict[str, Any]
) -> None:
    a, b = fl["a"], fl["b"]
    rev = cloud.revision()
    r = _post(
        cloud,
        "h1",
        [_rec(a), _rec(b), _rec({"id": "inst-00000000", "status": {"ip": "10.0.1.77"}})],
    )
    assert r.status_code == 204, r.text
    assert cloud.revision() == rev  # no revision moved
    got = cloud.call("GET", "/v1/flow-logs/records", fl["t"])
    assert got["more"] is False and len(got["items"]) == 1
    one = got["items"][0]
    assert one["instance"] == a["id"] and one["host"] == "h1"
    assert one["project"] == a["project"] and one["vpc"] == fl["vpc"]["id"]
    assert one["subnet"] == fl["web"]["id"] and one["log_status"] == "OK"
    assert (one["srcaddr"], one["srcport"], one["dstport"], one["protocol"]) == (
        "10.0.1.9",
        43122,
        22,
        6,
    )
    assert (one["packets"], one["bytes"], one["action"]) == (5, 1000, "ACCEPT")
    assert one["received_at"] == cloud.clock.now
    assert _metric(cloud, "yunhan_flow_records_received_total") == 3
    assert _metric(cloud, "yunhan_flow_records_discarded_total") == 2


def test_ingest_skipped_become_skipdata_records(cloud: Cloud, fl: dict[str, Any]) -> None:
    a, b = fl["a"], fl["b"]
    r = _post(cloud, "h1", [], skipped={a["id"]: 40, b["id"]: 7})
    assert r.status_code == 204
    items = cloud.call("GET", "/v1/flow-logs/records", fl["t"])["items"]
    assert len(items) == 1
    s = items[0]
    assert s["log_status"] == "SKIPDATA" and s["packets"] == 40 and s["instance"] == a["id"]
    assert s["action"] is None and s["srcaddr"] is None
    assert _metric(cloud, "yunhan_flow_records_skipped_total") == 40
    assert _metric(cloud, "yunhan_flow_records_discarded_total") == 7
    # SKIPDATA records are not accepted or rejected traffic.
    assert cloud.call("GET", "/v1/flow-logs/records?action=ACCEPT", fl["t"])["items"] == []


def test_ingest_limits_and_auth(cloud: Cloud, fl: dict[str, Any]) -> None:
    a = fl["a"]
    r = _post(cloud, "h1", [_rec(a)] * 5001)
    assert r.status_code == 422 and "at most 5000" in r.json()["error"]["message"]
    r = _post(cloud, "h1", [_rec(a, srcaddr="not-an-ip")])
    assert r.status_code == 422 and "records[0].srcaddr" in r.json()["error"]["message"]
    r = _post(cloud, "h1", [_rec(a, start=T0, end=T0 - 1)])
    assert r.status_code == 422 and "end is before start" in r.json()["error"]["message"]
    r = _post(cloud, "h1", [_rec(a, action="DROP")])
    assert r.status_code == 400
    r = _post(cloud, "h1", [_rec(a, dstport=70000)])
    assert r.status_code == 400
    r = _post(cloud, "nohost", [_rec(a)])
    assert r.status_code == 404
    # A tenant's token may not post records.
    r = cloud.client.post("/v1/agent/hosts/h1/flows", json={"records": []}, headers=fl["t"])
    assert r.status_code == 403
    assert cloud.call("GET", "/v1/flow-logs/records", fl["t"])["items"] == []
    ok = _post(cloud, "h1", [_rec(a)] * 5000)
    assert ok.status_code == 204
    assert len(cloud.call("GET", "/v1/flow-logs/records?limit=10000", fl["t"])["items"]) == 5000


def test_host_token_posts_only_for_its_host(cloud: Cloud, fl: dict[str, Any]) -> None:
    boot = cloud.call("POST", "/v1/hosts/h1/bootstrap-tokens", json={})
    made = cloud.call(
        "POST", "/v1/agent/hosts/h1/token", {"Authorization": f"Bearer {boot['token']}"}
    )
    h1 = {"Authorization": f"Bearer {made['token']}"}
    body = {"records": [_rec(fl["a"])]}
    assert cloud.client.post("/v1/agent/hosts/h1/flows", json=body, headers=h1).status_code == 204
    assert cloud.client.post("/v1/agent/hosts/h2/flows", json=body, headers=h1).status_code == 403


# -- queries -----------------------------------------------------------------------------


def _seed(cloud: Cloud, fl: dict[str, Any]) -> None:
    a, b = fl["a"], fl["b"]
    assert (
        _post(
            cloud,
            "h1",
            [
                _rec(a, start=T0 - 300, end=T0 - 295, bytes=100, packets=1),
                _rec(a, start=T0 - 100, end=T0 - 95, action="REJECT", dstport=23, bytes=60),
                _rec(a, start=T0 - 50, end=T0 - 45, srcaddr="10.0.1.8", bytes=5000, packets=9),
            ],
        ).status_code
        == 204
    )
    assert (
        _post(
            cloud,
            "h2",
            [
                _rec(b, start=T0 - 40, end=T0 - 35, bytes=700, packets=3),
                _rec(b, start=T0 - 30, end=T0 - 25, bytes=800, packets=4),
            ],
        ).status_code
        == 204
    )


def test_query_filters(cloud: Cloud, fl: dict[str, Any]) -> None:
    _seed(cloud, fl)
    t = fl["t"]

    def starts(query: str) -> list[float]:
        got = cloud.call("GET", f"/v1/flow-logs/records{query}", t)
        return [T0 - x["start"] for x in got["items"]]

    assert starts("") == [30, 40, 50, 100, 300]  # newest first
    assert starts("?instance=a") == [50, 100, 300]
    assert starts(f"?instance={fl['b']['id']}") == [30, 40]
    assert starts("?action=REJECT") == [100]
    assert starts("?vpc=prod&action=ACCEPT") == [30, 40, 50, 300]
    assert starts("?subnet=web") == [30, 40, 50, 100, 300]
    assert starts("?subnet=db") == []
    assert starts(f"?since={T0 - 100}") == [30, 40, 50, 100]
    assert starts(f"?since={T0 - 100}&until={T0 - 40}") == [50, 100]
    got = cloud.call("GET", "/v1/flow-logs/records?limit=2", t)
    assert got["more"] is True and len(got["items"]) == 2
    cloud.rejected("GET", "/v1/flow-logs/records?vpc=nope", 404, "no vpc 'nope'", t)
    cloud.rejected("GET", "/v1/flow-logs/records?limit=10001", 400, "limit", t)
    cloud.rejected("GET", "/v1/flow-logs/records?action=DROP", 400, "action", t)


def test_query_tenancy(cloud: Cloud, fl: dict[str, Any]) -> None:
    _seed(cloud, fl)
    other = cloud.project("other")
    assert cloud.call("GET", "/v1/flow-logs/records", other)["items"] == []
    cloud.rejected("GET", f"/v1/flow-logs/records?vpc={fl['vpc']['id']}", 404, "no vpc", other)
    cloud.rejected("GET", f"/v1/flow-logs/top?vpc={fl['vpc']['id']}", 404, "no vpc", other)
    # The admin sees every project's, and may name any project's VPC by id.
    assert len(cloud.call("GET", "/v1/flow-logs/records")["items"]) == 5
    vpc = fl["vpc"]["id"]
    assert len(cloud.call("GET", f"/v1/flow-logs/records?vpc={vpc}")["items"]) == 5


def test_top_orders_and_sums(cloud: Cloud, fl: dict[str, Any]) -> None:
    _seed(cloud, fl)
    t = fl["t"]
    a_ip, b_ip = fl["a"]["status"]["ip"], fl["b"]["status"]["ip"]
    pairs = cloud.call("GET", "/v1/flow-logs/top?vpc=prod&window=200", t)
    assert pairs["by"] == "pair" and pairs["vpc"] == fl["vpc"]["id"]
    assert pairs["until"] - pairs["since"] == 200
    got = [
        (x["srcaddr"], x["dstaddr"], x["bytes"], x["packets"], x["flows"]) for x in pairs["items"]
    ]
    assert got == [
        ("10.0.1.8", a_ip, 5000, 9, 1),
        ("10.0.1.9", b_ip, 1500, 7, 2),
        ("10.0.1.9", a_ip, 60, 5, 1),  # the record at T0-300 is out of the window
    ]
    inst = cloud.call("GET", "/v1/flow-logs/top?vpc=prod&window=600&by=instance", t)["items"]
    assert [(x["instance"], x["bytes"], x["flows"]) for x in inst] == [
        (fl["a"]["id"], 5160, 3),
        (fl["b"]["id"], 1500, 2),
    ]
    port = cloud.call("GET", "/v1/flow-logs/top?vpc=prod&window=600&by=port&limit=1", t)
    assert [(x["protocol"], x["dstport"], x["bytes"]) for x in port["items"]] == [(6, 22, 6600)]
    cloud.rejected("GET", "/v1/flow-logs/top", 400, "vpc", t)
    cloud.rejected("GET", "/v1/flow-logs/top?vpc=prod&by=host", 400, "by", t)


# -- retention ---------------------------------------------------------------------------


def _row(received_at: float, start: float = T0) -> FlowRecord:
    return FlowRecord(
        project="proj-1",
        vpc="vpc-1",
        subnet="subnet-1",
        instance="inst-1",
        interface="p-1",
        host="h1",
        flow_direction="egress",
        srcaddr="10.0.0.1",
        dstaddr="10.0.0.2",
        srcport=1,
        dstport=2,
        protocol=17,
        packets=1,
        bytes=10,
        start=start,
        end=start,
        action="ACCEPT",
        log_status="OK",
        received_at=received_at,
    )


def test_pruning_by_age_and_cap(cloud: Cloud) -> None:
    clock = cloud.clock
    flows = FlowRecords(
        cloud.store.engine, clock, Retention(max_age=3600, max_rows=10, every=60, batch=4)
    )
    flows.add([_row(clock.now - 7200 + i) for i in range(6)])  # first add prunes (nothing)
    assert flows.count() == 6
    flows.add([_row(clock.now)] * 3)  # within the minute: no prune
    assert flows.count() == 9
    clock.advance(60)
    flows.add([])  # a prune: at most 4 aged rows per run
    assert flows.count() == 5 and flows.pruned == 4
    assert flows.prune() == 2  # the rest of the backlog
    assert flows.count() == 3
    # The cap: beyond 10 rows the oldest go (by receipt), at most 4 per run.
    clock.advance(60)
    flows.add([_row(clock.now, start=float(i)) for i in range(10)])
    assert flows.count() == 13  # pruned before the insert: 3 + 10
    assert flows.prune() == 3
    items, _ = flows.query(_all(), 100)
    assert sorted(x["start"] for x in items) == [float(i) for i in range(10)]


def _all() -> Any:
    from yunhan.store.flows import Query

    return Query()


def test_ingest_prunes_at_most_once_a_minute(cloud: Cloud, fl: dict[str, Any]) -> None:
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    flows: FlowRecords = st.flows
    a = fl["a"]
    assert _post(cloud, "h1", [_rec(a)]).status_code == 204
    cloud.clock.advance(25 * 3600)
    later = T0 + 25 * 3600
    assert _post(cloud, "h1", [_rec(a, start=later, end=later)]).status_code == 204
    assert flows.count() == 1  # the day-old record went with the next ingest
    assert _metric(cloud, "yunhan_flow_records_pruned_total") == 1
