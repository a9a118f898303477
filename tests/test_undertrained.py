"""Undertrained runs are said so: a loss still falling steeply at the end, reconstructions worse than PCA's."""

import json
import math

import pytest

from aelab.cli import main
from aelab.metrics.convergence import still_falling, still_falling_warning, worse_than_pca_warning

TINY = ["--dataset", "digits", "--train-limit", "200", "--hidden", "16", "--latent", "3"]


def _history(losses, key="val_loss", **extra):
    return [{"epoch": i + 1, "train_loss": v + 1.0, key: v, **extra} for i, v in enumerate(losses)]


def test_a_straight_curve_is_still_falling_and_a_flattened_one_is_not():
    straight = [100 - 2 * i for i in range(10)]  # r = a = 2 per epoch
    s = still_falling(_history(straight))
    assert s["key"] == "val_loss" and s["last"] == 2 and s["ratio"] == pytest.approx(1.0)
    assert s["recent_rate"] == pytest.approx(2.0) and s["relative_rate"] == pytest.approx(2 / 82)
    # an exponential approach to 10, 40 epochs: the last 4 epochs fall ~e^-36/8 of the whole: flat
    flat = [10 + 90 * math.exp(-i / 8) for i in range(40)]
    assert still_falling(_history(flat)) is None
    # by hand for the same curve cut at 12 epochs: k = 2, r = (L_9 - L_11)/2, a = (L_0 - L_11)/11
    cut = flat[:12]
    r, a = (cut[9] - cut[11]) / 2, (cut[0] - cut[11]) / 11
    assert r / a >= 0.5 and still_falling(_history(cut))["ratio"] == pytest.approx(r / a)


def test_what_is_never_flagged():
    straight = [100 - 2 * i for i in range(10)]
    assert still_falling(_history(straight[:2])) is None  # too few epochs to say
    assert still_falling(_history(straight, best_epoch=4)) is None  # early stopping kept epoch 4
    assert still_falling(_history([100 - 1e-5 * i for i in range(10)])) is None  # noise-sized: 1e-7 per epoch
    assert still_falling(_history([100 + 2 * i for i in range(10)])) is None  # rising
    # no validation split: the train loss is read
    assert still_falling(_history(straight, key="other"))["key"] == "train_loss"
    assert still_falling_warning(_history(straight), "runs/x").endswith("aelab train --out runs/x --resume --epochs 20")


def test_worse_than_pca():
    metrics = {"recon_sse": 30.0, "pca_sse": 20.0, "code_dim": 8}
    assert "(1.50x)" in worse_than_pca_warning(metrics, binary_code=False, pixels=784)
    assert worse_than_pca_warning({**metrics, "recon_sse": 19.0}, binary_code=False, pixels=784) is None
    assert worse_than_pca_warning(metrics, binary_code=True, pixels=784) is None  # 8 bits are not 8 reals
    assert worse_than_pca_warning({**metrics, "code_dim": 784}, binary_code=False, pixels=784) is None  # PCA exact


def test_the_cli_warns_in_the_console_eval_json_and_the_report(tmp_path, capsys):
    run = tmp_path / "slow"
    # a small learning rate: the loss falls in a straight line, and 6 epochs leave it far from PCA's
    args = [*TINY, "--batch-size", "20", "--epochs", "6", "--lr", "3e-4", "--no-progress", "--out", str(run)]
    assert main(["train", *args]) == 0
    out, err = capsys.readouterr()
    assert "epoch 6/6: train_loss" in out  # --no-progress hides the bars, not the epoch lines
    assert "aelab: warning: the val_loss was still falling steeply" in err and f"--out {run} --resume" in err
    assert main(["evaluate", str(run), "--no-figures", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "still falling steeply" in err and "worse than PCA's with the same code size (3)" in err
    warnings = json.loads((run / "eval.json").read_text())["warnings"]
    assert len(warnings) == 2 and all(w.split(":")[0] in err for w in warnings)
    report = (run / "report.md").read_text()
    assert report.count("Warning: ") == 2 and report.index("Warning: ") < report.index("## Test metrics")


def test_a_converged_run_gets_no_warning(tmp_path, capsys):
    run = tmp_path / "ok"
    args = [*TINY, "--batch-size", "20", "--epochs", "60", "--lr", "1e-2", "--quiet", "--out", str(run)]
    assert main(["train", *args]) == 0
    out, err = capsys.readouterr()
    assert "epoch" not in out and "warning" not in err  # --quiet: no epoch lines
    assert main(["evaluate", str(run), "--no-figures", "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((run / "eval.json").read_text())["warnings"] == []


def test_compare_repeats_each_runs_warnings(tmp_path, capsys):
    run = tmp_path / "slow"
    args = [*TINY, "--batch-size", "20", "--epochs", "3", "--lr", "3e-4", "--quiet", "--out", str(run)]
    assert main(["train", *args]) == 0
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert f"{run}: warning: the test reconstructions are worse than PCA's" in capsys.readouterr().out
    assert f"{run}: warning: the test reconstructions" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_a_code_as_wide_as_the_image_has_no_pca_ratio_and_no_pca_warning(tmp_path, capsys):
    """PCA with as many components as pixels is exact (pca_sse ~ 0): the ratio to it would be noise (it read
    7.5e11 for the 1000-unit CAE on 784 pixels), and being worse than it says nothing about training."""
    run = tmp_path / "wide"
    args = ["--dataset", "digits", "--train-limit", "200", "--hidden", "16", "--latent", "64", "--epochs", "2"]
    assert main(["train", *args, "--quiet", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--no-figures", "--no-progress"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["metrics"]["code_dim"] == 64 and result["metrics"]["pca_sse"] < 1e-6
    assert "sse_ratio_to_pca" not in result["metrics"]
    assert not any("PCA" in w for w in result["warnings"])
