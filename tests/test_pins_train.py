"""Pins of the trainer's plumbing where it is used: dynamic binarisation (the images it draws from, its own random
stream, --train-limit), the convergence warning of train and evaluate (the window, early stopping), and an
experiment on IDX data checking its files before it trains."""

import json
import math

import numpy as np
import pytest
import torch

from aelab import data as datamod
from aelab.cli import main
from aelab.metrics.convergence import still_falling
from helpers import idx_folder_with_one_wrong_byte, one_line_exit_2
from independent import protocol_validation_indices

pytestmark = pytest.mark.usefixtures("one_thread")


def _row_index(rows: torch.Tensor, table: torch.Tensor) -> list[int]:
    """For each row of `rows`, the index of the one equal row of `table` (every row of table is distinct)."""
    flat, ref = rows.flatten(1), table.flatten(1)
    found = []
    for r in flat:
        (match,) = torch.nonzero((ref == r).all(1), as_tuple=True)
        assert len(match) == 1
        found.append(int(match))
    return found


@pytest.fixture
def binarize_calls(monkeypatch):
    """Every call of aelab.data.binarize during the test: (images, seed)."""
    calls = []
    real = datamod.binarize

    def spy(images, seed):
        calls.append((images.detach().cpu().clone(), int(seed)))
        return real(images, seed)

    monkeypatch.setattr(datamod, "binarize", spy)
    monkeypatch.setattr(datamod.datasets, "binarize", spy)
    return calls


@pytest.fixture
def seeds_used(monkeypatch):
    """Every seed given to torch.manual_seed or to a torch.Generator during the test, in order."""
    seeds = []
    real_manual_seed = torch.manual_seed

    class Generator(torch.Generator):
        def manual_seed(self, seed):
            seeds.append(int(seed))
            return super().manual_seed(seed)

    def manual_seed(seed):
        seeds.append(int(seed))
        return real_manual_seed(seed)

    monkeypatch.setattr(torch, "Generator", Generator)
    monkeypatch.setattr(torch, "manual_seed", manual_seed)
    return seeds


def test_dynamic_binarisation_draws_only_from_the_training_images_with_a_stream_of_its_own(
    tmp_path, binarize_calls, seeds_used
):
    """With a validation split, every epoch's draw is of the kept training images' grey levels, none of the
    held-out validation images (the split derived here independently: a stratified 10% by sklearn); validation is
    the fixed draw of the held-out images; and the seed of each epoch's draw is used by nothing else in the run
    (not the order, the model's noise, nor the test or validation losses)."""
    from aelab.train import TrainConfig, load_data, train

    limit = 100
    gray, labels = datamod.load("digits", "train")
    gray, labels = gray[:limit], labels[:limit]
    held = set(protocol_validation_indices(labels.numpy()).tolist())
    kept = set(range(limit)) - held
    static = datamod.load("digits", "train", binarize="static")[0][:limit]

    cfg = dict(dataset="digits", dataset_options={"binarize": "dynamic"}, train_limit=limit, val_fraction=0.1)
    train_x, val_x, _, info = load_data(TrainConfig(**cfg), torch.device("cpu"))
    assert info["val_fraction"] == 0.1 and info["validation"].endswith("carved from the train split")
    assert set(_row_index(train_x, gray)) == kept and len(train_x) == len(kept)
    assert set(_row_index(val_x, static)) == held and len(val_x) == len(held)

    binarize_calls.clear()
    seeds_used.clear()
    train(TrainConfig(model="vae", model_options={"hidden": [8], "latent": 2}, epochs=2, batch_size=50,
                      out=str(tmp_path / "run"), tensorboard=False, **cfg), progress=False)  # fmt: skip
    draws = [(images, seed) for images, seed in binarize_calls if len(images) == len(kept)]
    assert len(draws) == 2  # one fresh draw per epoch
    for images, _ in draws:
        assert set(_row_index(images, gray)) == kept
    draw_seeds = [seed for _, seed in draws]
    assert draw_seeds[0] != draw_seeds[1]
    others = list(seeds_used)
    for seed in draw_seeds:
        others.remove(seed)  # the draw's own generator
    assert not set(draw_seeds) & set(others), "the draw shares its seed with another random stream of the run"


def test_train_limit_holds_for_dynamic_binarisation_without_a_validation_split(tmp_path, binarize_calls):
    limit = 60
    argv = ["train", "--model", "vae", "--hidden", "8", "--latent", "2", "--dataset", "digits", "--dataset-option",
            "binarize=dynamic", "--train-limit", str(limit), "--val-fraction", "0", "--epochs", "1", "--quiet",
            "--out", str(tmp_path / "run")]  # fmt: skip
    binarize_calls.clear()
    assert main(argv) == 0
    gray = datamod.load("digits", "train")[0]
    trained = [images for images, _ in binarize_calls if len(images) not in (360,)]  # the test split's fixed draw
    assert len(trained) == 1 and torch.equal(trained[0], gray[:limit])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["n_train"] == limit


def test_loading_a_folder_shows_its_decoding_only_when_asked(tmp_path, capsys):
    from PIL import Image

    from aelab.train import TrainConfig, load_data

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            pixels = (np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / c / f"{i}.png")
    for progress in (False, True):
        cfg = TrainConfig(dataset=str(tmp_path / "imgs"), val_fraction=0.0, data_dir=str(tmp_path / f"cache{progress}"))
        capsys.readouterr()
        load_data(cfg, torch.device("cpu"), progress=progress)
        assert ("decoding" in capsys.readouterr().err) == progress


def test_the_still_falling_warning_reads_the_last_ceil_e_over_10_epochs_and_checks_an_early_stopped_run(
    tmp_path, capsys
):
    """21 epochs of a slowly learning AE under early stopping whose best epoch is its last: train warns, over a
    window of ceil(21/10) = 3 epochs (not 2), with the ratio computed here from the history."""
    from aelab.runs import read_history

    run = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--train-limit", "200", "--hidden", "16", "--latent", "3",
            "--batch-size", "50", "--epochs", "21", "--lr", "2e-4", "--early-stopping", "100", "--quiet",
            "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    history = [h for h in read_history(run) if "train_loss" in h]
    assert history[-1]["best_epoch"] == 21  # early stopping ran, and kept the last epoch
    losses = [h["val_loss"] for h in history]
    k = math.ceil(21 / 10)
    recent, average = (losses[-1 - k] - losses[-1]) / k, (losses[0] - losses[-1]) / 20
    assert recent >= 0.5 * average  # by the rule's definition, this curve is still falling steeply
    assert f"over the last {k} of 21 epochs, {recent / average:.2f}x the run's average rate" in err, err


def test_the_validation_loss_is_read_only_when_every_epoch_has_one():
    straight = [100.0 - 2 * i for i in range(10)]
    history = [{"epoch": i + 1, "train_loss": v, "val_loss": v + 50} for i, v in enumerate(straight)]
    del history[0]["val_loss"]  # one epoch without: the train loss is read
    assert still_falling(history)["key"] == "train_loss"
    assert still_falling(history)["recent_rate"] == pytest.approx(2.0)


# every experiment that trains on --dataset, with the smallest settings that reach its training
IDX_EXPERIMENTS = {
    "vae-family": ["--epochs", "1", "--nll-k", "2", "--models", "vae"],
    "binary": ["--epochs", "1", "--bits", "8", "--train-limit", "100"],
    "contractive": ["--epochs", "1", "--hidden", "8", "--train-limit", "100", "--quick"],
    "demo": ["--epochs", "1"],
    "hinton2006": [
        "--layers",
        "784-16-2",
        "--epochs",
        "1",
        "--cg-epochs",
        "1",
        "--pretrain-epochs",
        "1",
        "--train-limit",
        "100",
        "--logistic-pca-iter",
        "5",
        "--weight-decay",
        "0",
    ],
}


@pytest.mark.parametrize("experiment", sorted(IDX_EXPERIMENTS))
def test_an_experiment_on_idx_data_checks_its_files_before_training(experiment, idx_mnist, tmp_path, capsys):
    """A wrong IDX file (one changed byte) in DIR/mnist/ is refused with one line naming it, before any run folder
    exists."""
    root = idx_folder_with_one_wrong_byte(idx_mnist, tmp_path / "data")
    out = tmp_path / "exp"
    argv = ["experiment", experiment, "--dataset", "mnist", "--data-dir", str(root), "--out", str(out)]
    code = main([*argv, *IDX_EXPERIMENTS[experiment], "--no-progress"])
    one_line_exit_2(capsys, code, "checksum mismatch")
    assert not any(p.is_dir() for p in out.rglob("*")) and not np.any([p.name == "config.json" for p in out.rglob("*")])


def test_worse_than_pca_needs_both_numbers_and_a_code_size_and_a_strictly_worse_error():
    from aelab.metrics.convergence import worse_than_pca_warning

    full = {"recon_sse": 30.0, "pca_sse": 20.0, "code_dim": 8}
    assert worse_than_pca_warning(full, binary_code=False, pixels=64).endswith(
        "likely undertrained (more epochs or steps, a larger learning rate)"
    )
    for missing in ("recon_sse", "pca_sse", "code_dim"):
        assert worse_than_pca_warning({k: v for k, v in full.items() if k != missing}, False, 64) is None
    assert worse_than_pca_warning({**full, "code_dim": "8"}, False, 64) is None
    assert worse_than_pca_warning({**full, "recon_sse": 20.0}, False, 64) is None  # as good as PCA: not worse


def test_an_eval_json_gives_at_most_10_warnings_of_600_characters():
    """eval.json is untrusted: compare repeats at most 10 of its warnings, each cut to 600 characters."""
    from aelab.metrics.convergence import recorded_warnings

    found = recorded_warnings({"warnings": [f"{i} " + "x" * 700 for i in range(12)] + [3]})
    assert len(found) == 10 and [len(w) for w in found] == [600] * 10 and found[9].startswith("9 ")
