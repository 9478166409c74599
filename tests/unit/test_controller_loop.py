"""The controller loop and `serve`: reconcile on change, stop cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cp_fixtures import ADMIN, ADMIN_TOKEN
from fastapi.testclient import TestClient

from yunhan.api.app import create_app
from yunhan.controller import Controller
from yunhan.polling import poll_until
from yunhan.store import Store

DEADLINE = 20.0


def _register(store: Store) -> None:
    # What PUT /v1/agent/hosts does, minus HTTP.
    with store.transaction() as tx:
        z = tx.get("zone", "zone-00000001") or tx.create(
            "zone", "zone-00000001", "proj-00000000", "az1", {"underlay_cidr": "198.18.1.0/24"}
        )
        tx.create(
            "host",
            "host-00000001",
            "proj-00000000",
            "h1",
            {"zone": z.id, "underlay_ip": "198.18.1.11", "mtu": 1500},
            {"vtep_index": 1},
        )


def _unplaced_instance(store: Store) -> None:
    # An instance created while its zone had no host: it waits, unplaced.
    with store.transaction() as tx:
        tx.create(
            "zone", "zone-00000001", "proj-00000000", "az1", {"underlay_cidr": "198.18.1.0/24"}
        )
        tx.create(
            "instance",
            "inst-00000001",
            "proj-00000001",
            "a",
            {"subnet": "subnet-00000001", "zone": "zone-00000001"},
            {"phase": "pending"},
        )


def test_loop_places_pending_instances_on_change_and_stops(tmp_path: Path) -> None:
    store = Store.open(tmp_path, poll_interval=0.05)

    def placed() -> str | None:
        with store.read() as r:
            inst = r.get("instance", "inst-00000001")
            return inst.status.get("host") if inst else None

    async def main() -> str | None:
        stop = asyncio.Event()
        task = asyncio.create_task(Controller(store).run(stop))
        await asyncio.to_thread(_unplaced_instance, store)
        await asyncio.sleep(0)
        assert placed() is None  # no host in its zone yet: it stays pending
        await asyncio.to_thread(_register, store)
        host = await store.wait_for_async(placed, DEADLINE)
        # A pass that finds nothing to do writes nothing.
        before = store.revision()
        assert Controller(store).reconcile_once() == before and store.revision() == before
        stop.set()
        await asyncio.wait_for(task, DEADLINE)
        return host

    try:
        assert asyncio.run(main()) == "h1"
    finally:
        store.close()


def test_app_restart_keeps_projects_tokens_and_revision(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    with TestClient(create_app(store, admin_token=ADMIN_TOKEN)) as c:
        token = c.post("/v1/projects", json={"name": "alpha"}, headers=ADMIN).json()["token"]
        rev = c.get("/v1/revision", headers=ADMIN).json()["revision"]
    store.close()
    store = Store.open(tmp_path)
    try:
        # Restarted with another admin token: the old one is revoked, projects remain.
        with TestClient(create_app(store, admin_token="yh_new-admin")) as c:
            assert c.get("/v1/revision", headers={"Authorization": f"Bearer {token}"}).json() == {
                "revision": rev
            }
            assert c.get("/v1/whoami", headers=ADMIN).status_code == 401
            new = {"Authorization": "Bearer yh_new-admin"}
            assert [p["name"] for p in c.get("/v1/projects", headers=new).json()] == [
                "admin",
                "alpha",
            ]
    finally:
        store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_runs_api_and_controller_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    code = (
        "from pathlib import Path; from yunhan.api.server import serve; "
        f"serve(Path({str(tmp_path)!r}), '127.0.0.1', {port}, {ADMIN_TOKEN!r})"
    )
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ADMIN, timeout=30) as c:

            def up() -> bool:
                try:
                    return bool(c.get("/v1/whoami").json()["admin"])
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp_path / "server.log").read_text()
                    return False

            assert poll_until(up, DEADLINE, interval=0.05), "server did not come up"
            assert c.get("/openapi.json").json()["info"]["title"] == "Yunhan API"
            c.post("/v1/zones", json={"name": "az1", "underlay_cidr": "198.18.1.0/24"})
            c.put("/v1/agent/hosts/h1", json={"zone": "az1", "underlay_ip": "198.18.1.11"})
            # The process compiles the host's document as it registers (long poll).
            r = c.get("/v1/agent/hosts/h1/desired", params={"after": 0, "timeout": DEADLINE})
            assert r.status_code == 200 and r.json()["host"] == "h1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def test_interrupted_long_poll_answers_at_once(tmp_path: Path) -> None:
    """What `serve` does on SIGTERM: open long polls answer (204) instead of holding the
    shutdown for their whole timeout."""
    store = Store.open(tmp_path, poll_interval=0.05)
    try:
        app = create_app(store, admin_token=ADMIN_TOKEN)
        fleet = app.state.yunhan.fleet
        with TestClient(app) as c:
            c.post(
                "/v1/zones", json={"name": "az1", "underlay_cidr": "198.18.1.0/24"}, headers=ADMIN
            )
            c.put(
                "/v1/agent/hosts/h1",
                json={"zone": "az1", "underlay_ip": "198.18.1.1"},
                headers=ADMIN,
            )
            after = c.get("/v1/agent/hosts/h1/desired", headers=ADMIN).json()["revision"]
            poll, out = _in_thread(
                lambda: c.get(
                    "/v1/agent/hosts/h1/desired",
                    params={"after": after, "timeout": 600},
                    headers=ADMIN,
                )
            )
            # Wait (with a deadline) until the poll is parked.
            assert _until(lambda: fleet.long_polls == 1)
            fleet.interrupt()
            poll.join(DEADLINE)
            assert out and out[0].status_code == 204
    finally:
        store.close()


def _until(cond: Callable[[], bool]) -> bool:
    return bool(poll_until(cond, DEADLINE))
