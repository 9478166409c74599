"""The driver of a lab IDC site's switch: makes the router's kernel what NETCONF's running
datastore says.

netconfd (yuma123) keeps the datastore and does NETCONF itself, confirmed commit and its
rollback included; it has no instrumentation for our YANG module, so this process, in the
router's namespace, reads the running configuration over NETCONF (the same SSH path a user
takes) and applies it: routes of protocol SWITCH_PROTO and the `yunhan_switch` nftables
table (yunhan.net.switchcfg). After each application it writes its state file
(`applied.json`: the configuration's digest, when, any error), by which `yunhan netconf
push` knows the switch forwards as configured before it checks.

It does not poll: it subscribes to the NETCONF event stream and reads the running
configuration when a netconf-config-change or netconf-confirmed-commit notification says
it may have changed (a push, a confirm, the server's own rollback), and every RECHECK
seconds besides (drift, a missed event). Polling would break the rollback it exists to
apply: netconfd runs its timers, the confirm timeout among them, only when its event loop
has been idle for a second, so a client asking every 0.2 s postpones a rollback for as
long as it asks (measured: a 3 s confirm timeout rolled back after 4.2 s with a read every
2 s, 9.4 s with one every 0.9 s, never with one every 0.2 s).

If NETCONF is away, what was applied stays: the switch keeps forwarding.

It also keeps the switch's traffic counters (`yunhan hybrid stats`, docs/cutover.md): a
`yunhan_hstats` table counts each of the site's ranges (`--count`) per direction, on the
line and routed inside the IDC (yunhan.net.nftstats), and a thread reads it every
COUNT_EVERY seconds and keeps what moved over the last HISTORY seconds in `traffic.json`
beside the state file, as a switch keeps its counters' history for its management station.

    python -m yunhan.lab.switchd --key FILE --hostkey FILE --state FILE [--count CIDR ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from yunhan.net import nftstats, switchcfg

RECHECK = 5.0  # seconds between reads without an event (drift, a missed notification)
EVENTS = ("netconf-config-change", "netconf-confirmed-commit")
PORT = 830
COUNT_EVERY = 1.0  # seconds between two readings of the traffic counters
HISTORY = 3600.0  # seconds of traffic samples kept


def installed_routes() -> list[tuple[str, int]]:
    """(prefix, metric) of the routes of ours in the main table."""
    out = subprocess.run(
        ["ip", "-j", "route", "show", "proto", str(switchcfg.SWITCH_PROTO)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    routes = []
    for r in json.loads(out or "[]"):
        dst = r.get("dst", "")
        if dst == "default":
            dst = "0.0.0.0/0"
        elif "/" not in dst:
            dst += "/32"
        routes.append(switchcfg.route_key(dst, int(r.get("metric", 0))))
    return routes


def apply(cfg: switchcfg.SwitchConfig) -> None:
    plan = switchcfg.kernel_plan(cfg, installed_routes())
    if plan.ip_batch:
        p = subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="".join(f"{line}\n" for line in plan.ip_batch),
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise RuntimeError(f"ip: {p.stderr.strip()}")
    p = subprocess.run(["nft", "-f", "-"], input=plan.nft, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"nft: {p.stderr.strip()}")


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def connect(key: str, hostkey_b64: str, port: int = PORT) -> Any:
    from ncclient import manager

    return manager.connect(
        host="127.0.0.1",
        port=port,
        username="root",
        key_filename=key,
        hostkey_b64=hostkey_b64,
        allow_agent=False,
        look_for_keys=False,
        timeout=10,
    )


def running_config(m: Any) -> switchcfg.SwitchConfig:
    flt = f'<switch xmlns="{switchcfg.NS}"/>'
    return switchcfg.from_xml(m.get_config("running", filter=("subtree", flt)).data_xml)


def serve(key: str, hostkey_b64: str, state: Path) -> None:
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    m = None
    applied: str | None = None
    while not stop:
        try:
            if m is None or not m.connected:
                m = connect(key, hostkey_b64)
                m.create_subscription()
            cfg = running_config(m)
        except Exception as exc:  # NETCONF away: keep what is applied, try again
            print(f"switchd: netconf: {exc}", file=sys.stderr, flush=True)
            m = None
            time.sleep(1.0)
            continue
        digest = cfg.digest()
        error = ""
        try:
            apply(cfg)  # also when unchanged: puts back what drifted
        except (RuntimeError, subprocess.CalledProcessError, ValueError) as exc:
            error = str(exc)
            print(f"switchd: apply: {error}", file=sys.stderr, flush=True)
        if digest != applied:
            n = f"{len(cfg.routes)} routes, {len(cfg.acl)} acl rules"
            print(f"switchd: applied {digest}: {n}", file=sys.stderr, flush=True)
        applied = digest
        _write_state(
            state, {"digest": digest, "applied_at": time.time(), "error": error, "pid": os.getpid()}
        )
        _wait_event(m, RECHECK, lambda: stop)
    if m is not None:
        with contextlib.suppress(Exception):  # going away anyway
            m.close_session()


def _wait_event(m: Any, timeout: float, stopped: Any) -> None:
    """Until a notification that the running configuration may have changed, `timeout`
    seconds, or a stop."""
    deadline = time.monotonic() + timeout
    while not stopped() and (left := deadline - time.monotonic()) > 0:
        n = m.take_notification(block=True, timeout=min(left, 0.5))
        if n is not None and any(e in n.notification_xml for e in EVENTS):
            return
        if not m.connected:
            return


def _nft(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["nft", *args], input=stdin, capture_output=True, text=True, check=True
    ).stdout


def _counters() -> dict[nftstats.Key, nftstats.Reading]:
    try:
        out = _nft("-j", "list", "counters", "table", nftstats.FAMILY, nftstats.TABLE)
    except subprocess.CalledProcessError:
        return {}  # no table yet
    return nftstats.parse_counters(json.loads(out or "{}"))


def count(prefixes: list[str], path: Path, stopped: threading.Event) -> None:
    """Keep the table counting `prefixes` and `path` holding what moved (samples of
    [start, end, point, prefix, direction, packets, bytes]) over the last HISTORY s."""
    samples: list[list[Any]] = []
    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            samples = list(json.loads(path.read_text()).get("samples", []))
    readings = _counters()
    if nftstats.prefixes_of(readings) != set(prefixes):
        _nft("-f", "-", stdin=nftstats.script("switch", prefixes))
        readings = _counters()
    deltas = nftstats.Deltas(readings)
    last = time.time()
    while not stopped.wait(COUNT_EVERY):
        now = time.time()
        try:
            moved = deltas.step(_counters())
        except (subprocess.CalledProcessError, ValueError) as exc:
            print(f"switchd: counters: {exc}", file=sys.stderr, flush=True)
            continue
        old = len(samples)
        samples = [x for x in samples if x[1] >= now - HISTORY]
        for k, (p, b) in sorted(moved.items()):
            samples.append([last, now, k.point, k.prefix, k.direction, p, b])
        last = now
        if moved or len(samples) != old:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"prefixes": prefixes, "samples": samples}))
            os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="yunhan.lab.switchd")
    ap.add_argument("--key", required=True, help="the SSH client key")
    ap.add_argument("--hostkey", required=True, help="the server's public host key file")
    ap.add_argument("--state", required=True, type=Path, help="where to write applied.json")
    ap.add_argument("--count", action="append", default=[], help="a range to count traffic of")
    a = ap.parse_args(argv)
    hostkey_b64 = Path(a.hostkey).read_text().split()[1]
    stopped = threading.Event()
    if a.count:
        traffic = a.state.with_name("traffic.json")
        threading.Thread(
            target=count, args=(a.count, traffic, stopped), name="counters", daemon=True
        ).start()
    serve(a.key, hostkey_b64, a.state)
    stopped.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
