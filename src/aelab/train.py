"""One trainer for every aelab model.

    data (in-memory tensors) -> model.loss(x) -> Adam (or L-BFGS) -> run folder (aelab.runs)

The run folder holds config.json, metrics.jsonl, model.safetensors + model.json and
checkpoint.safetensors (model, optimizer, epoch, metrics so far). All are written
atomically at the end of each epoch, so `resume=True` restarts from the last
complete epoch and, because every epoch re-seeds its own random streams from
(seed, epoch), ends bit-identical to an uninterrupted run on CPU.

Under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel:
every rank draws the same permutation, takes its contiguous share of each
global batch, and scales its mean loss by its share, so that the averaged
gradient is exactly the gradient of the global batch mean. Everything that
decides control flow (the L-BFGS objective, the NaN check) is all-reduced, so
every rank takes the same branch and no rank waits in a collective alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import data as datamod
from . import models, runs, tracking
from .data.sources import default_val_fraction, validation_split
from .errors import CheckpointError, ConfigError, TrainingDiverged
from .optim import ConjugateGradient
from .options import MAX_COUNT, MAX_SEED
from .precision import PRECISIONS, float32_matmul
from .progress import Progress

OPTIMIZERS = ("adam", "lbfgs", "cg")
LR_SCHEDULES = ("constant", "burda")
# the automatic checkpoint cadence: at most one a minute, and then only when the time since the last is 20 times
# what writing it cost (checkpoints take at most about a twentieth of the run); at least one every 10 minutes
AUTO_CHECKPOINT_FACTOR, AUTO_CHECKPOINT_MIN_S, AUTO_CHECKPOINT_MAX_S = 20, 60.0, 600.0
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
        for role in models.USER_MODULES:  # a network named by import path: importable and buildable (on the meta
            if isinstance(self.model_options.get(role), dict):  # device: nothing allocated) before the folder is made
                from .models.imports import build

                build(role, self.model_options[role], meta=True)
        if "input_shape" in self.model_options:
            raise ConfigError("input_shape is not an option: it comes from the data")
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
def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) for a single process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group under torchrun (gloo on CPU, NCCL on GPUs); returns (rank, world, device)."""
    rank, world = dist_info()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    return rank, world, device


def all_reduce_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    """Sum over ranks, in place; every rank gets the same bits back. A no-op for one process."""
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def average_across_ranks(world: int) -> Callable[[list[torch.Tensor]], None]:
    """An `allreduce` hook that replaces each tensor by its mean over ranks (RBM pretraining statistics)."""

    def allreduce(tensors: list[torch.Tensor]) -> None:
        for t in tensors:
            all_reduce_sum(t, world).div_(world)

    return allreduce


class _LossModule(nn.Module):
    """DDP synchronises gradients through forward(); this makes forward() the model's loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x)


# ---------------------------------------------------------------- pieces of a run
def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """Independent seeds per (run seed, epoch, stream) so an epoch replays identically after a resume."""
    return (seed * 1_000_003 + epoch * 7919 + stream) % (2**63)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, images: torch.Tensor, batch_size: int, seed: int, rank: int = 0, world: int = 1
) -> dict[str, float]:
    """Mean per-image loss terms over a data set (each rank takes a contiguous shard, sums are all-reduced)."""
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)  # the VAE's test loss samples z: fix it so the number is reproducible
    shard = images.tensor_split(world)[rank]
    sums: dict[str, torch.Tensor] = {}
    for xb in shard.split(batch_size):
        for k, v in model.loss_terms(xb).items():
            sums[k] = sums.get(k, 0.0) + v.detach().double() * len(xb)
    keys = sorted(sums)
    total = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64) for k in keys]) if keys else torch.zeros(0)
    total = all_reduce_sum(total, world)
    model.train(was_training)
    return {k: float(v) / len(images) for k, v in zip(keys, total)}


def history_stopped(history: list[dict], patience: int) -> bool:
    """Early stopping's rule: `patience` epochs have passed since the lowest validation loss."""
    epochs = [h for h in history if "val_loss" in h]
    if not epochs:
        return False
    best = min(epochs, key=lambda h: h["val_loss"])
    return epochs[-1]["epoch"] - best["epoch"] >= patience


def _check_resume_config(old: dict, new: dict) -> None:
    # old run folders resume too; tracking is where the run is logged, not what it computes
    ignore = {"epochs", "out", "device", "versions", "compile", "format_version", "tensorboard", "mlflow",
              "checkpoint_every"}  # fmt: skip
    if "data_info" not in old:  # written before data_info existed
        ignore.add("data_info")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    # a setting added since the old run was written counts as its default there
    diff = [k for k in new if k not in ignore and old.get(k, defaults.get(k)) != new.get(k)]
    if diff:
        raise ConfigError(f"--resume with different settings ({', '.join(diff)}) than the run folder's config.json")


def _check_checkpoint_meta(meta: dict, path: Path) -> tuple[int, list[dict], bool, int]:
    """(epoch, history, pretrained, resumes) of a checkpoint, schema-checked: the file is untrusted."""
    epoch, history = meta.get("epoch"), meta.get("history")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= MAX_COUNT):
        # above MAX_COUNT no --epochs could continue it: the "pass --epochs N" advice would name a refused value
        raise CheckpointError(f"{path}: no valid 'epoch' in its metadata (an integer in [0, {MAX_COUNT}])")
    runs.check_history(history, f"{path}: its history")
    trained = [h["epoch"] for h in history if "train_loss" in h]
    if trained and trained[-1] != epoch:  # the history must end at the checkpoint's epoch, or epochs repeat
        raise CheckpointError(f"{path}: says epoch {epoch} but its history ends at epoch {trained[-1]}")
    resumes = meta.get("resumes", 0)
    if not isinstance(resumes, int):
        raise CheckpointError(f"{path}: 'resumes' is not an integer")
    return epoch, history, bool(meta.get("pretrained")), resumes


def load_data(
    cfg: TrainConfig, device: torch.device, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, dict]:
    """(train, validation or None, test) images of cfg.dataset on `device` (labels are not needed to train),
    and the data's info record (source, sizes, classes, split, content hash) for config.json."""
    data = datamod.get(cfg.dataset, cfg.dataset_options, cfg.data_dir, progress=progress)
    train_x, train_y = data.train_x, data.train_y
    if dynamic_binarization(cfg):  # the grey levels, redrawn each epoch (binarize_epoch); validation and test
        options = {k: v for k, v in cfg.dataset_options.items() if k != "binarize"}  # keep their fixed draws
        gray = datamod.load(cfg.dataset, "train", cfg.data_dir, **options)[0]
    else:
        gray = None
    if cfg.train_limit:
        train_x, train_y = train_x[: cfg.train_limit], train_y[: cfg.train_limit]
        gray = None if gray is None else gray[: cfg.train_limit]
    val_x = None
    info = dict(data.info)
    fraction = default_val_fraction(len(train_y)) if cfg.val_fraction is None else cfg.val_fraction
    info["val_fraction"] = fraction
    if fraction:
        keep, held, info["validation"] = validation_split(train_y.numpy(), fraction)
        train_x, val_x = train_x[torch.from_numpy(keep)], train_x[torch.from_numpy(held)].to(device)
        gray = None if gray is None else gray[torch.from_numpy(keep)]
    if gray is not None:
        train_x = gray
    return train_x.to(device), val_x, data.test_x.to(device), info


def dynamic_binarization(cfg: TrainConfig) -> bool:
    """Whether the run trains on a fresh Bernoulli draw of its train images each epoch (binarize=dynamic)."""
    return not isinstance(cfg.dataset, datamod.Data) and cfg.dataset_options.get("binarize") == "dynamic"


def binarize_epoch(gray: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """The train images of one epoch under dynamic binarisation: Bernoulli(grey level) per pixel, drawn on the
    CPU from (run seed, epoch) alone, so a resumed run replays the draw and a GPU run sees the same images."""
    return datamod.binarize(gray, epoch_seed(seed, epoch, 4))


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "cg":  # Hinton & Salakhutdinov's fine-tuner: three line searches per mini-batch
        return ConjugateGradient(model.parameters(), line_searches=3)
    if cfg.optimizer == "lbfgs":
        return torch.optim.LBFGS(
            model.parameters(), lr=cfg.lr, max_iter=3, history_size=10, line_search_fn="strong_wolfe"
        )
    # the fused kernel updates all parameters in one pass; on CPU the default is one tensor at a time
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)


def precision(cfg: TrainConfig) -> str:
    """The run's matmul precision: --precision, with --amp as the alias of bf16."""
    return "bf16" if cfg.amp else cfg.precision


def pretrain_precision(cfg: TrainConfig, device: torch.device) -> dict:
    """The keyword that gives a model's pretraining (the RBM stack) the run's matmul precision: none at fp32 and
    on a CPU (where --precision trains in float32), so a user model's pretrain() need not know the keyword."""
    name = precision(cfg)
    return {"precision": name} if name != "fp32" and device.type == "cuda" else {}


class CheckpointCadence:
    """When to write a checkpoint at the end of an epoch. `every` seconds since the last one (0: every epoch);
    None: automatic, when the time since the last is at least AUTO_CHECKPOINT_MIN_S and AUTO_CHECKPOINT_FACTOR
    times what writing it took (so checkpoints take at most about a twentieth of the run), and at least every
    AUTO_CHECKPOINT_MAX_S."""

    def __init__(self, every: float | None):
        self.every, self.cost, self.last = every, 0.0, time.monotonic()

    def due(self) -> bool:
        since = time.monotonic() - self.last
        if self.every is None:
            return since >= min(AUTO_CHECKPOINT_MAX_S, max(AUTO_CHECKPOINT_MIN_S, AUTO_CHECKPOINT_FACTOR * self.cost))
        return since >= self.every

    def start(self) -> None:
        self._t0 = time.monotonic()

    def done(self) -> None:
        self.last = time.monotonic()
        self.cost = self.last - self._t0


def burda_stage(epoch: int) -> int:
    """The stage i of epoch `epoch` (counted from 0) in Burda et al.'s schedule: stage i lasts 3^i epochs, so
    stages end after 1, 4, 13, 40, 121, 364, 1093, 3280 epochs."""
    stage, end = 0, 1
    while epoch >= end:
        stage += 1
        end += 3**stage
    return stage


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch `epoch` (from 0): a function of the epoch alone, so a resume replays it."""
    if cfg.lr_schedule == "burda":
        return cfg.lr * 10 ** (-burda_stage(epoch) / 7)
    return cfg.lr


def copy_into(src, old=None):
    """A copy of `src` (nested dicts, lists and tuples of tensors and plain values, as state_dict() returns) whose
    tensors are copied into the same-shaped tensors of `old`, an earlier copy, where it has them, and cloned
    where not; plain values are deep-copied."""
    import copy

    if isinstance(src, torch.Tensor):
        fits = isinstance(old, torch.Tensor) and (old.shape, old.dtype, old.device) == (
            src.shape,
            src.dtype,
            src.device,
        )
        return old.copy_(src.detach()) if fits else src.detach().clone()
    if isinstance(src, dict):
        old = old if isinstance(old, dict) else {}
        return {k: copy_into(v, old.get(k)) for k, v in src.items()}
    if isinstance(src, (list, tuple)):
        old = old if isinstance(old, (list, tuple)) and len(old) == len(src) else [None] * len(src)
        return type(src)(copy_into(v, o) for v, o in zip(src, old))
    return copy.deepcopy(src)


class RunWriter:
    """Rank 0's view of the run folder during training: config at the start, a checkpoint every epoch."""

    def __init__(self, out: Path, model: nn.Module, opt: torch.optim.Optimizer, history: list[dict], enabled: bool):
        self.out, self.model, self.opt, self.history, self.enabled = out, model, opt, history, enabled
        self.pretrained = False
        # continuations from a checkpoint that led to the current epoch (recorded per epoch): the kill test
        # checks with it that a resume never trains again the epochs a checkpoint holds
        self.resumes = 0
        # early stopping: the weights of the epoch with the lowest validation loss so far, kept in the
        # checkpoint (so a resume keeps them too) and written as model.safetensors
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = 0
        self.written_epoch = 0  # the epoch checkpoint.safetensors holds
        self.pending: tuple | None = None  # a finished epoch whose checkpoint was skipped (snapshot)
        self._spare: tuple | None = None  # an older snapshot, whose tensors the next one is copied into

    def load_best_check(self, model: nn.Module, path: Path) -> None:
        """The checkpoint's best weights must fit the model (the file is untrusted)."""
        ref = model.state_dict()
        fits = set(self.best_state) == set(ref) and all(
            self.best_state[k].shape == ref[k].shape and self.best_state[k].dtype == ref[k].dtype for k in ref
        )
        if not fits:
            raise CheckpointError(f"{path}: its best_model weights do not fit the model")

    def keep_best(self, epoch: int) -> None:
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.best_epoch = epoch

    def open(self, config: dict, resume: bool) -> None:
        if not self.enabled:
            return
        runs.remove_stale_temp_files(self.out)  # under the lock: leftovers of a killed writer
        runs.write_json(self.out / "config.json", config)
        if resume:  # a kill may have come between the checkpoint and the files derived from it
            self._write_derived_files()

    def _write_derived_files(self, state: dict | None = None, history: list[dict] | None = None) -> None:
        """model.safetensors (the best epoch's weights when early stopping keeps them, else `state`, else the
        model's) and metrics.jsonl (`history`, else the run's). Derived from checkpoint.safetensors (fsynced) and
        rewritten on resume: no fsync needed here."""
        runs.save_model(self.out, self.model, durable=False, state=self.best_state if state is None else state)
        runs.write_history(self.out, self.history if history is None else history, durable=False)

    def checkpoint(self, epoch: int) -> None:
        if not self.enabled:
            return
        self._write(
            epoch, self.model.state_dict(), self.opt.state_dict(), self.history, self.best_state, self.best_epoch
        )
        self._spare = self._spare or self.pending  # its tensors are reused by the next snapshot
        self.written_epoch, self.pending = epoch, None

    def _write(self, epoch, model_state, opt_state, history, best_state, best_epoch) -> None:
        runs.save_state(
            self.out / "checkpoint.safetensors",
            {
                "model": model_state,
                "optimizer": opt_state,
                **({"best_model": best_state} if best_state is not None else {}),
            },
            meta={
                "epoch": epoch,
                "history": history,
                "pretrained": self.pretrained,
                "resumes": self.resumes,
                "best_epoch": best_epoch,
            },
        )
        self._write_derived_files(best_state if best_state is not None else model_state, history)

    def snapshot(self, epoch: int) -> None:
        """The state at the end of `epoch`, kept in memory (clones on the device: far cheaper than a checkpoint)
        when its checkpoint is skipped, and written if the run is stopped (SIGTERM, Ctrl-C) before the next."""
        if not self.enabled:
            return
        # two sets of buffers take turns: the new snapshot is copied into the spare one, never into the pending
        # one, so an interruption mid-copy still finds the previous snapshot whole. After the first two, a snapshot
        # allocates nothing (fresh memory costs page faults, which on a CPU took longer than the copy itself)
        spare, self._spare = self._spare, None
        model_state = copy_into(self.model.state_dict(), spare[1] if spare else None)
        opt_state = copy_into(self.opt.state_dict(), spare[2] if spare else None)
        best = None if self.best_state is None else dict(self.best_state)  # replaced, never modified in place
        self._spare, self.pending = self.pending, (epoch, model_state, opt_state, list(self.history), best,
                                                   self.best_epoch)  # fmt: skip

    def write_pending(self) -> None:
        """On an interruption: the last finished epoch's snapshot, if newer than the last checkpoint."""
        if self.enabled and self.pending is not None and self.pending[0] > self.written_epoch:
            runs.fault_point("stop")  # the tests' second signal, while this checkpoint is being written
            self._write(*self.pending)
            self.written_epoch, self.pending = self.pending[0], None


def train_one_epoch(
    step_model: nn.Module,
    opt: torch.optim.Optimizer,
    train_x: torch.Tensor,
    cfg: TrainConfig,
    epoch: int,
    rank: int,
    world: int,
    autocast,
    bar=None,
) -> tuple[float, int]:
    """One pass over a fresh permutation of train_x; returns (mean train loss per image, steps taken).

    Stops early (the loss is then non-finite) when the loss of any rank is NaN or inf at a check."""
    if dynamic_binarization(cfg):
        train_x = binarize_epoch(train_x, cfg.seed, epoch)
    n = len(train_x)
    device = train_x.device
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 0))).to(device)
    torch.manual_seed(epoch_seed(cfg.seed, epoch, 1))  # the model's own noise (VAE eps, DAE corruption)
    running = torch.zeros((), dtype=torch.float64, device=device)  # this rank's share of sum(loss * batch)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    host_reads = device.type == "cpu"
    batches = perm.split(cfg.batch_size)
    for step, idx in enumerate(batches):
        local = idx.tensor_split(world)[rank]
        xb = train_x[local]
        scale = len(local) * world / len(idx)  # makes DDP's gradient average the global-batch mean

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = step_model(xb)
            (loss * scale).backward()
            return loss

        runs.fault_point("step")
        if cfg.optimizer in CLOSURE_OPTIMIZERS:
            # the line search compares objective values: every rank must see the same one, the global
            # batch mean (the gradients already are, through DDP), or the ranks' steps diverge
            def global_closure() -> torch.Tensor:
                return all_reduce_sum(closure().detach() * scale, world) / world

            loss = opt.step(global_closure)
            running += loss.detach() * len(idx) / world
        else:
            loss = closure()
            opt.step()
            running += loss.detach() * len(local)
        # no host synchronisation inside the loop on a GPU: .item() would wait for every queued kernel. The
        # non-finite check is a flag kept on the device, read every 50 steps on the CPU (where reading is
        # free) and once at the end of the epoch on a GPU (a diverged epoch then runs to its end)
        nonfinite |= ~torch.isfinite(loss.detach())
        if bar is not None:
            bar.update(1)
            if host_reads and (step % 20 == 0 or step == len(batches) - 1):
                bar.status(f"epoch {epoch + 1}, loss {loss.item():.4g}")
        if (host_reads and step % 50 == 0) or step == len(batches) - 1:  # all-reduced: every rank stops together
            if all_reduce_sum(nonfinite.to(torch.float64), world).item() > 0:
                return float("nan"), step + 1
    return float(all_reduce_sum(running, world)) / n, len(batches)


# ---------------------------------------------------------------- the trainer
def train(
    cfg: TrainConfig, resume: bool = False, progress: bool = True, log=print, epoch_lines: bool | None = None
) -> Path:
    """Train `cfg.model` on `cfg.dataset`; return the run folder. Rank 0 holds the folder's lock throughout.
    progress: tqdm bars on stderr; epoch_lines: one `log` line per epoch (None: as progress)."""
    cfg.validate()
    if cfg.init_weights and not resume and not Path(cfg.init_weights).is_file():  # before the folder is made
        raise ConfigError(f"init_weights: no file {cfg.init_weights}")
    if resume and not Path(cfg.out).exists():  # before the lock makes the folder: a typo'd name, nothing to continue
        raise CheckpointError(f"--resume: no checkpoint.safetensors in {cfg.out} (the folder does not exist)")
    rank, world, device = setup_distributed(resolve_device(cfg.device))
    if precision(cfg) != "fp32" and device.type != "cuda":
        warnings.warn(f"--precision {precision(cfg)} only applies on CUDA; training in float32 on CPU")
    with runs.RunLock(cfg.out) if rank == 0 else contextlib.nullcontext():
        return _train(cfg, resume, progress, log if (progress if epoch_lines is None else epoch_lines) else None,
                      rank, world, device)  # fmt: skip


def _train(cfg: TrainConfig, resume: bool, progress: bool, log, rank: int, world: int, device: torch.device) -> Path:
    """train()'s work; `log` None: no epoch lines."""
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.safetensors"
    if not resume and ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not ckpt_path.exists():
        leftovers = (
            [p for p in out.iterdir() if p.name != ".lock" and not p.name.startswith(".")] if out.is_dir() else []
        )
        if not (out / "config.json").exists() and leftovers:
            raise CheckpointError(f"--resume: no checkpoint.safetensors in {out}")
        # stopped before its first checkpoint (even before config.json: only the lock is there): from scratch
        resume = False

    # 1. data, model, optimizer, and the state to resume from
    torch.manual_seed(cfg.seed)
    train_x, val_x, test_x, data_info = load_data(cfg, device, progress and rank == 0)
    options = {"input_shape": list(train_x.shape[1:]), **cfg.model_options}
    if not models.has_module_instances(options):  # modules given from Python are built already
        models.check_memory(cfg.model, options, training=True)  # before anything is allocated
    model = models.create(cfg.model, **options).to(device)
    opt = make_optimizer(cfg, model)
    config = {
        **cfg.to_json(),
        "mlflow": tracking.redact_uri(cfg.mlflow),
        "precision": precision(cfg),  # --amp resolved to bf16
        # what happens, not what was asked: asked for without the package installed, TensorBoard is off
        "tensorboard": cfg.tensorboard and tracking.tensorboard_available(),
        "model_options": model.options,
        "data_info": data_info,
        "format_version": runs.FORMAT_VERSION,
        "val_fraction": data_info.pop("val_fraction"),  # the default resolved: what the split was carved with
        "n_train": len(train_x),
        "n_val": 0 if val_x is None else len(val_x),
        "n_test": len(test_x),
        "world_size": world,
    }
    if cfg.init_weights:  # a resume keeps the record of the run's start and never reads the file (config.json is
        # untrusted, and the checkpoint holds those weights already); a new run hashes the file it will read
        old = runs.read_config(out) if resume else {}
        config["init_weights_sha256"] = old.get("init_weights_sha256") if resume else runs.file_sha256(cfg.init_weights)
    start_epoch, history = 0, []
    run = RunWriter(out, model, opt, history, enabled=rank == 0)
    if resume:
        _check_resume_config(runs.read_config(out), config)
        state, meta = runs.load_state(ckpt_path, runs.expected_bytes(model, copies=5))  # weights, Adam's 2, best
        start_epoch, old_history, run.pretrained, run.resumes = _check_checkpoint_meta(meta, ckpt_path)
        if cfg.epochs < start_epoch:  # config.json must always describe the weights beside it
            raise ConfigError(
                f"--epochs {cfg.epochs} is fewer than the {start_epoch} epochs {out} has already "
                f"trained; pass --epochs {start_epoch} or more to continue it"
            )
        if not isinstance(state.get("model"), dict) or not isinstance(state.get("optimizer"), dict):
            raise CheckpointError(f"{ckpt_path}: no model or optimizer state")
        if cfg.init_weights and not run.pretrained:  # every run that starts from init_weights checkpoints them first
            raise CheckpointError(
                f"{out}/config.json names init_weights, but the checkpoint did not start from them (an edited "
                "config.json?); --resume never reads a weights file a run folder names"
            )
        runs.load_weights(model, state["model"], ckpt_path)
        opt.load_state_dict(runs.checked_optimizer_state(opt, state["optimizer"], ckpt_path, start_epoch))
        history.extend(old_history)
        run.resumes += 1
        run.written_epoch = start_epoch
        if cfg.early_stopping and isinstance(state.get("best_model"), dict):
            if not all(isinstance(v, torch.Tensor) for v in state["best_model"].values()):
                raise CheckpointError(f"{ckpt_path}: its best_model weights are not all tensors")
            run.best_state = {k: v.to(device) for k, v in state["best_model"].items()}
            run.load_best_check(model, ckpt_path)
            run.best_epoch = meta.get("best_epoch") if isinstance(meta.get("best_epoch"), int) else 0
    elif cfg.init_weights:  # a new run: the weights it starts from are read and checked before any file is written
        tensors, _ = runs.read_safetensors(cfg.init_weights, runs.expected_bytes(model))
        runs.load_weights(model, {k: v.to(device) for k, v in tensors.items()}, Path(cfg.init_weights))
    config["versions"] = runs.package_versions()
    run.open(config, resume)  # every check has passed: the first write to the run folder
    say = log if rank == 0 else None

    # 2. the starting weights: another run's (init_weights, loaded above), or the model's own pretraining (the deep
    # AE's RBM stack), once, checkpointed as epoch 0
    if cfg.init_weights and not run.pretrained:  # a resume has them in its checkpoint already: never read again
        run.pretrained = True
        history.append({"epoch": 0, "phase": "init_weights", "time_s": 0.0})
        run.checkpoint(0)
    if model.needs_pretraining and not run.pretrained:
        t0 = time.perf_counter()
        bar_label = (out.name or str(out)) if progress and rank == 0 else None  # its bar is labelled by the run
        low = pretrain_precision(cfg, device)
        if world > 1:  # each rank runs CD on its equal share; the CD statistics are averaged every batch
            share = len(train_x) // world
            model.pretrain(
                train_x[rank * share : (rank + 1) * share],
                seed=cfg.seed,
                log=say,
                allreduce=average_across_ranks(world),
                world=world,
                progress=bar_label,
                **low,
            )
        else:
            model.pretrain(train_x, seed=cfg.seed, log=say, progress=bar_label, **low)
        run.pretrained = True
        history.append({"epoch": 0, "phase": "pretrain", "time_s": time.perf_counter() - t0})
        run.checkpoint(0)

    # 3. the epochs
    step_model: nn.Module = _LossModule(model)
    if cfg.compile:  # static shapes: one graph for the full batches, one for the last, shorter one
        step_model = torch.compile(step_model, dynamic=False)
        if progress or say is not None:
            print("aelab: note: --compile: the first steps of the first epoch compile the model, which can take "
                  "minutes (most on a CPU); the later epochs run the compiled graph", file=sys.stderr)  # fmt: skip
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_model = DDP(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.tensorboard and not config["tensorboard"] and rank == 0 and progress:  # with the bars
        tracking.note_tensorboard_missing()  # once per process: an experiment's many runs say it once
    tracker = tracking.Tracker(out, config["tensorboard"], cfg.mlflow, enabled=rank == 0)
    tracker.start(config, resume, history)
    bar = None
    if progress and rank == 0:  # a bar on a terminal; elsewhere the epoch lines and a heartbeat (aelab.progress)
        steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
        bar = Progress(out.name or str(out), total=steps_per_epoch * (cfg.epochs - start_epoch), unit="step")
        bar.status("training")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision(cfg) == "bf16" and device.type == "cuda")
    cadence = CheckpointCadence(cfg.checkpoint_every)
    try:
        with float32_matmul(precision(cfg)):
            _epochs(cfg, model, opt, step_model, run, tracker, history, start_epoch, resume, train_x, val_x, test_x,
                    rank, world, autocast, bar, say, cadence, out, ckpt_path)  # fmt: skip
    except BaseException as e:  # SIGTERM (SystemExit), Ctrl-C, a NaN: the last finished epoch is not lost
        run.write_pending()
        if isinstance(e, (KeyboardInterrupt, SystemExit)):  # what the command line says (aelab.cli.stopped_line)
            finished = max((h["epoch"] for h in history if "train_loss" in h), default=start_epoch)
            e.aelab_stop = {"epoch": min(finished + 1, cfg.epochs), "epochs": cfg.epochs, "out": str(out),
                            "checkpoint": run.written_epoch if ckpt_path.exists() else None}  # fmt: skip
        raise
    finally:
        if bar is not None:
            bar.close()

    # 4. finish
    images = None
    if tracker.tb is not None:
        with torch.no_grad():
            model.eval()
            images = model(test_x[:16]).clamp(0, 1).cpu()
    tracker.finish(images, cfg.epochs)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return out


def _epochs(cfg, model, opt, step_model, run, tracker, history, start_epoch, resume, train_x, val_x, test_x,
            rank, world, autocast, bar, say, cadence, out, ckpt_path) -> None:  # fmt: skip
    """The epoch loop of train(): train, score the test (and validation) split, record, checkpoint."""
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.early_stopping and history_stopped(history, cfg.early_stopping):
            break  # a resumed run that had already stopped early
        if resume and epoch == start_epoch and rank == 0:  # the weights change now: older results are stale
            runs.mark_evaluation_stale(out)
        if hasattr(model, "start_epoch"):  # a schedule inside the loss (the VAE's KL warm-up): set from the epoch
            model.start_epoch(epoch)  # alone, so that a resume replays it
        if cfg.lr_schedule != "constant":
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, epoch)
        t0 = time.perf_counter()
        train_loss, steps = train_one_epoch(step_model, opt, train_x, cfg, epoch, rank, world, autocast, bar)
        train_time = time.perf_counter() - t0
        test_terms = evaluate_loss(model, test_x, cfg.eval_batch_size, epoch_seed(cfg.seed, epoch, 2), rank, world)
        if not (math.isfinite(train_loss) and all(math.isfinite(v) for v in test_terms.values())):
            if bar is not None:
                bar.close()
            tracker.finish(status="FAILED")
            kept = f"epoch {history[-1]['epoch']}" if history else "none: no epoch had finished"
            raise TrainingDiverged(
                f"the loss became NaN/inf in epoch {epoch + 1} (step {steps}); stopped. "
                f"The last good checkpoint ({kept}) is kept in {ckpt_path}"
            )
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "test_loss": test_terms.pop("loss"),
            **{f"test_{k}": v for k, v in test_terms.items()},
            "train_time_s": train_time,
            "train_samples_per_s": len(train_x) / train_time,
            "resumes": run.resumes,
            **({"lr": learning_rate(cfg, epoch)} if cfg.lr_schedule != "constant" else {}),
        }
        if val_x is not None:  # the split that chooses; the test loss above is only reported
            val_terms = evaluate_loss(model, val_x, cfg.eval_batch_size, epoch_seed(cfg.seed, epoch, 3), rank, world)
            record["val_loss"] = val_terms.pop("loss")
            record.update({f"val_{k}": v for k, v in val_terms.items()})
            if cfg.early_stopping:
                if record["val_loss"] < min((h["val_loss"] for h in history if "val_loss" in h), default=math.inf):
                    run.keep_best(epoch + 1)
                record["best_epoch"] = run.best_epoch
        history.append(record)
        last = epoch + 1 == cfg.epochs or bool(cfg.early_stopping and history_stopped(history, cfg.early_stopping))
        if last or cadence.due():
            cadence.start()
            run.checkpoint(epoch + 1)
            cadence.done()
        else:
            run.snapshot(epoch + 1)
        tracker.log_epoch(record)
        if say is not None:  # one line per epoch, written around the bar so it does not garble it
            from tqdm import tqdm

            with tqdm.external_write_mode():
                say(
                    f"{out.name or out} epoch {epoch + 1}/{cfg.epochs}: "
                    f"train_loss {train_loss:.5g}"
                    + (f" val_loss {record['val_loss']:.5g}" if "val_loss" in record else "")
                    + f" test_loss {record['test_loss']:.5g}"
                    # the unit once, on the first line a process prints
                    + (f" ({runs.loss_unit(cfg.to_json())})" if epoch == start_epoch else "")
                )
            if bar is not None:
                bar.touch()


def pretrain(cfg: TrainConfig, progress: bool = True, log=print) -> Path:
    """Only the model's pretraining (the deep AE's RBM stack), on the train split that `train(cfg)` would use
    (its validation split carved off first), into cfg.out: model.safetensors, model.json and pretrain.json
    (the settings and the time). Several fine-tuning runs can then start from the same pretrained weights
    (TrainConfig.init_weights = OUT/model.safetensors) instead of each pretraining again. A folder whose
    pretrain.json matches is kept as it is."""
    cfg.validate()
    out = Path(cfg.out)
    wanted = json.loads(json.dumps({k: v for k, v in cfg.to_json().items() if k not in ("out", "device", "epochs")}))
    done = out / "pretrain.json"
    if done.is_file() and (out / "model.safetensors").is_file():
        if runs.read_json(done).get("settings") == wanted:
            return out
        raise ConfigError(f"{out} holds a pretraining with other settings; choose another folder or remove it")
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    with runs.RunLock(out):
        torch.manual_seed(cfg.seed)
        train_x, _, _, data_info = load_data(cfg, device, progress)
        options = {"input_shape": list(train_x.shape[1:]), **cfg.model_options}
        model = models.create(cfg.model, **options).to(device)
        if not model.needs_pretraining:
            raise ConfigError(f"model {cfg.model!r} with these options has no pretraining")
        t0 = time.perf_counter()
        model.pretrain(
            train_x,
            seed=cfg.seed,
            log=log if progress else None,
            progress=out.name if progress else None,
            **pretrain_precision(cfg, device),
        )
        runs.save_model(out, model)
        runs.write_json(
            done,
            {
                "settings": wanted,
                "n_train": len(train_x),
                "data_info": data_info,
                "time_s": time.perf_counter() - t0,
                "device": str(device),
                "versions": runs.package_versions(),
            },
        )
    return out
