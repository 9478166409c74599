"""The CLI while the API is away: `instance list --local` and `instance exec` read what this
machine's agents wrote down (yunhan.localview), and say so on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yunhan import localview
from yunhan.cli.main import main

DOWN = ["--endpoint", "http://127.0.0.1:1", "--token", "t"]


@pytest.fixture
def lab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A lab state dir whose region has two agents that wrote their instances down."""
    state = tmp_path / "state"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("YUNHAN_HOME", str(state))
    monkeypatch.setattr(localview, "HOST_AGENT_DIR", tmp_path / "no-host-agent")
    state.mkdir()
    (state / "region.json").write_text(json.dumps({"prefix": "yhtest"}))
    for host, inst, ip in (("az1-h1", "a", "10.0.1.2"), ("az2-h1", "b", "10.0.1.10")):
        view = {
            "id": f"i-{inst}",
            "name": inst,
            "ip": ip,
            "vpc": "vpc-1",
            "phase": "running",
            "message": "",
            "netns": str(tmp_path / f"netns-{inst}"),
            "uts": None,
        }
        localview.write(state / "yhtest" / "agents" / host, host, 7, [view])
    return tmp_path


def test_list_local_reads_the_agents_without_the_api(
    lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*DOWN, "instance", "list", "--local", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert [(r["name"], r["ip"], r["host"], r["revision"]) for r in rows] == [
        ("a", "10.0.1.2", "az1-h1", 7),
        ("b", "10.0.1.10", "az2-h1", 7),
    ]
    assert "the API was not asked" in err


def test_exec_falls_back_to_the_agents_when_the_api_is_away(
    lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The netns file is missing here, so exec stops before nsenter: the message shows that
    # the instance was found through its agent's state.
    assert main([*DOWN, "instance", "exec", "b", "--", "true"]) == 1
    err = capsys.readouterr().err
    assert "the API is away" in err and "host az2-h1" in err
    assert "instance b runs on host az2-h1, not on this machine" in err
    # Unknown here: the API's error, with what the agents said.
    assert main([*DOWN, "instance", "exec", "zz", "--", "true"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the Yunhan API" in err and "no agent of this machine carries it" in err
