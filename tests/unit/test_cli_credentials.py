"""`yunhan audit`, `yunhan events` and `yunhan token` against the real app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import update

from yunhan.store import Store
from yunhan.store import schema as s

if TYPE_CHECKING:
    from cli_fixtures import Region

pytest_plugins = ["cli_fixtures"]


def test_audit_verify_fails_naming_the_edited_record(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("vpc", "create", "test", "--cidr", "10.1.0.0/16")
    listed = region.cli("audit", "list", "--json").json()
    assert [r["path"] for r in listed if r["method"] == "POST"][-2:] == ["/v1/vpcs"] * 2
    assert "holds together" in region.ok("audit", "verify").stdout
    seq = listed[-1]["seq"]
    store: Store = region.http.app.state.yunhan.store  # type: ignore[attr-defined]
    with store.engine.begin() as conn:
        conn.execute(update(s.audit).where(s.audit.c.seq == seq).values(result="forged"))
    r = region.cli("audit", "verify")
    assert r.code == 1 and f"broken at record {seq}" in r.stderr and "altered" in r.stderr


def test_events_and_tokens_from_the_cli(region: Region) -> None:
    region.ok("project", "create", "alpha")
    out = region.ok("token", "create", "alpha", "--expires-in", "60").stdout
    tid = out.split()[1]
    assert tid.startswith("tok-")
    rows = region.cli("token", "list", "--project", "alpha", "--json").json()
    assert tid in {t["id"] for t in rows} and "token" not in rows[0]
    assert region.ok("token", "revoke", tid).stdout == f"revoked token {tid}\n"
    boot = region.ok("token", "bootstrap", "az1-h9").stdout.splitlines()[-1]
    assert boot.startswith("yhb_")
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    region.ok("zone", "list")
    assert region.cli("events", "--for", "az1").stdout == "no events\n"
