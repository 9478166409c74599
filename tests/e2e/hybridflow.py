"""A TCP stream that must survive: `hybridflow.py serve PORT` echoes lines;
`hybridflow.py stream HOST PORT SECONDS` sends a line every 20 ms over one connection for
SECONDS and prints one JSON line: lines echoed, the longest wait for an echo (the gap a
failover costs this flow), and whether the connection broke."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def serve(port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)

    def echo(c: socket.socket) -> None:
        with c:
            while data := c.recv(4096):
                c.sendall(data)

    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()


def stream(host: str, port: int, seconds: float) -> None:
    s = socket.create_connection((host, port), timeout=5)
    s.settimeout(30)
    f = s.makefile("rb")
    end = time.monotonic() + seconds
    n, worst, broke = 0, 0.0, ""
    last = time.monotonic()
    try:
        while time.monotonic() < end:
            s.sendall(f"{n}\n".encode())
            if f.readline().strip() != str(n).encode():
                broke = "wrong echo"
                break
            now = time.monotonic()
            worst = max(worst, now - last)
            last = now
            n += 1
            time.sleep(0.02)
    except OSError as exc:
        broke = str(exc)
    print(json.dumps({"lines": n, "worst_gap_s": round(worst, 3), "broke": broke}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        stream(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
