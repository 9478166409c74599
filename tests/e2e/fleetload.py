"""A client of the fleet-patch service (tests/e2e/test_fleetpatch.py), run inside a lab
instance: every answer of the service is one line "<pid> <fleet_value(N)>" to a line "N".

  fleetload.py ask X HOST:PORT …         one request X to each target; prints JSON
                                         {target: [pid, value] | null}
  fleetload.py load OUT STOP HOST:PORT …  one persistent connection per target, a request
                                         every PERIOD s, until the file STOP exists; then
                                         writes JSON {target: {"ok", "failed", "errors",
                                         "values"}} to OUT ("values": the distinct (x,
                                         value) seen, with the time each first came)
A failed request (no answer within TIMEOUT, a reset, a refused connection) is counted
and the connection made again.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any

PERIOD = 0.02
TIMEOUT = 3.0


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


def _request(f: Any, s: socket.socket, x: int) -> tuple[int, int]:
    s.sendall(f"{x}\n".encode())
    line = f.readline()
    if not line.endswith("\n"):
        raise OSError("connection closed")
    pid, value = line.split()
    return int(pid), int(value)


def ask(x: int, targets: list[str]) -> None:
    out: dict[str, list[int] | None] = {}
    for t in targets:
        try:
            with socket.create_connection(_split(t), timeout=TIMEOUT) as s:
                s.settimeout(TIMEOUT)
                out[t] = list(_request(s.makefile(), s, x))
        except (OSError, ValueError):
            out[t] = None
    print(json.dumps(out))


def load(out_path: str, stop_path: str, targets: list[str]) -> None:
    results: dict[str, dict[str, Any]] = {}

    def run(t: str) -> None:
        r: dict[str, Any] = {"ok": 0, "failed": 0, "errors": [], "values": {}}
        results[t] = r
        s: socket.socket | None = None
        f: Any = None
        x = 1
        while not os.path.exists(stop_path):
            try:
                if s is None:
                    s = socket.create_connection(_split(t), timeout=TIMEOUT)
                    s.settimeout(TIMEOUT)
                    f = s.makefile()
                _pid, value = _request(f, s, x)
                r["ok"] += 1
                r["values"].setdefault(f"{x % 8} {value}", time.time())
            except (OSError, ValueError) as exc:
                r["failed"] += 1
                if len(r["errors"]) < 10:
                    r["errors"].append(f"{time.time():.3f} {exc!r}")
                if s is not None:
                    s.close()
                s = None
            x = x % 8 + 1
            time.sleep(PERIOD)
        if s is not None:
            s.close()

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    tmp = out_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh)
    os.replace(tmp, out_path)


if __name__ == "__main__":
    if sys.argv[1] == "ask":
        ask(int(sys.argv[2]), sys.argv[3:])
    else:
        load(sys.argv[2], sys.argv[3], sys.argv[4:])
