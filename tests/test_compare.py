"""aelab compare: one table, the curves and the reconstructions of several runs; refused across data."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from aelab.cli import main
from aelab.compare import _csv_cell, data_groups, same_data

TINY = ["--hidden", "32", "--latent", "4", "--epochs", "1", "--no-progress"]


def _train(out: Path, *args: str) -> Path:
    assert main(["train", *TINY, *args, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """ae (digits, 200 images, evaluated), vae (digits, 300 images, NOT evaluated), ae on mnist5k (evaluated)."""
    root = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AELAB_DATA", str(root / "data"))
        ae = _train(root / "ae", "--model", "ae", "--loss", "mse", "--dataset", "digits", "--train-limit", "200")
        vae = _train(root / "vae", "--model", "vae", "--dataset", "digits", "--train-limit", "300")
        m5k = _train(root / "m5k", "--model", "ae", "--dataset", "mnist5k", "--train-limit", "200")
        for run in (ae, m5k):
            assert main(["evaluate", str(run), "--tsne-points", "50", "--no-figures"]) == 0
    return {"root": root, "ae": ae, "vae": vae, "m5k": m5k}


def _one_error_line(capsys, needle: str) -> None:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, err


def _read_csv(out: Path) -> dict[str, dict]:
    with open(out / "comparison.csv", newline="") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.*")}


def test_compare_two_runs_writes_csv_md_html_and_evaluates_a_run_without_eval_json(tiny_runs, tmp_path, capsys):
    ae, vae = tiny_runs["ae"], tiny_runs["vae"]
    assert not (vae / "eval.json").exists()
    out = tmp_path / "cmp"
    assert main(["compare", str(ae), str(vae), "--out", str(out), "--iwae-k", "5"]) == 0
    said = capsys.readouterr()
    assert "evaluated now" in said.out
    # never silent while it evaluates: it says so first, then evaluate's own stage lines (issue 31)
    assert f"{vae}: no eval.json: evaluating it first" in said.err and ": evaluate: codes, PCA, probes" in said.err
    assert f"(the table: {out / 'comparison.md'}; " in said.out  # the notes' caption says where its table is
    assert (vae / "eval.json").exists()  # evaluated first, into its own run folder
    assert {p.name for p in out.iterdir()} >= {"comparison.csv", "comparison.md", "comparison.html"}

    rows = _read_csv(out)
    assert set(rows) == {str(ae), str(vae)}
    for run in (ae, vae):
        metrics = json.loads((run / "eval.json").read_text())["metrics"]
        assert float(rows[str(run)]["recon_sse"]) == metrics["recon_sse"]  # exact: the CSV round-trips floats
        assert rows[str(run)]["dataset"] == "digits" and rows[str(run)]["n_test"] == "360"
    assert rows[str(ae)]["model"] == "ae" and rows[str(vae)]["model"] == "vae"
    assert (rows[str(ae)]["train_limit"], rows[str(vae)]["train_limit"]) == ("200", "300")  # shown, allowed
    assert rows[str(ae)]["opt.latent"] == "4" and rows[str(ae)]["opt.loss"] == "mse"
    assert rows[str(ae)]["nll_nats"] == "" and float(rows[str(vae)]["nll_nats"]) > 0  # blank where absent
    assert rows[str(vae)]["iwae_k"] == "5"

    html = (out / "comparison.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # test-loss curves + one reconstruction mosaic
    assert str(ae) in html and str(vae) in html and "train_limit differs" in html
    assert "figures/loss.png" in (out / "comparison.md").read_text()


def test_runs_on_different_data_are_refused_unless_allowed(tiny_runs, tmp_path, capsys):
    ae, m5k = str(tiny_runs["ae"]), str(tiny_runs["m5k"])
    out = tmp_path / "cmp"
    assert main(["compare", ae, m5k, "--out", str(out)]) == 2
    _one_error_line(capsys, "different data")
    assert not out.exists()
    out.mkdir()
    (out / "comparison.csv").write_text("an earlier comparison\n")
    assert main(["compare", ae, m5k, "--out", str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["comparison.csv"]
    assert (out / "comparison.csv").read_text() == "an earlier comparison\n"
    capsys.readouterr()

    assert main(["compare", ae, m5k, "--out", str(out), "--allow-different-data"]) == 0
    rows = _read_csv(out)
    assert rows[ae]["dataset"] == "digits" and rows[m5k]["dataset"] == "mnist5k"
    assert (out / "figures" / "reconstructions-1.png").exists() and (out / "figures" / "reconstructions-2.png").exists()
    assert "not comparable across data" in (out / "comparison.md").read_text()


def test_data_identity_is_the_content_hash_when_both_runs_have_one():
    def config(name, sha=None, **options):
        return {"dataset": name, "dataset_options": options, **({"data_info": {"sha256": sha}} if sha else {})}

    assert same_data(config("digits"), config("digits"))
    assert not same_data(config("digits"), config("mnist5k"))
    assert not same_data(config("colored-mnist", aligned_ratio=0.99), config("colored-mnist", aligned_ratio=0.95))
    assert same_data(config("my-folder", "ab12"), config("/elsewhere/my-folder", "ab12"))  # names may differ
    assert not same_data(config("digits", "ab12"), config("digits", "cd34"))  # the data behind a name changed
    assert same_data(config("digits", "ab12"), config("digits"))  # an old run folder: compared by name
    assert data_groups([config("a", "1"), config("a"), config("a", "2")]) == [[0, 1], [2]]


def test_runs_with_different_data_hashes_are_refused(tiny_runs, tmp_path, capsys):
    copies = []
    for sha in ("ab12", "cd34"):
        run = shutil.copytree(tiny_runs["ae"], tmp_path / sha)
        config = json.loads((run / "config.json").read_text())
        config["data_info"] = {"sha256": sha, "source": "digits", "n_train": 1437, "n_test": 360}
        (run / "config.json").write_text(json.dumps(config))
        copies.append(str(run))
    assert main(["compare", *copies, "--out", str(tmp_path / "cmp")]) == 2
    _one_error_line(capsys, "sha256 ab12")
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "does not exist"),
        ("not-a-run", "config.json: missing"),
        ("broken-config", "not valid JSON"),
        ("twice", "given twice"),
        ("out-is-a-run", "is one of the runs"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_runs, tmp_path, capsys, case, needle):
    ae = tiny_runs["ae"]
    out = tmp_path / "cmp"
    runs_given = {
        "missing": [str(ae), str(tmp_path / "nope")],
        "not-a-run": [str(ae), str(tmp_path)],
        "twice": [str(ae), str(ae / ".." / ae.name)],
        "out-is-a-run": [str(ae), str(tiny_runs["vae"])],
    }.get(case)
    if case == "broken-config":
        broken = shutil.copytree(ae, tmp_path / "broken")
        (broken / "config.json").write_text("{not json")
        runs_given = [str(ae), str(broken)]
    if case == "out-is-a-run":
        out = ae
    before = _digest(ae)
    assert main(["compare", *runs_given, "--out", str(out)]) == 2
    _one_error_line(capsys, needle)
    assert _digest(ae) == before
    assert case == "out-is-a-run" or not out.exists()


def test_a_run_whose_model_cannot_be_rebuilt_keeps_its_metrics_row(tiny_runs, tmp_path, capsys):
    custom = shutil.copytree(tiny_runs["ae"], tmp_path / "custom-encoder")
    (custom / "model.json").write_text(json.dumps({"name": "my-encoder", "options": {}}))
    out = tmp_path / "cmp"
    assert main(["compare", str(tiny_runs["ae"]), str(custom), "--out", str(out)]) == 0
    rows = _read_csv(out)
    assert rows[str(custom)]["recon_sse"] == rows[str(tiny_runs["ae"])]["recon_sse"] != ""
    assert f"{custom}: reconstructions not shown" in (out / "comparison.md").read_text()
    assert (out / "figures" / "reconstructions-1.png").exists()  # the other run's row is still drawn


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted():
    assert _csv_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)" and _csv_cell("@x") == "'@x"
    assert _csv_cell("-1.5") == "-1.5" and _csv_cell(-1.5) == "-1.5" and _csv_cell(None) == ""


def test_a_bernoulli_vae_leaves_the_gaussian_std_blank():
    from aelab.compare import run_columns

    config = {"model": "vae", "dataset": "digits", "dataset_options": {}, "train_limit": None, "epochs": 2,
              "model_options": {"likelihood": "bce", "obs_std": 0.1, "latent": 4}}  # fmt: skip
    row = run_columns("v", config, {}, None)
    assert "opt.obs_std" not in row and row["opt.latent"] == 4 and row["opt.likelihood"] == "bce"
    gaussian = {**config, "model_options": {**config["model_options"], "likelihood": "gaussian"}}
    assert run_columns("g", gaussian, {}, None)["opt.obs_std"] == 0.1
