import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: no spinning threads on a shared machine

import pytest
import torch

torch.set_num_threads(2)
SHARED_IDX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-idx"


@pytest.fixture
def shared_idx() -> Path:
    if not (SHARED_IDX / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"{SHARED_IDX} not present")
    return SHARED_IDX


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path_factory, monkeypatch):
    # never touch the user's cache from tests
    monkeypatch.setenv("AELAB_DATA", str(tmp_path_factory.getbasetemp() / "aelab-data"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny float64 work gains nothing from threads, and on a busy 2-core machine every parallel region
    waits for a descheduled worker; modules opt in with pytest.mark.usefixtures("one_thread")."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def garbage_test_split(monkeypatch):
    """Calling it makes aelab.data.get return random test images and labels (train split untouched): a selection
    that never looks at the test split must not change."""
    import dataclasses

    import torch

    from aelab import data as datamod

    def install(seed: int = 123) -> None:
        real_get = datamod.get

        def get(*args, **kwargs):
            data = real_get(*args, **kwargs)
            noise = torch.Generator().manual_seed(seed)
            return dataclasses.replace(
                data,
                test_x=torch.rand(data.test_x.shape, generator=noise),
                test_y=torch.randint(0, 10, data.test_y.shape, generator=noise),
            )

        monkeypatch.setattr(datamod, "get", get)

    return install


@pytest.fixture
def tiny_demo(monkeypatch):
    """Calling it makes `aelab experiment demo` train tiny models (100 train images, an 8-unit layer, 2-D codes):
    the demo itself trains on all of its dataset for 30 epochs."""
    import aelab.experiments.common as common

    def install() -> None:
        real_train = common.train

        def tiny(cfg, **kw):
            cfg.train_limit, cfg.model_options = 100, {**cfg.model_options, "hidden": [8], "latent": 2}
            return real_train(cfg, **kw)

        monkeypatch.setattr(common, "train", tiny)

    return install


@pytest.fixture
def idx_mnist(tmp_path, monkeypatch):
    """A small stand-in for the full MNIST: 400 train and 100 test digits (from the embedded mnist5k) written
    as the four official IDX file names, gzip-compressed, in one flat folder (as ../shared/data/mnist-idx/);
    the `mnist` dataset's checksums are swapped for theirs. Returns the folder (pass it as --data-dir)."""
    import gzip
    import hashlib
    import struct

    import numpy as np

    from aelab import data
    from aelab.data.datasets import IdxDataset, IdxFile

    folder = tmp_path / "mnist-idx"
    folder.mkdir()
    official = data.IDX_DATASETS["mnist"]
    files = {}
    for split, n in (("train", 400), ("test", 100)):
        x, y = data.load("mnist5k", split)
        images = (x[:n, 0].numpy() * 255).round().astype(np.uint8)
        for kind, arr in (("images", images), ("labels", y[:n].numpy().astype(np.uint8))):
            raw = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape) + arr.tobytes()
            blob = gzip.compress(raw)
            name = official.files[f"{split}_{kind}"].name
            (folder / name).write_bytes(blob)
            files[f"{split}_{kind}"] = IdxFile(name, hashlib.md5(blob).hexdigest())
    monkeypatch.setitem(data.IDX_DATASETS, "mnist", IdxDataset("mnist", official.mirrors, files, 400, 100))
    return folder


@pytest.fixture
def terminal(monkeypatch):
    """stderr counts as a terminal (aelab.progress draws tqdm bars there only; elsewhere it prints lines)."""
    import aelab.progress as progress

    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
