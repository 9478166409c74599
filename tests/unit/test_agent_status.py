"""The agent's status reports: what the control plane last hears is what the agent knows
now, and a report the control plane refuses is said, not dropped in silence."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import httpx
import pytest

from tests.polling import wait_for
from yunhan.agent.dataplane import ApplyReport, DataPlane
from yunhan.agent.main import Agent, AgentConfig
from yunhan.net.naming import Naming


def _config(tmp_path: Path, resync_interval: float = 30.0) -> AgentConfig:
    return AgentConfig(
        api_url="http://cp",
        token="yh_x",
        host_name="h1",
        zone="az1",
        underlay_ip="198.18.1.11",
        mtu=1500,
        host_netns=None,
        prefix="h1-",
        driver="fake",
        state_dir=tmp_path,
        resync_interval=resync_interval,
    )


def _dataplane(tmp_path: Path) -> DataPlane:
    return DataPlane(naming=Naming("h1-"), host_netns=None, driver="fake", state_dir=tmp_path)


def _agent(tmp_path: Path, handler: httpx.MockTransport) -> Agent:
    return Agent(_config(tmp_path), _dataplane(tmp_path), transport=handler)


def test_an_older_report_never_lands_after_a_newer_one(tmp_path: Path) -> None:
    first_in, second_in, release = threading.Event(), threading.Event(), threading.Event()
    landed: list[int] = []
    lock = threading.Lock()

    def handle(request: httpx.Request) -> httpx.Response:
        applied = json.loads(request.content)["applied_revision"]
        if not first_in.is_set():
            first_in.set()
            release.wait(5)  # the first report is slow on the wire
        else:
            second_in.set()
        with lock:
            landed.append(applied)
        return httpx.Response(204)

    agent = _agent(tmp_path, httpx.MockTransport(handle))
    heartbeat = threading.Thread(target=agent.send_status)  # reports revision 0
    heartbeat.start()
    assert first_in.wait(5)
    with agent._lock:  # the watch loop applies revision 7 meanwhile ...
        agent.applied_revision = 7
        agent.report = ApplyReport(changes=1, errors=[], instances={})
    watch = threading.Thread(target=agent.send_status)  # ... and reports it
    watch.start()
    second_in.wait(0.5)  # it would overtake the slow one here if reports were not ordered
    release.set()
    heartbeat.join(5)
    watch.join(5)
    assert landed[-1] == 7, landed


def test_a_refused_report_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    body = {"error": {"code": "invalid", "message": "invalid request: bad", "details": {}}}
    agent = _agent(tmp_path, httpx.MockTransport(lambda _r: httpx.Response(400, json=body)))
    with caplog.at_level(logging.WARNING, logger="yunhan.agent"):
        agent.send_status()
    wait_for(lambda: "invalid request: bad" in caplog.text, 1, "a warning naming the refusal")


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_a_resync_interval_that_would_spin_is_refused(tmp_path: Path, interval: float) -> None:
    # 0 read as "no periodic resync" made the watch loop poll with timeout 0 and re-apply
    # the whole document without pause.
    from yunhan.errors import ValidationError

    with pytest.raises(ValidationError, match="resync interval"):
        Agent(_config(tmp_path, interval), _dataplane(tmp_path))


class _Functions:
    """A stand-in function host: what the agent starts, reports and stops."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")
        if self.fail:
            raise OSError("no cgroups here")

    def stop(self) -> None:
        self.calls.append("stop")

    def report(self) -> dict[str, object]:
        return {"endpoint": "http://127.0.0.1:4711", "key": "k", "memory_mb": 1024, "workers": 2}


@pytest.mark.parametrize("fail", [False, True])
def test_the_status_report_carries_the_function_host_and_stop_stops_it(
    tmp_path: Path, fail: bool
) -> None:
    bodies: list[dict[str, object]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            bodies.append(json.loads(request.content))
            return httpx.Response(204)
        if request.url.path.endswith("/desired"):
            return httpx.Response(204)
        return httpx.Response(200, json={})

    functions = _Functions(fail)
    agent = Agent(
        _config(tmp_path),
        _dataplane(tmp_path),
        transport=httpx.MockTransport(handle),
        functions=functions,
    )
    agent.send_status()
    assert "functions" not in bodies[-1]  # not started yet: nothing to offer
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        wait_for(lambda: functions.calls == ["start"])
        agent.send_status()
        if fail:  # a host that cannot run functions still reports, without them
            assert "functions" not in bodies[-1]
        else:
            assert bodies[-1]["functions"] == functions.report()
    finally:
        agent.stop()
        runner.join(10)
    assert functions.calls == (["start"] if fail else ["start", "stop"])
