"""The run folder itself: its lock, its subfolders, the seed folders of a group, a stale evaluation marked."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import CheckpointError, ConfigError, StorageError
from .files import MAX_JSON_BYTES, atomic_write_text, read_bytes, read_json, write_json


def check_subfolder(run_dir: str | os.PathLike, name: str) -> None:
    """Refuse RUN/name when it is a symlink or a file (subfolder would); creates nothing."""
    path = Path(run_dir) / name
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise CheckpointError(f"{path}: not a folder of the run (a symlink or a file); remove it")


def subfolder(run_dir: str | os.PathLike, name: str) -> Path:
    """RUN/name as a real folder inside the run (created if missing); a symlink there is refused, so that
    nothing is ever written outside the run folder through it."""
    path = Path(run_dir) / name
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise CheckpointError(f"{path}: not a folder of the run (a symlink or a file); remove it")
    try:
        path.mkdir(exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {path}: {e.strerror or e}") from None
    return path


def lock_holder(folder: str | os.PathLike) -> int | None:
    """The pid holding a flock on `folder` (Linux: /proc/locks lists each lock with its pid and the inode it
    locks), or None where that cannot be told."""
    try:
        st = os.stat(folder)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        words = line.split()
        if "FLOCK" in words and device in words:
            try:
                return int(words[words.index(device) - 1])
            except (ValueError, IndexError):
                return None
    return None


class RunLock:
    """An exclusive lock on a run folder, so that two writers never mix their files.

    fcntl.flock on the folder itself (opened read-only): the OS releases it when the process ends, kill -9
    included, so a lock is never stale, and taking it writes nothing, so that a command refused under the lock
    leaves every byte of the folder as it was. A second writer gets one line naming the holder's pid."""

    def __init__(self, folder: str | os.PathLike, create: bool = True):
        self.folder = Path(folder)
        self.create = create
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> RunLock:
        import fcntl

        if not self.create and not self.folder.is_dir():
            raise CheckpointError(f"run folder {self.folder} does not exist")
        try:
            self._created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise StorageError(f"cannot use {self.folder} as a run folder: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageError(
                    f"cannot lock {self.folder}: {e.strerror} (a filesystem without file locks?)"
                ) from None
            holder = lock_holder(self.folder)
            raise ConfigError(
                f"{self.folder} is in use by another aelab process (pid {holder or 'unknown'}); wait for it to "
                "finish or choose another --out"
            ) from None
        self._fd = fd
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._fd is None:
            return
        try:
            if exc_type is not None and self._created and not any(self.folder.iterdir()):
                self.folder.rmdir()  # a run that failed before writing anything leaves no folder behind
        except OSError:
            pass  # best effort: never hide the error that got us here
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


MAX_GROUP_RUNS = 1000  # seed-<s>/ folders read from one seed group (train --seeds makes at most 1000)


def seed_folders(folder: Path) -> list[tuple[int, Path]]:
    """(seed, run folder) of a `--seeds` OUT, in seed order: its seed-<s>/ subfolders that hold a config.json.
    [] for anything else (a run folder has its own config.json and is never a group)."""
    if (folder / "config.json").exists() or (folder / "config.json").is_symlink():
        return []
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            number = entry.name.removeprefix("seed-")
            digits = number.isascii() and number.isdigit() and len(number) <= 19
            if entry.name.startswith("seed-") and digits and entry.is_dir():
                if (Path(entry.path) / "config.json").exists():
                    found.append((int(number), Path(entry.path)))
                    if len(found) > MAX_GROUP_RUNS:
                        raise ConfigError(f"{folder}: more than {MAX_GROUP_RUNS} seed-<s> run folders")
    seeds = [s for s, _ in found]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(f"{folder}: more than one folder for seed {twice[0]} (e.g. seed-0 and seed-00)")
    return sorted(found)


STALE_NOTE = "STALE: the run trained on after this evaluation; run `aelab evaluate` again"


def mark_evaluation_stale(run_dir: str | os.PathLike) -> None:
    """A resume trains the weights on: eval.json and the report say they are stale (compare re-evaluates a run
    whose eval.json scored other weights in any case). An unreadable eval.json is left as it is."""
    run_dir = Path(run_dir)
    try:
        result = read_json(run_dir / "eval.json")
    except CheckpointError:
        return
    if isinstance(result, dict) and result.get("stale") != STALE_NOTE:
        write_json(run_dir / "eval.json", {"stale": STALE_NOTE, **result})
    for name, banner in (("report.md", f"> **{STALE_NOTE}**\n\n"), ("report.html", f"<p><b>{STALE_NOTE}</b></p>")):
        try:
            text = read_bytes(run_dir / name, MAX_JSON_BYTES).decode("utf-8")
        except (CheckpointError, UnicodeDecodeError):
            continue
        if STALE_NOTE in text:
            continue
        if name == "report.html" and "<body>" in text:
            text = text.replace("<body>", "<body>" + banner, 1)
        elif name == "report.md":
            text = banner + text
        else:
            continue
        atomic_write_text(run_dir / name, text)
