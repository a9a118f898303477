"""Safetensors files: nested state <-> flat tensors plus a JSON skeleton, a checksum per tensor, the layout of
a file checked from its header before the rest is read."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save as st_save_bytes

from ..errors import CheckpointError
from .files import MAX_TENSOR_FILE_BYTES, parse_json, regular_file

if TYPE_CHECKING:
    import torch.nn as nn


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


def expected_bytes(model: nn.Module, copies: int = 1) -> int:
    """The most bytes a safetensors file of `copies` copies of the model's weights can take (plus a header):
    anything larger holds something else, and is refused before it is read; so is a file that cannot fit in
    the memory available."""
    from ..models.memory import available_memory_bytes

    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return min(copies * weights + (64 << 20), available_memory_bytes(), MAX_TENSOR_FILE_BYTES)


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
