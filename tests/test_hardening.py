"""Hardening: the run-folder lock, hostile run folders, hostile downloads, and a fuzz of every CLI flag.

Every bad input gets exit status 2, exactly one line on stderr, no traceback, and changes no file outside
the --out it was given. AELAB_FUZZ_EXAMPLES=N raises the number of generated cases per command."""

import gzip
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aelab import runs
from aelab.cli import main
from aelab.data import DataError, datasets
from aelab.data.datasets import IdxDataset, IdxFile
from helpers import one_line_exit_2

TRAIN = ["train", "--dataset", "digits", "--train-limit", "120", "--epochs", "1", "--batch-size", "40",
         "--hidden", "8", "--latent", "2", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of a small trained run folder, to be damaged by each test."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


# ---------------------------------------------------------------- the lock
def _hold_lock_in_child(folder: Path) -> subprocess.Popen:
    code = (f"import sys, time; from aelab.runs import RunLock\n"
            f"with RunLock({str(folder)!r}):\n    print('locked', flush=True); time.sleep(60)")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_writer_is_refused_with_the_holders_pid_and_a_kill_leaves_no_stale_lock(run, capsys):
    holder = _hold_lock_in_child(run)
    try:
        before = runs.read_bytes(run / "config.json", 1 << 20)
        code = main([*TRAIN, "--seed", "2", "--out", str(run), "--resume", "--epochs", "2"])
        err = one_line_exit_2(capsys, code, "in use by another aelab process")
        assert f"pid {holder.pid}" in err
        one_line_exit_2(capsys, main(["evaluate", str(run)]), f"pid {holder.pid}")
        assert runs.read_bytes(run / "config.json", 1 << 20) == before  # the second writer touched nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the OS releases the flock, no stale lock remains
        holder.wait()
    assert main([*TRAIN, "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert runs.read_history(run)[-1]["epoch"] == 2


def test_two_writers_started_together_never_mix(tmp_path):
    """Two trainings into one folder at once, different seeds: one wins, the other is refused, and the
    folder holds the winner's config and weights (the bug: config of seed 2 beside weights of seed 1)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "aelab", *TRAIN, "--epochs", "3", "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([*cmd, "--seed", str(s)], stderr=subprocess.PIPE, text=True, env=env) for s in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(c for c, _ in results) == [0, 2], results  # the loser: the lock, or "already holds a run"
    winner_seed = 1 + [c for c, _ in results].index(0)
    assert runs.read_config(out)["seed"] == winner_seed
    reference = tmp_path / "ref"
    assert main([*TRAIN, "--epochs", "3", "--seed", str(winner_seed), "--out", str(reference)]) == 0
    a, b = (
        runs.read_safetensors(out / "model.safetensors")[0],
        runs.read_safetensors(reference / "model.safetensors")[0],
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_start_up_cleanup_removes_only_dead_writers_temp_files(run):
    user_file = run / ".draft.tmp"
    user_file.write_text("mine")
    dead = run / ".model.json.tmp-999999999-abcd"  # no such pid
    dead.write_text("half")
    alive = run / f".model.json.tmp-{os.getppid()}-abcd"  # a live process's (e.g. a concurrent reader)
    alive.write_text("half")
    assert main([*TRAIN, "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert user_file.read_text() == "mine" and alive.exists() and not dead.exists()


# ---------------------------------------------------------------- hostile run folders
def _write(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    path.write_text(text)


def _set_json(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    _write(path, json.dumps(obj))


def _checkpoint_without(run: Path, key: str) -> None:
    state, meta = runs.load_state(run / "checkpoint.safetensors")
    meta.pop(key)
    runs.save_state(run / "checkpoint.safetensors", state, meta)


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(data))


def _retype_weights(run: Path, dtype) -> None:
    """Weights of another dtype with valid checksums (as an editor that recomputes them writes): the dtype
    check must refuse them. (Without checksums they are refused earlier: test_run_integrity.)"""
    state = runs.read_safetensors(run / "model.safetensors")[0]
    data = runs._safetensors_bytes({k: v.to(dtype) for k, v in state.items()}, {"format_version": "2"})
    runs.atomic_write_bytes(run / "model.safetensors", data)


def _checkpoint_meta(run: Path, **changes) -> None:
    state, meta = runs.load_state(run / "checkpoint.safetensors")
    meta.update(changes)
    runs.save_state(run / "checkpoint.safetensors", state, meta)  # with fresh checksums, as an editor would


def _checkpoint_epoch(run: Path, epoch: int) -> None:
    _checkpoint_meta(run, epoch=epoch)


def _huge_npy(folder: Path) -> str:
    """A 100-byte .npy whose header claims 10^12 float32 values."""
    import numpy as np

    path = folder / "huge.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
        f.write(b"\0" * 16)
    return str(path)


HOSTILE = {
    "model.json is a list": (lambda r: _write(r / "model.json", "[]"), ["evaluate"], "model name"),
    "format_version is text": (lambda r: _set_json(r / "model.json", format_version="abc"), ["evaluate"], "integer"),
    "JSON nested 5000 deep": (lambda r: _write(r / "model.json", "[" * 5000 + "]" * 5000), ["evaluate"], "nested"),
    "config nested deep": (
        lambda r: _write(r / "config.json", '{"a":' * 100 + "1" + "}" * 100),
        ["evaluate"],
        "nested",
    ),
    "config names other data": (lambda r: _set_json(r / "config.json", dataset="mnist5k"), ["evaluate"], "differ"),
    "old config names other data": (
        lambda r: _set_json(r / "config.json", dataset="mnist5k", data_info={}),
        ["evaluate"],
        "shape",
    ),
    "config data_dir elsewhere": (
        lambda r: _set_json(r / "config.json", dataset="mnist", data_dir=str(r.parent / "elsewhere")),
        ["evaluate"],
        "is missing",
    ),
    "config with a string seed": (lambda r: _set_json(r / "config.json", seed="1"), ["evaluate"], "wrong type"),
    "corrupt metrics line": (lambda r: _write(r / "metrics.jsonl", '{"epoch": 1}\n{oops\n'), ["evaluate"], "JSON"),
    "checkpoint without epoch": (lambda r: _checkpoint_without(r, "epoch"), ["resume"], "epoch"),
    "bit flip in the checkpoint": (lambda r: _flip_a_bit(r / "checkpoint.safetensors"), ["resume"], "checksum"),
    "bit flip in the weights": (lambda r: _flip_a_bit(r / "model.safetensors"), ["evaluate"], "checksum"),
    "float64 weights": (lambda r: _retype_weights(r, torch.float64), ["evaluate"], "do not match"),
    "model.safetensors -> /dev/zero": (
        lambda r: ((r / "model.safetensors").unlink(), (r / "model.safetensors").symlink_to("/dev/zero")),
        ["evaluate"],
        "not a regular file",
    ),
    "model.json is a folder": (
        lambda r: ((r / "model.json").unlink(), (r / "model.json").mkdir()),
        ["evaluate"],
        "not a regular file",
    ),
    "huge sizes in model.json": (
        lambda r: _set_json(r / "model.json", options={"input_shape": [1, 8, 8], "hidden": [10**6, 10**6]}),
        ["evaluate"],
        "GiB",
    ),
    "sizes of the wrong type": (
        lambda r: _set_json(r / "model.json", options={"input_shape": [1, 8, 8], "latent": []}),
        ["evaluate"],
        "cannot build the model",
    ),
    "unknown model name": (lambda r: _set_json(r / "model.json", name="resnet"), ["evaluate"], "unknown model"),
    "figures is a symlink out": (
        lambda r: (r / "figures").symlink_to(r.parent / "outside", target_is_directory=True),
        ["evaluate"],
        "symlink",
    ),
    # issue 24, round two
    "a 5000-digit integer in config.json": (
        lambda r: _write(
            r / "config.json", (r / "config.json").read_text().replace('"seed": 0', '"seed": ' + "9" * 5000)
        ),
        ["evaluate"],
        "not valid JSON",
    ),
    "a 5000-digit integer in model.json": (
        lambda r: _write(
            r / "model.json", (r / "model.json").read_text().replace('"latent": 2', '"latent": ' + "9" * 5000)
        ),
        ["evaluate"],
        "not valid JSON",
    ),
    "a 5000-digit epoch in metrics.jsonl": (
        lambda r: _write(r / "metrics.jsonl", '{"epoch": ' + "1" * 5000 + "}\n"),
        ["evaluate"],
        "not valid JSON",
    ),
    "an epoch of 1e400 in metrics.jsonl": (
        lambda r: _write(r / "metrics.jsonl", '{"epoch": 1e400}\n'),
        ["evaluate"],
        "integer 'epoch'",
    ),
    "a loss that is text in metrics.jsonl": (
        lambda r: _write(r / "metrics.jsonl", '{"epoch": 1, "train_loss": "abc"}\n'),
        ["evaluate"],
        "not a number",
    ),
    "epochs going backwards in metrics.jsonl": (
        lambda r: _write(r / "metrics.jsonl", '{"epoch": 2}\n{"epoch": 1}\n'),
        ["evaluate"],
        "must increase",
    ),
    "200,000 hidden layers in model.json": (
        lambda r: _set_json(r / "model.json", options={"input_shape": [1, 8, 8], "hidden": [1] * 200000}),
        ["evaluate"],
        "at most 100",
    ),
    "a checkpoint at epoch 0 holding epoch 1": (lambda r: _checkpoint_epoch(r, 0), ["resume"], "its history ends"),
    "a checkpoint whose history is text": (lambda r: _checkpoint_meta(r, history="abc"), ["resume"], "history"),
    "a checkpoint past any --epochs": (lambda r: _checkpoint_meta(r, epoch=10**8), ["resume"], "no valid 'epoch'"),
    "the dataset is /dev/zero": (
        lambda r: _set_json(r / "config.json", dataset="/dev/zero"),
        ["evaluate"],
        "not a regular",
    ),
    "the dataset is a FIFO": (
        lambda r: (os.mkfifo(r.parent / "fifo.npy"), _set_json(r / "config.json", dataset=str(r.parent / "fifo.npy"))),
        ["evaluate"],
        "not a regular",
    ),
    "the dataset claims a huge array": (
        lambda r: _set_json(r / "config.json", dataset=_huge_npy(r.parent)),
        ["evaluate"],
        "are stored",
    ),
    "pickle as checkpoint": (
        lambda r: (r / "checkpoint.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 40),
        ["resume"],
        "torch.save",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_run_folder_gets_one_line_and_exit_2(run, capsys, case):
    damage, (command,), needle = HOSTILE[case]
    (run.parent / "outside").mkdir(exist_ok=True)
    damage(run)
    capsys.readouterr()
    if command == "evaluate":
        figures = [] if case in ("figures is a symlink out", "corrupt metrics line") else ["--no-figures"]
        code = main(["evaluate", str(run), "--tsne-points", "20", *figures])
    else:
        code = main([*TRAIN, "--epochs", "2", "--out", str(run), "--resume"])
    one_line_exit_2(capsys, code, needle)
    assert not list((run.parent / "outside").iterdir())  # nothing written outside the run
    assert not (run.parent / "elsewhere").exists()  # no folder created, no download attempted


def test_report_md_escapes_html_from_the_config(run, capsys):
    _set_json(run / "config.json", out="<script>alert(1)</script>")
    assert main(["evaluate", str(run), "--tsne-points", "20", "--no-figures"]) == 0
    assert "<script>" not in (run / "report.html").read_text()
    # report.md: escaped everywhere but in the configuration's code fence, which a viewer shows literally
    md = (run / "report.md").read_text()
    head, fence = md.split("## Configuration")
    assert "<script>" not in head and fence.lstrip().startswith("```json") and fence.rstrip().endswith("```")
    assert fence.count("```") == 2 and '"out": "<script>alert(1)</script>"' in fence  # shown as it is


def test_resume_with_fewer_epochs_than_done_is_refused(run, capsys):
    code = main([*TRAIN, "--epochs", "1", "--out", str(run), "--resume"])
    assert code == 0  # the same number is fine: nothing to do
    config = runs.read_bytes(run / "config.json", 1 << 20)
    assert main([*TRAIN, "--epochs", "2", "--out", str(run), "--resume"]) == 0
    code = main([*TRAIN, "--epochs", "1", "--out", str(run), "--resume"])
    one_line_exit_2(capsys, code, "fewer than the 2 epochs")
    assert runs.read_config(run)["epochs"] == 2 and config != runs.read_bytes(run / "config.json", 1 << 20)


@pytest.mark.parametrize("experiment, args", [
    ("demo", ["--epochs", "{n}", "--dataset", "digits"]),
    ("contractive", ["--epochs", "{n}", "--hidden", "8", "--train-limit", "100", "--quick"]),
    ("binary", ["--epochs", "{n}", "--bits", "8", "--dataset", "digits", "--train-limit", "100"]),
    ("hinton2006", ["--epochs", "{n}", "--pretrain-epochs", "1", "--dataset", "digits", "--layers", "64-8-2",
                    "--train-limit", "100"]),
    ("debias", ["--ae-epochs", "{n}", "--n-models", "1", "--gce-epochs", "1", "--train-limit", "300",
                "--tsne-points", "30", "--quick"]),
])  # fmt: skip
def test_every_experiment_refuses_to_resume_with_fewer_epochs(tmp_path, capsys, experiment, args, tiny_demo):
    out = str(tmp_path / "exp")
    if experiment == "demo":  # the demo trains on all of mnist5k: make it tiny
        tiny_demo()
    fill = lambda n: [a.format(n=n) for a in args]
    assert main(["experiment", experiment, *fill(2), "--no-progress", "--out", out]) == 0
    capsys.readouterr()
    # experiments run per seed (OUT/seed-<s>/) keep each seed's settings and refuse any other
    needle = "fewer than" if experiment == "contractive" else "was run with other settings"
    one_line_exit_2(
        capsys, main(["experiment", experiment, *fill(1), "--no-progress", "--out", out, "--resume"]), needle
    )


# ---------------------------------------------------------------- hostile downloads
def _tiny_set(root: Path, n_train: int = 12, n_test: int = 5) -> IdxDataset:
    import numpy as np

    rng = np.random.default_rng(0)
    files = {}
    for split, n in [("train", n_train), ("test", n_test)]:
        for kind, arr in [("images", rng.integers(0, 256, (n, 28, 28))), ("labels", rng.integers(0, 10, n))]:
            raw = bytes([0, 0, 8, arr.ndim]) + b"".join(s.to_bytes(4, "big") for s in arr.shape) + arr.astype(
                np.uint8).tobytes()  # fmt: skip
            blob = gzip.compress(raw)
            (root / f"{split}-{kind}.gz").write_bytes(blob)
            files[f"{split}_{kind}"] = IdxFile(f"{split}-{kind}.gz", hashlib.md5(blob).hexdigest())
    return IdxDataset("tiny", ("http://127.0.0.1:9/",), files, n_train, n_test)


class _Server:
    """A local HTTP server whose handler the test chooses (slow drip, redirect loop, plain files)."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        # a client that gives up mid-response (a redirect loop, a deadline) makes the handler's write fail with
        # BrokenPipeError; socketserver would print that traceback into the stderr the test is checking
        self.httpd.handle_error = lambda request, client_address: None
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_wrong_file_already_in_the_data_folder_is_reported_and_replaced_only_with_force(
    tmp_path, monkeypatch, capsys
):
    www = tmp_path / "www"
    www.mkdir()
    ds = _tiny_set(www)
    monkeypatch.setitem(datasets.IDX_DATASETS, "tiny", ds)
    monkeypatch.setattr(datasets, "_VERIFIED", {})
    folder = tmp_path / "cache" / "tiny"
    folder.mkdir(parents=True)
    (folder / "train-images.gz").write_bytes(gzip.compress(bytes(16 + 12 * 784)))  # an all-zero fake
    with pytest.raises(DataError, match="train-images.gz: checksum mismatch.*--force"):
        datasets.fetch("tiny", tmp_path / "cache", mirrors=[www.as_uri()])
    datasets.fetch("tiny", tmp_path / "cache", mirrors=[www.as_uri()], force=True)
    assert (folder / "train-images.gz").read_bytes() == (www / "train-images.gz").read_bytes()


def test_a_gzip_bomb_is_stopped_at_the_known_size(tmp_path, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    ds = _tiny_set(www)
    bomb = gzip.compress(bytes(50 << 20))  # 50 MB of zeros in ~50 KB, far above 16 + 12 * 784 bytes
    (www / "train-images.gz").write_bytes(bomb)
    monkeypatch.setitem(datasets.IDX_DATASETS, "tiny", ds)
    with pytest.raises(DataError, match="decompresses to more than the 9424 bytes"):
        datasets.fetch("tiny", tmp_path / "cache", mirrors=[www.as_uri()])
    assert not [p for p in (tmp_path / "cache" / "tiny").iterdir() if p.name.endswith(".part")]


def test_a_dripping_server_hits_the_deadline_and_leaves_no_part_file(tmp_path, monkeypatch):
    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)

        def log_message(self, *a):
            pass

    server = _Server(Drip)
    www = tmp_path / "www"
    www.mkdir()
    monkeypatch.setitem(datasets.IDX_DATASETS, "tiny", _tiny_set(www))
    try:
        t0 = time.monotonic()
        with pytest.raises(DataError, match="longer than 1 s"):
            datasets.fetch("tiny", tmp_path / "cache", mirrors=[server.url], deadline_s=1.0, stall_s=5.0)
        assert time.monotonic() - t0 < 4
    finally:
        server.close()
    assert not list((tmp_path / "cache" / "tiny").glob("*.part")) and not list((tmp_path / "cache" / "tiny").glob(".*"))


def test_network_failures_are_one_line(tmp_path, capsys):
    class Loop(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = _Server(Loop)
    try:
        code = main(["data", "fetch", "kmnist", "--data-dir", str(tmp_path), "--mirror", server.url])
    finally:
        server.close()
    one_line_exit_2(capsys, code, "could not download kmnist")
    one_line_exit_2(capsys, main(["data", "fetch", "mnist", "--mirror", "notaurl", "--data-dir", str(tmp_path)]),
                    "not a download URL")  # fmt: skip


def test_idx_header_whose_dimensions_overflow_64_bits_is_refused():
    from aelab.data.idx import read_idx_bytes

    # 2^16 * 2^16 * 2^16 * 2^16 = 2^64: a 64-bit product wraps to 0 and would match an empty payload
    blob = bytes([0, 0, 8, 4]) + (1 << 16).to_bytes(4, "big") * 4
    with pytest.raises(DataError, match="needs"):
        read_idx_bytes(blob)


# ---------------------------------------------------------------- the CLI fuzz
BAD_NUMBERS = st.sampled_from(["0", "-1", "-5", "1e30", "nan", "inf", "-inf", "abc", "", "1.5", "100000000000000000000000",
                               "0x10", "--", "1,2", "[1]", "'", "\x00"])  # fmt: skip
BAD_SIZES = st.sampled_from(["-5", "-64-16", "0", "1000000000000", "abc", "", "64--16", "64,", ",64", "1e3", "64,-3"])
BAD_TEXT = st.sampled_from(["", "nope", "../../x", "x" * 300, "\x00", "cuda:abc"])
BAD_OPTION = st.sampled_from(["foo=[1]", "nokey", "=3", "hidden=-1", "latent=abc", "unknown=1", "lam=-1",
                              "k=0", "input_shape=[0]"])  # fmt: skip
BAD_DATASET_OPTION = st.sampled_from(["foo=[1]", "aligned_ratio=2", "seed=-1", "source=colored-mnist", "x=1"])

TRAIN_FLAGS = {
    "--epochs": BAD_NUMBERS, "--batch-size": BAD_NUMBERS, "--lr": BAD_NUMBERS, "--seed": BAD_NUMBERS,
    "--latent": BAD_NUMBERS, "--train-limit": BAD_NUMBERS, "--hidden": BAD_SIZES, "--model": BAD_TEXT,
    "--dataset": BAD_TEXT, "--device": BAD_TEXT, "--optimizer": BAD_TEXT, "--loss": BAD_TEXT,
    "--option": BAD_OPTION, "--dataset-option": BAD_DATASET_OPTION,
}  # fmt: skip
EXPERIMENT_FLAGS = {
    "demo": {"--epochs": BAD_NUMBERS, "--seed": BAD_NUMBERS, "--dataset": BAD_TEXT},
    "contractive": {"--epochs": BAD_NUMBERS, "--hidden": BAD_NUMBERS, "--lam": BAD_NUMBERS, "--seed": BAD_NUMBERS,
                    "--weight-decay": BAD_NUMBERS, "--noise-std": BAD_NUMBERS, "--mask-fraction": BAD_NUMBERS,
                    "--dataset": BAD_TEXT},
    "hinton2006": {"--epochs": BAD_NUMBERS, "--pretrain-epochs": BAD_NUMBERS, "--batch-size": BAD_NUMBERS,
                   "--layers": BAD_SIZES, "--optimizer": BAD_TEXT, "--seed": BAD_NUMBERS, "--dataset": BAD_TEXT},
    "debias": {"--aligned-ratio": BAD_NUMBERS, "--seed": BAD_NUMBERS, "--ae-epochs": BAD_NUMBERS,
               "--n-models": BAD_NUMBERS, "--gce-epochs": BAD_NUMBERS, "--k-grid": BAD_SIZES,
               "--tsne-points": BAD_NUMBERS, "--dataset": BAD_TEXT},
    "binary": {"--bits": BAD_NUMBERS, "--backward": BAD_TEXT, "--epochs": BAD_NUMBERS, "--seed": BAD_NUMBERS,
               "--dataset": BAD_TEXT},
}  # fmt: skip
EVALUATE_FLAGS = {"--iwae-k": BAD_NUMBERS, "--tsne-points": BAD_NUMBERS}
DATA_FLAGS = {"--mirror": st.sampled_from(["notaurl", "ftp://x/", "http://", "", "javascript:alert(1)"]),
              "--deadline": BAD_NUMBERS, "--stall-timeout": BAD_NUMBERS}  # fmt: skip

# flags whose values are any finite positive numbers: "1e30" or "1.5" is valid there, not bad input
FLOAT_FLAGS = {"--lr", "--weight-decay", "--noise-std", "--deadline", "--stall-timeout"}
FLOAT_LIST_FLAGS = {"--weight-decay", "--noise-std"}  # the contractive experiment's grids


def _valid_anyway(flag: str, value: str) -> bool:
    if flag == "--seed":
        return value.isdigit() and int(value) < 2**63  # "0" is a fine seed
    if flag == "--lam":  # comma-separated non-negative numbers
        value = value.split(",")[0] if value.count(",") == 1 and value[-1] != "," else value
        flag = "--lr" if value != "0" else flag
        if value == "0":
            return True
    if flag in FLOAT_LIST_FLAGS:  # comma-separated grids of positive numbers
        parts = [v for v in value.split(",") if v.strip()]
        try:
            return bool(parts) and all(0 < float(v) < float("inf") for v in parts)
        except ValueError:
            return False
    if flag in FLOAT_FLAGS:
        try:
            return 0 < float(value) < float("inf")
        except ValueError:
            return False
    return False


N_EXAMPLES = int(os.environ.get("AELAB_FUZZ_EXAMPLES", "40"))


def _snapshot(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _fuzz(tmp_path_factory, capsys, argv_base, flags, data):
    flag = data.draw(st.sampled_from(sorted(flags)))
    value = data.draw(flags[flag])
    if _valid_anyway(flag, value):
        return
    work = tmp_path_factory.mktemp("fuzz")
    (work / "keep.txt").write_text("x")
    before = _snapshot(work)
    out = work / "out"
    argv = [a.replace("{out}", str(out)) for a in argv_base] + [f"{flag}={value}"]
    cwd = os.getcwd()
    os.chdir(work)
    try:
        code = main(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    after = {k: v for k, v in _snapshot(work).items() if not k.startswith(str(out))}
    assert after == before, argv  # nothing changed outside --out


FUZZ = settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(data=st.data())
def test_fuzz_train_flags(tmp_path_factory, capsys, data):
    _fuzz(tmp_path_factory, capsys, [*TRAIN[:1], "--dataset", "digits", "--no-progress", "--out", "{out}"],
          TRAIN_FLAGS, data)  # fmt: skip


@pytest.mark.parametrize("experiment", sorted(EXPERIMENT_FLAGS))
@FUZZ
@given(data=st.data())
def test_fuzz_experiment_flags(tmp_path_factory, capsys, experiment, data):
    _fuzz(tmp_path_factory, capsys, ["experiment", experiment, "--no-progress", "--out", "{out}"],
          EXPERIMENT_FLAGS[experiment], data)  # fmt: skip


@FUZZ
@given(data=st.data())
def test_fuzz_evaluate_and_data_flags(tmp_path_factory, capsys, trained, data):
    if data.draw(st.booleans()):
        _fuzz(tmp_path_factory, capsys, ["evaluate", str(trained)], EVALUATE_FLAGS, data)
    else:
        _fuzz(tmp_path_factory, capsys, ["data", "fetch", "mnist", "--data-dir", "{out}"], DATA_FLAGS, data)


@pytest.mark.parametrize("make_out", [
    lambda t: (t / "file.txt").write_text("x") and t / "file.txt",  # --out names a file
    lambda t: (t / "file.txt").write_text("x") and t / "file.txt" / "run",  # a path under a file
    lambda t: t / ("x" * 300),  # a name longer than the filesystem allows
    lambda t: "",  # nothing
    lambda t: "   ",
])  # fmt: skip
def test_unusable_out_folders_are_one_line(tmp_path, capsys, make_out):
    out = make_out(tmp_path)
    one_line_exit_2(capsys, main([*TRAIN, "--out", str(out)]))
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["file.txt"])


# ---------------------------------------------------------------- found by review
def test_a_run_folder_of_the_previous_format_still_resumes(run, capsys):
    _set_json(run / "config.json", format_version=1)  # written by the aelab before tensor checksums
    assert main([*TRAIN, "--out", str(run), "--resume", "--epochs", "2"]) == 0


def test_the_next_mirror_is_tried_when_one_serves_a_wrong_file(tmp_path, monkeypatch):
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir(), good.mkdir()
    ds = _tiny_set(good)
    for f in ds.files.values():
        (bad / f.name).write_bytes(gzip.compress(b"junk"))
    monkeypatch.setitem(datasets.IDX_DATASETS, "tiny", ds)
    folder = datasets.fetch("tiny", tmp_path / "cache", mirrors=[bad.as_uri(), good.as_uri()])
    assert all((folder / f.name).read_bytes() == (good / f.name).read_bytes() for f in ds.files.values())


@pytest.mark.parametrize("argv_extra, needle", [
    (["--dataset-option", "split=x"], "no option 'split'"),
    (["--dataset-option", "download=true"], "no option 'download'"),
    (["--model", "cae", "--option", "lam=" + "9" * 400], "finite number"),
])  # fmt: skip
def test_options_that_collided_or_overflowed_are_bad_input(tmp_path, capsys, argv_extra, needle):
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--no-progress", *argv_extra, "--out", str(tmp_path / "r")]
    one_line_exit_2(capsys, main(argv), needle)


def test_dataset_options_in_a_hostile_config_are_bad_input(run, capsys):
    _set_json(run / "config.json", dataset_options={"download": True})
    one_line_exit_2(capsys, main(["evaluate", str(run), "--no-figures"]), "no option 'download'")
