"""The function resource's pure rules: the effective traffic split the router reads,
`--traffic` parsing, and the source archive packed by the CLI (reproducible) and read
back by the API (checked member by member)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from yunhan.errors import ValidationError
from yunhan.functions.bundle import check_bundle, pack, read_sources
from yunhan.functions.catalog import check_traffic, parse_traffic, traffic_of


def test_traffic_of_is_the_split_or_all_to_the_latest() -> None:
    assert traffic_of({"traffic": None}, 3) == {3: 100}
    assert traffic_of({}, 1) == {1: 100}
    assert traffic_of({"traffic": {"10": 10, "2": 90}}, 10) == {2: 90, 10: 10}
    assert traffic_of({"traffic": {"1": 100, "2": 0}}, 2) == {1: 100}
    assert traffic_of({"traffic": None}, 0) == {}


def test_parse_and_check_traffic() -> None:
    assert parse_traffic("v1=90,v2=10") == {"1": 90, "2": 10}
    assert parse_traffic(" 1=50%, v3=50 ") == {"1": 50, "3": 50}
    with pytest.raises(ValidationError, match="VERSION=PERCENT"):
        parse_traffic("v1:90")
    assert check_traffic({"v2": 10, "1": 90}, {1, 2}, "f") == {"1": 90, "2": 10}
    with pytest.raises(ValidationError, match="no version 4"):
        check_traffic({"4": 100}, {1, 2}, "f")
    with pytest.raises(ValidationError, match="sum to 110%"):
        check_traffic({"1": 100, "2": 10}, {1, 2}, "f")


def test_pack_is_reproducible_and_reads_back(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "main.py").write_text("def handler(e, c):\n    return 1\n")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    a = pack(tmp_path)
    assert pack(tmp_path) == a  # same files, same bytes, same sha256
    assert sorted(read_sources(a)) == ["main.py", "pkg/__init__.py"]
    assert sorted(check_bundle(a, "main.handler")) == ["main.py", "pkg/__init__.py"]
    (tmp_path / "link.py").symlink_to(tmp_path / "main.py")
    with pytest.raises(ValidationError, match="symbolic link"):
        pack(tmp_path)


def test_archive_members_that_are_not_plain_files_are_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("main.py")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        tar.addfile(link)
    with pytest.raises(ValidationError, match="not a regular file"):
        read_sources(buf.getvalue())
