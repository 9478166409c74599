"""Port filter rendering and reading back (pure; the kernel round trip is in integration)."""

from __future__ import annotations

import copy
from typing import Any

from yunhan.net import nft

MAC = "02:aa:0a:01:01:0a"


def _listing(ifname: str, mac: str, ips: tuple[str, ...]) -> dict[str, Any]:
    """What `nft -j list table netdev yunhan` prints for a chain we wrote.

    The kernel drops the `meta protocol ip` dependency in front of `ip saddr` (it is
    implied), so the listing has one match fewer than what we sent; parsing must not care.
    """
    rules = nft.chain_rules(ifname, mac, ips)
    rules[1] = {**rules[1], "expr": rules[1]["expr"][1:]}
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "netdev", "name": "yunhan", "handle": 1}},
        {"chain": {"family": "netdev", "table": "yunhan", "name": ifname, "handle": 1}},
    ]
    items += [{"rule": {**r, "handle": i + 2}} for i, r in enumerate(rules)]
    return {"nftables": items}


def test_round_trip_single_and_set() -> None:
    got = nft.parse_table(_listing("p-1", MAC, ("10.1.1.10",)))
    assert got == {"p-1": (MAC, ("10.1.1.10",), False)}
    ips = ("10.1.1.10", "10.1.1.100", "10.1.1.9")
    got = nft.parse_table(_listing("p-2", MAC, ips))
    assert got == {"p-2": (MAC, ("10.1.1.9", "10.1.1.10", "10.1.1.100"), False)}


def test_a_forwarder_has_no_source_ip_rule_and_reads_back_as_one() -> None:
    rules = nft.chain_rules("p-1", MAC, ("10.1.1.10",), forwarder=True)
    assert [r["comment"] for r in rules] == ["mac", "arp-mac", "arp-ip", "proto"]
    items: list[dict[str, Any]] = [
        {"chain": {"family": "netdev", "table": "yunhan", "name": "p-1", "handle": 1}},
        *({"rule": {**r, "handle": i + 2}} for i, r in enumerate(rules)),
    ]
    assert nft.parse_table({"nftables": items}) == {"p-1": (MAC, ("10.1.1.10",), True)}
    # The plain chain with its source rule deleted by hand is a forwarder's chain: it
    # reads as one, which differs from the wanted filter, and is rewritten.
    plain = _listing("p-1", MAC, ("10.1.1.10",))
    plain["nftables"] = [i for i in plain["nftables"] if i.get("rule", {}).get("comment") != "ip"]
    assert nft.parse_table(plain)["p-1"][2] is True


def test_rules_cover_mac_ip_arp_and_other_ethertypes() -> None:
    rules = nft.chain_rules("p-1", MAC, ("10.1.1.10",))
    assert [r["comment"] for r in rules] == ["mac", "ip", "arp-mac", "arp-ip", "proto"]
    assert all(r["expr"][-1] == {"drop": None} for r in rules)
    arp_ip = rules[3]["expr"][1]["match"]
    # ARP probes (sender 0.0.0.0) are allowed; any other sender IP must be the port's.
    assert arp_ip["right"] == {"set": ["0.0.0.0", "10.1.1.10"]}
    assert rules[4]["expr"][0]["match"]["right"] == {"set": ["ip", "arp"]}


def test_batch_is_atomic_replace() -> None:
    b = nft.chain_batch("p-1", MAC, ("10.1.1.10",), exists=True)["nftables"]
    assert list(b[0]) == ["add"] and "table" in b[0]["add"]
    assert "delete" in b[1] and b[2]["add"]["chain"]["hook"] == "ingress"
    assert b[2]["add"]["chain"]["dev"] == "p-1"
    assert len(b) == 3 + 5


def test_hand_edited_chain_reads_as_broken() -> None:
    listing = _listing("p-1", MAC, ("10.1.1.10",))
    missing = copy.deepcopy(listing)
    missing["nftables"] = [
        i for i in missing["nftables"] if i.get("rule", {}).get("comment") != "arp-ip"
    ]
    assert nft.parse_table(missing)["p-1"][1] == nft.BROKEN
    accepting = copy.deepcopy(listing)
    accepting["nftables"][3]["rule"]["expr"][0]["match"]["op"] = "=="
    assert nft.parse_table(accepting)["p-1"][1] == nft.BROKEN
    extra = copy.deepcopy(listing)
    extra["nftables"].append({"rule": {"chain": "p-1", "expr": [{"accept": None}]}})
    assert nft.parse_table(extra)["p-1"][1] == nft.BROKEN


def test_hand_edited_verdict_or_protocol_set_reads_as_broken() -> None:
    # The MAC and IPs read back the same, but the rule no longer drops what it must: the
    # port would pass spoofed frames (or IPv6) while observation saw no drift.
    listing = _listing("p-1", MAC, ("10.1.1.10",))
    rule_of = {i["rule"]["comment"]: i["rule"] for i in listing["nftables"] if "rule" in i}
    for tag in ("mac", "ip", "arp-mac", "arp-ip", "proto"):
        accepting = copy.deepcopy(listing)
        r = next(
            i["rule"] for i in accepting["nftables"] if i.get("rule", {}).get("comment") == tag
        )
        r["expr"][-1] = {"accept": None}
        assert nft.parse_table(accepting)["p-1"][1] == nft.BROKEN, tag
    ipv6 = copy.deepcopy(listing)
    r = next(i["rule"] for i in ipv6["nftables"] if i.get("rule", {}).get("comment") == "proto")
    r["expr"][-2]["match"]["right"] = {"set": ["ip", "arp", "ip6"]}
    assert nft.parse_table(ipv6)["p-1"][1] == nft.BROKEN
    assert rule_of["proto"]["expr"][-1] == {"drop": None}


def test_kernel_listing_without_protocol_dependencies_reads_back() -> None:
    # What nft 1.0.6 really lists: every implied `meta protocol` match is left out.
    rules = nft.chain_rules("p-1", MAC, ("10.1.1.9", "10.1.1.10"))
    items: list[dict[str, Any]] = [
        {"chain": {"family": "netdev", "table": "yunhan", "name": "p-1", "handle": 1}}
    ]
    for r in rules:
        expr = r["expr"] if r["comment"] in ("mac", "proto") else r["expr"][1:]
        items.append({"rule": {**r, "expr": expr}})
    got = nft.parse_table({"nftables": items})
    assert got == {"p-1": (MAC, ("10.1.1.9", "10.1.1.10"), False)}


def test_a_protocol_match_that_is_not_a_payload_dependency_is_drift() -> None:
    listing = _listing("p-1", MAC, ("10.1.1.10",))
    narrowed = copy.deepcopy(listing)
    r = next(i["rule"] for i in narrowed["nftables"] if i.get("rule", {}).get("comment") == "mac")
    # Only IPv6 frames would have their source MAC checked: ARP could spoof it.
    r["expr"].insert(
        0, {"match": {"op": "==", "left": {"meta": {"key": "protocol"}}, "right": "ip6"}}
    )
    assert nft.parse_table(narrowed)["p-1"][1] == nft.BROKEN
