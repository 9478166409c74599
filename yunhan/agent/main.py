"""The host agent: makes its host carry what the controller says, and says what it carries.

It speaks to the control plane over HTTP only (ARCHITECTURE §5). The loop is push + pull:
a long-poll on the host's desired document delivers changes as they happen, and a periodic
full resync re-applies the last document so that drift (a route deleted by hand, a port
that vanished) is repaired even when nothing changed upstream. The data plane is kernel
state: when this process dies, or the control plane is unreachable, packets keep flowing;
a restarted agent observes what exists and changes only the difference.

Restarts change nothing. The agent keeps the last document it applied (SAVED_DOC: store,
revision, entries) and resumes the watch from that revision with its digest, so the
server sends only what changed meanwhile (nothing, usually). Until the control plane has
confirmed that document (answered the first poll), the agent applies nothing: an agent
that starts while the API is unreachable adopts the data plane as it finds it and never
removes what it cannot confirm. After every apply it writes down its host's instances
(yunhan.localview) for the CLI to find them while the API is away.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from yunhan import localview
from yunhan.agent.dataplane import ApplyReport, DataPlane
from yunhan.agent.flowlogs import FlowLogs
from yunhan.agent.hybridreport import HybridReporter
from yunhan.agent.patches import Patches
from yunhan.agent.trafficstats import TrafficReporter
from yunhan.agent.vipclaims import VipClaims
from yunhan.agent.volumes import VolumeManager
from yunhan.errors import ValidationError
from yunhan.model.volumes import DEFAULT_POOL
from yunhan.net.desired import HostDesired
from yunhan.net.docentries import Delta, assemble, digest
from yunhan.net.naming import Naming
from yunhan.net.natgw import Uplink
from yunhan.supervised import Watchdog, notify, restarted

log = logging.getLogger("yunhan.agent")

HEARTBEAT_INTERVAL = 5.0
LONG_POLL_TIMEOUT = 20.0
STORE_HEADER = "X-Yunhan-Store"  # yunhan.api.routes.agent (agents speak HTTP only)
BOOTSTRAP_PREFIX = "yhb_"  # yunhan.api.auth: a one-time token to exchange for a host token
HOST_TOKEN_FILE = "host.token"  # in the state dir, 0600: this host's own credential
SAVED_DOC = "desired.json"  # in the state dir: the last document applied (resume from it)
HUNG_AFTER = 90.0  # seconds without progress of the loops before the watchdog stops pinging


@dataclass
class AgentConfig:
    """`token`: a host token, a bootstrap token (exchanged at start for a host token, which
    is then kept in `state_dir`/host.token, 0600) or, outside the lab, the admin token.
    A host token kept in the state dir is preferred (a restart needs no new bootstrap);
    `token` is used when there is none, or when the kept one is refused."""

    api_url: str
    token: str
    host_name: str
    zone: str
    underlay_ip: str
    mtu: int
    host_netns: str | None
    prefix: str
    driver: str = "linux"
    datapath: str = "fast"  # "fast" | "kernel" (docs/datapath.md)
    state_dir: Path = field(default_factory=lambda: Path("/var/lib/yunhan/agent"))
    resync_interval: float = 30.0
    # Seconds between two polls of the flow-log collectors, and between two shipments.
    flowlog_interval: float = 5.0
    # Seconds between two polls of the hot patches assigned to this host (agent.patches).
    patch_interval: float = 2.0
    # Where the public addresses of this host's NAT gateways are announced (routed to
    # `uplink_via`, this host's underlay address): both or neither.
    uplink_netns: str | None = None
    uplink_via: str | None = None
    # Where the function host (agent.functions) listens, HOST:PORT (port 0: any free one);
    # None: this host runs no functions.
    functions_listen: str | None = "127.0.0.1:0"
    # Bytes of volume space this host offers (registered: placement counts it), and the
    # directory of the zone's volume pool (docs/volumes.md).
    volume_pool: int = DEFAULT_POOL
    volume_dir: Path = field(default_factory=lambda: Path("/var/lib/yunhan/volumes"))

    @property
    def uplink(self) -> Uplink | None:
        if self.uplink_netns is None and self.uplink_via is None:
            return None
        if self.uplink_netns is None or self.uplink_via is None:
            raise ValidationError("--uplink-netns and --uplink-via go together")
        try:
            via = str(ipaddress.IPv4Address(self.uplink_via))
        except ValueError as exc:
            raise ValidationError(f"--uplink-via wants an IPv4 address: {exc}") from exc
        return Uplink(self.uplink_netns, via)


class FunctionsService(Protocol):
    """What the agent needs of its function host (agent.functions.FunctionHost)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def report(self) -> dict[str, Any]: ...


class Agent:
    """One host's agent. `run()` blocks until `stop()` (or SIGTERM/SIGINT through `run`)."""

    def __init__(
        self,
        config: AgentConfig,
        dataplane: DataPlane,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        functions: FunctionsService | None = None,
    ) -> None:
        """`transport` carries the HTTP calls (None: the network; tests pass the app's or
        an `httpx.MockTransport`); `clock` times the periodic resync; `functions` is the
        function host, started and stopped with the agent (None: no functions here)."""
        if not config.flowlog_interval > 0:
            raise ValidationError(
                f"flow log interval {config.flowlog_interval} must be a positive number of seconds"
            )
        if not config.patch_interval > 0:
            raise ValidationError(
                f"patch interval {config.patch_interval} must be a positive number of seconds"
            )
        if not config.resync_interval > 0:  # also NaN
            # It bounds the long poll: 0 would poll and re-apply without pause.
            raise ValidationError(
                f"resync interval {config.resync_interval} must be a positive number of seconds"
            )
        self.config = config
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        # One apply at a time: the watch loop's, and the re-pointing of a VIP claimed here.
        self._apply_lock = threading.Lock()
        # Several endpoints (comma-separated) are replicas of one control plane: the agent
        # talks to one and moves to the next when it cannot be reached.
        self._endpoints = [u.strip().rstrip("/") for u in config.api_url.split(",") if u.strip()]
        if not self._endpoints:
            raise ValidationError("the agent needs at least one API endpoint")
        self._endpoint = 0
        self._client = httpx.Client(
            timeout=httpx.Timeout(10.0, read=LONG_POLL_TIMEOUT + 10.0),
            transport=transport,
        )
        self._clock = clock
        self.dataplane = dataplane
        self.desired: HostDesired | None = None
        self.report: ApplyReport | None = None
        self.applied_revision = 0
        self._store: str | None = None  # the store that `desired` and its revision come from
        # The document as keyed entries (docs/api.md): deltas apply to it; its digest lets
        # the server notice a copy that drifted from its own and send it whole.
        self._entries: dict[str, dict[str, Any]] = {}
        self._digest: str | None = None
        self._kept = False  # the token in use is the one kept in the state dir
        # False while the document resumed from disk waits for the control plane's word.
        self._confirmed = True
        self._restart = restarted()  # said once, at the first registration
        self._progress = clock()  # the loops' last sign of life (the watchdog's check)
        self._view: list[dict[str, Any]] | None = None
        # Flow logs are read from the kernel: the fake driver has none, so no collectors.
        self.flowlogs: FlowLogs | None = None
        if dataplane.kind == "linux":
            self.flowlogs = FlowLogs(
                naming=dataplane.naming,
                client=self._client,
                path=self._path,
                interval=config.flowlog_interval,
                on_error=self._failover,
            )
        # VIP claims follow gratuitous ARP seen by the kernel: likewise linux only.
        self.vips: VipClaims | None = None
        if dataplane.kind == "linux":
            self.vips = VipClaims(
                naming=dataplane.naming,
                client=self._client,
                path=self._path,
                repoint=self._repoint,
                on_error=self._failover,
            )
        # Fleet hot patches: real processes, so likewise linux only.
        self.patches: Patches | None = None
        if dataplane.kind == "linux":
            self.patches = Patches(
                naming=dataplane.naming,
                client=self._client,
                api=self._api,
                host_name=config.host_name,
                host_netns=config.host_netns,
                cache_dir=config.state_dir / "patches",
                interval=config.patch_interval,
                instances=self._instance_ids,
                on_error=self._failover,
            )
        # Volumes: real block devices and storage processes, so likewise linux only.
        self.volumes: VolumeManager | None = None
        if dataplane.kind == "linux" and config.volume_dir is not None:
            self.volumes = VolumeManager(
                config.volume_dir,
                config.state_dir,
                dataplane.naming.prefix,
                netns_of=dataplane.naming.instance_netns,
            )
        # Hybrid gateway replicas run FRR: their sessions are read from it, linux only.
        self.hybrid: HybridReporter | None = None
        if dataplane.kind == "linux":
            self.hybrid = HybridReporter(
                dataplane.naming, self._applied, self._post_hybrid, heal=self._heal
            )
        # Hybrid traffic counters (nftables in the namespaces): linux only too.
        self.traffic: TrafficReporter | None = None
        if dataplane.kind == "linux":
            self.traffic = TrafficReporter(
                dataplane.naming,
                config.host_name,
                self._applied,
                self._post_traffic,
                state_file=config.state_dir / "traffic.json",
            )
        # The function host: started by `run`, reported in every status report once it runs.
        self.functions = functions
        self._functions_up = False
        self._resume()

    def _applied(self) -> HostDesired | None:
        with self._lock:
            return self.desired

    def _heal(self) -> None:
        """Apply the last document again reading the whole host (a replica's FRR died)."""
        with self._lock:
            desired = self.desired
        if desired is not None and self._confirmed and not self._stop.is_set():
            self.apply(desired, full=True)

    def _post_report(self, tail: str, what: str, body: dict[str, Any], drop: int = 0) -> bool:
        """POST a report; False (try again later) unless it landed, or was refused with
        `drop`, a refusal that would repeat forever and hold back every later report."""
        try:
            r = self._client.post(self._path(tail), json=body)
        except httpx.HTTPError as exc:
            log.warning("%s report failed: %s", what, exc)
            self._failover(exc)
            return False
        if r.status_code >= 300:
            log.warning("%s report refused: %s %s", what, r.status_code, r.text[:300])
            return r.status_code == drop
        return True

    def _post_hybrid(self, body: dict[str, Any]) -> bool:
        return self._post_report("/hybrid", "hybrid replica", body)

    def _post_traffic(self, body: dict[str, Any]) -> bool:
        return self._post_report("/traffic", "traffic counter", body, drop=422)

    def _instance_ids(self) -> list[str]:
        """The instances of the document applied last (their namespaces are this host's)."""
        with self._lock:
            desired = self.desired
        return [] if desired is None else [i.id for i in desired.instances]

    # -- the document kept on disk --------------------------------------------------------

    def _resume(self) -> None:
        """Take the last document applied before a restart, unconfirmed (see the module)."""
        try:
            saved = json.loads((self.config.state_dir / SAVED_DOC).read_text())
            entries = saved["entries"]
            doc = assemble(entries, self.config.host_name).model_copy(
                update={"revision": int(saved["revision"])}
            )
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the saved document (%s): starting from the server's", exc)
            return
        self._store = saved.get("store")
        self._entries, self._digest = entries, digest(entries)
        self.desired, self.applied_revision = doc, doc.revision
        self._confirmed = False
        log.info("resuming from the saved document of revision %d", doc.revision)

    def _save(self) -> None:
        path = self.config.state_dir / SAVED_DOC
        tmp = path.with_name(SAVED_DOC + ".tmp")
        body = {"store": self._store, "revision": self.applied_revision, "entries": self._entries}
        try:
            tmp.write_text(json.dumps(body, separators=(",", ":")))
            tmp.replace(path)
        except OSError as exc:
            log.warning("could not save the applied document: %s", exc)

    def _write_view(self, desired: HostDesired, report: ApplyReport) -> None:
        ips = {p.instance_id: p.ip for v in desired.vpcs for p in v.ports}
        view = [
            {
                "id": i.id,
                "name": i.name,
                "ip": ips.get(i.id),
                "vpc": i.vpc_id,
                "phase": ir.phase if ir else None,
                "message": ir.message if ir else None,
                "netns": ir.netns if ir else None,
                "uts": ir.uts if ir else None,
            }
            for i in desired.instances
            for ir in [report.instances.get(i.id)]
        ]
        if view == self._view:
            return
        try:
            localview.write(self.config.state_dir, self.config.host_name, desired.revision, view)
            self._view = view
        except OSError as exc:
            log.warning("could not write the local view of instances: %s", exc)

    # -- credentials ---------------------------------------------------------------------

    @property
    def _token_path(self) -> Path:
        return self.config.state_dir / HOST_TOKEN_FILE

    def _use(self, token: str) -> None:
        self._client.headers["Authorization"] = f"Bearer {token}"

    def credentials(self) -> bool:
        """Choose this agent's token (see AgentConfig); a bootstrap token is exchanged first.
        Retries until the control plane answers; False when stopped or refused for good."""
        try:
            kept = self._token_path.read_text().strip()
        except OSError:
            kept = ""
        if kept:
            self._use(kept)
            self._kept = True
            return True
        self._kept = False
        token = self.config.token
        if not token:
            log.error("no token: give --token-file (a bootstrap or host token)")
            return False
        if not token.startswith(BOOTSTRAP_PREFIX):
            self._use(token)
            return True
        delay = 0.2
        while not self._stop.is_set():
            try:
                r = self._client.post(
                    self._path("/token"), headers={"Authorization": f"Bearer {token}"}
                )
                if r.status_code < 300:
                    host_token = str(r.json()["token"])
                    _write_secret(self._token_path, host_token)
                    self._use(host_token)
                    self._kept = True
                    log.info("exchanged the bootstrap token for this host's token")
                    return True
                log.error("token exchange refused: %s %s", r.status_code, r.text[:300])
                if r.status_code in (401, 403):
                    return False  # used, expired or another host's: retrying cannot help
            except httpx.HTTPError as exc:
                log.warning("control plane unreachable (%s); retrying", exc)
                self._failover(exc)
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)
        return False

    def _refused(self) -> bool:
        """The kept host token was refused (revoked): forget it and fall back to the
        configured token. True when there is another to try."""
        if not self._kept or not self.config.token:
            return False
        log.warning("this host's kept token was refused; trying the configured token")
        self._token_path.unlink(missing_ok=True)
        return self.credentials()

    # -- control-plane calls -------------------------------------------------------------

    def _path(self, tail: str) -> str:
        return f"{self._endpoints[self._endpoint]}/v1/agent/hosts/{self.config.host_name}{tail}"

    def _api(self, tail: str) -> str:
        """The URL of API path `tail` ("/v1/...") on the current endpoint."""
        return f"{self._endpoints[self._endpoint]}{tail}"

    def _failover(self, exc: Exception) -> None:
        """The endpoint could not be reached: use the next replica for the next call.

        Only when the failed call went to the current endpoint: the watch and heartbeat
        threads fail together on a dead replica, and a second move would lead back to it.
        """
        if not isinstance(exc, httpx.TransportError) or len(self._endpoints) <= 1:
            return
        try:
            failed: str | None = str(exc.request.url)
        except RuntimeError:  # no request attached: nothing to compare, move on
            failed = None
        with self._lock:
            # Both sides normalised by httpx, as the request URL was built from _path.
            current = str(httpx.URL(self._path("")))
            if failed is not None and not failed.startswith(current):
                return  # another call failed there first and moved on already
            self._endpoint = (self._endpoint + 1) % len(self._endpoints)
        log.warning("moving to API endpoint %s", self._endpoints[self._endpoint])

    def register(self) -> None:
        """Register (or re-register) this host; retries until the control plane answers."""
        body: dict[str, Any] = {
            "zone": self.config.zone,
            "underlay_ip": self.config.underlay_ip,
            "mtu": self.config.mtu,
            "volume_pool": self.config.volume_pool,
        }
        if self._restart is not None:
            # The control plane makes it an event: why this agent had to start again.
            body["restart"] = {"count": self._restart.count, "cause": self._restart.cause}
        delay = 0.2
        while not self._stop.is_set():
            self._progress = self._clock()
            try:
                r = self._client.put(self._path(""), json=body)
                if r.status_code < 300:
                    log.info("registered as %s", self.config.host_name)
                    self._restart = None
                    return
                log.error("registration refused: %s %s", r.status_code, r.text)
                if r.status_code == 401 and self._refused():
                    continue
            except httpx.HTTPError as exc:
                log.warning("control plane unreachable (%s); retrying", exc)
                self._failover(exc)
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _fetch_desired(self, after: int, wait: float) -> HostDesired | None:
        params: dict[str, Any] = {"after": after, "timeout": wait}
        if after and self._digest:
            params["digest"] = self._digest
        r = self._client.get(self._path("/desired"), params=params)
        store = r.headers.get(STORE_HEADER)
        if r.status_code < 300 and store and store != self._store:
            with self._lock:
                if self._store is not None:
                    # A new database: our revision means nothing there (its documents may
                    # have lower ones), and the old document must not be re-applied by a
                    # resync. The data plane stays as it is until the new document comes.
                    log.warning(
                        "the control plane answers from another store; forgetting revision %d",
                        self.applied_revision,
                    )
                    self.applied_revision = 0
                    self.desired = None
                    self._entries, self._digest = {}, None
                    self._store = store
                    return None  # ask again, from revision 0: the new store's whole document
                self._store = store
        if r.status_code == 204:
            return None
        r.raise_for_status()
        delta = Delta.from_json(r.json())
        if not delta.snapshot and not self._entries:
            # Nothing to apply a delta to (we never held this store's document): ask whole.
            return self._fetch_desired(0, 0.0)
        # A delta carries the current value of every key changed since `after`, so it also
        # applies to a copy newer than `after` (an apply that failed midway).
        entries = delta.applied_to(self._entries)
        doc = assemble(entries, self.config.host_name).model_copy(
            update={"revision": delta.revision}
        )
        self._entries, self._digest = entries, digest(entries)
        return doc

    def _status_body(self) -> dict[str, Any]:
        with self._lock:
            report = self.report
            body: dict[str, Any] = {
                "applied_revision": self.applied_revision,
                "error": "; ".join(report.errors) if report and report.errors else None,
                "instances": {},
            }
            if report:
                body["instances"] = {
                    iid: {
                        "phase": ir.phase,
                        "message": ir.message,
                        "netns": ir.netns,
                        "uts": ir.uts,
                    }
                    for iid, ir in report.instances.items()
                }
        if self.dataplane.kind == "linux":
            body["datapath"] = self.dataplane.datapath_report().as_dict()
        if self.volumes is not None:
            body["volumes"] = self.volumes.report()
        if self._functions_up and self.functions is not None:
            # Endpoint and key: the control plane keeps them (the admin's only) for the
            # router, which calls this host's functions there.
            body["functions"] = self.functions.report()
        return body

    def send_status(self) -> None:
        if self._stop.is_set():
            return
        # Heartbeat and watch threads both report: one at a time, each body built when its
        # turn comes, so an older report never lands after a newer one (the control plane
        # keeps the last it hears).
        with self._send_lock:
            try:
                r = self._client.post(self._path("/status"), json=self._status_body())
            except httpx.HTTPError as exc:
                log.warning("status report failed: %s", exc)
                self._failover(exc)
                return
        if r.status_code >= 300:
            log.warning("status report refused: %s %s", r.status_code, r.text[:500])

    # -- the loops -----------------------------------------------------------------------

    def apply(self, desired: HostDesired, *, full: bool = False) -> ApplyReport:
        """Apply `desired` (`full`: reading the whole host, see DataPlane.apply)."""
        with self._apply_lock:
            # The controller's document, with the VIPs claimed here that it has not decided
            # on yet re-pointed ahead of it (agent.vipclaims).
            applied = desired if self.vips is None else self.vips.overlay(desired)
            report = self.dataplane.apply(applied, full=full)
            if self.vips is not None:
                self.vips.update(applied)
            if self.volumes is not None:
                # After the data plane: an instance a volume attaches to exists by now. A
                # volume's trouble is in its own report, not the host's: it is retried by
                # the volume monitor, and the network is not held up by it.
                self.volumes.apply(desired.volumes)
            with self._lock:  # still under the apply lock: a re-pointing starts from it
                saved = self.applied_revision != desired.revision or self.desired != desired
                self.desired = desired
                self.report = report
                self.applied_revision = desired.revision
        if self.flowlogs is not None:
            # After the apply: a new VPC namespace exists by now. Starts/stops threads only.
            self.flowlogs.update(desired)
        if saved or not (self.config.state_dir / SAVED_DOC).exists():
            self._save()
        self._write_view(desired, report)
        if report.changes or report.errors:
            log.info(
                "applied revision %d: %d changes, %d errors %s",
                desired.revision,
                report.changes,
                len(report.errors),
                report.errors[:3],
            )
        return report

    def _repoint(self) -> None:
        """Apply the last document again with the VIP head starts as they now stand (an
        instance here announced a VIP, or a claim came back lost)."""
        with self._apply_lock:
            desired = self.desired
            if desired is None or not self._confirmed or self._stop.is_set():
                return  # nothing confirmed to re-point from
            assert self.vips is not None
            applied = self.vips.overlay(desired)
            report = self.dataplane.apply(applied)
            self.vips.update(applied)
            with self._lock:
                self.report = report
        log.info("re-pointed VIPs %s: %d changes", self.vips.heads, report.changes)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            self.send_status()

    def _watch_loop(self) -> None:
        # Every apply is a full diff of desired against observed, so any apply is also a
        # resync; the timer only forces one when nothing arrived for a while.
        last_apply = self._clock()
        backoff = 0.2
        while not self._stop.is_set():
            self._progress = self._clock()
            failing = bool(self.report and self.report.errors)
            wait = 1.0 if failing else min(LONG_POLL_TIMEOUT, self.config.resync_interval)
            if not self._confirmed:
                wait = 0.0  # a resumed document: the first answer confirms it, at once
            try:
                doc = self._fetch_desired(self.applied_revision, wait)
                backoff = 0.2
            except (httpx.HTTPError, ValueError) as exc:
                # Headless: the data plane keeps forwarding what it has; we only wait.
                log.warning("watch failed (%s); data plane left as is", exc)
                self._failover(exc)
                if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 404:
                    self.register()
                if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 401:
                    self._refused()  # our kept host token was revoked
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if self._stop.is_set():
                break
            if not self._confirmed:
                # The control plane answered from our revision: the document resumed from
                # disk (or the delta on top of it) is now confirmed; apply it once (a no-op
                # on a host that carries it: nothing is recreated).
                self._confirmed = True
                doc = doc or self.desired
            if doc is None:
                due = self._clock() - last_apply >= self.config.resync_interval
                if self.desired is None or not (due or failing):
                    continue
                doc = self.desired
            try:
                self.apply(doc)
                if self.dataplane.full_due:
                    # After the change, not before it: a change (a VIP's head start, a new
                    # instance) never waits for a read of the whole host.
                    self.apply(doc, full=True)
            except Exception as exc:  # one bad pass must not end the loop
                log.exception("apply of revision %d failed", doc.revision)
                with self._lock:
                    self.desired = doc
                    self.report = ApplyReport(changes=0, errors=[str(exc)], instances={})
                self._stop.wait(1.0)
            last_apply = self._clock()
            self.send_status()

    def run(self) -> None:
        """Run until `stop()`. Returns promptly even while a long poll is in flight.

        The watch loop runs in a daemon thread: a blocking HTTP read cannot be interrupted
        portably, and waiting out a 20 s long poll would make every stop (and `yunhan down`)
        slow. The loop checks the stop flag before it applies anything, so an abandoned
        poll that returns later does nothing.
        """
        if not self.credentials():
            log.error("no usable credentials; stopping")
            return
        # Ready for the service manager as soon as it runs: an agent that starts while the
        # API is away is doing its job (the data plane forwards; it waits).
        notify("READY=1")
        watchdog = Watchdog(lambda: self._clock() - self._progress < HUNG_AFTER)
        watchdog.start()
        self._start_functions()
        self.register()
        threads = [
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self._watch_loop, name="watch", daemon=True),
        ]
        for t in threads:
            t.start()
        if self.flowlogs is not None:
            self.flowlogs.start()
        if self.vips is not None:
            self.vips.start()
        if self.patches is not None:
            self.patches.start()
        if self.volumes is not None:
            self.volumes.start()
        if self.hybrid is not None:
            self.hybrid.start()
        if self.traffic is not None:
            self.traffic.start()
        try:
            self._stop.wait()
        finally:
            self._stop.set()
            watchdog.stop()
            notify("STOPPING=1")
            if self.flowlogs is not None:
                self.flowlogs.stop()
            if self.vips is not None:
                self.vips.stop()
            if self.patches is not None:
                self.patches.stop()  # waits for an engine call in flight
            if self.volumes is not None:
                self.volumes.stop()  # the disks keep serving: storage outlives the agent
            if self.hybrid is not None:
                self.hybrid.stop()  # the replicas keep routing: FRR outlives the agent
            if self.traffic is not None:
                self.traffic.stop()  # the counters keep counting: they are the kernel's
            self._stop_functions()
            for t in threads:
                t.join(timeout=2.0)
            if not any(t.is_alive() for t in threads):
                self._client.close()

    def stop(self) -> None:
        self._stop.set()

    def _start_functions(self) -> None:
        """Start the function host. A host that cannot run functions (no cgroups, a state
        dir others cannot traverse) still does its networking: the failure is logged and
        the agent reports no `functions`, so the router places none here."""
        if self.functions is None:
            return
        try:
            self.functions.start()
        except Exception:
            log.exception("the function host did not start; this host runs no functions")
            return
        self._functions_up = True

    def _stop_functions(self) -> None:
        """Stop every worker and the zygote, and remove their cgroups."""
        if self.functions is None or not self._functions_up:
            return
        self._functions_up = False
        try:
            self.functions.stop()
        except Exception:
            log.exception("stopping the function host failed")


def _write_secret(path: Path, secret: str) -> None:
    """Write `secret` to `path` readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _function_host(config: AgentConfig) -> FunctionsService | None:
    """The function host of this agent: state under its state dir, names under its
    prefix (so two agents of a lab never share workers or cgroups)."""
    if config.functions_listen is None:
        return None
    from yunhan.agent.functions import FunctionHost
    from yunhan.functions import FunctionRuntime

    try:
        runtime = FunctionRuntime(config.state_dir / "functions", f"{config.prefix}fn")
        return FunctionHost(runtime, listen=config.functions_listen)
    except Exception:
        log.exception("no function host: this host runs no functions")
        return None


def run(config: AgentConfig) -> None:
    """Run an agent until SIGTERM or SIGINT. Stopping leaves the data plane as it is."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s agent[{config.host_name}] %(levelname)s %(message)s",
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    dataplane = DataPlane(
        naming=Naming(config.prefix),
        host_netns=config.host_netns,
        driver=config.driver,
        state_dir=config.state_dir,
        uplink=config.uplink,
        datapath=config.datapath,
    )
    agent = Agent(config, dataplane, functions=_function_host(config))

    def _on_signal(signum: int, frame: object) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    agent.run()
