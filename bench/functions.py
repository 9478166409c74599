"""Functions end to end (issue 11): cold start, warm invoke and saturation throughput, as a
client of the HTTP gateway sees them.

Brings up its own lab region (1 zone x 1 host), deploys trivial functions through the
API, and calls them through the gateway (`POST /fn/<project>/<name>`): HTTP into the API
server, its router and activator, HTTP to the host's function host, the worker's socket.

- cold start: N functions (default 100) each called once, then left until their scaler
  took them to zero (scale window 6 s, idle grace 0), then each called once more: that
  second call is the cold start measured, from the request leaving the client with zero
  workers up to the response (fork from the zygote, sandbox, import of the user's code,
  the invocation; the code is already on the host from the first call, as it stays there
  between scale-downs);
- warm: M calls (default 2000) back to back on one warm function;
- throughput: wrk (Debian's) with 32 connections for 8 s on a trivial function allowed up
  to 4 workers, against the same handler called in-process in a loop, as a ratio.

Also prints the runtime-only floor (bench/functions_runtime.py: no HTTP, no router) when
asked (`--runtime`). Last line: `RESULT cold_p50_ms=… cold_p99_ms=… warm_p50_ms=…
warm_p99_ms=… rps=… rps_ratio=…`. Run alone, as root:
`PYTHONPATH=$PWD .venv/bin/python bench/functions.py [--cold 100] [--warm 2000]`.
Everything it makes (region, workers, files) is removed at the end.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from yunhan.functions.bundle import pack  # noqa: E402
from yunhan.lab import region as lab  # noqa: E402
from yunhan.lab.spec import RegionSpec  # noqa: E402

HANDLER = """
def handler(event, context):
    return {"ok": True, "n": event.get("n") if isinstance(event, dict) else None}
"""


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class Api:
    def __init__(self, endpoint: str, token: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.c = httpx.Client(
            base_url=self.endpoint,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )

    def deploy(self, name: str, source: bytes, **spec: Any) -> dict[str, Any]:
        body = {
            "name": name,
            "handler": "main.handler",
            "source": {"tar_gz": base64.b64encode(source).decode()},
            **spec,
        }
        r = self.c.post("/v1/functions", json=body)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def call(self, name: str, n: int = 0) -> tuple[float, httpx.Response]:
        t0 = time.perf_counter()
        r = self.c.post(f"/fn/admin/{name}", json={"n": n})
        dt = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"{name}: {r.status_code} {r.text[:300]}")
        return dt, r

    def at_zero(self, ids: set[str]) -> int:
        """How many of the functions `ids` their scaler took to zero (the events say)."""
        items = self.c.get("/v1/events").json()["items"]
        return len({e["object"] for e in items if e["reason"] == "ScaledToZero"} & ids)


def in_process_rps(seconds: float = 1.0) -> float:
    ns: dict[str, Any] = {}
    exec(HANDLER, ns)
    handler = ns["handler"]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            handler({"n": n}, None)
        n += 1000
    return n / (time.perf_counter() - t0)


def wrk(endpoint: str, token: str, name: str, state: Path, seconds: int) -> float:
    lua = state / "post.lua"
    lua.write_text(
        'wrk.method = "POST"\nwrk.body = \'{"n": 1}\'\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    p = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua),
         f"{endpoint}/fn/admin/{name}"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    print("  " + "\n  ".join(p.stdout.strip().splitlines()))
    m = re.search(r"Requests/sec:\s+([0-9.]+)", p.stdout)
    if not m:
        raise RuntimeError(f"wrk said: {p.stdout} {p.stderr}")
    if "Non-2xx" in p.stdout:
        raise RuntimeError(f"wrk saw errors: {p.stdout}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold", type=int, default=100, help="cold starts measured")
    ap.add_argument("--warm", type=int, default=2000, help="warm calls measured")
    ap.add_argument("--seconds", type=int, default=8, help="wrk's run")
    ap.add_argument("--prefix", default=f"bfn{secrets.token_hex(2)}")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk is missing: scripts/install.sh installs it", file=sys.stderr)
        return 2
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    state = Path(tempfile.mkdtemp(prefix="yunhan-fnb-"))
    handle = None
    try:
        src = state / "src"
        src.mkdir()
        (src / "main.py").write_text(HANDLER)
        source = pack(src)
        handle = lab.up(RegionSpec.build(args.prefix, zones=1, hosts_per_zone=1), state,
                        detach=False)  # fmt: skip
        api = Api(handle.endpoint, handle.token)
        names = [f"c{i}" for i in range(args.cold)]
        ids = {api.deploy(name, source, scale_window_s=6, idle_grace_s=0)["id"] for name in names}
        first = [api.call(name)[0] for name in names]  # code copied to the host, 1 worker
        print(f"first calls (code copied to the host too): p50 {pct(first, 50):.1f} ms "
              f"p99 {pct(first, 99):.1f} ms")  # fmt: skip
        deadline = time.monotonic() + 60
        while (n := api.at_zero(ids)) < len(ids):  # every function back to zero
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {n} of {len(ids)} functions at zero after 60 s")
            time.sleep(1)
        cold: list[float] = []
        for name in names:
            dt, r = api.call(name)
            if r.headers.get("x-yunhan-cold-start") != "true":
                raise RuntimeError(f"{name}: not a cold start")
            cold.append(dt)
        print(f"cold starts ({len(cold)}, from zero workers): p50 {pct(cold, 50):.1f} ms "
              f"p99 {pct(cold, 99):.1f} ms max {max(cold):.1f} ms")  # fmt: skip
        api.deploy("warm", source, min_scale=1)
        api.call("warm")
        warm = [api.call("warm", i)[0] for i in range(args.warm)]
        print(f"warm ({len(warm)} back to back): p50 {pct(warm, 50):.2f} ms "
              f"p99 {pct(warm, 99):.2f} ms")  # fmt: skip
        api.deploy("flood", source, max_scale=4)
        api.call("flood")
        rps = wrk(handle.endpoint, handle.token, "flood", state, args.seconds)
        inproc = in_process_rps()
        ratio = rps / inproc
        print(f"throughput through the gateway: {rps:.0f} req/s; the handler in-process: "
              f"{inproc:.0f} calls/s; ratio {ratio:.5f}")  # fmt: skip
        usage = api.c.get("/v1/usage", params={"by": "function"}).json()["totals"]
        print(f"metered: {usage['requests']} requests, {usage['gb_seconds']:.3f} GB-s")
    finally:
        if handle is not None:
            handle.down()
        shutil.rmtree(state, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"RESULT cold_p50_ms={pct(cold, 50):.1f} cold_p99_ms={pct(cold, 99):.1f} "
          f"warm_p50_ms={statistics.median(warm):.2f} warm_p99_ms={pct(warm, 99):.2f} "
          f"rps={rps:.0f} rps_ratio={ratio:.5f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
