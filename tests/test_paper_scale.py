"""Issue 20's plumbing: IDX datasets from a flat folder or DIR/NAME/, every experiment end to end on an IDX
dataset (a small fixture, never the 60k set), --device and --amp in every experiment, and bad input refused
before any training starts."""

import json

import pytest

from aelab.cli import main
from aelab.experiments import EXPERIMENTS


def one_line_exit_2(capsys, code: int, needle: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_train_reads_the_four_files_from_a_flat_folder_and_from_dir_name(idx_mnist, tmp_path):
    flat = tmp_path / "flat-run"
    argv = ["train", "--dataset", "mnist", "--epochs", "1", "--train-limit", "200", "--no-progress"]
    assert main([*argv, "--data-dir", str(idx_mnist), "--out", str(flat)]) == 0
    config = json.loads((flat / "config.json").read_text())
    assert config["n_train"] + config["n_val"] == 200 and config["n_test"] == 100
    # the same files one level down (DIR/mnist/*.gz) give the same data
    nested_root = tmp_path / "nested"
    (nested_root / "mnist").mkdir(parents=True)
    for f in idx_mnist.iterdir():
        (nested_root / "mnist" / f.name).write_bytes(f.read_bytes())
    nested = tmp_path / "nested-run"
    assert main([*argv, "--data-dir", str(nested_root), "--out", str(nested)]) == 0
    assert json.loads((nested / "config.json").read_text())["data_info"]["sha256"] == config["data_info"]["sha256"]
    # evaluate and compare find the data through the same --data-dir
    assert main(["evaluate", str(flat), "--data-dir", str(idx_mnist), "--no-figures"]) == 0
    assert main(["compare", str(flat), str(nested), "--data-dir", str(idx_mnist), "--out", str(tmp_path / "c")]) == 0


def test_train_on_a_folder_without_the_files_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["train", "--dataset", "mnist", "--data-dir", str(empty), "--epochs", "1", "--out", str(tmp_path / "r")]
    # no network here: the download fails and says which files to put where
    code = main([*argv, "--no-progress"])
    one_line_exit_2(capsys, code, "train-images-idx3-ubyte.gz")
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_every_experiment_lists_device_and_amp(experiment, capsys):
    assert main(["experiment", experiment, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--device" in out and "--amp" in out


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_every_experiment_refuses_a_bad_device_before_training(experiment, tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["experiment", experiment, "--device", "tpu", "--out", str(out), "--no-progress", "--quick"][:-1])
    one_line_exit_2(capsys, code, "unknown device 'tpu'")
    assert not any(p.is_dir() for p in out.rglob("*"))  # no run folder was started


def test_hinton2006_refuses_missing_idx_data_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "exp"
    argv = ["experiment", "hinton2006", "--dataset", "mnist", "--data-dir", str(empty), "--out", str(out)]
    one_line_exit_2(capsys, main([*argv, "--no-progress"]), "train-images-idx3-ubyte.gz")
    assert not any(p.is_dir() for p in out.rglob("*"))


TINY_ON_MNIST = {
    "hinton2006": ["--dataset", "mnist", "--layers", "784-16-2", "--epochs", "2", "--cg-epochs", "1", "--pretrain-epochs", "1",
                   "--train-limit", "200", "--logistic-pca-iter", "5", "--weight-decay", "0"],
    "binary": ["--dataset", "mnist", "--epochs", "1", "--bits", "8", "--train-limit", "200"],
    "contractive": ["--dataset", "mnist", "--epochs", "1", "--hidden", "8", "--train-limit", "200", "--quick"],
    "demo": ["--dataset", "mnist", "--epochs", "1"],
    "debias": ["--dataset-source", "mnist", "--ae-epochs", "1", "--n-models", "1", "--gce-epochs", "1",
               "--train-limit", "300", "--tsne-points", "30", "--quick"],
    "debias-classifier": ["--dataset-source", "mnist", "--seeds", "1", "--epochs", "1", "--ae-epochs", "1",
                          "--train-limit", "300", "--aligned-ratio", "0.9"],
}  # fmt: skip


@pytest.mark.parametrize("experiment", sorted(set(TINY_ON_MNIST) - {"hinton2006"}))  # hinton2006: below
def test_every_experiment_runs_end_to_end_on_idx_mnist(experiment, idx_mnist, tmp_path, tiny_demo):
    if experiment == "demo":
        tiny_demo()
    out = tmp_path / "exp"
    argv = ["experiment", experiment, "--data-dir", str(idx_mnist), "--out", str(out)]
    assert main([*argv, *TINY_ON_MNIST[experiment], "--no-progress"]) == 0
    text = (out / "results.json").read_text()
    assert "mnist5k" not in text  # nothing fell back to the embedded digits
    splits = json.loads(text)["splits"]
    if experiment == "debias":  # transductive: it grades the train images it scored (300, minus 30 validation)
        assert (splits["train"], splits["test"]) == (300, 270)
    elif experiment == "debias-classifier":  # the fixture's test digits, coloured colour-uniformly
        assert splits["test"].endswith("mnist10k_test")
    else:  # the fixture's test split: 100 images, not mnist5k's 1,000 nor the real 10k; not scored twice
        assert splits.get("test", splits.get("n_test")) == 100
        assert (splits.get("official_test") or {}).get("available") is not True


def test_hinton2006_rows_on_idx_mnist(idx_mnist, tmp_path):
    """The paper's rows; the RBM stack is pretrained once and both fine-tuners start from it."""
    out = tmp_path / "h"
    argv = ["experiment", "hinton2006", "--data-dir", str(idx_mnist), "--out", str(out)]
    assert main([*argv, *TINY_ON_MNIST["hinton2006"], "--no-progress"]) == 0
    seed = json.loads((out / "seed-0" / "results.json").read_text())
    assert [r["method"] for r in seed["tables"]["test split"]] == [
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
    assert list(seed["tables"]) == ["test split"]  # the test split is the official set: not scored twice
    stack = (out / "seed-0" / "rbm-stack" / "model.safetensors").read_bytes()
    for run in ("deep-ae-rbm-cg-wd0", "deep-ae-rbm-adam-wd0"):
        config = json.loads((out / "seed-0" / run / "config.json").read_text())
        import hashlib

        assert config["init_weights_sha256"] == hashlib.sha256(stack).hexdigest()
        assert (
            json.loads((out / "seed-0" / run / "metrics.jsonl").read_text().splitlines()[0])["phase"] == "init_weights"
        )
    assert json.loads((out / "seed-0" / "deep-ae-rbm-cg-wd0" / "config.json").read_text())["optimizer"] == "cg"


def test_a_flat_folder_of_another_datasets_files_is_never_taken_nor_touched(idx_mnist, tmp_path, capsys):
    """MNIST, Fashion-MNIST and KMNIST share their file names: a flat MNIST folder is not Fashion-MNIST's, and
    asking for Fashion-MNIST there (even with --force) downloads into DIR/fashion-mnist/, never over MNIST."""
    from aelab.data import datasets

    before = {f.name: f.read_bytes() for f in idx_mnist.iterdir()}
    assert datasets.dataset_folder("mnist", idx_mnist) == idx_mnist
    assert datasets.dataset_folder("fashion-mnist", idx_mnist) == idx_mnist / "fashion-mnist"
    assert not datasets.available_offline("fashion-mnist", idx_mnist)
    code = main(["data", "fetch", "fashion-mnist", "--data-dir", str(idx_mnist), "--force", "--deadline", "5"])
    assert code == 2  # no network here
    assert {f.name: f.read_bytes() for f in idx_mnist.iterdir() if f.is_file()} == before
