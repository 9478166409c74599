"""The UCloud-compatible Action API (docs/ucloud-api.md), driven by UCloud's official SDK
(ucloud-sdk-python3 from PyPI, unmodified) over real HTTP against a server on loopback,
and checked through Yunhan's own API: the same store, the same rules, the same audit."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from ucloud.client import Client
from ucloud.core import exc

from yunhan.api.ucloud import actions, wire

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def endpoint(cloud: Cloud) -> Iterator[str]:
    """The app of `cloud`, served over HTTP on loopback (the SDK speaks HTTP)."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            cloud.client.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/ucloud"
    server.should_exit = True
    t.join(timeout=5)


@pytest.fixture
def keys(cloud: Cloud, net: dict[str, Any]) -> dict[str, Any]:
    """A key pair of project tenant, made with the tenant's own token."""
    key = cloud.call("POST", "/v1/projects/tenant/keys", net["t"], json={"description": "sdk"})
    assert key["id"].startswith("key-") and key["private_key"]
    return key


def _client(endpoint: str, key: dict[str, Any], **over: Any) -> Client:
    cfg = {
        "region": "lab",
        "project_id": key["project"],
        "public_key": key["public_key"],
        "private_key": key["private_key"],
        "base_url": endpoint,
        "max_retries": 0,
        "log_level": logging.WARNING,
        **over,
    }
    return Client(cfg)


def test_signature_is_the_sdks() -> None:
    from ucloud.core.auth import Credential

    params = {"Action": "DescribeVPC", "Region": "lab", "Network.0": "10.0.0.0/16", "X": "true"}
    theirs = Credential("pub", "priv").verify_ac(dict(params))
    ours = wire.signature({**params, "PublicKey": "pub"}, "priv")
    assert ours == theirs


def test_a_vpc_with_two_blocks_and_a_subnet_through_the_sdk(
    cloud: Cloud, net: dict[str, Any], keys: dict[str, Any], endpoint: str
) -> None:
    vpc = _client(endpoint, keys).vpc()
    made = vpc.create_vpc({"Name": "shop", "Network": ["10.20.0.0/16", "10.30.0.0/16"]})
    vid = made["VPCId"]
    assert vid.startswith("uvnet-")
    # the same VPC through Yunhan's API, by its Yunhan id
    mine = cloud.call("GET", f"/v1/vpcs/{wire.to_yunhan('vpc', vid)}", net["t"])
    assert mine["name"] == "shop" and mine["spec"]["cidrs"] == ["10.20.0.0/16", "10.30.0.0/16"]
    vpc.add_vpc_network({"VPCId": vid, "Network": ["10.40.0.0/16"]})
    sid = vpc.create_subnet(
        {"VPCId": vid, "Subnet": "10.30.1.0", "Netmask": 24, "SubnetName": "shop-a"}
    )["SubnetId"]
    assert sid.startswith("subnet-")
    (info,) = vpc.describe_vpc({"VPCIds": [vid]})["DataSet"]
    assert info["Network"] == ["10.20.0.0/16", "10.30.0.0/16", "10.40.0.0/16"]
    assert info["SubnetCount"] == 1
    assert [(n["Network"], n["SubnetCount"]) for n in info["NetworkInfo"]] == [
        ("10.20.0.0/16", 0),
        ("10.30.0.0/16", 1),
        ("10.40.0.0/16", 0),
    ]
    assert info["CreateTime"] > 0 and info["Name"] == "shop"
    all_vpcs = vpc.describe_vpc({})
    assert all_vpcs["TotalCount"] == 2  # prod (made through Yunhan's API) and shop
    page = vpc.describe_vpc({"Offset": 1, "Limit": 1})["DataSet"]
    assert len(page) == 1
    (sub,) = vpc.describe_subnet({"VPCId": vid})["DataSet"]
    assert sub["SubnetId"] == sid and sub["SubnetName"] == "shop-a"
    assert (sub["Subnet"], sub["Netmask"], sub["Gateway"]) == ("10.30.1.0", "24", "10.30.1.1")
    assert sub["AvailableIPs"] == 253 and sub["HasNATGW"] is False
    assert sub["RouteTableId"].startswith("rt-") and sub["VPCName"] == "shop"
    # a subnet made through Yunhan's API is seen through the SDK, and the reverse
    cloud.call(
        "POST",
        "/v1/subnets",
        net["t"],
        json={"name": "shop-b", "vpc": "shop", "cidr": "10.20.5.0/24"},
    )
    names = {s["SubnetName"] for s in vpc.describe_subnet({"VPCId": vid})["DataSet"]}
    assert names == {"shop-a", "shop-b"}
    cloud.call("DELETE", "/v1/subnets/shop-b", net["t"])
    vpc.delete_subnet({"SubnetId": sid})
    vpc.delete_vpc({"VPCId": vid})
    assert [v["name"] for v in cloud.call("GET", "/v1/vpcs", net["t"])["items"]] == ["prod"]
    # every write is in the audit trail, under the key's id
    audit = cloud.call("GET", "/v1/audit", cloud.admin, params={"limit": 200})["items"]
    by_key = [a for a in audit if a.get("token_id") == keys["id"]]
    assert {(a["method"], a["path"].split("/")[2]) for a in by_key} >= {
        ("POST", "vpcs"),
        ("PATCH", "vpcs"),
        ("POST", "subnets"),
        ("DELETE", "subnets"),
        ("DELETE", "vpcs"),
    }


def _raw(
    endpoint: str, params: dict[str, Any], key: dict[str, Any] | None = None, sign: bool = True
) -> dict[str, Any]:
    body = {k: wire.encode_value(v) for k, v in params.items()}
    if key is not None:
        body["PublicKey"] = key["public_key"]
        if sign:
            body["Signature"] = wire.signature(body, key["private_key"])
    r = httpx.post(endpoint, data=body, timeout=10)
    assert r.status_code == 200
    out: dict[str, Any] = r.json()
    return out


def test_refusals_have_ucloud_codes_and_change_nothing(
    cloud: Cloud, net: dict[str, Any], keys: dict[str, Any], endpoint: str
) -> None:
    before = cloud.revision()
    create = {"Action": "CreateVPC", "Region": "lab", "Name": "x", "Network.0": "10.9.0.0/16"}
    assert _raw(endpoint, {"Region": "lab"}, keys)["RetCode"] == 160
    unknown = _raw(endpoint, {**create, "Action": "CreateFoo"}, keys)
    assert unknown["RetCode"] == 161 and "CreateVPC" in unknown["Message"]
    snap = _raw(endpoint, {**create, "Action": "CreateUDiskSnapshot"}, keys)
    assert snap["RetCode"] == 161 and "points in time" in snap["Message"]
    assert _raw(endpoint, create, keys, sign=False)["RetCode"] == 170
    bad = _raw(endpoint, {**create, "Signature": "0" * 40}, keys, sign=False)
    assert bad["RetCode"] == 171 and bad["Action"] == "CreateVPCResponse"
    stranger = {**keys, "public_key": "yhpk_nobody"}
    assert _raw(endpoint, create, stranger)["RetCode"] == 172
    other = _raw(endpoint, {**create, "ProjectId": "proj-00000000"}, keys)
    assert other["RetCode"] == 292
    missing = _raw(endpoint, {k: v for k, v in create.items() if k != "Name"}, keys)
    assert missing["RetCode"] == 230 and missing["Message"] == "Params [Name] not available"
    # the same refusal as Yunhan's API, with its message
    overlap = _raw(endpoint, {**create, "Name": "prod"}, keys)
    rest = cloud.rejected(
        "POST", "/v1/vpcs", 409, "", net["t"], json={"name": "prod", "cidrs": ["10.9.0.0/16"]}
    )
    assert overlap["RetCode"] == 234 and overlap["Message"] == rest["message"]
    badnet = _raw(endpoint, {**create, "Network.0": "10.9.0.0/33"}, keys)
    assert badnet["RetCode"] == 231 and "10.9.0.0/33" in badnet["Message"]
    assert cloud.revision() == before
    # a revoked pair is refused from its next request
    cloud.call("DELETE", f"/v1/projects/tenant/keys/{keys['id']}", net["t"])
    revoked = _raw(endpoint, create, keys)
    assert revoked["RetCode"] == 172 and "revoked" in revoked["Message"]


def test_the_sdk_retries_a_server_error_and_the_retry_writes_once(
    cloud: Cloud,
    net: dict[str, Any],
    keys: dict[str, Any],
    endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = actions.ACTIONS["CreateVPC"]
    calls = []

    async def flaky(ctx: actions.Ctx) -> dict[str, Any]:
        out = await real(ctx)  # the VPC is made...
        calls.append(out["VPCId"])
        if len(calls) == 1:  # ...and the answer is lost
            raise actions.ActionError(wire.SERVER_ERROR, "lost on the way")
        return out

    monkeypatch.setitem(actions.ACTIONS, "CreateVPC", flaky)
    vpc = _client(endpoint, keys, max_retries=2).vpc()
    made = vpc.create_vpc({"Name": "once", "Network": ["10.50.0.0/16"]})
    assert len(calls) == 2 and calls[0] == calls[1] == made["VPCId"]  # replayed, not redone
    names = sorted(v["name"] for v in cloud.call("GET", "/v1/vpcs", net["t"])["items"])
    assert names == ["once", "prod"]
    # Without retries the code reaches the caller, who may retry by hand: the same
    # request (same parameters, same signature) gets the first answer, not a conflict.
    calls.clear()
    plain = _client(endpoint, keys, max_retries=0).vpc()
    with pytest.raises(exc.RetCodeException) as e:
        plain.create_vpc({"Name": "twice", "Network": ["10.60.0.0/16"]})
    assert e.value.code == wire.SERVER_ERROR and e.value.retryable
    again = plain.create_vpc({"Name": "twice", "Network": ["10.60.0.0/16"]})
    assert again["VPCId"] == calls[0]


def test_key_pairs_are_the_projects_own(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    other = cloud.project("other")
    key = cloud.call("POST", "/v1/projects/tenant/keys", t, json={})
    listed = cloud.call("GET", "/v1/projects/tenant/keys", t)["items"]
    assert [k["id"] for k in listed] == [key["id"]]
    assert "private_key" not in listed[0]
    cloud.rejected("GET", "/v1/projects/tenant/keys", 403, "own", other)
    cloud.rejected("POST", "/v1/projects/tenant/keys", 403, "own", other, json={})
    assert cloud.call("GET", "/v1/projects/tenant/keys", cloud.admin)["items"]


def test_uhosts_vips_route_tables_nat_eips_and_firewalls_through_the_sdk(
    cloud: Cloud, net: dict[str, Any], keys: dict[str, Any], endpoint: str
) -> None:
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    st.public_pools = ["198.19.200.0/24"]
    c = _client(endpoint, keys)
    vpc, uhost, unet = c.vpc(), c.uhost(), c.unet()
    vid = wire.to_ucloud("vpc", net["vpc"]["id"])
    sid = wire.to_ucloud("subnet", net["web"]["id"])
    ids = {}
    for name, zone in (("a", "az1"), ("b", "az2")):
        made = uhost.create_uhost_instance(
            {
                "Zone": zone,
                "VPCId": vid,
                "SubnetId": sid,
                "Name": name,
                "ImageId": "any",
                "LoginMode": "Password",
                "Password": "c2VjcmV0",
                "CPU": 1,
                "Memory": 1024,
            }
        )
        (ids[name],) = made["UHostIds"]
        assert ids[name].startswith("uhost-") and made["IPs"][0].startswith("10.0.1.")
    got = uhost.describe_uhost_instance({"UHostIds": [ids["a"], ids["b"]]})
    assert got["TotalCount"] == 2
    by = {h["Name"]: h for h in got["UHostSet"]}
    assert by["a"]["Zone"] == "az1" and by["b"]["Zone"] == "az2"
    assert by["a"]["State"] == "Initializing"  # no agent runs here: it stays scheduled
    (ipset,) = by["a"]["IPSet"]
    assert ipset["VPCId"] == vid and ipset["SubnetId"] == sid and ipset["Type"] == "Private"
    rest = cloud.call("GET", "/v1/instances/a", net["t"])
    assert (
        rest["status"]["ip"] == ipset["IP"] and wire.to_ucloud("instance", rest["id"]) == ids["a"]
    )
    # stop: it runs nowhere and keeps its address; start: placed again in its zone
    assert uhost.stop_uhost_instance({"UHostId": ids["a"]})["UHostId"] == ids["a"]
    (h,) = uhost.describe_uhost_instance({"UHostIds": [ids["a"]]})["UHostSet"]
    assert h["State"] == "Stopped" and h["IPSet"][0]["IP"] == ipset["IP"]
    cloud.controller.reconcile_once()  # the controller places pending ones, not stopped ones
    stopped = cloud.call("GET", "/v1/instances/a", net["t"])["status"]
    assert stopped["host"] is None and stopped["phase"] == "stopped"
    uhost.stop_uhost_instance({"UHostId": ids["a"]})  # again: nothing changes
    uhost.start_uhost_instance({"UHostId": ids["a"]})
    (h,) = uhost.describe_uhost_instance({"UHostIds": [ids["a"]]})["UHostSet"]
    assert h["State"] == "Starting" and h["Zone"] == "az1"
    assert cloud.call("GET", "/v1/instances/a", net["t"])["status"]["host"] == "h1"
    with pytest.raises(exc.RetCodeException) as e:
        uhost.start_uhost_instance({"UHostId": ids["a"]})
    assert e.value.code == 234 and "not stopped" in e.value.message
    # a VIP
    vip = vpc.allocate_vip({"VPCId": vid, "SubnetId": sid, "Name": "db"})
    (v,) = vip["VIPSet"]
    assert v["VIPId"].startswith("vip-") and vip["DataSet"] == [v["VIP"]]
    assert vpc.describe_vip({"VPCId": vid})["DataSet"] == [v["VIP"]]
    # a route table with a rule, associated with the subnet
    rt = vpc.create_route_table({"VPCId": vid, "Name": "via-a"})["RouteTableId"]
    vpc.modify_route_rule(
        {
            "RouteTableId": rt,
            "RouteRule": [
                f"|10.9.0.0/16|INSTANCE|{ids['a']}|0|to a|add",
                f"|10.8.0.0/16|VIP|{v['VIPId']}|0|to the vip|add",
            ],
        }
    )
    vpc.associate_route_table({"RouteTableId": rt, "SubnetId": sid})
    (table,) = vpc.describe_route_table({"RouteTableId": rt})["RouteTables"]
    assert table["SubnetIds"] == [sid] and table["RouteTableType"] == 1
    custom = {r["DstAddr"]: r for r in table["RouteRules"] if r["RuleType"] == 1}
    assert custom["10.9.0.0/16"]["NexthopType"] == "INSTANCE"
    assert custom["10.8.0.0/16"]["NexthopId"] == v["VIP"]
    routes = cloud.call("GET", "/v1/route-tables/via-a/routes", net["t"])["routes"]
    assert {r["dst"] for r in routes if r["type"] == "custom"} == {"10.9.0.0/16", "10.8.0.0/16"}
    # a bad rule changes nothing: checked before anything is written
    before = cloud.revision()
    with pytest.raises(exc.RetCodeException) as e:
        vpc.modify_route_rule(
            {
                "RouteTableId": rt,
                "RouteRule": [
                    f"{custom['10.9.0.0/16']['RouteRuleId']}|10.9.0.0/16|INSTANCE|{ids['a']}|0||delete",
                    "|10.7.0.0/16|ULB|ulb-1|0||add",
                ],
            }
        )
    assert e.value.code == 231 and cloud.revision() == before
    # an EIP and a NAT gateway for the subnet, then the EIP on a UHost
    eip = unet.allocate_eip({"Bandwidth": 2, "OperatorName": "Bgp", "Name": "pub"})
    (e1,) = eip["EIPSet"]
    fw_required = "firewall-none"
    ngw = vpc.create_natgw(
        {
            "NATGWName": "out",
            "SubnetworkIds": [sid],
            "EIPIds": [e1["EIPId"]],
            "FirewallId": fw_required,
            "VPCId": vid,
        }
    )["NATGWId"]
    (gw,) = vpc.describe_natgw({"NATGWIds": [ngw]})["DataSet"]
    assert [s["SubnetworkId"] for s in gw["SubnetSet"]] == [sid] and gw["VPCName"] == "prod"
    unet.bind_eip({"EIPId": e1["EIPId"], "ResourceType": "uhost", "ResourceId": ids["b"]})
    (desc,) = unet.describe_eip({"EIPIds": [e1["EIPId"]]})["EIPSet"]
    assert desc["Status"] == "used" and desc["Resource"]["ResourceId"] == ids["b"]
    # a firewall, granted to a
    fw = unet.create_firewall(
        {"Name": "web", "Rule": ["TCP|22|10.0.0.0/8|ACCEPT|HIGH", "ICMP||0.0.0.0/0|ACCEPT|LOW"]}
    )["FWId"]
    unet.grant_firewall({"FWId": fw, "ResourceType": "uhost", "ResourceId": ids["a"]})
    (f,) = unet.describe_firewall({"FWId": fw})["DataSet"]
    assert f["ResourceCount"] == 1
    assert [(r["ProtocolType"], r["DstPort"], r["Priority"]) for r in f["Rule"]] == [
        ("TCP", "22", "HIGH"),
        ("ICMP", "", "LOW"),
    ]
    assert cloud.call("GET", "/v1/instances/a", net["t"])["spec"]["security_groups"] == [
        wire.to_yunhan("security_group", fw)
    ]
    unet.update_firewall({"FWId": fw, "Rule": ["UDP|53|0.0.0.0/0|DROP|MEDIUM"]})
    (f,) = unet.describe_firewall({"FWId": fw})["DataSet"]
    assert [(r["ProtocolType"], r["RuleAction"]) for r in f["Rule"]] == [("UDP", "DROP")]
    # and everything goes, in the order a user would tear it down
    unet.un_bind_eip({"EIPId": e1["EIPId"], "ResourceType": "uhost", "ResourceId": ids["b"]})
    unet.release_eip({"EIPId": e1["EIPId"]})
    vpc.delete_natgw({"NATGWId": ngw})
    vpc.release_vip({"VIPId": v["VIPId"]})
    for h in ids.values():
        uhost.terminate_uhost_instance({"UHostId": h})
    unet.delete_firewall({"FWId": fw})
    vpc.associate_route_table(
        {
            "RouteTableId": wire.to_ucloud("route_table", net["web"]["spec"]["route_table"]),
            "SubnetId": sid,
        }
    )
    vpc.delete_route_table({"RouteTableId": rt})
    for kind in ("instances", "vips", "eips", "natgws"):
        assert cloud.call("GET", f"/v1/{kind}", net["t"])["items"] == [], kind
    tables = cloud.call("GET", "/v1/route-tables", net["t"])["items"]
    assert [t["spec"]["default"] for t in tables] == [True]  # the VPC's own stays


def test_udisk_actions_reach_volumes_and_refuse_what_has_no_counterpart(
    cloud: Cloud, net: dict[str, Any], keys: dict[str, Any], endpoint: str
) -> None:
    udisk = _client(endpoint, keys).udisk()
    before = cloud.revision()
    with pytest.raises(exc.RetCodeException) as e:
        udisk.restore_udisk({"UDiskId": "bsm-00000000", "Zone": "az1", "SnapshotId": "s-1"})
    assert e.value.code == 231 and "SnapshotTime" in e.value.message
    with pytest.raises(exc.RetCodeException) as e:
        udisk.create_udisk({"Name": "Data Disk", "Size": 1, "Zone": "az1"})
    assert e.value.code == 231  # Yunhan's name rule, with its message
    with pytest.raises(exc.RetCodeException) as e:
        udisk.delete_udisk({"UDiskId": "bsm-00000000", "Zone": "az1"})
    assert e.value.code == 233
    assert cloud.revision() == before
    assert udisk.describe_udisk({})["TotalCount"] == 0
