"""Issue 24: an untrusted checkpoint's optimizer state is checked before it reaches an optimizer or a fused
kernel (an Adam moment smaller than its parameter crashed the process with a segmentation fault), and the
config, not the file, sets the hyper-parameters. The checksums are recomputed here, as anyone editing the
file can."""

import pytest
import torch

from aelab import runs
from aelab.cli import main

TRAIN = ["train", "--dataset", "digits", "--train-limit", "120", "--epochs", "1", "--batch-size", "40",
         "--hidden", "8", "--latent", "2", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs_by_optimizer = {}
    for optimizer in ("adam", "lbfgs", "cg"):
        out = tmp_path_factory.mktemp(optimizer) / "run"
        assert main([*TRAIN, "--optimizer", optimizer, "--out", str(out)]) == 0
        runs_by_optimizer[optimizer] = out
    return runs_by_optimizer


def _copy(trained, optimizer, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained[optimizer], out)
    return out


def _edit_optimizer_state(run, edit) -> None:
    state, meta = runs.load_state(run / "checkpoint.safetensors")
    edit(state["optimizer"])
    runs.save_state(run / "checkpoint.safetensors", state, meta)  # fresh checksums: the edit is "valid"


def _resume(run, capsys, optimizer="adam"):
    code = main([*TRAIN, "--optimizer", optimizer, "--epochs", "2", "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    return code, err


ADAM_EDITS = {
    "a moment smaller than its parameter": lambda o: o["state"][0].update(exp_avg=o["state"][0]["exp_avg"][:1]),
    "an empty moment": lambda o: o["state"][0].update(exp_avg_sq=torch.zeros(0)),
    "a larger moment": lambda o: o["state"][0].update(exp_avg=torch.zeros(*o["state"][0]["exp_avg"].shape, 2)),
    "a NaN moment": lambda o: o["state"][0]["exp_avg"].fill_(float("nan")),
    "a negative second moment": lambda o: o["state"][0]["exp_avg_sq"].fill_(-1.0),
    "a float64 moment": lambda o: o["state"][0].update(exp_avg=o["state"][0]["exp_avg"].double()),
    "a vector step": lambda o: o["state"][0].update(step=torch.ones(3)),
    "a fractional step": lambda o: o["state"][0].update(step=torch.tensor(2.5)),
    "a huge step": lambda o: o["state"][0].update(step=torch.tensor(1e30)),
    "a string step": lambda o: o["state"][0].update(step="abc"),
    "an unknown parameter index": lambda o: o["state"].update({99: {k: v.clone() for k, v in o["state"][0].items()}}),
    "a missing key": lambda o: o["state"][0].pop("exp_avg_sq"),
    "an extra key": lambda o: o["state"][0].update(extra=torch.zeros(1)),
}


@pytest.mark.parametrize("edit", sorted(ADAM_EDITS))
def test_a_malformed_adam_state_is_one_line_not_a_crash(trained, tmp_path, capsys, edit):
    run = _copy(trained, "adam", tmp_path)
    _edit_optimizer_state(run, ADAM_EDITS[edit])
    code, err = _resume(run, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "optimizer state does not fit" in err, err


@pytest.mark.parametrize("lr", [-1.0, "abc", 1e9])
def test_the_config_not_the_file_sets_the_learning_rate(trained, tmp_path, capsys, lr):
    run = _copy(trained, "adam", tmp_path)
    _edit_optimizer_state(run, lambda o: o["param_groups"][0].update(lr=lr))
    code, err = _resume(run, capsys)
    assert code == 0, err
    state, _ = runs.load_state(run / "checkpoint.safetensors")
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-3  # the config's, kept in the new checkpoint


def test_an_intact_state_resumes_for_every_optimizer(trained, tmp_path, capsys):
    for optimizer in ("adam", "lbfgs", "cg"):
        run = _copy(trained, optimizer, tmp_path / optimizer)
        code, err = _resume(run, capsys, optimizer)
        assert code == 0, (optimizer, err)


@pytest.mark.parametrize(
    "optimizer, edit",
    [
        ("lbfgs", lambda o: o["state"][0].update(d=o["state"][0]["d"][:3])),
        ("lbfgs", lambda o: o["state"][0].update(func_evals=-5)),
        ("lbfgs", lambda o: o["state"][0].update(old_dirs=[torch.zeros(2)])),
        ("lbfgs", lambda o: o["state"][0].update(t=float("nan"))),
        ("cg", lambda o: o["state"].update({0: {"x": torch.zeros(1)}})),
    ],
)
def test_malformed_lbfgs_and_cg_states_are_refused(trained, tmp_path, capsys, optimizer, edit):
    run = _copy(trained, optimizer, tmp_path)
    _edit_optimizer_state(run, edit)
    code, err = _resume(run, capsys, optimizer)
    assert code == 2 and "optimizer state does not fit" in err, err


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o["state"][0]["old_dirs"].extend([torch.zeros_like(o["state"][0]["d"]) for _ in range(2)]),  # 3, 1 ro
        lambda o: o["state"].update({0: {"n_iter": 5}}),  # a partial state
        lambda o: o["state"][0].update(al=[None]),  # al shorter than history_size
    ],
)
def test_lbfgs_entries_that_do_not_fit_together_are_refused(trained, tmp_path, capsys, edit):
    run = _copy(trained, "lbfgs", tmp_path)
    _edit_optimizer_state(run, edit)
    code, err = _resume(run, capsys, "lbfgs")
    assert code == 2 and "optimizer state does not fit" in err, err


def test_a_resume_needs_no_init_weights_file_any_more(tmp_path):
    """The checkpoint holds the weights a run started from: its init_weights file may be gone at resume."""
    import json

    from aelab.train import TrainConfig, pretrain, train

    common = dict(model="deep-ae", dataset="digits", train_limit=120, val_fraction=0.1, tensorboard=False)
    options = {"layers": [64, 8, 2], "init": "rbm", "pretrain_epochs": 1}
    stack = pretrain(TrainConfig(**common, model_options=options, out=str(tmp_path / "stack")), progress=False)
    cfg = dict(**common, model_options=options, init_weights=str(stack / "model.safetensors"), out=str(tmp_path / "r"))
    run = train(TrainConfig(**cfg, epochs=1), progress=False)
    sha = json.loads((run / "config.json").read_text())["init_weights_sha256"]
    (stack / "model.safetensors").unlink()
    train(TrainConfig(**cfg, epochs=2), resume=True, progress=False)
    assert json.loads((run / "config.json").read_text())["init_weights_sha256"] == sha


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--dataset", "digits", "--epochs", "1_0", "--out", "{out}"], "positive integer"),
        (["train", "--dataset", "digits", "--seed", " 3", "--out", "{out}"], "integer seed"),
        (["train", "--dataset", "digits", "--option", "weight_decay=-1", "--out", "{out}"], "non-negative"),
        (["experiment", "debias-classifier", "--threads", "100000", "--out", "{out}"], "at most 1024 threads"),
    ],
)
def test_values_that_were_silently_accepted_are_one_line(tmp_path, capsys, argv, needle):
    """Issue 24: `--epochs 1_0` trained 10 epochs, weight_decay=-1 trained the AE to grow its weights,
    debias-classifier took up to 10^7 threads."""
    code = main([a.format(out=tmp_path / "r") for a in argv] + ["--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "r").exists()
