"""The lab internet's web server: answers every GET with the client address it saw.

It runs in the region's internet namespace (`yunhan up` starts it there with nsenter and
records its pid like the other lab processes), so that egress through a NAT gateway is
tested for real: an instance fetches `http://<internet ip>/` and reads back the address
its packets arrived from ("client 198.19.128.1"), which is the gateway's public address,
or the instance's own EIP.

    python -m yunhan.lab.echo [--listen 0.0.0.0:80]
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_PORT = 80


def answer(client_ip: str) -> bytes:
    """The body of every reply."""
    return f"client {client_ip}\n".encode()


class _Handler(BaseHTTPRequestHandler):
    server_version = "yunhan-echo"

    def do_GET(self) -> None:
        body = answer(self.client_address[0])
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per probe would only fill the lab's log


def make_server(host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    """A bound server (port 0: any free port); `serve_forever()` runs it."""
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m yunhan.lab.echo", description=__doc__)
    parser.add_argument("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", help="HOST:PORT")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = make_server(host or "0.0.0.0", int(port))

    def _stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever to return: not from its own thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
