"""Your own data and networks: image folders, .npz/.npy, arrays and Datasets, user encoders/decoders,
`train --config` and `--resume` from the run folder. Tiny data (sklearn's 8x8 digits, a few MNIST test
digits), one or two epochs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from sklearn.datasets import load_digits

import aelab
from aelab import data as datamod
from aelab import runs
from aelab.cli import main
from aelab.data import sources
from aelab.errors import DataError
from aelab.evaluate import evaluate
from aelab.train import TrainConfig, train
from helpers import one_line_exit_2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray | None, rgb: bool = False) -> Path:
    """images (N, H, W) in [0, 1] -> PNG files, in class folders when labels are given."""
    for i, img in enumerate(images):
        folder = root if labels is None else root / f"class_{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        a = (img * 255).round().astype(np.uint8)
        if rgb:  # a colour per class, so that the channels differ
            a = np.stack([a, a[::-1], np.full_like(a, 40 * (0 if labels is None else labels[i] % 6))], -1)
        Image.fromarray(a).save(folder / f"{i:04d}.png")
    return root


CLI_TINY = ["--model", "ae", "--epochs", "1", "--batch-size", "64", "--hidden", "32", "--latent", "4", "--no-progress"]


# ---------------------------------------------------------------- folders
def test_labeled_grayscale_folder_through_the_cli(tmp_path, digits, capsys):
    x, y = digits
    root = write_folder(tmp_path / "gray", x[:200], y[:200])
    (root / "README.txt").write_text("not an image")  # counted, never silently dropped
    (root / "class_unfilled").mkdir()  # no image: not a class, but named and warned about
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(root), *CLI_TINY, "--out", str(out)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "class_unfilled" in line]
    assert len(warned) == 1 and warned[0].startswith("aelab: warning: ") and "no image" in warned[0]
    info = runs.read_config(out)["data_info"]
    assert info["empty_class_folders"] == ["class_unfilled"]
    assert info["kind"] == "folder" and info["source"] == str(root.resolve())
    assert (info["n_train"], info["n_test"], info["n_classes"]) == (160, 40, 10)
    assert info["classes"] == [f"class_{c}" for c in range(10)] and info["skipped_files"] == 1
    assert "stratified" in info["split"] and info["shape"] == [1, 8, 8]
    data = datamod.from_path(root)
    assert info["sha256"] == data.info["sha256"]
    # the hold-out split is stratified: every class is in test
    assert sorted(data.test_y.unique().tolist()) == list(range(10))
    assert main(["evaluate", str(out), "--no-figures"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["data"]["sha256"] == info["sha256"] and "probe_accuracy" in result["metrics"]
    # a second run on the same folder, side by side (compare evaluates it first)
    vae = tmp_path / "vae"
    assert main(["train", "--dataset", str(root), *CLI_TINY, "--model", "vae", "--out", str(vae)]) == 0
    assert main(["compare", str(out), str(vae), "--out", str(tmp_path / "cmp")]) == 0
    import csv

    with open(tmp_path / "cmp" / "comparison.csv") as f:
        rows = {Path(r["run"]).name: r for r in csv.DictReader(f)}
    assert float(rows["run"]["recon_sse"]) == pytest.approx(result["metrics"]["recon_sse"], rel=1e-6)
    assert rows["vae"]["data_sha256"] == info["sha256"] and float(rows["vae"]["recon_sse"]) > 0


def test_folder_pixels_are_the_files_pixels(tmp_path, digits):
    x, y = digits
    root = write_folder(tmp_path / "f", x[:30], y[:30])
    data = datamod.from_path(root, test_fraction=0.5)
    expected = {
        (int(lab), tuple((np.round(img * 255) / 255).astype(np.float32).ravel())) for img, lab in zip(x[:30], y[:30])
    }
    got = {
        (int(lab), tuple(img.ravel().tolist()))
        for img, lab in zip(torch.cat([data.train_x, data.test_x]).numpy(), torch.cat([data.train_y, data.test_y]))
    }
    assert {(lab, tuple(np.float32(v) for v in px)) for lab, px in got} == expected


def test_rgb_folder_with_train_and_test_and_odd_size_binary_ae(tmp_path, digits, capsys):
    """RGB images of 13x17 (sizes the conv strides floor) in train/ and test/: the conv binary AE adapts."""
    x, y = digits
    big = torch.nn.functional.interpolate(torch.from_numpy(x[:80, None]), size=(13, 17), mode="bilinear").numpy()
    write_folder(tmp_path / "rgb" / "train", big[:60, 0], y[:60], rgb=True)
    write_folder(tmp_path / "rgb" / "test", big[60:, 0], y[60:], rgb=True)
    out = tmp_path / "bin"
    args = ["train", "--dataset", str(tmp_path / "rgb"), "--model", "binary", "--option", "bits=16"]
    assert main([*args, "--epochs", "1", "--batch-size", "32", "--no-progress", "--out", str(out)]) == 0
    config = runs.read_config(out)
    assert config["data_info"]["split"] == "given" and config["data_info"]["shape"] == [3, 13, 17]
    assert (config["data_info"]["n_train"], config["data_info"]["n_test"]) == (60, 20)
    model = aelab.load_model(out)
    assert model(torch.rand(2, 3, 13, 17)).shape == (2, 3, 13, 17)
    assert main(["evaluate", str(out), "--no-figures"]) == 0


def test_unlabeled_flat_folder_skips_the_probe_rows(tmp_path, digits, capsys):
    x, _ = digits
    root = write_folder(tmp_path / "flat", x[:100], None)
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(root), *CLI_TINY, "--out", str(out)]) == 0
    info = runs.read_config(out)["data_info"]
    assert info["labeled"] is False and info["n_classes"] == 0 and "random hold-out" in info["split"]
    assert main(["evaluate", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert "probe_accuracy" not in result["metrics"] and "recon_sse" in result["metrics"]
    assert "unlabeled" in (out / "report.md").read_text()


def test_image_size_resizes_mixed_sizes(tmp_path, digits, capsys):
    x, y = digits
    root = write_folder(tmp_path / "mixed", x[:40], y[:40])
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "class_0" / "odd.png")
    code = main(["train", "--dataset", str(root), *CLI_TINY, "--out", str(tmp_path / "r")])
    one_line_exit_2(capsys, code, "odd.png")
    assert not (tmp_path / "r").exists()
    out = tmp_path / "r2"
    assert main(["train", "--dataset", str(root), "--image-size", "12,12", *CLI_TINY, "--out", str(out)]) == 0
    assert runs.read_config(out)["data_info"]["shape"] == [1, 12, 12]


def test_folder_cache_is_used_and_a_bad_cache_is_rebuilt(tmp_path, digits, monkeypatch):
    x, y = digits
    root = write_folder(tmp_path / "c", x[:50], y[:50])
    first = datamod.from_path(root, cache_dir=tmp_path / "cache")
    (cached,) = (tmp_path / "cache" / "folders").glob("*.npz")
    assert cached.stem == first.info["files_sha256"]

    def no_decoding(*a, **k):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as m:
        m.setattr(sources, "_decode", no_decoding)
        second = datamod.from_path(root, cache_dir=tmp_path / "cache")
    assert torch.equal(first.train_x, second.train_x) and first.info == second.info
    cached.write_bytes(b"garbage")  # untrusted: ignored and rebuilt, never trusted
    third = datamod.from_path(root, cache_dir=tmp_path / "cache")
    assert torch.equal(first.train_x, third.train_x)
    # a changed file changes the key, even when its size stays the same: no stale cache
    target = next((root / "class_3").glob("*.png"))
    size = target.stat().st_size
    for pad in range(400):  # a PNG text chunk pads the new image to the old file's size
        from PIL.PngImagePlugin import PngInfo

        meta = PngInfo()
        meta.add_text("pad", "x" * pad)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(target, pnginfo=meta)
        if target.stat().st_size == size:
            break
    assert target.stat().st_size == size
    assert datamod.from_path(root, cache_dir=tmp_path / "cache").info["sha256"] != first.info["sha256"]


# ---------------------------------------------------------------- arrays, .npz, .npy, Datasets
def test_npz_with_test_split_and_npy_unlabeled(tmp_path, digits, capsys):
    x, y = digits
    np.savez(tmp_path / "d.npz", x=(x[:300] * 255).astype(np.uint8), y=y[:300], x_test=x[300:400], y_test=y[300:400])
    data = datamod.from_path(tmp_path / "d.npz")
    assert data.info["split"] == "given" and (len(data.train_x), len(data.test_x)) == (300, 100)
    assert torch.allclose(data.test_x[:, 0], torch.from_numpy(x[300:400]))
    assert torch.allclose(data.train_x[:, 0], torch.from_numpy(np.floor(x[:300] * 255) / 255), atol=1e-6)
    np.save(tmp_path / "d.npy", x[:100, :, :, None])  # channels last
    out = tmp_path / "npy-run"
    assert main(["train", "--dataset", str(tmp_path / "d.npy"), *CLI_TINY, "--out", str(out)]) == 0
    assert runs.read_config(out)["data_info"]["labeled"] is False


def test_mnist_test_set_as_npz(tmp_path, shared_idx, capsys):
    images = datamod.read_idx(shared_idx / "t10k-images-idx3-ubyte.gz")[:400]
    labels = datamod.read_idx(shared_idx / "t10k-labels-idx1-ubyte.gz")[:400]
    np.savez(tmp_path / "mnist.npz", x=images, y=labels)
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(tmp_path / "mnist.npz"), *CLI_TINY, "--out", str(out)]) == 0
    assert runs.read_config(out)["data_info"]["shape"] == [1, 28, 28]
    result = evaluate(out, figures=False, write=False)
    assert result["metrics"]["recon_sse"] > 0 and "probe_accuracy" in result["metrics"]


def test_python_arrays_and_datasets(tmp_path, digits):
    x, y = digits
    a = datamod.from_arrays(torch.from_numpy(x[:200]), torch.from_numpy(y[:200]))
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x[:200, None]), torch.from_numpy(y[:200]))
    b = datamod.from_dataset(ds)
    assert a.info["sha256"] == b.info["sha256"]  # same images, same split: same data
    pil = [Image.fromarray((img * 255).astype(np.uint8)) for img in x[:50]]
    c = datamod.from_dataset(pil)  # a list of PIL images: unlabeled
    assert c.info["labeled"] is False and c.image_shape == (1, 8, 8)
    out = train(TrainConfig(model="ae", dataset=a, epochs=1, out=str(tmp_path / "r")), progress=False)
    assert runs.read_config(out)["dataset"] == "python:arrays"
    with pytest.raises(DataError, match="given from Python"):
        evaluate(out, write=False, figures=False)
    with pytest.raises(DataError, match="content hash"):
        evaluate(out, data=c, write=False, figures=False)
    assert evaluate(out, data=b, write=False, figures=False)["metrics"]["recon_sse"] > 0


@pytest.mark.parametrize(
    "case, needle",
    [
        ("empty folder", "no images"),
        ("corrupt png", "bad.png"),
        ("mixed sizes", "mixed image sizes"),
        ("nan in array", "NaN"),
        ("label count", "labels for"),
        ("values above 1", "outside [0, 1]"),
        ("pickled object array", "cannot read"),
        ("no such path", "no dataset named"),
    ],
)
def test_bad_data_one_line_exit_2_and_no_run(tmp_path, digits, capsys, case, needle):
    x, y = digits
    path = tmp_path / "data"
    if case == "empty folder":
        path.mkdir()
    elif case == "corrupt png":
        write_folder(path, x[:20], y[:20])
        (path / "class_1" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    elif case == "mixed sizes":
        write_folder(path, x[:20], y[:20])
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(path / "class_2" / "big.png")
    elif case == "nan in array":
        bad = x[:50].copy()
        bad[7, 3, 3] = np.nan
        path = tmp_path / "d.npz"
        np.savez(path, x=bad)
    elif case == "label count":
        path = tmp_path / "d.npz"
        np.savez(path, x=x[:50], y=y[:49])
    elif case == "values above 1":
        path = tmp_path / "d.npy"
        np.save(path, x[:50] * 16)
    elif case == "pickled object array":
        path = tmp_path / "d.npy"
        np.save(path, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    else:
        path = tmp_path / "missing"
    out = tmp_path / "run"
    code = main(["train", "--dataset", str(path), *CLI_TINY, "--out", str(out)])
    one_line_exit_2(capsys, code, needle)
    assert not out.exists()


# ---------------------------------------------------------------- user networks
class ConvEncoder(nn.Module):
    def __init__(self, code: int = 6):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, code))

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    def __init__(self, code: int = 6):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(code, 4 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (4, 4, 4)))
        self.up = nn.ConvTranspose2d(4, 1, 4, 2, 1)

    def forward(self, z):
        return self.up(self.net(z))


class GaussianEncoder(ConvEncoder):
    def forward(self, x):
        return self.net(x).chunk(2, dim=1)


def test_custom_modules_train_resume_bit_identically_evaluate_and_reload(tmp_path, digits):
    x, y = digits
    data = datamod.from_arrays(x[:256], y[:256])

    def config(out, epochs):
        torch.manual_seed(0)  # the user's modules start from the same weights in both runs
        options = {"encoder": ConvEncoder(), "decoder": ConvDecoder(), "lam": 0.1}
        return TrainConfig(model="cae", model_options=options, dataset=data, epochs=epochs, batch_size=64, out=out)

    whole = train(config(str(tmp_path / "whole"), 3), progress=False)
    part = str(tmp_path / "part")
    train(config(part, 1), progress=False)
    train(config(part, 3), resume=True, progress=False)
    a, _ = runs.load_state(Path(whole) / "model.safetensors")
    b, _ = runs.load_state(Path(part) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    options = runs.read_config(whole)["model_options"]
    assert options["encoder"] == f"custom:{__name__}.ConvEncoder"
    with pytest.raises(aelab.errors.CheckpointError, match="user-supplied decoder .* and encoder"):
        aelab.load_model(whole)
    model = aelab.load_model(whole, encoder=ConvEncoder(), decoder=ConvDecoder())
    assert torch.equal(model.encoder.net[0].weight, a["encoder.net.0.weight"])
    result = evaluate(whole, data=data, encoder=ConvEncoder(), decoder=ConvDecoder(), figures=True)
    assert result["metrics"]["penalty_used"] == "exact" and (Path(whole) / "report.html").exists()
    assert "jacobian_mean" not in " ".join(result["metrics"])  # MLP-only diagnostics are not claimed
    with pytest.raises(aelab.errors.CheckpointError, match="cannot build"):
        aelab.load_model(whole, encoder=ConvEncoder(code=5), decoder=ConvDecoder())


def test_cae_penalty_with_a_user_encoder_is_the_brute_force_jacobian():
    torch.manual_seed(0)
    model = aelab.models.create(
        "cae", input_shape=[1, 8, 8], encoder=ConvEncoder().double(), decoder=ConvDecoder().double()
    )
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    _, penalty = model.code_and_penalty(x)
    for n in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: model.encoder(v.view(1, 1, 8, 8)).ravel(), x[n].ravel())
        assert torch.allclose(penalty[n], jac.pow(2).sum(), rtol=1e-10)
    # a [Flatten, Linear, Sigmoid] user encoder gets the closed form, and says so
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Sigmoid())
    assert aelab.models.create("cae", input_shape=[1, 8, 8], hidden=[5], encoder=flat).penalty_used == "analytic"


@pytest.mark.parametrize("name", ["ae", "dae", "vae", "binary", "deep-ae"])
def test_every_model_takes_user_modules(name):
    torch.manual_seed(0)
    encoder = GaussianEncoder(code=6) if name == "vae" else ConvEncoder()
    decoder = ConvDecoder(code=3 if name == "vae" else 6)
    extra = {"layers": [64, 6]} if name == "deep-ae" else {}
    model = aelab.models.create(name, input_shape=[1, 8, 8], encoder=encoder, decoder=decoder, **extra)
    x = torch.rand(4, 1, 8, 8)
    assert model.encode(x).shape == (4, 3 if name == "vae" else 6)
    assert model(x).shape == x.shape and torch.isfinite(model.loss(x))
    model.loss(x).backward()
    assert encoder.net[0].weight.grad is not None and decoder.up.weight.grad is not None


def test_user_modules_that_do_not_fit_are_one_line_errors():
    with pytest.raises(aelab.errors.ConfigError, match="decoder"):
        aelab.models.create("ae", input_shape=[1, 8, 8], encoder=ConvEncoder(), decoder=ConvDecoder(code=5))
    with pytest.raises(aelab.errors.ConfigError, match="encoder fails"):
        aelab.models.create("ae", input_shape=[3, 8, 8], encoder=ConvEncoder(), decoder=ConvDecoder())
    with pytest.raises(aelab.errors.ConfigError, match="init='rbm'"):
        aelab.models.create("deep-ae", input_shape=[1, 8, 8], layers=[64, 6], init="rbm", encoder=ConvEncoder())
    with pytest.raises(aelab.errors.ConfigError, match="torch.nn.Module"):
        aelab.models.create("ae", input_shape=[1, 8, 8], encoder="my-encoder")


# ---------------------------------------------------------------- re-running and resuming from the run folder
def test_train_config_rerun_and_resume_from_the_run_folder(tmp_path, capsys):
    first = tmp_path / "first"
    base = ["train", "--dataset", "digits", "--train-limit", "128", "--batch-size", "64", "--no-progress"]
    assert main([*base, "--model", "vae", "--latent", "3", "--hidden", "16", "--epochs", "1", "--out", str(first)]) == 0
    # --config re-runs the saved settings; flags override
    again = tmp_path / "again"
    assert (
        main(["train", "--config", str(first / "config.json"), "--epochs", "2", "--no-progress", "--out", str(again)])
        == 0
    )
    old, new = runs.read_config(first), runs.read_config(again)
    assert new["model"] == "vae" and new["model_options"] == old["model_options"] and new["epochs"] == 2
    assert new["data_info"]["sha256"] == old["data_info"]["sha256"] and new["train_limit"] == 128
    h_old, h_new = runs.read_history(first), runs.read_history(again)
    assert h_new[0]["test_loss"] == h_old[0]["test_loss"]  # same settings, same seed: the same first epoch
    # --resume reads everything else from the run folder
    assert main(["train", "--out", str(first), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert [h["epoch"] for h in runs.read_history(first)] == [1, 2, 3]
    assert runs.read_history(first)[1]["test_loss"] == h_new[1]["test_loss"]
    # fewer epochs than done: refused, config.json must describe the weights beside it
    before = (first / "config.json").read_bytes()
    capsys.readouterr()  # the runs above end with a warning: 3 epochs still fall steeply
    one_line_exit_2(capsys, main(["train", "--out", str(first), "--resume", "--epochs", "2"]), "fewer")
    assert (first / "config.json").read_bytes() == before
    one_line_exit_2(
        capsys, main(["train", "--config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")]), "not a file"
    )
    one_line_exit_2(capsys, main(["train", "--model", "ae"]), "--out is required")


# ---------------------------------------------------------------- a second test set
def test_evaluate_on_the_official_mnist_test_set(tmp_path, shared_idx, capsys):
    """A run trained on mnist5k, scored on the official 10,000 test digits: only the t10k files are needed,
    PCA is still fitted on the run's train split, and the run's own eval.json is left alone."""
    from aelab.metrics.reconstruction import pca_reconstruction_sse

    out = tmp_path / "run"
    args = ["--dataset", "mnist5k", "--train-limit", "300", "--hidden", "16", "--latent", "4"]
    assert main(["train", *args, "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--no-figures", "--no-progress"]) == 0
    own = (out / "eval.json").read_bytes()
    code = main(["evaluate", str(out), "--test-dataset", "mnist", "--data-dir", str(shared_idx), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "eval-test-mnist.json").read_text())
    assert (out / "eval.json").read_bytes() == own
    assert result["data"]["n_test"] == 10000 and result["data"]["n_train"] == 300
    assert "mnist test split" in result["data"]["score_split"]
    train_x, _ = datamod.load("mnist5k", "train")
    test_x = torch.from_numpy(datamod.read_idx(shared_idx / "t10k-images-idx3-ubyte.gz")[:, None] / 255.0).float()
    expected = pca_reconstruction_sse(train_x[:300].numpy(), test_x.numpy(), 4)
    assert result["metrics"]["pca_sse"] == pytest.approx(expected, rel=1e-5)
    assert result["metrics"]["pca_sse"] != pytest.approx(json.loads(own)["metrics"]["pca_sse"], rel=1e-3)
    # the raw-pixel probe is scored on the 10k digits too, not taken from the run's own test split (a cache once
    # keyed by the train data only returned the first test set's number in the same process)
    from independent import protocol_validation_indices, sklearn_grid_probe

    train_y = datamod.load("mnist5k", "train")[1][:300].numpy()
    test_y = datamod.read_idx(shared_idx / "t10k-labels-idx1-ubyte.gz")
    pixels = train_x[:300].flatten(1).numpy()
    raw, C = sklearn_grid_probe(
        pixels, train_y, test_x.flatten(1).numpy(), test_y, protocol_validation_indices(train_y)
    )
    assert (result["metrics"]["raw_probe_accuracy"], result["metrics"]["raw_probe_C"]) == (
        pytest.approx(raw, abs=1e-12),
        C,
    )
    # another image shape is refused; a missing file is named
    capsys.readouterr()  # the evaluations above warn: a tiny run reconstructs worse than PCA
    one_line_exit_2(capsys, main(["evaluate", str(out), "--test-dataset", "digits"]), "shape")
    one_line_exit_2(
        capsys, main(["evaluate", str(out), "--test-dataset", "mnist", "--data-dir", str(tmp_path)]), "t10k"
    )


# ---------------------------------------------------------------- validation split and early stopping
def _weights(run) -> dict:
    return runs.load_state(Path(run) / "model.safetensors")[0]


def test_early_stopping_keeps_the_best_validation_epoch_and_never_looks_at_test(tmp_path, digits):
    from aelab.train import history_stopped

    x, y = digits
    data = datamod.from_arrays(x[:400], y[:400], x[400:500], y[400:500])

    def config(out, dataset=data, epochs=40, **extra):
        options = {"hidden": [16], "latent": 4}
        settings = dict(val_fraction=0.25, early_stopping=2, epochs=epochs, lr=0.1, batch_size=32)
        settings.update(extra)
        return TrainConfig(model="ae", model_options=options, dataset=dataset, out=str(tmp_path / out), **settings)

    run = train(config("es"), progress=False)
    history = runs.read_history(run)
    best = history[-1]["best_epoch"]
    val = [h["val_loss"] for h in history]
    assert len(history) < 40 and history_stopped(history, 2) and not history_stopped(history[:-1], 2)
    assert val[best - 1] == min(val) and len(history) - best == 2
    assert runs.read_config(run)["n_val"] == 100 and runs.read_config(run)["n_train"] == 300
    # the kept weights are those of a plain run of `best` epochs (same seed, same splits)
    plain = train(config("plain", epochs=best, early_stopping=None), progress=False)
    a, b = _weights(run), _weights(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # garbage test images change nothing that is chosen: selection sees the validation split only
    noise = np.random.default_rng(0).random((100, 8, 8)).astype(np.float32)
    garbage = datamod.from_arrays(x[:400], y[:400], noise, np.zeros(100, np.int64))
    other = train(config("garbage-test", dataset=garbage), progress=False)
    assert runs.read_history(other)[-1]["best_epoch"] == best
    c = _weights(other)
    assert all(torch.equal(a[k], c[k]) for k in a)
    # a killed run resumes to the same weights and the same stop
    part = train(config("part", epochs=4), progress=False)
    train(config("part"), resume=True, progress=False)
    d = _weights(part)
    assert all(torch.equal(a[k], d[k]) for k in a) and len(runs.read_history(part)) == len(history)


def test_early_stopping_needs_a_validation_split(capsys, tmp_path):
    out = str(tmp_path / "never-written")
    code = main(["train", "--dataset", "digits", "--val-fraction", "0", "--early-stopping", "3", "--out", out])
    one_line_exit_2(capsys, code, "--val-fraction above 0")
    code = main(["train", "--dataset", "digits", "--val-fraction", "1.5", "--out", out])
    one_line_exit_2(capsys, code, "--val-fraction")
    assert not (tmp_path / "never-written").exists()


def test_sixteen_bit_grey_is_scaled_not_clipped_and_32_bit_is_refused(tmp_path, capsys):
    root = tmp_path / "deep"
    root.mkdir()
    values = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    for i in range(10):
        Image.fromarray(values).save(root / f"{i}.png")
    data = datamod.from_path(root)
    expected = torch.from_numpy(np.round(values / 257.0) / 255.0).float()
    assert torch.allclose(data.train_x[0, 0], expected) and float(data.train_x.max()) < 1.0
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(root / "float.tiff")
    (root / "float.tiff").rename(root / "float.png")  # a TIFF named .png: read by content, refused by mode
    one_line_exit_2(capsys, main(["train", "--dataset", str(root), *CLI_TINY, "--out", str(tmp_path / "r")]), "32-bit")


def test_review_regressions(tmp_path, digits, capsys):
    """Found by an adversarial pass: each of these once hung, crashed (exit 1) or misread data."""
    import os

    x, y = digits
    root = write_folder(tmp_path / "links", x[:30], y[:30] % 2)
    os.symlink("/dev/zero", root / "class_0" / "zero.png")  # read forever, once
    os.mkfifo(root / "class_1" / "fifo.png")  # blocked forever, once
    os.symlink(tmp_path / "nowhere", root / "class_1" / "gone.png")  # FileNotFoundError (exit 1), once
    data = datamod.from_path(root, cache_dir=tmp_path / "cache")
    assert data.info["skipped_files"] == 3 and data.info["n_train"] + data.info["n_test"] == 30
    # a cache whose image count does not match the files is rebuilt, never trusted
    (cached,) = (tmp_path / "cache" / "folders").glob("*.npz")
    np.savez(cached, x_train=np.zeros((50, 1, 8, 8), np.uint8))
    again = datamod.from_path(root, cache_dir=tmp_path / "cache")
    assert again.info["sha256"] == data.info["sha256"]
    # channels-last RGBA arrays are read as 4 channels, not as 8 channels of 8x4
    rgba = datamod.from_arrays(np.zeros((20, 8, 8, 4), np.uint8), np.arange(20) % 2)
    assert rgba.image_shape == (4, 8, 8)
    with pytest.raises(DataError, match="64-bit"):
        datamod.from_arrays(x[:20], np.array([2**63 + 1, 0] * 10, dtype=np.uint64))
    # wrong types in a saved config and an empty --test-dataset are one-line errors
    first = tmp_path / "r"
    assert main(["train", "--dataset", "digits", "--train-limit", "60", *CLI_TINY, "--out", str(first)]) == 0
    config = json.loads((first / "config.json").read_text())
    (tmp_path / "c.json").write_text(json.dumps({**config, "compile": "yes"}))
    one_line_exit_2(
        capsys, main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r2")]), "--compile"
    )
    one_line_exit_2(capsys, main(["evaluate", str(first), "--test-dataset", ""]), "--test-dataset")


def test_class_names_reach_eval_json_and_the_figures(tmp_path, digits, monkeypatch):
    """Issue 23 item 3: a folder of cats/dogs/birds shows those names (t-SNE colour bar, interpolation labels,
    eval.json), one colour per class: three colours for three classes, not ten."""
    from aelab import report

    x, y = digits
    keep = y < 3
    names = np.array(["cats", "dogs", "birds"])
    root = tmp_path / "pets"
    for i, (img, label) in enumerate(zip(x[keep][:150], y[keep][:150])):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"{i:04d}.png")
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(root), *CLI_TINY, "--out", str(out)]) == 0
    seen = {}
    real_scatter, real_rows = report.plot_scatter, report.plot_image_rows
    monkeypatch.setattr(report, "plot_scatter", lambda *a, **k: seen.setdefault("scatter", k) and real_scatter(*a, **k))
    monkeypatch.setattr(
        report, "plot_image_rows", lambda rows, labels, path, *a: seen.setdefault(Path(path).stem, labels)
        and real_rows(rows, labels, path, *a)
    )  # fmt: skip
    result = evaluate(out, tsne_points=60, progress=False)
    assert result["data"]["class_names"] == ["birds", "cats", "dogs"]  # sorted: label i is names[i]
    assert seen["scatter"]["class_names"] == ["birds", "cats", "dogs"]
    assert all("→" in t and t.split("→")[0] in ("birds", "cats", "dogs") for t in seen["interpolation"])
    import matplotlib

    matplotlib.use("Agg")
    path = report.plot_scatter(
        np.zeros((3, 2)), np.array([0, 1, 2]), tmp_path / "s.png", "t", class_names=["a", "b", "c"]
    )
    assert path.exists()


def test_one_image_size_number_is_a_square(tmp_path):
    """Issue 23, item 10: `--image-size 32` is 32x32, not an error."""
    from PIL import Image

    from aelab.cli import main

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(12):
        Image.new("L", (10, 7), i * 20).save(folder / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(tmp_path / "imgs"), "--image-size", "6", "--epochs", "1",
                 "--no-progress", "--no-tensorboard", "--out", str(out)]) == 0  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["dataset_options"]["image_size"] == [6, 6] and config["model_options"]["input_shape"] == [1, 6, 6]
