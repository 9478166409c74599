"""What an agent writes down of its host's instances, for when the API is away.

Each agent keeps `<its state dir>/instances.json` up to date after every apply: the
instances its host carries, where their namespaces are, the phase it last reported. The
CLI reads these files when the API does not answer (`yunhan instance exec`, `instance list
--local`), on a lab machine (every agent of the lab region) or a real host (its agent).
Leaf module: no import of ours beyond the standard library, so the CLI stays quick.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

VIEW_FILE = "instances.json"
HOST_AGENT_DIR = Path("/var/lib/yunhan/agent")  # `yunhan agent`'s default --state-dir


def write(state_dir: Path, host: str, revision: int, instances: list[dict[str, Any]]) -> None:
    """Replace the view of `state_dir` (atomically: a reader never sees half a file)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / VIEW_FILE
    tmp = path.with_name(f"{VIEW_FILE}.{os.getpid()}.tmp")
    body = {"host": host, "revision": revision, "written_at": time.time()}
    tmp.write_text(json.dumps({**body, "instances": instances}, indent=1) + "\n")
    tmp.replace(path)


def agent_dirs(lab_state_dir: Path | None) -> list[Path]:
    """Where agents of this machine keep their state: the lab region's (when one is
    recorded in `lab_state_dir`) and a real host's agent's default directory."""
    dirs: list[Path] = []
    if lab_state_dir is not None:
        try:
            prefix = json.loads((lab_state_dir / "region.json").read_text())["prefix"]
        except (OSError, ValueError, KeyError, TypeError):
            prefix = None
        if isinstance(prefix, str):
            agents = lab_state_dir / prefix / "agents"
            if agents.is_dir():
                dirs += sorted(d for d in agents.iterdir() if d.is_dir())
    if HOST_AGENT_DIR.is_dir():
        dirs.append(HOST_AGENT_DIR)
    return dirs


def instances(dirs: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every instance the agents of `dirs` wrote down (with `host` and `revision`)."""
    for d in dirs:
        try:
            data = json.loads((d / VIEW_FILE).read_text())
        except (OSError, ValueError):
            continue
        for inst in data.get("instances") or []:
            if isinstance(inst, dict):
                yield {**inst, "host": data.get("host"), "revision": data.get("revision")}


def find(dirs: Iterable[Path], ref: str) -> list[dict[str, Any]]:
    """The instances named `ref` (or whose id it is)."""
    return [i for i in instances(dirs) if ref in (i.get("id"), i.get("name"))]
