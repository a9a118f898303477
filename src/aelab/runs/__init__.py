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

Here: FORMAT_VERSION and everything that stamps or checks it (checkpoints, model.safetensors and model.json,
config.json), so that all of them read the one runs.FORMAT_VERSION (a test patches it). The rest of the room, each
module importing only the ones above it, never this package (writer.py excepted, which this package never imports):
    files.py        atomic writes, reading untrusted files and JSON, fault injection
    tensors.py      nested state <-> flat tensors, checksums, the layout of a safetensors file
    records.py      config.json's schema, metrics.jsonl, eval.json's metric names, model.json's networks
    folder.py       the run folder's lock and subfolders, seed groups, a stale evaluation marked
    checkpoint.py   the weights and optimizer state of an untrusted file, checked
    data.py         a run's own data and its validation split
    writer.py       the run folder while training: RunWriter, the checkpoint cadence, snapshots (aelab.train.writer)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes

from ..errors import AelabError, CheckpointError
from .checkpoint import LBFGS_KEYS, checked_optimizer_state, load_weights
from .data import run_data, validation_indices
from .files import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_TENSOR_FILE_BYTES,
    _json_default,
    atomic_write_bytes,
    atomic_write_text,
    fault_point,
    file_sha256,
    parse_json,
    read_bytes,
    read_json,
    regular_file,
    remove_stale_temp_files,
    write_json,
)
from .folder import (
    MAX_GROUP_RUNS,
    STALE_NOTE,
    RunLock,
    check_subfolder,
    lock_holder,
    mark_evaluation_stale,
    seed_folders,
    subfolder,
)
from .records import (
    _POSITIVE,
    CONFIG_TYPES,
    MAX_METRIC_NAME,
    MAX_METRICS,
    OPTIONAL_CONFIG_TYPES,
    check_history,
    check_metric_names,
    loss_unit,
    package_versions,
    read_history,
    recorded_networks,
    weights_record,
    write_history,
)
from .tensors import (
    MAX_SAFETENSORS_HEADER,
    _refuse_non_safetensors,
    _safetensors_bytes,
    check_safetensors_layout,
    expected_bytes,
    flatten_state,
    tensor_checksum,
    unflatten_state,
)

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = [
    "CONFIG_TYPES",
    "FORMAT_VERSION",
    "LBFGS_KEYS",
    "MAX_GROUP_RUNS",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_METRICS",
    "MAX_METRIC_NAME",
    "MAX_SAFETENSORS_HEADER",
    "MAX_TENSOR_FILE_BYTES",
    "OPTIONAL_CONFIG_TYPES",
    "RunLock",
    "STALE_NOTE",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_config",
    "check_history",
    "check_metric_names",
    "check_safetensors_layout",
    "check_subfolder",
    "checked_optimizer_state",
    "expected_bytes",
    "fault_point",
    "file_sha256",
    "flatten_state",
    "load_model",
    "load_state",
    "load_weights",
    "lock_holder",
    "loss_unit",
    "mark_evaluation_stale",
    "package_versions",
    "parse_json",
    "read_bytes",
    "read_config",
    "read_history",
    "read_json",
    "read_safetensors",
    "recorded_networks",
    "regular_file",
    "remove_stale_temp_files",
    "run_data",
    "save_model",
    "save_state",
    "seed_folders",
    "subfolder",
    "tensor_checksum",
    "unflatten_state",
    "validation_indices",
    "weights_record",
    "write_history",
    "write_json",
]

FORMAT_VERSION = 2  # of run folders: model.json, config.json, checkpoint.safetensors (2: tensor checksums)


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


def read_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "config.json"
    return check_config(read_json(path), str(path))


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
    from .. import models
    from ..models import imports

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
