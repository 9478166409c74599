"""The columns of the data-plane matrices (dataplane, routing, security groups): the fake
driver, the kernel path, and the kernel path with the tc-BPF fast path beside it
(docs/datapath.md). Each module's `world` fixture is parametrised with COLUMNS, so every
row must give the same answer in all three."""

from __future__ import annotations

import pytest

COLUMNS = [
    "fake",
    pytest.param("linux", marks=pytest.mark.root),
    pytest.param("fast", marks=pytest.mark.root),
]
KERNEL = ("linux", "fast")  # the columns on real namespaces (the fast path is a kernel's too)
TAG = {"fake": "f", "linux": "l", "fast": "x"}  # in the run prefix: columns never share names


def dataplane_args(column: str) -> dict[str, str]:
    """The DataPlane driver and datapath of a column."""
    return {
        "driver": "fake" if column == "fake" else "linux",
        "datapath": "fast" if column == "fast" else "kernel",
    }
