"""`aelab experiment debias` and `aelab experiment binary` end to end on tiny data (sklearn 8x8 digits), the
binary evaluation hook, and the helpers the experiments add."""

import json

import numpy as np
import pytest
import torch

from aelab.cli import main
from aelab.data import load
from aelab.data.colored import make_colored_mnist
from aelab.debias import scores as bias
from aelab.metrics import ranking


def test_debias_end_to_end(tmp_path, monkeypatch):
    calls = []
    real_score_samples = bias.score_samples

    def spy(*args, **kwargs):  # what reaches the scoring methods
        calls.append((args, kwargs))
        return real_score_samples(*args, **kwargs)

    monkeypatch.setattr(bias, "score_samples", spy)
    out = tmp_path / "debias"
    argv = [
        "experiment",
        "debias",
        "--dataset-source",
        "digits",
        "--train-limit",
        "300",
        "--aligned-ratio",
        "0.8",
        "--ae-epochs",
        "1",
        "--n-models",
        "1",
        "--gce-epochs",
        "1",
        "--tsne-points",
        "40",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert (out / "report.html").exists() and (out / "report.md").exists()
    summary = json.loads((out / "results.json").read_text())
    assert summary["selection_split"] == "validation" and summary["seeds"] == [0]
    out = out / "seed-0"
    assert "ROC and precision-recall curves" in (out / "report.html").read_text()
    assert (out / "figures" / "roc_pr.png").exists() and (out / "figures" / "roc_pr_best.png").exists()
    result = json.loads((out / "results.json").read_text())
    assert {"data", "methods", "best_method", "colour_labels", "settings", "wall_time_s"} <= result.keys()
    assert set(result["methods"]) == set(bias.METHODS)
    for graded in result["methods"].values():
        assert {"auroc", "average_precision", "precision_at_k", "recall_at_k"} == graded["mean"].keys()
        assert len(graded["per_class"]) == 10
    assert result["best_method"] == max(result["methods"], key=lambda m: result["methods"][m]["mean"]["auroc"])

    # the recorded data are the data: recount the conflicting images from the colouring itself
    gray, digits = load("digits", "train")
    colored = make_colored_mnist(gray, digits, "train", aligned_ratio=0.8, seed=0)
    conflicting = (~colored["aligned"][:300]).numpy()
    d = result["data"]
    assert (d["source"], d["aligned_ratio"], d["n"], d["seed"]) == ("digits", 0.8, 300, 0)
    assert d["n_conflicting"] == int(conflicting.sum())
    assert d["conflicting_per_class"] == {str(c): int(conflicting[digits[:300].numpy() == c].sum()) for c in range(10)}
    assert "only" in result["colour_labels"]

    # the scoring saw the images and the digit labels, nothing else carrying colour
    ((args, kwargs),) = calls
    images, digit_arg = args[:2]
    assert torch.equal(images, colored["images"][:300]) and torch.equal(digit_arg, digits[:300])
    assert not any(isinstance(v, torch.Tensor) for v in list(args[3:]) + list(kwargs.values()))
    # and the metrics are those of the returned scores
    # (graded on the test images: the train images outside the validation split)
    from aelab.data.sources import validation_split

    keep, held, _ = validation_split(digits[:300].numpy(), 0.1)
    splits = result["splits"]
    assert (splits["train"], splits["validation"], splits["test"]) == (300, len(held), len(keep)) == (300, 30, 270)
    auroc_0 = result["methods"]["gce_ce"]["per_class"][0]["auroc"]
    scores = real_score_samples(images, digit_arg, n_models=1, gce_epochs=1, seed=0)["gce_ce"][keep]
    m = digits[:300].numpy()[keep] == 0
    assert auroc_0 == pytest.approx(ranking.auroc(scores[m], conflicting[keep][m]))
    # the summary row is this seed's row
    row = next(r for r in summary["tables"][result["table_order"][0]] if r["method"] == "gce_ce")
    assert row["metrics"]["AUROC"]["values"] == [result["methods"]["gce_ce"]["mean"]["auroc"]]
    assert row["metrics"]["AUROC"]["ci95"] is None


def test_debias_k_is_chosen_on_validation_colours_only(tmp_path, monkeypatch):
    """Scrambling the colour labels of the test images (outside validation) changes the grades, not the k."""
    from aelab.data.sources import validation_split
    from aelab.experiments import debias

    tiny = dict(dataset="digits", train_limit=300, aligned_ratio=0.8, ae_epochs=1, n_models=1, gce_epochs=1)
    tiny.update(tsne_points=40, no_progress=True, figures=False)
    debias.run_one(debias.Settings(out=str(tmp_path / "clean"), **tiny))
    real = debias.load_biased_train_split

    def scrambled(*args, **kwargs):
        images, digits, colours, conflicting = real(*args, **kwargs)
        keep, _, _ = validation_split(digits.numpy(), 0.1)
        conflicting = conflicting.clone()
        conflicting[torch.from_numpy(keep)] = torch.rand(len(keep), generator=torch.Generator().manual_seed(1)) < 0.5
        return images, digits, colours, conflicting

    monkeypatch.setattr(debias, "load_biased_train_split", scrambled)
    debias.run_one(debias.Settings(out=str(tmp_path / "noisy"), **tiny))
    clean, noisy = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("clean", "noisy"))
    assert clean["methods"]["gce_knn"]["mean"] != noisy["methods"]["gce_knn"]["mean"]  # the grades did change
    assert clean["k_choice"] == noisy["k_choice"]
    for method, choice in clean["k_choice"].items():  # the chosen k has the best validation AUROC
        best = max(range(len(choice["grid"])), key=lambda i: (choice["validation_auroc"][i], -i))
        assert choice["chosen_k"] == choice["grid"][best], method


@pytest.mark.parametrize(
    "bad", [["--aligned-ratio", "0"], ["--aligned-ratio", "1.5"], ["--aligned-ratio", "x"], ["--n-models", "0"]]
)
def test_debias_rejects_bad_arguments(tmp_path, capsys, bad):
    assert main(["experiment", "debias", "--out", str(tmp_path), *bad]) == 2
    assert "error" in capsys.readouterr().err


def test_binary_end_to_end(tmp_path):
    from aelab.evaluate import evaluate

    out = tmp_path / "binary"
    assert (
        main(
            [
                "experiment",
                "binary",
                "--dataset",
                "digits",
                "--bits",
                "16",
                "--epochs",
                "1",
                "--train-limit",
                "300",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "report.html").exists()
    out = out / "seed-0"
    result = json.loads((out / "results.json").read_text())
    assert {"rows", "protocol", "data", "settings", "runs", "splits", "tables"} <= result.keys()
    assert (result["splits"]["train"], result["splits"]["validation"]) == (270, 30)
    config = json.loads((out / "binary" / "config.json").read_text())
    assert config["val_fraction"] == 0.1 and config["early_stopping"] == 5  # the epoch is chosen on validation
    rows = {r["code"].split()[0]: r for r in result["rows"]}
    assert set(rows) == {"binary", "float", "PCA-sign"}
    assert rows["binary"]["bits per image"] == 16 and rows["float"]["bits per image"] == 32 * 16
    for r in rows.values():
        assert {"recon_sse", "recon_mse", "precision@10", "precision@100", "mAP", "probe_accuracy"} <= r.keys()
        assert r["recon_mse"] == pytest.approx(r["recon_sse"] / 64)
        assert 0 <= r["mAP"] <= 1 and 0 <= r["probe_accuracy"] <= 1
    assert result["data"]["n_train"] == 300 and result["data"]["n_test"] == 360
    assert "0.5" in result["protocol"]["float_baseline_retrieval"]

    # the PCA-sign row recomputed independently: sklearn PCA signs, Hamming ranking by brute force for p@10
    from sklearn.decomposition import PCA

    x_tr, y_tr = load("digits", "train")
    x_te, y_te = load("digits", "test")
    x_tr, y_tr = x_tr[:300].reshape(300, -1).double().numpy(), y_tr[:300].numpy()
    x_te, y_te = x_te.reshape(360, -1).double().numpy(), y_te.numpy()
    pca = PCA(16, svd_solver="full").fit(x_tr)
    b_tr, b_te = pca.transform(x_tr) > 0, pca.transform(x_te) > 0
    hits = 0
    for q, label in zip(b_te, y_te):
        dist = (b_tr != q).sum(1)
        order = sorted(range(300), key=lambda i: (dist[i], i))
        hits += sum(y_tr[i] == label for i in order[:10])
    assert rows["PCA-sign"]["precision@10"] == pytest.approx(hits / (10 * 360))

    # `aelab evaluate` adds the code statistics of a binary model, and draws its bit usage
    metrics = evaluate(out / "binary", tsne_points=50)["metrics"]
    assert metrics["bits_per_image"] == 16
    assert 1 <= metrics["code_distinct_train"] <= 300
    assert (out / "binary" / "figures" / "bit_usage.png").exists()


def test_binary_diagnostics_match_direct_counts(tmp_path):
    from aelab.metrics.retrieval import code_statistics, encode_codes
    from aelab.models import create

    torch.manual_seed(0)
    x = torch.rand(50, 1, 8, 8)
    for float_bottleneck in (False, True):
        model = create("binary", input_shape=(1, 8, 8), bits=6, channels=[4, 4], float_bottleneck=float_bottleneck)
        model.train()
        model.loss(x)  # one batch through BatchNorm to move its running statistics off the defaults
        metrics, f_bits = code_statistics(model, x, x[:20])
        assert model.training  # measured in eval mode, given back in training mode
        model.eval()
        with torch.no_grad():
            a = model.pre_activation(x)
        codes = (a > 0).to(torch.uint8).numpy()  # sigmoid(a) > 0.5  <=>  a > 0
        if not float_bottleneck:
            np.testing.assert_array_equal(codes, encode_codes(model, x))
        assert metrics["code_distinct_train"] == len({tuple(c) for c in codes})
        f = codes.mean(0)
        h = [0.0 if p in (0, 1) else -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) for p in f]
        assert metrics["bit_entropy_mean"] == pytest.approx(np.mean(h))
        assert metrics["bits_constant"] == sum(p in (0, 1) for p in f)
        assert metrics["bits_per_image"] == 6 * (32 if float_bottleneck else 1)
        assert ("code_saturation" in metrics) == float_bottleneck
        np.testing.assert_allclose(f_bits, f)


def test_linear_decoder_sse_matches_sklearn():
    from sklearn.linear_model import LinearRegression

    from aelab.metrics.reconstruction import linear_decoder_sse

    rng = np.random.default_rng(0)
    b_tr, b_te = rng.integers(0, 2, (40, 5)), rng.integers(0, 2, (10, 5))
    # a constant bit, collinear with the intercept: the fit is rank deficient, but its predictions on codes that
    # also have the bit on are unique
    b_tr[:, 4] = b_te[:, 4] = 1
    x_tr, x_te = rng.random((40, 1, 2, 3)), rng.random((10, 1, 2, 3))
    fit = LinearRegression().fit(b_tr, x_tr.reshape(40, -1))
    expected = ((fit.predict(b_te) - x_te.reshape(10, -1)) ** 2).sum(1)
    np.testing.assert_allclose(linear_decoder_sse(b_tr, x_tr, b_te, x_te), expected, rtol=1e-9)
