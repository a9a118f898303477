"""Only a model's pretraining (the deep AE's RBM stack) into a folder that several fine-tuning runs can start from."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import models, runs
from ..errors import ConfigError
from .config import TrainConfig, resolve_device
from .data import load_data
from .loop import pretrain_precision


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
