"""Writing the run folder while training: RunWriter (checkpoints, snapshots, the best epoch, metrics.jsonl), the
checkpoint cadence, and copies of state that a later step cannot change under a checkpoint being written.

It uses the rest of the package as the trainer does (runs.save_state, ...); aelab.runs does not import it.
aelab.train.writer is this same module (the trainer's name for it)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn

from .. import runs
from ..errors import CheckpointError

# the automatic checkpoint cadence: at most one a minute, and then only when the time since the last is 20 times
# what writing it cost (checkpoints take at most about a twentieth of the run); at least one every 10 minutes
AUTO_CHECKPOINT_FACTOR, AUTO_CHECKPOINT_MIN_S, AUTO_CHECKPOINT_MAX_S = 20, 60.0, 600.0


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
