import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from aelab import runs
from aelab.errors import CheckpointError, ConfigError, TrainingDiverged
from aelab.runs import load_model
from aelab.train import TrainConfig, train


def small_cfg(tmp_path, name="run", **kw):
    base = dict(
        model="ae",
        model_options={"hidden": [32], "latent": 4},
        dataset="digits",
        train_limit=300,
        epochs=3,
        batch_size=64,
        out=str(tmp_path / name),
    )
    base.update(kw)
    return TrainConfig(**base)


def test_run_folder_contents(tmp_path):
    out = train(small_cfg(tmp_path), progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert {"config.json", "metrics.jsonl", "model.safetensors", "model.json", "checkpoint.safetensors"} <= set(names)
    assert not [n for n in names if ".tmp-" in n]
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["versions"]["torch"] == torch.__version__
    assert config["model_options"]["input_shape"] == [1, 8, 8]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"]) for r in lines)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]


def test_checkpoint_reloads_to_identical_outputs(tmp_path):
    out = train(small_cfg(tmp_path, model="vae", model_options={"hidden": [32], "latent": 4}), progress=False)
    model = load_model(out)
    # independent of our loader: the raw safetensors file holds the same weights
    raw = load_file(out / "model.safetensors")
    assert set(raw) == set(model.state_dict())
    x = torch.rand(9, 1, 8, 8)
    again = load_model(out)
    assert torch.equal(model.encode(x), again.encode(x)) and torch.equal(model(x), again(x))
    state, meta = runs.load_state(out / "checkpoint.safetensors")
    assert meta["epoch"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k])


def test_same_seed_same_numbers_and_other_seed_differs(tmp_path):
    a = train(small_cfg(tmp_path, "a", model="vae", model_options={"hidden": [32], "latent": 4}), progress=False)
    b = train(small_cfg(tmp_path, "b", model="vae", model_options={"hidden": [32], "latent": 4}), progress=False)
    c = train(
        small_cfg(tmp_path, "c", model="vae", model_options={"hidden": [32], "latent": 4}, seed=1), progress=False
    )
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    ma = [json.loads(l)["test_loss"] for l in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(l)["test_loss"] for l in (b / "metrics.jsonl").read_text().splitlines()]
    assert ma == mb


@pytest.mark.parametrize("model", ["ae", "vae"])
def test_resume_from_epoch_k_ends_identical(tmp_path, model):
    opts = {"hidden": [32], "latent": 4}
    full = train(small_cfg(tmp_path, "full", model=model, model_options=opts, epochs=4), progress=False)
    train(small_cfg(tmp_path, "part", model=model, model_options=opts, epochs=2), progress=False)
    resumed = train(small_cfg(tmp_path, "part", model=model, model_options=opts, epochs=4), resume=True, progress=False)
    wf, wr = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    sf, _ = runs.load_state(full / "checkpoint.safetensors")
    sr, _ = runs.load_state(resumed / "checkpoint.safetensors")
    for (k1, v1), (k2, v2) in zip(sorted(sf["optimizer"]["state"].items()), sorted(sr["optimizer"]["state"].items())):
        assert all(torch.equal(v1[n], v2[n]) for n in v1)
    assert (full / "metrics.jsonl").read_text().count("\n") == (resumed / "metrics.jsonl").read_text().count("\n") == 4


def test_resume_refuses_changed_settings_and_existing_run_needs_resume(tmp_path):
    train(small_cfg(tmp_path, epochs=1), progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(small_cfg(tmp_path, epochs=2), progress=False)
    with pytest.raises(ConfigError, match="lr"):
        train(small_cfg(tmp_path, epochs=2, lr=0.5), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(small_cfg(tmp_path, "empty", epochs=2), resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, epochs=2)
    train(cfg, progress=False)
    before = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    from aelab.models.ae import AE

    real_loss = AE.loss
    calls = {"n": 0}

    def loss_turning_nan(self, x):  # a finite loss for two steps of epoch 3, then NaN
        calls["n"] += 1
        value = real_loss(self, x)
        return value if calls["n"] <= 2 else value * float("nan")

    monkeypatch.setattr(AE, "loss", loss_turning_nan)
    with pytest.raises(TrainingDiverged, match="NaN/inf in epoch 3.*epoch 2"):
        train(small_cfg(tmp_path, epochs=4), resume=True, progress=False)
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == before
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 2


def test_config_validation(tmp_path):
    for bad in [
        dict(epochs=0),
        dict(batch_size=-1),
        dict(lr=0.0),
        dict(model="nope"),
        dict(dataset="nope"),
        dict(device="tpu"),
        dict(optimizer="sgd"),
    ]:
        with pytest.raises(ConfigError):
            train(small_cfg(tmp_path, **bad), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            train(small_cfg(tmp_path, device="cuda"), progress=False)
    assert not (tmp_path / "run").exists()  # nothing written for bad input


def test_lbfgs_optimizer_trains_and_resumes(tmp_path):
    full = train(small_cfg(tmp_path, "full", optimizer="lbfgs", lr=0.5, batch_size=300, epochs=3), progress=False)
    train(small_cfg(tmp_path, "part", optimizer="lbfgs", lr=0.5, batch_size=300, epochs=1), progress=False)
    resumed = train(
        small_cfg(tmp_path, "part", optimizer="lbfgs", lr=0.5, batch_size=300, epochs=3), resume=True, progress=False
    )
    wf, wr = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    lines = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]


def test_checkpoint_safety(tmp_path):
    out = train(small_cfg(tmp_path, epochs=1), progress=False)
    # a pickle in place of the weights is refused without being unpickled
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    (out / "model.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="torch.save"):
        load_model(out)
    assert not (tmp_path / "pwned").exists()
    torch.save({"w": torch.ones(2)}, out / "model.safetensors")  # the zip format of torch.save
    with pytest.raises(CheckpointError, match="torch.save"):
        load_model(out)
    # a model.json that disagrees with the weights
    out2 = train(small_cfg(tmp_path, "run2", epochs=1), progress=False)
    spec = json.loads((out2 / "model.json").read_text())
    spec["options"]["latent"] = 5
    (out2 / "model.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(out2)
    # a newer format version
    spec["options"]["latent"] = 4
    spec["format_version"] = 99
    (out2 / "model.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="newer"):
        load_model(out2)


def test_state_flattening_roundtrip():
    state = {"a": torch.arange(3), "b": [torch.ones(2), 3, None, "x", (1.5, torch.zeros(1))], 7: {"c": True}}
    tensors = {}
    skeleton = runs.flatten_state(state, "s", tensors)
    back = runs.unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert torch.equal(back["a"], state["a"]) and back["b"][1:4] == [3, None, "x"] and back[7] == {"c": True}
    assert isinstance(back["b"][4], tuple) and torch.equal(back["b"][4][1], torch.zeros(1))
