"""How a `yunhan` command is described, parsed and run: the leaf every command module uses.

A command is plain data first (`Cmd`, `Group`, `Opt`, `Arg`): the same description builds
the argparse parser, answers shell completion and prints help. Command modules (resources,
lab, daemons, hotpatch) only import this module; `main` assembles them. Nothing heavy is
imported here: a command's handler imports what it needs when it runs, so that
`yunhan --help` and `yunhan vpc list` start in a bare interpreter's time plus a few
milliseconds (bench/cli_start.py).

Plain NamedTuples and argparse, not dataclasses or a framework: `dataclasses` alone
imports `inspect` (~10 ms).

Why not typer: typer 0.29.2 coerces every non-boolean parameter through a pydantic
TypeAdapter, which imports pydantic and builds a schema on each run (~0.3 s of CPU before a
command does anything); the CLI's budget for a whole `vpc list` is 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from yunhan.errors import YunhanError

if TYPE_CHECKING:
    from yunhan.cli.client import Client, Transport

Handler = Callable[["Ctx"], None]


class Opt(NamedTuple):
    """An option: `--flag VALUE`, a boolean `--flag` (kind bool), or repeatable (many)."""

    flags: tuple[str, ...]
    dest: str
    help: str
    kind: Callable[[str], Any] | type = str
    default: Any = None
    required: bool = False
    many: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    complete: str | None = None  # a resource kind whose names complete the value


class Arg(NamedTuple):
    """A positional argument; `rest` takes every word after it (`exec NAME -- CMD …`),
    `many` one or more words (options may follow: `set-sg NAME SG… --wait`)."""

    dest: str
    help: str
    metavar: str | None = None
    kind: Callable[[str], Any] | type = str
    optional: bool = False
    rest: bool = False
    complete: str | None = None
    default: Any = None
    many: bool = False


Param = Opt | Arg


class Cmd(NamedTuple):
    """A leaf command: its parameters and the handler that runs it."""

    name: str
    help: str
    run: Handler
    params: tuple[Param, ...] = ()
    hidden: bool = False


class Group(NamedTuple):
    """A command with subcommands (`yunhan vpc …`)."""

    name: str
    help: str
    commands: tuple[Cmd | Group, ...]
    params: tuple[Param, ...] = ()
    hidden: bool = False

    def find(self, name: str) -> Cmd | Group | None:
        return next((c for c in self.commands if c.name == name), None)


class UsageError(Exception):
    """Bad command-line usage: argparse prints usage and exits 2."""


class Ctx:
    """What a handler gets: its parsed arguments, the root options, and the API client."""

    def __init__(self, args: dict[str, Any], transport: Transport | None = None) -> None:
        self.args = args
        self.transport = transport
        self.clients: list[Client] = []

    def __getitem__(self, key: str) -> Any:
        return self.args[key]

    def client(self) -> Client:
        """A client for the configured endpoint (flags, then environment, then config)."""
        from yunhan.cli import config
        from yunhan.cli.client import Client

        creds = config.resolve(self.args.get("endpoint"), self.args.get("token"))
        c = Client(creds.endpoint, creds.token, transport=self.transport)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()


def summary(text: str) -> str:
    return text.strip().split("\n", 1)[0]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    # An explicit width: argparse would otherwise import shutil (and with it zlib, bz2 and
    # lzma, ~10 ms) for the terminal size, even to parse.
    def __init__(self, prog: str) -> None:
        try:
            width = int(os.environ.get("COLUMNS") or os.get_terminal_size(1).columns)
        except (OSError, ValueError):
            width = 100
        super().__init__(prog, max_help_position=30, width=max(width, 40) - 2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def _add_param(p: argparse.ArgumentParser, param: Param) -> None:
    if isinstance(param, Arg):
        kw: dict[str, Any] = {"help": param.help, "metavar": param.metavar or param.dest.upper()}
        if param.rest:
            kw["nargs"] = argparse.REMAINDER
        elif param.many:
            kw["nargs"] = "+"
        elif param.optional:
            kw["nargs"] = "?"
        if not param.rest:
            kw["type"] = param.kind
        p.add_argument(param.dest, **kw)
        return
    if param.kind is bool:
        p.add_argument(
            *param.flags, dest=param.dest, action="store_true", default=False, help=param.help
        )
        return
    help_ = param.help
    if param.default is not None and not param.many:
        help_ += f" (default {param.default})"
    p.add_argument(
        *param.flags,
        dest=param.dest,
        help=help_,
        type=param.kind,
        default=[] if param.many else param.default,
        required=param.required,
        action="append" if param.many else "store",
        choices=param.choices,
        metavar=param.metavar or ("{" + ",".join(param.choices) + "}" if param.choices else None),
    )


def _usage_error(prog: str, message: str) -> SystemExit:
    sys.stderr.write(f"usage: {prog} …  (`{prog} --help`)\nerror: {message}\n")
    return SystemExit(2)


def _group_help(prog: str, group: Group) -> str:
    opts = [*(p for p in group.params if isinstance(p, Opt)), _HELP]
    lines = [f"usage: {prog} [OPTIONS] COMMAND ...", "", group.help, "", "options:"]
    heads = [", ".join(o.flags) + ("" if o.kind is bool else f" {o.dest.upper()}") for o in opts]
    width = max(len(h) for h in heads)
    lines += [f"  {h:<{width}}  {o.help}" for h, o in zip(heads, opts, strict=True)]
    shown = [c for c in group.commands if not c.hidden]
    width = max(len(c.name) for c in shown)
    lines += ["", "commands:", *(f"  {c.name:<{width}}  {summary(c.help)}" for c in shown)]
    lines += ["", f"`{prog} COMMAND --help` tells more about each."]
    return "\n".join(lines) + "\n"


_HELP = Opt(("-h", "--help"), "help", "show this help and exit", bool)


def _take_group_options(
    prog: str, group: Group, argv: list[str], values: dict[str, Any]
) -> list[str]:
    """Consume `group`'s own options from the front of argv (they come before its
    subcommand, as with click); returns the rest."""
    flags = {f: p for p in group.params if isinstance(p, Opt) for f in p.flags}
    for p in group.params:
        values.setdefault(p.dest, [] if isinstance(p, Opt) and p.many else p.default)
    while argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        word, _, inline = argv.pop(0).partition("=")
        opt = flags.get(word)
        if opt is None:
            raise _usage_error(prog, f"no such option: {word}")
        if opt.kind is bool:
            values[opt.dest] = True
            continue
        if not inline:
            if not argv:
                raise _usage_error(prog, f"{word} needs a value")
            inline = argv.pop(0)
        values[opt.dest] = inline
    return argv


def build_parser(cmd: Cmd, prog: str) -> argparse.ArgumentParser:
    """The argparse parser of one leaf command (built only for the command that runs)."""
    parser = _Parser(prog=prog, description=cmd.help, formatter_class=_Formatter)
    for param in cmd.params:
        _add_param(parser, param)
    return parser


def resolve(root: Group, argv: Sequence[str]) -> tuple[Cmd | Group, str, list[str], dict[str, Any]]:
    """Walk the groups named at the front of argv: (the node reached, its prog, the words
    left for it, the group options seen on the way). Raises SystemExit(2) on a bad word."""
    node: Cmd | Group = root
    prog = root.name
    rest = list(argv)
    values: dict[str, Any] = {}
    while isinstance(node, Group):
        rest = _take_group_options(prog, node, rest, values)
        if not rest or rest[0] in ("-h", "--help"):
            break
        sub = node.find(rest[0])
        if sub is None:
            known = ", ".join(c.name for c in node.commands if not c.hidden)
            raise _usage_error(prog, f"no command {rest[0]!r} (commands: {known})")
        node, prog, rest = sub, f"{prog} {sub.name}", rest[1:]
    return node, prog, rest, values


# "-90s", "-5m": a relative time given as an option's value. argparse takes a word that
# starts with "-" and is not a plain negative number for an option, so `--to -90s` would be
# refused; glued to its option (`--to=-90s`) it is a value. No option starts with "-<digit>".
_RELATIVE = re.compile(r"^-[0-9]+[smhd]$")


def _glue_relative(words: list[str]) -> list[str]:
    out: list[str] = []
    for w in words:
        if _RELATIVE.match(w) and out and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={w}"
        else:
            out.append(w)
    return out


def run(root: Group, argv: Sequence[str], *, transport: Transport | None = None) -> int:
    """Parse `argv`, run the command, and turn a YunhanError into one line on stderr + 1."""
    try:
        node, prog, rest, values = resolve(root, argv)
        if isinstance(node, Group):
            # `yunhan`, `yunhan vpc`, `… --help`: what the group has (exit 2 when a
            # subcommand was due but missing, as click does).
            sys.stdout.write(_group_help(prog, node))
            return 0 if rest or node is root else 2
        values.update(vars(build_parser(node, prog).parse_args(_glue_relative(rest))))
    except SystemExit as exc:
        return int(exc.code or 0)
    ctx = Ctx(values, transport=transport)
    try:
        node.run(ctx)
    except YunhanError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"error: {exc.message}\n")
        return 1
    except SystemExit as exc:  # a command's own status (`function invoke` of a failing one)
        sys.stdout.flush()
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        sys.stderr.write(f"{exc.code}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        ctx.close()
    return 0


def echo(text: str = "") -> None:
    """One line on stdout."""
    sys.stdout.write(text + "\n")


def warn(text: str) -> None:
    """One line on stderr."""
    sys.stderr.write(text + "\n")
