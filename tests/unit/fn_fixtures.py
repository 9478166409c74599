"""An in-memory function host behind the real HostClient, for tests of the API's router.

`FakeFunctionHost` speaks the function host's HTTP protocol (docs/functions.md, "The
function host in the agent") as an httpx transport handler: `PUT /versions` checks the
sha256 and unpacks the code, `POST /workers` spawns (404 "version not deployed" first, as
a fresh host answers), `POST /workers/{w}/invoke` runs the handler in process (the
module's source exec'd from the archive; `handlers[name]` overrides it, for the AI
services whose models are not needed here), `DELETE /workers/{w}` stops, `GET /logs`.
What the real host does in a sandbox it does in a thread: a handler that overruns its
timeout is reported as "timed out after N s" and its worker as exited, as the runtime does.

`functions_on(state, hosts)` puts a real `yunhan.api.functions.Functions` on an app's
state whose hosts are these fakes, each reached through `HostClient(endpoint, key,
transport=httpx.MockTransport(host.handle))`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import threading
import time
import traceback
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx

from yunhan.api.deps import AppState
from yunhan.api.function_hosts import FunctionHostInfo
from yunhan.api.functions import Functions
from yunhan.functions.bundle import read_sources
from yunhan.functions.hostclient import HostClient

Handler = Callable[[Any, Any], Any]


class FakeFunctionHost:
    def __init__(self, name: str = "h1", memory_mb: int = 4096) -> None:
        self.name = name
        self.memory_mb = memory_mb
        self.endpoint = f"http://{name}.fn.test:4711"
        self.key = f"key-{name}"
        self.lock = threading.Lock()
        self.versions: dict[tuple[str, int], dict[str, Any]] = {}
        self.workers: dict[str, dict[str, Any]] = {}
        self.stopped: list[tuple[str, str, int]] = []  # (worker, function, version)
        self.events: list[tuple[str, int, Any]] = []  # (function name, version, event)
        self.logs: dict[str, list[str]] = {}
        self.handlers: dict[str, Handler] = {}
        self.spawn_gate = threading.Event()  # cleared: spawns wait for it
        self.spawn_gate.set()
        self.spawning = threading.Event()  # set when a spawn of a deployed version began
        self.n = 0

    # -- the protocol ---------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return _json(401, {"error": "bad key"})
        parts = request.url.path.strip("/").split("/")
        body = json.loads(request.content) if request.content else None
        m = request.method
        if m == "PUT" and parts[0] == "versions":
            return self._put_version(parts[1], int(parts[2]), body)
        if m == "POST" and parts == ["workers"]:
            return self._spawn(body)
        if m == "POST" and parts[0] == "workers" and parts[-1] == "invoke":
            return self._invoke(parts[1], body)
        if m == "DELETE" and parts[0] == "workers":
            return self._stop(parts[1])
        if m == "GET" and parts == ["workers"]:
            return _json(200, [{"worker": w, **d} for w, d in self.workers.items()])
        if m == "GET" and parts[0] == "logs":
            tail = int(request.url.params.get("tail", "100"))
            return _json(200, {"lines": self.logs.get(parts[1], [])[-tail:]})
        return _json(404, {"error": f"no route {m} {request.url.path}"})

    def _put_version(self, fn: str, version: int, body: Any) -> httpx.Response:
        tar_gz = base64.b64decode(body["tar_gz"])
        if hashlib.sha256(tar_gz).hexdigest() != body["sha256"]:
            return _json(422, {"error": "sha256 mismatch"})
        with self.lock:
            self.versions[(fn, version)] = {**body, "sources": read_sources(tar_gz)}
        return _json(200, {"deployed": True})

    def _spawn(self, body: Any) -> httpx.Response:
        key = (body["function"], int(body["version"]))
        if key not in self.versions:
            return _json(404, {"error": "version not deployed"})
        self.spawning.set()
        self.spawn_gate.wait(10)
        with self.lock:
            self.n += 1
            wid = f"{self.name}-w{self.n}"
            self.workers[wid] = {"function": key[0], "version": key[1], "owner": body["owner"],
                                 "netns": body.get("netns"), "busy": False}  # fmt: skip
        return _json(201, {"worker": wid, "spawn_ms": 1.0})

    def _invoke(self, wid: str, body: Any) -> httpx.Response:
        with self.lock:
            w = self.workers.get(wid)
        if w is None:
            return _json(404, {"error": f"no worker {wid}"})
        v = self.versions[(w["function"], w["version"])]
        rid, event, timeout_s = body["request_id"], body["event"], float(body["timeout_s"])
        with self.lock:
            self.events.append((v["name"], w["version"], event))
            self.logs.setdefault(w["function"], []).append(f"START {rid} v{w['version']}")
        ctx = SimpleNamespace(function_name=v["name"], function_version=str(w["version"]),
                              memory_limit_in_mb=v["memory_mb"], request_id=rid)  # fmt: skip
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                out["result"] = self._handler(v)(event, ctx)
                out["ok"] = True
            except BaseException as exc:
                out["ok"] = False
                out["error"] = f"{type(exc).__name__}: {exc}"
                tb = exc.__traceback__  # without this frame, as the worker leaves out its own
                tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
                out["traceback"] = "".join(traceback.format_exception(type(exc), exc, tb))

        t0 = time.monotonic()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(timeout_s)
        ms = (time.monotonic() - t0) * 1000
        exited = t.is_alive()
        if exited:  # the runtime kills a worker that overran
            out = {"ok": False, "error": f"timed out after {timeout_s:g} s"}
            with self.lock:
                self.workers.pop(wid, None)
        if out.get("traceback"):
            with self.lock:
                self.logs[w["function"]].append(f"[{rid}] {out['error']}")
        return _json(200, {"request_id": rid, "result": None, "error": None, "traceback": None,
                           **out, "duration_ms": ms, "billed_ms": math.ceil(ms),
                           "worker_exited": exited})  # fmt: skip

    def _handler(self, v: dict[str, Any]) -> Handler:
        if v["name"] in self.handlers:
            return self.handlers[v["name"]]
        module, _, func = v["handler"].rpartition(".")
        ns: dict[str, Any] = {"__name__": module}
        exec(compile(v["sources"][f"{module}.py"], f"{module}.py", "exec"), ns)
        fn: Handler = ns[func]
        return fn

    def _stop(self, wid: str) -> httpx.Response:
        with self.lock:
            w = self.workers.pop(wid, None)
        if w is None:
            return _json(404, {"error": f"no worker {wid}"})
        self.stopped.append((wid, w["function"], w["version"]))
        return _json(200, {"exit": {"code": 0, "signal": None, "oom": False}})

    # -- what tests look at -----------------------------------------------------------------

    def info(self) -> FunctionHostInfo:
        return FunctionHostInfo(self.name, "az1", self.endpoint, self.key, self.memory_mb, 0)

    def client(self) -> HostClient:
        return HostClient(self.endpoint, self.key, transport=httpx.MockTransport(self.handle))


def _json(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body)


def functions_on(
    st: AppState, hosts: list[FakeFunctionHost], *, queue: int = 100, seed: int | None = 7
) -> Functions:
    """A real Functions (router, metering, events) on `st`, its hosts the fakes."""
    by_endpoint = {h.endpoint: h for h in hosts}

    def client(endpoint: str, key: str) -> HostClient:
        h = by_endpoint[endpoint]
        return HostClient(endpoint, key, transport=httpx.MockTransport(h.handle))

    fns = Functions(
        st.store,
        st.function_rows,
        st.meter,
        st.journal.notice,
        lambda: [h.info() for h in hosts],
        client_factory=client,
        queue=queue,
        rng=random.Random(seed),
    )
    st.runner = fns
    return fns
