"""Clone in constant time: how long until a clone of a volume at a given second is readable.

For each size (default 1 GiB and 4 GiB): a volume made as the agent makes it (sparse base,
ext4), served by yunhan-cdpd in journal mode, gets --writes-mib of random 4 KiB writes
(half before a whole second T, half after; its cdpd keeps running, as a source in use
would). Then, --rounds times: `VolumeDir.clone_from(src, T)` (the seq of T from the journal,
a sparse base and a parent file), a cdpd on the clone, and the first O_DIRECT read of its
volume file, timed from the call to the read's return (`ready`). The clone's first round is
also timed until its background copy is done (`fill`), and spot-checked against the
journal (`journal.read_blocks` of the source at T: superblock, journaled blocks, random
ones). Median of the rounds per size.

Ends with `RESULT clone_ready_ms_1g=… clone_ready_ms_4g=… fill_s_1g=…` (and fill_s_4g).
Run as root (FUSE), alone on the machine: `python bench/volume_clone.py`. Everything lives
in a temporary directory with the prefix yhclone-bench and is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from yunhan.polling import poll_until
from yunhan.volume import cdpd as cd
from yunhan.volume import journal as j
from yunhan.volume.volumedir import VolumeDir

GIB = 1 << 30
BLK = j.BLOCK


def _write_random(c: cd.Cdpd, size: int, nbytes: int, rnd: random.Random) -> list[int]:
    fd = os.open(c.volume_file, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BLK)
    offs = []
    try:
        for _ in range(nbytes // BLK):
            off = rnd.randrange(size // BLK) * BLK
            buf[:] = rnd.randbytes(BLK)
            os.pwritev(fd, [buf], off)
            offs.append(off)
    finally:
        os.close(fd)
    return offs


def clone_ready(
    src: VolumeDir, dst: VolumeDir, at_ns: int, mount: Path, name: str
) -> tuple[float, tuple[float, float], cd.Cdpd]:
    """Seconds from `dst.clone_from(src, at_ns)` to the return of the first read of the
    clone's volume file; of which the clone's directory and cdpd's start; and the clone's
    running cdpd (the caller stops it)."""
    t0 = time.monotonic()
    g1 = dst.clone_from(src, at_ns)
    t1 = time.monotonic()
    c = cd.Cdpd(g1, mount, size=src.meta().size, name=name)
    c.start()
    t2 = time.monotonic()
    fd = os.open(c.volume_file, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, BLK)
        os.preadv(fd, [buf], 0)
    finally:
        os.close(fd)
    return time.monotonic() - t0, (t1 - t0, t2 - t1), c


def _check(c: cd.Cdpd, src_gen: Path, index: j.Index, blocks: list[int]) -> None:
    fd = os.open(c.volume_file, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BLK)
    try:
        for b in blocks:
            os.preadv(fd, [buf], b * BLK)
            if bytes(buf) != j.read_blocks(src_gen, index, b, 1):
                raise SystemExit(f"clone differs from the source at block {b}")
    finally:
        os.close(fd)


def run_size(work: Path, size: int, writes: int, rounds: int, tag: str) -> tuple[float, float]:
    pool, mnt = work / "pool", work / "mnt"
    src = VolumeDir(pool, f"yhclone-bench-{tag}-src")
    src.create(size)
    made: list[cd.Cdpd] = []
    try:
        parent = cd.Cdpd(
            src.current(),
            mnt / "src",
            size=size,
            name=f"yhclone-bench-{tag}-src",
            durability="flush",
        )
        made.append(parent.start())
        rnd = random.Random(size)
        offs = _write_random(parent, size, writes // 2, rnd)
        at = (time.time_ns() // 10**9 + 1) * 10**9  # the next whole second
        time.sleep(max(0.0, (at - time.time_ns()) / 1e9) + 0.01)
        _write_random(parent, size, writes - writes // 2, rnd)
        gen = src.current()
        index = j.index_at(gen, size, at)
        ready, fill = [], 0.0
        for r in range(rounds):
            name = f"yhclone-bench-{tag}-c{r}"
            dst = VolumeDir(pool, name)
            s, (made_s, start_s), child = clone_ready(src, dst, at, mnt / name, name)
            made.append(child)
            ready.append(s)
            print(
                f"  {tag} round {r}: readable in {s * 1000:.0f} ms (clone_from "
                f"{made_s * 1000:.0f} ms, cdpd start {start_s * 1000:.0f} ms)",
                flush=True,
            )
            if r == 0:
                t0 = time.monotonic()
                if not poll_until(lambda c=child: c.stats().fill == 1.0, 600, max_interval=0.1):
                    raise SystemExit(f"the copy of {name} did not end: {child.stats()}")
                fill = time.monotonic() - t0 + s
                sample = [0, 1, *rnd.sample(range(size // BLK), 200)]
                _check(child, gen, index, sample + [o // BLK for o in offs[:200]])
            child.stop()
        return statistics.median(ready) * 1000, fill
    finally:
        for c in made:
            c.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-gib", default="1,4")
    ap.add_argument("--writes-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="yhclone-bench-"))
    out: dict[str, str] = {}
    try:
        for g in (int(x) for x in args.sizes_gib.split(",")):
            ready_ms, fill_s = run_size(work, g * GIB, args.writes_mib << 20, args.rounds, f"{g}g")
            print(
                f"{g} GiB: clone readable in {ready_ms:.0f} ms (median of {args.rounds}), "
                f"copied in {fill_s:.1f} s",
                flush=True,
            )
            out[f"clone_ready_ms_{g}g"] = f"{ready_ms:.0f}"
            out[f"fill_s_{g}g"] = f"{fill_s:.1f}"
    finally:
        for m in sorted((work / "mnt").glob("*")) if (work / "mnt").exists() else []:
            cd.unmount(m)
        shutil.rmtree(work, ignore_errors=True)
    keys = [k for k in out if k.startswith("clone")] + [k for k in out if k.startswith("fill")]
    print("RESULT " + " ".join(f"{k}={out[k]}" for k in keys))


if __name__ == "__main__":
    main()
