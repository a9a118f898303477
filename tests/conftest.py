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
