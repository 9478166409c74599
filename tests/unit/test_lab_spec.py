"""The lab's region description: plan, validation, printing, round trip (no root needed)."""

from __future__ import annotations

import ipaddress

import pytest

from yunhan.errors import ValidationError
from yunhan.lab.spec import REGION_PREFIX_RE, RegionSpec, new_prefix


def test_default_plan_is_two_zones_of_two_hosts() -> None:
    spec = RegionSpec.build(prefix="yh0abc")
    assert [z.name for z in spec.zones] == ["az1", "az2"]
    assert [h.name for h in spec.hosts] == ["az1-h1", "az1-h2", "az2-h1", "az2-h2"]
    assert spec.zones[0].cidr == "198.18.1.0/24" and spec.zones[0].gateway == "198.18.1.1"
    assert spec.zones[1].hosts[1].underlay_ip == "198.18.2.12"
    assert spec.zones[1].hosts[1].gateway == "198.18.2.1"
    assert spec.mtu == 1500


def test_every_address_is_in_the_benchmark_range_and_unique() -> None:
    spec = RegionSpec.build(prefix="yh0abc", zones=5, hosts_per_zone=7, mtu=9000)
    underlay = ipaddress.IPv4Network("198.18.0.0/15")
    ips = [h.underlay_ip for h in spec.hosts] + [z.gateway for z in spec.zones]
    ips += [spec.internet_ip, spec.internet_gateway]
    assert len(set(ips)) == len(ips)
    assert all(ipaddress.IPv4Address(ip) in underlay for ip in ips)
    for z in spec.zones:
        assert all(ipaddress.IPv4Address(h.underlay_ip) in ipaddress.IPv4Network(z.cidr)
                   for h in z.hosts)  # fmt: skip


def test_names_carry_the_prefix_and_interface_names_fit() -> None:
    spec = RegionSpec.build(prefix="yh0abc", zones=12, hosts_per_zone=30)
    assert all(ns.startswith("yh0abc-") for ns in spec.namespaces)
    assert len(set(spec.namespaces)) == len(spec.namespaces)
    assert spec.hosts[0].netns == "yh0abc-az1-h1"
    assert spec.hosts[0].agent_prefix == "yh0abc-az1-h1-"
    assert all(len(h.core_port) <= 15 for h in spec.hosts)
    assert all(len(h.core_port) <= 15 for h in spec.hosts)
    assert spec.owns("yh0abc-az1-h1-v4097") and not spec.owns("yh0abcd-core")


def test_new_prefix_shape() -> None:
    assert REGION_PREFIX_RE.match(new_prefix())


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"zones": 0}, "--zones"),
        ({"zones": 201}, "--zones"),
        ({"hosts_per_zone": 0}, "--hosts-per-zone"),
        ({"mtu": 1000}, "--mtu"),
        ({"mtu": 65000}, "--mtu"),
        ({"prefix": "Bad_Prefix"}, "prefix"),
        ({"prefix": "yh-"}, "prefix"),
    ],
)
def test_bad_input_is_rejected_with_the_flag_named(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        RegionSpec.build(**{"prefix": "yh0abc", **kwargs})  # type: ignore[arg-type]


def test_a_tampered_plan_fails_validation() -> None:
    spec = RegionSpec.build(prefix="yh0abc")
    data = spec.to_dict()
    data["zones"][1]["hosts"][0]["underlay_ip"] = data["zones"][0]["hosts"][0]["underlay_ip"]
    with pytest.raises(ValidationError):
        RegionSpec.from_dict(data)


def test_dict_round_trip_is_identity() -> None:
    spec = RegionSpec.build(prefix="t1-2", zones=3, hosts_per_zone=1, mtu=1400)
    assert RegionSpec.from_dict(spec.to_dict()) == spec


def test_render_lists_every_zone_and_host() -> None:
    text = RegionSpec.build(prefix="yh0abc", zones=2, hosts_per_zone=1, mtu=1450).render()
    assert "region yh0abc: 2 zones, 2 hosts" in text and "MTU 1450" in text
    assert "zone az2   198.18.2.0/24" in text
    assert "host az1-h1     198.18.1.11" in text and "netns yh0abc-az1-h1" in text
    assert "yh0abc-internet 198.19.0.2/24" in text
