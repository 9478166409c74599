"""End to end: UCloud's official SDK (ucloud-sdk-python3, unmodified) drives a lab region
through `/ucloud`, signing with a project's key pair made by `yunhan project keys create`.
Every step is checked through the SDK's typed answers and through `yunhan … --json`, as
the project; the UHosts run for real (namespaces on two hosts in two zones) and ping each
other; nothing of the region is left after `down`."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from region import CliError, Region, netns_names
from ucloud.client import Client
from ucloud.core import exc

from tests.polling import wait_for

pytestmark = pytest.mark.root


class Shop:
    """The region, project shop with its own token, and an SDK client with its key."""

    def __init__(self, region: Region, token: str, key: dict[str, Any], endpoint: str) -> None:
        self.r = region
        self.env = dict(region.env, YUNHAN_TOKEN=token)
        self.sdk = Client(
            {
                "region": "lab",
                "project_id": key["project"],
                "public_key": key["public_key"],
                "private_key": key["private_key"],
                "base_url": endpoint.rstrip("/") + "/ucloud",
                "max_retries": 2,
                "log_level": logging.WARNING,
            }
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [self.r.bin, *args], capture_output=True, text=True, env=self.env, timeout=180
        )
        if check and p.returncode != 0:
            raise CliError([self.r.bin, *args], p)
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)


@pytest.fixture(scope="module")
def shop() -> Iterator[Shop]:
    home = Path(tempfile.mkdtemp(prefix="yunhan-e2e-ucloud-"))
    r = Region(home)
    prefix = ""
    try:
        r.run("up", "--detach", "--zones", "2", "--hosts-per-zone", "1", timeout=300)
        prefix = json.loads((r.state / "region.json").read_text())["prefix"]
        token = r.json("project", "create", "shop")["token"]
        key = r.json("project", "keys", "create", "--project", "shop", "--description", "sdk")
        endpoint = json.loads((home / ".config" / "yunhan" / "config.json").read_text())
        yield Shop(r, token, key, endpoint["endpoint"])
    finally:
        r.run("down", check=False, timeout=300)
        try:
            leftovers = {n for n in netns_names() if prefix and n.startswith(f"{prefix}-")}
            assert not leftovers, f"yunhan down left namespaces behind: {leftovers}"
        finally:
            shutil.rmtree(home, ignore_errors=True)


def test_the_official_sdk_builds_a_network_runs_uhosts_and_tears_it_all_down(
    shop: Shop,
) -> None:
    vpc, uhost, unet = shop.sdk.vpc(), shop.sdk.uhost(), shop.sdk.unet()
    # a VPC with two blocks and a subnet
    vid = vpc.create_vpc({"Name": "web", "Network": ["10.10.0.0/16", "10.20.0.0/16"]})["VPCId"]
    sid = vpc.create_subnet(
        {"VPCId": vid, "Subnet": "10.10.1.0", "Netmask": 24, "SubnetName": "front"}
    )["SubnetId"]
    (mine,) = shop.json("vpc", "list")
    assert mine["name"] == "web" and mine["cidrs"] == ["10.10.0.0/16", "10.20.0.0/16"]
    # UHosts in both zones, described until they run
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
                "Password": "eA==",
            }
        )
        (ids[name],) = made["UHostIds"]

    def running() -> dict[str, Any] | None:
        got = uhost.describe_uhost_instance({"UHostIds": list(ids.values())})["UHostSet"]
        return {h["Name"]: h for h in got} if all(h["State"] == "Running" for h in got) else None

    hosts = wait_for(running, 60, "both UHosts running")
    assert {hosts["a"]["Zone"], hosts["b"]["Zone"]} == {"az1", "az2"}
    b_ip = hosts["b"]["IPSet"][0]["IP"]
    assert shop.json("instance", "show", "b")["ip"] == b_ip
    # one pings the other, across the zones
    p = shop.cli("instance", "exec", "a", "--", "ping", "-c", "2", "-W", "2", b_ip, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    # stopped, b runs nowhere and does not answer; started, it answers at the same address
    assert uhost.stop_uhost_instance({"UHostId": ids["b"]})["UHostId"] == ids["b"]
    shown = shop.json("instance", "show", "b")
    assert shown["phase"] == "stopped" and shown["ip"] == b_ip, json.dumps(shown)
    wait_for(
        lambda: (
            shop.cli(
                "instance", "exec", "a", "--", "ping", "-c", "1", "-W", "1", b_ip, check=False
            ).returncode
            != 0
        ),
        30,
        "b silent once stopped",
    )
    uhost.start_uhost_instance({"UHostId": ids["b"]})
    back = wait_for(running, 60, "b running again")
    assert back["b"]["IPSet"][0]["IP"] == b_ip and back["b"]["Zone"] == "az2"
    p = shop.cli("instance", "exec", "a", "--", "ping", "-c", "2", "-W", "2", b_ip, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    # a VIP, a route table with a rule, a NAT gateway with an EIP, a firewall
    (v,) = vpc.allocate_vip({"VPCId": vid, "SubnetId": sid, "Name": "db"})["VIPSet"]
    assert [x["ip"] for x in shop.json("vip", "list")] == [v["VIP"]]
    rt = vpc.create_route_table({"VPCId": vid, "Name": "via-a"})["RouteTableId"]
    vpc.modify_route_rule(
        {"RouteTableId": rt, "RouteRule": [f"|10.99.0.0/16|INSTANCE|{ids['a']}|0|to a|add"]}
    )
    vpc.associate_route_table({"RouteTableId": rt, "SubnetId": sid})
    routes = shop.json("route-table", "show", "via-a")["routes"]
    assert any(r["dst"] == "10.99.0.0/16" and r["type"] == "custom" for r in routes), routes
    (e1,) = unet.allocate_eip({"Bandwidth": 1, "OperatorName": "Bgp", "Name": "pub"})["EIPSet"]
    ngw = vpc.create_natgw(
        {
            "NATGWName": "out",
            "VPCId": vid,
            "SubnetworkIds": [sid],
            "EIPIds": [e1["EIPId"]],
            "FirewallId": "none",
        }
    )["NATGWId"]
    (gw,) = vpc.describe_natgw({"NATGWIds": [ngw]})["DataSet"]
    assert gw["SubnetSet"][0]["SubnetworkId"] == sid
    assert [g["name"] for g in shop.json("natgw", "list")] == ["out"]
    fw = unet.create_firewall({"Name": "ssh", "Rule": ["TCP|22|0.0.0.0/0|ACCEPT|HIGH"]})["FWId"]
    unet.grant_firewall({"FWId": fw, "ResourceType": "uhost", "ResourceId": ids["a"]})
    assert [g["name"] for g in shop.json("sg", "list") if g["name"] == "ssh"] == ["ssh"]
    # refusals: the SDK sees UCloud's codes, and nothing changed
    with pytest.raises(exc.RetCodeException) as e:
        vpc.create_subnet(
            {"VPCId": vid, "Subnet": "10.10.1.0", "Netmask": 24, "SubnetName": "again"}
        )
    assert e.value.code in (231, 234) and "10.10.1.0/24" in e.value.message
    # and everything goes
    vpc.delete_natgw({"NATGWId": ngw})
    unet.release_eip({"EIPId": e1["EIPId"]})
    vpc.release_vip({"VIPId": v["VIPId"]})
    for h in ids.values():
        uhost.terminate_uhost_instance({"UHostId": h})
    unet.delete_firewall({"FWId": fw})
    (table,) = vpc.describe_route_table({"VPCId": vid, "RouteTableId": rt})["RouteTables"]
    assert table["SubnetIds"] == [sid]
    default = next(
        t
        for t in vpc.describe_route_table({"VPCId": vid})["RouteTables"]
        if t["RouteTableType"] == 0
    )
    vpc.associate_route_table({"RouteTableId": default["RouteTableId"], "SubnetId": sid})
    vpc.delete_route_table({"RouteTableId": rt})
    vpc.delete_subnet({"SubnetId": sid})
    vpc.delete_vpc({"VPCId": vid})
    assert shop.json("vpc", "list") == [] and shop.json("instance", "list") == []
    assert vpc.describe_vpc({})["TotalCount"] == 0


def test_udisks_with_data_ark_clone_and_restore_to_a_second(shop: Shop) -> None:
    vpc, uhost, udisk = shop.sdk.vpc(), shop.sdk.uhost(), shop.sdk.udisk()
    vid = vpc.create_vpc({"Name": "store", "Network": ["10.30.0.0/16"]})["VPCId"]
    sid = vpc.create_subnet({"VPCId": vid, "Subnet": "10.30.1.0"})["SubnetId"]
    hosts = {}
    for name in ("w", "r"):
        (hosts[name],) = uhost.create_uhost_instance(
            {
                "Zone": "az1",
                "VPCId": vid,
                "SubnetId": sid,
                "Name": name,
                "ImageId": "any",
                "LoginMode": "Password",
                "Password": "eA==",
            }
        )["UHostIds"]

    def state(disk: str) -> str:
        found = udisk.describe_udisk({"UDiskId": disk})["DataSet"]
        assert len(found) == 1, (disk, udisk.describe_udisk({})["DataSet"])
        return str(found[0]["Status"])

    (data,) = udisk.create_udisk({"Name": "data", "Size": 1, "Zone": "az1", "UDataArkMode": "Yes"})[
        "UDiskId"
    ]
    assert data.startswith("bsm-")
    wait_for(lambda: state(data) == "Available", 60, "the UDisk available")
    (d,) = udisk.describe_udisk({"UDiskId": data})["DataSet"]
    assert d["Size"] == 1 and d["UDataArkMode"] == "Yes" and d["Zone"] == "az1"
    shown = shop.json("volume", "show", "data")
    assert shown["spec"]["size"] == 1 << 30 and shown["spec"]["tiers"], shown
    out = udisk.attach_udisk({"UDiskId": data, "UHostId": hosts["w"], "Zone": "az1"})
    assert out["DeviceName"] == "/data"
    wait_for(lambda: state(data) == "InUse", 60, "the UDisk in use")
    shop.cli("instance", "exec", "w", "--", "sh", "-c", "echo one > /data/f && sync")
    time.sleep(1.5)
    point = int(time.time())
    time.sleep(1.5)
    shop.cli("instance", "exec", "w", "--", "sh", "-c", "echo two > /data/f && sync")
    # a clone as the disk was at `point`, read from another UHost
    (past,) = udisk.clone_udisk_udataark(
        {"UDiskId": data, "SnapshotTime": point, "Name": "past", "Zone": "az1"}
    )["UDiskId"]
    wait_for(lambda: state(past) == "Available", 60, "the clone available")
    udisk.attach_udisk({"UDiskId": past, "UHostId": hosts["r"], "Zone": "az1"})
    wait_for(lambda: state(past) == "InUse", 60, "the clone in use")
    read = shop.cli("instance", "exec", "r", "--", "cat", "/data/f").stdout
    assert read == "one\n"
    # the disk itself restored in place, once detached
    udisk.detach_udisk({"UDiskId": data, "UHostId": hosts["w"], "Zone": "az1"})
    wait_for(lambda: state(data) == "Available", 60, "the UDisk detached")
    udisk.restore_udisk({"UDiskId": data, "SnapshotTime": point, "Zone": "az1"})
    wait_for(lambda: state(data) == "Available", 120, "the restore done")
    udisk.attach_udisk({"UDiskId": data, "UHostId": hosts["w"], "Zone": "az1"})
    wait_for(lambda: state(data) == "InUse", 60, "the UDisk in use again")
    assert shop.cli("instance", "exec", "w", "--", "cat", "/data/f").stdout == "one\n"
    # teardown
    for disk in (data, past):
        udisk.detach_udisk({"UDiskId": disk, "Zone": "az1"})
    for disk in (data, past):
        wait_for(lambda disk=disk: state(disk) == "Available", 60, "detached")
        udisk.delete_udisk({"UDiskId": disk, "Zone": "az1"})
    for h in hosts.values():
        uhost.terminate_uhost_instance({"UHostId": h})
    vpc.delete_subnet({"SubnetId": sid})
    vpc.delete_vpc({"VPCId": vid})
    wait_for(lambda: udisk.describe_udisk({})["TotalCount"] == 0, 60, "the UDisks gone")
