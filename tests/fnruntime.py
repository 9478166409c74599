"""A function runtime for the tests that need a real one (tests/integration)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from yunhan.functions import FunctionRuntime


@contextlib.contextmanager
def running(run_prefix: str, tag: str) -> Iterator[FunctionRuntime]:
    """A started runtime named `<run prefix><tag>`; stopped and its state dir removed
    after, and no cgroup of it left (asserted)."""
    state = Path(tempfile.mkdtemp(prefix=f"{run_prefix}-{tag}-"))
    runtime = FunctionRuntime(state, f"{run_prefix}{tag}")
    try:
        runtime.start()
        yield runtime
    finally:
        runtime.stop()
        shutil.rmtree(state, ignore_errors=True)
    assert not runtime.layout.groups(runtime.prefix)
