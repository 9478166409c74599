"""Running a command inside namespaces: where named network namespaces live, and the
`nsenter` command line. Leaf module (pure; no ctypes, so the CLI can import it cheaply)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")  # where `ip netns` (and we) keep named network namespaces
MNT_DIR = Path("/run/yunhan/mnt")  # instances' private mount namespaces, by netns name


def mnt_path(netns: str | Path) -> Path:
    """Where the private mount namespace of the instance in network namespace `netns` is
    kept (a bind mount of its ns file; it may not exist yet)."""
    return MNT_DIR / Path(netns).name


def netns_path(name: str | Path) -> Path:
    """The file of network namespace `name` (a name under NETNS_DIR, or a path as is)."""
    p = Path(name)
    return p if p.is_absolute() else NETNS_DIR / p


def nsenter_argv(
    argv: Sequence[str],
    *,
    net: str | Path,
    uts: str | Path | None = None,
    mnt: str | Path | None = None,
    wd: str | Path | None = None,
) -> list[str]:
    """The command line that runs `argv` inside network namespace `net` (a name or a path)
    and, if given, the UTS namespace file `uts` (the instance's hostname) and the mount
    namespace file `mnt` (the instance's volumes), in directory `wd`.

    nsenter without --fork execs the command itself once in the namespaces (network and
    UTS apply at once), so the pid of the process started is the command's own. Entering a
    mount namespace resets the working directory to its root: `wd` keeps the caller's.
    """
    out = ["nsenter", f"--net={netns_path(net)}"]
    if uts is not None:
        out.append(f"--uts={uts}")
    if mnt is not None:
        out.append(f"--mount={mnt}")
        if wd is not None:
            out.append(f"--wd={wd}")
    return [*out, "--", *argv]
