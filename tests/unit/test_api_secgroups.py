"""Security groups through the API (docs/secgroups.md): the default group made with its
VPC and given to new instances, rules, instances' groups, the documents hosts get, and
every bad input of issue 10 refused with a clear error that changes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from yunhan.net.desired import HostDesired
from yunhan.net.docentries import Delta, assemble

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


def _doc(cloud: Cloud, host: str) -> HostDesired:
    r = cloud.client.get(
        f"/v1/agent/hosts/{host}/desired", params={"after": 0, "timeout": 0}, headers=cloud.admin
    )
    d = Delta.from_json(r.json())
    return assemble(d.entries, host)


def _rule(cloud: Cloud, t: dict[str, str], sg: str, **body: Any) -> dict[str, Any]:
    return cloud.call("POST", f"/v1/security-groups/{sg}/rules", t, json=body)


@pytest.fixture
def sg(cloud: Cloud, net: dict[str, Any]) -> dict[str, Any]:
    """prod with instances a (default group) and b (groups web and default)."""
    t = net["t"]
    web = cloud.call("POST", "/v1/security-groups", t, json={"name": "web", "vpc": "prod"})
    a = cloud.call("POST", "/v1/instances", t, json={"name": "a", "subnet": "web", "zone": "az1"})
    b = cloud.call(
        "POST",
        "/v1/instances",
        t,
        json={"name": "b", "subnet": "web", "zone": "az1", "security_groups": ["web", "default"]},
    )
    return {**net, "sg_web": web, "a": a, "b": b}


def test_vpc_gets_default_group_and_instances_get_it(cloud: Cloud, sg: dict[str, Any]) -> None:
    t = sg["t"]
    groups = {g["name"]: g for g in cloud.call("GET", "/v1/security-groups", t)["items"]}
    assert set(groups) == {"prod-default", "web"}
    default = groups["prod-default"]
    assert default["spec"]["default"] is True and default["id"].startswith("sg-")
    rules = default["spec"]["rules"]
    assert {(r["direction"], r["peer"]["cidr"], r["peer"]["sg"]) for r in rules} == {
        ("egress", "0.0.0.0/0", None),
        ("ingress", None, default["id"]),
    }
    assert sg["a"]["spec"]["security_groups"] == [default["id"]]
    assert sg["b"]["spec"]["security_groups"] == [sg["sg_web"]["id"], default["id"]]


def test_rules_reach_the_documents(cloud: Cloud, sg: dict[str, Any]) -> None:
    t, web = sg["t"], sg["sg_web"]
    g = _rule(cloud, t, "web", direction="ingress", proto="tcp", port="22", peer="10.0.0.0/8")
    g = _rule(cloud, t, "web", direction="ingress", proto="tcp", port="80-90", peer="sg:web",
              action="deny", priority=10)  # fmt: skip
    assert [r["priority"] for r in g["spec"]["rules"]] == [10, 100]
    doc = _doc(cloud, "h1")
    (vpc,) = doc.vpcs
    groups = {x.id: x for x in vpc.groups}
    assert groups[web["id"]].members == (sg["b"]["status"]["ip"],)
    rules = groups[web["id"]].rules
    assert [(r.port_min, r.port_max, r.cidr, r.group, r.action) for r in rules] == [
        (80, 90, None, web["id"], "deny"),
        (22, 22, "10.0.0.0/8", None, "allow"),
    ]
    ports = {p.instance_id: p for p in vpc.ports}
    assert ports[sg["b"]["id"]].sgs == tuple(sorted(sg["b"]["spec"]["security_groups"]))
    # a rule deleted leaves the document
    rid = rules[0].id
    cloud.call("DELETE", f"/v1/security-groups/web/rules/{rid}", t)
    (vpc,) = _doc(cloud, "h1").vpcs
    assert [r.id for r in {x.id: x for x in vpc.groups}[web["id"]].rules] == [rules[1].id]


def test_set_sg_is_a_member_change(cloud: Cloud, sg: dict[str, Any]) -> None:
    t, web = sg["t"], sg["sg_web"]
    a = cloud.call("PUT", "/v1/instances/a/security-groups", t, json={"security_groups": ["web"]})
    assert a["spec"]["security_groups"] == [web["id"]]
    (vpc,) = _doc(cloud, "h1").vpcs
    members = {x.id: x.members for x in vpc.groups}[web["id"]]
    assert set(members) == {sg["a"]["status"]["ip"], sg["b"]["status"]["ip"]}


def test_bad_inputs_change_nothing(cloud: Cloud, sg: dict[str, Any]) -> None:
    t = sg["t"]
    path = "/v1/security-groups/web/rules"
    cloud.rejected("POST", path, 422, "a port matches only tcp or udp, not protocol icmp", t,
                   json={"direction": "ingress", "proto": "icmp", "port": "22",
                         "peer": "0.0.0.0/0"})  # fmt: skip
    cloud.rejected("POST", path, 422, "port range 90-80 runs backwards", t,
                   json={"direction": "ingress", "proto": "tcp", "port": "90-80",
                         "peer": "0.0.0.0/0"})  # fmt: skip
    cloud.rejected("POST", path, 422, "neither an IPv4 CIDR nor sg:NAME", t,
                   json={"direction": "ingress", "peer": "nowhere"})  # fmt: skip
    # a peer group of another VPC
    cloud.call("POST", "/v1/vpcs", t, json={"name": "other", "cidrs": ["10.9.0.0/16"]})
    cloud.call("POST", "/v1/security-groups", t, json={"name": "far", "vpc": "other"})
    cloud.rejected("POST", path, 422, "belongs to VPC other, not to VPC prod", t,
                   json={"direction": "ingress", "peer": "sg:far"})  # fmt: skip
    cloud.rejected("PUT", "/v1/instances/a/security-groups", 422, "belongs to VPC other", t,
                   json={"security_groups": ["far"]})  # fmt: skip
    cloud.rejected("POST", "/v1/instances", 422, "belongs to VPC other", t,
                   json={"name": "c", "subnet": "web", "zone": "az1",
                         "security_groups": ["far"]})  # fmt: skip
    # deleting a group still in use, or named by a rule, or a default group
    cloud.rejected("DELETE", "/v1/security-groups/web", 409, "still used by instance(s) b", t)
    cloud.rejected("DELETE", "/v1/security-groups/prod-default", 409, "default group", t)
    cloud.call("POST", "/v1/security-groups", t, json={"name": "ops", "vpc": "prod"})
    _rule(cloud, t, "ops", direction="ingress", peer="sg:web")
    cloud.call("PUT", "/v1/instances/b/security-groups", t, json={"security_groups": ["default"]})
    cloud.rejected("DELETE", "/v1/security-groups/web", 409, "peer of rules of group(s) ops", t)
    cloud.rejected("DELETE", "/v1/vpcs/prod", 409, "", t)
    cloud.rejected("POST", "/v1/security-groups/nope/rules", 404, "no security_group 'nope'", t,
                   json={"direction": "ingress", "peer": "0.0.0.0/0"})  # fmt: skip


def test_at_most_1000_rules(cloud: Cloud, sg: dict[str, Any]) -> None:
    from yunhan.model.secgroups import MAX_RULES_PER_GROUP

    t = sg["t"]
    g = cloud.call("GET", "/v1/security-groups/web", t)
    rules = [
        {"id": f"r-{i:08x}", "direction": "ingress", "proto": "tcp", "port": [i + 1, i + 1],
         "peer": {"cidr": "10.0.0.0/8"}, "action": "allow", "priority": 100}
        for i in range(MAX_RULES_PER_GROUP - 1)
    ]  # fmt: skip
    with cloud.store.transaction() as tx:
        res = tx.get("security_group", g["id"])
        assert res is not None
        tx.update(res, spec={**res.spec, "rules": rules})
    _rule(cloud, t, "web", direction="ingress", proto="tcp", port="2000", peer="10.0.0.0/8")
    cloud.rejected("POST", "/v1/security-groups/web/rules", 409, "holds 1000 rules, its most", t,
                   json={"direction": "ingress", "peer": "0.0.0.0/0"})  # fmt: skip


def test_acls_rules_associations_and_documents(cloud: Cloud, sg: dict[str, Any]) -> None:
    t = sg["t"]
    acl = cloud.call("POST", "/v1/acls", t, json={"name": "edge", "vpc": "prod"})
    assert acl["id"].startswith("acl-") and acl["spec"]["rules"] == []
    body = {"number": 10, "direction": "ingress", "proto": "tcp", "port": "22",
            "cidr": "10.0.0.0/8", "action": "deny"}  # fmt: skip
    acl = cloud.call("POST", "/v1/acls/edge/rules", t, json=body)
    out = {"number": 5, "direction": "egress", "cidr": "0.0.0.0/0", "action": "allow"}
    cloud.call("POST", "/v1/acls/edge/rules", t, json=out)
    sub = cloud.call("POST", "/v1/acls/edge/associations", t, json={"subnet": "web"})
    assert sub["spec"]["acl"] == acl["id"]
    (vpc,) = _doc(cloud, "h1").vpcs
    (a,) = vpc.acls
    assert a.subnets == ("10.0.1.0/24",)
    assert [(r.direction, r.number, r.action) for r in a.rules] == [
        ("egress", 5, "allow"),
        ("ingress", 10, "deny"),
    ]
    # bad inputs, changing nothing
    cloud.rejected("POST", "/v1/acls/edge/rules", 409, "already has ingress rule 10", t,
                   json=body)  # fmt: skip
    cloud.rejected("POST", "/v1/acls/edge/rules", 422, "not protocol icmp", t,
                   json={**body, "number": 11, "proto": "icmp"})  # fmt: skip
    cloud.rejected("POST", "/v1/acls/edge/rules", 422, "runs backwards", t,
                   json={**body, "number": 11, "port": "30-20"})  # fmt: skip
    cloud.rejected("DELETE", "/v1/acls/edge", 409, "still associated with subnet(s) web", t)
    cloud.call("POST", "/v1/vpcs", t, json={"name": "other", "cidrs": ["10.9.0.0/16"]})
    cloud.call("POST", "/v1/acls", t, json={"name": "far", "vpc": "other"})
    cloud.rejected("POST", "/v1/acls/far/associations", 422, "not in the VPC", t,
                   json={"subnet": "web"})  # fmt: skip
    cloud.call("DELETE", "/v1/acls/edge/rules/ingress/10", t)
    (vpc,) = _doc(cloud, "h1").vpcs
    assert [r.number for r in vpc.acls[0].rules] == [5]
