"""Leftovers of killed writers in the data folder: `.NAME.PID.tmp` (a folder's decoded cache) and
`.NAME.PID.part` (a download) whose process is gone. The real files are never touched: they appear only by a
rename once complete."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_dead_writers_files(folder: Path, suffix: str) -> None:
    """Remove `.*.PID<suffix>` files in `folder` whose PID is no running process (regular files only)."""
    try:
        candidates = list(folder.glob(f".*{suffix}"))
    except OSError:
        return
    for p in candidates:
        try:
            pid = int(p.name[: -len(suffix)].rsplit(".", 1)[1])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not pid_alive(pid) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
