"""2-process DDP (gloo on 127.0.0.1) ends with the same parameters as 1 process with the same global batch and seed."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from aelab.train import TrainConfig, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: TrainConfig) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        train(cfg, progress=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _cfg(out, **kw):
    base = dict(model="ae", model_options={"hidden": [32], "latent": 4}, dataset="digits", train_limit=250,
                epochs=2, batch_size=50, out=str(out))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("train_limit", [250, 237])  # 237: the last batch splits unevenly across ranks
def test_two_process_gloo_equals_one_process(tmp_path, train_limit):
    one = train(_cfg(tmp_path / "one", train_limit=train_limit), progress=False)
    port = _free_port()
    mp.start_processes(_worker, args=(2, port, _cfg(tmp_path / "two", train_limit=train_limit)), nprocs=2,
                       start_method="spawn", join=True)
    w1, w2 = load_file(one / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert set(w1) == set(w2)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    # and the logged, all-reduced losses agree
    import json

    m1 = [json.loads(l) for l in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(m1, m2):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 * abs(a["train_loss"])
        assert abs(a["test_loss"] - b["test_loss"]) < 1e-4 * abs(a["test_loss"])
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
