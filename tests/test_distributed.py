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


def _rbm_worker(rank: int, world: int, port: int, data: torch.Tensor, same_data: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from aelab.models.rbm import RBM
    from aelab.train import average_across_ranks

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        shard = data if same_data else data.tensor_split(world)[rank]
        rbm = RBM(64, 16, generator=torch.Generator().manual_seed(0))
        rbm.fit(shard, epochs=2, batch_size=50, generator=torch.Generator().manual_seed(1),
                allreduce=average_across_ranks(world), monitor_size=0)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in rbm.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_rbm_cd_statistics_are_all_reduced(tmp_path):
    from aelab.data import load
    from aelab.models.rbm import RBM

    data = load("digits", "train")[0][:400].flatten(1)
    single = RBM(64, 16, generator=torch.Generator().manual_seed(0))
    single.fit(data, epochs=2, batch_size=50, generator=torch.Generator().manual_seed(1), monitor_size=0)
    # identical data and seeds on both ranks: the averaged statistics are the single-process ones
    mp.start_processes(_rbm_worker, args=(2, _free_port(), data, True, str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        w = load_file(tmp_path / f"rank{rank}.safetensors")
        for k, v in single.state_dict().items():
            torch.testing.assert_close(w[k], v, rtol=1e-5, atol=1e-6)
    # different shards: the ranks still end with the same weights (the updates were averaged)
    mp.start_processes(_rbm_worker, args=(2, _free_port(), data, False, str(tmp_path)), nprocs=2, start_method="spawn")
    w0, w1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not torch.allclose(w0["weight"], single.weight)


def test_deep_ae_pretraining_under_two_processes(tmp_path):
    cfg = TrainConfig(model="deep-ae", model_options={"layers": [64, 32, 4], "init": "rbm", "pretrain_epochs": 1},
                      dataset="digits", train_limit=200, epochs=1, batch_size=50, out=str(tmp_path / "two"))
    mp.start_processes(_worker, args=(2, _free_port(), cfg), nprocs=2, start_method="spawn", join=True)
    import json

    history = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["phase"] == "pretrain" and history[-1]["epoch"] == 1
