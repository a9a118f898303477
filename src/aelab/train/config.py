"""TrainConfig: every setting of a training run, checked before any work (one line per mistake), and the device."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .. import data as datamod
from .. import models, tracking
from ..errors import ConfigError
from ..options import MAX_COUNT, MAX_SEED
from ..precision import PRECISIONS

OPTIMIZERS = ("adam", "lbfgs", "cg")
LR_SCHEDULES = ("constant", "burda")
CLOSURE_OPTIMIZERS = ("lbfgs", "cg")  # step(closure) evaluates the loss several times per batch


@dataclass
class TrainConfig:
    model: str = "ae"
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: Any = "mnist5k"  # a built-in name, a path (image folder, .npz, .npy) or an aelab.data.Data
    dataset_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    train_limit: int | None = None  # use only the first N training images (tests, quick runs)
    # a validation split carved from the train images (stratified, seed 0): its loss is recorded each epoch and,
    # with early_stopping = PATIENCE, picks the epoch whose weights the run keeps; evaluate chooses the probe's C
    # on it; the test split chooses nothing. None: the protocol's default, 10% of the train images or 500 of them,
    # whichever is fewer (none below MIN_TRAIN_FOR_VALIDATION images); 0: no validation split
    val_fraction: float | None = None
    early_stopping: int | None = None
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | lbfgs | cg (Polak-Ribière conjugate gradients, 3 line searches a batch; no lr)
    # constant, or "burda": lr * 10^(-i/7) for 3^i epochs, i = 0, 1, ... (Burda et al. 2016, Section 5; their
    # code rounds each rate to two digits, github.com/yburda/iwae experiments.py)
    lr_schedule: str = "constant"
    adam_eps: float = 1e-8  # Adam's epsilon; Burda et al. use 1e-4
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    compile: bool = False  # torch.compile the loss (forward + backward): a speed knob, the maths is unchanged
    out: str = "runs/run"
    # a .safetensors of this model's weights (e.g. a pretrain() folder's model.safetensors) to start from, in
    # place of the model's own pretraining; shape-checked, its SHA-256 recorded in config.json
    init_weights: str | None = None
    # seconds between checkpoints (0: every epoch); None: automatic, at most one a minute, and no sooner than
    # twenty times what the last one cost (a large model), at least one every 10 minutes. The last epoch, an early
    # stop and SIGTERM/Ctrl-C always write one (the last finished epoch, kept in memory).
    checkpoint_every: float | None = None
    # fp32 | tf32 (float32 matmuls on tensor cores, CUDA) | bf16 (autocast, CUDA); amp=True means bf16
    precision: str = "fp32"
    eval_batch_size: int = 1000
    tensorboard: bool = True  # RUN/tb, when the optional tensorboard package is installed
    mlflow: str | None = None  # an MLflow tracking URI (sqlite:///mlflow.db, a folder, http://...): log there too

    def validate(self) -> None:
        """Check every setting before any work, in this order; the first mistake raises its one-line ConfigError."""
        self._check_numbers()
        self._check_data()
        self._check_networks()
        self._check_choices()

    def _check_numbers(self) -> None:
        """The counts, the learning rate, the fractions, the flags, the seed, the folder and init_weights."""
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_COUNT:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer in [1, {MAX_COUNT}], got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a finite positive number, got {self.lr!r}")
        if self.train_limit is not None and not (isinstance(self.train_limit, int) and self.train_limit > 0):
            raise ConfigError(f"--train-limit must be a positive integer, got {self.train_limit!r}")
        if self.val_fraction is not None and not (
            isinstance(self.val_fraction, (int, float))
            and not isinstance(self.val_fraction, bool)
            and 0 <= self.val_fraction < 1
        ):
            raise ConfigError(f"--val-fraction must be a number in [0, 1), got {self.val_fraction!r}")
        for flag in ("amp", "compile"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"--{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.early_stopping is not None:
            if not (
                isinstance(self.early_stopping, int)
                and not isinstance(self.early_stopping, bool)
                and 0 < self.early_stopping <= MAX_COUNT
            ):
                raise ConfigError(f"--early-stopping must be a positive integer, got {self.early_stopping!r}")
            if self.val_fraction == 0:
                raise ConfigError("--early-stopping watches the validation loss: it needs a --val-fraction above 0")
        if not (isinstance(self.seed, int) and 0 <= self.seed < MAX_SEED):
            raise ConfigError(f"--seed must be an integer in [0, 2^63), got {self.seed!r}")
        if not str(self.out).strip():
            raise ConfigError("--out must name a folder")
        if self.init_weights is not None:
            if not (isinstance(self.init_weights, str) and self.init_weights.endswith(".safetensors")):
                raise ConfigError(f"init_weights must name a .safetensors file, got {self.init_weights!r}")

    def _check_data(self) -> None:
        """The data folder, the options' form, and the dataset: a Data, a built-in name or a path that exists."""
        datamod.datasets.check_data_dir(self.data_dir)
        if not isinstance(self.model_options, dict) or not isinstance(self.dataset_options, dict):
            raise ConfigError("model and dataset options must be KEY=VALUE pairs")
        if isinstance(self.dataset, datamod.Data):
            if self.dataset_options:
                raise ConfigError("dataset options apply to names and paths; a Data object is used as it is")
        elif isinstance(self.dataset, (str, os.PathLike)) and str(self.dataset).strip():
            name = os.fspath(self.dataset)
            if name not in datamod.names() and not datamod.path_exists(name):
                raise ConfigError(
                    f"no dataset named {name!r} and no file or folder there; "
                    f"choose from {', '.join(datamod.names())} or give a path"
                )
            datamod.check_options(name, self.dataset_options)
        else:
            raise ConfigError(f"dataset must be a name, a path or an aelab.data.Data, got {self.dataset!r}")

    def _check_networks(self) -> None:
        """The networks that the model options name by import path, and no input_shape among the options."""
        for role in models.USER_MODULES:  # a network named by import path: importable and buildable (on the meta
            if isinstance(self.model_options.get(role), dict):  # device: nothing allocated) before the folder is made
                from ..models.imports import build

                build(role, self.model_options[role], meta=True)
        if "input_shape" in self.model_options:
            raise ConfigError("input_shape is not an option: it comes from the data")

    def _check_choices(self) -> None:
        """The checkpoint cadence, the named choices (precision, schedule, optimizer, model, device), Adam's epsilon
        and the tracking."""
        if self.checkpoint_every is not None and not (
            isinstance(self.checkpoint_every, (int, float))
            and not isinstance(self.checkpoint_every, bool)
            and 0 <= self.checkpoint_every <= 7 * 86400
        ):
            raise ConfigError(f"--checkpoint-every must be seconds in [0, a week], got {self.checkpoint_every!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr schedule {self.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        if not (
            isinstance(self.adam_eps, (int, float)) and not isinstance(self.adam_eps, bool) and 0 < self.adam_eps <= 1
        ):
            raise ConfigError(f"--adam-eps must be a number in (0, 1], got {self.adam_eps!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.model not in models.names():
            raise ConfigError(f"unknown model {self.model!r}; choose from {', '.join(models.names())}")
        resolve_device(self.device)
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"tensorboard must be true or false, got {self.tensorboard!r}")
        if self.mlflow is not None:
            tracking.check_mlflow(self.mlflow)

    def to_json(self) -> dict[str, Any]:
        """The settings as config.json records them: the dataset as a name, an absolute path or python:<name>,
        user-supplied modules by their class name (aelab.models.custom_name)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["dataset"] = datamod.describe(self.dataset)
        out["model_options"] = {
            k: models.custom_name(v) if isinstance(v, nn.Module) else v for k, v in self.model_options.items()
        }
        return json.loads(json.dumps(out))  # a deep copy of plain JSON values


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isascii() and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available here; use --device cpu")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}; choose from cpu, cuda, cuda:N")


# ---------------------------------------------------------------- distributed helpers
