"""A multi-threaded TCP service is patched and rolled back under client load."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hotpatch_support import Built, Proc

from tests.polling import wait_for
from yunhan import hotpatch
from yunhan.hotpatch import procfs
from yunhan.polling import poll_until

pytestmark = pytest.mark.root

FIX_PRICE = """
#include <yunhan/hotpatch.h>
int price_v2(int x) { return x * 1000; }
YUNHAN_PATCH(price, price_v2);
"""
OLD, NEW = 73, 7000  # price(7) before and after


def request(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


@dataclass
class Load:
    """Clients sending `p 7` in a loop; every answer is logged with a sequence number."""

    port: int
    answers: list[tuple[int, int, str]] = field(default_factory=list)  # issued, done, answer
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    seq: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self) -> int:
        """A sequence number: requests issued after this call have a larger one."""
        with self.lock:
            self.seq += 1
            return self.seq

    def client(self) -> None:
        while not self.stop.is_set():
            n = self.mark()
            try:
                answer = request(self.port, "p 7")
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            done = self.mark()
            with self.lock:
                self.answers.append((n, done, answer))

    def wait_answers(self, count: int, timeout: float = 20.0) -> None:
        start = len(self.answers)
        wait_for(lambda: len(self.answers) >= start + count, timeout, "answers to the clients")

    def answered(self, issued_after: int = 0, done_before: float = float("inf")) -> set[str]:
        with self.lock:
            return {a for n, d, a in self.answers if n > issued_after and d < done_before}


def wait_workers(port: int, want: int, timeout: float = 10.0) -> None:
    values: set[int] = set()

    def settled() -> bool:
        nonlocal values
        values = {int(v) for v in request(port, "w").split()}
        return values == {want}

    assert poll_until(settled, timeout, interval=0.005, max_interval=0.005), (
        f"workers still report {values}"
    )


def test_service_under_load_patch_and_rollback_without_failures(
    built: Built,
    spawn: Callable[..., Proc],
    make_patch: Callable[[str, str, Path], Path],
    journal_dir: Path,
) -> None:
    svc = spawn(built.service, "0", "8")
    port = int(svc.readline().split()[1])
    assert len(list(Path(f"/proc/{svc.pid}/task").iterdir())) == 9
    yhp = make_patch("fix_price", FIX_PRICE, built.service)
    load = Load(port)
    clients = [threading.Thread(target=load.client) for _ in range(3)]
    for c in clients:
        c.start()
    try:
        load.wait_answers(50)
        applying = load.mark()
        hotpatch.apply(svc.pid, yhp, journal_dir=journal_dir)
        applied = load.mark()
        wait_workers(port, NEW)  # all 8 workers now run the new function
        load.wait_answers(50)
        rolling_back = load.mark()
        hotpatch.rollback(svc.pid, journal_dir=journal_dir)
        rolled_back = load.mark()
        wait_workers(port, OLD)
        load.wait_answers(50)
    finally:
        load.stop.set()
        for c in clients:
            c.join(timeout=10)
    assert load.failures == []
    # Answered before the switch: old; issued after it: new, until the rollback; then old.
    assert load.answered(done_before=applying) == {str(OLD)}
    assert load.answered(issued_after=applied, done_before=rolling_back) == {str(NEW)}
    assert load.answered(issued_after=rolled_back) == {str(OLD)}


def test_threads_created_during_the_stop_are_caught(
    built: Built,
    spawn: Callable[..., Proc],
    make_patch: Callable[[str, str, Path], Path],
    journal_dir: Path,
) -> None:
    svc = spawn(built.service, "0", "2", "1000", "churn")
    port = int(svc.readline().split()[1])
    yhp = make_patch("fix_price", FIX_PRICE, built.service)
    for _ in range(5):
        hotpatch.apply(svc.pid, yhp, journal_dir=journal_dir)
        created = int(request(port, "c").split()[0])
        wait_churn(port, created, NEW)
        hotpatch.rollback(svc.pid, journal_dir=journal_dir)
        created = int(request(port, "c").split()[0])
        wait_churn(port, created, OLD)
    # Every thread, the short-lived ones included, was let go: none traced, none stopped.
    for tid in procfs.threads(svc.pid):
        assert procfs.tracer_of(svc.pid, tid) == 0
    assert request(port, "p 7") == str(OLD)


def wait_churn(port: int, after: int, want: int, timeout: float = 10.0) -> None:
    """Poll until a thread created after `after` threads has reported `want`."""
    value = None

    def reported() -> bool:
        nonlocal value
        n, value = (int(x) for x in request(port, "c").split())
        return n > after + 1 and value == want

    assert poll_until(reported, timeout, interval=0.002, max_interval=0.002), (
        f"new threads still compute {value}"
    )


def test_single_threaded_server_blocked_in_accept(
    built: Built,
    spawn: Callable[..., Proc],
    make_patch: Callable[[str, str, Path], Path],
    journal_dir: Path,
) -> None:
    # Its only thread is borrowed while blocked in accept(2); its stack holds large
    # uninitialised buffers full of stale start-up words, which must not scare the loader.
    svc = spawn(built.service, "0", "0")
    port = int(svc.readline().split()[1])
    assert procfs.threads(svc.pid) == [svc.pid]
    yhp = make_patch("fix_price", FIX_PRICE, built.service)
    hotpatch.apply(svc.pid, yhp, journal_dir=journal_dir)
    assert request(port, "p 7") == str(NEW)
    hotpatch.rollback(svc.pid, journal_dir=journal_dir)
    assert request(port, "p 7") == str(OLD)
