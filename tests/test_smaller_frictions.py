"""Issue 23 item 10: the smaller frictions of a researcher's loop, each as a user meets it."""

import json

import torch

from aelab.cli import main

TINY = ["--dataset", "digits", "--train-limit", "320", "--hidden", "8", "--latent", "2", "--epochs", "1"]


def test_the_report_counts_the_images_that_trained_the_model(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "--quiet", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["n_train"], config["n_val"]) == (288, 32)
    assert main(["evaluate", str(run), "--no-figures", "--no-progress"]) == 0
    md = (run / "report.md").read_text()
    assert "320 train images (288 trained the model, 32 held out as the validation split;" in md


def test_evaluate_on_a_device(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "--model", "vae", "--quiet", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--no-figures", "--no-progress", "--iwae-k", "4"]) == 0
    default = json.loads((run / "eval.json").read_text())["metrics"]
    assert main(["evaluate", str(run), "--no-figures", "--no-progress", "--iwae-k", "4", "--device", "cpu"]) == 0
    assert json.loads((run / "eval.json").read_text())["metrics"] == default
    before = (run / "eval.json").read_bytes()
    capsys.readouterr()
    for device in ["tpu"] + ([] if torch.cuda.is_available() else ["cuda"]):
        assert main(["evaluate", str(run), "--device", device]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"device {device!r}" in err[0]
        assert (run / "eval.json").read_bytes() == before  # refused before any work


def test_compile_says_that_it_is_compiling(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)  # the note, not the compiler, is tested
    assert main(["train", *TINY, "--compile", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    assert "--compile: the first steps of the first epoch compile the model" in err
    assert "epoch 1/1" in out  # --no-progress keeps the epoch lines
    assert main(["train", *TINY, "--compile", "--quiet", "--out", str(tmp_path / "q")]) == 0
    out, err = capsys.readouterr()
    assert "compile" not in err and "epoch" not in out
