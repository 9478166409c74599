"""Running a command inside namespaces: where named network namespaces live, and the
`nsenter` command line. Leaf module (pure; no ctypes, so the CLI can import it cheaply)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")  # where `ip netns` (and we) keep named network namespaces


def netns_path(name: str | Path) -> Path:
    """The file of network namespace `name` (a name under NETNS_DIR, or a path as is)."""
    p = Path(name)
    return p if p.is_absolute() else NETNS_DIR / p


def nsenter_argv(
    argv: Sequence[str], *, net: str | Path, uts: str | Path | None = None
) -> list[str]:
    """The command line that runs `argv` inside network namespace `net` (a name or a path)
    and, if given, the UTS namespace file `uts` (the instance's hostname).

    nsenter without --fork execs the command itself once in the namespaces (network and
    UTS apply at once), so the pid of the process started is the command's own.
    """
    out = ["nsenter", f"--net={netns_path(net)}"]
    if uts is not None:
        out.append(f"--uts={uts}")
    return [*out, "--", *argv]
