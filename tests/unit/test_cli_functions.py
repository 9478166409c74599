"""`yunhan function …` and `yunhan usage` against the real API app: the issue's forms as
written (a file or a directory as the source, --env repeated, --traffic), tables for
people, JSON for scripts, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_fixtures import Region, region
from fn_fixtures import FakeFunctionHost, functions_on

from yunhan.functions.metering import PriceTable, parse_prices

__all__ = ["region"]  # the fixture, re-exported for pytest

HELLO = "def handler(event, context):\n    return event\n"


def test_deploy_a_file_then_a_directory_with_env_and_traffic(
    region: Region, tmp_path: Path
) -> None:
    r = region
    (tmp_path / "hello.py").write_text(HELLO)
    out = r.ok("function", "deploy", "hello", "--source", str(tmp_path / "hello.py"),
               "--handler", "hello.handler", "--env", "A=1", "--env", "B=x=y").stdout  # fmt: skip
    assert "deployed function hello version 1 (traffic v1=100%)" in out
    (src := tmp_path / "src").mkdir()
    (src / "hello.py").write_text("from helper import greet as handler\n")
    (src / "helper.py").write_text("def greet(event, context):\n    return 'hi'\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    f = r.cli("function", "deploy", "hello", "--source", str(src), "--handler", "hello.handler",
              "--memory", "256", "--timeout", "10", "--min", "1", "--max", "3",
              "--concurrency", "2", "--traffic", "v1=90,v2=10", "--json").json()  # fmt: skip
    assert f["status"]["latest_version"] == 2
    assert f["spec"]["traffic"] == {"1": 90, "2": 10}
    assert (f["spec"]["min_scale"], f["spec"]["max_scale"], f["spec"]["concurrency"]) == (1, 3, 2)
    versions = r.cli("function", "versions", "hello", "--json").json()
    assert [(v["version"], v["memory_mb"], v["env"]) for v in versions] == [
        (1, 128, {"A": "1", "B": "x=y"}),
        (2, 256, {}),
    ]
    lines = r.ok("function", "list").stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "ID", "LATEST", "TRAFFIC"]
    assert lines[1].split()[:3] == ["hello", f["id"], "2"] and "v1=90%, v2=10%" in lines[1]
    shown = r.ok("function", "show", "hello").stdout
    assert "traffic" in shown and "v1=90%, v2=10%" in shown
    out = r.ok("function", "traffic", "hello", "v1=50,v2=50").stdout
    assert "function hello: traffic v1=50%, v2=50%" in out
    out = r.ok("function", "traffic", "hello", "latest").stdout
    assert "traffic v2=100%" in out
    events = r.ok("events", "--for", "function/hello").stdout
    assert "FunctionDeployed" in events and "FunctionTrafficChanged" in events
    assert "deleted function hello" in r.ok("function", "delete", "hello").stdout
    assert "no functions" in r.ok("function", "list").stdout


def test_function_errors_are_one_line_and_change_nothing(region: Region, tmp_path: Path) -> None:
    r = region
    bad = tmp_path / "bad.py"
    bad.write_text("def handler(event, context)\n    return 1\n")
    run = r.cli("function", "deploy", "f", "--source", str(bad), "--handler", "bad.handler")
    assert run.code != 0 and "bad.py:1:" in run.stderr and len(run.stderr.splitlines()) == 1
    (tmp_path / "ok.py").write_text(HELLO)
    ok = str(tmp_path / "ok.py")
    run = r.cli("function", "deploy", "f", "--source", ok, "--handler", "ok.nothere")
    assert run.code != 0 and "defines no 'nothere'" in run.stderr
    run = r.cli("function", "deploy", "f", "--source", ok, "--handler", "ok.handler",
                "--memory", "63")  # fmt: skip
    assert run.code != 0 and "memory 63 MB" in run.stderr
    run = r.cli("function", "deploy", "f", "--source", ok, "--handler", "ok.handler",
                "--traffic", "v1=90,v2")  # fmt: skip
    assert run.code != 0 and "VERSION=PERCENT" in run.stderr
    run = r.cli("function", "deploy", "f", "--source", ok, "--handler", "ok.handler",
                "--env", "NOEQUALS")  # fmt: skip
    assert run.code != 0 and "--env wants KEY=VALUE" in run.stderr
    run = r.cli("function", "deploy", "f", "--source", str(tmp_path / "nope"),
                "--handler", "ok.handler")  # fmt: skip
    assert run.code != 0 and "does not exist" in run.stderr
    assert "no functions" in r.ok("function", "list").stdout
    r.ok("function", "deploy", "f", "--source", ok, "--handler", "ok.handler")
    run = r.cli("function", "traffic", "f", "v1=90,v2=10")
    assert run.code != 0 and "has no version 2" in run.stderr


def test_usage_by_function_and_day(region: Region, tmp_path: Path) -> None:
    r = region
    (tmp_path / "ok.py").write_text(HELLO)
    f = r.cli("function", "deploy", "f", "--source", str(tmp_path / "ok.py"),
              "--handler", "ok.handler", "--json").json()  # fmt: skip
    st = r.http.app.state.yunhan  # type: ignore[attr-defined]
    for i in range(4):
        st.meter.record(f["project"], f["id"], "f", 1, 250, 1024, cold=i == 0, error=False,
                        at=1_800_000_000.0 + i)  # fmt: skip
    lines = r.ok("usage").stdout.splitlines()
    assert lines[0].split() == ["PROJECT", "FUNCTION", "REQUESTS", "ERRORS", "COLD_STARTS",
                                "GB_S", "COST"]  # fmt: skip
    assert lines[1].split()[:6] == ["admin", "f", "4", "0", "1", "1.000"]
    assert lines[-1].startswith("total: 4 requests, 1.000 GB-s, 0.000017 USD")
    day = r.ok("usage", "--by", "day", "--project", "admin").stdout.splitlines()
    assert day[1].split()[:3] == ["admin", "2027-01-15", "4"]
    ans = r.cli("usage", "--since", "2027-01-16T00:00:00Z", "--json").json()
    assert ans["items"] == [] and ans["since"] == 1_800_057_600.0


def test_price_file_json_and_yaml(tmp_path: Path) -> None:
    from yunhan.cli.daemons import _prices
    from yunhan.errors import ValidationError

    assert _prices(None) is None
    (p := tmp_path / "prices.yaml").write_text("# ours\nper_request: 0.000001\ncurrency: EUR\n")
    assert _prices(p) == PriceTable(per_request=0.000001, currency="EUR")
    assert parse_prices('{"per_gb_second": 0.00002}') == PriceTable(per_gb_second=0.00002)
    with pytest.raises(ValidationError, match="unknown key 'per_gb'"):
        parse_prices("per_gb: 1")
    with pytest.raises(ValidationError, match="0 or more"):
        parse_prices('{"per_request": -1}')
    with pytest.raises(ValidationError, match="cannot read the price file"):
        _prices(tmp_path / "missing.json")


BOOM = "def handler(event, context):\n    raise KeyError(event['missing'])\n"


@pytest.fixture
def host(region: Region) -> Iterator[FakeFunctionHost]:
    """The server's real router, on one in-memory function host (fn_fixtures)."""
    h = FakeFunctionHost("az1-h1")
    fns = functions_on(region.http.app.state.yunhan, [h])  # type: ignore[attr-defined]
    yield h
    fns.stop()


def test_invoke_with_data_a_file_a_version_and_json(
    region: Region, host: FakeFunctionHost, tmp_path: Path
) -> None:
    r = region
    (tmp_path / "hello.py").write_text(HELLO)
    r.ok("function", "deploy", "hello", "--source", str(tmp_path / "hello.py"),
         "--handler", "hello.handler")  # fmt: skip
    run = r.ok("function", "invoke", "hello", "--data", '{"name": "x", "n": [1, 2]}')
    assert json.loads(run.stdout) == {"name": "x", "n": [1, 2]}
    (note,) = run.stderr.splitlines()
    assert note.startswith("request ") and "version 1" in note and "memory 128 MB" in note
    assert "billed " in note and note.endswith("cold start")
    (tmp_path / "event.json").write_text('["from", "a", "file"]')
    run = r.ok("function", "invoke", "hello", "--data", f"@{tmp_path / 'event.json'}")
    assert json.loads(run.stdout) == ["from", "a", "file"] and "cold start" not in run.stderr
    assert json.loads(r.ok("function", "invoke", "hello").stdout) == {}  # no --data: {}
    # A second version; --version runs the first.
    (tmp_path / "hello.py").write_text("def handler(event, context):\n    return 'v2'\n")
    r.ok("function", "deploy", "hello", "--source", str(tmp_path / "hello.py"),
         "--handler", "hello.handler")  # fmt: skip
    assert json.loads(r.ok("function", "invoke", "hello").stdout) == "v2"
    run = r.ok("function", "invoke", "hello", "--version", "1", "--data", "7")
    assert json.loads(run.stdout) == 7 and "version 1" in run.stderr
    ans = r.cli("function", "invoke", "hello", "--json").json()
    assert (ans["ok"], ans["version"], ans["result"]) == (True, 2, "v2")
    assert set(ans) >= {"request_id", "duration_ms", "billed_duration_ms", "memory_mb",
                        "cold_start"}  # fmt: skip
    assert [e[2] for e in host.events] == [{"name": "x", "n": [1, 2]}, ["from", "a", "file"],
                                           {}, {}, 7, {}]  # fmt: skip
    # Bad --data is refused before any request; so is an unknown version by the API.
    for data, message in (("{nope", "--data is not JSON"),
                          (f"@{tmp_path / 'missing.json'}", "No such file")):  # fmt: skip
        run = r.cli("function", "invoke", "hello", "--data", data)
        assert run.code == 1 and message in run.stderr and run.stdout == ""
    run = r.cli("function", "invoke", "hello", "--version", "9")
    assert run.code == 1 and "has no version 9" in run.stderr
    assert len(host.events) == 6


def test_a_failing_function_exits_1_with_its_error_and_traceback(
    region: Region, host: FakeFunctionHost, tmp_path: Path
) -> None:
    r = region
    (tmp_path / "boom.py").write_text(BOOM)
    r.ok("function", "deploy", "boom", "--source", str(tmp_path / "boom.py"),
         "--handler", "boom.handler")  # fmt: skip
    run = r.cli("function", "invoke", "boom", "--data", "{}")
    assert run.code == 1 and run.stdout == ""
    lines = run.stderr.splitlines()
    assert lines[0].startswith("request ") and "version 1" in lines[0]
    assert lines[1] == "error: KeyError: 'missing'"
    assert lines[2:4] == ["Traceback (most recent call last):",
                          '  File "boom.py", line 2, in handler']  # fmt: skip
    run = r.cli("function", "invoke", "boom", "--json")
    assert run.code == 1
    ans = json.loads(run.stdout)
    assert ans["ok"] is False and ans["error"] == "KeyError: 'missing'" and ans["traceback"]


def test_logs_with_tail(region: Region, host: FakeFunctionHost, tmp_path: Path) -> None:
    r = region
    (tmp_path / "hello.py").write_text(HELLO)
    f = r.cli("function", "deploy", "hello", "--source", str(tmp_path / "hello.py"),
              "--handler", "hello.handler", "--json").json()  # fmt: skip
    rids = [r.cli("function", "invoke", "hello", "--json").json()["request_id"] for _ in range(3)]
    assert r.ok("function", "logs", "hello").stdout.splitlines() == [
        f"[az1-h1] START {rid} v1" for rid in rids
    ]
    assert (
        r.ok("function", "logs", f["id"], "--tail", "1").stdout == f"[az1-h1] START {rids[2]} v1\n"
    )
    run = r.cli("function", "logs", "nope")
    assert run.code == 1 and "no function 'nope'" in run.stderr
