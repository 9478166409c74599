"""Folding a journal into base.img (unprotecting a volume): the volume reads the same after,
from base.img alone, and the journal's files are gone."""

from __future__ import annotations

import random
from pathlib import Path

from yunhan.volume import cdpd as cd
from yunhan.volume import fold
from yunhan.volume import journal as j

SIZE = 4 << 20


def test_a_folded_volume_reads_the_same_from_base_alone(tmp_path: Path) -> None:
    d = cd.create_volume(tmp_path / "v", SIZE)
    (d / j.BASE_FILE).write_bytes(bytes([7]) * SIZE)  # an old base with content
    rng = random.Random(5)
    t = 1_000
    with j.Writer(d, SIZE) as w:
        for _ in range(200):
            t += 1
            blk = rng.randrange(SIZE // j.BLOCK - 4)
            if rng.random() < 0.2:
                w.zero(blk * j.BLOCK, 2 * j.BLOCK, t)
            else:
                w.write(blk * j.BLOCK, rng.randbytes(j.BLOCK * rng.randint(1, 3)), t)
        w.sync()
    before = j.materialise(d, j.index_at(d, SIZE))
    written = fold.fold_all(d, SIZE)
    assert written > 0
    assert fold.journal_files(d) == []
    assert (d / j.BASE_FILE).read_bytes() == before
    # and as a journal: nothing left to replay, base is the whole volume
    assert j.materialise(d, j.index_at(d, SIZE)) == before


def test_folding_an_empty_journal_changes_nothing(tmp_path: Path) -> None:
    d = cd.create_volume(tmp_path / "v", SIZE)
    assert fold.fold_all(d, SIZE) == 0
    assert (d / j.BASE_FILE).read_bytes() == bytes(SIZE)
