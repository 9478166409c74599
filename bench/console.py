"""The console's speed: first paint of the topology, and how soon a change reaches an open page.

Brings up its own lab region (2 zones x 2 hosts, 4 instances, a VIP), then in Debian's
chromium (Playwright):

  paint     a signed-in page loads /console#/topology from scratch: the time from the
            navigation's start to the console's `yunhan:topology` performance mark (the
            map drawn, every instance on it). Beside it, side by side in the same rounds,
            one plain GET /v1/topology from this process: what the page cannot beat.
  update    `POST /v1/vips/v1/move` from this process while the page is open; the time
            from the call's answer (the write committed) to the mark of the first drawing
            whose revision holds it, and from the moment /v1/converged says every host
            applied it (negative: the page drew it before the hosts were done).

Ends with `RESULT paint_p50_ms=… paint_p99_ms=… api_p50_ms=… paint_vs_api=… update_p50_ms=…
update_p99_ms=… update_after_applied_p50_ms=…`. Run as root, alone on the machine:
`python bench/console.py [--rounds 15]`. The region is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.region import Region  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def marks(page: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = page.evaluate(
        """() => performance.getEntriesByName("yunhan:topology").map(
               (m) => ({at: performance.timeOrigin + m.startTime, start: m.startTime,
                        revision: m.detail.revision}))"""
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="yunhan-bench-console-"))
    r = Region(home)
    try:
        r.run("up", "--detach", "--zones", "2", "--hosts-per-zone", "2", timeout=300)
        cfg = json.loads((home / ".config" / "yunhan" / "config.json").read_text())
        base, token = str(cfg["endpoint"]).rstrip("/"), str(cfg["token"])
        auth = {"Authorization": f"Bearer {token}"}
        r.run("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
        r.run("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
        for i, zone in enumerate(("az1", "az1", "az2", "az2")):
            r.run("instance", "create", f"i{i}", "--subnet", "web", "--zone", zone)
        r.run("vip", "create", "v1", "--subnet", "web", "--ip", "10.0.1.100",
              "--allow", "i0", "--allow", "i2")  # fmt: skip
        r.run("vip", "move", "v1", "i0", "--wait")
        paint: list[float] = []
        api: list[float] = []
        update: list[float] = []
        after_applied: list[float] = []
        with sync_playwright() as p, httpx.Client(base_url=base, headers=auth, timeout=30) as c:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            ctx = b.new_context(viewport={"width": 1280, "height": 800})
            page = ctx.new_page()
            page.goto(base + "/console")
            page.fill("#token", token)
            page.click("form.signin button[type=submit]")
            page.wait_for_selector("#map .chip")
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                c.get("/v1/topology").raise_for_status()
                api.append((time.perf_counter() - t0) * 1000)
                page.goto("about:blank")
                page.goto(base + "/console#/topology")
                page.wait_for_selector("#map .chip")
                paint.append(marks(page)[0]["start"])
            holders = ("i2", "i0")
            for n in range(args.rounds):
                resp = c.post("/v1/vips/v1/move", json={"instance": holders[n % 2]})
                resp.raise_for_status()
                written = time.time() * 1000
                rev = resp.json()["revision"]
                done = c.get("/v1/converged", params={"revision": rev, "timeout": 10}).json()
                applied = time.time() * 1000
                assert done["converged"], done
                deadline = time.monotonic() + 5
                drawn = None
                while drawn is None and time.monotonic() < deadline:
                    drawn = next((m for m in marks(page) if m["revision"] >= rev), None)
                    if drawn is None:
                        time.sleep(0.005)
                assert drawn is not None, f"the page never drew revision {rev}"
                update.append(drawn["at"] - written)
                after_applied.append(drawn["at"] - applied)
                time.sleep(0.3)
            b.close()
        p50 = statistics.median
        print(f"first paint of the topology: p50 {p50(paint):.0f} ms, p99 {pct(paint, .99):.0f} ms "
              f"(GET /v1/topology alone: p50 {p50(api):.1f} ms)")  # fmt: skip
        print(f"VIP move on the open page: p50 {p50(update):.0f} ms after the write, "
              f"p99 {pct(update, .99):.0f} ms; {p50(after_applied):.0f} ms after every host "
              "applied it (p50)")  # fmt: skip
        print(
            f"RESULT paint_p50_ms={p50(paint):.0f} paint_p99_ms={pct(paint, 0.99):.0f} "
            f"api_p50_ms={p50(api):.1f} paint_vs_api={p50(paint) / p50(api):.1f} "
            f"update_p50_ms={p50(update):.0f} update_p99_ms={pct(update, 0.99):.0f} "
            f"update_after_applied_p50_ms={p50(after_applied):.0f}"
        )
    finally:
        r.run("down", check=False, timeout=300)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
