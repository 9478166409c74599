"""Function runtime: cold start, warm invoke and throughput of one worker (issue 11).

RUNTIME ONLY: the per-host zygote and its workers, driven in-process through
`FunctionRuntime`. No router, activator, HTTP gateway or API in front yet (slice 2), so
these figures are a floor for what a user will see, not what the issue's targets measure
end to end.

- cold start: spawn (fork from the zygote, cgroups, fresh netns, uid switch, import of the
  user's module) + the first invocation's round trip, N times (default 100), each worker
  stopped afterwards (outside the timing);
- warm invoke: round trips of a trivial handler on one warm worker (default 2000);
- throughput: invocations per second through one worker, back to back, against the same
  handler called in-process, as a ratio.

Last line: `RESULT cold_p50_ms=… cold_p99_ms=… warm_p50_ms=… rps=…`. The load average
(the machine is shared) is printed at the start and the end. Run as root:
`PYTHONPATH=$PWD .venv/bin/python bench/functions_runtime.py [--cold 100] [--warm 2000]`.
Everything it makes (zygote, workers, cgroups, state dir) is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from yunhan.functions import FunctionRuntime, FunctionSpec  # noqa: E402

HANDLER = """
def handler(event, context):
    return {"ok": True, "n": event}
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", type=int, default=100)
    ap.add_argument("--warm", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0, help="throughput run length")
    args = ap.parse_args()
    print(f"load average at start: {load()} ({os.cpu_count()} cores)")
    prefix = f"bfn{secrets.token_hex(2)}"
    state = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    state.chmod(0o711)  # workers (other uids) walk through it to their code
    src = state / "src"
    src.mkdir()
    (src / "main.py").write_text(HANDLER)
    rt = FunctionRuntime(state / "rt", prefix)
    try:
        rt.start()
        dep = rt.deploy(FunctionSpec("bench", 1, "main.handler", memory_mb=128), src)

        cold: list[float] = []
        spawn_only: list[float] = []
        phases: dict[str, list[float]] = {}
        for i in range(args.cold):
            t0 = time.perf_counter()
            w = rt.spawn(dep)
            inv = rt.invoke(w, i)
            cold.append((time.perf_counter() - t0) * 1000)
            spawn_only.append(w.cold_start_ms)
            for k, v in w.cold_start_phases.items():
                phases.setdefault(k, []).append(v)
            assert inv.ok and inv.result["n"] == i, inv
            rt.stop_worker(w)

        w = rt.spawn(dep)
        warm: list[float] = []
        inside: list[float] = []
        for i in range(args.warm):
            t0 = time.perf_counter()
            inv = rt.invoke(w, i)
            warm.append((time.perf_counter() - t0) * 1000)
            inside.append(inv.duration_ms)
            assert inv.ok

        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            rt.invoke(w, n)
            n += 1
        rps = n / (time.perf_counter() - t0)
        rt.stop_worker(w)

        ns: dict[str, object] = {}
        exec(HANDLER, ns)
        fn = ns["handler"]
        m, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            fn(m, None)  # type: ignore[operator]
            m += 1
        local_rps = m / (time.perf_counter() - t0)
    finally:
        rt.stop()
        shutil.rmtree(state, ignore_errors=True)

    print("RUNTIME ONLY (no router/activator/HTTP gateway in front)")
    print(
        f"cold start ({args.cold}, spawn + first invoke): p50 {pct(cold, 50):.1f} ms, "
        f"p99 {pct(cold, 99):.1f} ms, max {max(cold):.1f} ms; "
        f"spawn alone p50 {pct(spawn_only, 50):.1f} ms"
    )
    print(
        "  spawn phases p50/p99 ms: "
        + ", ".join(f"{k} {pct(v, 50):.2f}/{pct(v, 99):.2f}" for k, v in phases.items())
    )
    print(
        f"warm invoke ({args.warm}, round trip): p50 {pct(warm, 50):.3f} ms, "
        f"p99 {pct(warm, 99):.3f} ms; handler alone p50 {pct(inside, 50) * 1000:.1f} us"
    )
    print(
        f"throughput, one worker: {rps:.0f} req/s; in-process: {local_rps:.0f} calls/s; "
        f"ratio {rps / local_rps:.5f}"
    )
    print(f"load average at end: {load()}")
    print(
        f"RESULT cold_p50_ms={pct(cold, 50):.1f} cold_p99_ms={pct(cold, 99):.1f} "
        f"warm_p50_ms={pct(warm, 50):.3f} rps={rps:.0f}"
    )


if __name__ == "__main__":
    main()
