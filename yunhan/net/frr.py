"""FRR instances (zebra + bgpd + bfdd), one per network namespace: the BGP of hybrid
gateway replicas and of the lab's IDC site routers (docs/hybrid.md, issue 15).

An instance is named by its namespace, which is also its FRR *pathspace* (`-N NS`): its
vty sockets live in /var/run/frr/NS/ and `vtysh -N NS` talks to it. Its own files live in
RUN_ROOT/NS/: the pid files, the log, the last config applied (frr.conf, 0600: it holds
the MD5 secret) and an empty vtysh.conf (vtysh reads one from its config dir; pointing it
at ours keeps /etc/frr out of it entirely: neither /etc/frr/frr.conf nor a system FRR
service is read or touched).

How the daemons are started (FRR 8.4, Debian):

* `ip netns exec NS /usr/lib/frr/<daemon> -N NS -d -f /dev/null -i RUN/<daemon>.pid -P 0
  --log file:RUN/frr.log`. `-d` returns once the daemon is ready (the parent waits for
  the child's start-up), so zebra's zserv socket exists before bgpd starts. `-P 0`: no
  TCP vty. `-f /dev/null`: the daemons read no file; the config goes in afterwards with
  `vtysh -f` (as `vtysh -b` does for the integrated frr.conf), which hands each line to
  the daemon that knows it.
* They run as the `frr` user, as packaged: FRR refuses to run as root unless root is in
  the `frrvty` group (which we leave alone), and drops to `frr` before it writes its pid
  file, so RUN/NS is owned by frr.
* They live in the namespace, so the lab's cleanup (which kills every process in a lab
  namespace) ends them; `stop` also removes both directories.

Every call has a bounded timeout and raises DriverError with the command and FRR's own
message; `bgp_status` never raises for a dead or hung instance (it says so instead).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yunhan import procstat
from yunhan.errors import DriverError, ValidationError
from yunhan.polling import poll_until

RUN_ROOT = Path("/run/yunhan/frr")  # config + pid files: RUN_ROOT / <netns> /
FRR_STATE_DIR = Path("/var/run/frr")  # FRR's own: vty sockets in <pathspace>/
FRR_BIN = Path("/usr/lib/frr")
FRR_USER = "frr"
DAEMONS = ("zebra", "bgpd", "bfdd")
KEEPALIVE, HOLD = 3, 9  # `timers bgp 3 9`
# FRR waits 120 s by default before it tries a refused or timed-out connection again; a
# replica whose site router was not up yet would then stay down for two minutes.
CONNECT_RETRY = 5
TIMEOUT = 10.0  # any one FRR command
STATUS_TIMEOUT = 3.0  # bgp_status: a hung bgpd is reported, not waited for
STOP_GRACE = 3.0
MAX_SECRET = 80  # TCP_MD5SIG_MAXKEYLEN
_DAEMON_ARGS = {"zebra": ("-s", "90000000")}  # netlink buffer, as Debian's frr starts it
_SECRET_RE = re.compile(r"^[!-~]+$")  # printable ASCII without blanks: one config word


# -- the description -------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """Our side of one eBGP session (a hybrid gateway replica), validated on creation."""

    router_id: str
    asn: int
    peer_ip: str
    peer_asn: int
    md5_secret: str | None
    bfd: bool
    announce: tuple[str, ...]

    def __post_init__(self) -> None:
        for what, ip in (("router id", self.router_id), ("peer", self.peer_ip)):
            try:
                ipaddress.IPv4Address(ip)
            except ValueError as exc:
                raise ValidationError(f"BGP {what} {ip!r} is not an IPv4 address") from exc
        for what, asn in (("ASN", self.asn), ("peer ASN", self.peer_asn)):
            check_asn(asn, what)
        if self.md5_secret is not None:
            check_secret(self.md5_secret)
        for prefix in self.announce:
            try:
                ipaddress.IPv4Network(prefix)
            except ValueError as exc:
                raise ValidationError(f"announced prefix {prefix!r}: {exc}") from exc


def check_asn(asn: int, what: str = "ASN") -> None:
    """ValidationError unless `asn` is a usable 4-byte AS number."""
    if not 1 <= asn <= 4294967294:
        raise ValidationError(f"{what} {asn} is not between 1 and 4294967294")


def check_secret(secret: str) -> None:
    """ValidationError unless `secret` can be a TCP MD5 key written in an FRR config: one
    word of printable ASCII (a blank or a newline would end it, or inject config), at most
    80 bytes (the kernel's limit)."""
    if not _SECRET_RE.match(secret) or len(secret) > MAX_SECRET:
        raise ValidationError(
            f"an MD5 secret must be 1 to {MAX_SECRET} printable ASCII characters without blanks"
        )


@dataclass(frozen=True)
class LearnedRoute:
    """One path learned from a peer: `as_path` as FRR writes it ("65001 65002")."""

    prefix: str
    nexthop: str
    as_path: str


@dataclass(frozen=True)
class BgpStatus:
    """One BGP session as seen from our side.

    `state`: FRR's ("Established", "Active", "Connect", "Idle", "OpenSent", …) or "down"
    when bgpd is not running. `up_since`: epoch seconds of the current session. `reason`:
    why it is not established, in words ("" when it is). `learned`: paths received from
    this peer. `bfd`: the BFD session's state ("up", "down", "init", …), None without BFD.
    `connections`: sessions established with the peer since bgpd started: a reset makes it
    grow (`up_since` is only good to a second, and FRR's own rounding moves it by one).
    """

    state: str
    up_since: float | None
    reason: str
    learned: tuple[LearnedRoute, ...] = ()
    bfd: str | None = None
    peer: str = ""
    connections: int = 0

    @property
    def established(self) -> bool:
        return self.state == "Established"


def _session_lines(s: Session) -> list[str]:
    """The `router bgp` block of a session, indented as FRR shows it."""
    return [
        f"router bgp {s.asn}",
        f" bgp router-id {s.router_id}",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        f" timers bgp {KEEPALIVE} {HOLD}",
        *_neighbor_lines(s),
        " !",
        " address-family ipv4 unicast",
        *(f"  network {n}" for n in s.announce),
        " exit-address-family",
        "exit",
    ]


def _neighbor_lines(s: Session) -> list[str]:
    p = s.peer_ip
    return [
        f" neighbor {p} remote-as {s.peer_asn}",
        *([f" neighbor {p} password {s.md5_secret}"] if s.md5_secret else []),
        *([f" neighbor {p} bfd"] if s.bfd else []),
        f" neighbor {p} advertisement-interval 0",
        f" neighbor {p} timers connect {CONNECT_RETRY}",
    ]


def render_session(s: Session) -> str:
    """The whole frr.conf of a replica's instance: one eBGP session, `network` per
    announced prefix (announced whether or not the RIB has the route: no import check),
    no policy needed, keepalive 3 s / hold 9 s, BFD with bfdd's defaults (300 ms x 3)."""
    return "\n".join(["frr defaults traditional", "!", *_session_lines(s), "!", ""])


def session_commands(old: Session | None, new: Session) -> list[str]:
    """The vtysh configuration commands that turn `old` (what runs) into `new`; [] when
    they are equal. Only what differs is touched: a change of `announce` is `network` /
    `no network` lines, which never reset the session (the route switch depends on it);
    a new secret, BFD or router id act on the session alone; a new peer replaces the
    neighbor; a new local ASN replaces the whole `router bgp`."""
    if old is None or old.asn != new.asn:
        drop = [f"no router bgp {old.asn}"] if old is not None else []
        return [*drop, *(line.strip() for line in _session_lines(new) if line.strip() != "!")]
    cmds: list[str] = []
    p = new.peer_ip
    if old.router_id != new.router_id:
        cmds.append(f"bgp router-id {new.router_id}")
    if (old.peer_ip, old.peer_asn) != (new.peer_ip, new.peer_asn):
        cmds.append(f"no neighbor {old.peer_ip}")
        cmds += [line.strip() for line in _neighbor_lines(new)]
    else:
        if old.md5_secret != new.md5_secret:
            cmds.append(
                f"neighbor {p} password {new.md5_secret}"
                if new.md5_secret
                else f"no neighbor {p} password"
            )
        if old.bfd != new.bfd:
            cmds.append(f"neighbor {p} bfd" if new.bfd else f"no neighbor {p} bfd")
    gone = [n for n in old.announce if n not in new.announce]
    added = [n for n in new.announce if n not in old.announce]
    if gone or added:
        cmds += [
            "address-family ipv4 unicast",
            *(f"no network {n}" for n in gone),
            *(f"network {n}" for n in added),
            "exit-address-family",
        ]
    return [f"router bgp {new.asn}", *cmds, "exit"] if cmds else []


def parse_session(running_config: str) -> Session | None:
    """The session a running config holds (`show running-config bgpd`), None when it
    holds no `router bgp` with a neighbor: the inverse of `render_session`."""
    asn = peer = peer_asn = router_id = secret = None
    bfd = False
    announce: list[str] = []
    for raw in running_config.splitlines():
        words = raw.split()
        if raw.startswith("router bgp ") and len(words) == 3:
            asn = int(words[2])
        elif asn is None or not words:
            continue
        elif words[:2] == ["bgp", "router-id"]:
            router_id = words[2]
        elif words[0] == "neighbor" and len(words) >= 3:
            if peer is None and words[2] == "remote-as":
                peer, peer_asn = words[1], int(words[3])
            elif words[1] == peer and words[2] == "password":
                secret = words[3]
            elif words[1] == peer and words[2:] == ["bfd"]:
                bfd = True
        elif words[0] == "network":
            announce.append(words[1])
    if asn is None or peer is None or peer_asn is None:
        return None
    return Session(router_id or "0.0.0.0", asn, peer, peer_asn, secret, bfd, tuple(announce))


# -- running the instance ----------------------------------------------------------------------


def _run(argv: Sequence[str], timeout: float = TIMEOUT) -> str:
    """Run a command; its failure (or a timeout) becomes DriverError with FRR's words."""
    try:
        p = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise DriverError(f"{_show(argv)}: no answer in {timeout:g} s") from exc
    except OSError as exc:
        raise DriverError(f"{_show(argv)}: {exc.strerror}", errno=exc.errno) from exc
    if p.returncode != 0:
        said = (p.stdout + p.stderr).strip().splitlines()
        said = [line for line in said if "vtysh.conf" not in line]
        raise DriverError(
            f"{_show(argv)} failed: {' / '.join(said) or f'exit code {p.returncode}'}",
            returncode=p.returncode,
        )
    return p.stdout


def _show(argv: Sequence[str]) -> str:
    # A command line as an error message shows it, never with a secret in it.
    return re.sub(r"(password) \S+", r"\1 ***", " ".join(argv))


def _check_netns(netns: str) -> None:
    # A pathspace is a directory name; FRR's sockets live under it (sun_path: 108 bytes).
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", netns):
        raise ValidationError(f"{netns!r} cannot name an FRR instance (a namespace name)")


def _dir(netns: str) -> Path:
    _check_netns(netns)
    return RUN_ROOT / netns


def _vtysh_argv(netns: str) -> list[str]:
    # --config_dir: vtysh reads <dir>/<pathspace>/vtysh.conf (ours, empty), not /etc/frr.
    _check_netns(netns)
    return ["vtysh", "-N", netns, "--config_dir", str(RUN_ROOT)]


def vtysh(netns: str, *commands: str, timeout: float = TIMEOUT) -> str:
    """Run vtysh commands against the instance of `netns` in one session (so that
    `configure terminal`, `router bgp N`, … build on each other) and return the output.
    vtysh stops at the first command that fails: DriverError with FRR's message."""
    argv = _vtysh_argv(netns)
    for c in commands:
        argv += ["-c", c]
    return _run(argv, timeout)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _is_daemon(pid: int, daemon: str, netns: str) -> bool:
    argv = _cmdline(pid)
    st = procstat.read(pid)
    return (
        st is not None
        and st.alive
        and bool(argv)
        and argv[0] == str(FRR_BIN / daemon)
        and "-N" in argv
        and argv[argv.index("-N") + 1 : argv.index("-N") + 2] == [netns]
    )


def _pids(netns: str) -> dict[str, int]:
    """The daemons of `netns` that run, by name, from their pid files."""
    found = {}
    for d in DAEMONS:
        try:
            pid = int((_dir(netns) / f"{d}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if _is_daemon(pid, d, netns):
            found[d] = pid
    return found


def _strays(netns: str) -> list[int]:
    # FRR processes of the pathspace without (or with a stale) pid file.
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and any(_is_daemon(int(entry), d, netns) for d in DAEMONS):
            out.append(int(entry))
    return out


def running(netns: str) -> bool:
    """True when every daemon of the instance (zebra, bgpd, bfdd) is alive."""
    return set(_pids(netns)) == set(DAEMONS)


def _kill(pids: Iterable[int]) -> None:
    pids = list(pids)
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 2.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

        def gone() -> bool:
            return all(not (st := procstat.read(p)) or not st.alive for p in pids)

        if poll_until(gone, wait, interval=0.02, max_interval=0.1):
            return
    raise DriverError(f"FRR processes {pids} survived SIGKILL", pids=pids)


def _frr_user() -> pwd.struct_passwd:
    if not (FRR_BIN / "bgpd").exists():
        raise DriverError(f"FRR is not installed ({FRR_BIN}/bgpd is missing): apt-get install frr")
    try:
        return pwd.getpwnam(FRR_USER)
    except KeyError as exc:
        raise DriverError(f"no user {FRR_USER!r}: is Debian's frr package installed?") from exc


def start(netns: str, config: str) -> None:
    """Start zebra, bgpd and bfdd in namespace `netns` (pathspace `netns`) and apply
    `config` (a whole frr.conf); a no-op when the instance already runs (`apply_session`
    changes a running one). An instance with a dead daemon is restarted whole. On a
    failure nothing of the instance is left running."""
    if running(netns):
        return
    user = _frr_user()
    stop(netns)  # what is left of a half-dead instance
    run_dir = _dir(netns)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chown(run_dir, user.pw_uid, user.pw_gid)
    run_dir.chmod(0o750)
    (run_dir / "vtysh.conf").write_text("")
    conf = run_dir / "frr.conf"
    _write_private(conf, config)
    try:
        for d in DAEMONS:
            _run(
                [
                    "ip", "netns", "exec", netns, str(FRR_BIN / d), "-N", netns, "-d",
                    "-f", "/dev/null", "-i", str(run_dir / f"{d}.pid"), "-P", "0",
                    "--log", f"file:{run_dir / 'frr.log'}", *_DAEMON_ARGS.get(d, ()),
                ]
            )  # fmt: skip
        _run([*_vtysh_argv(netns), "-f", str(conf)])
    except BaseException:
        with contextlib.suppress(DriverError):
            stop(netns)
        raise


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def applied_config(netns: str) -> str | None:
    """The last config given to the instance (by `start` or `apply_session`), or None."""
    try:
        return (_dir(netns) / "frr.conf").read_text()
    except FileNotFoundError:
        return None


def observed_session(netns: str) -> Session | None:
    """The session the running bgpd holds, read back from its running config (secret
    included: FRR shows it); None when it holds none."""
    return parse_session(vtysh(netns, "show running-config bgpd"))


def apply_session(netns: str, old: Session | None, new: Session) -> None:
    """Make the instance of `netns` hold session `new`, changing only what differs from
    `old` (what it holds now; None: read it back from bgpd). Adding or removing announced
    prefixes never resets the session. An instance that does not run is started with
    `new` whole. When the change does not apply to what runs (`old` was stale), it is
    computed again from what bgpd holds and applied once more."""
    if not running(netns):
        start(netns, render_session(new))
        return
    if old is None:
        old = observed_session(netns)
    cmds = session_commands(old, new)
    if cmds:
        try:
            vtysh(netns, "configure terminal", *cmds, "end")
        except DriverError:
            cmds = session_commands(observed_session(netns), new)
            if cmds:
                vtysh(netns, "configure terminal", *cmds, "end")
    _write_private(_dir(netns) / "frr.conf", render_session(new))


def stop(netns: str) -> None:
    """Stop the instance's daemons and remove RUN_ROOT/<netns> and /var/run/frr/<netns>.
    Idempotent."""
    pids = set(_pids(netns).values()) | set(_strays(netns))
    if pids:
        _kill(pids)
    for d in (_dir(netns), FRR_STATE_DIR / netns):
        shutil.rmtree(d, ignore_errors=True)


# -- status ---------------------------------------------------------------------------------------

_SHOW = ("show bgp neighbors json", "show bgp ipv4 unicast json", "show bfd peers json")


def _sections(netns: str) -> list[Any]:
    """The three JSON documents of _SHOW, in one vtysh run. vtysh echoes each command
    (-E) and stops at the first that fails (bfdd dead): the missing ones are None."""
    argv = [*_vtysh_argv(netns), "-E"]
    for c in _SHOW:
        argv += ["-c", c]
    try:
        p = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=STATUS_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise DriverError(
            f"bgpd does not answer (vtysh: no reply in {STATUS_TIMEOUT:g} s)"
        ) from exc
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in p.stdout.splitlines():
        cmd = next((c for c in _SHOW if line.endswith(f"# {c}")), None)
        if cmd is not None:
            current = parts.setdefault(cmd, [])
        elif current is not None:
            current.append(line)
    out: list[Any] = []
    for c in _SHOW:
        try:
            out.append(json.loads("\n".join(parts[c])) if c in parts else None)
        except ValueError:
            out.append(None)
    if out[0] is None:
        said = (p.stdout + p.stderr).strip().splitlines()
        raise DriverError(
            "bgpd gives no status: "
            + " / ".join(line for line in said if "vtysh.conf" not in line)[:300]
        )
    return out


def bgp_sessions(netns: str) -> tuple[BgpStatus, ...]:
    """Every BGP session of the instance (a site router's dynamic neighbors), by peer;
    for a dead instance one status in state "down"."""
    if "bgpd" not in _pids(netns):
        return (BgpStatus("down", None, "bgpd is not running"),)
    try:
        neighbors, table, bfd = _sections(netns)
    except DriverError as exc:
        return (BgpStatus("down", None, str(exc)),)
    return tuple(
        _status(netns, peer, n, table, bfd)
        for peer, n in sorted(neighbors.items())
        if isinstance(n, dict)
    )


def bgp_status(netns: str, peer: str | None = None) -> BgpStatus:
    """The session with `peer` (default: the instance's only, or first, neighbor): its
    state, since when it is up, why it is not (a sentence a user acts on), the paths
    learned from that peer and the BFD state. Never raises for a dead instance."""
    sessions = bgp_sessions(netns)
    if sessions and sessions[0].state == "down" and not sessions[0].peer:
        return sessions[0]
    for s in sessions:
        if peer is None or s.peer == peer:
            return s
    who = f"with {peer}" if peer else "at all"
    return BgpStatus(
        "Idle",
        None,
        f"bgpd has no BGP session {who} (no such neighbor, or nobody connected to a listen "
        "range yet)",
    )


def _learned(table: Any, peer: str) -> tuple[LearnedRoute, ...]:
    routes = table.get("routes", {}) if isinstance(table, dict) else {}
    out = []
    for prefix, paths in routes.items():
        for path in paths:
            if path.get("peerId") != peer or not path.get("valid"):
                continue
            hops = [h.get("ip", "") for h in path.get("nexthops", []) if h.get("afi") == "ipv4"]
            out.append(LearnedRoute(prefix, hops[0] if hops else "", str(path.get("path", ""))))
    return tuple(sorted(out, key=lambda r: (_net_key(r.prefix), r.nexthop)))


def _net_key(prefix: str) -> tuple[int, int]:
    try:
        net = ipaddress.IPv4Network(prefix)
    except ValueError:
        return (0, 0)
    return (int(net.network_address), net.prefixlen)


def _bfd_state(n: dict[str, Any], peer: str, bfd: Any) -> str | None:
    if "peerBfdInfo" not in n:
        return None
    if not isinstance(bfd, list):
        return "unknown (bfdd is not running)"
    for b in bfd:
        if isinstance(b, dict) and b.get("peer") == peer and not b.get("multihop"):
            return str(b.get("status", "unknown"))
    return "down"


def _status(netns: str, peer: str, n: dict[str, Any], table: Any, bfd: Any) -> BgpStatus:
    state = str(n.get("bgpState", "Idle"))
    up_since = None
    if state == "Established" and n.get("bgpTimerUpEstablishedEpoch"):
        up_since = float(n["bgpTimerUpEstablishedEpoch"])
    reason = "" if state == "Established" else _reason(netns, peer, state, n)
    return BgpStatus(
        state,
        up_since,
        reason,
        _learned(table, peer),
        _bfd_state(n, peer, bfd),
        peer,
        int(n.get("connectionsEstablished", 0)),
    )


def _ago(msecs: Any) -> str:
    if not isinstance(msecs, int):
        return ""
    when = time.strftime("%H:%M:%S", time.localtime(time.time() - msecs / 1000))
    return f" since {when}"


def _reason(netns: str, peer: str, state: str, n: dict[str, Any]) -> str:
    """Why the session with `peer` is not established, from what bgpd says and what the
    kernel of the namespace shows (ARP to the peer, a SYN waiting for an answer)."""
    since = _ago(n.get("lastResetTimerMsecs")) if n.get("connectionsEstablished") else ""
    where = f"(state {state}{since or ', never established'})"
    md5 = bool(n.get("authenticationEnabled"))
    if n.get("adminShutDown") or n.get("bgpStateIs") == "shutdown":
        return f"the session with {peer} is shut down in our configuration"
    if state in ("OpenSent", "OpenConfirm"):
        return f"TCP to {peer}:179 is open; BGP OPEN messages are being exchanged {where}"
    if state == "Idle" and n.get("lastNotificationReason"):
        return _notification(n, where)
    route = _try(["ip", "-n", netns, "route", "get", peer])
    if route is None:
        return f"no route to {peer} in {netns}: the line's address is missing {where}"
    neigh = _try(["ip", "-n", netns, "-j", "neigh", "show", "to", peer])
    neigh_states = {s for e in json.loads(neigh or "[]") for s in e.get("state", [])}
    if neigh_states & {"FAILED", "INCOMPLETE"}:
        return (
            f"{peer} does not answer ARP on the line {where}: the line or the peer's end of it "
            "is down"
        )
    syn = _try(["ss", "-N", netns, "-H", "-t", "-n", "state", "syn-sent", "dst", peer])
    if state == "Connect" or (syn or "").strip():
        if md5:
            return (
                f"no answer from {peer}:179 {where}: a TCP MD5 secret that does not match "
                "the peer's is the usual cause (the peer drops the SYNs), or the peer's BGP "
                "is not running"
            )
        return (
            f"no answer from {peer}:179 {where}: the peer's BGP is not running, or it "
            "expects a TCP MD5 secret and we have none"
        )
    if n.get("lastNotificationReason") and "Notification" in str(n.get("lastResetDueTo", "")):
        return _notification(n, where)
    if state == "Active":
        return f"the peer refused the TCP connection (not configured for us?) {where}"
    last = n.get("lastResetDueTo")
    return f"session {state} {where}" + (f"; last reset: {last}" if last else "")


def _notification(n: dict[str, Any], where: str) -> str:
    sent = "sent" if "send" in str(n.get("lastResetDueTo", "")).lower() else "received"
    code = n.get("lastErrorCodeSubcode", "")
    return (
        f"the session was closed by a BGP NOTIFICATION {sent}: "
        f"{n.get('lastNotificationReason')}"
        + (f" (code/subcode {code})" if code else "")
        + f" {where}"
    )


def _try(argv: list[str]) -> str | None:
    try:
        return _run(argv, timeout=STATUS_TIMEOUT)
    except DriverError:
        return None


def md5_failures(netns: str) -> int | None:
    """How many TCP segments the namespace's kernel dropped for a wrong (or missing, or
    unexpected) MD5 signature: the listening side's only trace of a peer with the wrong
    secret. Read through a daemon of the instance (/proc/PID/net is its namespace's)."""
    pid = next(iter(_pids(netns).values()), None)
    if pid is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/net/netstat").read_text().splitlines()
    except OSError:
        return None
    total = 0
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            for k, v in zip(head.split()[1:], values.split()[1:], strict=False):
                if k in ("TCPMD5Failure", "TCPMD5NotFound", "TCPMD5Unexpected"):
                    total += int(v)
    return total
