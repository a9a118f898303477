"""The records of a run: config.json's schema, metrics.jsonl, eval.json's metric names, the weights an
evaluation scored, the package versions, the unit of the loss, the user networks model.json names."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .files import (
    MAX_JSON_BYTES,
    MAX_TENSOR_FILE_BYTES,
    atomic_write_text,
    file_sha256,
    parse_json,
    read_bytes,
    read_json,
)
from .tensors import check_safetensors_layout

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


def weights_record(run_dir: str | os.PathLike) -> dict:
    """What an evaluation scored: the SHA-256 of model.safetensors and the epochs trained (metrics.jsonl). A
    derived file (eval.json, a report) is current only while the weights still have this hash. The file's size is
    checked against its header and the memory before it is hashed."""
    from ..models.memory import available_memory_bytes

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


def package_versions() -> dict[str, str]:
    import numpy
    import safetensors
    import sklearn

    from ..version import __version__

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


def recorded_networks(run_dir: str | os.PathLike) -> dict[str, str]:
    """How model.json records each user network: its "pkg.module:Class" (named by import path), or "custom" (a
    module given from Python, which it cannot rebuild); roles with the built-in network are left out. {} when
    model.json cannot be read (load_model then says why)."""
    from ..models import CUSTOM_PREFIX, USER_MODULES

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
