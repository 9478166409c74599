"""A writer of numbered, fsynced records, run inside an instance on its volume.

    python3 volwriter.py FILE SECONDS [RATE]

Appends record i ("rec <i> <padding>\\n", 256 bytes) to FILE, fsyncs, and prints
"<i> <start_ns> <ack_ns>" on stdout: the time just before the write and just after fsync
returned (CLOCK_REALTIME, the clock the journal stamps its records with). A record is
acknowledged when its fsync returned. An I/O error (its storage restarting) is printed as
"err <i> <errno> <t_ns>"; the writer then reopens the file and goes on with the same i, so a
record that failed is written again. Runs for SECONDS at up to RATE records per second.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time


def main() -> int:
    path, seconds = sys.argv[1], float(sys.argv[2])
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 200.0
    end = time.monotonic() + seconds
    i, fd = 0, -1
    out = sys.stdout
    while time.monotonic() < end:
        start = time.time_ns()
        try:
            if fd < 0:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            line = f"rec {i} ".encode()
            os.write(fd, line + b"x" * (255 - len(line)) + b"\n")
            os.fsync(fd)
        except OSError as exc:
            out.write(f"err {i} {exc.errno} {time.time_ns()}\n")
            out.flush()
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
            fd = -1
            time.sleep(0.2)
            continue
        out.write(f"{i} {start} {time.time_ns()}\n")
        out.flush()
        i += 1
        time.sleep(1.0 / rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
