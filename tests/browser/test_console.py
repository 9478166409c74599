"""The web console in a real browser (Debian's chromium, driven by Playwright) against a real
lab region of 2 zones x 2 hosts: what a user does with it, as issue 18 lists it.

Screenshots of every page a test visits go to $YUNHAN_ARTIFACTS/console (default
artifacts/console in the checkout), which CI keeps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.region import Region, netns_names
from tests.polling import wait_for

pytestmark = pytest.mark.root

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("YUNHAN_ARTIFACTS", Path(__file__).parents[2] / "artifacts"))
SHOTS = ARTIFACTS / "console"
HOLDER = re.compile(r"\bvip-holder\b")


class Lab:
    """The region, its endpoint, and two tenants (alpha builds; beta must see nothing of it)."""

    def __init__(self, region: Region) -> None:
        self.region = region
        cfg = json.loads((region.home / ".config" / "yunhan" / "config.json").read_text())
        self.base = str(cfg["endpoint"]).rstrip("/")
        self.admin_token = str(cfg["token"])
        self.tokens: dict[str, str] = {}
        for name in ("alpha", "beta"):
            self.tokens[name] = region.json("project", "create", name)["token"]

    def cli(self, project: str, *args: str) -> Any:
        """The CLI as the project's user (its token in YUNHAN_TOKEN)."""
        env = dict(self.region.env, YUNHAN_TOKEN=self.tokens[project], YUNHAN_ENDPOINT=self.base)
        saved, self.region.env = self.region.env, env
        try:
            return self.region.run(*args)
        finally:
            self.region.env = saved

    def api(self, project: str, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[project]}"}
        return httpx.request(method, self.base + path, json=body, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: apt-get install -y chromium (scripts/install.sh)")
    home = Path(tempfile.mkdtemp(prefix="yunhan-console-"))
    r = Region(home)
    prefix = ""
    try:
        r.run("up", "--detach", "--zones", "2", "--hosts-per-zone", "2", timeout=300)
        prefix = json.loads((r.state / "region.json").read_text())["prefix"]
        yield Lab(r)
    finally:
        r.run("down", check=False, timeout=300)
        try:
            left = {n for n in netns_names() if prefix and n.startswith(f"{prefix}-")}
            assert not left, f"yunhan down left namespaces behind: {left}"
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _page(browser: Browser, lab: Lab, project: str | None, **kw: Any) -> Page:
    """A fresh browser context (its own cookies) signed in through the sign-in form."""
    ctx = browser.new_context(viewport=kw.pop("viewport", {"width": 1280, "height": 800}), **kw)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    page.goto(lab.base + "/console")
    token = lab.admin_token if project is None else lab.tokens[project]
    page.fill("#token", token)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("#map")
    return page


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _create(page: Page, lab: Lab, kind: str, fields: dict[str, str]) -> None:
    page.goto(f"{lab.base}/console#/k/{kind}/new")
    form = page.locator(f"form#create-{kind}")
    expect(form).to_be_visible()
    for name, value in fields.items():
        form.locator(f"[name={name}]").fill(value)
    form.locator("button[type=submit]").click()


def _action(page: Page, action: str, fields: dict[str, str]) -> None:
    """Open a detail page's action form, fill it, send it, and wait for its "done"."""
    page.locator(f'button[data-action="{action}"]').click()
    form = page.locator(f"form#action-{action}")
    for name, value in fields.items():
        form.locator(f"[name={name}]").fill(value)
    form.locator("button[type=submit]").click()
    expect(page.locator("#action-result [role=status]")).to_be_visible()


def _chip(page: Page, name: str) -> Any:
    return page.locator(f'#map button.chip[data-instance="{name}"]')


def test_sign_in_and_build_through_the_forms(lab: Lab, browser: Browser) -> None:
    page = _page(browser, lab, "alpha")
    _shot(page, "01-topology-empty")
    _create(page, lab, "vpcs", {"name": "web", "cidrs": "10.1.0.0/16"})
    expect(page.locator("h1")).to_have_text("VPC web")
    _shot(page, "02-vpc-detail")
    for name, cidr in (("front", "10.1.1.0/24"), ("back", "10.1.2.0/24"), ("dmz", "10.1.3.0/24")):
        _create(page, lab, "subnets", {"name": name, "vpc": "web", "cidr": cidr})
        expect(page.locator("h1")).to_have_text(f"Subnet {name}")
    page.goto(f"{lab.base}/console#/k/instances/new")
    _shot(page, "03-instance-form")
    for name, subnet, zone in (("a1", "front", "az1"), ("a2", "front", "az2"),
                               ("b1", "back", "az2"), ("fw", "dmz", "az1")):  # fmt: skip
        _create(page, lab, "instances", {"name": name, "subnet": subnet, "zone": zone})
        expect(page.locator("h1")).to_have_text(f"Instance {name}")
    page.goto(f"{lab.base}/console#/topology")
    for name, zone in (("a1", "az1"), ("a2", "az2"), ("b1", "az2"), ("fw", "az1")):
        chip = page.locator(f'[data-zone-col="{zone}"] button.chip[data-instance="{name}"]')
        expect(chip).to_have_count(1)
    # Each sits on a host of its zone, in the subnet band of its VPC.
    assert page.locator('[data-subnet="front"]').count() == 1
    expect(page.locator('[data-vpc="web"]')).to_contain_text("10.1.0.0/16")
    wait_for(
        lambda: all(i["status"]["phase"] == "running" for i in _items(lab, "alpha", "instances")),
        90,
        "instances running",
    )
    _shot(page, "04-topology-built")
    # The list page: filters, labels and the columns of the kind.
    page.goto(f"{lab.base}/console#/k/instances?subnet=front")
    expect(page.locator("#list tbody tr")).to_have_count(2)
    _shot(page, "05-instances-list")
    assert not page.errors  # type: ignore[attr-defined]


def _items(lab: Lab, project: str, kind: str) -> list[dict[str, Any]]:
    r = lab.api(project, "GET", f"/v1/{kind}?limit=500")
    r.raise_for_status()
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_a_form_error_shows_the_api_s_message_and_creates_nothing(
    lab: Lab, browser: Browser
) -> None:
    page = _page(browser, lab, "alpha")
    before = [s["name"] for s in _items(lab, "alpha", "subnets")]
    _create(page, lab, "subnets", {"name": "overlap", "vpc": "web", "cidr": "10.1.1.128/25"})
    alert = page.locator("form#create-subnets [role=alert]")
    expect(alert).to_be_visible()
    # The same request straight to the API: the console shows its message as it is.
    api = lab.api("alpha", "POST", "/v1/subnets", {"name": "overlap", "vpc": "web",
                                                  "cidr": "10.1.1.128/25"})  # fmt: skip
    assert api.status_code == 409, api.text
    assert alert.inner_text() == api.json()["error"]["message"]
    assert "overlaps" in alert.inner_text()
    _shot(page, "06-form-error")
    assert [s["name"] for s in _items(lab, "alpha", "subnets")] == before
    # A field the schema constrains is checked before anything is sent.
    _create(page, lab, "subnets", {"name": "Bad_Name", "vpc": "web", "cidr": "10.1.9.0/24"})
    expect(page.locator("form#create-subnets [role=alert]")).to_contain_text("name")
    assert [s["name"] for s in _items(lab, "alpha", "subnets")] == before


def test_a_vip_move_is_seen_live_without_a_reload(lab: Lab, browser: Browser) -> None:
    lab.cli("alpha", "vip", "create", "v1", "--subnet", "front", "--ip", "10.1.1.100",
            "--allow", "a1", "--allow", "a2")  # fmt: skip
    lab.cli("alpha", "vip", "move", "v1", "a1", "--wait")
    page = _page(browser, lab, "alpha")
    expect(_chip(page, "a1")).to_have_class(HOLDER)
    page.evaluate("window.__loaded = performance.timeOrigin")
    lab.cli("alpha", "vip", "move", "v1", "a2", "--wait")
    t0 = time.monotonic()
    # Applied (the CLI waited for convergence): the open page shows it within a second.
    expect(_chip(page, "a2")).to_have_class(HOLDER, timeout=1000)
    seen = time.monotonic() - t0
    expect(_chip(page, "a1")).not_to_have_class(HOLDER)
    expect(page.locator('[data-vip="v1"]')).to_have_attribute("data-holder", "a2")
    assert page.evaluate("window.__loaded") is not None, "the page was reloaded"
    print(f"VIP holder change on the page {seen * 1000:.0f} ms after `vip move --wait` returned")
    _shot(page, "07-topology-vip-moved")


def test_a_trace_is_drawn_hop_by_hop_through_an_appliance(lab: Lab, browser: Browser) -> None:
    page = _page(browser, lab, "alpha")
    _create(page, lab, "route-tables", {"name": "edge", "vpc": "web"})
    expect(page.locator("h1")).to_have_text("Route table edge")
    _action(page, "routes", {"dst": "10.1.2.0/24", "next_hop": "instance:fw", "priority": "10"})
    _action(page, "associations", {"subnet": "front"})
    expect(page.locator("#routes")).to_contain_text("instance:fw")
    _shot(page, "08-route-table")
    page.goto(f"{lab.base}/console#/topology")
    _chip(page, "a1").click()
    _chip(page, "b1").click()
    page.click("#trace-go")
    hops = page.locator("#trace-hops li")
    expect(hops.first).to_be_visible()
    expect(page.locator("#trace-verdict")).to_contain_text("delivered")
    appliance = page.locator('#trace-hops li[data-place="instance"][data-ref="fw"]')
    expect(appliance).to_have_count(1)
    # The deciding rule is on the hop before it: the source's VPC router took the custom route.
    expect(page.locator("#trace-hops li").nth(1)).to_contain_text(
        "custom route 10.1.2.0/24 → instance:fw (table edge, priority 10)"
    )
    expect(_chip(page, "fw")).to_have_class(re.compile(r"\bappliance\b.*\bon-trace\b"))
    assert page.locator("svg.trace circle").count() >= 3
    _shot(page, "09-trace-appliance")
    # Without the route, the same trace goes straight: no appliance hop.
    rt = lab.api("alpha", "GET", "/v1/route-tables/edge/routes").json()
    custom = next(r for r in rt["routes"] if r["type"] == "custom")
    assert lab.api("alpha", "DELETE", f"/v1/routes/{custom['id']}").status_code == 200
    page.click("#trace-go")
    expect(page.locator('#trace-hops li[data-place="instance"][data-ref="fw"]')).to_have_count(0)
    expect(page.locator("#trace-verdict")).to_contain_text("delivered")


def test_sessions_are_per_project_and_writes_need_the_csrf_token(
    lab: Lab, browser: Browser
) -> None:
    page = _page(browser, lab, "beta")
    expect(page.locator("#map button.chip")).to_have_count(0)
    page.goto(f"{lab.base}/console#/k/vpcs")
    expect(page.locator("#main")).to_contain_text("None.")
    page.goto(f"{lab.base}/console#/k/vpcs/web")
    expect(page.locator("#main [role=alert]")).to_contain_text("no vpc 'web' in this project")
    _shot(page, "10-other-project")
    # The cookie alone authenticates reads; a write without the CSRF token is refused.
    req = page.context.request
    assert req.get(f"{lab.base}/v1/vpcs").ok
    refused = req.post(f"{lab.base}/v1/vpcs", data={"name": "sneaky", "cidrs": ["10.9.0.0/16"]})
    assert refused.status == 403, refused.text()
    assert "CSRF" in refused.json()["error"]["message"]
    wrong = req.post(f"{lab.base}/v1/vpcs", data={"name": "sneaky", "cidrs": ["10.9.0.0/16"]},
                     headers={"X-CSRF-Token": "0" * 64})  # fmt: skip
    assert wrong.status == 403
    assert _items(lab, "beta", "vpcs") == []
    csrf = req.get(f"{lab.base}/console/session").json()["csrf_token"]
    made = req.post(f"{lab.base}/v1/vpcs", data={"name": "mine", "cidrs": ["10.9.0.0/16"]},
                    headers={"X-CSRF-Token": csrf})  # fmt: skip
    assert made.status == 201, made.text()
    # The session cookie is out of the page's reach.
    cookie = next(c for c in page.context.cookies() if c["name"] == "yunhan_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "yunhan_session" not in page.evaluate("document.cookie")
    # Signing out ends the session.
    page.goto(f"{lab.base}/console#/topology")
    page.click("text=Sign out")
    expect(page.locator("form.signin")).to_be_visible()
    assert req.get(f"{lab.base}/v1/vpcs").status == 401
    # The admin sees every project's.
    admin = _page(browser, lab, None)
    expect(admin.locator('#map button.chip[data-instance="a1"]')).to_have_count(1)
    expect(admin.locator('[data-vpc="mine"]')).to_have_count(1)
    admin.select_option("#act-as", "alpha")
    admin.goto(f"{lab.base}/console#/k/vpcs")
    expect(admin.locator('#list tbody tr[data-name="web"]')).to_have_count(1)
    _shot(admin, "11-admin-as-alpha")
    # A project made in the console: its first token is shown once, and it signs in.
    admin.select_option("#act-as", "")
    _create(admin, lab, "projects", {"name": "delta"})
    expect(admin.locator("h1")).to_have_text("Project delta")
    secret = admin.locator("#secret code").first
    expect(secret).to_contain_text("yh_")
    lab.tokens["delta"] = secret.inner_text()
    delta = _page(browser, lab, "delta")
    expect(delta.locator("#who")).to_contain_text("project delta")


def test_security_group_rules_and_a_volume_s_timeline_through_the_forms(
    lab: Lab, browser: Browser
) -> None:
    page = _page(browser, lab, "alpha")
    _create(page, lab, "security-groups", {"name": "ssh", "vpc": "web"})
    expect(page.locator("h1")).to_have_text("Security group ssh")
    page.locator('button[data-action="rules"]').click()
    form = page.locator("form#action-rules")
    form.locator("[name=direction]").select_option("ingress")
    form.locator("[name=proto]").select_option("tcp")
    form.locator("[name=port]").fill("22")
    form.locator("[name=peer]").fill("10.0.0.0/8")
    form.locator("button[type=submit]").click()
    expect(page.locator("#rules tbody tr")).to_have_count(1)
    expect(page.locator("#rules")).to_contain_text("10.0.0.0/8")
    (group,) = [g for g in _items(lab, "alpha", "security-groups") if g["name"] == "ssh"]
    (rule,) = group["spec"]["rules"]
    assert rule["direction"] == "ingress" and "10.0.0.0/8" in json.dumps(rule["peer"])
    _shot(page, "13-security-group")
    page.locator("#rules button.danger").click()
    expect(page.locator("#main")).to_contain_text("Rules")
    expect(page.locator("#rules")).to_have_count(0)
    (group,) = [g for g in _items(lab, "alpha", "security-groups") if g["name"] == "ssh"]
    assert group["spec"]["rules"] == []
    # Deleted from its page (the browser asks first).
    page.once("dialog", lambda d: d.accept())
    page.locator("#main .actions button.danger", has_text="Delete").click()
    expect(page.locator("h1")).to_have_text("Security groups")
    assert "ssh" not in {g["name"] for g in _items(lab, "alpha", "security-groups")}
    # A protected volume: its page shows the timeline of restore points.
    _create(page, lab, "volumes", {"name": "data", "size": str(1 << 30), "zone": "az1",
                                   "tiers": "12h:1s"})  # fmt: skip
    expect(page.locator("h1")).to_have_text("Volume data")
    expect(page.locator("#main")).to_contain_text("Timeline and restore points")
    expect(page.locator("#main")).to_contain_text("every 1 s for 43200 s")
    # Attached through its action form, written in the instance: restore points appear.
    _action(page, "attach", {"instance": "a1", "path": "/data"})
    wait_for(
        lambda: lab.api("alpha", "GET", "/v1/volumes/data").json()["status"]["mounted"], 60,
        "the volume mounted",
    )  # fmt: skip
    lab.cli("alpha", "instance", "exec", "a1", "--", "sh", "-c", "echo hello > /data/x && sync")
    wait_for(
        lambda: lab.api("alpha", "GET", "/v1/volumes/data/timeline").json()["points"], 60,
        "restore points",
    )  # fmt: skip
    page.reload()
    expect(page.locator("#timeline li").first).to_contain_text("every 1 s")
    _shot(page, "14-volume-timeline")
    assert not page.errors  # type: ignore[attr-defined]


HELLO = """
def handler(event, context):
    return {"hello": (event or {}).get("name", "world")}
"""


def test_a_function_s_page_shows_its_invocations_cold_starts_and_gb_seconds(
    lab: Lab, browser: Browser, tmp_path: Path
) -> None:
    src = tmp_path / "hello.py"
    src.write_text(HELLO)
    lab.cli("alpha", "function", "deploy", "hello", "--source", str(src),
            "--handler", "hello.handler")  # fmt: skip
    for _ in range(3):
        lab.cli("alpha", "function", "invoke", "hello", "--data", '{"name": "x"}')

    def metered() -> dict[str, Any] | None:
        usage = lab.api("alpha", "GET", "/v1/usage?by=function").json()
        row = next((u for u in usage["items"] if u["name"] == "hello"), None)
        return row if row is not None and row["requests"] == 3 else None

    row = wait_for(metered, 30, "the 3 invocations metered")
    page = _page(browser, lab, "alpha")
    page.goto(f"{lab.base}/console#/k/functions/hello")
    metrics = page.locator("#fn-metrics")
    expect(metrics).to_contain_text("invocations3")
    expect(metrics).to_contain_text(f"cold starts{row['cold_starts']}")
    assert row["cold_starts"] >= 1
    expect(metrics).to_contain_text(f"GB-s{row['gb_seconds']:.3f}")
    _shot(page, "15-function-metrics")


def test_lists_page_filter_by_label_and_edit_labels(lab: Lab, browser: Browser) -> None:
    lab.tokens["gamma"] = lab.region.json("project", "create", "gamma")["token"]
    for i in range(23):
        body = {"name": f"v{i:02d}", "cidrs": [f"10.{i}.0.0/16"],
                "labels": {"tier": "a" if i % 5 == 0 else "b"}}  # fmt: skip
        assert lab.api("gamma", "POST", "/v1/vpcs", body).status_code == 201
    page = _page(browser, lab, "gamma")
    page.goto(f"{lab.base}/console#/k/vpcs")
    rows = page.locator("#list tbody tr")
    expect(rows).to_have_count(20)
    page.click("text=Next page")
    expect(rows).to_have_count(3)
    expect(page.locator('#list tbody tr[data-name="v22"]')).to_have_count(1)
    page.click("text=Previous page")
    expect(rows).to_have_count(20)
    page.fill("form[role=search] [name=label]", "tier=a")
    page.click("form[role=search] button[type=submit]")
    expect(rows).to_have_count(5)
    _shot(page, "16-list-filtered")
    page.goto(f"{lab.base}/console#/k/vpcs/v05/edit")
    labels = page.locator("form#edit-vpcs [name=labels]")
    expect(labels).to_have_value("tier=a")
    labels.fill("env=prod")
    page.click("form#edit-vpcs button[type=submit]")
    expect(page.locator("h1")).to_have_text("VPC v05")
    expect(page.locator("#main")).to_contain_text("env=prod")
    got = lab.api("gamma", "GET", "/v1/vpcs/v05").json()
    assert got["labels"] == {"env": "prod"}  # tier removed, env added: one merge patch


def test_the_map_shows_nat_and_hybrid_gateways_eips_and_an_idc_site(
    lab: Lab, browser: Browser
) -> None:
    lab.region.run("lab", "idc", "add", "dc1", "--cidr", "192.168.100.0/24", "--servers", "1",
                   "--asn", "65001", timeout=120)  # fmt: skip
    page = _page(browser, lab, "alpha")
    page.goto(f"{lab.base}/console#/k/vpcs/web")
    _action(page, "cidrs", {"cidr": "192.168.100.0/24"})
    _create(page, lab, "subnets", {"name": "dca", "vpc": "web", "cidr": "192.168.100.0/24",
                                   "location": "idc:dc1"})  # fmt: skip
    expect(page.locator("h1")).to_have_text("Subnet dca")
    _create(page, lab, "natgws", {"name": "nat", "vpc": "web", "subnets": "back"})
    expect(page.locator("h1")).to_have_text("NAT gateway nat")
    _create(page, lab, "eips", {"name": "e1"})
    expect(page.locator("h1")).to_have_text("EIP e1")
    _action(page, "bind", {"instance": "b1"})
    address = lab.api("alpha", "GET", "/v1/eips/e1").json()["status"]["address"]
    lab.cli("alpha", "hybrid-gw", "create", "hgw", "--vpc", "web", "--idc-peer", "198.19.33.1",
            "--peer-asn", "65001", "--replicas", "2", "--wait", "--timeout", "90")  # fmt: skip
    page.goto(f"{lab.base}/console#/topology")
    expect(page.locator(".zone-head.idc")).to_have_text("IDC dc1")
    expect(page.locator('[data-site="dc1"]')).to_contain_text("192.168.100.0/24")
    expect(page.locator('[data-subnet="dca"]')).to_contain_text("IDC dc1")
    expect(page.locator('#map [data-natgw="nat"]')).to_have_count(1)
    expect(page.locator('#map [data-hybrid-gw="hgw"]')).to_have_count(2)
    replica_hosts = page.locator('#map section.host:has([data-hybrid-gw="hgw"])')
    expect(replica_hosts).to_have_count(2)
    expect(_chip(page, "b1")).to_contain_text(f"EIP {address}")
    _shot(page, "17-topology-gateways")


def test_a_fleet_patch_s_rollout_shows_host_by_host(
    lab: Lab, browser: Browser, tmp_path: Path
) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
    import fleetsvc

    svc, lib = fleetsvc.build(tmp_path)
    r = lab.region
    r.run("vpc", "create", "ops", "--cidr", "10.50.0.0/16")
    r.run("subnet", "create", "svc", "--vpc", "ops", "--cidr", "10.50.1.0/24")
    r.run("instance", "create", "s1", "--subnet", "svc", "--zone", "az1",
          "--command", f"{svc} 7100", "--wait")  # fmt: skip
    host = r.json("instance", "show", "s1")["host"]
    src = tmp_path / "fix.c"
    src.write_text(fleetsvc.PATCH_V1)
    yhp = tmp_path / "fix.yhp"
    r.run("hotpatch", "build", str(src), "--target", str(lib), "-o", str(yhp))
    r.run("patch", "create", "fix", "--file", str(yhp), "--canary", "1", "--health-window", "1",
          "--wait", timeout=240)  # fmt: skip
    status = r.json("patch", "show", "fix")["status"]
    page = _page(browser, lab, None)
    page.goto(f"{lab.base}/console#/k/patches/fix")
    rows = page.locator("#rollout tbody tr")
    expect(rows).to_have_count(len(status["hosts"]))
    row = page.locator(f'#rollout tbody tr[data-host="{host}"]')
    expect(row.locator('td[data-label="state"]')).to_have_text("applied")
    expect(row.locator('td[data-label="applied"]')).to_have_text("1")
    done = sum(h["state"] in ("applied", "rolled_back") for h in status["hosts"].values())
    pct = round(100 * done / len(status["hosts"]))
    expect(page.locator('[role=progressbar][aria-label="Hosts done"]')).to_have_attribute(
        "aria-valuenow", str(pct)
    )
    _shot(page, "18-fleet-patch")


PAGES = ("topology", "k/instances", "k/subnets/new", "k/route-tables/edge", "k/vpcs/web")


@pytest.mark.parametrize("viewport", [(1280, 800), (390, 844)], ids=["desktop", "phone"])
def test_accessible_and_usable_at_desktop_and_phone_sizes(
    lab: Lab, browser: Browser, viewport: tuple[int, int]
) -> None:
    w, height = viewport
    page = _page(browser, lab, "alpha", viewport={"width": w, "height": height})
    axe = Axe()
    for i, where in enumerate(PAGES):
        page.goto(f"{lab.base}/console#/{where}")
        page.wait_for_selector('#main[aria-busy="false"] h1')
        result = axe.run(page)
        serious = [
            v for v in result.response["violations"] if v.get("impact") in ("serious", "critical")
        ]
        assert not serious, f"{where}: {result.generate_report()}"
        # No page scrolls sideways as a whole; the map scrolls inside its own frame.
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{where} is {overflow}px wider than a {w}px viewport"
        _shot(page, f"12-{w}-{i}-{where.replace('/', '-')}")
    # Keyboard: the first Tab reaches the skip link, and an instance is a button one can
    # pick with the keyboard.
    page.goto(f"{lab.base}/console#/topology")
    page.reload()
    page.wait_for_selector('#main[aria-busy="false"] #map')
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    _chip(page, "a1").focus()
    page.keyboard.press("Enter")
    expect(_chip(page, "a1")).to_have_attribute("aria-pressed", "true")
