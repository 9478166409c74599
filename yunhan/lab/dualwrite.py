"""Dual write in a lab region: the queue, the two sides, the consumer daemon, reconcile.

Which queue, and why: NATS JetStream (Debian's nats-server). One static binary with no
runtime to carry (RabbitMQ brings Erlang), durable file-backed streams with explicit
acknowledgement and redelivery, durable consumers whose position survives both the
consumer's and the server's restart, and server-side deduplication by message id
(`Nats-Msg-Id`, within the stream's duplicate window), so that a producer retrying a
publish after a lost answer queues the change once. Redis streams have consumer groups
but no deduplication and keep their pending lists in memory unless AOF is tuned.

One nats-server per lab region, on the machine's loopback (port in the region's data
dir), storing under `<data dir>/nats`. Each migration window has a stream (subject
`yunhan.migrate.<name>`) with one durable pull consumer per side, "yunhan" and "idc".
The daemon (`python -m yunhan.lab.dualwrite NAME`) runs both consumers and the scheduled
reconcile: it fetches a batch, applies it to its side (state, not operations:
yunhan.net.dualwrite), and only then acknowledges; a batch it could not apply is
redelivered (after ACK_WAIT), and applying it again changes nothing. A change a side
refuses for good (a 4xx from the API) is acknowledged and recorded as failed, and the
reconciler shows the difference it leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yunhan.errors import YunhanError
from yunhan.lab import cleanup
from yunhan.lab.cleanup import REGION_ENV
from yunhan.net import dualwrite as dw
from yunhan.net import switchcfg
from yunhan.polling import poll_until

NATS_SERVER = "/usr/sbin/nats-server"  # Debian's nats-server package
ACK_WAIT = 5.0  # seconds before an unacknowledged batch is delivered again
BATCH = 100
DUP_WINDOW = 600.0  # seconds the server remembers message ids
RECONCILE_EVERY = 30.0
RECORD = ".migration.json"  # <data dir>/migrations/<name>.migration.json


class DualWriteError(YunhanError):
    """The queue or a migration cannot be used."""

    code = "dual_write"
    http_status = 409


# -- the migration record --------------------------------------------------------------------


@dataclass
class Migration:
    name: str
    prefix: str  # the migrating prefix (an IDC subnet of the VPC)
    site: str
    vpc: str  # ids
    route_table: str
    acl: str
    truth: str = "yunhan"  # the side that wins a reconcile --repair
    reconcile_every: float = RECONCILE_EVERY

    @property
    def stream(self) -> str:
        return f"MIGRATE_{self.name.upper().replace('-', '_')}"

    @property
    def subject(self) -> str:
        return f"yunhan.migrate.{self.name}"

    @property
    def other(self) -> str:
        return "idc" if self.truth == "yunhan" else "yunhan"


def _dir(data_dir: Path) -> Path:
    return Path(data_dir) / "migrations"


def load(data_dir: Path, name: str | None) -> Migration:
    """Migration `name`, or the only one when `name` is None."""
    known = list_migrations(data_dir)
    if name is None:
        if len(known) != 1:
            have = ", ".join(m.name for m in known) or "none"
            raise DualWriteError(f"name the migration (migrations: {have})")
        return known[0]
    m = next((m for m in known if m.name == name), None)
    if m is None:
        have = ", ".join(m.name for m in known) or "none"
        raise DualWriteError(f"no migration {name} (migrations: {have})")
    return m


def list_migrations(data_dir: Path) -> list[Migration]:
    d = _dir(data_dir)
    if not d.is_dir():
        return []
    return [Migration(**json.loads(f.read_text())) for f in sorted(d.glob(f"*{RECORD}"))]


def save(data_dir: Path, m: Migration) -> None:
    _dir(data_dir).mkdir(parents=True, exist_ok=True)
    (_dir(data_dir) / f"{m.name}{RECORD}").write_text(json.dumps(asdict(m)))


def forget(data_dir: Path, name: str) -> None:
    for side in dw.SIDES:
        _pos_file(data_dir, name, side).unlink(missing_ok=True)
    (_dir(data_dir) / f"{name}{RECORD}").unlink(missing_ok=True)
    (_dir(data_dir) / f"{name}.status.json").unlink(missing_ok=True)


def status_file(data_dir: Path, name: str) -> Path:
    return _dir(data_dir) / f"{name}.status.json"


# -- the queue server ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_url(data_dir: Path) -> str:
    port = (Path(data_dir) / "nats" / "port").read_text().strip()
    return f"nats://127.0.0.1:{port}"


def nats_pid(data_dir: Path) -> int | None:
    try:
        pid = int((Path(data_dir) / "nats" / "pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"nats-server" in argv and str(data_dir).encode() in argv else None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_nats(data_dir: Path, region: str) -> str:
    """The region's nats-server, started (on the port it had, if any) unless it runs."""
    if not os.access(NATS_SERVER, os.X_OK):
        raise DualWriteError(f"dual write needs {NATS_SERVER} (nats-server; scripts/install.sh)")
    d = Path(data_dir) / "nats"
    d.mkdir(parents=True, exist_ok=True)
    port_file = d / "port"
    if nats_pid(data_dir) is not None:
        return nats_url(data_dir)
    port = int(port_file.read_text()) if port_file.exists() else _free_port()
    port_file.write_text(str(port))
    argv = [NATS_SERVER, "-js", "-sd", str(d / "store"), "-a", "127.0.0.1", "-p", str(port),
            "-n", f"{region}-nats", "-P", str(d / "pid"), "-l", str(d / "nats.log")]  # fmt: skip
    env = dict(os.environ, **{REGION_ENV: region})
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, env=env, start_new_session=True)  # fmt: skip
    if not poll_until(lambda: _listening(port), 15, interval=0.05):
        raise DualWriteError(f"nats-server did not listen on 127.0.0.1:{port}; see {d}/nats.log")
    return nats_url(data_dir)


def stop_nats(data_dir: Path) -> None:
    pid = nats_pid(data_dir)
    if pid is not None:
        cleanup.kill([pid], grace=5.0)


async def _connect(url: str) -> Any:
    import nats

    async def quiet(exc: Exception) -> None:
        """The server away is expected (a restart): the caller retries and reports it."""

    return await nats.connect(
        servers=[url],
        error_cb=quiet,
        connect_timeout=2,
        reconnect_time_wait=0.25,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
    )


async def ensure_stream(url: str, m: Migration) -> None:
    from nats.js.api import StorageType, StreamConfig

    nc = await _connect(url)
    try:
        js = nc.jetstream(timeout=5)
        cfg = StreamConfig(
            name=m.stream,
            subjects=[m.subject],
            storage=StorageType.FILE,
            duplicate_window=DUP_WINDOW,
        )
        try:
            await js.stream_info(m.stream)
        except Exception:  # not there yet
            await js.add_stream(cfg)
    finally:
        await nc.close()


async def delete_stream(url: str, m: Migration) -> None:
    nc = await _connect(url)
    try:
        with contextlib.suppress(Exception):
            await nc.jetstream(timeout=5).delete_stream(m.stream)
    finally:
        await nc.close()


async def publish(
    url: str, m: Migration, changes: Sequence[dw.Change], *, timeout: float = 60.0
) -> list[int]:
    """Queue `changes` durably (each acknowledged by the server, so stored); retried, with
    the same message id, through a server restart. Returns their stream sequences."""
    nc = await _connect(url)
    seqs = []
    try:
        js = nc.jetstream(timeout=2)
        deadline = time.monotonic() + timeout
        for ch in changes:
            while True:
                try:
                    ack = await js.publish(
                        m.subject,
                        json.dumps(ch.to_json()).encode(),
                        headers={"Nats-Msg-Id": ch.id},
                    )
                    seqs.append(int(ack.seq))
                    break
                except Exception as exc:  # the server away: wait and send it again
                    if time.monotonic() > deadline:
                        raise DualWriteError(
                            f"the queue did not take change {ch.id}: {exc}"
                        ) from exc
                    await asyncio.sleep(0.2)
    finally:
        await nc.close()
    return seqs


async def lag(url: str, m: Migration) -> dict[str, Any]:
    """The stream's last sequence and, per side, what its consumer has acknowledged."""
    nc = await _connect(url)
    try:
        js = nc.jetstream(timeout=3)
        si = await js.stream_info(m.stream)
        out: dict[str, Any] = {"last_seq": si.state.last_seq, "messages": si.state.messages}
        for side in dw.SIDES:
            try:
                ci = await js.consumer_info(m.stream, side)
                out[side] = {
                    "acked": ci.ack_floor.stream_seq if ci.ack_floor else 0,
                    "pending": ci.num_pending,
                    "unacked": ci.num_ack_pending,
                }
            except Exception:  # no consumer yet
                out[side] = {"acked": 0, "pending": si.state.last_seq, "unacked": 0}
        return out
    finally:
        await nc.close()


# -- the two sides ---------------------------------------------------------------------------


class Refused(Exception):
    """A side refused a change for good (it would refuse it again)."""


class YunhanSide:
    """The migration's route table and network ACL, through the API."""

    name = "yunhan"

    def __init__(self, m: Migration, api: Any) -> None:
        self.m, self.api = m, api

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self.api.request(method, path, **kw)
        if r.status_code >= 500:
            raise DualWriteError(f"{method} {path}: HTTP {r.status_code}")
        return r

    def _routes(self) -> dict[str, dict[str, Any]]:
        r = self._call("GET", f"/v1/route-tables/{self.m.route_table}/routes")
        r.raise_for_status()
        out = {}
        for e in r.json()["routes"]:
            if (
                e["type"] == "custom"
                and e["priority"] == dw.ROUTE_PRIORITY
                and _inside(e["dst"], self.m.prefix)
            ):
                out[e["dst"]] = e
        return out

    def _rules(self) -> dict[str, dict[str, Any]]:
        r = self._call("GET", f"/v1/acls/{self.m.acl}")
        r.raise_for_status()
        rules = (r.json().get("spec") or {}).get("rules") or []
        return {str(x["number"]): x for x in rules if x["direction"] == "ingress"}

    def items(self) -> dw.Items:
        out: dw.Items = {}
        for dst, e in self._routes().items():
            if e["next_hop"] == "blackhole":
                out[("route", dst)] = {"prefix": dst, "target": "blackhole"}
            else:
                out[("route", dst)] = {"prefix": dst, "target": str(e["next_hop"])}
        for n, x in self._rules().items():
            out[("acl", n)] = {
                "seq": int(n),
                "peer": x["cidr"],
                "protocol": x["proto"],
                "action": "permit" if x["action"] == "allow" else "deny",
            }
        return out

    def apply(self, changes: Sequence[dw.Change]) -> list[str]:
        """Make the side hold what `changes` say (the last change of a key wins); returns
        the refusals (recorded, acknowledged)."""
        have = self.items()
        routes, rules = self._routes(), self._rules()
        refused = []
        for ch in _last_per_key(changes):
            want = ch.value if ch.op == "put" else None
            if have.get((ch.kind, ch.key)) == want:
                continue  # already so: a redelivery, or a repeat
            try:
                if ch.kind == "route":
                    self._route(ch, routes.get(ch.key), want)
                else:
                    self._rule(ch, rules.get(ch.key), want)
            except Refused as exc:
                refused.append(f"{ch.kind} {ch.key}: {exc}")
        return refused

    def _check(self, r: Any, ok: Sequence[int]) -> None:
        if r.status_code in ok:
            return
        try:
            msg = r.json().get("message") or r.text
        except ValueError:
            msg = r.text
        if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
            raise Refused(f"HTTP {r.status_code}: {msg}")
        raise DualWriteError(f"HTTP {r.status_code}: {msg}")

    def _route(self, ch: dw.Change, old: dict[str, Any] | None, want: Any) -> None:
        if old is not None:
            self._check(self._call("DELETE", f"/v1/routes/{old['id']}"), (200, 404))
        if want is not None:
            body = {"dst": ch.key, "next_hop": "blackhole", "priority": dw.ROUTE_PRIORITY}
            r = self._call(
                "POST",
                f"/v1/route-tables/{self.m.route_table}/routes",
                json=body,
                headers={"Idempotency-Key": f"{ch.id}-route"},
            )
            self._check(r, (200, 201))

    def _rule(self, ch: dw.Change, old: dict[str, Any] | None, want: Any) -> None:
        if old is not None:
            path = f"/v1/acls/{self.m.acl}/rules/ingress/{ch.key}"
            self._check(self._call("DELETE", path), (200, 404))
        if want is not None:
            body = {
                "number": int(ch.key),
                "direction": "ingress",
                "proto": want["protocol"],
                "cidr": want["peer"],
                "action": "allow" if want["action"] == "permit" else "deny",
            }
            r = self._call(
                "POST",
                f"/v1/acls/{self.m.acl}/rules",
                json=body,
                headers={"Idempotency-Key": f"{ch.id}-acl"},
            )
            self._check(r, (200, 201))


class SwitchSide:
    """The IDC switch's routes inside the prefix and ACL rules toward it, over NETCONF."""

    name = "idc"

    def __init__(self, m: Migration, connect: Callable[[], Any]) -> None:
        self.m, self._connect = m, connect
        self._m: Any = None

    def _session(self) -> Any:
        if self._m is None or not self._m.connected:
            self._m = self._connect()
        return self._m

    def close(self) -> None:
        if self._m is not None:
            with contextlib.suppress(Exception):
                self._m.close_session()
            self._m = None

    def _running(self) -> switchcfg.SwitchConfig:
        from yunhan.lab import switchd

        try:
            return switchd.running_config(self._session())
        except Exception as exc:
            self.close()
            raise DualWriteError(f"the switch: {exc}") from exc

    def _mine(self, cfg: switchcfg.SwitchConfig) -> dw.Items:
        out: dw.Items = {}
        for r in cfg.routes:
            if _inside(r.prefix, self.m.prefix):
                target = "blackhole" if r.blackhole else f"ip:{r.next_hop}"
                out[("route", r.prefix)] = {"prefix": r.prefix, "target": target}
        for a in cfg.acl:
            if a.destination == self.m.prefix:
                out[("acl", str(a.seq))] = {
                    "seq": a.seq,
                    "peer": a.source,
                    "protocol": a.protocol,
                    "action": a.action,
                }
        return out

    def items(self) -> dw.Items:
        return self._mine(self._running())

    def apply(self, changes: Sequence[dw.Change]) -> list[str]:
        cfg = self._running()
        routes = {r.prefix: r for r in cfg.routes}
        acl = {a.seq: a for a in cfg.acl}
        for ch in _last_per_key(changes):
            if ch.kind == "route":
                routes.pop(ch.key, None)
                if ch.op == "put":
                    routes[ch.key] = switchcfg.SwitchRoute(ch.key, None, True)
            else:
                acl.pop(int(ch.key), None)
                if ch.op == "put" and ch.value is not None:
                    v = ch.value
                    acl[int(ch.key)] = switchcfg.AclRule(
                        int(ch.key), v["peer"], self.m.prefix, v["protocol"], v["action"]
                    )
        new = switchcfg.SwitchConfig(tuple(sorted(routes.values())), tuple(sorted(acl.values())))
        delta = switchcfg.delta_xml(cfg, new)
        if delta is None:
            return []  # already so
        m = self._session()
        try:
            m.edit_config(target="candidate", config=delta)
            m.commit()
        except Exception as exc:
            with contextlib.suppress(Exception):
                m.discard_changes()
            self.close()
            raise DualWriteError(f"the switch: {exc}") from exc
        return []


def _inside(cidr: str, prefix: str) -> bool:
    import ipaddress

    return ipaddress.IPv4Network(cidr).subnet_of(ipaddress.IPv4Network(prefix))


def _last_per_key(changes: Sequence[dw.Change]) -> list[dw.Change]:
    last: dict[tuple[str, str], dw.Change] = {}
    for ch in changes:
        last.pop((ch.kind, ch.key), None)
        last[(ch.kind, ch.key)] = ch
    return list(last.values())


# -- reconcile -------------------------------------------------------------------------------


@dataclass
class Reconciled:
    truth: str
    other: str
    differences: list[dw.Difference]
    repaired: bool = False
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "truth": self.truth,
            "other": self.other,
            "at": self.at,
            "repaired": self.repaired,
            "differences": [
                {**asdict(d), "text": d.describe(self.truth, self.other)} for d in self.differences
            ],
        }


def reconcile(m: Migration, sides: dict[str, Any], *, repair: bool = False) -> Reconciled:
    """Compare both sides; with `repair`, make the lagging one (not the truth) hold what
    the truth holds."""
    truth, other = sides[m.truth], sides[m.other]
    diffs = dw.compare(truth.items(), other.items())
    if repair and diffs:
        fixes = [
            dw.Change(
                f"repair-{time.time_ns()}-{i}",
                d.kind,
                d.key,
                "put" if d.truth else "delete",
                d.truth,
            )
            for i, d in enumerate(diffs)
        ]
        other.apply(fixes)
    return Reconciled(m.truth, m.other, diffs, repaired=repair and bool(diffs))


# -- the daemon ------------------------------------------------------------------------------


@dataclass
class SideStats:
    applied: int = 0  # messages acknowledged after their batch was applied
    batches: int = 0
    failed: list[str] = field(default_factory=list)  # refusals (the last 20)
    error: str = ""  # the last transient error ("" after a success)
    position: int = 0  # the last stream sequence applied
    resets: int = 0  # times the consumer was made again at the position (a gap)
    apply_ms: float = 0.0  # how long the last batch took to apply


def _pos_file(data_dir: Path, name: str, side: str) -> Path:
    return _dir(data_dir) / f"{name}.{side}.applied"


def _read_pos(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def _write_pos(path: Path, seq: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(seq))
    os.replace(tmp, path)


async def _subscribe(js: Any, m: Migration, side: str, pos: int) -> Any:
    """The side's durable consumer, made again to deliver from `pos` + 1 on."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    with contextlib.suppress(Exception):  # none yet
        await js.delete_consumer(m.stream, side)
    cfg = ConsumerConfig(
        durable_name=side,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        max_deliver=-1,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=pos + 1,
    )
    return await js.pull_subscribe(m.subject, durable=side, stream=m.stream, config=cfg)


async def _consume(
    js: Any,
    m: Migration,
    side: Any,
    stats: SideStats,
    stop: asyncio.Event,
    pos_file: Path,
    moved: asyncio.Event,
) -> None:
    """Apply the stream to `side` strictly in order. The position (the last sequence
    applied) is the side's own, written before the acknowledgement: a message at or below
    it is a redelivery (acknowledged, skipped); one beyond the next expected is a gap (a
    batch that failed, or was in flight when the consumer or the server died, comes back
    only after ACK_WAIT, and newer ones may come first): the consumer is made again from
    the position, so that nothing newer is ever applied before something older."""
    pos = _read_pos(pos_file)
    sub = None
    while not stop.is_set():
        try:
            if sub is None:
                sub = await _subscribe(js, m, side.name, pos)
            # One message, waited for; then what else is there, without waiting: a fetch
            # of a whole batch would linger until the batch is full or its timeout ends
            # (measured: half a second of lag at 100 changes a second).
            msgs = await sub.fetch(1, timeout=1)
            with contextlib.suppress(Exception):
                msgs += await sub.fetch(BATCH - 1, timeout=0.02)
        except Exception as exc:  # a timeout (nothing to do), or the server away
            if "timeout" not in type(exc).__name__.lower():
                stats.error = f"queue: {exc!r}"
                sub = None
                await asyncio.sleep(0.25)
            continue
        run: list[tuple[int, Any]] = []
        gap = False
        for x in msgs:
            seq = int(x.metadata.sequence.stream)
            if seq <= pos:
                with contextlib.suppress(Exception):
                    await x.ack()
                continue
            if seq != (run[-1][0] if run else pos) + 1:
                gap = True
                break
            run.append((seq, x))
        if run:
            changes = [dw.Change.from_json(json.loads(x.data)) for _, x in run]
            t0 = time.monotonic()
            try:
                refused = await asyncio.to_thread(side.apply, changes)
                stats.apply_ms = round((time.monotonic() - t0) * 1000, 1)
            except Exception as exc:  # transient: from the position again, later
                stats.error = f"{side.name}: {exc}"
                await asyncio.sleep(0.5)
                refused, gap = None, True
            if refused is not None:
                pos = run[-1][0]
                _write_pos(pos_file, pos)
                for _, x in run:
                    with contextlib.suppress(Exception):
                        await x.ack()
                stats.applied += len(run)
                stats.batches += 1
                stats.failed = (stats.failed + refused)[-20:]
                stats.error = ""
                moved.set()  # the status file says so at once
        stats.position = pos
        if gap:
            stats.resets += 1
            sub = None


async def serve(m: Migration, data_dir: Path, sides: dict[str, Any], url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    nc = await _connect(url)
    js = nc.jetstream(timeout=5)
    stats = {name: SideStats() for name in sides}
    moved = asyncio.Event()
    last: dict[str, Any] = {}
    tasks = [
        asyncio.create_task(
            _consume(js, m, s, stats[n], stop, _pos_file(data_dir, m.name, n), moved)
        )
        for n, s in sides.items()
    ]

    async def reconcile_loop() -> None:
        nonlocal last
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), m.reconcile_every)
            if stop.is_set():
                return
            try:
                r = await asyncio.to_thread(reconcile, m, sides)
                last = r.to_json()
            except Exception as exc:  # a side away: next time
                last = {"error": str(exc), "at": time.time()}

    tasks.append(asyncio.create_task(reconcile_loop()))
    path = status_file(data_dir, m.name)
    while not stop.is_set():
        state = {"pid": os.getpid(), "sides": {n: asdict(s) for n, s in stats.items()},
                 "reconcile": last, "at": time.time()}  # fmt: skip
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(moved.wait(), 0.2)
        moved.clear()
    for t in tasks:
        t.cancel()
    with contextlib.suppress(Exception):
        await nc.close()


def make_sides(m: Migration, record: Any, token: str) -> dict[str, Any]:
    """The two sides of `m` in the lab region `record` (the API with `token`)."""
    import httpx

    from yunhan.lab import idc, netconfsw

    sites = idc.load_sites(record)
    if m.site not in sites:
        raise DualWriteError(f"no IDC site {m.site} in the lab region")
    site = sites[m.site].spec
    paths = netconfsw.paths(site, record.data_dir)
    api = httpx.Client(
        base_url=record.endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    return {
        "yunhan": YunhanSide(m, api),
        "idc": SwitchSide(m, lambda: netconfsw.connect(site, paths)),
    }


def daemon_pid(data_dir: Path, name: str) -> int | None:
    for pid in cleanup.marked_pids(lambda _r: True):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"yunhan.lab.dualwrite" in argv
            and name.encode() in argv
            and str(data_dir).encode() in argv
        ):
            return pid
    return None


def start_daemon(data_dir: Path, name: str, region: str, token_file: Path) -> int:
    pid = daemon_pid(data_dir, name)
    if pid is not None:
        return pid
    argv = [sys.executable, "-m", "yunhan.lab.dualwrite", "--data-dir", str(data_dir),
            "--token-file", str(token_file), name]  # fmt: skip
    env = dict(os.environ, **{REGION_ENV: region, "PYTHONUNBUFFERED": "1"})
    log = _dir(data_dir) / f"{name}.log"
    with open(log, "ab") as f:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)  # fmt: skip
    if not poll_until(lambda: status_file(data_dir, name).exists(), 15, interval=0.05):
        raise DualWriteError(f"the dual-write consumer did not start; see {log}")
    return p.pid


def stop_daemon(data_dir: Path, name: str) -> None:
    pid = daemon_pid(data_dir, name)
    if pid is not None:
        cleanup.kill([pid], grace=5.0)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from yunhan.lab.region import RegionRecord

    ap = argparse.ArgumentParser(prog="yunhan.lab.dualwrite")
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--token-file", type=Path, required=True)
    ap.add_argument("name")
    a = ap.parse_args(argv)
    m = load(a.data_dir, a.name)
    record = RegionRecord.load(a.data_dir.parent)
    if record is None or Path(record.data_dir) != a.data_dir:
        print(f"no lab region owns {a.data_dir}", file=sys.stderr)
        return 1
    sides = make_sides(m, record, a.token_file.read_text().strip())
    asyncio.run(serve(m, a.data_dir, sides, nats_url(a.data_dir)))
    for s in sides.values():
        if hasattr(s, "close"):
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
