"""The CLI's own YAML, shell completion and progress line (no server unless named)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_fixtures import Region, region
from hypothesis import given
from hypothesis import strategies as st

from yunhan.cli import completion, yamlout
from yunhan.cli.main import ROOT, main
from yunhan.cli.progress import Progress, hosts_phrase

__all__ = ["region"]

_scalars = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.floats(allow_nan=False)
)
_plain = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip


@given(_plain)
def test_yaml_round_trips_through_pyyaml(value: Any) -> None:
    assert yaml.safe_load(yamlout.dumps(value)) == value


def test_yaml_keeps_strings_that_look_like_other_things() -> None:
    row = {"a": "yes", "b": "012", "c": "10.0.0.0/16", "d": "null", "e": "a: b", "f": "~"}
    assert yaml.safe_load(yamlout.dumps([row])) == [row]
    assert yamlout.dumps({"name": "prod", "cidrs": []}) == "name: prod\ncidrs: []\n"


def test_completion_of_commands_options_and_choices() -> None:
    def complete(line: str) -> list[str]:
        words = line.split()
        if line.endswith(" "):
            words.append("")
        return completion.candidates(ROOT, words, len(words) - 1, names=lambda kind: [])

    assert complete("yunhan v") == ["vpc", "vip", "volume"]
    assert "server" not in complete("yunhan ")  # hidden
    assert complete("yunhan vpc ") == ["create", "list", "show", "add-cidr", "remove-cidr",
                                       "delete"]  # fmt: skip
    assert complete("yunhan vpc list -o ") == ["table", "wide", "json", "yaml"]
    assert complete("yunhan vpc list -o y") == ["yaml"]
    assert "--wait" in complete("yunhan vpc create prod --")
    assert complete("yunhan --endpoint http://x vpc l") == ["list"]
    assert complete("yunhan instance exec a -- ") == []


def test_completion_of_resource_names_from_the_api(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("vpc", "create", "pre", "--cidr", "10.1.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")

    def complete(line: str) -> list[str]:
        env = {"_YUNHAN_COMPLETE": "bash", "COMP_WORDS": line,
               "COMP_CWORD": str(len(line.split()) - (0 if line.endswith(" ") else 1))}  # fmt: skip
        region.capsys.readouterr()
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            assert main([], transport=region.transport) == 0
        return region.capsys.readouterr().out.splitlines()

    assert complete("yunhan vpc show pr") == ["pre", "prod"]
    assert complete("yunhan subnet create db --vpc ") == ["pre", "prod"]
    assert complete("yunhan instance create a --subnet w") == ["web"]
    assert complete("yunhan instance create a --zone ") == ["az1", "az2"]


def test_completion_scripts_and_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for shell in completion.SHELLS:
        assert main(["--show-completion", shell]) == 0
        assert "_YUNHAN_COMPLETE" in capsys.readouterr().out
    bash = completion.script("bash")
    ok = subprocess.run(["bash", "-n"], input=bash, text=True, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    path = completion.install("bash", home=tmp_path)
    assert path.read_text() == bash
    completion.install("bash", home=tmp_path)  # twice: one line in .bashrc
    assert (tmp_path / ".bashrc").read_text() == f"source {path}\n"
    assert main(["--show-completion", "tcsh"]) == 1
    assert "name the shell" in capsys.readouterr().err


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_after_a_second_on_a_terminal_only() -> None:
    clock, tty = FakeClock(), Tty()
    with Progress("waiting for revision 7 to be applied", stream=tty, clock=clock,
                  tick=3600) as p:  # fmt: skip
        p.draw()
        assert tty.getvalue() == ""  # not yet a second
        clock.now += 2.4
        p.say(hosts_phrase(["az1-h1", "az1-h2", "az2-h1"], 7))
        p.draw()
        assert tty.getvalue().endswith(
            "waiting for 3 hosts to apply revision 7: az1-h1, az1-h2, az2-h1 (2s)"
        )
    assert tty.getvalue().endswith("\r\x1b[K")  # erased at the end
    pipe = io.StringIO()
    with Progress("waiting", stream=pipe, clock=clock, tick=3600) as p:
        clock.now += 5
        p.draw()
    assert pipe.getvalue() == ""  # scripts see nothing
    assert hosts_phrase([f"h{i}" for i in range(6)], 3).endswith("h0, h1, h2, h3, …")


def test_help_and_list_import_nothing_heavy() -> None:
    code = (
        "import sys; from yunhan.cli.main import main; main(['--help']); "
        "main(['--endpoint', 'http://127.0.0.1:1', '--token', 't', 'vpc', 'list']); "
        "heavy = {'httpx', 'rich', 'pydantic', 'typer', 'click', 'fastapi', 'capstone', "
        "'elftools', 'pyroute2', 'sqlalchemy', 'yaml', 'dataclasses', 'shutil'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.splitlines()[-1] == "[]", out.stdout


def test_output_cut_short_by_its_reader_ends_quietly() -> None:
    # `yunhan … | head -1`: the reader goes away mid-output (more than a pipe holds);
    # no traceback, SIGPIPE's exit status.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from yunhan.cli import main\n"
        "def rows():\n"
        "    for _ in range(1_000_000):\n"
        "        print('row', flush=True)  # as the CLI writes: line by line, as it goes\n"
        "    return 0\n"
        "main.main = rows\n"
        "main.app()\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline() == b"row\n"
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(30) == 141, err
    assert "Traceback" not in err
