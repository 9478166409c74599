"""The lab switch's configuration: parsing, NETCONF XML both ways, the diff, the kernel."""

from __future__ import annotations

from typing import Any

import pytest

from yunhan.net import switchcfg
from yunhan.net.switchcfg import AclRule, SwitchConfig, SwitchConfigError, SwitchRoute

GOOD: dict[str, Any] = {
    "routes": [
        {"prefix": "10.9.0.0/16", "blackhole": True},
        {"prefix": "10.0.0.0/16", "next-hop": "198.19.33.11", "metric": 5},
    ],
    "acl": [
        {"seq": 20, "source": "10.0.0.0/16", "protocol": "icmp", "action": "permit"},
        {"seq": 10, "destination": "192.168.100.0/24"},
    ],
}


def test_a_configuration_is_read_sorted_with_defaults() -> None:
    cfg = switchcfg.parse(GOOD)
    assert cfg.routes == (
        SwitchRoute("10.0.0.0/16", "198.19.33.11", False, 5),
        SwitchRoute("10.9.0.0/16", None, True, 10),
    )
    assert cfg.acl == (
        AclRule(10, "0.0.0.0/0", "192.168.100.0/24", "any", "deny"),
        AclRule(20, "10.0.0.0/16", "0.0.0.0/0", "icmp", "permit"),
    )
    assert switchcfg.parse(None) == switchcfg.parse({}) == SwitchConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1], "a mapping with `routes` and `acl`"),
        ({"route": []}, "unknown field(s) route"),
        ({"routes": [{"prefix": "10.0.0.1/16", "blackhole": True}]}, "routes[0].prefix"),
        ({"routes": [{"prefix": "10.0.0.0/16"}]}, "either next-hop or blackhole"),
        ({"routes": [{"prefix": "10.0.0.0/16", "next-hop": "x"}]}, "not an IPv4 address"),
        ({"routes": [{"prefix": "10.0.0.0/16", "blackhole": "yes"}]}, "true or false"),
        ({"routes": [{"prefix": "10.0.0.0/16", "blackhole": True, "metric": -1}]}, "metric"),
        ({"routes": [{"prefix": "10.0.0.0/16", "blackhole": True}] * 2}, "listed twice"),
        ({"acl": [{"source": "10.0.0.0/8"}]}, "acl[0].seq"),
        ({"acl": [{"seq": 1, "protocol": "gre"}]}, "acl[0].protocol"),
        ({"acl": [{"seq": 1, "action": "allow"}]}, "permit or deny"),
        ({"acl": [{"seq": 1}, {"seq": 1}]}, "acl seq 1 is listed twice"),
        ({"acl": [{"seq": 1, "port": 22}]}, "unknown field(s) port"),
    ],
)
def test_a_bad_configuration_is_refused_naming_the_entry(data: Any, message: str) -> None:
    with pytest.raises(SwitchConfigError) as exc:
        switchcfg.parse(data)
    assert message in str(exc.value)


def test_the_xml_round_trips_and_replaces_the_whole_container() -> None:
    cfg = switchcfg.parse(GOOD)
    xml = switchcfg.to_xml(cfg)
    assert 'operation="replace"' in xml and "urn:yunhan:switch" in xml
    data = xml.replace("nc:config", "nc:data")  # get-config answers in a <data>
    assert switchcfg.from_xml(data) == cfg
    assert switchcfg.from_xml(switchcfg.to_xml(SwitchConfig())) == SwitchConfig()
    empty = '<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"/>'
    assert switchcfg.from_xml(empty) == SwitchConfig()
    assert switchcfg.parse(cfg.to_json()) == cfg
    assert switchcfg.parse(cfg.to_json()).digest() == cfg.digest()


def test_the_diff_names_each_added_removed_and_changed_entry() -> None:
    old = switchcfg.parse(GOOD)
    new = switchcfg.parse(
        {
            "routes": [{"prefix": "10.0.0.0/16", "next-hop": "198.19.33.12", "metric": 5}],
            "acl": [{"seq": 10, "destination": "192.168.100.0/24"}, {"seq": 30}],
        }
    )
    assert switchcfg.diff(old, new) == [
        "~ route 10.0.0.0/16 via 198.19.33.11 metric 5 -> route 10.0.0.0/16 via 198.19.33.12 "
        "metric 5",
        "- route 10.9.0.0/16 blackhole metric 10",
        "- acl 20 permit icmp from 10.0.0.0/16 to 0.0.0.0/0",
        "+ acl 30 deny from 0.0.0.0/0 to 0.0.0.0/0",
    ]
    assert switchcfg.diff(old, old) == []
    assert old.digest() != new.digest()


def test_the_kernel_plan_removes_stale_routes_and_rebuilds_the_acl_table() -> None:
    cfg = switchcfg.parse(GOOD)
    plan = switchcfg.kernel_plan(cfg, [("10.5.0.0/16", 10), ("10.0.0.0/16", 5)])
    assert plan.ip_batch == [
        "route del 10.5.0.0/16 proto 187 metric 10",
        "route replace 10.0.0.0/16 via 198.19.33.11 proto 187 metric 5",
        "route replace blackhole 10.9.0.0/16 proto 187 metric 10",
    ]
    assert plan.nft.startswith("table ip yunhan_switch\ndelete table ip yunhan_switch\n")
    rules = [line.strip() for line in plan.nft.splitlines() if "comment" in line]
    assert rules == [
        'ip daddr 192.168.100.0/24 counter drop comment "acl 10"',
        'ip saddr 10.0.0.0/16 meta l4proto icmp counter accept comment "acl 20"',
    ]


def test_a_delta_edits_only_what_changed() -> None:
    old = switchcfg.parse(GOOD)
    new = switchcfg.parse(
        {
            "routes": [{"prefix": "10.0.0.0/16", "next-hop": "198.19.33.11", "metric": 5}],
            "acl": [{"seq": 10, "destination": "192.168.100.0/24", "action": "permit"}],
        }
    )
    xml = switchcfg.delta_xml(old, new)
    assert xml is not None
    assert xml.count('operation="delete"') == 2  # route 10.9/16, acl 20
    assert xml.count('operation="replace"') == 1  # acl 10 changed
    assert "10.0.0.0/16" not in xml  # unchanged: not sent
    assert switchcfg.delta_xml(old, old) is None
