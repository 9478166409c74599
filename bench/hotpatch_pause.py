"""Hot patch pause: how long a process is stopped per apply and per rollback.

Builds the test service (tests/integration/hotpatch/csrc/service.c) and, for targets of 1,
16 and 64 threads (the TCP server thread plus 0, 15 and 63 workers calling the patched
function in a loop), applies and rolls back one patch N times (default 100 each). The
pause is the stop-the-world window the loader reports: from the first PTRACE_INTERRUPT to
the last PTRACE_DETACH. It prints p50/p99 per target, then measures what a TCP client of
the 16-thread target sees: request latency p50/p99 with no patching, and while the
apply/rollback loop runs (the client is a separate process, so our GIL is not in its way).

Ends with `RESULT pause_p99_ms_1t=X pause_p99_ms_16t=X pause_p99_ms_64t=X`.
Run as root: `.venv/bin/python bench/hotpatch_pause.py [--rounds 100]`.
Everything it starts is killed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def measure(pid: int, yhp: Path, journal: Path, rounds: int) -> dict[str, list[float]]:
    retry = hotpatch.Retry(attempts=100, first_backoff=0.001, max_backoff=0.05)
    out: dict[str, list[float]] = {"apply": [], "rollback": [], "attempts": []}
    for i in range(rounds + 3):
        a = hotpatch.apply(pid, yhp, journal_dir=journal, retry=retry)
        r = hotpatch.rollback(pid, journal_dir=journal, retry=retry)
        if i >= 3:  # the first rounds warm the caches (ELF parsing, page faults)
            out["apply"].append(a.pause_ms)
            out["rollback"].append(r.pause_ms)
            out["attempts"] += [a.attempts, r.attempts]
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
            with service(binary, threads) as (pid, _port):
                m = measure(pid, yhp, d / f"journal{threads}", args.rounds)
            both = m["apply"] + m["rollback"]
            p99[threads] = pct(both, 99)
            print(
                f"{threads:3d} threads: pause p50 {pct(both, 50):.3f} ms  p99 {p99[threads]:.3f} ms"
                f"  max {max(both):.3f} ms  (apply p99 {pct(m['apply'], 99):.3f}, rollback p99 "
                f"{pct(m['rollback'], 99):.3f}; n={len(both)}, attempts mean "
                f"{statistics.mean(m['attempts']):.2f})",
                flush=True,
            )
        with service(binary, 16) as (pid, port):
            with client(port) as idle:
                time.sleep(3)
            with client(port) as busy:
                measure(pid, yhp, d / "journal-client", args.rounds)
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
    main()
