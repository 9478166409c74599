"""The CLI against the real API app and store (cli_fixtures.Region): what a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_fixtures import Region, region

from tests.polling import wait_for
from yunhan.cli.client import Client, HttpTransport
from yunhan.errors import YunhanError

__all__ = ["region"]  # the fixture, re-exported for pytest


def test_vpc_create_list_show_json(region: Region) -> None:
    created = region.cli(
        "vpc", "create", "prod", "--cidr", "10.0.0.0/16", "--cidr", "10.1.0.0/16", "--json"
    ).json()
    assert created["name"] == "prod" and created["cidrs"] == ["10.0.0.0/16", "10.1.0.0/16"]
    assert created["id"].startswith("vpc-") and created["vni"]
    listed = region.cli("vpc", "list", "--json").json()
    assert [(v["id"], v["name"]) for v in listed] == [(created["id"], "prod")]
    assert region.cli("vpc", "show", created["id"], "-o", "json").json()["name"] == "prod"
    added = region.cli("vpc", "add-cidr", "prod", "10.2.0.0/16", "--json").json()
    assert "10.2.0.0/16" in added["cidrs"]
    removed = region.cli("vpc", "remove-cidr", "prod", "10.2.0.0/16", "--json").json()
    assert "10.2.0.0/16" not in removed["cidrs"]


def test_tables_for_people(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    out = region.ok("vpc", "list").stdout
    header, row = out.splitlines()
    assert header.split() == ["NAME", "ID", "CIDRS", "VNI"]
    assert row.split()[0] == "prod" and "10.0.0.0/16" in row
    assert "\x1b[" not in out  # no escape codes when stdout is not a terminal
    hosts = region.ok("host", "list").stdout.splitlines()
    assert hosts[0].split() == ["NAME", "ZONE", "IP", "HEALTHY", "DESIRED", "APPLIED", "ERROR"]
    assert hosts[1].split()[:4] == ["az1-h1", "az1", "198.18.1.11", "yes"]
    assert region.ok("subnet", "list").stdout == "no subnets\n"
    assert region.ok("subnet", "list", "--json").stdout == "[]\n"


def test_wide_shows_ids_revisions_and_times(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    sub = region.cli("subnet", "show", "web", "--json").json()
    header, row = region.ok("subnet", "list", "-o", "wide").stdout.splitlines()
    assert header.split() == [
        "NAME", "ID", "VPC", "VPC_ID", "CIDR", "GATEWAY", "AVAILABLE", "LOCATION", "SERVED_IN",
        "REVISION", "CREATED_AT",
    ]  # fmt: skip
    assert row.split() == [
        "web", sub["id"], "prod", sub["vpc_id"], "10.0.1.0/24", "10.0.1.1",
        str(sub["available"]), "cloud", "cloud", str(sub["revision"]), sub["created_at"],
    ]  # fmt: skip
    narrow = region.ok("subnet", "list").stdout.splitlines()[0].split()
    assert "REVISION" not in narrow and "VPC_ID" not in narrow


def test_yaml_is_the_json_rows(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")

    def settled() -> bool:  # the agents' thread acknowledges: applied_revision moves
        hosts = region.cli("host", "list", "--json").json()
        return all(h["applied_revision"] == h["desired_revision"] for h in hosts)

    assert wait_for(settled, 10, "the agents apply the writes")
    for args in (("vpc", "list"), ("subnet", "list"), ("subnet", "show", "web"),
                 ("zone", "list"), ("host", "list")):  # fmt: skip
        as_json = region.cli(*args, "--json").json()
        for host in as_json if isinstance(as_json, list) else []:
            host.pop("heartbeat_at", None)  # moves between the two calls
        as_yaml = yaml.safe_load(region.ok(*args, "-o", "yaml").stdout)
        for host in as_yaml if isinstance(as_yaml, list) else []:
            host.pop("heartbeat_at", None)
        assert as_yaml == as_json, args
    r = region.cli("vpc", "list", "--json", "-o", "yaml")
    assert r.code == 1 and r.stderr == "error: --json and -o yaml disagree; give one of them\n"


def test_subnet_and_instances_with_wait(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16", "--wait")
    sub = region.cli(
        "subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24", "--wait", "--json"
    ).json()
    assert sub["vpc"] == "prod" and sub["cidr"] == "10.0.1.0/24"
    assert sub["vpc_id"].startswith("vpc-")
    a = region.cli("instance", "create", "a", "--subnet", "web", "--zone", "az1", "--wait",
                   "--command", "sleep infinity", "--json").json()  # fmt: skip
    assert a["phase"] == "running"  # --wait returned only once the agent reported it running
    assert a["zone"] == "az1" and a["host"] == "az1-h1" and a["ip"].startswith("10.0.1.")
    assert a["command"] == ["sleep", "infinity"]
    region.ok("instance", "create", "b", "--subnet", "web", "--zone", "az2", "--ip", "10.0.1.9")
    rows = {i["name"]: i for i in region.cli("instance", "list", "--json").json()}
    assert rows["b"]["ip"] == "10.0.1.9" and rows["b"]["zone"] == "az2"
    assert rows["b"]["subnet"] == "web" and rows["b"]["vpc"] == "prod"
    assert {"id", "name", "zone", "ip", "host", "phase", "subnet", "vpc"} <= set(rows["a"])
    assert [s["name"] for s in region.cli("subnet", "list", "--vpc", "prod", "--json").json()] == [
        "web"
    ]
    assert [z["name"] for z in region.cli("zone", "list", "--json").json()] == ["az1", "az2"]
    # The fake agents still report b's status in the background: the revision may move
    # between two reads, never back.
    rev = region.api("GET", "/v1/revision")
    shown = region.cli("revision", "--json").json()
    text = region.ok("revision").stdout
    after = region.api("GET", "/v1/revision")
    assert set(shown) == set(rev) and text.endswith("\n") and text.strip().isdigit()
    assert rev["revision"] <= shown["revision"] <= int(text) <= after["revision"]
    hosts = region.cli("host", "list", "--json").json()
    assert hosts[0]["name"] == "az1-h1" and hosts[0]["zone"] == "az1" and hosts[0]["healthy"]
    assert hosts[0]["netns"] is None  # not the lab region of this machine


def test_api_errors_are_one_line_and_exit_1(region: Region) -> None:
    r = region.cli("vpc", "show", "nope")
    assert r.code == 1 and r.stdout == ""
    assert r.stderr == "error: no vpc 'nope' in this project\n"
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    r = region.cli("vpc", "delete", "prod")
    assert r.code == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "subnet" in r.stderr
    r = region.cli("subnet", "create", "db", "--vpc", "prod", "--cidr", "10.9.0.0/24")
    assert r.code == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_usage_errors_exit_2_and_name_the_problem(region: Region) -> None:
    r = region.cli("vpc", "create", "prod")
    assert r.code == 2 and "--cidr" in r.stderr
    r = region.cli("vpc", "frobnicate")
    assert r.code == 2 and "no command 'frobnicate'" in r.stderr and "create" in r.stderr
    r = region.cli("vpc")
    assert r.code == 2 and "create" in r.stdout and "list" in r.stdout
    r = region.cli("--help")
    commands = [line.split()[0] for line in r.stdout.split("commands:\n")[1].splitlines() if line]
    assert r.code == 0 and "vpc" in commands and "server" not in commands  # hidden daemons


def test_wait_names_pending_hosts_on_timeout(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    region.silent.add("az2-h1")
    r = region.cli("instance", "create", "b", "--subnet", "web", "--zone", "az2",
                   "--wait", "--timeout", "0.5")  # fmt: skip
    assert r.code == 1
    assert "still pending: az2-h1" in r.stderr and r.stderr.count("\n") == 1
    assert r.stdout == ""


def test_wait_warns_about_hosts_that_applied_with_errors(region: Region) -> None:
    region.failing.add("az1-h1")
    region.play_agents()
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    r = region.cli("instance", "create", "a", "--subnet", "web", "--zone", "az1", "--wait")
    assert r.code == 0, r.stderr
    assert r.stderr.startswith("warning: revision ") and "az1-h1" in r.stderr
    assert "running" in r.stdout


def test_delete_waits_and_says_what_it_deleted(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    vpc_id = region.cli("vpc", "show", "prod", "--json").json()["id"]
    r = region.ok("vpc", "delete", "prod", "--wait")
    assert r.stdout == f"deleted vpc prod ({vpc_id})\n"
    assert region.ok("vpc", "list").stdout == "no vpcs\n"


def test_bad_token_and_no_config(region: Region, monkeypatch: pytest.MonkeyPatch) -> None:
    r = region.cli("--token", "wrong", "vpc", "list")
    assert r.code == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    monkeypatch.delenv("YUNHAN_ENDPOINT")
    r = region.cli("vpc", "list")
    assert r.code == 1 and "no Yunhan endpoint configured" in r.stderr


def test_flags_beat_environment(region: Region, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YUNHAN_TOKEN", "wrong")
    assert region.cli("vpc", "list").code == 1
    r = region.cli("--token", "yh_cli-test-admin", "vpc", "list")
    assert r.code == 0 and r.stdout == "no vpcs\n"


def test_project_create_prints_the_token_that_works(region: Region) -> None:
    r = region.ok("project", "create", "team-a")
    token = r.stdout.splitlines()[-1]
    assert r.stdout.startswith("created project team-a (")
    tenant = region.cli("--token", token, "vpc", "create", "mine", "--cidr", "10.0.0.0/16")
    assert tenant.code == 0
    assert region.cli("--token", token, "project", "list").code == 1  # admin only
    b = region.cli("project", "create", "team-b", "--json").json()
    other = region.ok("project", "token", "team-b").stdout.strip()
    assert other and other != b["token"]
    names = [p["name"] for p in region.cli("project", "list", "--json").json()]
    assert {"team-a", "team-b"} <= set(names)


def test_unreachable_endpoint_is_a_hint_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from yunhan.cli.main import main

    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["--endpoint", "http://127.0.0.1:1", "--token", "t", "vpc", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Yunhan API at http://127.0.0.1:1")
    assert "Traceback" not in err


def test_exec_refuses_what_does_not_run_here(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    region.silent.add("az1-h1")
    region.ok("instance", "create", "a", "--subnet", "web", "--zone", "az1")
    r = region.cli("instance", "exec", "a", "--", "true")
    assert r.code == 1 and "instance a is" in r.stderr and "not running" in r.stderr
    region.silent.clear()
    region.play_agents()  # running now, but its namespace is on no machine of ours
    r = region.cli("instance", "exec", "a", "--", "true")
    assert r.code == 1 and r.stderr.startswith("error: instance a has no network namespace")


def test_exec_runs_the_command_after_the_separator(
    region: Region, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    inst = region.cli("instance", "create", "a", "--subnet", "web", "--zone", "az1",
                      "--json").json()  # fmt: skip
    (tmp_path / "ns").touch()
    region.silent.add("az1-h1")  # the test reports for az1-h1 itself
    region.report("az1-h1", 0, {inst["id"]: {"phase": "running", "netns": str(tmp_path / "ns")}})
    ran: list[list[str]] = []

    def fake_exec(file: str, argv: list[str]) -> None:
        ran.append(argv)

    monkeypatch.setattr("os.execvp", fake_exec)
    assert region.cli("instance", "exec", "a", "--", "ping", "-c", "1", "10.0.1.3").code == 0
    assert ran == [["nsenter", f"--net={tmp_path / 'ns'}", "--", "ping", "-c", "1", "10.0.1.3"]]


def test_unbalanced_quotes_in_command_are_a_one_line_error(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    r = region.cli("instance", "create", "a", "--subnet", "web", "--zone", "az1",
                   "--command", "sh -c 'echo hi")  # fmt: skip
    assert r.code == 1 and r.stderr.count("\n") == 1
    assert "--command" in r.stderr and "quotation" in r.stderr
    assert region.ok("instance", "list").stdout == "no instances\n"  # nothing was created


def test_an_endpoint_that_is_not_the_api_is_a_hint(tmp_path: Path) -> None:
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Page)
    t = threading.Thread(target=srv.serve_forever)
    t.start()
    try:
        endpoint = f"http://127.0.0.1:{srv.server_port}"
        with (
            Client(endpoint, "t", transport=HttpTransport()) as c,
            pytest.raises(YunhanError, match="not JSON") as info,
        ):
            c.get("/v1/vpcs")
        assert endpoint in str(info.value) and "text/html" in str(info.value)
    finally:
        srv.shutdown()
        t.join()


def test_labels_at_create_and_selected_by_list(region: Region) -> None:
    region.ok("vpc", "create", "a", "--cidr", "10.0.0.0/16", "--label", "env=prod",
              "--label", "team=net")  # fmt: skip
    region.ok("vpc", "create", "b", "--cidr", "10.1.0.0/16", "--label", "env=dev")
    region.ok("vpc", "create", "c", "--cidr", "10.2.0.0/16")
    assert [v["name"] for v in region.cli("vpc", "list", "-l", "env=prod", "--json").json()] == [
        "a"
    ]
    both = region.cli("vpc", "list", "-l", "env=prod", "-l", "team=net", "--json").json()
    assert [v["name"] for v in both] == ["a"]
    assert len(region.cli("vpc", "list", "--json").json()) == 3
    region.ok("subnet", "create", "s", "--vpc", "b", "--cidr", "10.1.1.0/24", "--label", "x=y")
    assert [s["name"] for s in region.cli("subnet", "list", "-l", "x=y", "--json").json()] == ["s"]
    bad = region.cli("vpc", "create", "d", "--cidr", "10.3.0.0/16", "--label", "Bad.Com/x=1")
    assert bad.code == 1 and "labels" in bad.stderr
