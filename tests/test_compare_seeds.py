"""aelab compare with seed groups (`train --seeds` folders) beside single runs: means and intervals per metric,
paired differences when the seeds match, the chosen settings listed and never averaged; the table's layout."""

import csv
import json

import numpy as np
import pytest
import scipy.stats

from aelab.cli import main

TINY = ["--dataset", "digits", "--train-limit", "160", "--hidden", "12", "--latent", "3", "--batch-size", "40"]


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    """short (2 epochs) and long (4 epochs) with seeds 0, 1, 2; other (seeds 5, 6); one single run."""
    root = tmp_path_factory.mktemp("seedgroups")
    for name, args in {
        "short": ["--epochs", "2", "--seeds", "3"],
        "long": ["--epochs", "4", "--seeds", "3"],
        "other": ["--epochs", "2", "--seed", "5", "--seeds", "2"],
        "single": ["--epochs", "3", "--loss", "bce"],
        "vae": ["--epochs", "1", "--model", "vae"],
    }.items():
        assert main(["train", *TINY, *args, "--no-progress", "--out", str(root / name)]) == 0
    return root


def _eval_metric(folder, key):
    return json.loads((folder / "eval.json").read_text())["metrics"][key]


def test_compare_two_seed_groups_and_a_single_run(groups, tmp_path, capsys):
    short, long, single = groups / "short", groups / "long", groups / "single"
    out = tmp_path / "cmp"
    assert main(["compare", str(short), str(long), str(single), "--out", str(out)]) == 0
    assert "config.json: missing" not in capsys.readouterr().err

    # the CSV: one row per run folder, a group's seeds with their group and seed
    with open(out / "comparison.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {f"{short}/seed-{s}" for s in range(3)} | {f"{long}/seed-{s}" for s in range(3)} | {str(single)}
    assert rows[f"{long}/seed-2"]["group"] == str(long) and rows[f"{long}/seed-2"]["seed"] == "2"
    assert rows[str(single)]["group"] == ""
    assert len(rows[str(single)]["data_sha256"]) == 64  # whole in the CSV

    # each group's mean and Student-t interval, computed here independently of aelab.metrics.intervals
    result = json.loads((out / "comparison.json").read_text())
    sse = {g: np.array([_eval_metric(g / f"seed-{s}", "recon_sse") for s in range(3)]) for g in (short, long)}
    for g in (short, long):
        summary = result["groups"][str(g)]["metrics"]["recon_sse"]
        half = scipy.stats.t.ppf(0.975, 2) * sse[g].std(ddof=1) / np.sqrt(3)
        assert summary["mean"] == pytest.approx(sse[g].mean())
        assert summary["ci95"] == pytest.approx([sse[g].mean() - half, sse[g].mean() + half])

    # paired: long - short seed by seed, narrower than the unpaired view when the seeds share their variation
    (paired,) = result["paired"]
    assert (paired["a"], paired["b"], paired["seeds"]) == (str(short), str(long), [0, 1, 2])
    d = sse[long] - sse[short]
    half = scipy.stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert paired["metrics"]["recon_sse"]["mean"] == pytest.approx(d.mean())
    assert paired["metrics"]["recon_sse"]["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])

    # probe_C is a choice: listed per seed, never a mean, an interval or a paired difference
    chosen = [_eval_metric(short / f"seed-{s}", "probe_C") for s in range(3)]
    assert result["groups"][str(short)]["choices"]["probe_C"] == chosen
    assert "probe_C" not in result["groups"][str(short)]["metrics"] and "probe_C" not in paired["metrics"]

    md = (out / "comparison.md").read_text()
    assert f"| run | {short} | {long} | {single} |" in md  # one column per run or group
    assert "| seeds | 0, 1, 2 | 0, 1, 2 | — |" in md
    line = next(x for x in md.splitlines() if x.startswith("| probe_C"))
    assert "×" in line and "[" not in line.split("|")[2]  # counts, no interval
    sse_line = next(x for x in md.splitlines() if x.startswith("| recon_sse |"))
    summary = result["groups"][str(short)]["metrics"]["recon_sse"]
    assert f"{summary['mean']:.2f} [{summary['ci95'][0]:.2f}," in sse_line.replace("|", " ")
    assert f"## Paired differences over seeds 0, 1, 2: {long} − {short}" in md
    # layout: the hash cut to 12 characters, each loss named with its unit, no row blank for every run
    assert f"| data_sha256 | {rows[str(single)]['data_sha256'][:12]} |" in md
    assert "| test_loss [squared error per image] |" in md and "| test_loss [cross-entropy per image (nats)] |" in md
    table = md.split("## Runs and test metrics")[1].split("\n\n")[1]
    assert all(set(cells[1:]) != {"—"} for cells in (r.strip("|").split("|") for r in table.splitlines()[2:]))
    html = (out / "comparison.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # the curves (group means) and one mosaic


def test_groups_with_other_seeds_get_no_paired_differences(groups, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(groups / "short"), str(groups / "other"), "--out", str(out)]) == 0
    assert "different seeds" in capsys.readouterr().out
    result = json.loads((out / "comparison.json").read_text())
    assert result["paired"] == [] and result["groups"][str(groups / "other")]["seeds"] == [5, 6]
    assert "Paired differences" not in (out / "comparison.md").read_text()


def test_a_seed_of_a_group_trained_on_is_evaluated_again(groups, tmp_path, capsys):
    import shutil

    group = shutil.copytree(groups / "short", tmp_path / "short")
    before = _eval_metric(group / "seed-1", "recon_sse")
    args = [*TINY, "--epochs", "3", "--seed", "1", "--resume", "--no-progress"]
    assert main(["train", *args, "--out", str(group / "seed-1")]) == 0
    assert main(["compare", str(group), str(groups / "single"), "--out", str(tmp_path / "cmp")]) == 0
    assert f"{group}/seed-1: evaluated again" in capsys.readouterr().out
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert result["groups"][str(group)]["metrics"]["recon_sse"]["values"][1] == _eval_metric(
        group / "seed-1", "recon_sse"
    )
    assert _eval_metric(group / "seed-1", "recon_sse") != before


def test_a_folder_that_is_neither_a_run_nor_a_seed_group_is_one_line_exit_2(groups, tmp_path, capsys):
    (tmp_path / "seed-x").mkdir()  # not seed-<number>
    assert main(["compare", str(groups / "short"), str(tmp_path), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "neither a run folder nor a --seeds folder" in err
    assert not (tmp_path / "cmp").exists()


def _edit_metrics(folder, **values):
    path = folder / "eval.json"
    result = json.loads(path.read_text())
    result["metrics"].update(values)
    path.write_text(json.dumps(result))  # json writes NaN as NaN, which aelab's reader accepts as a number


@pytest.mark.parametrize(
    "case, needle",
    [
        ("nan metric", "NaN or infinite"),
        ("accuracy above 1", "outside the bounds"),
        ("seed-00 beside seed-0", "more than one folder for seed 0"),
        ("swapped seeds", "the folder says seed 0, its config.json seed 1"),
        ("finite but huge", "too large to average"),
    ],
)
def test_a_hostile_seed_group_is_one_line_exit_2(groups, tmp_path, capsys, case, needle):
    import shutil

    group = shutil.copytree(groups / "short", tmp_path / "short")
    if case == "nan metric":
        _edit_metrics(group / "seed-1", recon_sse=float("nan"))
    elif case == "accuracy above 1":
        _edit_metrics(group / "seed-1", probe_accuracy=1.5)
    elif case == "finite but huge":
        _edit_metrics(group / "seed-1", recon_sse=1.7e308)
        _edit_metrics(group / "seed-2", recon_sse=-1.7e308)
    elif case == "seed-00 beside seed-0":
        shutil.copytree(group / "seed-0", group / "seed-00")
    else:
        (group / "seed-0").rename(group / "tmp")
        (group / "seed-1").rename(group / "seed-0")
        (group / "tmp").rename(group / "seed-1")
    capsys.readouterr()
    assert main(["compare", str(group), str(groups / "long"), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "cmp").exists()


def test_odd_but_harmless_values_in_a_seed_group(groups, tmp_path, capsys):
    import shutil

    group = shutil.copytree(groups / "short", tmp_path / "short")
    _edit_metrics(group / "seed-0", probe_C=[1], model="vae")  # a list for a choice; a metric named like a column
    _edit_metrics(group / "seed-1", probe_C={"x": 1}, model="vae")
    _edit_metrics(group / "seed-2", model="vae")
    (group / "seed-²").mkdir()  # not an ASCII number: not a seed folder
    result = json.loads((group / "seed-2" / "eval.json").read_text())
    result["warnings"] = 5  # not a list: no warning shown, no failure
    (group / "seed-2" / "eval.json").write_text(json.dumps(result))
    assert main(["compare", str(group), str(groups / "long"), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| model | ae | ae |" in md and "| metric.model | vae |" in md  # the run's column is never overwritten
    line = next(x for x in md.splitlines() if x.startswith("| probe_C"))
    assert "[1] (×1)" in line and '{"x": 1} (×1)' in line
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["groups"][str(group)]["seeds"] == [0, 1, 2]


def test_metrics_named_like_run_columns_never_take_their_place(groups, tmp_path):
    import shutil

    group = shutil.copytree(groups / "short", tmp_path / "short")
    for s in range(3):  # the AE group's eval.json say opt.beta (a VAE's option column) and seed
        _edit_metrics(group / f"seed-{s}", **{"opt.beta": 42.0, "seed": 99})
    out = tmp_path / "cmp"
    assert main(["compare", str(group), str(groups / "vae"), "--out", str(out)]) == 0
    md = (out / "comparison.md").read_text()
    row = next(x for x in md.splitlines() if x.startswith("| opt.beta |"))
    assert "42" not in row  # the VAE's option; the AE group has none
    assert any(x.startswith("| metric.opt.beta | 42") for x in md.splitlines())
    with open(out / "comparison.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows[f"{group}/seed-2"]["seed"] == "2" and rows[f"{group}/seed-2"]["metric.seed"] == "99"
