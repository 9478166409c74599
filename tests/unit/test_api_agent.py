"""Agent endpoints (register, desired long poll, status) and `converged`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from yunhan.net.desired import HostDesired
from yunhan.net.docentries import Delta, assemble, digest

DEADLINE = 20.0


if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def _desired(cloud: Cloud, host: str, after: int, timeout: float = 0) -> Any:
    return cloud.client.get(
        f"/v1/agent/hosts/{host}/desired",
        params={"after": after, "timeout": timeout},
        headers=cloud.admin,
    )


def test_register_assigns_vtep_index_once(cloud: Cloud) -> None:
    cloud.zone("az1", "198.18.1.0/24")
    h1 = cloud.host("h1", "az1", "198.18.1.11")
    h2 = cloud.host("h2", "az1", "198.18.1.12")
    assert (h1["status"]["vtep_index"], h2["status"]["vtep_index"]) == (1, 2)
    again = cloud.call(
        "PUT",
        "/v1/agent/hosts/h1",
        json={"zone": h1["spec"]["zone"], "underlay_ip": "198.18.1.21", "mtu": 9000},
    )
    assert again["id"] == h1["id"] and again["status"]["vtep_index"] == 1
    assert again["spec"]["underlay_ip"] == "198.18.1.21" and again["spec"]["mtu"] == 9000
    before = cloud.revision()
    cloud.call(
        "PUT", "/v1/agent/hosts/h1", json={"zone": "az1", "underlay_ip": "198.18.1.21", "mtu": 9000}
    )
    assert cloud.revision() == before  # an unchanged re-registration writes nothing


def _doc(cloud: Cloud, host: str) -> HostDesired:
    """The host's whole document, as an agent assembles it from a snapshot."""
    d = Delta.from_json(_desired(cloud, host, 0).json())
    assert d.snapshot
    return assemble(d.entries, host).model_copy(update={"revision": d.revision})


def test_desired_document_and_long_poll(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.rejected("GET", "/v1/agent/hosts/nope/desired", 404, "not registered")
    doc = _doc(cloud, "h1")  # compiled as the host registered: no controller pass needed
    assert doc.host == "h1" and doc.vpcs == () and doc.vtep_index == 1
    assert _desired(cloud, "h1", doc.revision).status_code == 204
    held = Delta.from_json(_desired(cloud, "h1", 0).json()).entries

    t, out = _in_thread(lambda: _desired(cloud, "h1", doc.revision, timeout=DEADLINE))
    inst = cloud.call(
        "POST", "/v1/instances", net["t"], json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    t.join(DEADLINE + 5)
    assert out and out[0].status_code == 200
    delta = Delta.from_json(out[0].json())
    # The document changed at the create's own revision, and only by what it added: the
    # VPC h1 now carries, with its subnet, its default route table, its default security
    # group and the instance.
    assert not delta.snapshot and delta.revision == inst["revision"]
    vid = net["vpc"]["id"]
    table = cloud.call("GET", "/v1/route-tables", net["t"])["items"][0]["id"]
    sg = cloud.call("GET", "/v1/security-groups", net["t"])["items"][0]["id"]
    assert set(delta.entries) == {
        f"vpc/{vid}",
        f"vpc/{vid}/s/{net['web']['id']}",
        f"vpc/{vid}/t/{table}",
        f"vpc/{vid}/sg/{sg}",
        f"vpc/{vid}/m/{inst['id']}",
    }
    new = assemble(delta.applied_to(held), "h1")
    assert new == _doc(cloud, "h1").model_copy(update={"revision": 0})
    assert [i.id for i in new.instances] == [inst["id"]]
    # h2 carries nothing of that VPC: its document did not change.
    h2 = _doc(cloud, "h2")
    assert h2.revision < inst["revision"]
    assert _desired(cloud, "h2", h2.revision).status_code == 204
    # An agent that remembers a revision beyond this store's gets the document at once.
    assert Delta.from_json(_desired(cloud, "h1", 10_000).json()).snapshot


def test_a_digest_that_differs_gets_the_whole_document(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.call(
        "POST", "/v1/instances", net["t"], json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    whole = Delta.from_json(_desired(cloud, "h1", 0).json())
    ok = cloud.client.get(
        "/v1/agent/hosts/h1/desired",
        params={"after": whole.revision, "digest": digest(whole.entries)},
        headers=cloud.admin,
    )
    assert ok.status_code == 204  # same copy: nothing to send
    drifted = cloud.client.get(
        "/v1/agent/hosts/h1/desired",
        params={"after": whole.revision, "digest": "0" * 64},
        headers=cloud.admin,
    )
    assert drifted.status_code == 200
    again = Delta.from_json(drifted.json())
    assert again.snapshot and again.entries == whole.entries


def test_status_reflects_into_instance_and_host(cloud: Cloud, net: dict[str, Any]) -> None:
    inst = cloud.call(
        "POST", "/v1/instances", net["t"], json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    doc_rev = _doc(cloud, "h1").revision
    report = {
        inst["id"]: {
            "phase": "running",
            "message": None,
            "netns": "/run/netns/x",
            "uts": "/run/uts/x",
        }
    }
    cloud.heartbeat("h1", doc_rev, report)
    got = cloud.call("GET", "/v1/instances/a", net["t"])["status"]
    assert (got["phase"], got["netns"], got["uts"]) == ("running", "/run/netns/x", "/run/uts/x")
    assert got["ip"] == inst["status"]["ip"]
    host = cloud.call("GET", "/v1/hosts/h1")["status"]
    assert host["applied_revision"] == doc_rev and host["desired_revision"] == doc_rev
    assert host["healthy"] is True and host["heartbeat_at"].endswith("Z")
    # Heartbeats and unchanged reports do not move the revision.
    before = cloud.revision()
    cloud.heartbeat("h1", doc_rev, report)
    cloud.heartbeat("h1", doc_rev)
    assert cloud.revision() == before
    # A host cannot report for an instance placed elsewhere.
    cloud.heartbeat("h2", 0, {inst["id"]: {"phase": "failed", "message": "no"}})
    assert cloud.call("GET", "/v1/instances/a", net["t"])["status"]["phase"] == "running"
    cloud.clock.advance(16)
    assert cloud.call("GET", "/v1/hosts/h1")["status"]["healthy"] is False
    cloud.rejected(
        "POST", "/v1/agent/hosts/nope/status", 404, "not registered", json={"applied_revision": 1}
    )


def _converged(
    cloud: Cloud, revision: int, timeout: float = 0, headers: dict[str, str] | None = None
) -> Any:
    return cloud.call(
        "GET", "/v1/converged", headers, params={"revision": revision, "timeout": timeout}
    )


def test_converged(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    for h in ("h1", "h2"):
        cloud.heartbeat(h, _doc(cloud, h).revision)
    a = cloud.call("POST", "/v1/instances", t, json={"name": "a", "subnet": "web", "zone": "az1"})
    r = a["revision"]
    # Only h1's document changed: h2 is not affected.
    assert _converged(cloud, r, headers=t) == {
        "revision": r,
        "converged": False,
        "pending": ["h1"],
        "unhealthy": [],
        "failed": [],
        "controller_revision": r,
    }
    doc1 = _doc(cloud, "h1").revision
    assert doc1 == r
    waiter, out = _in_thread(lambda: _converged(cloud, r, timeout=DEADLINE, headers=t))
    cloud.heartbeat("h1", doc1)
    waiter.join(DEADLINE + 5)
    assert out and out[0]["converged"] is True and out[0]["pending"] == []

    # An instance on h2 in the same VPC changes both documents (port, peer, routes).
    # h2's agent went silent: it stays pending and is reported unhealthy, not skipped.
    b = cloud.call("POST", "/v1/instances", t, json={"name": "b", "subnet": "web", "zone": "az2"})
    cloud.clock.advance(20)
    cloud.heartbeat("h1", _doc(cloud, "h1").revision)
    state = _converged(cloud, b["revision"], timeout=0.1)
    assert state["converged"] is False
    assert state["pending"] == ["h2"] and state["unhealthy"] == ["h2"]
    cloud.heartbeat("h2", _doc(cloud, "h2").revision)
    assert _converged(cloud, b["revision"])["converged"] is True
    # A write that changes no document (a zone) has converged at once.
    z = cloud.zone("az3", "198.18.3.0/24")
    assert _converged(cloud, z["revision"])["converged"] is True
    # Default revision: the current one.
    got = cloud.call("GET", "/v1/converged")
    assert got["revision"] == cloud.call("GET", "/v1/revision")["revision"]


def test_converged_names_hosts_that_applied_with_errors(cloud: Cloud, net: dict[str, Any]) -> None:
    # "Converged" means applied; a host that applied the write but reports errors is named,
    # so that `--wait` can say so instead of pretending all is well.
    t = net["t"]
    a = cloud.call("POST", "/v1/instances", t, json={"name": "a", "subnet": "web", "zone": "az1"})
    doc = _doc(cloud, "h1").revision
    cloud.call(
        "POST",
        "/v1/agent/hosts/h1/status",
        json={"applied_revision": doc, "error": "port p-x: EPERM", "instances": {}},
    )
    state = _converged(cloud, a["revision"], headers=t)
    assert state["converged"] is True and state["failed"] == ["h1"]
    cloud.heartbeat("h1", doc)  # the error is gone
    assert _converged(cloud, a["revision"])["failed"] == []


def test_controller_pass_without_change_does_not_churn(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.call(
        "POST", "/v1/instances", net["t"], json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    before = cloud.revision()
    assert cloud.reconcile() == before
    assert cloud.reconcile() == before
    assert cloud.revision() == before


def test_a_host_with_instances_cannot_change_zone(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.call(
        "POST", "/v1/instances", net["t"], json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    # The instance asked for az1; its host may not move to az2 underneath it.
    cloud.rejected(
        "PUT",
        "/v1/agent/hosts/h1",
        409,
        "carries instance(s) a",
        json={"zone": "az2", "underlay_ip": "198.18.1.11", "mtu": 1500},
    )
    # Other changes of a host with instances are fine; so is moving an empty host.
    cloud.call(
        "PUT", "/v1/agent/hosts/h1", json={"zone": "az1", "underlay_ip": "198.18.1.11", "mtu": 9000}
    )
    cloud.call(
        "PUT", "/v1/agent/hosts/h2", json={"zone": "az1", "underlay_ip": "198.18.2.11", "mtu": 1500}
    )


def test_metrics_show_the_control_plane_and_apply_lag_for_the_admin(
    cloud: Cloud, net: dict[str, Any]
) -> None:
    inst = cloud.call(
        "POST", "/v1/instances", net["t"], json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    _doc(cloud, "h1")
    admin = cloud.client.get("/metrics", headers=cloud.admin)
    assert admin.status_code == 200 and admin.headers["content-type"].startswith("text/plain")
    lines = dict(
        line.rsplit(" ", 1) for line in admin.text.splitlines() if not line.startswith("#")
    )
    assert int(lines["yunhan_store_revision"]) == inst["revision"]
    assert int(lines["yunhan_documents_sent_total"]) >= 1
    assert float(lines["yunhan_compiles_total"]) >= 1
    # h1 has not acknowledged the create yet: it lags by the revisions in between.
    lag = int(lines['yunhan_host_apply_lag_revisions{host="h1"}'])
    assert lag == inst["revision"]
    cloud.heartbeat("h1", inst["revision"])
    again = cloud.client.get("/metrics", headers=cloud.admin).text
    assert 'yunhan_host_apply_lag_revisions{host="h1"} 0' in again
    # A tenant sees the totals, never the region's hosts.
    tenant = cloud.client.get("/metrics", headers=net["t"]).text
    assert "yunhan_store_revision" in tenant and "host=" not in tenant
    assert cloud.client.get("/metrics").status_code == 401


def test_a_hosts_function_host_is_kept_in_its_status_with_the_key_for_the_admin_only(
    cloud: Cloud, net: dict[str, Any]
) -> None:
    from yunhan.api.function_hosts import FunctionHostInfo, function_hosts

    fn = {"endpoint": "http://127.0.0.1:4711", "key": "k-secret", "memory_mb": 2048, "workers": 3}
    body = {"applied_revision": 0, "instances": {}, "functions": fn}
    cloud.call("POST", "/v1/agent/hosts/h1/status", json=body)
    cloud.heartbeat("h2", 0)  # h2 runs no functions
    admin = cloud.call("GET", "/v1/hosts/h1")["status"]["functions"]
    assert admin == fn
    tenant = cloud.call("GET", "/v1/hosts/h1", net["t"])["status"]["functions"]
    assert tenant == {**fn, "key": None}  # every project reads hosts; the key is secret
    listed = cloud.call("GET", "/v1/hosts", net["t"])["items"]
    assert all(
        h["status"]["functions"] is None or h["status"]["functions"]["key"] is None for h in listed
    )
    assert cloud.call("GET", "/v1/hosts/h2")["status"]["functions"] is None
    # Kept in the store (endpoint, key, memory); the worker count changes without a write.
    before = cloud.revision()
    cloud.call(
        "POST", "/v1/agent/hosts/h1/status", json={**body, "functions": {**fn, "workers": 5}}
    )
    assert cloud.revision() == before
    assert cloud.call("GET", "/v1/hosts/h1")["status"]["functions"]["workers"] == 5
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    with cloud.store.read() as r:
        got = function_hosts(r, st.admin_project_id, st.fleet.leases, cloud.clock())
    h1 = cloud.call("GET", "/v1/hosts/h1")
    assert got == [FunctionHostInfo("h1", h1["spec"]["zone"], fn["endpoint"], "k-secret", 2048, 5)]
    # A restarted agent has a new endpoint and key: written once.
    new = {**fn, "endpoint": "http://127.0.0.1:4712", "key": "k-2"}
    cloud.call("POST", "/v1/agent/hosts/h1/status", json={**body, "functions": new})
    assert cloud.call("GET", "/v1/hosts/h1")["status"]["functions"]["key"] == "k-2"
    # A host whose agent went quiet is not offered to the router.
    cloud.clock.advance(16)
    with cloud.store.read() as r:
        assert function_hosts(r, st.admin_project_id, st.fleet.leases, cloud.clock()) == []
    # Started with --no-functions: forgotten.
    cloud.heartbeat("h1", 0)
    assert cloud.call("GET", "/v1/hosts/h1")["status"]["functions"] is None
