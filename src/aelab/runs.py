"""The run folder: its whole on-disk format in one place.

    config.json              every option of the run, the data sizes, the package versions
    metrics.jsonl            one JSON line per epoch (and one for RBM pretraining)
    model.safetensors        the weights, a plain state dict readable by any safetensors tool
    model.json               the model's name and options: `models.create(name, **options)` rebuilds it
    checkpoint.safetensors   model + optimizer state + epoch + history, for an exact --resume
    eval.json, report.*, figures/   written by `aelab evaluate`

Every file is written to a temp file beside it, flushed, then renamed over the destination: a crash leaves
the old file or the new one, never half of one. Checkpoints are safetensors plus JSON, never Python object
serialisation; anything else given as a checkpoint is refused unread.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from .errors import CheckpointError, StorageError

if TYPE_CHECKING:
    import torch.nn as nn

FORMAT_VERSION = 1  # of run folders: model.json, config.json, checkpoint.safetensors

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

        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- atomic files
def _temp_name(path: Path) -> Path:
    """.NAME.tmp-PID-TOKEN beside `path`: the pid says whose leftover it is (see remove_stale_temp_files)."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def save_state(path: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """Save a nested state (tensors anywhere inside) as one safetensors file; structure goes in its JSON header."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, "s", tensors)
    header = {
        "format_version": str(FORMAT_VERSION),
        "skeleton": json.dumps(skeleton),
        "meta": json.dumps(meta or {}, default=_json_default),
    }
    atomic_write_bytes(path, st_save_bytes(tensors, metadata=header))


def _refuse_non_safetensors(path: Path, data: bytes) -> None:
    """Refuse anything that is not safetensors before parsing it; name torch.save files (zip or raw) as such."""
    if len(data) >= 9 and data[8:9] == b"{" and 8 + int.from_bytes(data[:8], "little") <= len(data):
        return  # safetensors: u64 little-endian header length, then a JSON header
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise CheckpointError(
            f"{path}: is a torch.save (Python-serialised) file; aelab only reads safetensors (refused, not executed)"
        )
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
        raise CheckpointError(
            f"{path}: written by a newer aelab (format {version}, this one reads <= {FORMAT_VERSION})"
        )
    if "skeleton" not in header:
        return dict(tensors), {}
    return unflatten_state(json.loads(header["skeleton"]), tensors), json.loads(header.get("meta", "{}"))


# ---------------------------------------------------------------- the files of a run folder
def package_versions() -> dict[str, str]:
    import numpy
    import safetensors
    import sklearn

    from . import __version__

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


def read_config(run_dir: str | os.PathLike) -> dict:
    config = read_json(Path(run_dir) / "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{Path(run_dir) / 'config.json'}: expected a JSON object")
    return config


def write_history(run_dir: str | os.PathLike, history: list[dict], durable: bool = True) -> None:
    atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history), durable)


def read_history(run_dir: str | os.PathLike) -> list[dict]:
    """metrics.jsonl as a list of dicts ([] when the run has none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON lines ({e})") from None


def save_model(run_dir: str | os.PathLike, model: nn.Module, durable: bool = True) -> None:
    """model.safetensors (a plain state dict, readable by any safetensors tool) + model.json (name and options)."""
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(
        run_dir / "model.safetensors",
        st_save_bytes(state, metadata={"format_version": str(FORMAT_VERSION)}),
        durable=durable,
    )
    write_json(
        run_dir / "model.json",
        {"format_version": FORMAT_VERSION, "name": type(model).name, "options": model.options},
        durable=durable,
    )


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise CheckpointError(f"{path}: weights do not match the architecture in model.json (e.g. {diff})")
    model.load_state_dict(state)


def load_model(run_dir: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild the model of a run folder from model.json and model.safetensors, in eval mode.

    model = aelab.load_model("runs/vae")
    """
    from . import models

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    spec = read_json(run_dir / "model.json")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("options"), dict):
        raise CheckpointError(f"{run_dir}/model.json: expected an object with a model name and its options")
    if int(spec.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{run_dir}/model.json: written by a newer aelab (format {spec['format_version']}, "
            f"this one reads <= {FORMAT_VERSION})"
        )
    try:
        model = models.create(spec["name"], **spec["options"])
    except ValueError as e:  # unknown name or option, or an option out of range
        raise CheckpointError(f"{run_dir}/model.json: cannot build the model ({e})") from None
    state, _ = load_state(run_dir / "model.safetensors")
    load_weights(model, state, run_dir / "model.safetensors")
    return model.to(device).eval()


def run_data(config: dict, data_dir: str | None = None):
    """The run's own train and test splits: same dataset, options and train_limit as in training.
    Returns (train_x, train_y, test_x, test_y)."""
    from . import data

    name, opts = config["dataset"], config.get("dataset_options", {})
    root = data_dir or config.get("data_dir")
    train_x, train_y = data.load(name, "train", root, **opts)
    test_x, test_y = data.load(name, "test", root, **opts)
    if config.get("train_limit"):
        train_x, train_y = train_x[: config["train_limit"]], train_y[: config["train_limit"]]
    return train_x, train_y, test_x, test_y
