"""The NETCONF-managed switch of a lab IDC site: netconfd, sshd and the driver, inside the
site router's namespace.

Which NETCONF server, and why: Debian's netconfd (yuma123). It is a complete server that
network vendors' stacks descend from: candidate datastore, validation against the YANG
module, `:confirmed-commit:1.1` with the rollback done by the server itself when the
confirm timeout expires (or the session that asked for it goes away), locks. That
rollback is the safety net of a cut-over, so it belongs to the server, as it does on a
real switch, not to our client. netconfd speaks NETCONF over SSH through OpenSSH's
`netconf` subsystem, so each site runs its own sshd (port 830, the router's loopback
only) with netconf-subsystem pointing at its netconfd's socket. The datastore drives the
kernel through yunhan.lab.switchd.

Our side is ncclient. A client reaches the site from this machine without any route into
the lab: the TCP socket is opened inside the router's namespace (a socket stays in the
namespace it was made in) and handed to ncclient, which runs SSH over it.

Files: `<region data dir>/netconf/<site>/` holds the YANG module, netconfd's home (its
saved running configuration), the SSH keys (host and client, made on first start), the
sshd configuration, the logs and the push journal; `/run/yunhan/netconf/<router netns>/`
the netconfd socket and the driver's `applied.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from yunhan.errors import YunhanError
from yunhan.lab import cleanup
from yunhan.lab.cleanup import REGION_ENV, run
from yunhan.nsexec import nsenter_argv
from yunhan.polling import poll_until


class SiteSpec(Protocol):
    """What the switch needs of a site (yunhan.lab.idc.SiteSpec; not imported: idc starts
    and stops the switch, so it imports this module)."""

    @property
    def name(self) -> str: ...

    @property
    def netns(self) -> str: ...

    @property
    def cidrs(self) -> tuple[str, ...]: ...


RUN_ROOT = Path("/run/yunhan/netconf")
PORT = 830
YANG = Path(__file__).parent / "yang" / "yunhan-switch.yang"
START_TIMEOUT = 20.0
NETCONFD = "/usr/sbin/netconfd"
SUBSYSTEM = "/usr/sbin/netconf-subsystem"
SSHD = "/usr/sbin/sshd"


class SwitchError(YunhanError):
    """The site's switch cannot be started or reached."""

    code = "switch_unavailable"
    http_status = 409


@dataclass(frozen=True)
class SwitchPaths:
    home: Path  # <data dir>/netconf/<site>
    run: Path  # /run/yunhan/netconf/<router netns>

    @property
    def socket(self) -> Path:
        return self.run / "ncx.sock"

    @property
    def applied(self) -> Path:
        return self.run / "applied.json"

    @property
    def client_key(self) -> Path:
        return self.home / "client_key"

    @property
    def host_key(self) -> Path:
        return self.home / "host_key"

    @property
    def traffic(self) -> Path:
        """The switch's traffic counter history (switchd)."""
        return self.run / "traffic.json"

    @property
    def journal(self) -> Path:
        return self.home / "journal.jsonl"

    def host_key_b64(self) -> str:
        return (self.home / "host_key.pub").read_text().split()[1]


def paths(site: SiteSpec, data_dir: Path) -> SwitchPaths:
    return SwitchPaths(Path(data_dir) / "netconf" / site.name, RUN_ROOT / site.netns)


def available() -> str:
    """ "" when netconfd, netconf-subsystem and sshd are installed, else what is missing."""
    missing = [p for p in (NETCONFD, SUBSYSTEM, SSHD) if not os.access(p, os.X_OK)]
    return ", ".join(missing)


def _procs(netns: str) -> dict[str, int]:
    """The switch's processes running in `netns`, by role."""
    out: dict[str, int] = {}
    for pid in cleanup.pids_in_netns([netns]):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"netconfd"):
            out["netconfd"] = pid
        elif argv[0].startswith(b"sshd: ") and b" -D -f " in argv[0] and b"[listener]" in argv[0]:
            out["sshd"] = pid  # sshd re-executes itself with its title as one argument
        elif b"yunhan.lab.switchd" in argv:
            out["switchd"] = pid
    return out


def running(site: SiteSpec) -> bool:
    return len(_procs(site.netns)) == 3


def _spawn(argv: list[str], netns: str, log: Path, region: str) -> int:
    env = dict(os.environ, **{REGION_ENV: region, "PYTHONUNBUFFERED": "1"})
    with open(log, "ab") as f:
        p = subprocess.Popen(
            nsenter_argv(argv, net=netns),
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # it outlives `lab idc add`, like the site's FRR
        )
    return p.pid


def _keys(p: SwitchPaths) -> None:
    for key in (p.host_key, p.client_key):
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)])
    auth = p.home / "authorized_keys"
    auth.write_text((p.home / "client_key.pub").read_text())
    auth.chmod(0o600)


def _sshd_config(site: SiteSpec, p: SwitchPaths) -> Path:
    cfg = p.home / "sshd_config"
    cfg.write_text(
        "\n".join(
            [
                f"ListenAddress 127.0.0.1:{PORT}",
                f"HostKey {p.host_key}",
                f"PidFile {p.run / 'sshd.pid'}",
                f"AuthorizedKeysFile {p.home / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                f"Subsystem netconf {SUBSYSTEM} --ncxserver-sockname={PORT}@{p.socket}",
                "",
            ]
        )
    )
    return cfg


def start(site: SiteSpec, data_dir: Path, region: str) -> SwitchPaths:
    """Start (or complete) the site's switch; idempotent. Returns its paths once the driver
    has applied the running configuration."""
    missing = available()
    if missing:
        raise SwitchError(f"the site's NETCONF switch needs {missing} (scripts/install.sh)")
    p = paths(site, data_dir)
    (p.home / "data").mkdir(parents=True, exist_ok=True)
    p.run.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    shutil.copyfile(YANG, p.home / YANG.name)
    _keys(p)
    procs = _procs(site.netns)
    if "netconfd" not in procs:
        p.socket.unlink(missing_ok=True)
        saved = p.home / "data" / "startup-cfg.xml"
        # The running configuration netconfd saved (on each confirmed change) comes back
        # after a restart; the first start is empty.
        startup = [f"--startup={saved}"] if saved.exists() else ["--factory-startup"]
        argv = [
            NETCONFD,
            f"--module={p.home / YANG.name}",
            f"--ncxserver-sockname={p.socket}",
            "--target=candidate",
            "--with-startup=false",
            *startup,
            "--access-control=off",
            "--superuser=root",
            f"--yuma-home={p.home}",
            f"--log={p.home / 'netconfd.log'}",
            "--log-append",
        ]
        _spawn(argv, site.netns, p.home / "netconfd.out", region)
        if not poll_until(p.socket.exists, START_TIMEOUT, interval=0.05):
            raise SwitchError(f"netconfd did not start; see {p.home / 'netconfd.log'}")
    if "sshd" not in procs:
        cfg = _sshd_config(site, p)
        argv = [SSHD, "-D", "-f", str(cfg), "-E", str(p.home / "sshd.log")]
        _spawn(argv, site.netns, p.home / "sshd.out", region)
        if not poll_until(lambda: _listening(site.netns), START_TIMEOUT, interval=0.05):
            raise SwitchError(f"sshd did not listen on {PORT}; see {p.home / 'sshd.log'}")
    if "switchd" not in procs:
        p.applied.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "yunhan.lab.switchd",
            "--key",
            str(p.client_key),
            "--hostkey",
            str(p.home / "host_key.pub"),
            "--state",
            str(p.applied),
            *[a for c in site.cidrs for a in ("--count", c)],
        ]
        _spawn(argv, site.netns, p.home / "switchd.log", region)
        if not poll_until(p.applied.exists, START_TIMEOUT, interval=0.05):
            raise SwitchError(f"the switch driver did not start; see {p.home / 'switchd.log'}")
    return p


def _listening(netns: str) -> bool:
    argv = ["ss", "-N", netns, "-H", "-l", "-t", "-n", "sport", "=", f":{PORT}"]
    return bool(run(argv, check=False).strip())


def stop(site: SiteSpec, data_dir: Path | None) -> None:
    """Stop the switch's processes and remove its run directory (and, given the data dir,
    its home: keys, saved configuration, journal)."""
    cleanup.kill(list(_procs(site.netns).values()), grace=3.0)
    shutil.rmtree(RUN_ROOT / site.netns, ignore_errors=True)
    if data_dir is not None:
        shutil.rmtree(paths(site, data_dir).home, ignore_errors=True)


def applied(p: SwitchPaths) -> dict[str, Any]:
    """The driver's last state ({} before its first application)."""
    try:
        data: dict[str, Any] = json.loads(p.applied.read_text())
        return data
    except (OSError, ValueError):
        return {}


def connect(site: SiteSpec, p: SwitchPaths, timeout: float = 10.0) -> Any:
    """An ncclient session with the site's switch, over a TCP socket opened inside the
    router's namespace (no route from here into the lab), the server authenticated by
    its host key."""
    from ncclient import manager
    from ncclient.transport.errors import SSHError

    from yunhan.net.nsutil import run_in

    def dial() -> socket.socket:
        return socket.create_connection(("127.0.0.1", PORT), timeout=timeout)

    try:
        sock = run_in(dial, net=site.netns)
        return manager.connect(
            host="127.0.0.1",
            port=PORT,
            sock=sock,
            username="root",
            key_filename=str(p.client_key),
            hostkey_b64=p.host_key_b64(),
            allow_agent=False,
            look_for_keys=False,
            timeout=timeout,
        )
    except (OSError, SSHError) as exc:
        raise SwitchError(f"cannot reach the switch of IDC site {site.name}: {exc}") from exc


def wait_applied(p: SwitchPaths, digest: str, timeout: float) -> float | None:
    """Seconds until the driver reports `digest` applied (None: not within `timeout`)."""
    t0 = time.monotonic()

    def done() -> bool:
        a = applied(p)
        return a.get("digest") == digest and not a.get("error")

    if poll_until(done, timeout, interval=0.02, max_interval=0.05):
        return time.monotonic() - t0
    return None
