"""The lab commands' user-facing side that needs no namespaces: plans, flag errors, status."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from yunhan.cli.main import main
from yunhan.lab import cleanup
from yunhan.lab.region import ProcessRecord, RegionRecord
from yunhan.lab.spec import RegionSpec


class Out:
    def __init__(self, code: int, capsys: pytest.CaptureFixture[str]) -> None:
        out = capsys.readouterr()
        self.exit_code, self.stdout, self.stderr = code, out.out, out.err


def invoke(capsys: pytest.CaptureFixture[str], args: list[str]) -> Out:
    capsys.readouterr()
    return Out(main(args), capsys)


def test_dry_run_prints_the_plan_and_builds_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--zones", "3", "--hosts-per-zone", "1", "--mtu", "9000", "--prefix", "yh0abc"]
    r = invoke(capsys, ["up", "--dry-run", *args, "--state-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("region yh0abc: 3 zones, 3 hosts")
    assert "host az3-h1     198.18.3.11" in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_bad_flags_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    r = invoke(capsys, ["up", "--dry-run", "--zones", "0"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: --zones must be between 1 and 200, not 0"


def test_status_without_a_region(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = invoke(capsys, ["status", "--state-dir", str(tmp_path)])
    assert r.exit_code == 0 and "no region is up" in r.stdout
    r = invoke(capsys, ["status", "--state-dir", str(tmp_path), "--json"])
    assert json.loads(r.stdout) is None


def test_status_of_a_region_whose_api_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = RegionSpec.build(prefix="yh0abc", zones=1, hosts_per_zone=1)
    rec = RegionRecord(prefix="yh0abc", state_dir=str(tmp_path), spec=spec.to_dict(),
                       endpoint="http://127.0.0.1:1")  # fmt: skip
    me = os.getpid()
    rec.processes.append(ProcessRecord("agent", "az1-h1", me, cleanup.start_time(me), "a.log"))
    rec.processes.append(ProcessRecord("server", "server", 2**22 + 7, None, "s.log"))
    (tmp_path / "region.json").write_text(json.dumps(
        {**rec.__dict__, "processes": [p.__dict__ for p in rec.processes]}))  # fmt: skip
    r = invoke(capsys, ["status", "--state-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "region yh0abc (detached), API http://127.0.0.1:1" in r.stdout
    assert "API not answering" in r.stdout
    out = json.loads(invoke(capsys, ["status", "--state-dir", str(tmp_path), "--json"]).stdout)
    assert {p["name"]: p["alive"] for p in out["processes"]} == {"az1-h1": True, "server": False}
    assert out["api_error"] and out["prefix"] == "yh0abc" and out["mtu"] == 1500


def test_status_shows_restarts_and_a_dead_supervisor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from yunhan.lab.supervisor import RUNNING, Program, SupervisorState

    spec = RegionSpec.build(prefix="yh0abd", zones=1, hosts_per_zone=1)
    rec = RegionRecord(prefix="yh0abd", state_dir=str(tmp_path), spec=spec.to_dict(),
                       endpoint="http://127.0.0.1:1")  # fmt: skip
    me = os.getpid()
    rec.processes.append(ProcessRecord("supervisor", "supervisor", 2**22 + 9, None, "u.log"))
    (tmp_path / "region.json").write_text(json.dumps(
        {**rec.__dict__, "processes": [p.__dict__ for p in rec.processes]}))  # fmt: skip
    rec.data_dir.mkdir()
    agent = Program("az1-h1", "agent", ["x"], "a.log", me, cleanup.start_time(me), 0.0, RUNNING,
                    restarts=2, last_exit="killed by SIGKILL")  # fmt: skip
    SupervisorState(programs=[agent]).save(rec.supervisor_file)
    r = invoke(capsys, ["status", "--state-dir", str(tmp_path)])
    assert "killed by SIGKILL" in r.stdout
    assert "supervisor is not running" in r.stdout
    out = json.loads(invoke(capsys, ["status", "--state-dir", str(tmp_path), "--json"]).stdout)
    rows = {p["name"]: p for p in out["processes"]}
    assert (rows["az1-h1"]["restarts"], rows["az1-h1"]["state"]) == (2, "running")
    assert (rows["supervisor"]["alive"], rows["supervisor"]["state"]) == (False, "dead")
