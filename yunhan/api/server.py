"""`serve`: the API and the controller in one process, under one TaskGroup.

uvicorn's own signal handling is replaced by ours: SIGTERM/SIGINT set one stop event that
ends both the server (graceful shutdown of open requests) and the controller loop, and the
function returns normally (uvicorn would re-raise the signal after shutdown).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import uvicorn

from yunhan.api.app import create_app
from yunhan.api.deps import MAX_LONG_POLL, AppState
from yunhan.api.fastpath import AgentFastPath
from yunhan.api.function_hosts import FunctionHostInfo, function_hosts
from yunhan.api.functions import Functions
from yunhan.api.gatewayfast import GatewayFastPath
from yunhan.api.journal import FLUSH_INTERVAL, SERVER_RESTARTED
from yunhan.api.replicas import ReplicaBridge
from yunhan.controller import Controller
from yunhan.controller.vips import Damping
from yunhan.functions.metering import PriceTable
from yunhan.store import Store
from yunhan.store.flows import Retention
from yunhan.store.leader import Leader
from yunhan.supervised import notify, restarted, watchdog_interval

log = logging.getLogger("yunhan.server")

LEASE_PERSIST_INTERVAL = 2.0
LEADER_RETRY = 1.0  # a standby asks for the lock this often
LEADER_CHECK = 1.0  # a leader checks it still holds the lock this often


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals are handled by `_main`


async def _main(
    store: Store,
    host: str,
    port: int,
    admin_token: str | None,
    admin_token_hash: str | None,
    max_long_poll: float = MAX_LONG_POLL,
    public_pools: Sequence[str] = (),
    flow_retention: Retention | None = None,
    vip_damping: Damping | None = None,
    prices: PriceTable | None = None,
) -> None:
    app = create_app(
        store,
        admin_token=admin_token,
        admin_token_hash=admin_token_hash,
        max_long_poll=max_long_poll,
        public_pools=public_pools,
        flow_retention=flow_retention,
        vip_damping=vip_damping,
        prices=prices,
    )
    config = uvicorn.Config(
        GatewayFastPath(AgentFastPath(app, app.state.yunhan), app.state.yunhan),
        host=host,
        port=port,
        log_level="info",
        # One line per request would cost more than the request at a thousand agents.
        access_log=False,
        lifespan="off",
        # Long polls are ended by `interrupt_waits`; this bounds anything else in flight.
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    fleet = app.state.yunhan.fleet
    if (again := restarted()) is not None:
        st = app.state.yunhan
        st.journal.notice(
            st.admin_project_id, "server", SERVER_RESTARTED, again.sentence("the API server")
        )
    controller = Controller(
        store,
        leases=lambda: fleet.leases,
        loads=app.state.yunhan.loads,
        vip_damping=app.state.yunhan.vip_damping,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def _interrupt() -> None:
        store.interrupt_waits()  # open long polls answer now (204 / not yet converged)
        fleet.interrupt()

    def _on_signal() -> None:
        stop.set()
        _interrupt()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal)

    async def _stop_server() -> None:
        await stop.wait()
        notify("STOPPING=1")
        server.should_exit = True

    async def _service_manager() -> None:
        # sd_notify (systemd Type=notify): ready once the socket listens; the watchdog is
        # pinged from this event loop, so a loop that hangs stops pinging and is restarted.
        while not server.started and not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
        if stop.is_set():
            return
        notify(f"READY=1\nSTATUS=serving on {host}:{port}")
        interval = watchdog_interval()
        while interval is not None and not stop.is_set():
            notify("WATCHDOG=1")
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _serve() -> None:
        try:
            await server.serve()
        finally:
            stop.set()  # the server ended (e.g. port in use): take the controller down too
            _interrupt()

    async def _lead() -> None:
        # Every replica runs this; one at a time holds the lock and runs the controller,
        # its writes fenced by its epoch. A lost lock stops it; it then stands by again.
        leader = Leader(store.engine, name=f"{socket.gethostname()}:{port} pid={os.getpid()}")
        try:
            while not stop.is_set():
                try:
                    epoch = await asyncio.to_thread(leader.try_acquire)
                except Exception:
                    log.exception("leader election failed; retrying")
                    epoch = None
                if epoch is None:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), LEADER_RETRY)
                    continue
                log.info("leading the controller (epoch %d)", epoch)
                controller.epoch = epoch
                if await _run_while_leading(controller, leader, stop):
                    log.warning("lost the controller's leadership (epoch %d); standing by", epoch)
        finally:
            await asyncio.to_thread(leader.release)

    async def _stop_bridge(bridge: ReplicaBridge) -> None:
        await stop.wait()
        await asyncio.to_thread(bridge.stop)

    async def _every(interval: float, work: Callable[[], object], what: str) -> None:
        # Bookkeeping in batches, one tick at a time, until the stop; a failed tick is
        # logged and the next one tries again. The work of the last tick runs on the way out.
        while not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            try:
                await asyncio.to_thread(work)
            except Exception:
                log.exception("could not %s; retrying", what)

    meter = app.state.yunhan.meter
    meter.start()  # function usage, written every second; stopped (a last flush) below
    runner = app.state.yunhan.runner = _function_runner(app.state.yunhan)
    runner.start()  # the function router: its workers are retired below
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_serve())
            tg.create_task(_stop_server())
            tg.create_task(_service_manager())
            tg.create_task(_lead())
            # Heartbeats are leases in memory; they reach the database in one batch a tick.
            tg.create_task(
                _every(LEASE_PERSIST_INTERVAL, fleet.persist_leases, "persist agent leases")
            )
            # Audit records and notices: one batch a tick, never a transaction per request.
            journal = app.state.yunhan.journal
            tg.create_task(_every(FLUSH_INTERVAL, journal.tick, "write the audit trail and events"))
            if store.dialect != "sqlite":
                # Other replicas' writes are followed on NOTIFY (ReplicaBridge); this poll is
                # the fallback for a lost notification.
                tg.create_task(_every(store.poll_interval, store.refresh, "follow the change log"))
                bridge = ReplicaBridge(store, fleet)
                bridge.start()
                tg.create_task(_stop_bridge(bridge))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        try:
            await asyncio.to_thread(runner.stop)
        except Exception:
            log.exception("could not retire every function worker")
        try:
            await asyncio.to_thread(meter.stop)  # a restart loses no usage
        except Exception:
            log.exception("could not write the last function usage")
    try:
        app.state.yunhan.journal.flush()
    except Exception:
        log.exception("could not write the last audit records")
    if server.started is False and not server.should_exit:
        raise SystemExit(f"the API server could not start on {host}:{port}")


def _function_runner(st: AppState) -> Functions:
    """The router of this server: hosts from the fleet's leases, events in its journal."""

    def hosts() -> list[FunctionHostInfo]:
        with st.store.read() as r:
            return function_hosts(r, st.admin_project_id, st.fleet.leases, st.clock())

    return Functions(st.store, st.function_rows, st.meter, st.journal.notice, hosts)


async def _run_while_leading(controller: Controller, leader: Leader, stop: asyncio.Event) -> bool:
    """Run the controller until `stop` or until leadership is lost (returns True then)."""
    ended = asyncio.Event()

    async def watch() -> bool:
        lost = asyncio.create_task(leader.wait_lost(LEADER_CHECK))
        stopping = asyncio.create_task(stop.wait())
        done, pending = await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
            with suppress(asyncio.CancelledError):
                await t
        ended.set()
        return lost in done

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(watch())
        tg.create_task(controller.run(ended))
    return watcher.result()


def serve(
    state_dir: Path,
    host: str,
    port: int,
    admin_token: str | None = None,
    *,
    admin_token_hash: str | None = None,
    database: str | None = None,
    max_long_poll: float = MAX_LONG_POLL,
    public_pools: Sequence[str] = (),
    flow_retention: Retention | None = None,
    vip_damping: Damping | None = None,
    prices: PriceTable | None = None,
) -> None:
    """Run the API and the controller until SIGTERM or SIGINT (blocking).

    The store is `database` (an SQLAlchemy URL) or state_dir/yunhan.db (created and migrated
    if needed); the admin project is created on first start and `admin_token` is its token
    for as long as this process runs (or the token whose sha256 is `admin_token_hash`).
    `max_long_poll` caps every long poll (seconds). `public_pools`: the CIDRs that elastic
    IPs and NAT gateway addresses are allocated from (normalised here). `flow_retention`: how
    long and how many flow log records are kept. `vip_damping`: how many holder changes
    within how long damp a flapping VIP (docs/vips.md). `prices`: what function usage
    costs (`--price-file`; default Lambda's).
    """
    pools = [str(ipaddress.IPv4Network(p, strict=False)) for p in public_pools]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    store = Store.connect(database) if database else Store.open(Path(state_dir))
    try:
        asyncio.run(
            _main(
                store,
                host,
                port,
                admin_token,
                admin_token_hash,
                max_long_poll,
                pools,
                flow_retention,
                vip_damping,
                prices,
            )
        )
    finally:
        store.close()
    log.info("stopped")
