"""The control plane can die; the data plane must not notice (root, real processes).

* A server SIGKILLed mid-ping: the ping between instances of two zones loses nothing while
  the server is down and while it comes back on the same database (SQLite and PostgreSQL);
  then a new instance converges and answers.
* Two replicas on one PostgreSQL database, agents given both endpoints: the leader is
  SIGKILLed; the standby takes over with the next epoch within a bounded time, the agents
  move to it, a write through it converges and answers, an instance that was waiting for a
  host is placed exactly once by the new leader, and the change log has no lost or shared
  revision.
* A leader whose database session ends while its process lives is deposed: it says so and
  stands by, exactly one replica leads with the next epoch, and the controller still works.

Servers and agents are real `yunhan server` / `yunhan agent` processes (linux driver) on
the lab's routed underlay (tests/integration/cplane.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.integration.cplane import Api, ControlPlaneLab, Pinger, ping
from tests.polling import wait_for
from yunhan.controller.secgroups import ensure_default_group
from yunhan.lab.spec import RegionSpec
from yunhan.model import new_id
from yunhan.store import Store

pytestmark = pytest.mark.root

TAKEOVER_WITHIN = 15.0  # LEADER_RETRY is 1 s; a dead session's advisory lock goes at once
PING_COUNT = 400  # 20 s at 50 ms: the server is killed, stays down, and comes back meanwhile


def _zones(api: Api, spec: RegionSpec) -> None:
    for zone in spec.zones:
        api.post("/v1/zones", {"name": zone.name, "underlay_cidr": zone.cidr})


def _network(api: Api) -> dict[str, Any]:
    api.post("/v1/vpcs", {"name": "prod", "cidrs": ["10.0.0.0/16"]})
    subnet: dict[str, Any] = api.post(
        "/v1/subnets", {"name": "web", "vpc": "prod", "cidr": "10.0.1.0/24"}
    )
    return subnet


def _instance(api: Api, name: str, zone: str) -> dict[str, Any]:
    """Create an instance, wait until its write is applied everywhere and it runs."""
    inst = api.post("/v1/instances", {"name": name, "subnet": "web", "zone": zone})
    api.wait_converged(int(inst["revision"]))
    return api.wait_running(inst["id"])


def _netns(inst: dict[str, Any]) -> str:
    return str(inst["status"]["netns"])


def _ip(inst: dict[str, Any]) -> str:
    return str(inst["status"]["ip"])


def _answers(src: dict[str, Any], dst: dict[str, Any]) -> None:
    p = ping(_netns(src), _ip(dst))
    assert p.returncode == 0, f"{src['name']} -> {dst['name']}: {p.stdout}{p.stderr}"


def _lossless(pinger: Pinger, timeout: float = 60.0) -> str:
    out = pinger.finish(timeout)
    assert pinger.popen.returncode == 0, out[-2000:]
    assert f"{PING_COUNT} received, 0% packet loss" in out, out[-2000:]
    return out


def test_agents_keep_forwarding_and_converge_after_server_restart(
    store_url: str, uniq: Callable[[str], str], tmp_path: Path
) -> None:
    spec = RegionSpec.build(prefix=uniq("rs"), zones=2, hosts_per_zone=1)
    with ControlPlaneLab(spec, tmp_path, store_url) as lab:
        server = lab.start_server("server")
        api = lab.api(server.endpoint)
        _zones(api, spec)
        for host in spec.hosts:
            lab.start_agent(host, [server.endpoint])
        names = {h.name for h in spec.hosts}
        wait_for(lambda: api.healthy() == names, 60, "agents healthy")
        _network(api)
        a, b = _instance(api, "a", "az1"), _instance(api, "b", "az2")
        assert a["status"]["host"] != b["status"]["host"]

        assert server.epochs() == [1]

        pinger = Pinger(_netns(a), _ip(b), PING_COUNT)
        try:
            wait_for(lambda: pinger.replies() >= 20, 30, "the ping to get going")
            server.proc.kill()
            down_at = pinger.replies()
            # Down for at least 3 s of ping (60 replies): agents' polls fail meanwhile.
            wait_for(lambda: pinger.replies() >= down_at + 60, 30, "ping while the server is down")
            restarting = time.monotonic()
            server = lab.start_server("server-restarted", port=server.port)
            print(f"restarted server answered after {time.monotonic() - restarting:.2f}s")
            api = lab.api(server.endpoint)
            back_at = pinger.replies()
            assert back_at < PING_COUNT - 20, "the restart took the whole ping; raise PING_COUNT"
            _lossless(pinger)
        finally:
            pinger.stop()

        # The controller is back (the lock died with the process), fencing out the old one.
        wait_for(server.epochs, 10, "the restarted server to lead")
        assert server.epochs() == [2]
        # The agents talk to the new process: a new write reaches both hosts and is acked.
        creating = time.monotonic()
        c = _instance(api, "c", "az2")
        print(f"c converged and running {time.monotonic() - creating:.2f}s after its create")
        _answers(a, c)
        _answers(c, a)
        _answers(b, a)
        assert api.healthy() == names


def _write_unplaced(url: str, subnet: dict[str, Any], zone_id: str, ip: str) -> str:
    """An instance without a host, written to the store as a peer process would.

    The API refuses to create an instance in a zone that has no host (409), so this is the
    only way to hand the controller pending work; placing it is the leader's alone. It
    joins its VPC's default group, as the API would put it.
    """
    store = Store.connect(url)
    try:
        iid = new_id("instance")
        with store.transaction() as tx:
            vpc = tx.get("vpc", subnet["spec"]["vpc"])
            assert vpc is not None
            group = ensure_default_group(tx, vpc)
            tx.create(
                "instance",
                iid,
                subnet["project"],
                "u",
                {
                    "subnet": subnet["id"],
                    "zone": zone_id,
                    "ip": ip,
                    "command": None,
                    "security_groups": [group.id],
                },
                {
                    "ip": ip,
                    "mac": "fa:16:3e:00:00:c8",
                    "vpc": subnet["spec"]["vpc"],
                    "host": None,
                    "phase": "pending",
                    "message": None,
                    "netns": None,
                    "uts": None,
                },
            )
        return iid
    finally:
        store.close()


def _leader_sessions(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT application_name FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name LIKE 'yunhan-leader %'"
                )
            ).all()
        return sorted(str(r[0]) for r in rows)
    finally:
        engine.dispose()


def _one_leader(url: str) -> str | None:
    sessions = _leader_sessions(url)
    return sessions[0] if len(sessions) == 1 else None


def _events(url: str) -> list[tuple[int, int, str, str, dict[str, Any]]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT revision, seq, kind, id, obj FROM events ORDER BY revision, seq")
            ).all()
            top = conn.execute(text("SELECT value FROM meta WHERE key = 'revision'")).scalar_one()
        out = [(int(r[0]), int(r[1]), str(r[2]), str(r[3]), json.loads(r[4])) for r in rows]
        assert out and out[-1][0] == int(top), f"meta revision {top} is not the last event's"
        return out
    finally:
        engine.dispose()


def test_leader_failover_on_postgresql(
    pg_url: str, uniq: Callable[[str], str], tmp_path: Path
) -> None:
    spec = RegionSpec.build(prefix=uniq("fo"), zones=3, hosts_per_zone=1)
    az1, az2, az3 = spec.hosts
    with ControlPlaneLab(spec, tmp_path, pg_url) as lab:
        # Replica 1 first, so that it leads and the agents (endpoint order) talk to it.
        first = lab.start_server("replica-1")
        wait_for(first.epochs, 30, "replica-1 to lead")
        second = lab.start_server("replica-2")
        endpoints = [first.endpoint, second.endpoint]
        api1, api2 = lab.api(first.endpoint), lab.api(second.endpoint)
        _zones(api1, spec)
        for host in (az1, az2):
            lab.start_agent(host, endpoints)
        wait_for(lambda: api1.healthy() == {az1.name, az2.name}, 60, "agents healthy")
        subnet = _network(api1)
        a, b = _instance(api1, "a", "az1"), _instance(api1, "b", "az2")
        zone3 = api1.get("/v1/zones/az3")
        pending = _write_unplaced(pg_url, subnet, zone3["id"], "10.0.1.200")
        # Both replicas follow the log; nobody can place it: az3 has no host yet.
        for api in (api1, api2):
            u = wait_for(partial(api.find, f"/v1/instances/{pending}"), 10, "u at both replicas")
            assert u["status"]["host"] is None

        # Either replica answers any client: a write through the standby converges there
        # although the agents acknowledge to the leader (the leases reach it through the
        # database), and the standby sees them healthy.
        s = api2.post("/v1/instances", {"name": "s", "subnet": "web", "zone": "az1"})
        api2.wait_converged(int(s["revision"]), timeout=20)
        assert api2.healthy() == {az1.name, az2.name}
        s = api2.wait_running(s["id"])
        _answers(s, b)

        [epoch] = first.epochs()
        assert second.epochs() == []
        [session] = _leader_sessions(pg_url)
        assert f":{first.port} " in session and f"epoch={epoch}" in session, session

        pinger = Pinger(_netns(a), _ip(b), PING_COUNT)
        try:
            wait_for(lambda: pinger.replies() >= 20, 30, "the ping to get going")
            killed = time.monotonic()
            first.proc.kill()
            wait_for(second.epochs, TAKEOVER_WITHIN, "replica-2 to take over")
            took = time.monotonic() - killed
            assert second.epochs() == [epoch + 1], second.proc.tail()
            _lossless(pinger)
        finally:
            pinger.stop()
        print(f"replica-2 took over in {took:.2f}s")
        # The dead leader's session may linger a moment after its lock went with it.
        session = wait_for(lambda: _one_leader(pg_url), 10, "one leader session")
        assert f":{second.port} " in session and f"epoch={epoch + 1}" in session, session

        # The agents moved to replica-2: a write through it is applied and acknowledged there.
        c = _instance(api2, "c", "az2")
        _answers(a, c)
        _answers(c, a)
        wait_for(lambda: api2.healthy() == {az1.name, az2.name}, 30, "agents healthy at replica-2")

        # A host comes to az3: the new leader places the waiting instance there.
        lab.start_agent(az3, endpoints)
        u = api2.wait_running(pending)
        assert u["status"]["host"] == az3.name
        api2.wait_converged(int(u["revision"]))
        _answers(a, u)
        _answers(u, b)

        events = _events(pg_url)
    # No revision lost or shared: one write per revision, in order, with its events
    # numbered 0..n-1, and revisions without a gap.
    revisions = sorted({rev for rev, *_ in events})
    assert revisions == list(range(revisions[0], revisions[-1] + 1)), revisions
    for rev in revisions:
        seqs = [seq for r, seq, *_ in events if r == rev]
        assert seqs == list(range(len(seqs))), (rev, seqs)
    # Placed exactly once: one write gave `u` a host, and it never changed after.
    hosts_of_u = [obj["status"].get("host") for _r, _s, kind, iid, obj in events if iid == pending]
    before = [None, *hosts_of_u[:-1]]
    placements = [h for prev, h in zip(before, hosts_of_u, strict=True) if h != prev]
    assert placements == [az3.name], hosts_of_u
    names = [obj["name"] for _r, _s, kind, _i, obj in events if kind == "instance"]
    assert sorted(set(names)) == ["a", "b", "c", "s", "u"]


def test_a_leader_whose_session_ends_is_deposed_and_one_leader_remains(
    pg_url: str, uniq: Callable[[str], str], tmp_path: Path
) -> None:
    # The leader process lives on but loses its database session (a restarted PostgreSQL,
    # a terminated backend): it must notice, stop its controller, and stand by; one replica
    # leads with the next epoch, and the controller still does its work.
    spec = RegionSpec.build(prefix=uniq("dp"), zones=1, hosts_per_zone=1)
    with ControlPlaneLab(spec, tmp_path, pg_url) as lab:
        first = lab.start_server("replica-1")
        wait_for(first.epochs, 30, "replica-1 to lead")
        second = lab.start_server("replica-2")
        [epoch] = first.epochs()
        engine = create_engine(pg_url)
        try:
            with engine.connect() as conn:
                ended = conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() "
                        "AND application_name LIKE 'yunhan-leader %'"
                    )
                ).all()
            assert ended == [(True,)]
        finally:
            engine.dispose()
        wait_for(lambda: max(first.epochs() + second.epochs()) > epoch, 15, "a new leader")
        epochs = sorted(first.epochs() + second.epochs())
        assert epochs == [epoch, epoch + 1], (first.proc.tail(), second.proc.tail())
        # The old leader notices its session is gone on its own next check, which may come
        # after the new leader took over: wait for it rather than race it.
        lost = f"lost the controller's leadership (epoch {epoch})"
        wait_for(lambda: lost in first.proc.text(), 15, "the old leader to stand down")
        session = wait_for(lambda: _one_leader(pg_url), 10, "one leader session")
        assert f"epoch={epoch + 1}" in session, session

        # Whichever leads places an instance that waits for a host once one comes.
        api = lab.api(second.endpoint)
        _zones(api, spec)
        subnet = _network(api)
        pending = _write_unplaced(pg_url, subnet, api.get("/v1/zones/az1")["id"], "10.0.1.200")
        lab.start_agent(spec.hosts[0], [second.endpoint])
        u = api.wait_running(pending)
        assert u["status"]["host"] == spec.hosts[0].name
        events = _events(pg_url)
    hosts_of_u = [obj["status"].get("host") for _r, _s, _k, iid, obj in events if iid == pending]
    assert [h for h in hosts_of_u if h] and hosts_of_u.count(None) == 1, hosts_of_u
