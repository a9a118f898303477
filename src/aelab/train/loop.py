"""The trainer: train() and its epoch loop, one epoch, the loss on a split, the optimiser and its precision, and the
checks that a resume continues the run it claims to."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .. import models, runs, tracking
from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..optim import ConjugateGradient
from ..options import MAX_COUNT
from ..precision import float32_matmul
from ..progress import Progress
from ..runs.writer import CheckpointCadence, RunWriter
from .config import CLOSURE_OPTIMIZERS, TrainConfig, resolve_device
from .data import binarize_epoch, dynamic_binarization, load_data
from .distributed import all_reduce_sum, average_across_ranks, setup_distributed
from .schedules import epoch_seed, history_stopped, learning_rate


class _LossModule(nn.Module):
    """DDP synchronises gradients through forward(); this makes forward() the model's loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x)


# ---------------------------------------------------------------- pieces of a run


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
    resume = _resumes(out, ckpt_path, resume)

    # 1. data, model, optimizer, and the state to resume from
    torch.manual_seed(cfg.seed)
    train_x, val_x, test_x, data_info = load_data(cfg, device, progress and rank == 0)
    model = _build_model(cfg, train_x, device)
    opt = make_optimizer(cfg, model)
    config = _run_config(cfg, model, resume, data_info, train_x, val_x, test_x, world)
    history: list[dict] = []
    run = RunWriter(out, model, opt, history, enabled=rank == 0)
    start_epoch = _load_start(cfg, model, opt, run, history, config, resume, ckpt_path, device)
    config["versions"] = runs.package_versions()
    run.open(config, resume)  # every check has passed: the first write to the run folder
    say = log if rank == 0 else None

    # 2. the starting weights: another run's (init_weights, loaded above), or the model's own pretraining
    _starting_weights(cfg, model, run, history, train_x, progress, rank, world, device, say)

    # 3. the epochs
    step_model = _step_model(cfg, model, world, device, note=progress or say is not None)
    tracker = _start_tracker(cfg, config, resume, history, rank, progress)
    bar = _epoch_bar(cfg, out, len(train_x), start_epoch) if progress and rank == 0 else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision(cfg) == "bf16" and device.type == "cuda")
    cadence = CheckpointCadence(cfg.checkpoint_every)
    try:
        with float32_matmul(precision(cfg)):
            _epochs(cfg, model, opt, step_model, run, tracker, history, start_epoch, resume, train_x, val_x, test_x,
                    rank, world, autocast, bar, say, cadence, out, ckpt_path)  # fmt: skip
    except BaseException as e:  # SIGTERM (SystemExit), Ctrl-C, a NaN: the last finished epoch is not lost
        run.write_pending()
        if isinstance(e, (KeyboardInterrupt, SystemExit)):  # what the command line says (aelab.cli.stopped_line)
            e.aelab_stop = _stop_record(cfg, run, history, start_epoch, out, ckpt_path)
        raise
    finally:
        if bar is not None:
            bar.close()

    # 4. finish
    _finish(model, tracker, test_x, cfg.epochs, world)
    return out


def _resumes(out: Path, ckpt_path: Path, resume: bool) -> bool:
    """Whether the run continues a checkpoint: a new run must not find one, a resume must (or find a folder that
    stopped before its first checkpoint, which starts from scratch)."""
    if not resume and ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not ckpt_path.exists():
        leftovers = (
            [p for p in out.iterdir() if p.name != ".lock" and not p.name.startswith(".")] if out.is_dir() else []
        )
        if not (out / "config.json").exists() and leftovers:
            raise CheckpointError(f"--resume: no checkpoint.safetensors in {out}")
        # stopped before its first checkpoint (even before config.json: only the lock is there): from scratch
        return False
    return resume


def _build_model(cfg: TrainConfig, train_x: torch.Tensor, device: torch.device) -> nn.Module:
    """The model for the data's image shape, on `device`; its memory checked before anything is allocated."""
    options = {"input_shape": list(train_x.shape[1:]), **cfg.model_options}
    if not models.has_module_instances(options):  # modules given from Python are built already
        models.check_memory(cfg.model, options, training=True)  # before anything is allocated
    return models.create(cfg.model, **options).to(device)


def _run_config(cfg, model, resume, data_info, train_x, val_x, test_x, world) -> dict:
    """What config.json records: the settings as run (the precision resolved, TensorBoard as it is), the model's
    options, the data and its splits, and the SHA-256 of init_weights (a resume keeps the one of the run's start)."""
    out = Path(cfg.out)
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
    return config


def _load_start(cfg, model, opt, run, history, config, resume, ckpt_path, device) -> int:
    """The epoch to start from. A resume checks the checkpoint (untrusted) against `config` and loads its weights,
    optimizer state, history and best epoch into model, opt, history and run; a new run loads init_weights, if
    given, into the model (read and checked before any file is written) and starts at 0."""
    out = Path(cfg.out)
    if not resume:
        if cfg.init_weights:
            tensors, _ = runs.read_safetensors(cfg.init_weights, runs.expected_bytes(model))
            runs.load_weights(model, {k: v.to(device) for k, v in tensors.items()}, Path(cfg.init_weights))
        return 0
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
    return start_epoch


def _starting_weights(cfg, model, run, history, train_x, progress, rank, world, device, say) -> None:
    """The starting weights: another run's (init_weights, loaded already), or the model's own pretraining (the deep
    AE's RBM stack), once, checkpointed as epoch 0."""
    out = Path(cfg.out)
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


def _step_model(cfg: TrainConfig, model: nn.Module, world: int, device: torch.device, note: bool) -> nn.Module:
    """What a step calls: the model's loss as forward(), compiled with --compile (`note`: say that it compiles) and
    wrapped in DistributedDataParallel under torchrun."""
    step_model: nn.Module = _LossModule(model)
    if cfg.compile:  # static shapes: one graph for the full batches, one for the last, shorter one
        step_model = torch.compile(step_model, dynamic=False)
        if note:
            print("aelab: note: --compile: the first steps of the first epoch compile the model, which can take "
                  "minutes (most on a CPU); the later epochs run the compiled graph", file=sys.stderr)  # fmt: skip
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_model = DDP(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    return step_model


def _start_tracker(cfg, config, resume, history, rank, progress) -> tracking.Tracker:
    """TensorBoard and MLflow (rank 0), started with the config and the history so far."""
    if cfg.tensorboard and not config["tensorboard"] and rank == 0 and progress:  # with the bars
        tracking.note_tensorboard_missing()  # once per process: an experiment's many runs say it once
    tracker = tracking.Tracker(Path(cfg.out), config["tensorboard"], cfg.mlflow, enabled=rank == 0)
    tracker.start(config, resume, history)
    return tracker


def _epoch_bar(cfg: TrainConfig, out: Path, n_train: int, start_epoch: int) -> Progress:
    """The steps' bar on a terminal; elsewhere the epoch lines and a heartbeat (aelab.progress)."""
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    bar = Progress(out.name or str(out), total=steps_per_epoch * (cfg.epochs - start_epoch), unit="step")
    bar.status("training")
    return bar


def _stop_record(cfg: TrainConfig, run, history: list[dict], start_epoch: int, out: Path, ckpt_path: Path) -> dict:
    """What the command line says of a run stopped by SIGTERM or Ctrl-C: the epoch it stopped in, and the
    checkpoint kept."""
    finished = max((h["epoch"] for h in history if "train_loss" in h), default=start_epoch)
    return {"epoch": min(finished + 1, cfg.epochs), "epochs": cfg.epochs, "out": str(out),
            "checkpoint": run.written_epoch if ckpt_path.exists() else None}  # fmt: skip


def _finish(model: nn.Module, tracker, test_x: torch.Tensor, epochs: int, world: int) -> None:
    """The tracker's last record (with 16 test reconstructions for TensorBoard); under torchrun, every rank waits
    for the others."""
    images = None
    if tracker.tb is not None:
        with torch.no_grad():
            model.eval()
            images = model(test_x[:16]).clamp(0, 1).cpu()
    tracker.finish(images, epochs)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def run_label(out: Path) -> str:
    """How a run's lines name it: its folder, with the folder above for a seed-N folder (a seed group's or an
    experiment's member: "CAE_lam0.3/seed-0", not "seed-0")."""
    if out.name.startswith("seed-") and out.parent.name:
        return f"{out.parent.name}/{out.name}"
    return out.name or str(out)


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
                    f"{run_label(out)} epoch {epoch + 1}/{cfg.epochs}: "
                    f"train_loss {train_loss:.5g}"
                    + (f" val_loss {record['val_loss']:.5g}" if "val_loss" in record else "")
                    + f" test_loss {record['test_loss']:.5g}"
                    # the unit once, on the first line a process prints
                    # (the model's own options: its defaults included, as config.json records them)
                    + (
                        f" ({runs.loss_unit({'model': cfg.model, 'model_options': model.options})})"
                        if epoch == start_epoch
                        else ""
                    )
                )
            if bar is not None:
                bar.touch()
