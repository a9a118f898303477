"""The bad-input suite: each case gets one line, exit status 2, and nothing (half-)written."""

import errno
import gzip
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aelab import runs
from aelab.cli import main
from aelab.data import DataError
from aelab.data.idx import read_idx_bytes
from helpers import one_line_exit_2

TRAIN = [
    "train",
    "--dataset",
    "digits",
    "--train-limit",
    "200",
    "--epochs",
    "1",
    "--hidden",
    "16",
    "--latent",
    "3",
    "--no-progress",
]


@pytest.fixture
def run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def test_full_disk_on_save(tmp_path, capsys, monkeypatch):
    real_fdopen = os.fdopen
    calls = {"n": 0}

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *a, **k):
        calls["n"] += 1
        f = real_fdopen(fd, *a, **k)
        return FullDisk(f) if calls["n"] >= 2 else f  # config.json goes through, the first checkpoint fails

    monkeypatch.setattr(runs.os, "fdopen", fdopen)
    out = tmp_path / "run"
    one_line_exit_2(capsys, main([*TRAIN, "--out", str(out)]), "No space left on device")
    assert not list(out.glob(".*.tmp-*")) and not (out / "checkpoint.safetensors").exists()


def test_checkpoint_architecture_mismatch(run, capsys):
    spec = json.loads((run / "model.json").read_text())
    spec["options"]["hidden"] = [17]
    (run / "model.json").write_text(json.dumps(spec))
    one_line_exit_2(capsys, main(["evaluate", str(run)]), "do not match")
    assert not (run / "eval.json").exists()


def test_pickle_checkpoint_refused_never_executed(run, capsys, tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    (run / "checkpoint.safetensors").write_bytes(pickle.dumps(Boom()))
    one_line_exit_2(capsys, main([*TRAIN, "--epochs", "2", "--out", str(run), "--resume"]), "torch.save")
    assert not (tmp_path / "pwned").exists()


def test_newer_format_version(run, capsys):
    cfg = json.loads((run / "model.json").read_text())
    cfg["format_version"] = runs.FORMAT_VERSION + 1
    (run / "model.json").write_text(json.dumps(cfg))
    one_line_exit_2(capsys, main(["evaluate", str(run)]), "newer")


def test_newer_checkpoint_format(run, capsys, monkeypatch):
    state, meta = runs.load_state(run / "checkpoint.safetensors")
    monkeypatch.setattr(runs, "FORMAT_VERSION", 7)  # as if written by a future aelab
    runs.save_state(run / "checkpoint.safetensors", state, meta)
    monkeypatch.setattr(runs, "FORMAT_VERSION", 1)
    one_line_exit_2(capsys, main([*TRAIN, "--epochs", "2", "--out", str(run), "--resume"]), "newer aelab")


def test_corrupt_idx_and_checksum_mismatch_via_cli(tmp_path, capsys, shared_idx):
    data_dir = tmp_path / "data"
    folder = data_dir / "mnist"
    folder.mkdir(parents=True)
    from aelab.data import IDX_DATASETS

    for spec in IDX_DATASETS["mnist"].files.values():  # plausible files that are not the official ones
        (folder / spec.name).write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + b"abc"))
    code = main([*TRAIN[:1], "--dataset", "mnist", "--data-dir", str(data_dir), "--out", str(tmp_path / "r")])
    # files already in the data folder are verified before use (they used to be read unchecked)
    one_line_exit_2(capsys, code, "checksum mismatch (not the official file)")
    assert not (tmp_path / "r").exists()
    # a checksum mismatch on download (file:// mirror holding the wrong file)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for spec in IDX_DATASETS["mnist"].files.values():
        (mirror / spec.name).write_bytes((shared_idx / "t10k-labels-idx1-ubyte.gz").read_bytes())
    code = main(["data", "fetch", "mnist", "--data-dir", str(tmp_path / "d2"), "--mirror", mirror.as_uri()])
    one_line_exit_2(capsys, code, "checksum mismatch")
    assert not list((tmp_path / "d2" / "mnist").iterdir())


def test_nan_in_data_via_cli(tmp_path, capsys, monkeypatch):
    from aelab.data import datasets

    def nan_digits():
        x = np.zeros((1797, 1, 8, 8), np.float32)
        x[5, 0, 1, 1] = np.nan
        return x, np.arange(1797) % 10

    monkeypatch.setattr(datasets, "_digits_arrays", nan_digits)
    monkeypatch.setattr(datasets, "_CACHE", {})
    one_line_exit_2(capsys, main([*TRAIN, "--out", str(tmp_path / "r")]), "NaN")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- property-based fuzzing of the IDX reader
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_idx_reader_fuzz_random_bytes(blob):
    try:
        arr = read_idx_bytes(blob, "fuzz")
    except DataError as e:
        assert "fuzz" in str(e)
    else:
        assert arr.size > 0


@settings(max_examples=300, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    dtype=st.sampled_from([8, 9, 0x0B, 0x0C, 0x0D, 0x0E]),
    cut=st.integers(-8, 8),
    flip=st.integers(0, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_idx_reader_fuzz_mutated_valid_files(shape, dtype, cut, flip, seed):
    sizes = {8: 1, 9: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
    rng = np.random.default_rng(seed)
    payload = rng.integers(0, 256, int(np.prod(shape)) * sizes[dtype], dtype=np.uint8).tobytes()
    blob = bytearray(bytes([0, 0, dtype, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape) + payload)
    if cut:
        blob = blob[:cut] if cut < 0 else blob + bytes(cut)
    if flip < len(blob) and flip < 4 + 4 * len(shape):
        blob[flip] ^= 0xFF
    try:
        arr = read_idx_bytes(bytes(blob), "fuzz")
    except DataError:
        return
    assert arr.shape and int(np.prod(arr.shape)) * arr.itemsize == len(blob) - 4 - 4 * arr.ndim
    if not cut and flip >= 4 + 4 * len(shape):  # untouched file: exact round trip
        assert (
            arr.shape == tuple(shape)
            and arr.tobytes() == np.frombuffer(payload, arr.dtype.newbyteorder(">")).astype(arr.dtype).tobytes()
        )
