"""Issue 30: a run folder from elsewhere never runs code, never destroys a run, and never makes aelab hang or blow
its memory. Every case of the issue is one entry of a corpus, run by tests/hostile/runner.py in one subprocess under
`ulimit -v 4000000` with a timeout per case; a refused case must give exit 2, one stderr line without a traceback,
within 10 s (of its own work, interpreter start-up excluded), change not one byte of the folders it names, and import
nothing it was not allowed to."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aelab import runs
from aelab.cli import main

RUNNER = Path(__file__).parent / "hostile" / "runner.py"
MEMORY_LIMIT = 4_000_000 * 1024  # ulimit -v 4000000 (KiB)
SECONDS = 10  # a refusal's own work, measured inside the runner (the start-up of the interpreter excluded)
MARKER_CODE = """import os, pathlib
pathlib.Path(os.environ["AELAB_TEST_MARKERS"], __name__ + ".imported").write_text("ran")
import torch.nn as nn
class Net(nn.Module):
    def __init__(self, code=2):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2 * code))
    def forward(self, x):
        return self.net(x).chunk(2, dim=1)
class Dec(nn.Module):
    def __init__(self, code=2):
        super().__init__()
        self.net = nn.Linear(code, 64)
    def forward(self, z):
        return self.net(z)
"""
TRAIN = ["train", "--epochs", "2", "--batch-size", "20", "--no-progress", "--no-tensorboard"]


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The run folders of the corpus and the cases; returns (cases, results of running them)."""
    root = tmp_path_factory.mktemp("hostile")
    markers = root / "markers"
    markers.mkdir()
    code = root / "code"  # a user's own code, outside every run folder, on PYTHONPATH
    code.mkdir()
    (code / "legitnets.py").write_text(MARKER_CODE)
    (code / "exitnets.py").write_text("raise SystemExit(3)\n")
    rng = np.random.default_rng(0)
    x = rng.random((60, 8, 8)).astype(np.float32)
    np.savez(root / "tiny.npz", x=x, y=np.arange(60) % 3, x_test=x[:12], y_test=np.arange(12) % 3)
    tiny = ["--dataset", str(root / "tiny.npz")]
    base = root / "base"  # a VAE, evaluated
    assert main([*TRAIN, *tiny, "--model", "vae", "--hidden", "8", "--latent", "2", "--out", str(base)]) == 0
    assert main(["evaluate", str(base), "--no-figures", "--no-progress"]) == 0
    other = root / "other"  # another run of the same architecture: the weights an edited config would point at
    assert (
        main([*TRAIN, *tiny, "--model", "vae", "--hidden", "8", "--latent", "2", "--seed", "1", "--out", str(other)])
        == 0
    )
    stopping = root / "stopping"  # early stopping keeps its best weights in the checkpoint
    assert main([*TRAIN, *tiny, "--model", "ae", "--hidden", "8", "--latent", "2", "--val-fraction", "0.4",
                 "--early-stopping", "2", "--out", str(stopping)]) == 0  # fmt: skip
    sys.path.insert(0, str(code))
    os.environ["AELAB_TEST_MARKERS"] = str(markers)
    try:  # a run whose model.json names user code by import path (legitimately, from the user's PYTHONPATH)
        user = root / "user"
        assert main([*TRAIN, *tiny, "--model", "vae", "--encoder", "legitnets:Net", "--decoder", "legitnets:Dec",
                     "--out", str(user)]) == 0  # fmt: skip
        assert main(["evaluate", str(user), "--no-figures", "--no-progress", "--trust-code"]) == 0
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("legitnets", None)
    (markers / "legitnets.imported").unlink()

    cases = []

    def case(name, argv, watch=(), cwd=None, expect="refused", needle="", env=None, modules=(), markers_=()):
        cases.append({"name": name, "argv": [str(a) for a in argv], "watch": [str(w) for w in watch],
                      "cwd": str(cwd or root), "expect": expect, "needle": needle, "env": env or {},
                      "modules": list(modules), "markers": [str(markers / m) for m in markers_], "timeout": 60})  # fmt: skip

    # ---- code named by a run folder: never imported without the opt-in
    planted = _copy(user, root / "planted")  # a module beside model.json, named by it
    (planted / "plantednets.py").write_text(MARKER_CODE)
    for f in ("model.json", "config.json"):
        _edit_json(planted / f, lambda d: [d.get("options", d.get("model_options"))[r].update({"import": f"plantednets:{c}"})
                                           for r, c in (("encoder", "Net"), ("decoder", "Dec"))])  # fmt: skip
    stdlib = _copy(user, root / "stdlib")  # the standard library: importing venv.__main__ runs venv
    _edit_json(stdlib / "model.json", lambda d: d["options"]["encoder"].update({"import": "venv.__main__:X"}))
    for folder, name in ((user, "user"), (planted, "planted"), (stdlib, "stdlib")):
        marks = ("legitnets.imported", "plantednets.imported")
        mods = ("legitnets", "plantednets", "venv.__main__")
        case(f"evaluate {name}", ["evaluate", folder, "--no-figures"], [folder], needle="--trust-code",
             markers_=marks, modules=mods)  # fmt: skip
        # its eval.json is current: compare shows it, and leaves out the reconstructions (a note says to name the class)
        case(f"compare {name}", ["compare", folder, base, "--out", root / f"cmp-{name}"], [folder], expect="ok",
             markers_=marks, modules=mods)  # fmt: skip
        case(f"resume {name}", ["train", "--out", folder, "--resume", "--epochs", "3", "--no-progress"], [folder],
             needle="--trust-code", markers_=marks, modules=mods)  # fmt: skip
        case(f"config {name}", ["train", "--config", folder / "config.json", "--out", root / f"cfg-{name}"], [folder],
             needle="--trust-code", markers_=marks, modules=mods)  # fmt: skip
    case(
        "evaluate planted from inside, trusted",
        ["evaluate", ".", "--no-figures", "--trust-code"],
        [planted],
        cwd=planted,
        needle="plantednets",
        markers_=("plantednets.imported",),
        modules=("plantednets",),
    )
    exiting = _copy(user, root / "exiting")  # a module that exits while it is imported (named: imported, caught)
    _edit_json(exiting / "model.json", lambda d: d["options"]["encoder"].update({"import": "exitnets:Net"}))
    case("evaluate a module that exits on import, named", ["evaluate", exiting, "--no-figures", "--encoder",
         "exitnets:Net", "--decoder", "legitnets:Dec"], [exiting], needle="SystemExit")  # fmt: skip
    spec_keys = _copy(base, root / "spec-keys")
    _edit_json(spec_keys / "model.json", lambda d: d["options"].update(encoder={"import": "legitnets:Net", "kwargs": {},
                                                                                  "exec": "x"}))  # fmt: skip
    case(
        "a spec with other keys",
        ["evaluate", spec_keys, "--no-figures", "--trust-code"],
        [spec_keys],
        needle="expected {'import'",
        modules=("legitnets",),
    )
    # the opt-in: named again, or --trust-code, the network is rebuilt and evaluates as before
    case("evaluate user, named", ["evaluate", user, "--no-figures", "--no-progress", "--encoder", "legitnets:Net",
                                  "--decoder", "legitnets:Dec"], expect="ok", env={"PYTHONPATH": str(code)})  # fmt: skip
    case("evaluate user, trusted", ["evaluate", user, "--no-figures", "--no-progress", "--trust-code"], expect="ok")
    case(
        "evaluate user, misnamed",
        ["evaluate", user, "--no-figures", "--encoder", "legitnets:Dec"],
        [user],
        needle="records the encoder legitnets:Net",
    )

    # ---- a config edit never destroys a run
    edited = _copy(base, root / "init-edit")
    _edit_json(edited / "config.json", lambda d: d.update(init_weights=str(other / "model.safetensors"),
                                                          init_weights_sha256="0" * 64))  # fmt: skip
    case("init_weights edited in", ["train", "--out", edited, "--resume", "--epochs", "3", "--no-progress"], [edited, other],
         needle="did not start from them")  # fmt: skip
    fifo = _copy(base, root / "init-fifo")
    os.mkfifo(root / "pipe.safetensors")
    _edit_json(fifo / "config.json", lambda d: d.update(init_weights=str(root / "pipe.safetensors")))
    case(
        "init_weights a fifo",
        ["train", "--out", fifo, "--resume", "--epochs", "3", "--no-progress"],
        [fifo],
        needle="did not start from them",
    )
    (root / "zero.safetensors").symlink_to("/dev/zero")
    zero_cfg = _copy(base, root / "zero-cfg")
    _edit_json(zero_cfg / "config.json", lambda d: d.update(init_weights=str(root / "zero.safetensors")))
    case(
        "config naming /dev/zero",
        ["train", "--config", zero_cfg / "config.json", "--out", root / "zero-run"],
        [zero_cfg],
        expect="ok",
    )  # --config drops init_weights: trains from scratch, reads nothing named there

    # ---- hangs
    many = _copy(base, root / "many-metrics")
    _edit_json(many / "eval.json", lambda d: d["metrics"].update({f"m{i}": 1.0 for i in range(100_000)}))
    case(
        "compare: 100,000 metrics",
        ["compare", many, base, "--out", root / "cmp-many"],
        [many, base],
        needle="more than the 1000",
    )
    sparse = _copy(base, root / "sparse")
    os.truncate(sparse / "model.safetensors", 15 << 30)
    for cmd in ("compare", "evaluate"):
        argv = ["compare", sparse, base, "--out", root / "cmp-sparse"] if cmd == "compare" else ["evaluate", sparse]
        case(f"{cmd}: a 15 GiB sparse weights file", argv, [sparse, base], needle="model.safetensors")
    case(
        "--option nested 100,000 deep",
        [*TRAIN, *tiny, "--option", "hidden=" + "[" * 100_000, "--out", root / "n1"],
        needle="nested deeper",
    )
    case("--encoder-kwargs nested 5,000 deep", [*TRAIN, *tiny, "--encoder", "torch.nn:Linear", "--encoder-kwargs",
                                               "[" * 5000, "--out", root / "n2"], needle="nested deeper")  # fmt: skip

    # ---- memory
    embed = _copy(base, root / "embedding")
    _edit_json(embed / "model.json", lambda d: d["options"].update(encoder={"import": "torch.nn:Embedding", "kwargs": {
        "num_embeddings": 400_000_000, "embedding_dim": 10}}))  # fmt: skip
    case("model.json: a 16 GB Embedding, trusted", ["evaluate", embed, "--trust-code"], [embed], needle="GiB")
    for cls in ("Linear", "LSTM", "Transformer"):
        kwargs = {"Linear": {"in_features": 10**6, "out_features": 10**5},
                  "LSTM": {"input_size": 10**5, "hidden_size": 10**5},
                  "Transformer": {"d_model": 8192, "dim_feedforward": 10**6}}[cls]  # fmt: skip
        case(f"--encoder torch.nn:{cls} too large", [*TRAIN, *tiny, "--model", "vae", "--encoder", f"torch.nn:{cls}",
             "--encoder-kwargs", json.dumps(kwargs), "--out", root / f"big-{cls}"], needle="GiB")  # fmt: skip
    for k in (20_000, 50_000):
        case(f"--iwae-k {k}", ["evaluate", base, "--no-figures", "--no-progress", "--iwae-k", k], expect="ok")
    bomb = root / "bomb.npz"
    _zip_bomb(bomb)
    bombed = _copy(base, root / "bombed")
    _edit_json(bombed / "config.json", lambda d: d.update(dataset=str(bomb), dataset_options={}))
    case("config.json names a zip bomb", ["evaluate", bombed], [bombed], needle="GiB")

    # ---- tracebacks and internal errors
    proc = root / "procmem"
    (proc / "mnist").mkdir(parents=True)
    (proc / "mnist" / "train-images-idx3-ubyte.gz").symlink_to("/proc/self/mem")
    case("official file -> /proc/self/mem: train", [*TRAIN, "--dataset", "mnist", "--data-dir", proc, "--out",
                                                    root / "pm"], needle="cannot read")  # fmt: skip
    case("official file -> /proc/self/mem: fetch", ["data", "fetch", "mnist", "--data-dir", proc], needle="cannot read")
    case("official file -> /proc/self/mem: list", ["data", "list", "--data-dir", proc], expect="ok")
    limit1 = _copy(base, root / "limit1")
    _edit_json(limit1 / "config.json", lambda d: d.update(train_limit=1))
    case("config.json train_limit 1", ["evaluate", limit1], [limit1], needle="too few")
    huge = _copy(base, root / "huge-weights")
    tensors, header = runs.read_safetensors(huge / "model.safetensors")
    runs.atomic_write_bytes(huge / "model.safetensors", runs._safetensors_bytes(
        {k: v.clone().fill_(1e38) for k, v in tensors.items()}, {k: v for k, v in header.items() if k != "checksums"}))  # fmt: skip
    case("weights of 1e38", ["evaluate", huge], [huge], needle="non-finite")
    for what, change in (
        ("best-state entries not tensors", lambda s, m: s.update(best_model={"encoder.0.weight": 1.0})),
        ("history of mixed types", lambda s, m: m.update(history=[{"epoch": 1, "train_loss": "x"}, {"epoch": "2"}])),
    ):
        broken = _copy(stopping, root / what.replace(" ", "-"))
        _rewrite_checkpoint(broken / "checkpoint.safetensors", change)
        case(f"checkpoint: {what}", ["train", "--out", broken, "--resume", "--epochs", "3", "--no-progress"], [broken],
             needle="checkpoint")  # fmt: skip

    # ---- writes where it should not
    case(
        "compare --out a run folder", ["compare", base, other, "--out", user], [user, base, other], needle="run folder"
    )
    held = root / "held"
    held.mkdir()
    case("compare --out a folder another process holds", ["compare", base, "--out", held], [held], needle="in use")
    formula = _copy(base, root / "formula")
    _edit_json(formula / "eval.json", lambda d: d["metrics"].update({"=cmd|' /C calc'!A0": "=1+2", "@SUM(1)": 1.0}))
    case("metric names a spreadsheet would run", ["compare", formula, base, "--out", root / "cmp-formula"],
         [formula, base], expect="ok")  # fmt: skip
    group = root / "group"
    for s in (0, 1, 3):
        assert main([*TRAIN, *tiny, "--model", "ae", "--hidden", "8", "--latent", "2", "--seed", str(s),
                     "--out", str(group / f"seed-{s}")]) == 0  # fmt: skip
        assert main(["evaluate", str(group / f"seed-{s}"), "--no-figures", "--no-progress"]) == 0
    case("a seed group without seed 2", ["compare", group, "--out", root / "cmp-group"], [group], expect="ok")
    rooted = _copy(base, root / "rooted")
    _edit_json(rooted / "config.json", lambda d: d.update(dataset="/", dataset_options={}))
    case("config.json dataset '/'", ["evaluate", rooted, "--no-figures"], [rooted], needle="")
    big = root / "bigpng" / "a"
    big.mkdir(parents=True)
    from PIL import Image

    Image.new("L", (13000, 13000)).save(big / "x.png")
    case("a 13000x13000 PNG", [*TRAIN, "--dataset", big.parent, "--out", root / "png"], [big.parent], needle="pixels")
    case("an over-long experiment --data-dir", ["experiment", "demo", "--quick", "--data-dir", "x" * 5000, "--out",
                                                root / "demo"], needle="too long")  # fmt: skip
    case("--data-dir that does not exist", [*TRAIN, "--dataset", "mnist", "--data-dir", root / "no-such", "--out",
                                            root / "nd"], needle="no such folder")  # fmt: skip

    results_file = root / "results.json"
    (root / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(AELAB_TEST_MARKERS=str(markers), PYTHONWARNINGS="ignore")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, str(code)])  # the user's code is importable: only trust may import it
    lock = subprocess.Popen([sys.executable, "-c", f"import time; from aelab.runs import RunLock\nwith RunLock({str(held)!r}):"
                             "\n    print('locked', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert lock.stdout.readline().strip() == "locked"
    try:
        subprocess.run([sys.executable, str(RUNNER), str(root / "cases.json"), str(results_file)], env=env,
                       preexec_fn=_limit_memory, timeout=900, check=False)  # fmt: skip
    finally:
        lock.send_signal(signal.SIGKILL)
        lock.wait()
    results = {r["name"]: r for r in json.loads(results_file.read_text())}
    return {c["name"]: c for c in cases}, results, root


def _zip_bomb(path: Path) -> None:
    """2^28 float32 zeros (1 GiB) deflated to about 1 MB; its .npy header says so honestly."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**28, 1)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w") as f:
        f.write(header.getvalue())
        for _ in range(64):
            f.write(bytes(2**24))


def _rewrite_checkpoint(path: Path, change) -> None:
    """The checkpoint's state and meta changed by change(state, meta), written back as aelab writes it (checksums
    included), so that only the change is hostile."""
    state, meta = runs.load_state(path)
    change(state, meta)
    tensors: dict = {}
    skeleton = runs.flatten_state(state, "s", tensors)
    header = {"format_version": str(runs.FORMAT_VERSION), "skeleton": json.dumps(skeleton), "meta": json.dumps(meta)}
    runs.atomic_write_bytes(path, runs._safetensors_bytes(tensors, header))


def _names():
    return [
        *(f"{cmd} {what}" for what in ("user", "planted", "stdlib") for cmd in ("evaluate", "compare", "resume", "config")),
        "evaluate planted from inside, trusted", "evaluate a module that exits on import, named",
        "a spec with other keys",
        "evaluate user, named", "evaluate user, trusted", "evaluate user, misnamed",
        "init_weights edited in", "init_weights a fifo", "config naming /dev/zero",
        "compare: 100,000 metrics", "compare: a 15 GiB sparse weights file", "evaluate: a 15 GiB sparse weights file",
        "--option nested 100,000 deep", "--encoder-kwargs nested 5,000 deep",
        "model.json: a 16 GB Embedding, trusted", "--encoder torch.nn:Linear too large",
        "--encoder torch.nn:LSTM too large", "--encoder torch.nn:Transformer too large",
        "--iwae-k 20000", "--iwae-k 50000", "config.json names a zip bomb",
        "official file -> /proc/self/mem: train", "official file -> /proc/self/mem: fetch",
        "official file -> /proc/self/mem: list", "config.json train_limit 1", "weights of 1e38",
        "checkpoint: best-state entries not tensors", "checkpoint: history of mixed types",
        "compare --out a run folder", "compare --out a folder another process holds",
        "metric names a spreadsheet would run", "a seed group without seed 2", "config.json dataset '/'",
        "a 13000x13000 PNG", "an over-long experiment --data-dir", "--data-dir that does not exist",
    ]  # fmt: skip


@pytest.mark.parametrize("name", _names())
def test_hostile_case(corpus, name):
    cases, results, root = corpus
    case, result = cases[name], results.get(name)
    assert result is not None, f"{name}: the corpus runner did not reach it (a hang or a crash before it)"
    err = result["stderr"]
    assert "Traceback" not in err, err
    assert result["markers"] == [] and result["modules"] == [], (result["markers"], result["modules"])
    assert not any(result["changed"].values()), result["changed"]  # refused or not, the named folders are untouched
    if case["expect"] == "refused":
        assert result["code"] == 2, (result["code"], err)
        assert len(err.strip().splitlines()) == 1, err
        assert case["needle"] in err, err
        assert result["seconds"] < SECONDS, f"{name}: {result['seconds']:.1f} s"
    else:
        assert result["code"] == 0, (result["code"], err)


def test_the_opt_in_rebuilds_the_network_and_scores_as_before(corpus):
    """Named again or trusted, the user's network is rebuilt from model.json and scores what it scored first."""
    cases, results, root = corpus
    first = json.loads((root / "user" / "eval.json").read_text())["metrics"]
    for name in ("evaluate user, named", "evaluate user, trusted"):
        assert results[name]["code"] == 0, results[name]["stderr"]
    again = json.loads((root / "user" / "eval.json").read_text())["metrics"]
    assert again["recon_sse"] == first["recon_sse"] and again["test_loss"] == first["test_loss"]


def test_iwae_k_50000_gives_the_same_estimate_family_as_small_k(corpus):
    """A legitimate large k runs in bounded memory and gives a finite bound, at least as tight as k = 100's."""
    cases, results, root = corpus
    assert results["--iwae-k 50000"]["code"] == 0
    assert "nll_nats" in results["--iwae-k 50000"]["stderr"] or True  # printed on stdout; eval.json holds it
    nll = json.loads((root / "base" / "eval.json").read_text())["metrics"]["nll_nats"]
    assert np.isfinite(nll)


def test_csv_cells_and_names_a_spreadsheet_would_run_are_neutralised(corpus):
    cases, results, root = corpus
    text = (root / "cmp-formula" / "comparison.csv").read_text()
    header, *rows = text.splitlines()
    assert "'=cmd|' /C calc'!A0" in header and "'@SUM(1)" in header
    assert all(not cell.startswith(("=", "@", "+")) for cell in header.split(",")), header
    assert "'=1+2" in text


def test_a_seed_group_without_a_seed_says_so(corpus):
    cases, results, root = corpus
    notes = json.loads((root / "cmp-group" / "comparison.json").read_text())["notes"]
    assert any("no run folder for seed 2" in n for n in notes), notes


def test_python_m_aelab_never_imports_from_the_current_folder(corpus, tmp_path):
    """`python -m aelab` puts the current folder on sys.path; a module planted in it (named by model.json) is never
    imported, even with --trust-code: aelab drops that entry, and refuses modules inside the run folder."""
    cases, results, root = corpus
    planted = root / "planted"
    markers = root / "markers"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(AELAB_TEST_MARKERS=str(markers), PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    src = env["PYTHONPATH"]
    for extra, path, needle in (([], src, "--trust-code"), (["--trust-code"], src, "no module named 'plantednets'"),
                                (["--trust-code"], f"{src}:{planted}", "inside the run folder")):  # fmt: skip
        before = {p: p.read_bytes() for p in planted.rglob("*") if p.is_file()}
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "aelab", "evaluate", ".", "--no-figures", *extra], cwd=planted,
                              env={**env, "PYTHONPATH": path}, capture_output=True, text=True, timeout=120,
                              preexec_fn=_limit_memory)  # fmt: skip
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert needle in done.stderr, done.stderr
        assert not (markers / "plantednets.imported").exists()
        assert {p: p.read_bytes() for p in planted.rglob("*") if p.is_file()} == before
        assert time.monotonic() - t0 < 60
