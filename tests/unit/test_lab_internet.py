"""The lab's internet side without root: the public pool in the region plan, the options
that hand it to the server and the uplink to the agents, and the echo server."""

from __future__ import annotations

import dataclasses
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from yunhan.agent.main import AgentConfig
from yunhan.api.app import create_app
from yunhan.cli.daemons import _pools
from yunhan.errors import ValidationError
from yunhan.lab import echo
from yunhan.lab.spec import RegionSpec
from yunhan.net.natgw import Uplink
from yunhan.store import Store


def test_the_public_pool_is_in_the_benchmark_range_apart_from_everything_else() -> None:
    spec = RegionSpec.build(prefix="yh0abc", zones=3, hosts_per_zone=3)
    assert spec.public_pool == "198.19.128.0/24"
    assert "public    pool 198.19.128.0/24" in spec.render()
    assert RegionSpec.from_dict(spec.to_dict()) == spec
    old = spec.to_dict()
    del old["public_pool"]  # a record written before the pool existed
    assert RegionSpec.from_dict(old).public_pool == spec.public_pool


@pytest.mark.parametrize(
    ("pool", "error"),
    [
        ("198.19.0.0/23", "overlaps 198.19.0.0/24"),  # the internet link
        ("198.18.2.128/25", "overlaps 198.18.2.0/24"),  # a zone
        ("203.0.113.0/24", "outside the underlay"),
    ],
)
def test_a_public_pool_that_collides_is_refused(pool: str, error: str) -> None:
    spec = RegionSpec.build(prefix="yh0abc", zones=2, hosts_per_zone=1)
    with pytest.raises(ValidationError, match=error):
        dataclasses.replace(spec, public_pool=pool).validate()


def test_server_public_pools_are_checked_and_reach_the_app_state(tmp_path: Path) -> None:
    assert _pools(["198.19.128.0/24", "198.19.129.0/25"]) == [
        "198.19.128.0/24",
        "198.19.129.0/25",
    ]
    assert _pools(None) == []
    with pytest.raises(ValidationError, match="--public-pool wants an IPv4 CIDR"):
        _pools(["198.19.128.1/24"])
    store = Store.open(tmp_path)
    try:
        app = create_app(store, admin_token="yh_t", public_pools=["198.19.128.0/24"])
        assert app.state.yunhan.public_pools == ["198.19.128.0/24"]
        assert create_app(store, admin_token="yh_t").state.yunhan.public_pools == []
    finally:
        store.close()


def _config(**kw: str | None) -> AgentConfig:
    return AgentConfig(
        api_url="http://x",
        token="t",
        host_name="az1-h1",
        zone="az1",
        underlay_ip="198.18.1.11",
        mtu=1500,
        host_netns="r-az1-h1",
        prefix="r-az1-h1-",
        **kw,  # type: ignore[arg-type]
    )


def test_an_agent_uplink_needs_both_its_namespace_and_its_address() -> None:
    assert _config().uplink is None
    assert _config(uplink_netns="r-core", uplink_via="198.18.1.11").uplink == Uplink(
        "r-core", "198.18.1.11"
    )
    with pytest.raises(ValidationError, match="go together"):
        _ = _config(uplink_netns="r-core").uplink
    with pytest.raises(ValidationError, match="IPv4 address"):
        _ = _config(uplink_netns="r-core", uplink_via="core").uplink


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = echo.make_server("127.0.0.1", 0)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/anything?at=all"
    finally:
        server.shutdown()
        t.join()
        server.server_close()


def test_the_echo_server_answers_every_get_with_the_client_address(echo_url: str) -> None:
    with urllib.request.urlopen(echo_url, timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        assert r.read() == b"client 127.0.0.1\n"
