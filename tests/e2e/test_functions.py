"""Functions end to end on a lab region, through the CLI and the HTTP gateway as a user
would: deploy, invoke, scale from zero and back under wrk, versions and a canary split,
metering against measured durations, limits and errors, isolation, and a function in a
VPC subnet reaching an instance.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.region import CliError, Region, netns_names

pytestmark = pytest.mark.root

SOURCES = {
    "hello.py": """
        import os

        def handler(event, context):
            return {"hello": (event or {}).get("name", "world"), "v": os.environ.get("V"),
                    "pid": os.getpid()}
    """,
    "slow.py": """
        import time

        def handler(event, context):
            time.sleep((event or {}).get("ms", 100) / 1000)
            return {"slept": (event or {}).get("ms", 100)}
    """,
    "hog.py": """
        def handler(event, context):
            chunks = []
            for _ in range(64):
                chunks.append(bytearray(16 << 20))  # 1 GiB in all, 16 MiB at a time
            return len(chunks)
    """,
    "oops.py": """
        def handler(event, context):
            print("about to fail", flush=True)
            raise RuntimeError("the handler broke on purpose")
    """,
    "spy.py": """
        import os

        def handler(event, context):
            # Every other process of the host, its environment and its working directory
            # (a worker's is its code): none may be readable by this worker's uid.
            mine, leaks = os.getuid(), []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if os.stat(f"/proc/{pid}").st_uid == mine:
                        continue
                except OSError:
                    continue
                for what in ("environ", "cwd/main.py", "cwd/hello.py"):
                    try:
                        with open(f"/proc/{pid}/{what}", "rb") as f:
                            f.read(1)
                        leaks.append(f"{pid}/{what}")
                    except OSError:
                        pass
            return {"leaks": leaks, "own": sorted(os.listdir("."))}
    """,
    "fetch.py": """
        import urllib.request

        def handler(event, context):
            try:
                with urllib.request.urlopen(event["url"], timeout=3) as r:
                    return {"status": r.status, "body": r.read().decode()[:100]}
            except OSError as exc:
                return {"error": str(exc)}
    """,
}


class Fn:
    """The region, a project with its own token, and the gateway's address."""

    def __init__(self, region: Region, src: Path, endpoint: str, project: str, token: str):
        self.r = region
        self.src = src
        self.endpoint = endpoint.rstrip("/")
        self.project = project
        self.token = token
        self.env = dict(region.env, YUNHAN_TOKEN=token)

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> Any:
        p = subprocess.run(
            [self.r.bin, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and p.returncode != 0:
            raise CliError([self.r.bin, *args], p)
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def deploy(self, name: str, module: str, *extra: str, check: bool = True) -> Any:
        return self.cli(
            "function", "deploy", name, "--source", str(self.src / f"{module}.py"),
            "--handler", f"{module}.handler", *extra, check=check,
        )  # fmt: skip

    def invoke(self, name: str, event: Any = None) -> dict[str, Any]:
        """The invocation's envelope (`function invoke --json`), whether the function
        succeeded (exit 0) or failed (exit 1)."""
        args = ["function", "invoke", name, "--json"]
        if event is not None:
            args += ["--data", json.dumps(event)]
        p = self.cli(*args, check=False)
        assert p.returncode in (0, 1), p.stderr
        out: dict[str, Any] = json.loads(p.stdout)
        assert (p.returncode == 0) == out["ok"]
        return out

    def gateway(self, client: httpx.Client, name: str, event: Any) -> httpx.Response:
        return client.post(
            f"{self.endpoint}/fn/{self.project}/{name}",
            json=event,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.json("events", "--for", name)
        return out


def wait_for(check: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def fn() -> Iterator[Fn]:
    home = Path(tempfile.mkdtemp(prefix="yunhan-e2e-fn-"))
    src = home / "src"
    src.mkdir()
    for name, body in SOURCES.items():
        (src / name).write_text(textwrap.dedent(body))
    r = Region(home)
    prefix = ""
    try:
        r.run("up", "--detach", "--zones", "2", "--hosts-per-zone", "1", timeout=300)
        prefix = json.loads((r.state / "region.json").read_text())["prefix"]
        cfg = json.loads((home / ".config" / "yunhan" / "config.json").read_text())
        r.run("project", "create", "shop")
        token = r.run("token", "create", "shop").stdout.strip().splitlines()[-1]
        yield Fn(r, src, cfg["endpoint"], "shop", token)
    finally:
        r.run("down", check=False, timeout=300)
        try:
            leftovers = {n for n in netns_names() if prefix and n.startswith(f"{prefix}-")}
            assert not leftovers, f"yunhan down left namespaces behind: {leftovers}"
            left = subprocess.run(
                ["pgrep", "-f", f"{home}"], capture_output=True, text=True
            ).stdout.split()
            assert not left, f"processes of the region outlived it: {left}"
        finally:
            shutil.rmtree(home, ignore_errors=True)


def test_deploy_then_invoke_through_the_cli_and_the_gateway(fn: Fn) -> None:
    fn.deploy("hello", "hello", "--env", "V=one")
    out = fn.invoke("hello", {"name": "yunhan"})
    assert out["ok"] and out["result"]["hello"] == "yunhan" and out["result"]["v"] == "one"
    assert out["request_id"] and out["billed_duration_ms"] >= 1
    assert out["billed_duration_ms"] >= out["duration_ms"]
    with httpx.Client(timeout=30) as c:
        resp = fn.gateway(c, "hello", {"name": "web"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["hello"] == "web" and resp.json()["v"] == "one"
    assert resp.headers["x-request-id"]
    assert int(resp.headers["x-yunhan-billed-duration-ms"]) >= 1
    shown = fn.json("function", "show", "hello")
    assert shown["status"]["latest_version"] == 1


def test_bad_deploys_are_refused_and_change_nothing(fn: Fn) -> None:
    (fn.src / "broken.py").write_text("def handler(event, context)\n    return 1\n")
    p = fn.deploy("broken", "broken", check=False)
    assert p.returncode != 0 and "syntax" in p.stderr.lower()
    p = fn.cli("function", "deploy", "nohandler", "--source", str(fn.src / "hello.py"),
               "--handler", "hello.nothere", check=False)  # fmt: skip
    assert p.returncode != 0 and "nothere" in p.stderr
    p = fn.deploy("tiny", "hello", "--memory", "63", check=False)
    assert p.returncode != 0 and "64" in p.stderr
    names = {f["name"] for f in fn.json("function", "list")}
    assert not names & {"broken", "nohandler", "tiny"}


def test_errors_timeouts_and_the_memory_limit_are_the_invocations_own(fn: Fn) -> None:
    fn.deploy("oops", "oops")
    out = fn.invoke("oops")
    assert not out["ok"] and "broke on purpose" in out["error"]
    assert "RuntimeError" in out["traceback"]
    logs = fn.cli("function", "logs", "oops").stdout
    assert "about to fail" in logs and "broke on purpose" in logs
    fn.deploy("nap", "slow", "--timeout", "1")
    out = fn.invoke("nap", {"ms": 3000})
    assert not out["ok"] and "timed out after 1 s" in out["error"]
    assert out["billed_duration_ms"] >= 1000
    fn.deploy("hog", "hog", "--memory", "64")
    out = fn.invoke("hog")
    assert not out["ok"] and "out of memory (limit 64 MB)" in out["error"]
    with httpx.Client(timeout=30) as c:  # others never noticed
        assert fn.gateway(c, "hello", {}).status_code == 200
        resp = fn.gateway(c, "oops", {})
    assert resp.status_code == 502 and "broke on purpose" in resp.text


def test_a_worker_reads_neither_another_functions_code_nor_its_environment(fn: Fn) -> None:
    hello = fn.invoke("hello")["result"]["pid"]  # a hello worker is up
    assert os.path.exists(f"/proc/{hello}")
    fn.deploy("spy", "spy")
    out = fn.invoke("spy")
    assert out["ok"], out
    assert "spy.py" in out["result"]["own"]  # its own code it reads
    assert out["result"]["leaks"] == []


def _wrk(fn: Fn, name: str, event: Any, seconds: int, conns: int) -> str:
    lua = fn.src / f"{name}.lua"
    lua.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(event))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {fn.token}"\n'
    )
    url = f"{fn.endpoint}/fn/{fn.project}/{name}"
    p = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua), url],
        capture_output=True, text=True, timeout=seconds + 30,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_load_scales_from_zero_to_several_workers_and_back(fn: Fn) -> None:
    fn.deploy("busy", "slow", "--concurrency", "1", "--max", "6",
              "--scale-window", "6", "--idle-grace", "2")  # fmt: skip
    report = _wrk(fn, "busy", {"ms": 100}, seconds=8, conns=8)
    assert re.search(r"Requests/sec:\s+\d", report), report
    events = fn.events("busy")
    ups = [e for e in events if e["reason"] == "ScaledUp"]
    assert ups, events
    most = max(int(m) for e in ups for m in re.findall(r"-> (\d+) worker", e["message"]))
    assert most >= 3, ups

    def zero() -> bool:
        return any(e["reason"] == "ScaledToZero" for e in fn.events("busy"))

    wait_for(zero, 40, "the scaler to take busy back to zero")


def test_a_ninety_ten_split_holds_over_two_thousand_requests(fn: Fn) -> None:
    fn.deploy("canary", "hello", "--env", "V=old")
    fn.deploy("canary", "hello", "--env", "V=new")
    fn.cli("function", "traffic", "canary", "v1=90,v2=10")
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(timeout=30) as c:
            for _ in range(n):
                resp = fn.gateway(c, "canary", {})
                assert resp.status_code == 200, resp.text
                with lock:
                    seen[resp.json()["v"]] += 1

    threads = [threading.Thread(target=client, args=(500,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sum(seen.values()) == 2000
    assert abs(seen["new"] / 2000 - 0.10) <= 0.03, seen


def test_metered_gb_seconds_match_the_measured_durations(fn: Fn) -> None:
    fn.deploy("meter", "slow", "--memory", "256")
    total_ms = 0.0
    for _ in range(12):
        out = fn.invoke("meter", {"ms": 200})
        assert out["ok"]
        total_ms += out["duration_ms"]
    expected = total_ms / 1000 * 256 / 1024

    def metered() -> float | None:
        rows = fn.json("usage", "--by", "function")["items"]
        row = next((x for x in rows if x["name"] == "meter"), None)
        return row["gb_seconds"] if row and row["requests"] == 12 else None

    got = wait_for(metered, 10, "usage of 12 requests")
    assert abs(got - expected) / expected < 0.01, (got, expected)


def test_a_function_in_a_vpc_subnet_reaches_an_instance_there(fn: Fn) -> None:
    fn.cli("vpc", "create", "fnv", "--cidr", "10.7.0.0/16")
    fn.cli("subnet", "create", "fns", "--vpc", "fnv", "--cidr", "10.7.1.0/24")
    fn.cli("instance", "create", "web", "--subnet", "fns", "--zone", "az2",
           "--command", "python3 -m http.server 8080 --directory /etc")  # fmt: skip
    inst = wait_for(
        lambda: (i := fn.json("instance", "show", "web"))["phase"] == "running" and i,
        90,
        "the instance running",
    )
    url = f"http://{inst['ip']}:8080/hostname"
    fn.deploy("inside", "fetch", "--vpc", "fnv", "--subnet", "fns")
    ports = [i for i in fn.json("instance", "list") if i["name"] == "fn-inside"]
    assert len(ports) == 1 and ports[0]["subnet"] == "fns"  # its port, shown as it is

    def reached() -> dict[str, Any] | None:
        p = fn.cli("function", "invoke", "inside", "--json", "--data", json.dumps({"url": url}),
                   check=False)  # fmt: skip
        # 503 until the port runs; then refused until the web server listens
        out = json.loads(p.stdout) if p.returncode in (0, 1) else {}
        return out if (out.get("result") or {}).get("status") == 200 else None

    out = wait_for(reached, 60, "the VPC function reaching the instance")
    assert out["result"]["body"].strip()
    fn.deploy("outside", "fetch")
    out = fn.invoke("outside", {"url": url})
    assert "error" in out["result"], out  # an isolated worker has no route there


def test_delete_retires_the_workers_and_the_port(fn: Fn) -> None:
    pid = fn.invoke("hello")["result"]["pid"]
    assert os.path.exists(f"/proc/{pid}")
    fn.cli("function", "delete", "hello")
    p = fn.cli("function", "invoke", "hello", check=False)
    assert p.returncode != 0 and "no function" in p.stderr
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "hello's worker to end")
    fn.cli("function", "delete", "inside")
    assert "fn-inside" not in {i["name"] for i in fn.json("instance", "list")}


def test_ai_services_are_enabled_called_and_metered_as_functions(fn: Fn) -> None:
    from tests.aiinputs import png

    fn.cli("ai", "enable", "ocr")
    fn.cli("ai", "enable", "langid")
    listed = {s["name"]: s["enabled"] for s in fn.json("ai", "list")}
    assert listed["ocr"] and listed["langid"] and not listed["speech"]
    image = fn.src / "text.png"
    image.write_bytes(png(["你好世界", "Hello World"]))
    with httpx.Client(timeout=120) as c:  # a multipart upload, as curl -F file=@… sends
        resp = c.post(
            f"{fn.endpoint}/v1/ai/ocr",
            files={"file": ("text.png", image.read_bytes(), "image/png")},
            headers={"Authorization": f"Bearer {fn.token}"},
        )
        assert resp.status_code == 200, resp.text
        lines = [ln["text"] for ln in resp.json()["result"]["lines"]]
        assert any("你好" in t for t in lines) and any("Hello" in t for t in lines), lines
        bad = c.post(
            f"{fn.endpoint}/v1/ai/ocr",
            files={"file": ("notes.txt", b"not an image", "text/plain")},
            headers={"Authorization": f"Bearer {fn.token}"},
        )
        assert bad.status_code == 422 and "not an image" in bad.text
    sentence = "Ceci est une phrase en français."
    out = json.loads(fn.cli("ai", "call", "langid", "--text", sentence, "--json").stdout)
    assert out["result"]["language"] == "fr"
    p = fn.cli("ai", "call", "nosuch", "--text", "x", check=False)
    assert p.returncode != 0 and "ocr" in p.stderr  # names the services there are
    rows = fn.json("usage", "--by", "function")["items"]
    assert {"ai-ocr", "ai-langid"} <= {r["name"] for r in rows}
