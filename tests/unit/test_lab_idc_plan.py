"""The plan of a lab IDC site (yunhan.lab.idc): names, addresses, the router's FRR config,
and what is refused. Building one: tests/integration/test_frr_linux.py and
tests/integration/test_lab_idc.py."""

from __future__ import annotations

import pytest

from yunhan.errors import ValidationError
from yunhan.lab import idc
from yunhan.lab.spec import RegionSpec

REGION = RegionSpec.build(prefix="yh1234", zones=1, hosts_per_zone=1)


def test_site_plan() -> None:
    site = idc.SiteSpec.build(
        REGION, "dc1", 2, ["192.168.100.0/24", "192.168.101.0/24"], servers=2, md5=True
    )
    assert site.netns == "yh1234-idc-dc1"
    assert (site.core_port, site.wan_ip, site.core_ip) == ("idc2", "198.19.16.2", "198.19.16.254")
    assert (site.line_cidr, site.router_ip, site.line_vni) == ("198.19.34.0/24", "198.19.34.1",
                                                               0x700002)  # fmt: skip
    assert site.lan_gateways == ("192.168.100.1/24", "192.168.101.1/24")
    assert [(s.netns, s.ip, s.gateway, s.port) for s in site.servers] == [
        ("yh1234-idc-dc1-s1", "192.168.100.10/24", "192.168.100.1", "s1"),
        ("yh1234-idc-dc1-s2", "192.168.100.11/24", "192.168.100.1", "s2"),
        ("yh1234-idc-dc1-s3", "192.168.101.10/24", "192.168.101.1", "s3"),
        ("yh1234-idc-dc1-s4", "192.168.101.11/24", "192.168.101.1", "s4"),
    ]
    assert site.line_mtu == 1450 and site.asn == 65001
    assert site.api_body() == {
        "cidrs": ["192.168.100.0/24", "192.168.101.0/24"],
        "asn": 65001,
        "router_ip": "198.19.34.1",
        "line_cidr": "198.19.34.0/24",
        "line_vni": 0x700002,
        "line_vtep": "198.19.16.2",
    }
    assert idc.SiteSpec.from_dict(site.to_dict()) == site
    assert all(REGION.owns(ns) for ns in site.namespaces)
    assert "dc1" in site.render() and "0x700002" in site.render()


def test_router_config() -> None:
    site = idc.SiteSpec.build(REGION, "dc1", 1, ["192.168.100.0/24"], md5=True)
    lines = idc.router_config(site, "s3cret").splitlines()
    group = lines.index(" neighbor CLOUD peer-group")
    assert lines.index(" bgp listen range 198.19.33.0/24 peer-group CLOUD") > group
    for line in (
        "router bgp 65001",
        " bgp router-id 198.19.33.1",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        " timers bgp 3 9",
        " neighbor CLOUD remote-as external",
        " neighbor CLOUD password s3cret",
        " neighbor CLOUD bfd",
        " neighbor CLOUD advertisement-interval 0",
        "  network 192.168.100.0/24",
        "  maximum-paths 8",
    ):
        assert line in lines
    with pytest.raises(ValidationError):
        idc.router_config(site, None)  # the plan says MD5
    with pytest.raises(ValidationError):
        idc.router_config(site, "bad secret")


@pytest.mark.parametrize(
    ("name", "cidrs", "kw"),
    [
        ("DC1", ["192.168.100.0/24"], {}),
        ("dc-1", ["192.168.100.0/24"], {}),
        ("averyveryverylongname", ["192.168.100.0/24"], {}),
        ("1dc", ["192.168.100.0/24"], {}),
        ("dc1", [], {}),
        ("dc1", ["192.168.100.0/24", "192.168.100.128/25"], {}),
        ("dc1", ["198.18.5.0/24"], {}),  # the lab's underlay
        ("dc1", ["192.168.100.1/24"], {}),  # host bits
        ("dc1", ["192.168.100.0/28"], {"servers": 8}),  # too small for 8 from .10
        ("dc1", ["192.168.100.0/24"], {"servers": 33}),
        ("dc1", ["192.168.100.0/24"], {"asn": 0}),
        ("dc1", ["192.168.100.0/24"], {"index": 96}),
    ],
)
def test_bad_sites_are_refused(name: str, cidrs: list[str], kw: dict[str, int]) -> None:
    index = kw.pop("index", 1)
    with pytest.raises(ValidationError):
        idc.SiteSpec.build(REGION, name, index, cidrs, **kw)  # type: ignore[arg-type]
