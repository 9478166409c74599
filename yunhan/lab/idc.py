"""Simulated IDC sites of a lab region: a customer data centre behind a dedicated line.

    yunhan lab idc add NAME --cidr 192.168.100.0/24 [--servers N] [--asn N] [--md5-secret-file F]
    yunhan lab idc remove NAME [--force]
    yunhan lab idc list

Shape of site n (1-based, the smallest index free in the region; "║" a veth pair):

    <p>-core  idc<n> 198.19.16.254/32 ║ wan0 198.19.16.n/32     <p>-idc-<name>   (FRR: zebra,
                                        line0 VXLAN VNI 0x700000+n, UDP 8472, learning,  bgpd, bfdd)
                                              local 198.19.16.n, 198.19.(32+n).1/24
                                        lan0 bridge: first host of each --cidr
                                          s<k> ║ eth0 <cidr>.(10+k-1)   <p>-idc-<name>-s<k>
                                                                          (yunhan.lab.echo :80)

* The "physical line" is the routed veth into the core, like a host's link: the core
  routes 198.19.16.n/32 to it and the router's default route goes back through it. Hybrid
  gateway replicas, on the region's hosts, reach the router's VTEP 198.19.16.n that way.
* The dedicated line is an L2 segment over VXLAN (docs/hybrid.md): the router's end has
  learning on and no FDB entry. Replicas always open the BGP session (the router only
  listens: `bgp listen range <line> peer-group CLOUD`), so it learns each replica's MAC and
  VTEP from the replica's first frame.
* The router's BGP: AS `--asn` (65001), eBGP to any replica on the line, the LAN ranges
  announced (`network`), ECMP over up to 8 replicas, keepalive 3 s / hold 9 s, BFD, and the
  TCP MD5 secret of `--md5-secret-file` when given.
* Servers sit on the bridge with addresses from .10 of each range (--servers in each), the
  router as their default route, and answer HTTP on port 80 with the client address they saw.
* MTUs: the line, the LAN and the servers use the region's MTU less the VXLAN overhead
  (50), the instances' MTU, so that nothing between an instance and a server fragments.

Everything is created inside lab namespaces named under the region's prefix (`yunhan down`
and `yunhan sweep` remove them, the FRR and echo processes in them, and FRR's directories);
nothing routes from the root namespace into a site. The sites of a region are recorded in
`<region data dir>/idc.json` before anything is built, and each is registered with the
control plane (`PUT /v1/idc-sites/NAME`), which refuses to forget one still in use.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yunhan.errors import Conflict, NotFound, ValidationError
from yunhan.lab import cleanup, netconfsw
from yunhan.lab.cleanup import REGION_ENV, run
from yunhan.lab.spec import ECHO_PORT, UNDERLAY, RegionSpec
from yunhan.net import frr
from yunhan.net.desired import HYBRID_LINE_IFNAME, HYBRID_LINE_PORT
from yunhan.nsexec import NETNS_DIR, nsenter_argv
from yunhan.polling import poll_until

if TYPE_CHECKING:
    import httpx

    from yunhan.lab.region import RegionRecord

SITES_FILE = "idc.json"
DEFAULT_ASN = 65001
DEFAULT_SERVERS = 2
MAX_SERVERS = 32
MAX_SITES = 95  # line subnets 198.19.33.0/24 .. 198.19.127.0/24, below the public pool
LINE_VNI_BASE = 0x700000
VXLAN_OVERHEAD = 50
WAN_NET = ipaddress.IPv4Network("198.19.16.0/24")  # the routers' "physical lines"
CORE_WAN_IP = "198.19.16.254"
SERVER_OFFSET = 10
WAN_IFNAME = "wan0"
LAN_IFNAME = "lan0"
SERVER_IFNAME = "eth0"
PEER_GROUP = "CLOUD"
# One word, no dash: "<p>-idc-a-s1" must never be both site "a"'s server and site "a-s1".
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
MAX_NAME = 12
ECHO_TIMEOUT = 10.0


def check_name(name: str) -> str:
    """A site name: 1 to 12 lowercase letters and digits, starting with a letter."""
    if not (
        1 <= len(name) <= MAX_NAME and name[0].isalpha() and all(c in _NAME_CHARS for c in name)
    ):
        raise ValidationError(
            f"IDC site name {name!r}: use 1 to {MAX_NAME} lowercase letters and digits, "
            "starting with a letter"
        )
    return name


# -- the description ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    name: str  # "s1"
    netns: str  # "<p>-idc-<site>-s1"
    ip: str  # "192.168.100.10/24"
    gateway: str
    port: str  # its veth end on the router's bridge ("s1")


@dataclass(frozen=True)
class SiteSpec:
    """One IDC site of a region: every name and address, computed up front (`build`)."""

    name: str
    index: int
    asn: int
    cidrs: tuple[str, ...]
    netns: str
    core_netns: str
    core_port: str  # "idc<n>" in the core
    wan_ip: str  # the router's underlay address (the line's VTEP)
    core_ip: str
    line_cidr: str
    router_ip: str  # on the line
    line_vni: int
    lan_gateways: tuple[str, ...]  # "192.168.100.1/24", one per range
    mtu: int  # the underlay's
    md5: bool  # a TCP MD5 secret is set (the secret itself is kept nowhere but FRR's config)
    servers: tuple[ServerSpec, ...]

    @classmethod
    def build(
        cls,
        region: RegionSpec,
        name: str,
        index: int,
        cidrs: Iterable[str],
        servers: int = DEFAULT_SERVERS,
        asn: int = DEFAULT_ASN,
        md5: bool = False,
    ) -> SiteSpec:
        """The plan of site `name` as the `index`-th site of `region`; ValidationError
        names what is wrong."""
        check_name(name)
        if not 1 <= index <= MAX_SITES:
            raise ValidationError(f"a region holds at most {MAX_SITES} IDC sites")
        if not 0 <= servers <= MAX_SERVERS:
            raise ValidationError(f"--servers must be between 0 and {MAX_SERVERS}, not {servers}")
        frr.check_asn(asn, "--asn")
        nets = _ranges(cidrs)
        for net in nets:
            if servers and net.num_addresses < SERVER_OFFSET + servers + 1:
                raise ValidationError(
                    f"{net} is too small for {servers} servers from .{SERVER_OFFSET} on"
                )
        netns = f"{region.prefix}-idc-{name}"
        # `servers` in every LAN: a client in one and servers in another (a cut-over moves
        # one LAN's addresses while the others keep reaching them).
        placed = [(net, k) for net in nets for k in range(1, servers + 1)]
        line = ipaddress.IPv4Network(f"198.19.{32 + index}.0/24")
        site = cls(
            name=name,
            index=index,
            asn=asn,
            cidrs=tuple(str(n) for n in nets),
            netns=netns,
            core_netns=region.core_netns,
            core_port=f"idc{index}",
            wan_ip=str(WAN_NET.network_address + index),
            core_ip=CORE_WAN_IP,
            line_cidr=str(line),
            router_ip=str(line.network_address + 1),
            line_vni=LINE_VNI_BASE + index,
            lan_gateways=tuple(f"{n.network_address + 1}/{n.prefixlen}" for n in nets),
            mtu=region.mtu,
            md5=md5,
            servers=tuple(
                ServerSpec(
                    name=f"s{n}",
                    netns=f"{netns}-s{n}",
                    ip=f"{net.network_address + SERVER_OFFSET + k - 1}/{net.prefixlen}",
                    gateway=str(net.network_address + 1),
                    port=f"s{n}",
                )
                for n, (net, k) in enumerate(placed, start=1)
            ),
        )
        return site

    @property
    def line_mtu(self) -> int:
        return self.mtu - VXLAN_OVERHEAD

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.netns, *(s.netns for s in self.servers))

    def api_body(self) -> dict[str, Any]:
        """What the control plane is told (`PUT /v1/idc-sites/NAME`)."""
        return {
            "cidrs": list(self.cidrs),
            "asn": self.asn,
            "router_ip": self.router_ip,
            "line_cidr": self.line_cidr,
            "line_vni": self.line_vni,
            "line_vtep": self.wan_ip,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(
            **{
                **known,
                "cidrs": tuple(data["cidrs"]),
                "lan_gateways": tuple(data["lan_gateways"]),
                "servers": tuple(ServerSpec(**s) for s in data["servers"]),
            }
        )

    def render(self) -> str:
        """The plan, as `lab idc add` prints it."""
        lines = [
            f"IDC site {self.name} (#{self.index}): router netns {self.netns}, AS {self.asn}"
            + (", TCP MD5" if self.md5 else ""),
            f"  physical line  {self.wan_ip} on {WAN_IFNAME} <-> {self.core_port} in "
            f"{self.core_netns}",
            f"  dedicated line {HYBRID_LINE_IFNAME} VXLAN VNI {self.line_vni:#x} UDP "
            f"{HYBRID_LINE_PORT}, router {self.router_ip} in {self.line_cidr} (replicas from .11)",
            f"  LAN            {', '.join(self.cidrs)} on {LAN_IFNAME} "
            f"(gateway {', '.join(g.split('/')[0] for g in self.lan_gateways)})",
        ]
        for s in self.servers:
            lines.append(
                f"  server {s.name:<4}    {s.ip:<18} netns {s.netns}, HTTP echo on {ECHO_PORT}"
            )
        return "\n".join(lines)


def _ranges(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    for c in cidrs:
        try:
            net = ipaddress.IPv4Network(c)
        except ValueError as exc:
            raise ValidationError(f"--cidr {c!r}: {exc}") from exc
        if net.prefixlen > 30:
            raise ValidationError(f"--cidr {net}: a site's range needs at least /30")
        if net.overlaps(UNDERLAY):
            raise ValidationError(f"--cidr {net} overlaps the lab's underlay {UNDERLAY}")
        for other in nets:
            if net.overlaps(other):
                raise ValidationError(f"--cidr {net} overlaps {other}")
        nets.append(net)
    if not nets:
        raise ValidationError("an IDC site needs at least one --cidr")
    return nets


def router_config(site: SiteSpec, md5_secret: str | None) -> str:
    """The site router's frr.conf: listen on the line for any replica (eBGP, any AS),
    announce the LAN ranges, ECMP over the replicas, BFD, the timers of docs/hybrid.md."""
    if site.md5 != (md5_secret is not None):
        raise ValidationError("the site's plan and its MD5 secret disagree")
    if md5_secret is not None:
        frr.check_secret(md5_secret)
    g = PEER_GROUP
    lines = [
        "frr defaults traditional",
        "!",
        f"router bgp {site.asn}",
        f" bgp router-id {site.router_ip}",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        f" timers bgp {frr.KEEPALIVE} {frr.HOLD}",
        f" neighbor {g} peer-group",  # before the listen range: it names the group
        f" neighbor {g} remote-as external",
        *([f" neighbor {g} password {md5_secret}"] if md5_secret else []),
        f" neighbor {g} bfd",
        f" neighbor {g} advertisement-interval 0",
        f" bgp listen range {site.line_cidr} peer-group {g}",
        " !",
        " address-family ipv4 unicast",
        *(f"  network {c}" for c in site.cidrs),
        "  maximum-paths 8",
        " exit-address-family",
        "exit",
        "!",
        "",
    ]
    return "\n".join(lines)


# -- building and removing a site ----------------------------------------------------------------


@dataclass
class EchoProcess:
    """A server's HTTP echo: found again by pid and start time."""

    server: str
    pid: int
    started: int | None
    log: str = ""

    def alive(self) -> bool:
        return cleanup.same_process(self.pid, self.started)


def _batch(ns: str, lines: list[str]) -> None:
    run(["ip", "-n", ns, "-batch", "-"], input="".join(f"{line}\n" for line in lines))


def _links(ns: str) -> dict[str, dict[str, Any]]:
    out = run(["ip", "-n", ns, "-d", "-j", "link", "show"])
    return {link["ifname"]: link for link in json.loads(out or "[]")}


def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int) -> None:
    # Both ends are created in place: no site link ever exists in the root namespace.
    # Only a whole pair counts: a lone end is a pair whose other namespace was deleted
    # and which the kernel has not reaped yet (netns cleanup is asynchronous; measured,
    # a site re-added at once found its predecessor's core end and had no line).
    a, b = name_a in _links(ns_a), name_b in _links(ns_b)
    if a and b:
        return
    for ns, name, present in ((ns_a, name_a, a), (ns_b, name_b, b)):
        if present:
            run(["ip", "-n", ns, "link", "del", name])
    run(["ip", "-n", ns_a, "link", "add", name_a, "mtu", str(mtu), "type", "veth",
         "peer", "name", name_b, "mtu", str(mtu), "netns", ns_b])  # fmt: skip


def _sysctl(ns: str, values: dict[str, str]) -> None:
    script = "".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}\n" for k, v in values.items())
    run(["ip", "netns", "exec", ns, "sh", "-e", "-c", script])


def _line_ok(link: dict[str, Any] | None, site: SiteSpec) -> bool:
    info = ((link or {}).get("linkinfo") or {}).get("info_data") or {}
    return (
        link is not None
        and info.get("id") == site.line_vni
        and info.get("port") == HYBRID_LINE_PORT
        and info.get("local") == site.wan_ip
        and bool(info.get("learning"))
    )


def realise(
    site: SiteSpec,
    md5_secret: str | None,
    echoes: Iterable[EchoProcess] = (),
    *,
    log_dir: Path,
    region: str,
    data_dir: Path | None = None,
) -> list[EchoProcess]:
    """Create (or complete) the site: namespaces, links, addresses, routes, FRR, the
    NETCONF switch (given the region's `data_dir`) and the servers' echo processes
    (`echoes`: those recorded, kept when alive). Returns the echo processes now running.
    Idempotent; the core namespace must exist."""
    have = set(cleanup.list_netns())
    if site.core_netns not in have:
        raise NotFound(f"the region's core namespace {site.core_netns} does not exist")
    for ns in site.namespaces:
        if ns not in have:
            run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    r, mtu, lmtu = site.netns, site.mtu, site.line_mtu
    _sysctl(
        r,
        {
            "net.ipv4.ip_forward": "1",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
            "net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1",
            # The LANs share one bridge: a router that sent ICMP redirects would teach a
            # server of one LAN to reach the other directly, on the wire, bypassing its
            # routes (and so a route switch: measured, the client kept the IDC server).
            # A router's LAN interfaces run with `no ip redirects`, as real ones do.
            "net.ipv4.conf.all.send_redirects": "0",
            "net.ipv4.conf.default.send_redirects": "0",
        },
    )

    # The physical line: a routed /32 link into the core, as a host has.
    _veth(site.core_netns, site.core_port, r, WAN_IFNAME, mtu)
    _batch(
        site.core_netns,
        [
            f"link set {site.core_port} mtu {mtu} up",
            f"addr replace {site.core_ip}/32 dev {site.core_port}",
            f"route replace {site.wan_ip}/32 dev {site.core_port}",
        ],
    )
    _batch(
        r,
        [
            f"link set {WAN_IFNAME} mtu {mtu} up",
            f"addr replace {site.wan_ip}/32 dev {WAN_IFNAME}",
            f"route replace default via {site.core_ip} dev {WAN_IFNAME} onlink",
        ],
    )

    # The dedicated line: learning, no FDB entry (the replicas speak first).
    links = _links(r)
    if HYBRID_LINE_IFNAME in links and not _line_ok(links[HYBRID_LINE_IFNAME], site):
        run(["ip", "-n", r, "link", "del", HYBRID_LINE_IFNAME])
        del links[HYBRID_LINE_IFNAME]
    if HYBRID_LINE_IFNAME not in links:
        run(["ip", "-n", r, "link", "add", HYBRID_LINE_IFNAME, "mtu", str(lmtu), "type", "vxlan",
             "id", str(site.line_vni), "local", site.wan_ip, "dstport", str(HYBRID_LINE_PORT),
             "learning"])  # fmt: skip
    if LAN_IFNAME not in links:
        run(["ip", "-n", r, "link", "add", LAN_IFNAME, "type", "bridge"])
    _sysctl(r, {f"net.ipv4.conf.{LAN_IFNAME}.send_redirects": "0"})  # a bridge made earlier
    _batch(
        r,
        [
            f"link set {HYBRID_LINE_IFNAME} mtu {lmtu} up",
            f"addr replace {site.router_ip}/{site.line_cidr.split('/')[1]} "
            f"dev {HYBRID_LINE_IFNAME}",
        ],
    )

    # The LAN: a bridge with the gateways, one veth per server.
    for s in site.servers:
        _veth(r, s.port, s.netns, SERVER_IFNAME, lmtu)
        _batch(r, [f"link set {s.port} mtu {lmtu} master {LAN_IFNAME} up"])
        _batch(
            s.netns,
            [
                f"link set {SERVER_IFNAME} mtu {lmtu} up",
                f"addr replace {s.ip} dev {SERVER_IFNAME}",
                f"route replace default via {s.gateway} dev {SERVER_IFNAME}",
            ],
        )
    _batch(
        r,
        [
            f"link set {LAN_IFNAME} mtu {lmtu} up",
            *(f"addr replace {gw} dev {LAN_IFNAME}" for gw in site.lan_gateways),
        ],
    )

    config = router_config(site, md5_secret)
    if frr.running(r) and frr.applied_config(r) != config:
        frr.stop(r)  # another secret (or plan) than what runs: start it again whole
    frr.start(r, config)
    if data_dir is not None:
        netconfsw.start(site, data_dir, region)
    return _echoes(site, list(echoes), log_dir, region)


def _echoes(
    site: SiteSpec, recorded: list[EchoProcess], log_dir: Path, region: str
) -> list[EchoProcess]:
    mine = {e.server: e for e in recorded if e.alive()}
    out = []
    for s in site.servers:
        if s.name in mine:
            out.append(mine[s.name])
            continue
        log = log_dir / f"idc-{site.name}-{s.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = nsenter_argv(
            [sys.executable, "-m", "yunhan.lab.echo", "--listen", f"0.0.0.0:{ECHO_PORT}"],
            net=s.netns,
        )
        env = dict(os.environ, **{REGION_ENV: region, "PYTHONUNBUFFERED": "1"})
        with open(log, "ab") as f:
            # Its own session: it outlives `lab idc add`, like the region's processes.
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        out.append(EchoProcess(s.name, p.pid, cleanup.start_time(p.pid), str(log)))
    for e in out:
        _wait_listening(site, e)
    return out


def _wait_listening(site: SiteSpec, e: EchoProcess) -> None:
    from yunhan.lab.region import LabError

    ns = next(s.netns for s in site.servers if s.name == e.server)

    def listening() -> bool:
        if not e.alive():
            raise LabError(f"the echo server of {e.server} exited; see {e.log}")
        argv = ["ss", "-N", ns, "-H", "-l", "-t", "-n", "sport", "=", f":{ECHO_PORT}"]
        return bool(run(argv, check=False).strip())

    if not poll_until(listening, ECHO_TIMEOUT, interval=0.02, max_interval=0.1):
        raise LabError(f"the echo server of {e.server} is not listening after {ECHO_TIMEOUT:g} s")


def teardown(site: SiteSpec, data_dir: Path | None = None) -> list[str]:
    """Remove the site: FRR (and its directories), the NETCONF switch (its files too,
    given the region's `data_dir`), every process in its namespaces, the namespaces (the
    physical line's veth, and so the core's route, go with the router's). Idempotent;
    returns the namespaces removed."""
    frr.stop(site.netns)
    netconfsw.stop(site, data_dir)
    # The core's end is deleted now rather than with the router's namespace, whose
    # cleanup the kernel finishes later: the next site may take this index at once.
    if site.core_netns in cleanup.list_netns() and site.core_port in _links(site.core_netns):
        run(["ip", "-n", site.core_netns, "link", "del", site.core_port])
    names = [n for n in site.namespaces if (NETNS_DIR / n).exists()]
    cleanup.kill(cleanup.pids_in_netns(names), grace=3.0)
    cleanup.delete_netns(names)
    return names


# -- status ---------------------------------------------------------------------------------


@dataclass
class SiteStatus:
    """What `lab idc list` shows of a site besides its plan."""

    frr_running: bool  # all its FRR daemons run
    sessions: tuple[frr.BgpStatus, ...]
    servers_up: int
    md5_failures: int | None


def status(site: SiteSpec, echoes: Iterable[EchoProcess]) -> SiteStatus:
    running = frr.running(site.netns)
    sessions = frr.bgp_sessions(site.netns) if running else ()
    return SiteStatus(
        frr_running=running,
        sessions=tuple(s for s in sessions if s.peer),
        servers_up=sum(1 for e in echoes if e.alive()),
        md5_failures=frr.md5_failures(site.netns) if running else None,
    )


# -- sites of a region ----------------------------------------------------------------------------


@dataclass
class SiteRecord:
    spec: SiteSpec
    echoes: list[EchoProcess] = field(default_factory=list)


def _file(record: RegionRecord) -> Path:
    return record.data_dir / SITES_FILE


def load_sites(record: RegionRecord) -> dict[str, SiteRecord]:
    """The region's sites, by name, as recorded next to its record."""
    try:
        data = json.loads(_file(record).read_text())
    except FileNotFoundError:
        return {}
    out = {}
    for d in data.get("sites", []):
        spec = SiteSpec.from_dict(d["spec"])
        out[spec.name] = SiteRecord(spec, [EchoProcess(**e) for e in d.get("echoes", [])])
    return out


def _save(record: RegionRecord, sites: dict[str, SiteRecord]) -> None:
    path = _file(record)
    tmp = path.with_suffix(".tmp")
    body = {
        "sites": [
            {"spec": s.spec.to_dict(), "echoes": [asdict(e) for e in s.echoes]}
            for s in sorted(sites.values(), key=lambda s: s.spec.index)
        ]
    }
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def _region(state_dir: Path | None) -> Iterator[RegionRecord]:
    from yunhan.lab import region

    state_dir = Path(state_dir or region.default_state_dir()).absolute()
    with region.locked(state_dir):
        record = region.RegionRecord.load(state_dir)
        if record is None:
            raise NotFound(f"no lab region is up in {state_dir} (`yunhan up --detach`)")
        yield record


@contextlib.contextmanager
def _client(record: RegionRecord, token: str) -> Iterator[httpx.Client]:
    """The region's API with the admin token; a transport failure is a LabError."""
    import httpx

    from yunhan.lab.region import LabError

    try:
        with httpx.Client(
            base_url=record.endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        ) as api:
            yield api
    except httpx.TransportError as exc:
        raise LabError(
            f"the region's API at {record.endpoint} does not answer ({exc or type(exc).__name__}); "
            "`yunhan status` shows its processes"
        ) from exc


def _api_message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:300]


def _registered(api: httpx.Client) -> dict[str, int]:
    """Sites the control plane knows: name -> line VNI."""
    r = api.get("/v1/idc-sites", params={"limit": 1000})
    if r.status_code != 200:
        raise _api_error("listing IDC sites", r)
    return {s["name"]: int(s["spec"]["line_vni"]) for s in r.json()["items"]}


def _api_error(what: str, r: httpx.Response) -> Exception:
    from yunhan.lab.region import LabError

    msg = f"{what}: {_api_message(r)}"
    if r.status_code == 409:
        return Conflict(msg)
    if r.status_code == 422:
        return ValidationError(msg)
    return LabError(f"{msg} (HTTP {r.status_code})")


def add(
    name: str,
    cidrs: Iterable[str],
    *,
    token: str,
    servers: int = DEFAULT_SERVERS,
    asn: int = DEFAULT_ASN,
    md5_secret: str | None = None,
    state_dir: Path | None = None,
) -> SiteSpec:
    """Add site `name` to the lab region of `state_dir` (or complete it: the same command
    again rebuilds what is missing), and register it with the control plane with the
    admin `token`. A site of that name with other settings is refused (Conflict). On a
    failure, a new site is removed again."""
    with _region(state_dir) as record:
        sites = load_sites(record)
        old = sites.get(name)
        with _client(record, token) as api:
            known = _registered(api)
            if old is not None:
                index = old.spec.index
            else:
                taken = {s.spec.index for s in sites.values()}
                # A site the control plane still holds (a forced remove) keeps its line.
                taken |= {v - LINE_VNI_BASE for n, v in known.items() if n != name}
                index = next((i for i in range(1, MAX_SITES + 1) if i not in taken), 0)
            site = SiteSpec.build(
                record.region_spec, name, index, cidrs, servers, asn, md5_secret is not None
            )
            router_config(site, md5_secret)  # the secret is checked before anything is built
            for other in sites.values():
                if other.spec.name == name:
                    continue
                for a in site.cidrs:
                    for b in other.spec.cidrs:
                        if ipaddress.IPv4Network(a).overlaps(ipaddress.IPv4Network(b)):
                            raise ValidationError(
                                f"--cidr {a} overlaps {b} of IDC site {other.spec.name}"
                            )
            if old is not None and old.spec != site:
                raise Conflict(
                    f"IDC site {name} exists with other settings; `yunhan lab idc remove "
                    f"{name}` first"
                )
            rec = old or SiteRecord(site)
            sites[name] = rec
            _save(record, sites)  # before building: `down` and `remove` know of it
            try:
                rec.echoes = realise(
                    site,
                    md5_secret,
                    rec.echoes,
                    log_dir=record.log_dir,
                    region=record.prefix,
                    data_dir=record.data_dir,
                )
                _save(record, sites)
                r = api.put(f"/v1/idc-sites/{name}", json=site.api_body())
                if r.status_code not in (200, 201):
                    raise _api_error(f"registering IDC site {name}", r)
            except BaseException:
                if old is None:
                    teardown(site, record.data_dir)
                    del sites[name]
                    _save(record, sites)
                raise
    return site


def remove(
    name: str, *, token: str, force: bool = False, state_dir: Path | None = None
) -> tuple[SiteSpec, str]:
    """Remove site `name`: the control plane forgets it first (it refuses while a subnet
    or a hybrid gateway uses the site: Conflict with its message, unless `force`, which
    removes the lab's site anyway and leaves the control plane's record). Returns the
    site and a warning ("" when none)."""
    with _region(state_dir) as record:
        sites = load_sites(record)
        if name not in sites:
            have = ", ".join(sorted(sites)) or "none"
            raise NotFound(f"no IDC site {name} in region {record.prefix} (sites: {have})")
        site = sites[name].spec
        warning = ""
        with _client(record, token) as api:
            r = api.delete(f"/v1/idc-sites/{name}")
        if r.status_code == 409 and force:
            warning = (
                f"the control plane keeps IDC site {name} ({_api_message(r)}); removed from the "
                "lab anyway (--force)"
            )
        elif r.status_code not in (200, 204, 404):
            raise _api_error(f"removing IDC site {name}", r)
        teardown(site, record.data_dir)
        del sites[name]
        _save(record, sites)
    return site, warning


def list_sites(state_dir: Path | None = None) -> list[tuple[SiteRecord, SiteStatus]]:
    """The region's sites and how each is doing (FRR, its BGP sessions, its servers)."""
    from yunhan.lab import region

    state_dir = Path(state_dir or region.default_state_dir()).absolute()
    record = region.RegionRecord.load(state_dir)
    if record is None:
        raise NotFound(f"no lab region is up in {state_dir} (`yunhan up --detach`)")
    sites = sorted(load_sites(record).values(), key=lambda s: s.spec.index)
    return [(s, status(s.spec, s.echoes)) for s in sites]
