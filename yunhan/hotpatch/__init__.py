"""Application hot patching: replace functions of a running x86_64 Linux process.

Public face:
  build(source, target, output)          compile a patch source into a .yhp (build.py)
  apply(pid, patch_file)                 load and switch a patch in a live process (loader.py)
  rollback(pid, patch_id=None)           restore the bytes below the top patch (loader.py)
  inherit(pid)                           a forked child gets its parent's record (loader.py)
  list_patches(pid=None)                 what the journal says was done (loader.py)
  matching_processes(manifest)           pids mapping the patch's target build (loader.py)
  read_manifest(patch_file)              the description embedded in a .yhp (manifest.py)

Modules: elf (ELF facts), procfs (/proc), ptrace (ctypes), inject (borrowed thread),
world (stop-the-world), switch (retry/write/undo), plan (pure: jumps and activeness),
journal (on-disk record).
"""

from yunhan.hotpatch import journal
from yunhan.hotpatch.build import build, include_dir
from yunhan.hotpatch.loader import (
    Outcome,
    apply,
    inherit,
    list_patches,
    matching_processes,
    rollback,
)
from yunhan.hotpatch.manifest import Manifest, read_manifest
from yunhan.hotpatch.switch import Retry

__all__ = [
    "Manifest",
    "Outcome",
    "Retry",
    "apply",
    "build",
    "include_dir",
    "inherit",
    "journal",
    "list_patches",
    "matching_processes",
    "read_manifest",
    "rollback",
]
