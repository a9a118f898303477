"""The contractive experiment's protocol: settings chosen on validation only, seeds with intervals, results.json.

Tiny runs (sklearn digits, 300 train images, 12 code units, 1 epoch, the --quick grids)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aelab.experiments import contractive
from helpers import without_times

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]

TINY = dict(dataset="digits", hidden=12, epochs=1, train_limit=300, quick=True, no_progress=True)


def test_selection_never_looks_at_the_test_split(tmp_path, garbage_test_split):
    clean = contractive.select_settings(contractive.Settings(out=str(tmp_path / "clean"), **TINY))

    garbage_test_split()
    noisy = contractive.select_settings(contractive.Settings(out=str(tmp_path / "noisy"), **TINY))

    # the garbage did reach the runs: the test loss they log per epoch differs
    history = lambda root: json.loads((Path(root) / "metrics.jsonl").read_text().splitlines()[-1])
    assert history(clean["AE"]["runs"][0])["test_loss"] != history(noisy["AE"]["runs"][0])["test_loss"]
    for family in clean:
        assert noisy[family]["chosen"] == clean[family]["chosen"], family
        assert noisy[family]["val_probe_accuracy"] == clean[family]["val_probe_accuracy"], family
    assert [len(s["grid"]) for s in clean.values()] == [1, 1, 1, 1, 2, 1]


def test_results_json_chosen_settings_and_seed_intervals(tmp_path):
    from aelab.cli import main

    out = tmp_path / "exp"
    argv = ["experiment", "contractive", "--quick", "--dataset", "digits", "--hidden", "12", "--epochs", "1"]
    argv += ["--train-limit", "300", "--seeds", "2", "--seed", "3", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["selection_split"] == "validation"
    splits = results["splits"]
    assert (splits["n_train"], splits["n_val"], splits["n_test"]) == (270, 30, 360)
    assert splits["official_test"]["available"] is False
    assert results["grids"] == {
        "AE": [None],
        "AE+wd": [1e-3],
        "DAE-g": [0.3],
        "DAE-b": [0.25],
        "CAE": [0.3, 1.0],
        "RBM": [None],
    }
    assert results["seeds"] == [3, 4]
    for family, scores in results["validation_scores"].items():
        assert len(scores) == len(results["grids"][family]) and all(0 <= s <= 1 for s in scores)
        best = scores.index(max(scores))  # the first of equals
        assert results["chosen"][family] == results["grids"][family][best]

    eval_metrics = lambda run, name="eval.json": json.loads((Path(run) / name).read_text())["metrics"]
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["AE", "AE+wd", "DAE-g", "DAE-b", "CAE", "RBM"]
    for row in rows.values():  # every row's fine-tuned MLP: a test error per seed, its epoch chosen on validation
        tuned = row["metrics"]["finetune_error"]
        assert tuned["n_seeds"] == 2 and all(
            0 <= v <= 1 and round(v * 360) == pytest.approx(v * 360) for v in tuned["values"]
        )
    rbm = rows.pop("RBM")  # no eval.json: its probe and contraction are contractive_finetune's (tested there)
    assert [json.loads((Path(r) / "config.json").read_text())["model"] for r in rbm["runs"]] == ["rbm", "rbm"]
    assert 0 <= rbm["metrics"]["saturation"]["mean"] <= 1 and rbm["metrics"]["probe_accuracy"]["n_seeds"] == 2
    for family, row in rows.items():
        sweep = results["sweeps"][family]
        assert row["value"] == results["chosen"][family]
        assert row["runs"][0] == sweep["runs"][sweep["chosen_index"]]  # the first seed's run is reused
        assert row["runs"][1].endswith("seed-4") and row["official_test_metrics"] is None
        per_seed = [eval_metrics(run) for run in row["runs"]]
        assert [json.loads((Path(r) / "config.json").read_text())["seed"] for r in row["runs"]] == [3, 4]
        for key in ("probe_accuracy", "recon_sse", "jacobian_fro_mean", "saturation"):
            summary = row["metrics"][key]
            assert {"mean", "std", "ci95", "values", "n_seeds"} <= set(summary)
            assert summary["n_seeds"] == 2 and summary["values"] == [m[key] for m in per_seed]
            assert summary["mean"] == pytest.approx(sum(summary["values"]) / 2)
            assert summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]

    differences = {(d["a"], d["b"], d["metric"]): d for d in results["paired_differences"]}
    metrics = ("finetune_error", "probe_accuracy")
    assert set(differences) == {(a, b, m) for a, b in [("CAE", "DAE-g"), ("CAE", "AE")] for m in metrics}
    for (a, b, metric), d in differences.items():
        expected = [x - y for x, y in zip(rows[a]["metrics"][metric]["values"], rows[b]["metrics"][metric]["values"])]  # fmt: skip
        assert d["difference"]["values"] == pytest.approx(expected, abs=1e-12) and d["split"] == "test"
        lo, hi = d["difference"]["ci95"]
        assert d["excludes_zero"] == (lo > 0 or hi < 0)
        assert ("excludes 0" if d["excludes_zero"] else "includes 0") in d["verdict"]
    report = (out / "report.md").read_text()
    assert "validation_sweeps.png" in report and (out / "validation_sweeps.png").exists()
    assert "(n=2)" in report and "Official MNIST test set: not available" in report


def test_official_test_status(shared_idx, tmp_path):
    assert contractive.official_test_status(str(shared_idx), (1, 28, 28))[0] is True
    available, note = contractive.official_test_status(str(shared_idx), (1, 8, 8))
    assert not available and "not applicable" in note
    for folder in (None, str(tmp_path)):
        available, note = contractive.official_test_status(folder, (1, 28, 28))
        assert not available and "not available" in note


@pytest.mark.parametrize(
    "flag, value", [("--weight-decay", "0"), ("--noise-std", "1,-1"), ("--mask-fraction", "0.5,1.5"), ("--seeds", "0")]
)
def test_bad_grid_flags_are_refused(tmp_path, capsys, flag, value):
    from aelab.cli import main

    assert main(["experiment", "contractive", flag, value, "--out", str(tmp_path / "e")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


@pytest.mark.usefixtures("one_thread")
def test_contractive_killed_between_rows_resumes_to_the_same_results(tmp_path, capsys):
    """Issue 31: after the selection and every row, results.json holds what is finished, marked partial; a run
    killed after its second row continues with --resume to the results.json of an uninterrupted run."""
    import os
    import subprocess
    import sys

    from aelab.cli import main

    argv = ["experiment", "contractive", "--quick", "--dataset", "digits", "--hidden", "12", "--epochs", "1",
            "--train-limit", "200", "--seeds", "2"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*argv, "--out", str(whole), "--no-progress"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "AELAB_FAULT_KILL_AT_ROW": "2"}
    proc = subprocess.run([sys.executable, "-m", "aelab", *argv, "--out", str(killed)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert "selection: CAE" in proc.stderr and "AE none: probe acc" in proc.stderr  # progress lines
    partial = json.loads((killed / "results.json").read_text())
    assert partial["partial"] is True and partial["rows_done"] == ["AE", "AE+wd"]
    assert partial["rows_to_come"] == ["DAE-g", "DAE-b", "CAE", "RBM"]
    assert "PARTIAL" in (killed / "report.md").read_text()
    assert main([*argv, "--out", str(killed), "--no-progress"]) == 2  # continuing needs --resume
    assert main([*argv, "--out", str(killed), "--no-progress", "--resume"]) == 0
    resumed = json.loads((killed / "results.json").read_text().replace(str(killed), str(whole)))  # run paths
    reference = json.loads((whole / "results.json").read_text())
    assert without_times(resumed) == without_times(reference) != {}
    assert [r["model"] for r in resumed["rows"]] == ["AE", "AE+wd", "DAE-g", "DAE-b", "CAE", "RBM"]


@pytest.mark.usefixtures("one_thread")
def test_families_runs_only_the_rows_named_and_each_row_is_the_full_runs(tmp_path, capsys):
    """--families reruns one row of the paper table (the README's rerun of the AE row uses it): only the rows named
    are trained and reported, in the table's order whatever the flag's, and each has the numbers it has in the run
    of every row: a row does not depend on which others run."""
    from aelab.cli import main

    argv = ["experiment", "contractive", "--quick", "--dataset", "digits", "--hidden", "12", "--epochs", "1",
            "--train-limit", "200", "--no-progress"]  # fmt: skip
    whole, some = tmp_path / "whole", tmp_path / "some"
    assert main([*argv, "--out", str(whole)]) == 0
    assert main([*argv, "--out", str(some), "--families", "DAE-b,AE"]) == 0
    assert sorted(p.name for p in some.iterdir() if p.is_dir() and p.name != "figures") == ["AE", "DAE-b_level0.25"]
    partial = json.loads((some / "results.json").read_text().replace(str(some), str(whole)))
    reference = json.loads((whole / "results.json").read_text())
    assert [r["model"] for r in partial["rows"]] == ["AE", "DAE-b"]
    by_model = {r["model"]: r for r in without_times(reference)["rows"]}
    for row in without_times(partial)["rows"]:
        assert row == by_model[row["model"]], row["model"]
    assert partial["validation_scores"] == {k: reference["validation_scores"][k] for k in ("AE", "DAE-b")}
    assert partial["paired_differences"] == []  # CAE is not there to pair
    assert "the AE row was not run" not in (some / "report.md").read_text()
    # rows with no grid (nothing chosen, no sweep figure), the AE not among them (no contraction ratio)
    assert main([*argv, "--out", str(tmp_path / "rbm"), "--families", "RBM"]) == 0
    assert "the AE row was not run" in (tmp_path / "rbm" / "report.md").read_text()
    assert not (tmp_path / "rbm" / "validation_sweeps.png").exists()
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "bad"), "--families", "AE,VAE"]) == 2
    assert "--families" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("named", [["CAE"], ["AE+wd"], ["DAE-g", "DAE-b"], ["AE"], ["RBM", "AE"]])
def test_families_selects_rows_by_their_whole_name(named):
    """A row is run when its name is one of those given, not when it is part of one: "CAE" and "AE+wd" contain
    "AE", and asking for them must not run the AE row too. Rows keep the table's order."""
    from aelab.experiments.contractive_settings import FAMILY_NAMES, Settings, families

    got = [f.name for f in families(Settings(families=named))]
    assert got == [name for name in FAMILY_NAMES if name in named]
