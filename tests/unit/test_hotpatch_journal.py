"""The hot patch journal: round trip, stacking, conflicts, corruption, location."""

from __future__ import annotations

from pathlib import Path

import pytest

from yunhan.errors import Conflict, HotpatchError
from yunhan.hotpatch import journal
from yunhan.hotpatch.journal import PatchRecord, Site
from yunhan.hotpatch.manifest import Manifest, Replacement, parse_records


def site(symbol: str, at: int, new: str = "e900000000", original: str = "4889e5c3c3") -> Site:
    return Site(
        symbol=symbol,
        func_addr=at,
        write_addr=at,
        original=original,
        new=new,
        checksum=journal.checksum(original),
        new_func=0x7F00_0000_0000,
        old_ranges=[(at, at + 32)],
        old_sites=[at + 9],
        new_ranges=[(0x7F00_0000_0000, 0x7F00_0000_0010)],
        new_sites=[],
    )


def record(pid: str, *sites: Site, state: str = "applied") -> PatchRecord:
    return PatchRecord(pid, "d", "/p.yhp", "/bin/t", "b1d", state, sites=list(sites))


def test_round_trip_equals_original(tmp_path: Path) -> None:
    jr = journal.load(tmp_path, 42, 1000)
    jr.patches = [record("a", site("f", 0x1000)), record("b", site("g", 0x2000), state="failed")]
    jr.save()
    again = journal.load(tmp_path, 42, 1000)
    assert again == jr
    assert [p.patch_id for p in again.stack] == ["a"]
    assert journal.load(tmp_path, 42, 1001).patches == []  # same pid, another process


def test_stacking_at_the_same_entry_is_allowed_overlap_is_a_conflict(tmp_path: Path) -> None:
    jr = journal.load(tmp_path, 1, 1)
    jr.patches = [record("v2", site("f", 0x1000))]
    jr.check_new("v3", [site("f", 0x1000)])
    with pytest.raises(Conflict, match="overlaps the jump of patch v2"):
        jr.check_new("x", [site("f+2", 0x1002)])
    with pytest.raises(Conflict, match="already applied"):
        jr.check_new("v2", [site("h", 0x5000)])


def test_only_the_top_of_a_stack_rolls_back(tmp_path: Path) -> None:
    jr = journal.load(tmp_path, 1, 1)
    v2, v3, other = (
        record("v2", site("f", 0x1000)),
        record("v3", site("f", 0x1000)),
        record("o", site("g", 0x3000)),
    )
    jr.patches = [v2, v3, other]
    with pytest.raises(Conflict, match="v3 is stacked on f above v2"):
        jr.check_top(v2)
    jr.check_top(v3)
    jr.check_top(other)
    assert jr.top_site_at(0x1000) is v3.sites[0]


def test_corrupt_record_is_detected(tmp_path: Path) -> None:
    jr = journal.load(tmp_path, 7, 7)
    jr.patches = [record("a", site("f", 0x1000))]
    jr.save()
    jr.path.write_text(jr.path.read_text().replace("4889e5c3c3", "4889e5c3c4"))
    with pytest.raises(HotpatchError, match="corrupt"):
        journal.load(tmp_path, 7, 7)


def test_default_dir_follows_yunhan_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YUNHAN_HOME", raising=False)
    assert journal.default_dir() == Path("/var/lib/yunhan/hotpatch")
    monkeypatch.setenv("YUNHAN_HOME", "/srv/yh")
    assert journal.default_dir() == Path("/srv/yh/hotpatch")


def test_manifest_round_trip_and_records() -> None:
    m = Manifest("fix", "/usr/bin/t", "t", "ab12", (Replacement("f", "f2", 0x1130, 23),), "d")
    assert Manifest.from_json(m.to_json()) == m
    assert parse_records(b"f\0f2\0g\0g2\0") == [("f", "f2"), ("g", "g2")]


def test_stacking_guards_cover_the_patch_below(tmp_path: Path) -> None:
    jr = journal.load(tmp_path, 1, 1)
    v2 = site("f", 0x1000)
    jr.patches = [record("v2", v2)]
    (guard,) = jr.apply_guards([site("f", 0x1000)])
    assert set(guard.ranges) == {(0x1000, 0x1020), *v2.new_ranges}
    (fresh,) = jr.apply_guards([site("g", 0x3000)])
    assert fresh.ranges == ((0x3000, 0x3020),)
    back = v2.rollback_guard()
    assert set(back.ranges) == {(0x1000, 0x1020), *v2.new_ranges}
