"""The weights and optimizer state of an untrusted file, checked before they reach the model or the optimizer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError
from ..options import MAX_COUNT

if TYPE_CHECKING:
    import torch.nn as nn


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load a state dict whose every tensor has the name, shape and dtype the model expects."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: malformed weights")
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    found = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()), key=str)[:3]
        raise CheckpointError(f"{path}: weights do not match the architecture in model.json (e.g. {diff})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # training never saves them (a NaN loss stops it first): the file was damaged or edited
        raise CheckpointError(f"{path}: weights with NaN or inf values ({', '.join(bad[:3])})")
    model.load_state_dict(state)


# what torch.optim.LBFGS keeps after a step (besides "al"): a resumed state must have all of them
LBFGS_KEYS = {"func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "prev_loss"}


def checked_optimizer_state(opt: torch.optim.Optimizer, saved: Any, path: Path, epochs_done: int) -> dict:
    """The optimizer state of an untrusted checkpoint, checked before it reaches the optimizer (or a fused
    kernel, which checks nothing: an Adam moment smaller than its parameter crashed the process): the keys,
    shapes, dtypes and finite values each optimizer keeps, a step count within what the epochs done allow; the
    hyper-parameters come from this run's config (the optimizer as built), never from the file."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise _unfit(path, "no state")
    params = [p for group in opt.param_groups for p in group["params"]]
    state = saved["state"]
    if not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(params) for k in state):
        raise _unfit(path, "unknown parameter index")
    max_steps = MAX_COUNT * max(1, epochs_done)  # batches per epoch are at most MAX_COUNT
    if isinstance(opt, torch.optim.Adam):
        _check_adam_state(state, params, max_steps, path)
    elif isinstance(opt, torch.optim.LBFGS):
        _check_lbfgs_state(state, params, opt.param_groups[0]["history_size"], max_steps, path)
    elif state:  # ConjugateGradient keeps no state between steps
        raise _unfit(path, f"{type(opt).__name__} keeps no state")
    # the groups as this run's config built them: the file sets no learning rate
    return {"state": state, "param_groups": opt.state_dict()["param_groups"]}


def _unfit(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: optimizer state does not fit ({why})")


def _checked_tensor(path: Path, value, shape, dtype, what: str, non_negative: bool = False) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.dtype != dtype:
        raise _unfit(path, f"{what}: expected a {dtype} tensor of shape {tuple(shape)}")
    if not torch.isfinite(value).all() or (non_negative and (value < 0).any()):
        raise _unfit(path, f"{what}: non-finite or negative values")
    return value


def _check_adam_state(state: dict, params: list, max_steps: int, path: Path) -> None:
    """Adam keeps, per parameter, a count of steps and two moments of the parameter's shape and dtype."""
    for i, entry in state.items():
        p = params[i]
        if not isinstance(entry, dict) or set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
            raise _unfit(path, f"parameter {i}: expected step, exp_avg, exp_avg_sq")
        step = entry["step"]
        if not (isinstance(step, torch.Tensor) and step.numel() == 1 and step.dtype.is_floating_point):
            raise _unfit(path, f"parameter {i}: step is not a number")
        if not (torch.isfinite(step).all() and float(step) == int(float(step)) and 1 <= float(step) <= max_steps):
            raise _unfit(path, f"parameter {i}: step {float(step)!r} is not a count of steps")
        _checked_tensor(path, entry["exp_avg"], p.shape, p.dtype, f"parameter {i} exp_avg")
        _checked_tensor(path, entry["exp_avg_sq"], p.shape, p.dtype, f"parameter {i} exp_avg_sq", non_negative=True)


def _check_lbfgs_state(state: dict, params: list, history: int, max_steps: int, path: Path) -> None:
    """L-BFGS keeps its whole state under the first parameter: the LBFGS_KEYS (and al), fitting together."""
    n = sum(p.numel() for p in params)
    for i, entry in state.items():
        if i != 0 or not isinstance(entry, dict):
            raise _unfit(path, "L-BFGS keeps its state under the first parameter only")
        # the entries must fit together as LBFGS.step leaves them, or the next step indexes past a list
        if entry and set(entry) - {"al"} != LBFGS_KEYS:
            raise _unfit(path, f"L-BFGS state needs exactly {', '.join(sorted(LBFGS_KEYS))} (and al)")
        pairs = [entry.get(k) for k in ("old_dirs", "old_stps", "ro")]
        if entry and not (all(isinstance(v, list) for v in pairs) and len({len(v) for v in pairs}) == 1):
            raise _unfit(path, "old_dirs, old_stps and ro must be lists of one length")
        if "al" in entry and not (isinstance(entry["al"], list) and len(entry["al"]) == history):
            raise _unfit(path, f"al must hold history_size = {history} entries")
        for key, value in entry.items():
            _check_lbfgs_entry(key, value, n, params[0].dtype, history, max_steps, path)


def _check_lbfgs_entry(key: str, value, n: int, dtype, history: int, max_steps: int, path: Path) -> None:
    """One L-BFGS entry: counts, flat vectors of the n parameters, lists of at most `history` of them, numbers."""
    if key in ("func_evals", "n_iter"):
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= max_steps * 25):
            raise _unfit(path, f"{key} is not a count")
    elif key in ("d", "prev_flat_grad"):
        _checked_tensor(path, value, (n,), dtype, key)
    elif key in ("old_dirs", "old_stps"):
        if not isinstance(value, list) or len(value) > history:
            raise _unfit(path, f"{key}: more than {history} entries")
        for v in value:
            _checked_tensor(path, v, (n,), dtype, key)
    elif key in ("ro", "al"):
        if not isinstance(value, list) or len(value) > history:
            raise _unfit(path, f"{key}: more than {history} entries")
        for v in value:
            if v is not None and not (isinstance(v, torch.Tensor) and v.numel() == 1 and torch.isfinite(v).all()):
                raise _unfit(path, f"{key}: not finite numbers")
    elif key in ("t", "H_diag", "prev_loss"):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        is_scalar = isinstance(value, torch.Tensor) and value.numel() == 1
        if not ((is_number and math.isfinite(value)) or (is_scalar and torch.isfinite(value).all())):
            raise _unfit(path, f"{key} is not a finite number")
    else:
        raise _unfit(path, f"unknown L-BFGS entry {key!r}")
