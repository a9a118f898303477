"""The run folder: its whole on-disk format in one place.

    config.json              every option of the run, the data sizes, the package versions
    metrics.jsonl            one JSON line per epoch (and one for RBM pretraining)
    model.safetensors        the weights, a plain state dict readable by any safetensors tool
    model.json               the model's name and options: `models.create(name, **options)` rebuilds it
    checkpoint.safetensors   model + optimizer state + epoch + history, for an exact --resume
    eval.json, report.*, figures/   written by `aelab evaluate`
    tracking.json, tb/       experiment tracking (aelab.tracking): the MLflow run's id and store; TensorBoard logs

Every file is written to a temp file beside it, flushed, then renamed over the destination: a crash leaves
the old file or the new one, never half of one. Checkpoints are safetensors plus JSON, never Python object
serialisation; anything else given as a checkpoint is refused unread.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import platform
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from .data._files import pid_alive as _pid_alive
from .errors import AelabError, CheckpointError, ConfigError, DataError, StorageError
from .options import MAX_COUNT

if TYPE_CHECKING:
    import torch.nn as nn

FORMAT_VERSION = 2  # of run folders: model.json, config.json, checkpoint.safetensors (2: tensor checksums)
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


# ---------------------------------------------------------------- nested state <-> flat tensors + JSON
def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into `tensors` (keyed by its path); return the JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [flatten_state(k, f"{prefix}.k{i}", tensors), flatten_state(v, f"{prefix}.{i}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, (list, tuple)):
        return {
            "__list__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
            "tuple": isinstance(obj, tuple),
        }
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            items = [unflatten_state(v, tensors) for v in skeleton["__list__"]]
            return tuple(items) if skeleton.get("tuple") else items
    return skeleton


def tensor_checksum(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (any dtype): stored beside every tensor, verified on load."""
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(raw)).hexdigest()


def _safetensors_bytes(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {**header, "checksums": json.dumps({k: tensor_checksum(v) for k, v in tensors.items()})}
    return st_save_bytes(tensors, metadata=header)


def save_state(path: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """Save a nested state (tensors anywhere inside) as one safetensors file; structure goes in its JSON header."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, "s", tensors)
    header = {
        "format_version": str(FORMAT_VERSION),
        "skeleton": json.dumps(skeleton),
        "meta": json.dumps(meta or {}, default=_json_default),
    }
    atomic_write_bytes(path, _safetensors_bytes(tensors, header))


def _refuse_pickle(path: Path, data: bytes) -> None:
    """torch.save files (zip or raw pickle) are named as such, and refused unread."""
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise CheckpointError(
            f"{path}: is a torch.save (Python-serialised) file; aelab only reads safetensors (refused, not executed)"
        )


def _refuse_non_safetensors(path: Path, data: bytes) -> None:
    """Refuse anything that is not safetensors before parsing it; name torch.save files (zip or raw) as such."""
    if len(data) >= 9 and data[8:9] == b"{" and 8 + int.from_bytes(data[:8], "little") <= len(data):
        return  # safetensors: u64 little-endian header length, then a JSON header
    _refuse_pickle(path, data)
    raise CheckpointError(f"{path}: not a safetensors file")


def read_safetensors(
    path: str | os.PathLike, max_bytes: int = MAX_TENSOR_FILE_BYTES
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a safetensors file, every tensor checked against its stored checksum. A file
    larger than max_bytes (e.g. more than the model it should hold) is refused unread."""
    path = Path(path)
    if regular_file(path).st_size <= max_bytes:  # (larger: refused by read_bytes below, with its size)
        head = read_bytes(path, max_bytes, head=9)
        if head[8:9] != b"{":  # not a safetensors header (whose first bytes are its length): say what it is
            _refuse_non_safetensors(path, head)
        check_safetensors_layout(path)  # a file larger than its header says is refused before it is read
    data = read_bytes(path, max_bytes)
    _refuse_non_safetensors(path, data)
    try:
        tensors = st_load_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({' '.join(str(e).split())})") from None
    if not isinstance(header, dict) or not all(isinstance(v, str) for v in header.values()):
        raise CheckpointError(f"{path}: malformed safetensors metadata")
    try:
        version = int(header.get("format_version", "0"))
    except ValueError:
        raise CheckpointError(f"{path}: format_version is not a number") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer aelab (format {version}, this one reads <= {FORMAT_VERSION})"
        )
    # every file aelab writes carries a checksum per tensor (format 2 on); only a file that says it is of the
    # format before checksums (1) loads without them: one stripped of its checksums and its version is refused
    if "checksums" not in header and header.get("format_version") == "1":
        return tensors, header
    sums = parse_json(header.get("checksums", "null"), f"{path} (checksums)")
    if not isinstance(sums, dict) or set(sums) != set(tensors):
        raise CheckpointError(f"{path}: tensor checksums missing or incomplete (not written by aelab, or edited)")
    bad = [k for k, t in tensors.items() if tensor_checksum(t) != sums[k]]
    if bad:
        raise CheckpointError(f"{path}: corrupt: tensor {bad[0]} does not match its checksum")
    return tensors, header


def expected_bytes(model: nn.Module, copies: int = 1) -> int:
    """The most bytes a safetensors file of `copies` copies of the model's weights can take (plus a header):
    anything larger holds something else, and is refused before it is read; so is a file that cannot fit in
    the memory available."""
    from .models.memory import available_memory_bytes

    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return min(copies * weights + (64 << 20), available_memory_bytes(), MAX_TENSOR_FILE_BYTES)


def load_state(
    path: str | os.PathLike, max_bytes: int = MAX_TENSOR_FILE_BYTES
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(nested state, meta) saved by save_state."""
    path = Path(path)
    tensors, header = read_safetensors(path, max_bytes)
    if "skeleton" not in header:
        return dict(tensors), {}
    skeleton = parse_json(header["skeleton"], f"{path} (structure)")
    meta = parse_json(header.get("meta", "{}"), f"{path} (meta)")
    try:
        state = unflatten_state(skeleton, tensors)
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: malformed checkpoint structure") from None
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{path}: malformed checkpoint structure")
    return state, meta


# ---------------------------------------------------------------- the files of a run folder
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


MAX_SAFETENSORS_HEADER = 16 << 20  # a header lists tensor names, shapes and offsets: far below this


def check_safetensors_layout(path: str | os.PathLike) -> int:
    """The byte count a safetensors file's own header accounts for (8 + header + tensor data), read from the
    header alone; a file of any other size (a 15 GiB sparse file behind a small header), or a header that does not
    parse, is refused before the rest is read or hashed. Returns the file's size."""
    path = Path(path)
    size = regular_file(path).st_size
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= min(MAX_SAFETENSORS_HEADER, size - 8):
                raise CheckpointError(f"{path}: not a safetensors file")
            header = parse_json(f.read(n), f"{path} (header)")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o >= 0 for o in offsets)
        ):
            raise CheckpointError(f"{path}: malformed safetensors header")
        end = max(end, offsets[1])
    if 8 + n + end != size:
        raise CheckpointError(
            f"{path}: {size} bytes, but its header accounts for {8 + n + end} (truncated, padded or not written by "
            "aelab)"
        )
    return size


def weights_record(run_dir: str | os.PathLike) -> dict:
    """What an evaluation scored: the SHA-256 of model.safetensors and the epochs trained (metrics.jsonl). A
    derived file (eval.json, a report) is current only while the weights still have this hash. The file's size is
    checked against its header and the memory before it is hashed."""
    from .models.memory import available_memory_bytes

    run_dir = Path(run_dir)
    size, have = check_safetensors_layout(run_dir / "model.safetensors"), available_memory_bytes()
    if size > min(have, MAX_TENSOR_FILE_BYTES):  # weights that could never be loaded are not hashed either
        raise CheckpointError(
            f"{run_dir}/model.safetensors: {size / 2**30:.3g} GiB, more than the {have / 2**30:.3g} GiB of memory "
            "available to load it"
        )
    epochs = [h.get("epoch") for h in read_history(run_dir) if "train_loss" in h]
    epochs = [e for e in epochs if isinstance(e, int) and not isinstance(e, bool)]
    return {"model_sha256": file_sha256(run_dir / "model.safetensors"), "epoch": max(epochs, default=0)}


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


def package_versions() -> dict[str, str]:
    import numpy
    import safetensors
    import sklearn

    from .version import __version__

    return {
        "aelab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "safetensors": safetensors.__version__,
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
    }


_NONE = type(None)
# config.json: the type of every key that evaluate and --resume rely on (the rest is a record for people)
CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "model_options": (dict,),
    "dataset": (str,),
    "dataset_options": (dict,),
    "data_dir": (str, _NONE),
    "train_limit": (int, _NONE),
    "epochs": (int,),
    "batch_size": (int,),
    "lr": (float, int),
    "optimizer": (str,),
    "seed": (int,),
    "device": (str,),
    "amp": (bool,),
    "out": (str,),
    "eval_batch_size": (int,),
    "format_version": (int,),
}
_POSITIVE = ("train_limit", "epochs", "batch_size", "eval_batch_size")
OPTIONAL_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "data_info": (dict,),
    "n_train": (int,),
    "n_val": (int,),
    "n_test": (int,),
    "val_fraction": (int, float, _NONE),
    "mlflow": (str, _NONE),
}


MAX_METRICS = 1000  # metrics in one eval.json: evaluate writes a few dozen
MAX_METRIC_NAME = 100


def check_metric_names(metrics: dict, where: str) -> None:
    """An untrusted eval.json's metrics: at most MAX_METRICS, each named by at most MAX_METRIC_NAME printable
    characters (compare's tables and CSV header are built from these names)."""
    if len(metrics) > MAX_METRICS:
        raise CheckpointError(f"{where}: {len(metrics)} metrics, more than the {MAX_METRICS} an evaluation writes")
    for name in metrics:
        if not (isinstance(name, str) and 0 < len(name) <= MAX_METRIC_NAME and name.isprintable()):
            shown = repr(name)[:60]
            raise CheckpointError(f"{where}: a metric name that is not a short printable name ({shown})")


def check_config(config: Any, where: str) -> dict:
    """Schema check of a config.json: an object, the expected types, sizes >= 1, a known format version."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    for key, types in CONFIG_TYPES.items():
        if key not in config:
            raise CheckpointError(f"{where}: no {key!r}")
        value = config[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise CheckpointError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
        if key in _POSITIVE and value is not None and value < 1:
            raise CheckpointError(f"{where}: {key!r} must be >= 1, got {value}")
    for key, types in OPTIONAL_CONFIG_TYPES.items():  # absent in older run folders; when present, typed
        if key in config and not isinstance(config[key], types):
            raise CheckpointError(f"{where}: {key!r} has the wrong type ({type(config[key]).__name__})")
    if not 0 <= config["seed"] < 2**63:
        raise CheckpointError(f"{where}: 'seed' out of range")
    if config["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: written by a newer aelab (format {config['format_version']}, this one reads <= {FORMAT_VERSION})"
        )
    return config


def loss_unit(config: dict) -> str:
    """The unit of a run's loss per image, from its config.json: curves in different units never share an axis.

    Reconstruction losses are sums over pixels (aelab.models.ae.reconstruction_loss); a VAE's loss is a negative
    ELBO in nats (Bernoulli or Gaussian likelihood); a loss with a penalty (CAE, weight decay) is still in the
    unit of its reconstruction term."""
    options = config.get("model_options") or {}
    if config.get("model") in ("vae", "iwae"):  # the IWAE: the VAE's networks and likelihoods, its bound in nats
        return f"nats per image ({options.get('likelihood', 'bce')} likelihood)"
    if options.get("loss", "bce") == "mse":
        return "squared error per image"
    return "cross-entropy per image (nats)"


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


def read_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "config.json"
    return check_config(read_json(path), str(path))


def write_history(run_dir: str | os.PathLike, history: list[dict], durable: bool = True) -> None:
    atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history), durable)


def read_history(run_dir: str | os.PathLike) -> list[dict]:
    """metrics.jsonl as a list of dicts ([] when the run has none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists() and not path.is_symlink():
        return []
    lines = read_bytes(path, MAX_JSON_BYTES).decode(errors="replace").splitlines()
    history = [parse_json(line, f"{path}, line {i}") for i, line in enumerate(lines, 1) if line.strip()]
    check_history(history, str(path))
    return history


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_history(history: Any, where: str) -> None:
    """The per-epoch records (metrics.jsonl, a checkpoint's history) as the readers use them: objects with an
    integer epoch in [0, 10^9], epochs increasing, and every loss, time and rate a number."""
    if not isinstance(history, list) or not all(
        isinstance(h, dict) and isinstance(h.get("epoch"), int) and not isinstance(h["epoch"], bool) for h in history
    ):
        raise CheckpointError(f"{where}: every record must be an object with an integer 'epoch'")
    epochs = [h["epoch"] for h in history]
    if any(not 0 <= e <= 10**9 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise CheckpointError(f"{where}: the epochs must increase, each in [0, 1e9]")
    for h in history:
        for key, value in h.items():
            measured = "loss" in key or key.endswith(("_s", "_per_s")) or key.startswith(("train_", "val_", "test_"))
            if measured and not (value is None or _is_number(value)):
                raise CheckpointError(f"{where}: epoch {h['epoch']}: {key} is not a number ({str(value)[:40]!r})")


def save_model(
    run_dir: str | os.PathLike, model: nn.Module, durable: bool = True, state: dict[str, torch.Tensor] | None = None
) -> None:
    """model.safetensors (a plain state dict, readable by any safetensors tool) + model.json (name and options).
    `state` (the same keys as the model's) is written instead of the model's current weights: early stopping's
    best epoch."""
    run_dir = Path(run_dir)
    header = {"format_version": str(FORMAT_VERSION)}
    weights = model.state_dict() if state is None else state
    atomic_write_bytes(run_dir / "model.safetensors", _safetensors_bytes(weights, header), durable)
    write_json(
        run_dir / "model.json",
        {"format_version": FORMAT_VERSION, "name": type(model).name, "options": model.options},
        durable,
    )


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load a state dict whose every tensor has the name, shape and dtype the model expects."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: malformed weights")
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    found = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()), key=str)[:3]
        raise CheckpointError(f"{path}: weights do not match the architecture in model.json (e.g. {diff})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # training never saves them (a NaN loss stops it first): the file was damaged or edited
        raise CheckpointError(f"{path}: weights with NaN or inf values ({', '.join(bad[:3])})")
    model.load_state_dict(state)


# what torch.optim.LBFGS keeps after a step (besides "al"): a resumed state must have all of them
LBFGS_KEYS = {"func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "prev_loss"}


def checked_optimizer_state(opt: torch.optim.Optimizer, saved: Any, path: Path, epochs_done: int) -> dict:
    """The optimizer state of an untrusted checkpoint, checked before it reaches the optimizer (or a fused
    kernel, which checks nothing: an Adam moment smaller than its parameter crashed the process): the keys,
    shapes, dtypes and finite values each optimizer keeps, a step count within what the epochs done allow; the
    hyper-parameters come from this run's config (the optimizer as built), never from the file."""
    bad = lambda why: CheckpointError(f"{path}: optimizer state does not fit ({why})")  # noqa: E731
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise bad("no state")
    params = [p for group in opt.param_groups for p in group["params"]]
    state = saved["state"]
    if not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(params) for k in state):
        raise bad("unknown parameter index")

    def tensor(value, shape, dtype, what: str, non_negative: bool = False) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.dtype != dtype:
            raise bad(f"{what}: expected a {dtype} tensor of shape {tuple(shape)}")
        if not torch.isfinite(value).all() or (non_negative and (value < 0).any()):
            raise bad(f"{what}: non-finite or negative values")
        return value

    max_steps = MAX_COUNT * max(1, epochs_done)  # batches per epoch are at most MAX_COUNT
    if isinstance(opt, torch.optim.Adam):
        for i, entry in state.items():
            p = params[i]
            if not isinstance(entry, dict) or set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
                raise bad(f"parameter {i}: expected step, exp_avg, exp_avg_sq")
            step = entry["step"]
            if not (isinstance(step, torch.Tensor) and step.numel() == 1 and step.dtype.is_floating_point):
                raise bad(f"parameter {i}: step is not a number")
            if not (torch.isfinite(step).all() and float(step) == int(float(step)) and 1 <= float(step) <= max_steps):
                raise bad(f"parameter {i}: step {float(step)!r} is not a count of steps")
            tensor(entry["exp_avg"], p.shape, p.dtype, f"parameter {i} exp_avg")
            tensor(entry["exp_avg_sq"], p.shape, p.dtype, f"parameter {i} exp_avg_sq", non_negative=True)
    elif isinstance(opt, torch.optim.LBFGS):
        n = sum(p.numel() for p in params)
        history = opt.param_groups[0]["history_size"]
        for i, entry in state.items():
            if i != 0 or not isinstance(entry, dict):
                raise bad("L-BFGS keeps its state under the first parameter only")
            # the entries must fit together as LBFGS.step leaves them, or the next step indexes past a list
            if entry and set(entry) - {"al"} != LBFGS_KEYS:
                raise bad(f"L-BFGS state needs exactly {', '.join(sorted(LBFGS_KEYS))} (and al)")
            pairs = [entry.get(k) for k in ("old_dirs", "old_stps", "ro")]
            if entry and not (all(isinstance(v, list) for v in pairs) and len({len(v) for v in pairs}) == 1):
                raise bad("old_dirs, old_stps and ro must be lists of one length")
            if "al" in entry and not (isinstance(entry["al"], list) and len(entry["al"]) == history):
                raise bad(f"al must hold history_size = {history} entries")
            for key, value in entry.items():
                if key in ("func_evals", "n_iter"):
                    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= max_steps * 25):
                        raise bad(f"{key} is not a count")
                elif key in ("d", "prev_flat_grad"):
                    tensor(value, (n,), params[0].dtype, key)
                elif key in ("old_dirs", "old_stps"):
                    if not isinstance(value, list) or len(value) > history:
                        raise bad(f"{key}: more than {history} entries")
                    for v in value:
                        tensor(v, (n,), params[0].dtype, key)
                elif key in ("ro", "al"):
                    if not isinstance(value, list) or len(value) > history:
                        raise bad(f"{key}: more than {history} entries")
                    for v in value:
                        if v is not None and not (
                            isinstance(v, torch.Tensor) and v.numel() == 1 and torch.isfinite(v).all()
                        ):
                            raise bad(f"{key}: not finite numbers")
                elif key in ("t", "H_diag", "prev_loss"):
                    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
                    is_scalar = isinstance(value, torch.Tensor) and value.numel() == 1
                    if not ((is_number and math.isfinite(value)) or (is_scalar and torch.isfinite(value).all())):
                        raise bad(f"{key} is not a finite number")
                else:
                    raise bad(f"unknown L-BFGS entry {key!r}")
    elif state:  # ConjugateGradient keeps no state between steps
        raise bad(f"{type(opt).__name__} keeps no state")
    # the groups as this run's config built them: the file sets no learning rate
    return {"state": state, "param_groups": opt.state_dict()["param_groups"]}


def recorded_networks(run_dir: str | os.PathLike) -> dict[str, str]:
    """How model.json records each user network: its "pkg.module:Class" (named by import path), or "custom" (a
    module given from Python, which it cannot rebuild); roles with the built-in network are left out. {} when
    model.json cannot be read (load_model then says why)."""
    from .models import CUSTOM_PREFIX, USER_MODULES

    try:
        spec = read_json(Path(run_dir) / "model.json")
    except CheckpointError:
        return {}
    options = spec.get("options") if isinstance(spec, dict) else None
    if not isinstance(options, dict):
        return {}
    kinds = {}
    for role in USER_MODULES:
        value = options.get(role)
        if isinstance(value, dict):
            kinds[role] = str(value.get("import"))[:300]
        elif isinstance(value, str) and value.startswith(CUSTOM_PREFIX):
            kinds[role] = "custom"
    return kinds


def load_model(
    run_dir: str | os.PathLike,
    device: str = "cpu",
    encoder: nn.Module | None = None,
    decoder: nn.Module | None = None,
    trust_code: bool | Iterable[str] = False,
) -> nn.Module:
    """Rebuild the model of a run folder from model.json and model.safetensors, in eval mode.

    model = aelab.load_model("runs/vae")
    model = aelab.load_model("runs/conv-cae", encoder=MyEncoder(), decoder=MyDecoder())
    model = aelab.load_model("runs/conv-cae", trust_code=["mynets:ConvEncoder", "mynets:ConvDecoder"])

    A model trained with user-supplied modules needs the same modules again (model.json names their
    classes, it cannot rebuild them: no pickle); their weights come from model.safetensors. A model.json that
    names classes by import path (`--encoder pkg.module:Class`) is rebuilt from them only when `trust_code` allows
    it (True: every class it names; or the names you trust): the run folder is untrusted, and importing runs code
    (aelab.models.imports.require_trusted)."""
    from . import models
    from .models import imports

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    where = f"{run_dir}/model.json"
    spec = read_json(run_dir / "model.json")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("options"), dict):
        raise CheckpointError(f"{where}: expected an object with a model name and its options")
    version = spec.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{where}: format_version is not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: written by a newer aelab (format {version}, this one reads <= {FORMAT_VERSION})"
        )
    options = dict(spec["options"])
    given = {"encoder": encoder, "decoder": decoder}
    custom = {r: v for r, v in options.items() if r in models.USER_MODULES and isinstance(v, str)}
    missing = [f"{r} ({v.removeprefix(models.CUSTOM_PREFIX)})" for r, v in custom.items() if given[r] is None]
    if missing:
        raise CheckpointError(
            f"{run_dir}: the model was built with a user-supplied {' and '.join(missing)}; model.json cannot "
            f"rebuild them (no pickle): pass the same modules again, load_model(run, "
            f"{', '.join(f'{r}=...' for r in custom)})"
        )
    trust = imports.trust_of(trust_code)
    for role, module in given.items():
        recorded = options.get(role)
        if module is not None:
            if not (isinstance(recorded, str) and recorded.startswith(models.CUSTOM_PREFIX)) and not isinstance(
                recorded, dict
            ):
                raise CheckpointError(f"{where}: this model has the built-in {role}; do not pass {role}=")
            options[role] = module
        elif isinstance(recorded, dict):  # a class named by import path: imported only when trusted, never from here
            options[role] = imports.require_trusted(role, recorded, trust, where)
            imports.refuse_inside(options[role], [run_dir])
    try:  # the options are untrusted: any failure to build from them is the file's fault, not a bug
        if not models.has_module_instances(options):  # modules given from Python are built already
            models.check_memory(spec["name"], options, training=False)  # sizes checked before allocation
        model = models.create(spec["name"], **options)
    except AelabError as e:
        raise CheckpointError(f"{where}: cannot build the model ({e})") from None
    except Exception as e:
        raise CheckpointError(f"{where}: cannot build the model ({type(e).__name__}: {e})") from None
    state, _ = load_state(run_dir / "model.safetensors", expected_bytes(model))
    load_weights(model, state, run_dir / "model.safetensors")
    return model.to(device).eval()


def run_data(config: dict, data_dir: str | os.PathLike | None = None, data=None):
    """The run's own train and test splits: same dataset, options and train_limit as in training.
    Returns (train_x, train_y, test_x, test_y); labels are -1 for unlabeled data.

    `data` (an aelab.data.Data or a path) stands in for the recorded dataset: needed for data given from
    Python, and for a folder that has moved. Data whose content hash differs from the one config.json
    recorded are refused: the metrics would not be about the run's data."""
    from . import data as datamod

    name, opts = config["dataset"], config.get("dataset_options", {})
    if not isinstance(opts, dict):
        raise CheckpointError("config.json: dataset_options is not an object")
    if data is None and name.startswith("python:"):
        raise DataError(
            f"the run was trained on data given from Python ({name[len('python:') :]}); pass the same data: "
            "evaluate(run, data=...)"
        )
    if data is None:
        datamod.check_options(name, opts)  # before **opts meets load's own parameters
        if name not in datamod.names() and not datamod.path_exists(name):
            raise DataError(f"the run's data at {name} is not there any more; pass data=PATH or Data")
    # the data folder comes from the caller, never from config.json (an untrusted file must not make aelab
    # create folders or download anywhere); files that are not there already are an error, not a download;
    # a folder's decoded cache is read, never written, from here
    source = name if data is None else data
    found = datamod.get(
        source, {} if isinstance(source, datamod.Data) else opts, data_dir, download=False, write_cache=False
    )
    recorded = config.get("data_info", {}).get("sha256") if isinstance(config.get("data_info"), dict) else None
    if recorded is not None and found.info.get("sha256") != recorded:
        raise DataError(
            f"the data of {found.info.get('source', name)} differ from those the run was trained on "
            "(content hash changed); pass the same data"
        )
    train_x, train_y, test_x, test_y = found.train_x, found.train_y, found.test_x, found.test_y
    if config.get("train_limit"):
        train_x, train_y = train_x[: config["train_limit"]], train_y[: config["train_limit"]]
    return train_x, train_y, test_x, test_y


def validation_indices(config: dict, train_labels) -> tuple[Any, Any] | None:
    """(kept, held) indices of the validation split the run carved from its train split (after train_limit), as
    train.py carved it, or None when it carved none. config.json is untrusted: a val_fraction that is not a
    number in [0, 1) is a CheckpointError."""
    import numpy as np

    from .data.sources import validation_split

    fraction = config.get("val_fraction") or 0
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction < 1):
        raise CheckpointError(f"config.json: val_fraction {fraction!r} is not a number in [0, 1)")
    if not fraction:
        return None
    keep, held, _ = validation_split(np.asarray(train_labels), fraction)
    return keep, held
