"""The files of a run folder, written atomically and read as untrusted input.

Every file is written to a temp file beside it, flushed, then renamed over the destination: a crash leaves
the old file or the new one, never half of one. Every file is read as untrusted: a regular file (no symlink,
device or pipe), of bounded size, its JSON of bounded nesting depth and integer length.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import torch

from ..data._files import pid_alive as _pid_alive
from ..errors import CheckpointError, StorageError

MAX_TENSOR_FILE_BYTES = 16 << 30

_fault_counts: dict[str, int] = {}
_fault_targets: dict[str, str | None] = {}


def fault_point(kind: str) -> None:
    """Fault injection for the kill-and-resume tests: with AELAB_FAULT_KILL_AT_<KIND>=N in the environment,
    the process SIGKILLs itself the N-th time it passes this point. Does nothing otherwise."""
    if kind not in _fault_targets:  # read once per process: this sits in the training loop
        _fault_targets[kind] = os.environ.get(f"AELAB_FAULT_KILL_AT_{kind.upper()}")
    target = _fault_targets[kind]
    if target is None:
        return
    _fault_counts[kind] = _fault_counts.get(kind, 0) + 1
    if _fault_counts[kind] == int(target):
        import signal

        # AELAB_FAULT_SIGNAL=TERM: a polite stop (a scheduler's preemption) instead of SIGKILL; INT: a Ctrl-C
        polite = {"TERM": signal.SIGTERM, "INT": signal.SIGINT}
        os.kill(os.getpid(), polite.get(os.environ.get("AELAB_FAULT_SIGNAL", ""), signal.SIGKILL))


# ---------------------------------------------------------------- atomic files
def _temp_name(path: Path) -> Path:
    """.NAME.tmp-PID-TOKEN beside `path`: the pid says whose leftover it is (see remove_stale_temp_files)."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale_temp_files(folder: str | os.PathLike) -> None:
    """Remove the temp files of writers that died mid-write (their pid is gone, or it is this process).
    The real files are intact: the rename never happened. Any other file, a user's `.draft.tmp` included,
    is left alone."""
    for p in Path(folder).glob(".*.tmp-*-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[1])
        except ValueError:
            continue
        if (pid == os.getpid() or not _pid_alive(pid)) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write to a temp file beside `path`, then rename it over `path`. durable=False skips the fsync: for
    files that are derived from another one (model.safetensors and metrics.jsonl from the checkpoint)."""
    path = Path(path)
    tmp = _temp_name(path)
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0o666 minus the umask, like any other file the user creates; O_EXCL: never follow a planted link
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        fault_point("write")  # a kill here leaves a temp file and the old destination intact
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only folder...: one clear line, and no temp file left behind
        if created:
            tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        if created:
            tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- reading untrusted files
MAX_JSON_BYTES = 64 << 20  # config.json, model.json, metrics.jsonl: far below this
MAX_JSON_DEPTH = 32


def regular_file(path: str | os.PathLike) -> os.stat_result:
    """The file's stat if it is a regular file; symlinks, devices, pipes and folders are refused: a run
    folder is untrusted input (a model.safetensors linked to /dev/zero would be read without end)."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: not a regular file (symlinks, devices and folders are refused)")
    return st


def read_bytes(path: str | os.PathLike, max_bytes: int, head: int | None = None) -> bytes:
    """A regular file's bytes, refused unread when larger than max_bytes; `head`: only its first `head` bytes."""
    st = regular_file(path)
    if st.st_size > max_bytes:
        raise CheckpointError(f"{path}: {st.st_size} bytes, more than the {max_bytes} expected of it")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())  # the file opened, not the path stat'ed (a rename may come between)
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{path}: not a regular file")
            if st.st_size > max_bytes:
                raise CheckpointError(f"{path}: {st.st_size} bytes, more than the {max_bytes} expected of it")
            if head is not None:
                return f.read(head)
            # as many bytes as the file has, never the cap itself: read(n) reserves n bytes, and a 16 GiB
            # reservation fails where memory is limited; one byte more shows that it grew while read
            data = f.read(st.st_size + 1)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if len(data) != st.st_size:
        raise CheckpointError(f"{path}: changed while it was read; try again")
    return data


def _depth(obj: Any) -> int:
    depth, level = 0, [obj]
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            break
        level = [v for o in level if isinstance(o, (dict, list)) for v in (o.values() if isinstance(o, dict) else o)]
    return depth


def _bounded_int(text: str) -> int:
    """JSON integers of a run folder: at most 19 digits (|n| < 10^19 covers every size, seed and count aelab
    writes); a longer one is refused before Python converts it (the conversion of huge ones is slow, and over
    4,300 digits an error)."""
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def parse_json(text: bytes | str, where: str) -> Any:
    try:
        obj = json.loads(text, parse_int=_bounded_int)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError, as are huge integers
        raise CheckpointError(f"{where}: not valid JSON ({' '.join(str(e).split())[:200]})") from None
    except RecursionError:
        raise CheckpointError(f"{where}: JSON nested too deep") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), durable)


def write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", durable)


def _json_default(o):
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file of a run folder: a regular file, of bounded size and nesting depth."""
    return parse_json(read_bytes(path, max_bytes), str(path))


def file_sha256(path: str | os.PathLike, max_bytes: int = MAX_TENSOR_FILE_BYTES) -> str:
    """SHA-256 of a regular file of at most max_bytes (a FIFO, a device or a link to one is refused: hashing
    /dev/zero would never end), read as large as it was when opened."""
    st = regular_file(path)
    if st.st_size > max_bytes:
        raise CheckpointError(f"{path}: {st.st_size} bytes, more than the {max_bytes} expected of it")
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise CheckpointError(f"{path}: not a regular file")
            left = st.st_size
            while left > 0:
                block = f.read(min(1 << 20, left))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    return digest.hexdigest()
