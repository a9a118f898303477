"""Issue 24, round two: hostile files and flags end in one line and exit 2, within seconds, before anything
large is allocated, and leave nothing behind. (The run-folder corpus is in test_hardening.HOSTILE.)"""

import gzip
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from aelab.cli import main
from aelab.data import DataError, datasets
from helpers import one_line_exit_2

TRAIN = ["train", "--dataset", "digits", "--train-limit", "120", "--epochs", "1", "--batch-size", "40",
         "--hidden", "8", "--latent", "2", "--no-progress", "--no-tensorboard"]  # fmt: skip
AELAB = [sys.executable, "-m", "aelab"]


def _small_memory(monkeypatch, nbytes: int) -> None:
    import aelab.models.memory as memory

    monkeypatch.setattr(memory, "available_memory_bytes", lambda: nbytes)


# ---------------------------------------------------------------- data named by a flag or an untrusted file
def test_a_zip_bomb_npz_is_refused_from_its_headers_before_it_is_inflated(tmp_path, monkeypatch, capsys):
    """64 MB of float32 zeros deflate to 64 KB; the headers say how much they need: refused before inflating."""
    path = tmp_path / "bomb.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**24, 1)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w") as f:
        f.write(header.getvalue())
        f.write(bytes(2**26))
    assert path.stat().st_size < 2**20
    _small_memory(monkeypatch, 100 * 2**20)
    one_line_exit_2(capsys, main([*TRAIN, "--dataset", str(path), "--out", str(tmp_path / "r")]), "GiB")
    assert not (tmp_path / "r").exists()


def test_a_truncated_npz_and_a_lying_npy_header_are_one_line(tmp_path, capsys):
    x = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    good = tmp_path / "good.npz"
    np.savez(good, x=x, x_test=x[:10])
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-300])
    one_line_exit_2(capsys, main([*TRAIN, "--dataset", str(cut), "--out", str(tmp_path / "a")]), "cannot read")
    liar = tmp_path / "liar.npy"
    with open(liar, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 28, 28)})
        f.write(b"\0" * 64)
    one_line_exit_2(capsys, main([*TRAIN, "--dataset", str(liar), "--out", str(tmp_path / "b")]), "are stored")


def test_huge_images_are_refused_from_their_headers_and_the_decoded_size_before_decoding(tmp_path, monkeypatch, capsys):
    from PIL import Image

    big = tmp_path / "big" / "a"
    big.mkdir(parents=True)
    Image.new("L", (5000, 5000)).save(big / "x.png")  # 25 Mpixel: a few KB of PNG
    Image.new("L", (8, 8)).save(big / "y.png")
    code = main([*TRAIN, "--dataset", str(tmp_path / "big"), "--out", str(tmp_path / "r1")])
    one_line_exit_2(capsys, code, "pixels")
    small = tmp_path / "small" / "a"
    small.mkdir(parents=True)
    for i in range(20):
        Image.new("L", (8, 8), i).save(small / f"{i}.png")
    _small_memory(monkeypatch, 2**30)  # 20 images at 4096x4096 need about 1.9 GiB decoded
    code = main(
        [*TRAIN, "--dataset", str(tmp_path / "small"), "--image-size", "4096,4096", "--out", str(tmp_path / "r2")]
    )
    one_line_exit_2(capsys, code, "GiB")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def _fake_mnist(folder: Path, monkeypatch, images: bytes) -> None:
    """`folder` holds the official train-images name with `images` in it; the checksums accept its MD5 only
    if it is the real file (it is not), so the uncompressed check runs: the path a bomb or a device takes."""
    folder.mkdir(parents=True, exist_ok=True)
    official = datasets.IDX_DATASETS["mnist"]
    (folder / official.files["train_images"].name).write_bytes(images)


@pytest.mark.parametrize("kind", ["gzip bomb", "link to /dev/zero", "fifo"])
def test_an_official_file_name_holding_a_bomb_a_device_or_a_fifo_is_refused_quickly(tmp_path, kind, monkeypatch):
    from aelab.data import idx

    monkeypatch.setattr(idx, "MAX_RAW_BYTES", 2**26)  # the bound scaled down: 64 MB instead of 1 GiB
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    name = datasets.IDX_DATASETS["mnist"].files["train_images"].name
    path = folder / name
    if kind == "gzip bomb":  # 128 KB that inflate past the bound
        stream = gzip.compress(bytes(2**27), compresslevel=1)
        path.write_bytes(stream)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    else:
        os.mkfifo(path)
    t0 = time.monotonic()
    with pytest.raises(DataError, match="more than|not a regular file"):
        datasets.fetch("mnist", tmp_path / "data", download=False)
    assert time.monotonic() - t0 < 30


def test_a_server_sending_its_headers_a_byte_at_a_time_hits_the_deadline(tmp_path, monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.2)

    threading.Thread(target=trickle, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    try:
        t0 = time.monotonic()
        with pytest.raises(DataError, match="longer than 2 s"):
            datasets.fetch("mnist", tmp_path / "cache", mirrors=[url], deadline_s=2.0, stall_s=1.0)
        assert time.monotonic() - t0 < 8
    finally:
        stop.set()
        listener.close()
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


def test_leftovers_of_killed_downloads_and_cache_writers_are_removed_next_time(tmp_path):
    from aelab.data._files import remove_dead_writers_files

    folder = tmp_path / "f"
    folder.mkdir()
    dead = folder / ".train-images-idx3-ubyte.gz.999999999.part"
    alive = folder / f".train-images-idx3-ubyte.gz.{os.getppid()}.part"
    mine = folder / "notes.part"
    for p in (dead, alive, mine):
        p.write_text("x")
    remove_dead_writers_files(folder, ".part")
    assert not dead.exists() and alive.exists() and mine.exists()
    # a SIGTERM during a download unwinds: the .part file goes with it (main() turns SIGTERM into an exit)
    code = (
        "import os, signal, threading, sys\n"
        "from aelab.data import datasets\n"
        "from aelab import cli\n"
        "def slow(url, dest, spec, *args, **kw):\n"
        "    part = dest.parent / f'.{dest.name}.{os.getpid()}.part'\n"
        "    dest.parent.mkdir(parents=True, exist_ok=True)\n"
        "    try:\n"
        "        part.write_bytes(b'half'); print('writing', flush=True); threading.Event().wait(60)\n"
        "    finally:\n"
        "        part.unlink(missing_ok=True)\n"
        "datasets._download = slow\n"
        f"sys.exit(cli.main(['data', 'fetch', 'mnist', '--data-dir', {str(tmp_path / 'd')!r}, '--mirror', 'http://127.0.0.1:9/']))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    while (line := child.stdout.readline().strip()) != "writing":  # after fetch's own "downloading ..." line
        assert line, "the child ended before writing"
    child.terminate()
    assert child.wait(timeout=30) == 128 + 15
    assert not [p for p in (tmp_path / "d").rglob("*.part")]


# ---------------------------------------------------------------- flags and outputs
def test_a_number_is_not_an_mlflow_store_and_nothing_is_created(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_exit_2(capsys, main([*TRAIN, "--out", "r", "--mlflow", "5"]), "not a tracking URI")
    assert not (tmp_path / "5").exists() and not (tmp_path / "r").exists()


def test_empty_names_are_not_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_exit_2(capsys, main(["evaluate", ""]), "empty")
    one_line_exit_2(capsys, main(["compare", "", "--out", "c"]), "empty")
    one_line_exit_2(capsys, main(["experiment", "binary", "--dataset", "", "--quick", "--out", "b"]), "empty")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["experiment", "binary", "--bits", "10000000", "--quick"], "GiB"),
        (["experiment", "hinton2006", "--layers", "3000000", "--quick"], "sizes must be integers"),
        (["experiment", "binary", "--dataset", "no-such-data", "--quick"], "no dataset"),
    ],
)
def test_a_refused_experiment_leaves_no_folder_behind(tmp_path, capsys, argv, needle):
    out = tmp_path / "exp"
    one_line_exit_2(capsys, main([*argv, "--out", str(out)]), needle)
    assert not out.exists()


def test_a_refused_experiment_keeps_a_folder_that_was_there(tmp_path, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    one_line_exit_2(capsys, main(["experiment", "binary", "--bits", "10000000", "--quick", "--out", str(out)]), "GiB")
    assert (out / "mine.txt").read_text() == "keep"


def test_iwae_k_beyond_memory_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "vae"
    assert main([*TRAIN, "--model", "vae", "--out", str(out)]) == 0
    capsys.readouterr()
    _small_memory(monkeypatch, 2**30)  # 10^7 samples of a 64-pixel image need about 9.5 GiB
    t0 = time.monotonic()
    one_line_exit_2(
        capsys, main(["evaluate", str(out), "--iwae-k", "10000000", "--no-figures", "--no-progress"]), "--iwae-k"
    )
    assert time.monotonic() - t0 < 20 and not (out / "eval.json").exists()


def test_resume_never_follows_the_mlflow_uri_of_the_run_folders_config(tmp_path, capsys):
    out = tmp_path / "r"
    assert main([*TRAIN, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    config["mlflow"] = f"file://{tmp_path / 'planted-store'}"
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main([*TRAIN, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert "never followed to a store" in capsys.readouterr().err
    assert not (tmp_path / "planted-store").exists() and not (out / "tracking.json").exists()
    assert json.loads((out / "config.json").read_text())["mlflow"] is None


def test_a_closed_pipe_and_a_full_disk_are_one_line_and_exit_2():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    piped = subprocess.run(f"{' '.join(AELAB)} models | true", shell=True, capture_output=True, text=True, env=env)
    assert piped.returncode == 0  # the shell's status is `true`'s; aelab's own is checked below
    closed = subprocess.run(
        ["bash", "-c", f"{' '.join(AELAB)} models | true; exit ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert closed.returncode == 2 and len(closed.stderr.strip().splitlines()) == 1, closed.stderr
    full = subprocess.run(
        ["bash", "-c", f"{' '.join(AELAB)} models > /dev/full"], capture_output=True, text=True, env=env
    )
    assert full.returncode == 2 and "no space left" in full.stderr and len(full.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- under a memory limit
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ulimit -v and /proc are Linux")
def test_the_hostile_corpus_under_a_memory_limit(tmp_path):
    """Each case in a subprocess under `ulimit -v` 6 GiB (well below 16 GiB) and a wall-clock limit: one line
    and exit 2 (never 1, a signal or a hang); and evaluate of a valid run passes under the same limit."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "AELAB_DATA": str(tmp_path)}
    limit_kb = 6 * 2**20

    def run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
        command = f"ulimit -v {limit_kb}; exec {' '.join(AELAB)} " + " ".join(f"'{a}'" for a in args)
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=timeout)

    good = tmp_path / "good"
    done = run([*TRAIN, "--model", "vae", "--out", str(good)])
    assert done.returncode == 0, done.stderr
    assert run(["evaluate", str(good), "--tsne-points", "40", "--no-progress"]).returncode == 0
    liar = tmp_path / "liar.npy"
    with open(liar, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    for name in ("config.json", "model.json", "metrics.jsonl"):
        (sparse / name).write_bytes((good / name).read_bytes())
    with open(sparse / "model.safetensors", "wb") as f:  # 15 GiB, all holes
        f.truncate(15 * 2**30)
    cases = {
        "iwae-k": ["evaluate", str(good), "--iwae-k", "10000000", "--no-figures", "--no-progress"],
        "lying npy": [*TRAIN, "--dataset", str(liar), "--out", str(tmp_path / "a")],
        "sparse 15 GiB weights": ["evaluate", str(sparse), "--no-figures", "--no-progress"],
        "image size": [*TRAIN, "--dataset", str(tmp_path / "imgs"), "--image-size", "4096,4096", "--out", str(tmp_path / "b")],
    }  # fmt: skip
    from PIL import Image

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i in range(100):
        Image.new("L", (4, 4), i).save(tmp_path / "imgs" / "a" / f"{i}.png")
    for name, args in cases.items():
        t0 = time.monotonic()
        result = run(args, timeout=60)
        assert result.returncode == 2, (name, result.returncode, result.stderr[-500:])
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, (name, result.stderr)
        assert time.monotonic() - t0 < 60, name
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- a fuzz of the run folder's files
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HOSTILE_VALUES = [10**25, -1, 0, 1e308, float("nan"), "x" * 50, [1], [], {}, None, True, {"import": "os:system"}]


def _leaves(obj, path=()):
    """Every (path, value) of a JSON document, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))


def _replace(obj, path, value):
    if not path:
        return value
    obj[path[0]] = _replace(obj[path[0]], path[1:], value)
    return obj


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert main([*TRAIN, "--model", "vae", "--out", str(out)]) == 0
    return out


@settings(
    max_examples=int(os.environ.get("AELAB_FUZZ_EXAMPLES", 12)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzz_every_json_value_of_a_run_folder(fuzz_run, tmp_path_factory, capsys, data):
    """Any JSON value of config.json, model.json, metrics.jsonl or the checkpoint's metadata replaced by a huge
    int, NaN, a list, a string...: evaluate (or --resume, for the checkpoint) exits 0 or 2 with one line, never 1."""
    import shutil

    from aelab import runs

    run = tmp_path_factory.mktemp("case") / "run"
    shutil.copytree(fuzz_run, run)
    name = data.draw(st.sampled_from(["config.json", "model.json", "metrics.jsonl", "checkpoint"]))
    value = data.draw(st.sampled_from(HOSTILE_VALUES))
    if name == "checkpoint":
        state, meta = runs.load_state(run / "checkpoint.safetensors")
        path = data.draw(st.sampled_from([p for p, _ in _leaves(meta)]))
        meta = _replace(meta, path, value)
        runs.save_state(run / "checkpoint.safetensors", state, meta if isinstance(meta, dict) else {"x": meta})
        argv = [*TRAIN, "--model", "vae", "--epochs", "2", "--out", str(run), "--resume"]
    else:
        file = run / name
        lines = file.read_text().splitlines() if name.endswith(".jsonl") else [file.read_text()]
        i = data.draw(st.integers(0, len(lines) - 1))
        doc = json.loads(lines[i])
        path = data.draw(st.sampled_from([p for p, _ in _leaves(doc)]))
        lines[i] = json.dumps(_replace(doc, path, value))
        file.write_text("\n".join(lines) + "\n")
        argv = ["evaluate", str(run), "--no-figures", "--no-progress", "--iwae-k", "5"]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), (name, path, value, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, path, value, err)


@pytest.mark.parametrize("damage", ["every value NaN", "one value NaN", "one value -inf"])
def test_nan_weights_are_refused(fuzz_run, tmp_path, capsys, damage):
    """A tensor with any non-finite value is refused, not only one that is all NaN."""
    import shutil

    import torch

    from aelab import runs

    run = tmp_path / "run"
    shutil.copytree(fuzz_run, run)
    state = runs.read_safetensors(run / "model.safetensors")[0]
    first = sorted(state)[0]
    if damage == "every value NaN":
        state[first] = torch.full_like(state[first], float("nan"))
    else:
        state[first] = state[first].clone()
        state[first].view(-1)[1] = float("nan") if damage == "one value NaN" else float("-inf")
    runs.atomic_write_bytes(run / "model.safetensors", runs._safetensors_bytes(state, {"format_version": "2"}))
    one_line_exit_2(capsys, main(["evaluate", str(run), "--no-figures", "--no-progress"]), "NaN or inf")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--config", "a" * 300, "--out", "x"], "file name too long"),
        (["evaluate", "a" * 300], "file name too long"),
        (["train", "--dataset", "mnist", "--data-dir", "/tmp/" + "a" * 300, "--out", "x"], "file name too long"),
        (
            [
                "experiment",
                "hinton2006",
                "--dataset",
                "mnist",
                "--data-dir",
                "/tmp/" + "a" * 300,
                "--quick",
                "--out",
                "x",
            ],
            "file name too long",
        ),  # fmt: skip
        (["data", "fetch", "mnist", "--mirror", "http://[::1", "--data-dir", "d"], "not a download URL"),
        (["data", "fetch", "mnist", "--stall-timeout", "1e308", "--data-dir", "d"], "at most"),
    ],
)
def test_names_and_urls_no_system_accepts_are_one_line(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    one_line_exit_2(capsys, main(argv), needle)
    assert not (tmp_path / "x").exists()


def test_a_config_whose_data_info_is_a_list_is_one_line(fuzz_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fuzz_run, run)
    config = json.loads((run / "config.json").read_text())
    config["data_info"] = [1]
    (run / "config.json").write_text(json.dumps(config))
    one_line_exit_2(capsys, main(["evaluate", str(run), "--no-figures", "--no-progress"]), "data_info")


def test_resume_of_a_folder_killed_before_its_config_starts_from_scratch(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("")  # what a kill between the lock and config.json leaves
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0
    assert (out / "checkpoint.safetensors").is_file()


def test_a_second_resume_does_not_stack_stale_banners(tmp_path):
    """mark_evaluation_stale twice (two resumes): eval.json, report.md and report.html each say stale once."""
    import json

    from aelab.runs.folder import STALE_NOTE, mark_evaluation_stale

    (tmp_path / "eval.json").write_text(json.dumps({"metrics": {"recon_sse": 1.0}}))
    (tmp_path / "report.md").write_text("# report\n")
    (tmp_path / "report.html").write_text("<html><body><h1>report</h1></body></html>")
    for _ in range(2):
        mark_evaluation_stale(tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text())["stale"] == STALE_NOTE
    assert (tmp_path / "report.md").read_text() == f"> **{STALE_NOTE}**\n\n# report\n"
    assert (tmp_path / "report.html").read_text().count(STALE_NOTE) == 1


def test_a_symlink_to_a_regular_file_is_refused_as_not_a_regular_file(tmp_path):
    """runs.files.regular_file looks at the link itself (lstat), not at what it points to: a run-folder file that
    is a symlink to an ordinary file elsewhere is refused with the same one line as one to a device."""
    from aelab.errors import CheckpointError
    from aelab.runs.files import regular_file

    (tmp_path / "elsewhere.json").write_text("{}")
    (tmp_path / "eval.json").symlink_to(tmp_path / "elsewhere.json")
    assert regular_file(tmp_path / "elsewhere.json").st_size == 2
    with pytest.raises(CheckpointError, match="not a regular file"):
        regular_file(tmp_path / "eval.json")
