import json

import pytest
import torch
from safetensors.torch import load_file

from aelab import models
from aelab.cli import main
from aelab.models.rbm import up_down_mean_field
from aelab.train import TrainConfig, train
from helpers import without_times


def cfg(out, epochs, init="rbm"):
    return TrainConfig(
        model="deep-ae",
        model_options={"layers": [64, 32, 16, 4], "init": init, "pretrain_epochs": 2},
        dataset="digits",
        train_limit=300,
        epochs=epochs,
        batch_size=100,
        out=str(out),
    )


def test_trainer_pretrains_once_and_resume_is_exact(tmp_path):
    full = train(cfg(tmp_path / "full", 3), progress=False)
    train(cfg(tmp_path / "part", 1), progress=False)
    part = train(cfg(tmp_path / "part", 3), resume=True, progress=False)
    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["phase"] == "pretrain" and [h["epoch"] for h in history] == [0, 1, 2, 3]


def test_pretrained_model_before_finetuning_is_the_stack_up_down_pass(tmp_path):
    # epochs=1 with lr tiny would still move weights; instead pretrain directly and compare
    torch.manual_seed(0)
    model = models.create("deep-ae", input_shape=[1, 8, 8], layers=[64, 32, 16, 4], init="rbm", pretrain_epochs=1)
    x = torch.rand(50, 1, 8, 8)
    rbms = model.pretrain(x, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x).flatten(1), up_down_mean_field(rbms, x.flatten(1)), rtol=0, atol=1e-6)
    # random init differs from the pretrained weights
    other = models.create("deep-ae", input_shape=[1, 8, 8], layers=[64, 32, 16, 4])
    assert not torch.equal(other.encoder_weights[0], model.encoder_weights[0])


def test_hinton2006_experiment_end_to_end(tmp_path, capsys):
    out = tmp_path / "h"
    argv = ["experiment", "hinton2006", "--dataset", "digits", "--layers", "64-32-16-2", "--epochs", "2"]
    argv += [
        "--pretrain-epochs",
        "1",
        "--train-limit",
        "300",
        "--seeds",
        "2",
        "--logistic-pca-iter",
        "50",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["selection_split"] == "validation" and results["seeds"] == [0, 1]
    assert (results["splits"]["train"], results["splits"]["validation"], results["splits"]["test"]) == (270, 30, 360)
    rows = results["tables"]["test split"]
    methods = [r["method"] for r in rows]
    assert methods == [
        "raw pixels",
        "PCA (2-D)",
        "logistic PCA, linear encoder (2-D)",
        "logistic PCA, per-image codes (2-D)",
        "deep AE, random init",
        "deep AE, RBM-pretrained, CG",
        "deep AE, RBM-pretrained, Adam",
        "deep AE, RBM-pretrained, CG, per-image codes",
        "deep AE, RBM-pretrained, Adam, per-image codes",
    ]
    assert list(results["tables"]) == ["test split"]  # no official test set for 8x8 digits
    per_seed = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
    # PCA's recon_sse, recomputed independently with numpy's SVD on the same splits (train + validation)
    from aelab.data import load

    xtr = load("digits", "train")[0][:300].flatten(1).double()
    xte = load("digits", "test")[0].flatten(1).double()
    mean = xtr.mean(0)
    _, _, vt = torch.linalg.svd(xtr - mean, full_matrices=False)
    proj = (xte - mean) @ vt[:2].T @ vt[:2] + mean
    pca_sse = ((proj - xte) ** 2).sum(1).mean().item()
    assert abs(rows[1]["metrics"]["recon_sse"]["mean"] - pca_sse) < 1e-3
    for i, seed_result in enumerate(per_seed):
        for name in ("deep AE, random init", "deep AE, RBM-pretrained, CG", "deep AE, RBM-pretrained, Adam"):
            sweep = seed_result["sweeps"][name]
            # the chosen weight cost has the lowest validation recon_sse (the first of equals)
            assert sweep["chosen_index"] == min(range(len(sweep["scores"])), key=lambda j: (sweep["scores"][j], j))
            seed_row = next(r for r in seed_result["tables"]["test split"] if r["method"] == name)
            row = next(r for r in rows if r["method"] == name)
            assert row["metrics"]["recon_sse"]["values"][i] == seed_row["recon_sse"]
            assert row["chosen_per_seed"]["weight cost (chosen)"][i] == sweep["grid"][sweep["chosen_index"]]
            assert seed_row["ratio to PCA"] == pytest.approx(seed_row["recon_sse"] / pca_sse, rel=1e-4)
    diff = results["paired_differences"][1]
    assert (diff["a"], diff["b"]) == ("deep AE, RBM-pretrained, Adam", "deep AE, random init")
    values = lambda name: next(r for r in rows if r["method"] == name)["metrics"]["recon_sse"]["values"]
    expected = [a - b for a, b in zip(values("deep AE, RBM-pretrained, Adam"), values("deep AE, random init"))]
    assert diff["difference"]["values"] == pytest.approx(expected)
    times = per_seed[0]["phase_times_s"]  # what each step spent training and evaluating (issue 31)
    assert times["raw pixels"]["training"] == 0 and times["raw pixels"]["evaluation"] > 0
    assert times["logistic PCA, per-image codes (2-D)"]["training"] > 0  # its fit is its training
    assert times["deep AE, RBM-pretrained, Adam, per-image codes"]["training"] == 0
    assert all(times[label]["training"] > 0 for label in ("RBM pretraining", "deep AE, random init"))
    total = sum(t["training"] for t in times.values()), sum(t["evaluation"] for t in times.values())
    assert per_seed[0]["evaluation_to_training"] == pytest.approx(total[1] / total[0])
    assert (out / "seed-0" / "fig3.png").exists() and (out / "report.html").exists()
    assert (out / "seed-0" / "map-raw-pixels.png").exists() and not (out / "seed-1" / "map-raw-pixels.png").exists()
    assert "The paper's Fig. 3" in (out / "report.md").read_text()


def test_hinton2006_selection_never_looks_at_the_test_split(tmp_path, garbage_test_split):
    """Garbage test images and labels change the logged test loss, but no validation score and no choice."""

    from aelab.experiments import hinton2006

    tiny = dict(dataset="digits", layers="64-16-2", epochs=3, pretrain_epochs=1, train_limit=200, no_progress=True)
    tiny.update(weight_decay=[0.0, 1e-2], patience=1)
    hinton2006.run_one(hinton2006.Settings(out=str(tmp_path / "clean"), **tiny))
    garbage_test_split(5)
    hinton2006.run_one(hinton2006.Settings(out=str(tmp_path / "noisy"), **tiny))
    clean, noisy = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("clean", "noisy"))
    last = lambda n, run: json.loads((tmp_path / n / run / "metrics.jsonl").read_text().splitlines()[-1])
    run = clean["sweeps"]["deep AE, random init"]["runs"][0]
    assert last("clean", run)["test_loss"] != last("noisy", run)["test_loss"]  # the garbage reached the runs
    for name, sweep in clean["sweeps"].items():
        for key in ("scores", "chosen_index", "best_epochs"):
            assert noisy["sweeps"][name][key] == sweep[key], (name, key)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kill_at", [3, 6])  # after logistic PCA's encoder row; after the RBM pretraining
def test_hinton2006_killed_between_rows_resumes_to_the_same_results(tmp_path, capsys, kill_at):
    """Issue 31: a run killed between two rows (SIGKILL) leaves a results.json marked partial with the finished rows;
    --resume keeps them untouched and ends with the results.json of an uninterrupted run."""
    import os
    import subprocess
    import sys

    argv = ["experiment", "hinton2006", "--dataset", "digits", "--layers", "64-16-2", "--epochs", "2",
            "--pretrain-epochs", "1", "--train-limit", "200", "--logistic-pca-iter", "20", "--weight-decay", "0"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*argv, "--out", str(whole), "--no-progress"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "AELAB_FAULT_KILL_AT_ROW": str(kill_at)}
    proc = subprocess.run([sys.executable, "-m", "aelab", *argv, "--out", str(killed)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    partial = json.loads((killed / "seed-0" / "results.json").read_text())
    assert partial["partial"] is True and len(partial["rows_done"]) == kill_at
    assert "PARTIAL" in (killed / "seed-0" / "report.md").read_text()
    finished_rows = {t: rows for t, rows in partial["tables"].items()}
    capsys.readouterr()
    assert main([*argv, "--out", str(killed), "--no-progress", "--resume"]) == 0
    resumed = json.loads((killed / "seed-0" / "results.json").read_text())
    for table, rows in finished_rows.items():  # the finished rows untouched
        assert resumed["tables"][table][: len(rows)] == rows
    reference = json.loads((whole / "seed-0" / "results.json").read_text())
    assert without_times(resumed) == without_times(reference)
    assert without_times(json.loads((killed / "results.json").read_text())) == without_times(
        json.loads((whole / "results.json").read_text())
    )


def test_the_weight_cost_is_chosen_on_the_held_validation_images(monkeypatch, tmp_path):
    """validation_sse: the run's reconstruction SSE of the HELD images of its validation split (kept, held), not
    of the kept training images; the test split is not read."""
    import numpy as np
    import torch

    from aelab.experiments import hinton2006_steps as steps
    from aelab.experiments.hinton2006_rows import Data

    class Halver(torch.nn.Module):  # reconstructs x as x / 2: each image's SSE is |x|^2 / 4
        def encode(self, x):
            return x.flatten(1)

        def decode(self, z):
            return z / 2

        def forward(self, x):
            return self.decode(self.encode(x)).view_as(x)

    monkeypatch.setattr(steps.runs, "load_model", lambda run_dir: Halver())
    x = torch.arange(1.0, 7.0)[:, None].repeat(1, 4)  # six images: image i has SSE 4 (i+1)^2 / 4 = (i+1)^2
    kept, held = np.array([0, 1, 2, 3]), np.array([4, 5])
    data = Data(train_x=x, train_y=torch.zeros(6), test_sets={"test": (None, None)}, validation=(kept, held),
                official_note="")  # fmt: skip
    assert steps.validation_sse(tmp_path, data) == (25 + 36) / 2
