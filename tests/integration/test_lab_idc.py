"""`yunhan lab idc add|list|remove` on a real 1x1 lab region (server, agent, core), through
the CLI as a user runs it: the site is built in the region's namespaces and registered with
the control plane; a replica on the region's underlay reaches its router over the line
(BGP with MD5, the LAN learned, the servers answer through it); the control plane's 409
for a site in use is the CLI's error unless --force; `yunhan down` leaves nothing of it
(namespaces, FRR processes and directories).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration import frrlab
from tests.polling import wait_for
from yunhan.cli.main import main
from yunhan.lab import cleanup, idc, region
from yunhan.lab.cleanup import run
from yunhan.lab.spec import ECHO_PORT, RegionSpec
from yunhan.net import frr

pytestmark = pytest.mark.root

SECRET = "lab-secret"
LAN = "192.168.100.0/24"
LAN2 = "192.168.200.0/24"


@pytest.fixture
def lab(uniq: Callable[[str], str], tmp_path: Path) -> Iterator[region.RegionHandle]:
    prefix = uniq("idc")
    spec = RegionSpec.build(prefix=prefix, zones=1, hosts_per_zone=1)
    try:
        with region.up(spec, tmp_path / "state", detach=False, timeout=60) as handle:
            yield handle
    finally:
        region.sweep(prefixes=[prefix])


def _cli(capsys: pytest.CaptureFixture[str], h: region.RegionHandle, *args: str) -> Any:
    capsys.readouterr()
    code = main(["--token", h.token, "lab", "idc", *args, "--state-dir", str(h.state_dir)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _api(h: region.RegionHandle) -> httpx.Client:
    return httpx.Client(
        base_url=h.endpoint, headers={"Authorization": f"Bearer {h.token}"}, timeout=10
    )


def test_idc_site_in_a_lab_region(
    lab: region.RegionHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h, prefix = lab, lab.prefix
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    code, out, err = _cli(capsys, h, "add", "dc1", "--cidr", LAN, "--servers", "2",
                          "--md5-secret-file", str(secret_file))  # fmt: skip
    assert code == 0, err
    assert "IDC site dc1 is up and registered" in out
    (rec,) = idc.load_sites(h.record).values()
    site = rec.spec
    assert (site.netns, site.index, site.router_ip, site.md5) == (
        f"{prefix}-idc-dc1",
        1,
        "198.19.33.1",
        True,
    )
    assert set(site.namespaces) <= set(cleanup.list_netns())
    assert frr.running(site.netns) and all(e.alive() for e in rec.echoes)
    with _api(h) as api:
        r = api.get("/v1/idc-sites/dc1")
        assert r.status_code == 200, r.text
        assert r.json()["spec"] == site.api_body()
    # The physical line: the core routes the router's VTEP to its link, the root namespace
    # routes nothing of the lab.
    assert "198.19.16.1 dev idc1" in run(["ip", "-n", site.core_netns, "route"])
    assert run(["ip", "route", "show", "root", "198.18.0.0/15"]).strip() == ""
    assert not [link for link in cleanup.root_links() if cleanup.owned(link, prefix)]
    # The servers answer on the LAN (the router asks from its gateway address).
    for s in site.servers:
        got = frrlab.fetch(site.netns, s.ip.split("/")[0], ECHO_PORT)
        assert got == f"client {site.lan_gateways[0].split('/')[0]}\n"

    # A replica on the region's underlay, as a host's agent builds one, reaches the router.
    rep = frrlab.replica(site, f"{prefix}-rep1", 1, "198.18.1.201", SECRET, ("10.20.0.0/16",))
    try:
        frrlab.build(site, rep)
        wait_for(lambda: frr.bgp_status(rep.netns).established, 20, "the session over the line")
        wait_for(lambda: frrlab.routes_to(rep.netns, LAN, [site.router_ip]), 10, "LAN learned")
        server = site.servers[0].ip.split("/")[0]
        assert frrlab.fetch(rep.netns, server, ECHO_PORT) == f"client {rep.session.router_id}\n"
        wait_for(lambda: frrlab.routes_to(site.netns, "10.20.0.0/16", [rep.session.router_id]),
                 10, "the cloud prefix in the router")  # fmt: skip
        code, out, _ = _cli(capsys, h, "list", "--json")
        (row,) = json.loads(out)
        assert (row["name"], row["frr"], row["sessions"], row["servers"]) == (
            "dc1",
            "running",
            "1/1 up",
            "2/2",
        )
        assert row["peers"] == [rep.session.router_id]
        code, out, _ = _cli(capsys, h, "list")
        assert code == 0 and "dc1" in out and "1/1 up" in out
    finally:
        frrlab.remove(site, rep)

    # Again, the same: nothing changes. Another site over dc1's range: refused.
    code, _, err = _cli(capsys, h, "add", "dc1", "--cidr", LAN, "--servers", "2",
                        "--md5-secret-file", str(secret_file))  # fmt: skip
    assert code == 0, err
    code, _, err = _cli(capsys, h, "add", "dc2", "--cidr", "192.168.100.128/25")
    assert code == 1 and "overlaps" in err
    code, _, err = _cli(capsys, h, "add", "dc1", "--cidr", LAN)  # other settings
    assert code == 1 and "exists with other settings" in err
    assert [s.spec.name for s, _ in idc.list_sites(h.state_dir)] == ["dc1"]

    # In use by a subnet: the control plane refuses, so does the CLI; --force overrides.
    code, _, err = _cli(capsys, h, "add", "dc2", "--cidr", LAN2, "--servers", "1")
    assert code == 0, err
    with _api(h) as api:
        r = api.post("/v1/vpcs", json={"name": "v", "cidrs": ["10.0.0.0/16", LAN, LAN2]})
        assert r.status_code == 201, r.text
        for name, cidr, where in (("a", LAN, "dc1"), ("b", LAN2, "dc2")):
            r = api.post("/v1/subnets", json={"name": name, "vpc": "v", "cidr": cidr,
                                              "location": f"idc:{where}"})  # fmt: skip
            assert r.status_code == 201, r.text
        code, _, err = _cli(capsys, h, "remove", "dc1")
        assert code == 1 and "in use" in err, err
        assert frr.running(site.netns)
        assert api.delete("/v1/subnets/a").status_code in (200, 202, 204)
        code, out, err = _cli(capsys, h, "remove", "dc1")
        assert code == 0, err
        assert api.get("/v1/idc-sites/dc1").status_code == 404
        code, out, err = _cli(capsys, h, "remove", "dc2", "--force")
        assert code == 0 and "--force" in err, err
        assert api.get("/v1/idc-sites/dc2").status_code == 200  # the control plane keeps it
        # dc2's line stays taken while the control plane holds it.
        code, _, err = _cli(capsys, h, "add", "dc3", "--cidr", "192.168.50.0/24")
        assert code == 0, err
        (dc3,) = (s.spec for s, _ in idc.list_sites(h.state_dir))
        assert dc3.index == 1 and dc3.line_vni == idc.LINE_VNI_BASE + 1
    assert not (Path("/run/frr") / site.netns).exists()
    assert not (frr.RUN_ROOT / site.netns).exists()
    assert not set(site.namespaces) & set(cleanup.list_netns())

    # `down` removes the rest: dc3 with its FRR.
    assert frr.running(dc3.netns)
    h.down()
    assert not [n for n in cleanup.list_netns() if cleanup.owned(n, prefix)]
    assert not list(Path("/run/frr").glob(f"{prefix}-*"))
    assert not list(frr.RUN_ROOT.glob(f"{prefix}-*"))
    assert not frr._strays(dc3.netns)


def test_idc_without_a_region(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--token", "x", "lab", "idc", "list", "--state-dir", str(tmp_path)])
    assert code == 1 and "no lab region" in capsys.readouterr().err
    assert shutil.which("vtysh")  # the lab's FRR is installed (scripts/install.sh)
