"""The fleet-patch workload, built with gcc by tests/e2e/test_fleetpatch.py and
bench/fleet_patch.py: a shared library `libfleet.so` (salted, so that its GNU build-id is
this run's own and no other process of the machine maps it) and a TCP service linked
against it.

`service PORT [N]` runs N processes (default 1: the first forks N-1 workers, each dies
with it); process i listens on PORT+i and answers each line "X" with "<its pid>
<fleet_value(X)>". It serves every connection at once (poll), so a client's persistent
connection and a probe's do not wait for each other. Core dumps are off: the crashing
patch of the e2e must not fill the disk.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

LIB = """
const char *fleet_salt = "%s";
__attribute__((noipa)) int fleet_value(int x) {
    int r = x;
    for (int i = 0; i < 3; i++) r += 7 + (x & i);
    return r;
}
"""
SERVICE = r"""
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
int fleet_value(int x);
#define MAXC 64
static void serve(int port) {
    int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) { perror("bind"); exit(1); }
    struct pollfd fds[MAXC + 1] = {{.fd = s, .events = POLLIN}};
    int n = 1;
    char buf[256], out[64];
    for (;;) {
        if (poll(fds, n, -1) < 0) continue;
        if ((fds[0].revents & POLLIN) && n <= MAXC) {
            int c = accept(s, 0, 0);
            if (c >= 0) fds[n++] = (struct pollfd){.fd = c, .events = POLLIN};
        }
        for (int i = 1; i < n; i++) {
            if (!fds[i].revents) continue;
            ssize_t r = read(fds[i].fd, buf, sizeof buf - 1);
            if (r <= 0) { close(fds[i].fd); fds[i--] = fds[--n]; continue; }
            buf[r] = 0;
            for (char *p = buf; *p;) {  /* one answer per line */
                char *nl = strchr(p, '\n');
                int len = snprintf(out, sizeof out, "%d %d\n", getpid(), fleet_value(atoi(p)));
                if (write(fds[i].fd, out, len) < 0) break;
                if (!nl) break;
                p = nl + 1;
            }
        }
    }
}
int main(int argc, char **argv) {
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    int port = atoi(argv[1]), n = argc > 2 ? atoi(argv[2]) : 1;
    for (int i = 1; i < n; i++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            serve(port + i);
        }
    }
    serve(port);
}
"""
# The new behaviours: a fix, a fix that crashes the process when called, another fix.
PATCH_V1 = """
#include <yunhan/hotpatch.h>
static int fleet_value_v1(int x) { return x * 1000; }
YUNHAN_PATCH(fleet_value, fleet_value_v1);
"""
PATCH_CRASH = """
#include <yunhan/hotpatch.h>
static int fleet_value_crash(int x) { *(volatile int *)0 = x; return x; }
YUNHAN_PATCH(fleet_value, fleet_value_crash);
"""
PATCH_V3 = """
#include <yunhan/hotpatch.h>
static int fleet_value_v3(int x) { return x * 3000; }
YUNHAN_PATCH(fleet_value, fleet_value_v3);
"""
CFLAGS = ["-O2", "-fcf-protection=full", "-Wl,--build-id"]


def old_value(x: int) -> int:
    """fleet_value of the library as built (no patch)."""
    return x + sum(7 + (x & i) for i in range(3))


def _cc(*argv: str | Path) -> None:
    p = subprocess.run(["gcc", *map(str, argv)], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"gcc {' '.join(map(str, argv))}: {p.stderr}")


def build(d: Path) -> tuple[Path, Path]:
    """(service binary, libfleet.so) built in `d`, the library salted afresh."""
    lib_c = d / "libfleet.c"
    lib_c.write_text(LIB % secrets.token_hex(8))
    lib = d / "libfleet.so"
    _cc(*CFLAGS, "-fPIC", "-shared", lib_c, "-o", lib)
    svc_c = d / "service.c"
    svc_c.write_text(SERVICE)
    svc = d / "service"
    _cc(*CFLAGS, svc_c, "-o", svc, f"-L{d}", "-lfleet", f"-Wl,-rpath,{d}")
    return svc, lib
