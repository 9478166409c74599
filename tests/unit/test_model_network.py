"""Validation rules of the network model: each bad input gets a clear message."""

from __future__ import annotations

import pytest

from yunhan.errors import Conflict, ValidationError
from yunhan.model import (
    capacity,
    check_block_removal,
    gateway,
    looks_like_id,
    new_id,
    reserved,
    validate_fixed_ip,
    validate_name,
    validate_subnet,
    validate_vpc_blocks,
)


@pytest.mark.parametrize(
    "cidrs",
    [
        ["10.0.0.0/8"],
        ["172.16.0.0/12"],
        ["192.168.0.0/16"],
        ["10.0.0.0/29"],
        ["10.0.0.0/16", "10.1.0.0/16"],
    ],
)
def test_good_vpc_blocks(cidrs: list[str]) -> None:
    assert validate_vpc_blocks("prod", cidrs) == tuple(cidrs)


@pytest.mark.parametrize(
    ("cidrs", "message"),
    [
        (["8.8.8.0/24"], "not inside a private range"),
        (["172.32.0.0/16"], "not inside a private range"),
        (["10.0.0.0/7"], "not inside a private range"),
        (["172.0.0.0/11"], "not inside a private range"),
        (["192.168.0.0/15"], "not inside a private range"),
        (["10.0.0.0/30"], "too small"),
        (["10.0.0.1/16"], "host bits set; did you mean 10.0.0.0/16"),
        (["10.0.0.0"], "not an IPv4 CIDR"),
        (["bogus/16"], "not an IPv4 CIDR"),
        (["10.0.0.0/16", "10.0.128.0/17"], "overlaps block 10.0.0.0/16 of VPC prod"),
        ([], "at least one"),
    ],
)
def test_bad_vpc_blocks(cidrs: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_vpc_blocks("prod", cidrs)


def test_subnet_rules() -> None:
    assert str(validate_subnet("prod", ["10.0.0.0/16"], "10.0.1.0/24", {})) == "10.0.1.0/24"
    assert str(validate_subnet("prod", ["10.0.0.0/16"], "10.0.0.0/16", {})) == "10.0.0.0/16"


def test_subnet_outside_vpc_message() -> None:
    with pytest.raises(ValidationError) as e:
        validate_subnet("prod", ["10.0.0.0/16"], "10.1.5.0/24", {})
    assert e.value.message == "10.1.5.0/24 is not inside any block of VPC prod (10.0.0.0/16)"


def test_subnet_straddling_two_blocks_refused() -> None:
    with pytest.raises(ValidationError, match="not inside any block"):
        validate_subnet("prod", ["10.0.0.0/24", "10.0.1.0/24"], "10.0.0.0/23", {})


def test_subnet_too_small_and_host_bits() -> None:
    with pytest.raises(ValidationError, match="too small"):
        validate_subnet("prod", ["10.0.0.0/16"], "10.0.1.0/30", {})
    with pytest.raises(ValidationError, match="host bits"):
        validate_subnet("prod", ["10.0.0.0/16"], "10.0.1.1/24", {})


def test_subnet_overlap_names_the_other() -> None:
    with pytest.raises(Conflict, match=r"overlaps subnet web \(10.0.0.0/16\)"):
        validate_subnet("prod", ["10.0.0.0/8"], "10.0.1.0/24", {"web": "10.0.0.0/16"})


def test_reserved_and_gateway() -> None:
    assert gateway("10.0.1.0/24") == "10.0.1.1"
    assert reserved("10.0.1.0/24") == {"10.0.1.0", "10.0.1.1", "10.0.1.255"}
    assert capacity("10.0.1.0/24") == 253
    assert capacity("10.0.1.0/29") == 5


@pytest.mark.parametrize(
    ("ip", "exc", "message"),
    [
        ("10.0.1.0", ValidationError, "reserved"),
        ("10.0.1.1", ValidationError, "reserved"),
        ("10.0.1.255", ValidationError, "reserved"),
        ("10.0.2.5", ValidationError, r"not inside subnet web \(10.0.1.0/24\)"),
        ("10.0.1", ValidationError, "not an IPv4 address"),
        ("10.0.1.7", Conflict, "already used by instance db"),
    ],
)
def test_bad_fixed_ip(ip: str, exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        validate_fixed_ip("web", "10.0.1.0/24", ip, {"10.0.1.7": "db"})


def test_good_fixed_ip() -> None:
    assert validate_fixed_ip("web", "10.0.1.0/24", "10.0.1.2", {}) == "10.0.1.2"
    assert validate_fixed_ip("web", "10.0.1.0/24", "10.0.1.254", {}) == "10.0.1.254"


def test_block_removal() -> None:
    assert check_block_removal("prod", ["10.0.0.0/16", "10.1.0.0/16"], "10.1.0.0/16", {}) == (
        "10.0.0.0/16",
    )
    with pytest.raises(Conflict, match="still holds subnet"):
        check_block_removal(
            "prod", ["10.0.0.0/16", "10.1.0.0/16"], "10.1.0.0/16", {"web": "10.1.2.0/24"}
        )
    with pytest.raises(ValidationError, match="is not a block of VPC prod"):
        check_block_removal("prod", ["10.0.0.0/16"], "10.9.0.0/16", {})
    with pytest.raises(Conflict, match="last block"):
        check_block_removal("prod", ["10.0.0.0/16"], "10.0.0.0/16", {})


@pytest.mark.parametrize("name", ["a", "web-1", "0", "a" * 63])
def test_good_names(name: str) -> None:
    assert validate_name("vpc", name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a" * 64, "a.b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        validate_name("vpc", name)


def test_ids() -> None:
    i = new_id("instance")
    assert i.startswith("inst-") and len(i) == 13
    assert looks_like_id("instance", i)
    assert not looks_like_id("vpc", i)
    assert not looks_like_id("vpc", "prod")
