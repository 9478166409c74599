"""Fleet hot patches through the API (docs/fleetpatch.md), on SQLite and PostgreSQL: a real
.yhp uploaded and served, targets and canaries chosen, the rollout driven by the
controller from agents' reports (canary, health window, max parallel, rollback
everywhere), restart safety, and every bad input of issue 13 refused with nothing
changed."""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any

import pytest

from yunhan.controller import Controller

if TYPE_CHECKING:
    from cp_fixtures import Cloud
    from patch_fixtures import Yhps

pytest_plugins = ["cp_fixtures", "patch_fixtures"]


@pytest.fixture
def fleet(cloud: Cloud, net: dict[str, Any]) -> Cloud:
    """Four hosts: h1, h3 in az1; h2, h4 in az2 (h3 labelled tier=edge)."""
    cloud.host("h3", "az1", "198.18.1.12")
    cloud.host("h4", "az2", "198.18.2.12")
    cloud.call("PATCH", "/v1/hosts/h3", json={"labels": {"tier": "edge"}})
    return cloud


def _report(
    cloud: Cloud, host: str, patch: str, state: str, procs: tuple[tuple[int, str], ...] = ()
) -> None:
    processes = [
        {"pid": pid, "start": 5000 + pid, "comm": "svc", "instance": None, "result": res,
         "reason": "not here" if res == "refused" else None, "at": cloud.clock.now}
        for pid, res in procs
    ]  # fmt: skip
    body = {"reports": [{"patch": patch, "state": state, "processes": processes}]}
    assert cloud.call("POST", f"/v1/agent/hosts/{host}/patch-reports", json=body) is None


def _wants(cloud: Cloud, host: str) -> dict[str, str]:
    got = cloud.call("GET", f"/v1/agent/hosts/{host}/patches")["patches"]
    return {p["name"]: p["want"] for p in got}


def _status(cloud: Cloud, name: str) -> dict[str, Any]:
    return dict(cloud.call("GET", f"/v1/patches/{name}")["status"])


def _want(cloud: Cloud, name: str) -> dict[str, str | None]:
    return {h: v["want"] for h, v in _status(cloud, name)["hosts"].items()}


def _apply(cloud: Cloud, pid: str, hosts: tuple[str, ...], n: int = 2) -> None:
    for h in hosts:
        _report(cloud, h, pid, "applying")
        procs = tuple((100 * (i + 1) + len(h), "applied") for i in range(n))
        _report(cloud, h, pid, "applied", procs)


def test_create_show_list_file_and_admin_only(cloud: Cloud, fleet: Cloud, yhp: Yhps) -> None:
    p = cloud.call("POST", "/v1/patches", json=yhp.price.body("fix-price"))
    assert p["id"].startswith("hp-") and p["kind"] == "patch" and p["labels"] == {}
    assert p["spec"] == {
        "digest": yhp.price.digest,
        "size": len(yhp.price.content),
        "patch_id": "fix-price",
        "build_id": yhp.price.build_id,
        "target": "a",
        "functions": ["price"],
        "zone": None,
        "hosts": [],
        "labels": {},
        "canary": 1,
        "max_parallel": 1,
        "health_window": 30,
        "auto_rollback": True,
    }
    st = p["status"]
    # canaries spread over zones: round robin az1, az2, then names
    assert st["targets"] == ["h1", "h2", "h3", "h4"] and st["canary_hosts"] == ["h1"]
    assert st["phase"] == "canary" and st["finished_at"] is None
    assert st["hosts"]["h1"] == {
        "want": "apply", "state": "waiting", "applied": 0, "refused": 0, "died": 0, "busy": 0,
        "rolled_back": 0, "applied_at": None, "reported_at": None, "message": None,
    }  # fmt: skip
    assert {h: v["want"] for h, v in st["hosts"].items()} == {
        "h1": "apply", "h2": None, "h3": None, "h4": None,
    }  # fmt: skip
    assert st["counts"] == dict.fromkeys(("applied", "refused", "died", "busy", "rolled_back"), 0)
    shown = cloud.call("GET", "/v1/patches/fix-price")
    assert shown["processes"] == [] and shown["id"] == p["id"]
    assert [i["name"] for i in cloud.call("GET", "/v1/patches")["items"]] == ["fix-price"]
    r = cloud.client.get("/v1/patches/fix-price/file", headers=cloud.admin)
    assert r.status_code == 200 and r.content == yhp.price.content
    assert r.headers["content-type"] == "application/octet-stream"
    # selection: zone, hosts, labels; two canaries spread over the zones
    z = cloud.call("POST", "/v1/patches", json=yhp.tax.body("fix-tax", zone="az2", canary=0))
    assert z["status"]["targets"] == ["h2", "h4"] and z["status"]["phase"] == "rolling"
    assert z["status"]["canary_hosts"] == [] and z["spec"]["zone"].startswith("zone-")
    cloud.call("DELETE", "/v1/patches/fix-tax")
    lab = cloud.call(
        "POST", "/v1/patches", json=yhp.tax.body("t2", labels={"tier": "edge"}, canary=0)
    )
    assert lab["status"]["targets"] == ["h3"] and lab["spec"]["labels"] == {"tier": "edge"}
    cloud.call("DELETE", "/v1/patches/t2")
    two = cloud.call("POST", "/v1/patches", json=yhp.tax.body("t3", hosts=["h1", "h3", "h4"],
                                                               canary=2))  # fmt: skip
    assert two["status"]["targets"] == ["h1", "h4", "h3"]
    assert two["status"]["canary_hosts"] == ["h1", "h4"] and two["spec"]["hosts"] == [
        "h1",
        "h3",
        "h4",
    ]
    # a tenant (and a host token) is refused everything, and changes nothing
    t = fleet_tenant(cloud)
    cloud.rejected("POST", "/v1/patches", 403, "admin token", t, json=yhp.tax.body("t4"))
    for path in ("/v1/patches", "/v1/patches/fix-price", "/v1/patches/fix-price/file",
                 "/v1/patches/fix-price/processes"):  # fmt: skip
        cloud.rejected("GET", path, 403, "admin token", t)
    cloud.rejected("POST", "/v1/patches/fix-price/rollback", 403, "admin token", t)
    cloud.rejected("DELETE", "/v1/patches/fix-price", 403, "admin token", t)
    cloud.rejected("GET", f"/v1/agent/patches/{yhp.price.digest}", 403, "agents", t)


def fleet_tenant(cloud: Cloud) -> dict[str, str]:
    return cloud.project("patcher")


def test_rollout_canary_window_max_parallel_done(cloud: Cloud, fleet: Cloud, yhp: Yhps) -> None:
    body = yhp.price.body("fix", max_parallel=2, health_window=10)
    pid = cloud.call("POST", "/v1/patches", json=body)["id"]
    assert _wants(cloud, "h1") == {"fix": "apply"} and _wants(cloud, "h2") == {}
    got = cloud.call("GET", "/v1/agent/hosts/h1/patches")["patches"][0]
    assert got == {"id": pid, "name": "fix", "digest": yhp.price.digest,
                   "patch_id": "fix-price", "build_id": yhp.price.build_id, "want": "apply",
                   "health_window": 10}  # fmt: skip
    _apply(cloud, pid, ("h1",))
    st = _status(cloud, "fix")
    assert st["hosts"]["h1"]["state"] == "applied" and st["hosts"]["h1"]["applied"] == 2
    assert st["counts"]["applied"] == 2 and st["hosts"]["h1"]["applied_at"] is not None
    cloud.reconcile()
    assert _status(cloud, "fix")["phase"] == "canary"  # the health window has not ended
    assert cloud.controller._idle()
    cloud.clock.advance(9.9)
    assert cloud.controller._idle()
    cloud.clock.advance(0.1)
    assert not cloud.controller._idle()  # the window just ended: a pass is due
    cloud.reconcile()
    assert _status(cloud, "fix")["phase"] == "rolling"
    assert _want(cloud, "fix") == {"h1": "apply", "h2": "apply", "h3": "apply", "h4": None}
    assert cloud.controller._idle()
    _apply(cloud, pid, ("h2",))
    cloud.clock.advance(5)
    _apply(cloud, pid, ("h3",))
    cloud.clock.advance(5)
    cloud.reconcile()  # h2 healthy now, h3 still in its window: one slot for h4
    assert _want(cloud, "fix")["h4"] == "apply"
    _apply(cloud, pid, ("h4",), n=0)  # matched nothing there: applied, zero processes
    cloud.clock.advance(10)
    cloud.reconcile()
    st = _status(cloud, "fix")
    assert st["phase"] == "done" and st["finished_at"] is not None
    assert st["counts"] == {"applied": 6, "refused": 0, "died": 0, "busy": 0, "rolled_back": 0}
    assert cloud.controller._idle()
    events = cloud.call("GET", "/v1/events", params={"for": "fix"})["items"]
    text = [e["message"] for e in events]
    assert "patch fix applied to 2 process(es) on host h1" in text
    assert "patch fix: canary passed on h1: rolling" in text
    assert "patch fix: applied on 4 host(s)" in text
    # a process found later is reported as it comes; the patch stays done
    _report(cloud, "h4", pid, "applied", ((77, "applied"),))
    assert _status(cloud, "fix")["counts"]["applied"] == 7
    shown = cloud.call("GET", "/v1/patches/fix")["processes"]
    assert len(shown) == 7 and shown[0]["pid"] == 77 and shown[0]["host"] == "h4"
    only = cloud.call("GET", "/v1/patches/fix/processes", params={"host": "h1"})
    assert {x["host"] for x in only["items"]} == {"h1"} and not only["more"]
    # done and applied: delete refused; rollback, every host reports, rolled_back
    cloud.rejected("DELETE", "/v1/patches/fix", 409, "roll it back first")
    rb = cloud.call("POST", "/v1/patches/fix/rollback")
    assert rb["status"]["phase"] == "rolling_back"
    assert set(_want(cloud, "fix").values()) == {"rollback"}
    for h in ("h1", "h2", "h3", "h4"):
        _report(cloud, h, pid, "rolled_back", ((100 + len(h), "rolled_back"),))
    cloud.reconcile()
    st = _status(cloud, "fix")
    assert st["phase"] == "rolled_back" and st["counts"]["rolled_back"] == 4
    cloud.rejected("POST", "/v1/patches/fix/rollback", 409, "not applied")
    gone = cloud.call("DELETE", "/v1/patches/fix")
    assert gone["name"] == "fix"
    cloud.rejected("GET", "/v1/patches/fix", 404, "no patch 'fix'")
    r = cloud.client.get(f"/v1/agent/patches/{yhp.price.digest}", headers=cloud.admin)
    assert r.status_code == 404  # its file went with the last patch naming it


def test_a_canary_death_rolls_back_the_canary_only(cloud: Cloud, fleet: Cloud, yhp: Yhps) -> None:
    pid = cloud.call("POST", "/v1/patches", json=yhp.price.body("fix", health_window=30))["id"]
    _apply(cloud, pid, ("h1",))
    cloud.clock.advance(3)
    _report(cloud, "h1", pid, "applied", ((101, "died"),))
    assert not cloud.controller._idle()
    cloud.reconcile()
    st = _status(cloud, "fix")
    assert st["phase"] == "rolling_back"
    assert "1 patched process(es) died on host h1" in st["message"]
    assert _want(cloud, "fix") == {"h1": "rollback", "h2": None, "h3": None, "h4": None}
    assert _wants(cloud, "h2") == {}  # no other host is touched
    _report(cloud, "h1", pid, "rolled_back", ((102, "rolled_back"),))
    cloud.reconcile()
    assert _status(cloud, "fix")["phase"] == "rolled_back"
    events = cloud.call("GET", "/v1/events", params={"for": "fix"})["items"]
    assert any("process 101 (svc) on host h1 died" in e["message"] for e in events)
    assert any(e["reason"] == "PatchRollingBack" and "rolling back" in e["message"] for e in events)


def test_a_death_while_rolling_rolls_back_everywhere_it_went(
    cloud: Cloud, fleet: Cloud, yhp: Yhps
) -> None:
    body = yhp.price.body("fix", health_window=5, max_parallel=2)
    pid = cloud.call("POST", "/v1/patches", json=body)["id"]
    _apply(cloud, pid, ("h1",))
    cloud.clock.advance(5)
    cloud.reconcile()
    _apply(cloud, pid, ("h2",))
    _report(cloud, "h3", pid, "failed")  # could not fetch the file
    cloud.reconcile()
    st = _status(cloud, "fix")
    assert st["phase"] == "rolling_back" and "host h3 failed: it could not fetch" in st["message"]
    assert _want(cloud, "fix") == {"h1": "rollback", "h2": "rollback", "h3": "rollback",
                                   "h4": None}  # fmt: skip
    for h in ("h1", "h2"):
        _report(cloud, h, pid, "rolled_back")
    cloud.reconcile()
    assert _status(cloud, "fix")["phase"] == "rolling_back"  # h3 has not said yet
    _report(cloud, "h3", pid, "rolled_back")
    cloud.reconcile()
    assert _status(cloud, "fix")["phase"] == "rolled_back"


def test_without_auto_rollback_a_death_pauses_and_resume_goes_on(
    cloud: Cloud, fleet: Cloud, yhp: Yhps
) -> None:
    body = yhp.price.body("fix", health_window=0, auto_rollback=False, canary=0)
    pid = cloud.call("POST", "/v1/patches", json=body)["id"]
    cloud.reconcile()
    assert _want(cloud, "fix")["h1"] == "apply"
    _apply(cloud, pid, ("h1",))
    _report(cloud, "h1", pid, "applied", ((9, "died"),))
    cloud.reconcile()
    st = _status(cloud, "fix")
    assert st["phase"] == "paused" and "died on host h1" in st["message"]
    cloud.reconcile()
    assert _want(cloud, "fix")["h2"] is None  # paused: nobody new
    assert cloud.call("POST", "/v1/patches/fix/resume")["status"]["phase"] == "rolling"
    cloud.reconcile()
    assert _status(cloud, "fix")["phase"] == "rolling"  # the death was accepted
    assert _want(cloud, "fix")["h2"] == "apply"
    # operator pause and resume
    assert cloud.call("POST", "/v1/patches/fix/pause")["status"]["phase"] == "paused"
    _apply(cloud, pid, ("h2",))
    cloud.reconcile()
    assert _want(cloud, "fix")["h3"] is None
    cloud.call("POST", "/v1/patches/fix/resume")
    cloud.reconcile()
    assert _want(cloud, "fix")["h3"] == "apply"
    assert cloud.call("POST", "/v1/patches/fix/resume")["status"]["phase"] == "rolling"


def test_a_restarted_controller_continues(cloud: Cloud, fleet: Cloud, yhp: Yhps) -> None:
    pid = cloud.call("POST", "/v1/patches", json=yhp.price.body("fix", health_window=10))["id"]
    _apply(cloud, pid, ("h1",))
    cloud.clock.advance(4)
    cloud.reconcile()
    # the controller dies; another (no memory of the first) takes over on the same store
    fresh = Controller(cloud.store, clock=cloud.clock)
    cloud.clock.advance(6)
    assert not fresh._idle()
    fresh.reconcile_once()
    assert _status(cloud, "fix")["phase"] == "rolling"
    assert _want(cloud, "fix")["h2"] == "apply"


def test_bad_inputs_are_refused_and_change_nothing(cloud: Cloud, fleet: Cloud, yhp: Yhps) -> None:
    good = yhp.price.body("fix")
    bad = {**good, "digest": "0" * 64}
    err = cloud.rejected("POST", "/v1/patches", 422, "digest does not match", json=bad)
    assert err["details"]["actual"] == yhp.price.digest
    for data in (yhp.target.read_bytes(), b"hello"):  # an ELF without a manifest; not an ELF
        not_yhp = {**good, "content": base64.b64encode(data).decode(),
                   "digest": hashlib.sha256(data).hexdigest()}  # fmt: skip
        cloud.rejected("POST", "/v1/patches", 422, "not a .yhp patch", json=not_yhp)
    cloud.rejected("POST", "/v1/patches", 422, "not base64", json={**good, "content": "!!"})
    cloud.rejected("POST", "/v1/patches", 404, "no zone 'az9'", json={**good, "zone": "az9"})
    cloud.rejected("POST", "/v1/patches", 404, "no host 'h9'", json={**good, "hosts": ["h9"]})
    cloud.rejected("POST", "/v1/patches", 400, "health_window",
                   json={**good, "health_window": 3601})  # fmt: skip
    cloud.rejected("POST", "/v1/patches", 400, "max_parallel", json={**good, "max_parallel": 0})
    cloud.call("POST", "/v1/patches", json=good)
    cloud.rejected("POST", "/v1/patches", 409, "a patch named fix already exists", json=good)
    # the same function of the same build while `fix` rolls out: refused, naming it
    err = cloud.rejected("POST", "/v1/patches", 409, "patch fix (canary) also replaces price",
                         json=yhp.price2.body("fix2"))  # fmt: skip
    assert err["details"]["patch"] == "fix"
    # another function of that build, or the same function of another build: fine
    cloud.call("POST", "/v1/patches", json=yhp.tax.body("tax"))
    cloud.call("POST", "/v1/patches", json=yhp.other.body("other"))
    # rollback and delete of a patch nobody applied yet... it is in flight: delete refused
    cloud.rejected("DELETE", "/v1/patches/fix", 409, "roll it back first")
    cloud.rejected("POST", "/v1/patches/nope/pause", 404, "no patch 'nope'")


def test_a_build_no_host_has_ends_done_with_zero_and_stacking_after_done(
    cloud: Cloud, fleet: Cloud, yhp: Yhps
) -> None:
    body = yhp.other.body("other", health_window=0, max_parallel=4, canary=2)
    p = cloud.call("POST", "/v1/patches", json=body)
    assert p["status"]["phase"] == "canary"
    for _ in range(3):
        for h, want in _want(cloud, "other").items():
            if want == "apply":
                _report(cloud, h, p["id"], "applied")
        cloud.reconcile()
    st = _status(cloud, "other")
    assert st["phase"] == "done" and st["counts"]["applied"] == 0
    cloud.rejected("POST", "/v1/patches/other/rollback", 409, "not applied")
    cloud.rejected("POST", "/v1/patches/other/pause", 409, "no rollout to pause")
    cloud.rejected("POST", "/v1/patches/other/resume", 409, "nothing to resume")
    # done: a new patch of the same function stacks on it
    cloud.call("POST", "/v1/patches", json=yhp.other.body("other2", health_window=0))
    cloud.call("DELETE", "/v1/patches/other")  # applied nowhere: may go
    # its file is still served: the other patch has the same one
    r = cloud.client.get(f"/v1/agent/patches/{yhp.other.digest}", headers=cloud.admin)
    assert r.status_code == 200 and r.content == yhp.other.content


def test_agent_endpoints_host_token_reports_and_ignored_hosts(
    cloud: Cloud, fleet: Cloud, yhp: Yhps
) -> None:
    p = cloud.call("POST", "/v1/patches", json=yhp.price.body("fix", hosts=["h1", "h2"]))
    boot = cloud.call("POST", "/v1/hosts/h1/bootstrap-tokens", json={"expires_in": 60})
    tok = cloud.call("POST", "/v1/agent/hosts/h1/token",
                     {"Authorization": f"Bearer {boot['token']}"})["token"]  # fmt: skip
    h1 = {"Authorization": f"Bearer {tok}"}
    assert cloud.call("GET", "/v1/agent/hosts/h1/patches", h1)["patches"][0]["id"] == p["id"]
    r = cloud.client.get(f"/v1/agent/patches/{yhp.price.digest}", headers=h1)
    assert r.status_code == 200 and r.content == yhp.price.content
    cloud.rejected("GET", "/v1/agent/hosts/h2/patches", 403, "host h1 only", h1)
    cloud.rejected("GET", f"/v1/agent/patches/{yhp.tax.digest}", 404, "no patch file", h1)
    cloud.rejected("GET", "/v1/agent/patches/nothex", 400, "digest", h1)
    cloud.rejected("GET", "/v1/patches", 403, "host", h1)
    # reports: rows upserted by (pid, start), counters recomputed, events per process
    before = cloud.revision()
    _report(cloud, "h1", p["id"], "applying", ((10, "busy"), (11, "refused")))
    assert cloud.revision() == before + 1  # the status write; the rows move nothing
    _report(cloud, "h1", p["id"], "applied", ((10, "applied"), (12, "applied")))
    st = _status(cloud, "fix")["hosts"]["h1"]
    assert (st["state"], st["applied"], st["busy"], st["refused"]) == ("applied", 2, 0, 1)
    rows = cloud.call("GET", "/v1/patches/fix/processes")["items"]
    assert sorted((x["pid"], x["result"]) for x in rows) == [
        (10, "applied"), (11, "refused"), (12, "applied"),
    ]  # fmt: skip
    refused = next(x for x in rows if x["pid"] == 11)
    assert (refused["start"], refused["comm"], refused["reason"]) == (5011, "svc", "not here")
    # h3 is not a target: its report is ignored (no row, no status change)
    before = cloud.revision()
    _report(cloud, "h3", p["id"], "applied", ((13, "applied"),))
    _report(cloud, "h1", "hp-00000000", "applied", ((14, "applied"),))
    assert cloud.revision() == before
    assert "h3" not in _status(cloud, "fix")["hosts"]
    assert len(cloud.call("GET", "/v1/patches/fix/processes")["items"]) == 3
    events = cloud.call("GET", "/v1/events", params={"for": "fix"})["items"]
    text = " | ".join(e["message"] for e in events)
    assert "process 11 (svc) on host h1 refused it: not here" in text
    assert "process 10 (svc) on host h1 stayed busy" in text
    cloud.rejected("POST", "/v1/agent/hosts/h9/patch-reports", 404, "not registered",
                   json={"reports": []})  # fmt: skip


def test_agents_get_stacked_patches_oldest_first(cloud: Cloud, fleet: Cloud, yhp: Yhps) -> None:
    """An agent applies a process started later the patches in the order it gets them:
    the patch stacked on another must come after it, whatever the names."""
    first = cloud.call("POST", "/v1/patches", json=yhp.price.body("zz-first", hosts=["h1"],
                                                                  health_window=0))  # fmt: skip
    _apply(cloud, first["id"], ("h1",))
    cloud.reconcile()
    assert _status(cloud, "zz-first")["phase"] == "done"
    cloud.clock.advance(0.5)
    cloud.call("POST", "/v1/patches", json=yhp.price.body("aa-second", hosts=["h1"]))
    got = cloud.call("GET", "/v1/agent/hosts/h1/patches")["patches"]
    assert [p["name"] for p in got] == ["zz-first", "aa-second"]


def test_the_agents_poll_waits_for_a_change_of_its_list(
    cloud: Cloud, fleet: Cloud, yhp: Yhps
) -> None:
    """A long poll: with the etag of the list it has, an agent's call answers when its
    host's list changes (a patch asks it to apply), or after the timeout, unchanged."""
    import threading
    import time

    first = cloud.call("GET", "/v1/agent/hosts/h1/patches")
    assert first["patches"] == [] and first["etag"]
    t0 = time.monotonic()
    same = cloud.call("GET", "/v1/agent/hosts/h1/patches",
                      params={"etag": first["etag"], "timeout": 0.3})  # fmt: skip
    assert same == first and time.monotonic() - t0 >= 0.3
    # a change elsewhere (a host's labels) wakes the poll but does not answer it
    maker = threading.Timer(
        0.2,
        lambda: (
            cloud.call("PATCH", "/v1/hosts/h2", json={"labels": {"tier": "db"}}),
            cloud.call("POST", "/v1/patches", json=yhp.price.body("mine", hosts=["h1"])),
        ),
    )
    maker.start()
    try:
        got = cloud.call("GET", "/v1/agent/hosts/h1/patches",
                         params={"etag": first["etag"], "timeout": 20})  # fmt: skip
    finally:
        maker.join()
    assert [p["name"] for p in got["patches"]] == ["mine"] and got["etag"] != first["etag"]
    assert time.monotonic() - t0 < 10  # answered by the change, not by the timeout
