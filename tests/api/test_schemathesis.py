"""schemathesis against a real `yunhan server` with a populated region: /openapi.json must
describe exactly what the server does.

The server runs as `python -m yunhan.cli server` on loopback (its own state directory, a
free port); the region is made through the API: two zones, three registered hosts, a
project, VPCs, subnets, route tables (with a route and a policy route) and instances in
the admin project (schemathesis works with the admin token) and in a tenant's. Then
`schemathesis run` with every check and every phase (examples, coverage, fuzzing,
stateful), a bounded number of examples, one worker: the run must end with no failure
and no error.

`positive_data_acceptance` also accepts 422: a schema states shapes and patterns, not
"a CIDR inside the private ranges, not overlapping the VPC's other blocks" — values that
the schema allows but a rule refuses are answered 422, as docs/api.md says.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.polling import wait_for

ADMIN_TOKEN = "yh_schemathesis-admin"
MAX_EXAMPLES = int(os.environ.get("YUNHAN_SCHEMATHESIS_EXAMPLES", "8"))
MAX_TIME = 60  # seconds for the whole run (2 cores shared with others; the suite's budget)
ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path, run_prefix: str) -> Iterator[str]:
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("YUNHAN_DATABASE", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "yunhan.cli",
            "server",
            "--state-dir",
            str(tmp_path / f"{run_prefix}-state"),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-token-file",
            str(token_file),
            # Long polls end within a second: schemathesis asks for timeout=300 too.
            "--max-long-poll",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 30, "the server answers")
        _populate(url)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _populate(url: str) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=url, headers=admin, timeout=10) as api:

        def call(method: str, path: str, body: object, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
            r = api.request(method, path, json=body, headers=headers)
            assert r.status_code < 300, (method, path, r.status_code, r.text)
            return r.json()

        for z, n in (("az1", 1), ("az2", 2)):
            call("POST", "/v1/zones", {"name": z, "underlay_cidr": f"198.18.{n}.0/24"})
        for h, z, ip in (
            ("h1", "az1", "198.18.1.11"),
            ("h2", "az1", "198.18.1.12"),
            ("h3", "az2", "198.18.2.11"),
        ):
            call("PUT", f"/v1/agent/hosts/{h}", {"zone": z, "underlay_ip": ip, "mtu": 1500})
        tenant = call("POST", "/v1/projects", {"name": "tenant", "labels": {"team": "a"}})
        t = {"Authorization": f"Bearer {tenant['token']}"}
        for who in (admin, t):
            for v in range(2):
                call(
                    "POST",
                    "/v1/vpcs",
                    {"name": f"vpc{v}", "cidrs": [f"10.{v}.0.0/16"], "labels": {"env": "test"}},
                    who,
                )
                call(
                    "POST",
                    "/v1/subnets",
                    {"name": f"sub{v}", "vpc": f"vpc{v}", "cidr": f"10.{v}.1.0/24"},
                    who,
                )
                call("POST", "/v1/route-tables", {"name": f"rt{v}", "vpc": f"vpc{v}"}, who)
                call(
                    "POST",
                    f"/v1/route-tables/rt{v}/routes",
                    {"dst": "192.168.0.0/16", "next_hop": "blackhole"},
                    who,
                )
                call(
                    "POST",
                    f"/v1/route-tables/rt{v}/policy-routes",
                    {"priority": 10, "proto": "tcp", "port": "22", "action": "drop"},
                    who,
                )
                made = [
                    call(
                        "POST",
                        "/v1/instances",
                        {
                            "name": f"i{v}-{i}",
                            "subnet": f"sub{v}",
                            "zone": f"az{1 + i % 2}",
                            "labels": {"app": "web"},
                        },
                        who,
                    )
                    for i in range(3)
                ]
                call("POST", "/v1/flow-logs", {"vpc": f"vpc{v}"}, who)
                call(
                    "POST", "/v1/flow-logs", {"instance": f"i{v}-0", "traffic_type": "REJECT"}, who
                )
                # Records for the queries to find, posted as the instances' hosts' agents.
                for inst in made:
                    record = {
                        "instance": inst["id"],
                        "interface": "p-0",
                        "flow_direction": "ingress",
                        "srcaddr": "10.9.9.9",
                        "dstaddr": inst["status"]["ip"],
                        "srcport": 40000,
                        "dstport": 22,
                        "protocol": 6,
                        "packets": 3,
                        "bytes": 180,
                        "start": time.time() - 30,
                        "end": time.time() - 29,
                        "action": "ACCEPT",
                    }
                    host = inst["status"]["host"]
                    r = api.post(f"/v1/agent/hosts/{host}/flows", json={"records": [record]})
                    assert r.status_code == 204, r.text


def test_openapi_conformance(server: str, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert exe is not None, "schemathesis is a dev dependency (pyproject.toml)"
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    cmd = [
        exe,
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "run",
        f"{server}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--header",
        f"Authorization: Bearer {ADMIN_TOKEN}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--seed",
        "7",
        "--request-timeout",
        "10",
        "--max-time",
        str(MAX_TIME),
        "--no-shrink",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=MAX_TIME + 60, cwd=tmp_path)
    out = run.stdout + run.stderr
    summary = "\n".join(out.splitlines()[-40:])
    print(out)
    assert run.returncode == 0, summary
    assert not re.search(r"\b[1-9][0-9]* (failures?|errors?)\b", summary), summary
