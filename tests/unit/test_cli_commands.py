"""The CLI against a small in-memory API behind httpx.MockTransport (no root, no server).

The fake behaves (STYLE §3): it keeps resources, resolves names or ids, answers errors in
the docs/api.md shape and reports convergence, so the tests assert on what a user sees.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from yunhan.cli import client as client_mod
from yunhan.cli.main import app

runner = CliRunner()
KIND = {"vpcs": "vpc", "subnets": "subnet", "instances": "inst", "zones": "zone"}


class FakeApi:
    """Just enough of docs/api.md for the CLI: one project plus the admin."""

    def __init__(self) -> None:
        self.revision = 1
        self.waited_for = 0
        self.failed: list[str] = []
        self.items: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KIND}
        self.pending: list[str] = []  # hosts that never converge, when set
        self.seen: list[str] = []
        self.add("zones", "az1", {"underlay_cidr": "198.18.1.0/24"}, {})
        self.add("zones", "az2", {"underlay_cidr": "198.18.2.0/24"}, {})
        self.hosts = [
            {"id": "host-00000001", "name": "az1-h1", "revision": 3,
             "spec": {"zone": self.ref("zones", "az1")["id"], "underlay_ip": "198.18.1.11",
                      "mtu": 1500},
             "status": {"healthy": True, "desired_revision": 7, "applied_revision": 6,
                        "vtep_index": 1, "error": None}},
        ]  # fmt: skip

    def add(self, coll: str, name: str, spec: dict[str, Any], status: dict[str, Any]) -> Any:
        self.revision += 1
        res = {
            "id": f"{KIND[coll]}-{secrets.token_hex(4)}",
            "kind": KIND[coll],
            "name": name,
            "project": "proj-00000001",
            "revision": self.revision,
            "spec": spec,
            "status": status,
        }
        self.items[coll][res["id"]] = res
        return res

    def ref(self, coll: str, ref: str) -> dict[str, Any]:
        for res in self.items[coll].values():
            if ref in (res["id"], res["name"]):
                return res
        raise LookupError(f"no {KIND[coll]} {ref!r} in this project")

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(f"{request.method} {request.url.path}")
        if request.headers.get("authorization") != "Bearer tok":
            return _err(401, "unauthorized", "the token is not valid")
        try:
            return self.route(request)
        except LookupError as exc:
            return _err(404, "not_found", str(exc).strip("'\""))

    def route(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")[1:]
        body = json.loads(request.content) if request.content else {}
        m, q = request.method, request.url.params
        if parts == ["revision"]:
            return httpx.Response(200, json={"revision": self.revision})
        if parts == ["converged"]:
            self.waited_for = int(q["revision"])
            ok = not self.pending
            if ok:
                for inst in self.items["instances"].values():
                    inst["status"]["phase"] = "running"
            return httpx.Response(200, json={"revision": int(q["revision"]),
                                             "converged": ok, "pending": self.pending,
                                             "failed": self.failed})  # fmt: skip
        if parts == ["hosts"]:
            return httpx.Response(200, json=self.hosts)
        if parts[0] == "projects" and m == "POST" and len(parts) == 3:
            return httpx.Response(200, json={"token": "another-for-" + parts[1]})
        if parts == ["projects"] and m == "POST":
            p = {"id": "proj-00000002", "name": body["name"], "spec": {}, "status": {}}
            return httpx.Response(201, json={"project": p, "token": "tok-of-" + body["name"]})
        coll = parts[0]
        if m == "GET" and len(parts) == 1:
            items = list(self.items[coll].values())
            if q.get("vpc"):
                items = [i for i in items if i["spec"]["vpc"] == self.ref("vpcs", q["vpc"])["id"]]
            return httpx.Response(200, json=items)
        if m == "GET":
            return httpx.Response(200, json=self.ref(coll, parts[1]))
        if m == "DELETE" and len(parts) == 2:
            res = self.ref(coll, parts[1])
            if coll == "vpcs" and any(
                s["spec"]["vpc"] == res["id"] for s in self.items["subnets"].values()
            ):
                return _err(409, "conflict", f"vpc {res['name']} still has subnets")
            del self.items[coll][res["id"]]
            self.revision += 1
            return httpx.Response(200, json=dict(res, revision=self.revision))
        if coll == "vpcs" and len(parts) == 1:
            return httpx.Response(201, json=self.add(coll, body["name"], {"cidrs": body["cidrs"]},
                                                     {"vni": 4097}))  # fmt: skip
        if coll == "vpcs":  # add a block
            res = self.ref(coll, parts[1])
            res["spec"]["cidrs"].append(body["cidr"])
            self.revision += 1
            res["revision"] = self.revision
            return httpx.Response(200, json=res)
        if coll == "subnets":
            vpc = self.ref("vpcs", body["vpc"])
            status = {"gateway": body["cidr"].replace("0/24", "1"), "available": 253}
            res = self.add(coll, body["name"], {"vpc": vpc["id"], "cidr": body["cidr"]}, status)
            return httpx.Response(201, json=res)
        sub = self.ref("subnets", body["subnet"])
        zone = self.ref("zones", body["zone"])
        spec = {"subnet": sub["id"], "zone": zone["id"], "ip": body.get("ip"),
                "command": body.get("command")}  # fmt: skip
        n = len(self.items["instances"]) + 2
        status = {"ip": body.get("ip") or f"10.0.1.{n}", "mac": "02:00:00:00:00:01",
                  "vpc": sub["spec"]["vpc"], "host": f"{zone['name']}-h1", "phase": "scheduled",
                  "netns": None, "uts": None, "message": None}  # fmt: skip
        return httpx.Response(201, json=self.add("instances", body["name"], spec, status))


def _err(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "details": {}}})


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeApi]:
    fake = FakeApi()
    monkeypatch.setattr(client_mod, "default_transport", httpx.MockTransport(fake))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("YUNHAN_ENDPOINT", "http://yunhan.test")
    monkeypatch.setenv("YUNHAN_TOKEN", "tok")
    yield fake


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


def ok_json(*args: str) -> Any:
    r = cli(*args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_vpc_create_list_show_json(api: FakeApi) -> None:
    created = ok_json("vpc", "create", "prod", "--cidr", "10.0.0.0/16", "--cidr", "10.1.0.0/16")
    assert created["name"] == "prod" and created["cidrs"] == ["10.0.0.0/16", "10.1.0.0/16"]
    assert created["id"].startswith("vpc-")
    listed = ok_json("vpc", "list")
    assert [(v["id"], v["name"]) for v in listed] == [(created["id"], "prod")]
    assert ok_json("vpc", "show", created["id"])["name"] == "prod"  # ids work as well as names
    added = ok_json("vpc", "add-cidr", "prod", "10.2.0.0/16")
    assert "10.2.0.0/16" in added["cidrs"]


def test_tables_for_people(api: FakeApi) -> None:
    cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    r = cli("vpc", "list")
    assert r.exit_code == 0
    header, row = r.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "ID", "CIDRS", "VNI"]
    assert row.split()[0] == "prod" and "10.0.0.0/16" in row
    r = cli("host", "list")
    assert "DESIRED" in r.stdout and "APPLIED" in r.stdout
    assert "az1-h1" in r.stdout and "az1" in r.stdout and "yes" in r.stdout
    assert cli("subnet", "list").stdout.strip() == "no subnets"


def test_subnet_and_instances_with_wait(api: FakeApi) -> None:
    cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    sub = ok_json("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24", "--wait")
    assert (
        sub["vpc"] == "prod" and sub["cidr"] == "10.0.1.0/24" and sub["vpc_id"].startswith("vpc-")
    )
    a = ok_json("instance", "create", "a", "--subnet", "web", "--zone", "az1", "--wait",
                "--command", "sleep infinity")  # fmt: skip
    assert a["phase"] == "running"  # --wait returned only once the agent reported it running
    assert a["zone"] == "az1" and a["host"] == "az1-h1" and a["ip"] == "10.0.1.2"
    assert a["command"] == ["sleep", "infinity"]
    ok_json("instance", "create", "b", "--subnet", "web", "--zone", "az2", "--ip", "10.0.1.9")
    rows = {i["name"]: i for i in ok_json("instance", "list")}
    assert rows["b"]["ip"] == "10.0.1.9" and rows["b"]["zone"] == "az2"
    assert rows["b"]["subnet"] == "web" and rows["b"]["vpc"] == "prod"
    assert {"id", "name", "zone", "ip", "host", "phase", "subnet", "vpc"} <= set(rows["a"])
    assert [s["name"] for s in ok_json("subnet", "list", "--vpc", "prod")] == ["web"]
    assert [z["name"] for z in ok_json("zone", "list")] == ["az1", "az2"]
    assert ok_json("revision") == {"revision": api.revision}
    hosts = ok_json("host", "list")
    assert hosts[0]["name"] == "az1-h1" and hosts[0]["zone"] == "az1" and hosts[0]["healthy"]
    assert hosts[0]["netns"] is None  # not the lab region of this machine


def test_api_errors_are_one_line_and_exit_1(api: FakeApi) -> None:
    r = cli("vpc", "show", "nope")
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: no vpc 'nope' in this project"
    assert "Traceback" not in r.output
    cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    cli("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    r = cli("vpc", "delete", "prod")
    assert r.exit_code == 1 and "still has subnets" in r.stderr


def test_wait_names_pending_hosts_on_timeout(api: FakeApi) -> None:
    api.pending = ["az2-h1"]
    r = cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16", "--wait", "--timeout", "0.3")
    assert r.exit_code == 1
    assert "still pending: az2-h1" in r.stderr


def test_wait_warns_about_hosts_that_applied_with_errors(api: FakeApi) -> None:
    api.failed = ["az1-h1"]
    r = cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16", "--wait")
    assert r.exit_code == 0
    assert "warning" in r.stderr and "az1-h1" in r.stderr


def test_delete_waits_for_the_revision_of_the_delete(api: FakeApi) -> None:
    cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    r = cli("vpc", "delete", "prod", "--wait")
    assert r.exit_code == 0 and r.stdout.startswith("deleted vpc prod (vpc-")
    assert api.waited_for == api.revision  # the delete's own revision


def test_bad_token_and_no_config(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    r = cli("--token", "wrong", "vpc", "list")
    assert r.exit_code == 1 and r.stderr.strip() == "error: the token is not valid"
    monkeypatch.delenv("YUNHAN_ENDPOINT")
    r = cli("vpc", "list")
    assert r.exit_code == 1 and "no Yunhan endpoint configured" in r.stderr


def test_project_create_prints_the_token(api: FakeApi) -> None:
    r = cli("project", "create", "team-a")
    assert r.exit_code == 0 and r.stdout.splitlines()[-1] == "tok-of-team-a"
    assert ok_json("project", "create", "team-b")["token"] == "tok-of-team-b"
    assert cli("project", "token", "team-b").stdout.strip() == "another-for-team-b"


def test_unreachable_endpoint_is_a_hint_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    r = cli("--endpoint", "http://127.0.0.1:1", "--token", "t", "vpc", "list")
    assert r.exit_code == 1
    assert "cannot reach the Yunhan API at http://127.0.0.1:1" in r.stderr
    assert "Traceback" not in r.output


def test_exec_refuses_what_does_not_run_here(api: FakeApi, tmp_path: Path) -> None:
    cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    cli("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    cli("instance", "create", "a", "--subnet", "web", "--zone", "az1")
    r = cli("instance", "exec", "a", "--", "true")
    assert r.exit_code == 1 and "instance a is scheduled, not running" in r.stderr
    inst = api.ref("instances", "a")
    inst["status"].update(phase="running", netns=str(tmp_path / "missing"))
    r = cli("instance", "exec", "a", "--", "true")
    assert r.exit_code == 1 and "not on this machine" in r.stderr


def test_exec_runs_the_command_after_the_separator(
    api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    cli("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    cli("instance", "create", "a", "--subnet", "web", "--zone", "az1")
    (tmp_path / "ns").touch()
    api.ref("instances", "a")["status"].update(phase="running", netns=str(tmp_path / "ns"))
    ran: list[list[str]] = []

    def fake_exec(file: str, argv: list[str]) -> None:
        ran.append(argv)

    monkeypatch.setattr("os.execvp", fake_exec)
    assert cli("instance", "exec", "a", "--", "ping", "-c", "1", "10.0.1.3").exit_code == 0
    assert ran == [["nsenter", f"--net={tmp_path / 'ns'}", "--", "ping", "-c", "1", "10.0.1.3"]]


def test_unbalanced_quotes_in_command_are_a_one_line_error(api: FakeApi) -> None:
    cli("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    cli("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    r = cli("instance", "create", "a", "--subnet", "web", "--zone", "az1",
            "--command", "sh -c 'echo hi")  # fmt: skip
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "--command" in r.stderr and "quotation" in r.stderr
    assert api.items["instances"] == {}  # nothing was created


def test_an_endpoint_that_is_not_the_api_is_a_hint_not_a_traceback(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = httpx.MockTransport(lambda _r: httpx.Response(200, text="<html>hello</html>"))
    monkeypatch.setattr(client_mod, "default_transport", page)
    r = cli("vpc", "list")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "http://yunhan.test" in r.stderr and "not JSON" in r.stderr
