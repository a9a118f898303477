"""One trainer for every aelab model.

    data (in-memory tensors) -> model.loss(x) -> Adam (or L-BFGS) -> run folder

The run folder holds config.json, metrics.jsonl, model.safetensors + model.json
and checkpoint.safetensors (model, optimizer, epoch, metrics so far). All are
written atomically at the end of each epoch, so `resume=True` restarts from the
last complete epoch and, because every epoch re-seeds its own random streams
from (seed, epoch), ends bit-identical to an uninterrupted run on CPU.

Under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel:
every rank draws the same permutation, takes its contiguous share of each
global batch, and scales its mean loss by its share, so that the averaged
gradient is exactly the gradient of the global batch mean.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import data as datamod
from . import io, models
from .errors import CheckpointError, ConfigError, TrainingDiverged


@dataclass
class TrainConfig:
    model: str = "ae"
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist5k"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    train_limit: int | None = None  # use only the first N training images (tests, quick runs)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | lbfgs
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    out: str = "runs/run"
    eval_batch_size: int = 1000

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr!r}")
        if self.train_limit is not None and self.train_limit <= 0:
            raise ConfigError(f"--train-limit must be a positive integer, got {self.train_limit!r}")
        if self.optimizer not in ("adam", "lbfgs"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose from adam, lbfgs")
        if self.model not in models.names():
            raise ConfigError(f"unknown model {self.model!r}; choose from {', '.join(models.names())}")
        if self.dataset not in datamod.names():
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose from {', '.join(datamod.names())}")
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available here; use --device cpu")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}; choose from cpu, cuda, cuda:N")


def package_versions() -> dict[str, str]:
    import numpy
    import safetensors
    import sklearn

    from . import __version__

    return {"aelab": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__, "safetensors": safetensors.__version__,
            "platform": platform.platform(), "torch_threads": str(torch.get_num_threads())}


# ---------------------------------------------------------------- run-folder files
def save_model(run_dir: str | os.PathLike, model: nn.Module, durable: bool = True) -> None:
    """model.safetensors (a plain state dict, readable by any safetensors tool) + model.json."""
    from safetensors.torch import save as st_save

    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    io.atomic_write_bytes(run_dir / "model.safetensors", st_save(state, metadata={"format_version": str(io.FORMAT_VERSION)}),
                          durable=durable)
    io.write_json(run_dir / "model.json", {"format_version": io.FORMAT_VERSION, "name": model.model_name,
                                          "options": model.options}, durable=durable)


def load_model(run_dir: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild a model from model.json and load model.safetensors; no Python object deserialisation."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    spec = io.read_json(run_dir / "model.json")
    if int(spec.get("format_version", 0)) > io.FORMAT_VERSION:
        raise CheckpointError(f"{run_dir}/model.json: written by a newer aelab (format {spec['format_version']}, "
                              f"this one reads <= {io.FORMAT_VERSION})")
    try:
        model = models.create(spec["name"], **spec["options"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run_dir}/model.json: cannot build the model ({e})") from None
    state, _ = io.load_state(run_dir / "model.safetensors")
    load_weights(model, state, run_dir / "model.safetensors")
    return model.to(device)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise CheckpointError(f"{path}: weights do not match the architecture in model.json (e.g. {diff})")
    model.load_state_dict(state)


# ---------------------------------------------------------------- distributed helpers
def dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class _LossModule(nn.Module):
    """DDP synchronises gradients through forward(); this makes forward() the model's loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x)


def _all_reduce_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


PRETRAIN_BATCH = 100  # Hinton's RBM batch; under DDP each rank takes its share of it


def _average_across_ranks(world: int):
    def allreduce(tensors: list[torch.Tensor]) -> None:
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t)
            t.div_(world)

    return allreduce


# ---------------------------------------------------------------- training
def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """Independent seeds per (run seed, epoch, stream) so an epoch replays identically after a resume."""
    return (seed * 1_000_003 + epoch * 7919 + stream) % (2**63)


@torch.no_grad()
def evaluate_loss(model: nn.Module, images: torch.Tensor, batch_size: int, seed: int,
                  rank: int = 0, world: int = 1) -> dict[str, float]:
    """Mean per-image loss terms over a data set (each rank takes a contiguous shard, sums are all-reduced)."""
    model.eval()
    torch.manual_seed(seed)  # the VAE's test loss samples z: fix it so the number is reproducible
    shard = images.tensor_split(world)[rank]
    sums: dict[str, torch.Tensor] = {}
    for xb in shard.split(batch_size):
        terms = model.loss_terms(xb) if hasattr(model, "loss_terms") else {"loss": model.loss(xb)}
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach().double() * len(xb)
    keys = sorted(sums)
    total = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64) for k in keys]) if keys else torch.zeros(0)
    total = _all_reduce_sum(total, world)
    model.train()
    return {k: float(v) / len(images) for k, v in zip(keys, total)}


def _check_resume_config(old: dict, new: dict) -> None:
    ignore = {"epochs", "out", "device"}
    diff = [k for k in new if k not in ignore and old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(f"--resume with different settings ({', '.join(diff)}) than the run folder's config.json")


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, log=print) -> Path:
    """Train `cfg.model` on `cfg.dataset`; return the run folder."""
    cfg.validate()
    rank, world = dist_info()
    device = resolve_device(cfg.device)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    if cfg.amp and device.type != "cuda":
        warnings.warn("--amp (bf16 autocast) only applies on CUDA; training in float32 on CPU")
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.safetensors"
    if not resume and ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not ckpt_path.exists():
        if not (out / "config.json").exists():
            raise CheckpointError(f"--resume: no checkpoint.safetensors in {out}")
        resume = False  # the run was stopped before its first checkpoint: start it again from scratch

    torch.manual_seed(cfg.seed)
    train_x, _ = datamod.load(cfg.dataset, "train", cfg.data_dir, **cfg.dataset_options)
    test_x, _ = datamod.load(cfg.dataset, "test", cfg.data_dir, **cfg.dataset_options)
    if cfg.train_limit:
        train_x = train_x[: cfg.train_limit]
    train_x, test_x = train_x.to(device), test_x.to(device)
    options = {"input_shape": list(train_x.shape[1:]), **cfg.model_options}
    try:
        model = models.create(cfg.model, **options).to(device)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model {cfg.model!r}: {e}") from None

    config = {**dataclasses.asdict(cfg), "model_options": model.options, "format_version": io.FORMAT_VERSION,
              "n_train": len(train_x), "n_test": len(test_x), "world_size": world}
    if cfg.optimizer == "lbfgs":
        opt: torch.optim.Optimizer = torch.optim.LBFGS(model.parameters(), lr=cfg.lr, max_iter=3, history_size=10,
                                                       line_search_fn="strong_wolfe")
    else:
        # the fused kernel updates all parameters in one pass; on CPU the default is one tensor at a time
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)

    start_epoch, history, pretrained = 0, [], False
    if resume:
        old = io.read_json(out / "config.json")
        _check_resume_config(old, config)
        state, meta = io.load_state(ckpt_path)
        load_weights(model, state["model"], ckpt_path)
        opt.load_state_dict(state["optimizer"])
        start_epoch, history, pretrained = int(meta["epoch"]), list(meta["history"]), bool(meta.get("pretrained"))
    config["versions"] = package_versions()
    is_writer = rank == 0

    def write_run_files() -> None:  # model.safetensors/json and metrics.jsonl, derived from the checkpoint
        # derived from checkpoint.safetensors (fsynced) and rewritten on resume: no fsync needed here
        save_model(out, model, durable=False)
        io.atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history), durable=False)

    def checkpoint(epoch: int) -> None:
        if not is_writer:
            return
        io.save_state(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict()},
                      meta={"epoch": epoch, "history": history, "pretrained": pretrained})
        write_run_files()

    if is_writer:
        out.mkdir(parents=True, exist_ok=True)
        io.remove_stale_temp_files(out)
        io.write_json(out / "config.json", config)
        if resume:  # a kill may have come between the checkpoint and the files derived from it
            write_run_files()

    if getattr(model, "pretrain_required", False) and not pretrained:
        t0 = time.perf_counter()
        pretrain_x, extra = train_x, {}
        if world > 1:  # each rank runs CD on its equal share; the CD statistics are averaged every batch
            share = len(train_x) // world
            pretrain_x = train_x[rank * share:(rank + 1) * share]
            extra = {"allreduce": _average_across_ranks(world), "batch_size": max(1, PRETRAIN_BATCH // world)}
        model.pretrain(pretrain_x, seed=cfg.seed, log=log if (progress and is_writer) else None, **extra)
        pretrained = True
        history.append({"epoch": 0, "phase": "pretrain", "time_s": time.perf_counter() - t0})
        checkpoint(0)

    step_model: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_model = DDP(_LossModule(model), device_ids=[device.index] if device.type == "cuda" else None)
    else:
        step_model = _LossModule(model)

    tb = _tensorboard_writer(out) if is_writer else None
    n = len(train_x)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    bar = None
    if progress and is_writer:
        from tqdm import tqdm

        bar = tqdm(total=steps_per_epoch * (cfg.epochs - start_epoch), desc=f"{cfg.model}", unit="step",
                   mininterval=0.5, file=sys.stderr)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 0))).to(device)
        torch.manual_seed(epoch_seed(cfg.seed, epoch, 1))  # the model's own noise (VAE eps, DAE corruption)
        running = torch.zeros((), dtype=torch.float64, device=device)
        for step, idx in enumerate(perm.split(cfg.batch_size)):
            local = idx.tensor_split(world)[rank]
            xb = train_x[local]
            scale = len(local) * world / len(idx)  # makes DDP's gradient average the global-batch mean

            def closure():
                opt.zero_grad(set_to_none=True)
                with autocast:
                    loss = step_model(xb)
                (loss * scale).backward()
                return loss

            io.fault_point("step")
            if cfg.optimizer == "lbfgs":
                loss = opt.step(closure)
            else:
                loss = closure()
                opt.step()
            running += loss.detach() * len(local)
            if bar is not None:
                bar.update(1)
                if step % 20 == 0 or step == steps_per_epoch - 1:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4g}")
            if step % 50 == 0 and not torch.isfinite(loss):
                break
        train_time = time.perf_counter() - t0
        train_loss = float(_all_reduce_sum(running.clone(), world)) / n
        test_terms = evaluate_loss(model, test_x, cfg.eval_batch_size, epoch_seed(cfg.seed, epoch, 2), rank, world)
        if not (math.isfinite(train_loss) and all(math.isfinite(v) for v in test_terms.values())):
            if bar is not None:
                bar.close()
            last = f"epoch {start_epoch if not history else history[-1]['epoch']}"
            raise TrainingDiverged(f"the loss became NaN/inf in epoch {epoch + 1}; stopped. The last good checkpoint "
                                   f"({last}) is kept in {ckpt_path}")
        record = {"epoch": epoch + 1, "train_loss": train_loss, "test_loss": test_terms.pop("loss"),
                  **{f"test_{k}": v for k, v in test_terms.items()},
                  "train_time_s": train_time, "train_samples_per_s": n / train_time}
        history.append(record)
        checkpoint(epoch + 1)
        if tb is not None:
            for k, v in record.items():
                if k != "epoch":
                    tb.add_scalar(k, v, epoch + 1)
    if bar is not None:
        bar.close()
    if tb is not None:
        with torch.no_grad():
            model.eval()
            tb.add_images("reconstructions", model(test_x[:16]).clamp(0, 1).cpu(), cfg.epochs)
        tb.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return out


def _tensorboard_writer(out: Path):
    """A SummaryWriter in out/tb when the optional tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))
