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

The rooms of the trainer (each imports only the ones above it; the run folder while training, RunWriter with its
checkpoint cadence and snapshots, is aelab.runs.writer, in the room that owns the folder):
    config.py       TrainConfig, its checks, the device
    distributed.py  torchrun: ranks and collectives
    schedules.py    per-epoch seeds, Burda's learning-rate stages, early stopping
    data.py         a run's splits and dynamic binarisation
    loop.py         train(), the epoch loop, one epoch, the loss on a split
    pretrain.py     only the pretraining, for several runs to start from
"""

from ..runs.writer import (
    AUTO_CHECKPOINT_FACTOR,
    AUTO_CHECKPOINT_MAX_S,
    AUTO_CHECKPOINT_MIN_S,
    CheckpointCadence,
    RunWriter,
    copy_into,
)
from .config import (
    CLOSURE_OPTIMIZERS,
    LR_SCHEDULES,
    OPTIMIZERS,
    TrainConfig,
    resolve_device,
)
from .data import binarize_epoch, dynamic_binarization, load_data
from .distributed import all_reduce_sum, average_across_ranks, dist_info, setup_distributed
from .loop import evaluate_loss, make_optimizer, precision, pretrain_precision, train, train_one_epoch
from .pretrain import pretrain
from .schedules import burda_stage, epoch_seed, history_stopped, learning_rate

__all__ = [
    "AUTO_CHECKPOINT_FACTOR",
    "AUTO_CHECKPOINT_MAX_S",
    "AUTO_CHECKPOINT_MIN_S",
    "CLOSURE_OPTIMIZERS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "CheckpointCadence",
    "RunWriter",
    "TrainConfig",
    "all_reduce_sum",
    "average_across_ranks",
    "binarize_epoch",
    "burda_stage",
    "copy_into",
    "dist_info",
    "dynamic_binarization",
    "epoch_seed",
    "evaluate_loss",
    "history_stopped",
    "learning_rate",
    "load_data",
    "make_optimizer",
    "precision",
    "pretrain",
    "pretrain_precision",
    "resolve_device",
    "setup_distributed",
    "train",
    "train_one_epoch",
]
