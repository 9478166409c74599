"""Hot patch pause: how long a process is stopped per apply and per rollback.

Builds the test service (tests/integration/hotpatch/csrc/service.c) and, for targets of 1,
16 and 64 threads (the TCP server thread plus 0, 15 and 63 workers calling the patched
function in a loop), applies and rolls back one patch N times (default 100 each). A pause
is one stop-the-world window: from the first PTRACE_INTERRUPT to the last PTRACE_DETACH.
Every stop counts, including the attempts that found the function active and let the
process run again, not only the one that wrote. After each apply a request must see the
new behaviour (price(7) = 7000) and after each rollback the old one, or the bench fails.
It prints p50/p99 of all stops per target and how many stops each operation took, then
measures what a TCP client of the 16-thread target sees: request latency p50/p99 with no
patching, and while the apply/rollback loop runs (the client is a separate process, so our
GIL is not in its way).

Ends with `RESULT pause_p99_ms_1t=X pause_p99_ms_16t=X pause_p99_ms_64t=X`; a patch that
did not take effect prints `FAIL ...` instead and exits with status 1.
Run as root: `.venv/bin/python bench/hotpatch_pause.py [--rounds 100]`.
Everything it starts is killed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from yunhan import hotpatch  # noqa: E402
from yunhan.polling import poll_until  # noqa: E402

SERVICE_C = ROOT / "tests/integration/hotpatch/csrc/service.c"
FIX = """
#include <yunhan/hotpatch.h>
int price_v2(int x) { return x * 1000; }
YUNHAN_PATCH(price, price_v2);
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


@contextmanager
def service(binary: Path, threads: int) -> Iterator[tuple[int, int]]:
    """(pid, port) of a service with `threads` threads in all; killed on exit."""
    p = subprocess.Popen(
        [str(binary), "0", str(threads - 1), "1000"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None
        port = int(p.stdout.readline().split()[1])
        assert poll_until(
            lambda: len(list(Path(f"/proc/{p.pid}/task").iterdir())) >= threads, 10
        ), "service threads did not start"
        yield p.pid, port
    finally:
        p.kill()
        p.wait()


def ask(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(line.encode() + b"\n")
        out = b""
        while not out.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                break
            out += chunk
    return out.decode().strip()


class NotApplied(Exception):
    """An apply or rollback returned but the service does not behave accordingly."""


@dataclass
class Stops:
    """Every stop of every apply and rollback, and how many stops each one took."""

    apply: list[float] = field(default_factory=list)
    rollback: list[float] = field(default_factory=list)
    attempts: Counter[tuple[str, int]] = field(default_factory=Counter)

    @property
    def all(self) -> list[float]:
        return self.apply + self.rollback

    def attempts_line(self) -> str:
        parts = []
        for action in ("apply", "rollback"):
            dist = sorted((n, c) for (a, n), c in self.attempts.items() if a == action)
            parts.append(f"{action} " + " ".join(f"{n}:{c}" for n, c in dist))
        return "stops per operation (stops:count) " + ", ".join(parts)


def measure(pid: int, port: int, yhp: Path, journal: Path, rounds: int) -> Stops:
    """Apply and roll back `rounds` times (after 3 warm-up rounds); after each one a
    request must see the behaviour it installed, or the bench fails (NotApplied)."""
    retry = hotpatch.Retry(attempts=100, first_backoff=0.001, max_backoff=0.05)
    old, new = ask(port, "p 7"), str(7 * 1000)
    if old == new:
        raise NotApplied(f"the service already answers {new} to `p 7` before any patch")
    out = Stops()
    for i in range(rounds + 3):
        a = hotpatch.apply(pid, yhp, journal_dir=journal, retry=retry)
        if (got := ask(port, "p 7")) != new:
            raise NotApplied(f"round {i}: after apply `p 7` answered {got}, expected {new}")
        r = hotpatch.rollback(pid, journal_dir=journal, retry=retry)
        if (got := ask(port, "p 7")) != old:
            raise NotApplied(f"round {i}: after rollback `p 7` answered {got}, expected {old}")
        if i >= 3:  # the first rounds warm the caches (ELF parsing, page faults)
            out.apply += a.pauses_ms
            out.rollback += r.pauses_ms
            out.attempts[("apply", a.attempts)] += 1
            out.attempts[("rollback", r.attempts)] += 1
    return out


def client_main(port: int) -> None:
    """Separate process: request `p 7` until stdin closes, print latencies (ms) as JSON."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    lat, failures = [], 0
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"p 7\n")
                if not s.recv(64).endswith(b"\n"):
                    failures += 1
                    continue
        except OSError:
            failures += 1
            continue
        lat.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.0005)
    print(json.dumps({"lat": lat, "failures": failures}))


@contextmanager
def client(port: int) -> Iterator[dict[str, object]]:
    p = subprocess.Popen(
        [sys.executable, __file__, "--client", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    result: dict[str, object] = {}
    try:
        yield result
        out, _ = p.communicate("", timeout=60)
        result.update(json.loads(out))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100, help="applies (and rollbacks) per target")
    ap.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args.client)
        return
    with tempfile.TemporaryDirectory(prefix="yunhan-hpbench-") as tmp:
        d = Path(tmp)
        binary = d / "service"
        subprocess.run(
            ["gcc", "-O2", "-pthread", "-Wl,--build-id", str(SERVICE_C), "-o", str(binary)],
            check=True,
        )
        src = d / "fix.c"
        src.write_text(FIX)
        yhp = d / "fix.yhp"
        hotpatch.build(src, binary, yhp)
        p99: dict[int, float] = {}
        for threads in (1, 16, 64):
            with service(binary, threads) as (pid, port):
                m = measure(pid, port, yhp, d / f"journal{threads}", args.rounds)
            both = m.all
            p99[threads] = pct(both, 99)
            print(
                f"{threads:3d} threads: pause p50 {pct(both, 50):.3f} ms  p99 {p99[threads]:.3f} ms"
                f"  max {max(both):.3f} ms  (apply p99 {pct(m.apply, 99):.3f}, rollback p99 "
                f"{pct(m.rollback, 99):.3f}; n={len(both)} stops of {args.rounds} applies and "
                f"{args.rounds} rollbacks)",
                flush=True,
            )
            print(f"    {m.attempts_line()}", flush=True)
        with service(binary, 16) as (pid, port):
            with client(port) as idle:
                time.sleep(3)
            with client(port) as busy:
                measure(pid, port, yhp, d / "journal-client", args.rounds)
        for name, res in (("without patching", idle), ("during patching", busy)):
            lat = res["lat"]
            assert isinstance(lat, list)
            print(
                f"client (16 threads) {name}: p50 {pct(lat, 50):.3f} ms  p99 {pct(lat, 99):.3f}"
                f" ms  max {max(lat):.3f} ms  (n={len(lat)}, failures={res['failures']})"
            )
        print(
            f"RESULT pause_p99_ms_1t={p99[1]:.3f} pause_p99_ms_16t={p99[16]:.3f} "
            f"pause_p99_ms_64t={p99[64]:.3f}"
        )


if __name__ == "__main__":
    try:
        main()
    except NotApplied as exc:
        print(f"FAIL {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
