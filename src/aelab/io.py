"""Atomic files, and checkpoints as safetensors + JSON (never Python object serialisation).

Every write goes to a temp file in the destination folder, is flushed to disk,
then renamed over the destination: a crash leaves the old file or the new one,
never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from .errors import CheckpointError, StorageError

FORMAT_VERSION = 1  # of run folders: model.json, config.json, checkpoint.safetensors


_fault_counts: dict[str, int] = {}
_fault_targets: dict[str, str | None] = {}
_UMASK = os.umask(0)
os.umask(_UMASK)


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

        os.kill(os.getpid(), signal.SIGKILL)


def remove_stale_temp_files(folder: str | os.PathLike) -> None:
    """Temp files left by a process killed mid-write (the real files are intact: the rename never happened)."""
    for p in Path(folder).glob(".*.tmp"):
        p.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write to a temp file beside `path`, then rename it over `path`. durable=False skips the fsync: for
    files that are derived from another one (model.safetensors and metrics.jsonl from the checkpoint)."""
    path = Path(path)
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should be readable like any other
        with os.fdopen(fd, "wb") as f:
            f.write(data[: len(data) // 2])
            fault_point("write")  # a kill here leaves half a temp file and the old destination intact
            f.write(data[len(data) // 2:])
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only folder...: one clear line, and no temp file left behind
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


# ---------------------------------------------------------------- nested state <-> flat tensors + JSON
def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into `tensors` (keyed by its path); return the JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(k, f"{prefix}.k{i}", tensors), flatten_state(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
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


def save_state(path: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """Save a nested state (tensors anywhere inside) as one safetensors file; structure goes in its JSON header."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, "s", tensors)
    header = {"format_version": str(FORMAT_VERSION), "skeleton": json.dumps(skeleton),
              "meta": json.dumps(meta or {}, default=_json_default)}
    atomic_write_bytes(path, st_save_bytes(tensors, metadata=header))


def _refuse_non_safetensors(path: Path, data: bytes) -> None:
    """Refuse anything that is not safetensors before parsing it; name torch.save files (zip or raw) as such."""
    if len(data) >= 9 and data[8:9] == b"{" and 8 + int.from_bytes(data[:8], "little") <= len(data):
        return  # safetensors: u64 little-endian header length, then a JSON header
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise CheckpointError(f"{path}: is a torch.save (Python-serialised) file; aelab only reads safetensors "
                              "(refused, not executed)")
    raise CheckpointError(f"{path}: not a safetensors file")


def load_state(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    _refuse_non_safetensors(path, data)
    try:
        tensors = st_load_bytes(data)
        from safetensors import safe_open  # the header metadata is only exposed through safe_open

        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    version = int(header.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer aelab (format {version}, this one reads <= {FORMAT_VERSION})")
    if "skeleton" not in header:
        return dict(tensors), {}
    return unflatten_state(json.loads(header["skeleton"]), tensors), json.loads(header.get("meta", "{}"))
