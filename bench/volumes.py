"""Protected volumes against unprotected ones, and the block path against a bare loop device,
with fio (Debian's), in one run (issue 12).

Three block devices of the same size, each a loop device with 4 KiB sectors and direct I/O,
which is how an instance gets its volume:

  raw        a loop device on a plain file: the bound of any block path on this disk
  plain      yunhan-cdpd --mode plain: an unprotected volume (FUSE, writes in place)
  journal    yunhan-cdpd --mode journal --durability strict: a protected volume (every write
             journaled and fdatasynced before it is acknowledged: RPO zero), the default
  jflush     --durability flush: journaled, acknowledged once in the kernel (survives a
             SIGKILL of cdpd; a power cut keeps what the guest's last flush covered, as a
             disk with a write cache does)

Workloads (fio, libaio, direct=1, on the block device, time-bounded): sequential 1 MiB writes
and random 4 KiB writes, each at queue depth 1 and 16. Every round runs each workload on
each device, interleaved, so machine noise hits all alike; the medians of the rounds give
the ratios journal/plain (the issue's targets: >= 0.8 sequential, >= 0.5 random) and
plain/raw (what FUSE costs). A random write on a protected volume that asks for no flush
is still made durable before fio hears of it; the raw and plain devices only promise it
after a flush, so the comparison is against a weaker guarantee.

The clone figure (time until a clone at a given second reads, 1 GiB and 4 GiB volumes)
comes from bench/volume_clone.py, run by this script when it exists.

Ends with `RESULT seq_ratio=… rand_ratio=… clone_ready_ms=…`. Run as root:
`python bench/volumes.py [--rounds 3] [--seconds 5]`. Everything it makes lives under one
temporary directory and is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yunhan.volume import cdpd as cd

SIZE = 2 << 30
WORKLOADS = {
    "seq_qd1": ("write", "1M", 1),
    "seq_qd16": ("write", "1M", 16),
    "rand_qd1": ("randwrite", "4k", 1),
    "rand_qd16": ("randwrite", "4k", 16),
}


def sh(*argv: str) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


@contextmanager
def loop(file: Path) -> Iterator[str]:
    dev = sh(
        "losetup", "-f", "--show", "--direct-io=on", "--sector-size", "4096", str(file)
    ).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def fio(dev: str, rw: str, bs: str, qd: int, seconds: int) -> float:
    """MiB/s written."""
    out = sh(
        "fio", "--name=w", f"--filename={dev}", f"--rw={rw}", f"--bs={bs}",
        f"--iodepth={qd}", "--ioengine=libaio", "--direct=1", f"--runtime={seconds}",
        "--time_based", f"--size={SIZE // 2}", "--randrepeat=0", "--norandommap",
        "--output-format=json",
    )  # fmt: skip
    job = json.loads(out)["jobs"][0]["write"]
    return float(job["bw_bytes"]) / (1 << 20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--no-clone", action="store_true", help="skip bench/volume_clone.py")
    args = ap.parse_args()
    tag = f"yb{secrets.token_hex(2)}"
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix=f"{tag}-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        raw = root / "raw.img"
        with open(raw, "wb") as f:
            f.truncate(SIZE)
        devices = {"raw": stack.enter_context(loop(raw))}
        for name, mode, durability in (
            ("plain", "plain", "strict"),
            ("journal", "journal", "strict"),
            ("jflush", "journal", "flush"),
        ):
            d = cd.create_volume(root / name, SIZE)
            daemon = stack.enter_context(
                cd.Cdpd(
                    d,
                    root / f"{name}-mnt",
                    size=SIZE,
                    name=f"{tag}-{name}",
                    mode=mode,  # type: ignore[arg-type]
                    durability=durability,  # type: ignore[arg-type]
                )
            )
            devices[name] = stack.enter_context(loop(daemon.volume_file))
        for r in range(args.rounds):
            for wl, (rw, bs, qd) in WORKLOADS.items():
                for name, dev in devices.items():
                    mib = fio(dev, rw, bs, qd, args.seconds)
                    results.setdefault((wl, name), []).append(mib)
                    print(f"round {r + 1} {wl:9} {name:8} {mib:9.1f} MiB/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    head = ("workload", "raw", "plain", "journal", "jflush", "j/plain", "jf/plain", "plain/raw")
    print("\n{:10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9}".format(*head))
    ratios: dict[str, float] = {}
    for wl in WORKLOADS:
        raw_, plain = med[(wl, "raw")], med[(wl, "plain")]
        journal, jflush = med[(wl, "journal")], med[(wl, "jflush")]
        ratios[wl] = journal / plain
        ratios[wl + "_flush"] = jflush / plain
        ratios[wl + "_fuse"] = plain / raw_
        print(
            f"{wl:10} {raw_:9.1f} {plain:9.1f} {journal:9.1f} {jflush:9.1f} "
            f"{journal / plain:8.2f} {jflush / plain:8.2f} {plain / raw_:9.2f}"
        )
    seq = min(ratios["seq_qd1"], ratios["seq_qd16"])
    rand = min(ratios["rand_qd1"], ratios["rand_qd16"])
    fuse = min(ratios[wl + "_fuse"] for wl in WORKLOADS)
    seq_f = min(ratios["seq_qd1_flush"], ratios["seq_qd16_flush"])
    rand_f = min(ratios["rand_qd1_flush"], ratios["rand_qd16_flush"])
    clone = ""
    script = Path(__file__).with_name("volume_clone.py")
    if not args.no_clone and script.exists():
        p = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=1800
        )
        print(p.stdout, end="")
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), "")
        figures = dict(kv.split("=", 1) for kv in line.split()[1:])
        ready = [float(v) for k, v in figures.items() if k.startswith("clone_ready_ms")]
        if ready:
            clone = f" clone_ready_ms={max(ready):.0f}"
    print(
        f"RESULT seq_ratio={seq:.2f} rand_ratio={rand:.2f} seq_ratio_flush={seq_f:.2f}"
        f" rand_ratio_flush={rand_f:.2f} plain_vs_raw={fuse:.2f}"
        f" seq_qd1={ratios['seq_qd1']:.2f} seq_qd16={ratios['seq_qd16']:.2f}"
        f" rand_qd1={ratios['rand_qd1']:.2f} rand_qd16={ratios['rand_qd16']:.2f}{clone}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
