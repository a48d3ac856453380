"""Build locks that a dead process left behind in torch's extensions folder.

DeepSpeed compiles its CPU ops (the shared-memory collectives on every `init_distributed`, `cpu_adam` for offload)
with torch's JIT builder, which guards each op's build folder with a bare `lock` file: created before compiling,
removed after. A process killed while it compiles (Ctrl-C, SIGKILL, a session or CI job that ends) leaves that file,
and every later process that needs the op waits for it forever, silently (seen in CI: the suite hung 80 minutes).

`clear_stale_build_locks` removes such files. A live builder keeps its lock file open, so a lock file that no process
on this machine has open is stale when every rank runs here; across nodes a builder on another machine may hold it,
so there it also has to be older than `older_than_s` (a compile takes a few minutes at most).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def extensions_root() -> Path:
    """Where torch builds JIT ops: `TORCH_EXTENSIONS_DIR`, else torch's default (`~/.cache/torch_extensions`)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def lock_files(root: Path) -> list[Path]:
    """The builders' lock files under `root`: `<root>/<op>/lock`, or `<root>/<python-and-device>/<op>/lock` in
    torch's default layout."""
    return sorted({*root.glob("*/lock"), *root.glob("*/*/lock")})


def open_files() -> set[Path]:
    """Every file some process on this machine has open, as far as /proc lets us read (processes of other users
    may be hidden; on a system without /proc the set is empty)."""
    held: set[Path] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:  # the process ended, or is not ours to read
            continue
        for fd in fds:
            try:
                held.add(Path(os.readlink(fd)))
            except OSError:
                continue
    return held


def clear_stale_build_locks(root: Path, *, ranks_all_local: bool, quiet_s: float = 5.0, older_than_s: float = 600.0,
                            held: set[Path] | None = None, now: float | None = None) -> list[Path]:
    """Remove the lock files under `root` that no live builder holds; return the ones removed.

    A lock file is stale when no process on this machine has it open (`held`, default: read from /proc) and nothing
    in its op's folder, the lock included, changed in the last `quiet_s` seconds (a builder closes the lock file an
    instant before removing it, just after writing the op). Unless `ranks_all_local`, it must also be older than
    `older_than_s`: a builder on another node may share the folder. Without /proc nothing is removed.
    """
    if held is None:
        if not Path("/proc/self/fd").is_dir():
            return []
        held = open_files()
    now = time.time() if now is None else now
    removed = []
    for lock in lock_files(root):
        if lock.resolve() in held or lock in held:
            continue
        try:
            age = now - lock.stat().st_mtime
            quiet = now - max(entry.stat().st_mtime for entry in lock.parent.iterdir())
        except FileNotFoundError:  # its builder just finished
            continue
        if quiet < quiet_s or (not ranks_all_local and age < older_than_s):
            continue
        try:
            lock.unlink()
        except FileNotFoundError:
            continue
        removed.append(lock)
    return removed
