"""The function host: this host's FunctionRuntime, served over HTTP to the router.

The router (in the API server) keeps pools of workers on hosts; it talks to each host's
agent through this endpoint (issue 11, slice 2, "Contract B"):

    PUT    /versions/{function}/{version}  {name, handler, memory_mb, timeout_s, env,
                                            sha256, tar_gz}       -> 200 {deployed: true}
    POST   /workers          {function, version, owner, netns}   -> 201 {worker, spawn_ms}
                             404 {"error": "version not deployed"}: PUT it, then retry
    POST   /workers/{wid}/invoke  {request_id, event, timeout_s}   -> 200 Invocation + worker_exited
    DELETE /workers/{wid}                                        -> 200 {exit: {...}}
    GET    /workers?owner=X                                      -> 200 [{worker, ...}]
    GET    /logs/{function}?tail=N                               -> 200 {lines: [...]}

Errors are {"error": message} with a 4xx/5xx status. Every request carries
`Authorization: Bearer <key>`, a random key made when the host starts and reported to the
control plane in the agent's status (only the admin and the server see it).

Functions are named by their id (`fn-…`) in the runtime, not by their name: two projects
may both have a function "hello", and the runtime gives each name its own uid and code
directory. A thread per connection (ThreadingHTTPServer): an invocation holds its
connection for as long as the handler runs, and invocations of different workers run at
once. A worker whose owner (a router) has not touched it for `idle_reap_s` while it is
idle is stopped: that router died or forgot it, and nobody else will.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hashlib
import hmac
import io
import json
import logging
import re
import secrets
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from yunhan.errors import (
    Conflict,
    FunctionRuntimeError,
    NotFound,
    ValidationError,
    WorkerGone,
    YunhanError,
)
from yunhan.functions import deploy
from yunhan.functions.runtime import Deployment, FunctionRuntime, Worker, WorkerExit
from yunhan.functions.spec import FunctionSpec

log = logging.getLogger("yunhan.agent.functions")

IDLE_REAP_S = 600.0  # a worker untouched by its owner this long, while idle, is stopped
MAX_UNPACKED = 50 << 20  # bytes of code one version may unpack to
MAX_BODY = 100 << 20  # bytes of a request body (the base64 of a tarball, mostly)
MAX_TAIL = 10_000  # log lines one request may ask for
VERSION_NOT_DEPLOYED = "version not deployed"  # the 404 the router answers with a PUT
_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")  # function ids, as the runtime names functions


@dataclass(eq=False)
class _Held:
    """A worker this endpoint spawned, and who asked for it."""

    worker: Worker
    function: str
    version: int
    owner: str
    started_at: float  # wall clock, for the listing
    touched: float  # the host's clock: the last spawn, invoke or listing by its owner
    busy: int = 0  # invocations in flight


def listen_address(listen: str) -> tuple[str, int]:
    """ "host:port" -> (host, port); the port may be 0 (any free one)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValidationError(f"--functions-listen {listen!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def unpack(tar_gz: bytes, dest: Path) -> None:
    """Unpack a version's tar.gz into `dest`, refusing (ValidationError) anything but
    regular files and directories under it, and more than MAX_UNPACKED bytes."""
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_gz), mode="r:gz") as tar:
            members = tar.getmembers()
            total = 0
            for m in members:
                parts = Path(m.name).parts
                if m.name.startswith("/") or ".." in parts:
                    raise ValidationError(f"source: {m.name!r} points outside the code")
                if not (m.isfile() or m.isdir()):
                    raise ValidationError(
                        f"source: {m.name!r} is not a regular file or a directory"
                    )
                total += m.size
                if total > MAX_UNPACKED:
                    raise ValidationError(
                        f"source: more than {MAX_UNPACKED >> 20} MB once unpacked"
                    )
            tar.extractall(dest, members=members)  # members checked above
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValidationError(f"source: not a readable tar.gz ({exc})") from exc


def _exit_json(e: WorkerExit) -> dict[str, Any]:
    return {
        "code": e.code,
        "signal": e.signal,
        "oom": e.oom,
        "maxMemoryBytes": e.max_memory_bytes,
    }


class FunctionHost:
    """A FunctionRuntime and the HTTP endpoint over it. `start()` starts both (and the
    reaper); `stop()` stops both, leaving no worker, cgroup or worker directory."""

    def __init__(
        self,
        runtime: FunctionRuntime,
        *,
        listen: str = "127.0.0.1:0",
        key: str | None = None,
        idle_reap_s: float = IDLE_REAP_S,
        reap_every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not idle_reap_s > 0:
            raise ValidationError(f"idle reap time {idle_reap_s}: a positive number of seconds")
        self.runtime = runtime
        self.key = key or secrets.token_urlsafe(32)
        self.idle_reap_s = idle_reap_s
        self.reap_every = reap_every if reap_every is not None else min(30.0, idle_reap_s / 4)
        self._listen = listen_address(listen)
        self._clock = clock
        self._lock = threading.Lock()  # _held and _deps
        self._deploy_lock = threading.Lock()  # one deploy at a time (they are rare)
        self._held: dict[str, _Held] = {}
        self._deps: dict[tuple[str, int], tuple[Deployment, str]] = {}  # -> (dep, sha256)
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._endpoint: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.runtime.start()
        try:
            self._server = _Server(self._listen, self)
        except BaseException:
            self.runtime.stop()
            raise
        self._endpoint = self._url(self._server)
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="fn-http", daemon=True),
            threading.Thread(target=self._reap_loop, name="fn-reaper", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info("function host listening on %s", self.endpoint)

    def stop(self) -> None:
        """Stop serving, then stop every worker and the zygote (the runtime's stop)."""
        if self._server is None:
            return  # never started, or stopped already
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()
        self._server = None
        for t in self._threads:
            t.join(timeout=5.0)
        self._threads = []
        with self._lock:
            self._held.clear()
        self.runtime.stop()

    def __enter__(self) -> FunctionHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The URL the router calls (fixed at start: it stays known after a stop)."""
        if self._endpoint is None:
            raise FunctionRuntimeError("the function host is not started")
        return self._endpoint

    def _url(self, server: ThreadingHTTPServer) -> str:
        addr = server.server_address
        host, port = str(addr[0]), int(addr[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def report(self) -> dict[str, Any]:
        """What the agent's status report carries under `functions`."""
        with self._lock:
            workers = len(self._held)
        return {
            "endpoint": self.endpoint,
            "key": self.key,
            "memory_mb": self.runtime.host_memory_mb,
            "workers": workers,
        }

    # -- the reaper --------------------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self._stop.wait(self.reap_every):
            try:
                self.reap()
            except Exception:  # one bad pass must not end the loop
                log.exception("function worker reaping failed")

    def reap(self) -> list[str]:
        """Forget workers that exited on their own; stop those idle and untouched by their
        owner for `idle_reap_s`. Restart the runtime if its zygote died (its workers died
        with it). Returns the ids of the workers stopped here."""
        if not self.runtime.zygote_alive and not self._stop.is_set():
            log.warning("the function zygote died; restarting the function runtime")
            with self._lock:
                self._held.clear()
            self.runtime.stop()
            self.runtime.start()
            return []
        gone = {w.id for w in self.runtime.collect()}
        now = self._clock()
        with self._lock:
            for wid in gone:
                self._held.pop(wid, None)
            idle = [
                h
                for h in self._held.values()
                if h.busy == 0 and now - h.touched >= self.idle_reap_s
            ]
            for h in idle:
                del self._held[h.worker.id]  # under the lock: no invocation can start now
        for h in idle:
            log.info(
                "stopping function worker %s (%s v%d): owner %s idle for %.0f s",
                h.worker.id,
                h.function,
                h.version,
                h.owner,
                now - h.touched,
            )
            self.runtime.stop_worker(h.worker)
        return [h.worker.id for h in idle]

    # -- the operations (each route's one implementation) -------------------------------

    def put_version(self, function: str, version: int, body: dict[str, Any]) -> dict[str, Any]:
        _check_id(function)
        sha = _str(body, "sha256")
        try:
            code = base64.b64decode(_str(body, "tar_gz"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError(f"tar_gz: not base64 ({exc})", field="tar_gz") from exc
        if hashlib.sha256(code).hexdigest() != sha:
            raise ValidationError("tar_gz does not match its sha256", field="sha256")
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ValidationError("env: an object of strings", field="env")
        spec = FunctionSpec(
            name=function,
            version=version,
            handler=_str(body, "handler"),
            memory_mb=_int(body, "memory_mb", 128),
            timeout_s=_num(body, "timeout_s", 3.0),
            env=env,
        )
        with self._deploy_lock:
            have = self._deployment(function, version)
            if have is not None:
                dep, had = have
                if had == sha and dep.spec == spec:
                    return {"deployed": True}
                raise Conflict(
                    f"{spec.key} is deployed here with other code or config: versions are "
                    "immutable",
                    function=function,
                    version=version,
                )
            stale = deploy.code_dir(self.runtime.state_dir, spec)
            if stale.exists():  # installed, but never recorded: a deploy cut short
                deploy.remove(stale)
            # Unpacked under the state dir: on its file system, and gone with it.
            incoming = self.runtime.state_dir / "incoming"
            incoming.mkdir(mode=0o700, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=incoming) as tmp:
                unpack(code, Path(tmp))
                dep = self.runtime.deploy(spec, Path(tmp))
            self._record(dep, sha, str(body.get("name") or ""))
            with self._lock:
                self._deps[(function, version)] = (dep, sha)
        log.info("deployed %s (%s)", spec.key, sha[:12])
        return {"deployed": True}

    def spawn(self, function: str, version: int, owner: str, netns: str | None) -> dict[str, Any]:
        _check_id(function)
        have = self._deployment(function, version)
        if have is None:
            raise NotFound(VERSION_NOT_DEPLOYED, function=function, version=version)
        w = self.runtime.spawn(have[0], netns=netns)
        with self._lock:
            self._held[w.id] = _Held(w, function, version, owner, time.time(), self._clock())
        return {"worker": w.id, "spawn_ms": round(w.cold_start_ms, 3)}

    def invoke(
        self, wid: str, event: Any, request_id: str | None, timeout_s: float | None
    ) -> dict[str, Any]:
        with self._lock:
            h = self._held.get(wid)
            if h is None:
                raise NotFound(f"no worker {wid} here", worker=wid)
            h.busy += 1
            h.touched = self._clock()
        try:
            inv = self.runtime.invoke(h.worker, event, timeout=timeout_s, request_id=request_id)
        except WorkerGone as exc:
            with self._lock:
                self._held.pop(wid, None)
            raise NotFound(exc.message, worker=wid) from exc
        finally:
            with self._lock:
                h.busy -= 1
                h.touched = self._clock()
        if inv.worker_exited:
            with self._lock:
                self._held.pop(wid, None)
        return {**inv.to_json(), "worker_exited": inv.worker_exited}

    def stop_worker(self, wid: str) -> dict[str, Any]:
        with self._lock:
            h = self._held.pop(wid, None)
        if h is None:
            raise NotFound(f"no worker {wid} here", worker=wid)
        return {"exit": _exit_json(self.runtime.stop_worker(h.worker))}

    def workers(self, owner: str | None) -> list[dict[str, Any]]:
        """The workers held here (of `owner`, when given: a listing by the owner counts as
        touching them, so a live router keeps its idle workers)."""
        now = self._clock()
        with self._lock:
            held = [h for h in self._held.values() if owner is None or h.owner == owner]
            if owner is not None:
                for h in held:
                    h.touched = now
            return [
                {
                    "worker": h.worker.id,
                    "function": h.function,
                    "version": h.version,
                    "owner": h.owner,
                    "busy": h.busy > 0,
                    "started_at": h.started_at,
                }
                for h in held
            ]

    def logs(self, function: str, tail: int) -> dict[str, Any]:
        _check_id(function)
        tail = max(0, min(tail, MAX_TAIL))
        try:
            with open(self.runtime.log_path(function), errors="replace") as f:
                lines = collections.deque(f, maxlen=tail) if tail else collections.deque()
        except FileNotFoundError:
            return {"lines": []}
        return {"lines": [line.rstrip("\n") for line in lines]}

    # -- versions kept across restarts -------------------------------------------------

    def _record_path(self, function: str, version: int) -> Path:
        return self.runtime.state_dir / "versions" / f"{function}.v{version}.json"

    def _record(self, dep: Deployment, sha: str, name: str) -> None:
        """Note the version down (root only): an agent restarted over the same state dir
        serves the code it has instead of refusing it as "already deployed"."""
        path = self._record_path(dep.spec.name, dep.spec.version)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        s = dep.spec
        body = {
            "name": name,
            "sha256": sha,
            "handler": s.handler,
            "memory_mb": s.memory_mb,
            "timeout_s": s.timeout_s,
            "env": dict(s.env),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(path)

    def _deployment(self, function: str, version: int) -> tuple[Deployment, str] | None:
        with self._lock:
            have = self._deps.get((function, version))
        if have is not None:
            return have
        try:
            rec = json.loads(self._record_path(function, version).read_text())
            spec = FunctionSpec(
                function,
                version,
                rec["handler"],
                int(rec["memory_mb"]),
                float(rec["timeout_s"]),
                dict(rec["env"]),
            )
            sha = str(rec["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        code = deploy.code_dir(self.runtime.state_dir, spec)
        if not code.is_dir():
            return None
        have = (Deployment(spec, code, code.stat().st_gid), sha)
        with self._lock:
            self._deps[(function, version)] = have
        return have


# -- HTTP ----------------------------------------------------------------------------------


def _check_id(function: str) -> None:
    if not _ID.match(function):
        raise ValidationError(f"function {function!r}: not a function id", field="function")


def _str(body: dict[str, Any], key: str) -> str:
    v = body.get(key)
    if not isinstance(v, str) or not v:
        raise ValidationError(f"{key}: a non-empty string is required", field=key)
    return v


def _int(body: dict[str, Any], key: str, default: int) -> int:
    v = body.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValidationError(f"{key}: an integer is required", field=key)
    return v


def _num(body: dict[str, Any], key: str, default: float) -> float:
    v = body.get(key, default)
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise ValidationError(f"{key}: a number is required", field=key)
    return float(v)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an idle keep-alive connection never holds up a stop

    def __init__(self, address: tuple[str, int], host: FunctionHost) -> None:
        self.host = host
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """End every open connection: `shutdown` only stops accepting new ones, and a
        keep-alive connection would go on being served by its thread."""
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


_WORKER = re.compile(r"^/workers/([^/]+)$")
_INVOKE = re.compile(r"^/workers/([^/]+)/invoke$")
_VERSION = re.compile(r"^/versions/([^/]+)/([0-9]+)$")
_LOGS = re.compile(r"^/logs/([^/]+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the router reuses its connections
    # Headers and body go out as two writes: with Nagle's algorithm the body waits for
    # the client's delayed ACK of the headers, 40 ms on Linux, on every answer.
    disable_nagle_algorithm = True
    server: _Server
    timeout = 300  # an idle connection is closed after this

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body, separators=(",", ":"), default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_BODY:
            self.close_connection = True  # the body was not read
            raise ValidationError(f"request body: at most {MAX_BODY >> 20} MB")
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ValidationError(f"request body: not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise ValidationError("request body: a JSON object is required")
        return body

    def _authorized(self) -> bool:
        got = self.headers.get("Authorization", "")
        want = f"Bearer {self.server.host.key}"
        return hmac.compare_digest(got.encode(), want.encode())

    def _serve(self, method: str) -> None:
        host = self.server.host
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if host._stop.is_set():
                self.close_connection = True
                self._send(503, {"error": "the function host is stopping"})
                return
            if not self.headers.get("Authorization"):
                self.close_connection = True
                self._send(401, {"error": "a bearer key is required"})
                return
            if not self._authorized():
                self.close_connection = True
                self._send(403, {"error": "wrong key"})
                return
            body = self._body() if method in ("PUT", "POST") else {}
            status, out = self._route(host, method, url.path, query, body)
        except YunhanError as exc:
            status, out = exc.http_status, {"error": exc.message, **_plain(exc.details)}
        except Exception as exc:  # the router gets a 500 with the reason, we go on
            log.exception("function host: %s %s failed", method, url.path)
            status, out = 500, {"error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):
            self._send(status, out)

    def _route(
        self,
        host: FunctionHost,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: dict[str, Any],
    ) -> tuple[int, Any]:
        if method == "POST" and path == "/workers":
            netns = body.get("netns")
            if netns is not None and not isinstance(netns, str):
                raise ValidationError("netns: a path or null", field="netns")
            return 201, host.spawn(
                _str(body, "function"), _int(body, "version", 0), _str(body, "owner"), netns
            )
        if method == "GET" and path == "/workers":
            owners = query.get("owner")
            return 200, host.workers(owners[0] if owners else None)
        if method == "POST" and (m := _INVOKE.match(path)):
            timeout = None if body.get("timeout_s") is None else _num(body, "timeout_s", 0.0)
            if timeout is not None and not 0 < timeout <= 900:
                raise ValidationError("timeout_s: above 0 and at most 900", field="timeout_s")
            rid = body.get("request_id")
            return 200, host.invoke(
                m.group(1), body.get("event"), str(rid) if rid is not None else None, timeout
            )
        if method == "DELETE" and (m := _WORKER.match(path)):
            return 200, host.stop_worker(m.group(1))
        if method == "PUT" and (m := _VERSION.match(path)):
            return 200, host.put_version(m.group(1), int(m.group(2)), body)
        if method == "GET" and (m := _LOGS.match(path)):
            try:
                tail = int((query.get("tail") or ["100"])[0])
            except ValueError as exc:
                raise ValidationError("tail: an integer", field="tail") from exc
            return 200, host.logs(m.group(1), tail)
        raise NotFound(f"no route {method} {path}")


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    """The error's details that JSON can carry, without clobbering "error"."""
    return {k: v for k, v in details.items() if k != "error" and _jsonable(v)}


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True
