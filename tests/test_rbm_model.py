"""Issue 32, item 3-4: an RBM as an ordinary run folder (`aelab train --model rbm`), trained by CD in the pretraining
hook, scored by `aelab evaluate` with its log-likelihood. Each number against an independent computation."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from aelab import data, runs
from aelab.cli import main
from aelab.models.rbm import RBM
from aelab.models.rbm_model import RBMModel
from helpers import one_line_exit_2
from independent import protocol_validation_indices

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train", "--model", "rbm", "--dataset", "digits", "--dataset-option", "binarize=static", "--train-limit",
         "300", "--epochs", "1", "--quiet"]  # fmt: skip


def cd_options(**extra) -> list[str]:
    options = {"hidden": 8, "cd_epochs": 3, "k": 2, "cd_lr": 0.05, "cd_batch_size": 50, **extra}
    return [a for key, value in options.items() for a in ("--option", f"{key}={json.dumps(value)}")]


def test_train_writes_a_run_folder_whose_weights_are_those_of_rbm_fit(tmp_path):
    """The run's weights equal RBM.fit's with the options given, from the same initial weights and seed: the hook
    passes every CD setting through, and the trainer's scoring epochs change nothing."""
    out = tmp_path / "run"
    assert main([*TRAIN, *cd_options(persistent=True), "--val-fraction", "0", "--epochs", "2", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"model.json", "model.safetensors", "config.json", "metrics.jsonl"}
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))  # no pickle anywhere
    spec = json.loads((out / "model.json").read_text())
    assert spec["name"] == "rbm" and spec["options"]["hidden"] == 8 and spec["options"]["persistent"] is True
    x, _ = data.load("digits", "train", binarize="static")
    torch.manual_seed(0)  # what the trainer does before it builds the model: the same initial weights
    expected = RBMModel(input_shape=(1, 8, 8), hidden=8).rbm
    expected.fit(x[:300].flatten(1), epochs=3, batch_size=50, lr=0.05, weight_cost=2e-4, k=2, persistent=True,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    model = runs.load_model(out)
    for name in ("weight", "visible_bias", "hidden_bias"):
        torch.testing.assert_close(getattr(model.rbm, name), getattr(expected, name), rtol=0, atol=0)
    history = runs.read_history(out)
    assert history[0]["phase"] == "pretrain" and [h["epoch"] for h in history] == [0, 1, 2]
    # the code and the reconstruction are the RBM's hidden means and visible probabilities
    v = x[:5]
    W, b, c = expected.weight, expected.visible_bias, expected.hidden_bias
    h = torch.sigmoid(v.flatten(1) @ W + c)
    torch.testing.assert_close(model.encode(v), h)
    torch.testing.assert_close(model.decode(h), torch.sigmoid(h @ W.t() + b).reshape(5, 1, 8, 8))


@pytest.mark.parametrize(
    "option, needle",
    [
        ("hidden=0", "hidden"),
        ("hidden=[3,4]", "one hidden layer"),
        ("k=0", "k must be"),
        ("cd_lr=-1", "cd_lr"),
        ("weight_cost=-0.1", "weight_cost"),
        ('negative_phase="mean"', "negative_phase"),
        ('persistent="yes"', "persistent"),
        ("cd_epochs=2.5", "cd_epochs"),
        ("lr=0.1", "has no option lr"),
        ("init_std=0", "init_std"),
        ("init_std=-0.01", "init_std"),
    ],
)
def test_bad_options_are_refused_with_one_line_before_any_run_folder(tmp_path, capsys, option, needle):
    out = tmp_path / "run"
    one_line_exit_2(capsys, main([*TRAIN, "--option", option, "--out", str(out)]), needle)
    assert not out.exists()


def test_resume_keeps_the_cd_weights_and_refuses_other_cd_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, *cd_options(), "--out", str(out)]) == 0
    trained = runs.read_safetensors(out / "model.safetensors")[0]
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0
    resumed = runs.read_safetensors(out / "model.safetensors")[0]
    assert all(torch.equal(trained[k], resumed[k]) for k in trained)  # scored again, not retrained
    assert [h.get("phase") for h in runs.read_history(out)].count("pretrain") == 1
    capsys.readouterr()
    one_line_exit_2(capsys, main(["train", "--out", str(out), "--resume", "--option", "cd_epochs=5", "--quiet"]),
                    "different settings")  # fmt: skip
    # killed during CD (no checkpoint yet): the resume trains again from the seed, the same weights
    for name in ("checkpoint.safetensors", "model.safetensors", "model.json", "metrics.jsonl"):
        (out / name).unlink()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "1", "--quiet"]) == 0
    again = runs.read_safetensors(out / "model.safetensors")[0]
    assert all(torch.equal(trained[k], again[k]) for k in trained)


def numpy_log_probs(rbm: RBM, images: np.ndarray) -> np.ndarray:
    """log p(v) per image, written out in numpy: log Z by summing the visible units out analytically for every one
    of the 2^H hidden states, -F(v) by summing out the hidden units."""
    W = rbm.weight.detach().double().numpy()
    b = rbm.visible_bias.detach().double().numpy()
    c = rbm.hidden_bias.detach().double().numpy()
    h = np.array(list(itertools.product([0.0, 1.0], repeat=len(c))))
    terms = h @ c + np.logaddexp(0, b + h @ W.T).sum(1)
    log_z = terms.max() + np.log(np.exp(terms - terms.max()).sum())
    v = images.reshape(len(images), -1).astype(np.float64)
    return v @ b + np.logaddexp(0, c + v @ W).sum(1) - log_z, log_z


def test_evaluate_reports_the_log_likelihood_of_the_images_the_rbm_trained_on(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, *cd_options(cd_epochs=10, k=1), "--out", str(out)]) == 0  # default 10% validation split
    assert main(["evaluate", str(out), "--no-figures", "--no-progress", "--tsne-points", "1"]) == 0
    result = json.loads((out / "eval.json").read_text())
    m = result["metrics"]
    model = runs.load_model(out)
    train_x, train_y = data.load("digits", "train", binarize="static")
    train_x, train_y = train_x[:300], train_y[:300]
    held = protocol_validation_indices(train_y.numpy())  # the validation split: not trained on, not scored
    trained_on = np.setdiff1d(np.arange(300), held)
    test_x, _ = data.load("digits", "test", binarize="static")
    test_lp, log_z = numpy_log_probs(model.rbm, test_x.numpy())
    train_lp, _ = numpy_log_probs(model.rbm, train_x.numpy()[trained_on])
    assert m["log_z_exact"] == pytest.approx(log_z, abs=1e-8)
    assert m["test_log_prob_exact"] == pytest.approx(test_lp.mean(), abs=1e-6)
    assert m["train_log_prob_exact"] == pytest.approx(train_lp.mean(), abs=1e-6)
    # AIS (100 runs, the paper's 14,500 betas) against the exact value
    assert m["log_z_low"] <= m["log_z_exact"] <= m["log_z_high"] and abs(m["log_z"] - log_z) < 0.1
    assert m["test_log_prob"] == pytest.approx(m["test_log_prob_exact"] + log_z - m["log_z"], abs=1e-9)
    assert m["test_log_prob_low"] <= m["test_log_prob_exact"] <= m["test_log_prob_high"]
    assert m["ais_runs"] == 100 and m["ais_betas"] == 14_500
    protocol = result["protocol"]["rbm_likelihood"]
    assert protocol["ais"]["seed"] == 0 and "14,500 steps" in protocol["ais"]["schedule"]
    assert "0.05 N" in protocol["ais"]["base_rate"] and str(len(trained_on)) in protocol["ais"]["base_rate"]
    images = train_x.numpy()[trained_on].reshape(len(trained_on), -1)  # the base rate: their smoothed marginals
    p = (images.sum(0) + 0.05 * len(images)) / (1.1 * len(images))
    assert protocol["ais"]["base_log_z"] == pytest.approx(8 * math.log(2) - np.log1p(-p).sum(), abs=1e-9)
    assert "2^8" in protocol["exact_log_z"] and "binary" in protocol["test_data"]
    assert "test_log_prob" in (out / "report.md").read_text()


def test_init_std_scales_the_same_initial_draw_and_is_recorded_only_when_not_the_default():
    """W = init_std N(0, 1): the rbm-likelihood experiment's 0.01 is the default draw (Hinton's 0.1 N(0, 1))
    scaled, biases zero; model.json keeps its old form for the default."""
    torch.manual_seed(3)
    default = RBMModel(input_shape=[1, 8, 8], hidden=50)
    torch.manual_seed(3)
    small = RBMModel(input_shape=[1, 8, 8], hidden=50, init_std=0.01)
    torch.testing.assert_close(small.rbm.weight, default.rbm.weight * 0.1)
    assert abs(float(default.rbm.weight.std()) - 0.1) < 0.01  # 3,200 draws of 0.1 N(0, 1)
    assert "init_std" not in default.options and small.options["init_std"] == 0.01
    assert float(small.rbm.visible_bias.abs().sum() + small.rbm.hidden_bias.abs().sum()) == 0.0
