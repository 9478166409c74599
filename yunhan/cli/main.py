"""The `yunhan` command: resources over the HTTP API, and the lab region on this machine.

Every resource argument takes a name or an id. Output is a table for people and, with
`-o wide|json|yaml` (or `--json`), more columns or objects for scripts (yunhan.cli.views).
A user error prints one line ("error: …") on stderr and exits 1; `--wait` makes a write
return only once every host it affects has applied it (`GET /v1/converged`).

This module only assembles the command modules (resources, lab, daemons, hotpatch), which
import yunhan.cli.command and never this module. `main(argv, transport=…)` is the whole CLI
as a function: tests run it against the real API app through an in-process transport.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from yunhan.cli import (
    ai,
    check,
    credentials,
    daemons,
    flowlogs,
    functions,
    hybrid,
    lab,
    migrate,
    netconf,
    patches,
    resources,
    routing,
    secgroups,
    trace,
    units,
    vips,
    volumes,
)
from yunhan.cli.command import Group, Opt, run
from yunhan.cli.hotpatch import HOTPATCH

if TYPE_CHECKING:
    from yunhan.cli.client import Transport

COMPLETE_ENV = "_YUNHAN_COMPLETE"  # set by the completion scripts (yunhan.cli.completion)
# `instance set-sg` lives with the security groups; the instance group gains it here.
_RESOURCES = tuple(
    c._replace(commands=(*c.commands, secgroups.SET_SG))
    if isinstance(c, Group) and c.name == "instance"
    else c
    for c in resources.COMMANDS
)
ROOT = Group(
    "yunhan",
    "Yunhan: a cloud operating system. Manage VPCs, subnets and instances, and run an "
    "all-in-one lab region on this machine.\n\n"
    "Shell completion: `yunhan --install-completion` (bash, zsh, fish), or\n"
    "`yunhan --show-completion SHELL` to print the script.",
    (
        *_RESOURCES,
        *routing.COMMANDS,
        *hybrid.COMMANDS,
        *secgroups.COMMANDS,
        *flowlogs.COMMANDS,
        *vips.COMMANDS,
        *volumes.COMMANDS,
        *patches.COMMANDS,
        *functions.COMMANDS,
        *ai.COMMANDS,
        *trace.COMMANDS,
        *check.COMMANDS,
        *netconf.COMMANDS,
        *migrate.COMMANDS,
        *credentials.COMMANDS,
        *lab.COMMANDS,
        HOTPATCH,
        *daemons.COMMANDS,
        *units.COMMANDS,
    ),
    params=(
        Opt(
            ("--endpoint",),
            "endpoint",
            "API endpoint (env YUNHAN_ENDPOINT, else ~/.config/yunhan/config.json)",
        ),
        Opt(("--token",), "token", "bearer token (env YUNHAN_TOKEN, else the config file)"),
    ),
)


def main(argv: Sequence[str] | None = None, *, transport: Transport | None = None) -> int:
    """Run `yunhan ARGV…`; returns the exit code. `transport` carries the API calls
    (default: HTTP to the configured endpoint)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if COMPLETE_ENV in os.environ:
        from yunhan.cli import completion

        return completion.complete(ROOT, os.environ, transport=transport)
    if args[:1] in (["--show-completion"], ["--install-completion"]):
        from yunhan.cli import completion

        return completion.command(args[0], args[1:])
    return run(ROOT, args, transport=transport)


def app() -> None:
    """The console script. Output cut short by its reader (`yunhan status | head -3`)
    ends it quietly, as other Unix tools do, not with a traceback."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that fails not.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, as a shell reports a tool killed by it
    sys.exit(code)
