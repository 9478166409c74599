"""An agent given several API endpoints moves off a dead one once, however many of its
calls fail there at the same time (no root; loopback sockets only).

The watch and heartbeat threads both talk to the current endpoint. When that replica dies,
both calls in flight fail; each failure used to move to the next endpoint, so with two
replicas the agent went straight back to the dead one.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.polling import wait_for
from yunhan.agent.dataplane import DataPlane
from yunhan.agent.main import Agent, AgentConfig
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import Naming


class _Dying:
    """A replica that accepts connections, never answers, and dies on `kill()`: every call
    in flight fails with "server disconnected"."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def kill(self) -> None:
        for conn in self.accepted:
            conn.close()

    def close(self) -> None:
        self.kill()
        self.sock.close()


class _Live(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_PUT(self) -> None:
        self.seen.append(f"PUT {self.path}")
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'{"name": "h1"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def replicas() -> Iterator[tuple[_Dying, str]]:
    dying = _Dying()
    live = ThreadingHTTPServer(("127.0.0.1", 0), _Live)
    _Live.seen = []
    threading.Thread(target=live.serve_forever, daemon=True).start()
    try:
        yield dying, f"http://127.0.0.1:{live.server_address[1]}"
    finally:
        live.shutdown()
        live.server_close()
        dying.close()


def test_two_calls_failing_on_one_dead_replica_move_the_agent_once(
    replicas: tuple[_Dying, str], tmp_path: Path
) -> None:
    dying, live = replicas
    cfg = AgentConfig(
        api_url=f"{dying.url},{live}",
        token="t",
        host_name="h1",
        zone="az1",
        underlay_ip="198.18.1.11",
        mtu=1500,
        host_netns=None,
        prefix="h1-",
        driver="fake",
        state_dir=tmp_path,
    )
    dp = DataPlane(
        naming=Naming("h1-"),
        host_netns=None,
        driver="fake",
        state_dir=tmp_path,
        fabric=FakeFabric(),
    )
    agent = Agent(cfg, dataplane=dp)
    # Two calls in flight on the first replica: a heartbeat and a registration (which
    # retries until some replica answers).
    heartbeat = threading.Thread(target=agent.send_status, daemon=True)
    register = threading.Thread(target=agent.register, daemon=True)
    heartbeat.start()
    register.start()
    try:
        wait_for(lambda: len(dying.accepted) == 2, 10, "both calls at the first replica")
        dying.kill()
        heartbeat.join(timeout=10)
        register.join(timeout=10)
        assert not register.is_alive(), "the registration never reached the live replica"
        assert _Live.seen == ["PUT /v1/agent/hosts/h1"]
        # Moved once: the retry went to the live replica, never back to the dead one.
        assert len(dying.accepted) == 2
    finally:
        agent.stop()
        register.join(timeout=10)
