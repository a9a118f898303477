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
