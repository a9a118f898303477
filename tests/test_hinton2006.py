import json

import torch
from safetensors.torch import load_file

from aelab import models
from aelab.cli import main
from aelab.models.rbm import up_down_mean_field
from aelab.train import TrainConfig, train


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
    code = main(
        [
            "experiment",
            "hinton2006",
            "--dataset",
            "digits",
            "--layers",
            "64-32-16-2",
            "--epochs",
            "2",
            "--pretrain-epochs",
            "1",
            "--train-limit",
            "300",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in results["rows"]]
    assert methods == ["raw pixels", "PCA (2-D)", "deep AE, random init", "deep AE, RBM-pretrained"]
    assert results["data"]["fit_split"] == "train" and results["data"]["n_train"] == 300
    pca_row = results["rows"][1]
    # PCA's recon_sse, recomputed independently with numpy's SVD on the same splits
    from aelab.data import load

    xtr = load("digits", "train")[0][:300].flatten(1).double()
    xte = load("digits", "test")[0].flatten(1).double()
    mean = xtr.mean(0)
    _, _, vt = torch.linalg.svd(xtr - mean, full_matrices=False)
    proj = (xte - mean) @ vt[:2].T @ vt[:2] + mean
    assert abs(((proj - xte) ** 2).sum(1).mean().item() - pca_row["recon_sse"]) < 1e-3
    assert (out / "fig3.png").exists() and (out / "report.html").exists()
    assert "The paper's Fig. 3" in (out / "report.md").read_text()
