"""ipam, scheduler and status reflection: the pure reconcilers."""

from __future__ import annotations

import random

import pytest

from yunhan.controller.ipam import allocate_ip, allocate_mac, available
from yunhan.controller.scheduler import Candidate, schedule
from yunhan.controller.status import reflect
from yunhan.errors import Conflict, ValidationError


def test_lowest_free_address_from_the_third() -> None:
    assert allocate_ip("web", "10.0.1.0/24", {}, None) == "10.0.1.2"
    used = {"10.0.1.2": "a", "10.0.1.3": "b", "10.0.1.5": "c"}
    assert allocate_ip("web", "10.0.1.0/24", used, None) == "10.0.1.4"


def test_fixed_address() -> None:
    assert allocate_ip("web", "10.0.1.0/24", {}, "10.0.1.9") == "10.0.1.9"
    with pytest.raises(ValidationError, match="reserved"):
        allocate_ip("web", "10.0.1.0/24", {}, "10.0.1.1")
    with pytest.raises(Conflict, match="already used by instance a"):
        allocate_ip("web", "10.0.1.0/24", {"10.0.1.9": "a"}, "10.0.1.9")


def test_exhaustion() -> None:
    used = {f"10.0.1.{n}": f"i{n}" for n in range(2, 7)}
    with pytest.raises(Conflict, match=r"subnet tiny \(10.0.1.0/29\) has no free address"):
        allocate_ip("tiny", "10.0.1.0/29", used, None)
    assert available("10.0.1.0/29", 5) == 0 and available("10.0.1.0/29", 1) == 4


def test_mac_unique_and_local_prefix() -> None:
    rng = random.Random(1)
    first = allocate_mac(set(), random.Random(1))
    # Same seed: the first candidate is taken, so the allocator must move on.
    second = allocate_mac({first}, rng)
    assert first.startswith("fa:16:3e:") and second != first and len(second) == 17


def test_scheduler_prefers_healthy_then_least_loaded() -> None:
    hosts = [
        Candidate("h1", "z1", healthy=True, instances=3),
        Candidate("h2", "z1", healthy=True, instances=1),
        Candidate("h3", "z1", healthy=False, instances=0),
        Candidate("h4", "z2", healthy=True, instances=0),
    ]
    assert schedule("z1", "az1", hosts) == "h2"
    assert schedule("z2", "az2", hosts) == "h4"
    assert schedule("z1", "az1", [hosts[2]]) == "h3"  # the only one: still placed
    with pytest.raises(Conflict, match="zone az9 has no host"):
        schedule("z9", "az9", hosts)


def test_reflect_instance_report() -> None:
    status = {"ip": "10.0.1.2", "phase": "scheduled", "netns": None}
    new = reflect(status, {"phase": "running", "netns": "/n", "uts": "/u", "message": None})
    assert new == {
        "ip": "10.0.1.2",
        "phase": "running",
        "netns": "/n",
        "uts": "/u",
        "message": None,
    }
    odd = reflect(status, {"phase": "creating", "message": "veth"})
    assert odd["phase"] == "scheduled" and "creating" in odd["message"]
