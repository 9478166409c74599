"""Shell completion for `yunhan` (bash, zsh, fish).

`yunhan --show-completion [SHELL]` prints a script and `--install-completion [SHELL]`
installs it where the shell finds it (the same flags typer offers). The script calls
`yunhan` back with $_YUNHAN_COMPLETE set and the command line in $COMP_WORDS/$COMP_CWORD;
the candidates come from the command description (yunhan.cli.command): subcommands,
options, choices, and the names of the resources an argument refers to, fetched from the
API with a short timeout (nothing when it does not answer: completion must never hang).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from yunhan.cli.command import Arg, Cmd, Group, Opt
from yunhan.errors import YunhanError

if TYPE_CHECKING:
    from yunhan.cli.client import Transport

SHELLS = ("bash", "zsh", "fish")
NAME_TIMEOUT = 2.0
Names = Callable[[str], list[str]]  # resource kind -> the names the caller may see
_COLLECTION = {"vpc": "vpcs", "subnet": "subnets", "instance": "instances", "zone": "zones",
               "host": "hosts", "project": "projects", "route_table": "route-tables",
               "natgw": "natgws", "eip": "eips",
               "security_group": "security-groups", "network_acl": "acls",
               "flow_log": "flow-logs", "vip": "vips", "patch": "patches",
               "function": "functions", "volume": "volumes"}  # fmt: skip

_SCRIPTS = {
    "bash": """\
_yunhan_completion() {
    local IFS=$'\\n'
    COMPREPLY=( $(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD \\
        _YUNHAN_COMPLETE=bash yunhan 2>/dev/null) )
}
complete -o default -F _yunhan_completion yunhan
""",
    "zsh": """\
#compdef yunhan
_yunhan() {
    local -a candidates
    candidates=("${(@f)$(env COMP_WORDS="${words[*]}" COMP_CWORD=$((CURRENT-1)) \\
        _YUNHAN_COMPLETE=zsh yunhan 2>/dev/null)}")
    compadd -a candidates
}
compdef _yunhan yunhan
""",
    "fish": """\
function __yunhan_complete
    set -l words (commandline -cpo) (commandline -ct)
    env COMP_WORDS="$words" COMP_CWORD=(math (count $words) - 1) \\
        _YUNHAN_COMPLETE=fish yunhan 2>/dev/null
end
complete -c yunhan -f -a "(__yunhan_complete)"
""",
}


def script(shell: str) -> str:
    """The completion script for `shell`."""
    return _SCRIPTS[shell]


def candidates(
    root: Group, words: list[str], cword: int, *, names: Names | None = None
) -> list[str]:
    """What may come at position `cword` of `words` (words[0] is the program)."""
    current = words[cword] if cword < len(words) else ""
    node: Cmd | Group = root
    opts: dict[str, Opt] = {f: p for p in root.params if isinstance(p, Opt) for f in p.flags}
    positional = 0
    i = 1
    while i < cword:
        w = words[i]
        if w == "--":
            return []  # `exec NAME -- CMD`: the command's own words
        if w.startswith("-"):
            opt = opts.get(w.split("=", 1)[0])
            if opt is not None and opt.kind is not bool and "=" not in w:
                i += 1  # its value
        elif isinstance(node, Group) and (sub := node.find(w)) is not None:
            node = sub
            opts.update({f: p for p in sub.params if isinstance(p, Opt) for f in p.flags})
            positional = 0
        else:
            positional += 1
        i += 1
    prev = words[cword - 1] if cword >= 1 else ""
    opt = opts.get(prev)
    if opt is not None and opt.kind is not bool:  # completing an option's value
        if opt.choices:
            return [c for c in opt.choices if c.startswith(current)]
        return _names(opt.complete, current, names)
    if current.startswith("-"):
        return sorted(f for f in opts if f.startswith(current) and f.startswith("--"))
    if isinstance(node, Group):
        return [c.name for c in node.commands if not c.hidden and c.name.startswith(current)]
    args = [p for p in node.params if isinstance(p, Arg)]
    if positional < len(args):
        return _names(args[positional].complete, current, names)
    return []


class _NameSource:
    """Resource names from the API, for completion (errors mean no names)."""

    def __init__(self, env: Mapping[str, str], transport: Transport | None) -> None:
        self._env = env
        self._transport = transport

    def __call__(self, kind: str) -> list[str]:
        from yunhan.cli import config
        from yunhan.cli.client import Client

        try:
            creds = config.resolve(self._env.get("YUNHAN_ENDPOINT"), self._env.get("YUNHAN_TOKEN"))
            with Client(
                creds.endpoint, creds.token, transport=self._transport, timeout=NAME_TIMEOUT
            ) as c:
                return [str(i["name"]) for i in c.items(f"/v1/{_COLLECTION[kind]}")]
        except (YunhanError, KeyError, TypeError, AttributeError):
            return []


def _names(kind: str | None, current: str, names: Names | None) -> list[str]:
    if kind is None or names is None:
        return []
    return sorted(n for n in names(kind) if n.startswith(current))


def complete(root: Group, env: Mapping[str, str], *, transport: Transport | None = None) -> int:
    """Answer the completion script: one candidate a line on stdout."""
    words = env.get("COMP_WORDS", "").split()
    try:
        cword = int(env.get("COMP_CWORD", str(len(words))))
    except ValueError:
        cword = len(words)
    for c in candidates(root, words, cword, names=_NameSource(env, transport)):
        sys.stdout.write(c + "\n")
    return 0


def _detect_shell() -> str | None:
    name = Path(os.environ.get("SHELL", "")).name
    return name if name in SHELLS else None


def install(shell: str, home: Path | None = None) -> Path:
    """Write the script where `shell` loads it from; returns that file."""
    home = home or Path.home()
    if shell == "fish":
        path = home / ".config" / "fish" / "completions" / "yunhan.fish"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script(shell))
        return path
    if shell == "zsh":
        path = home / ".zfunc" / "_yunhan"
        rc, line = home / ".zshrc", "fpath+=~/.zfunc; autoload -Uz compinit; compinit"
    else:
        path = home / ".bash_completions" / "yunhan.sh"
        rc, line = home / ".bashrc", f"source {path}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script(shell))
    existing = rc.read_text() if rc.exists() else ""
    if line not in existing:
        with rc.open("a") as f:
            f.write(("" if existing.endswith("\n") or not existing else "\n") + line + "\n")
    return path


def command(flag: str, rest: list[str]) -> int:
    """`--show-completion [SHELL]` and `--install-completion [SHELL]`."""
    shell = rest[0] if rest else _detect_shell()
    if shell not in SHELLS:
        sys.stderr.write(
            f"error: name the shell: yunhan {flag} {{{','.join(SHELLS)}}} "
            f"(got {shell or 'none from $SHELL'})\n"
        )
        return 1
    if flag == "--show-completion":
        sys.stdout.write(script(shell))
        return 0
    path = install(shell)
    sys.stdout.write(f"{shell} completion installed in {path}; open a new shell to use it\n")
    return 0
