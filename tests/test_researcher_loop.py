"""Issue 35, the researcher's loop, round three: each friction a researcher met on main, as they met it, and what
aelab does now. Tiny data throughout (digits, 120 train images, 8 hidden units, 2-D codes)."""

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aelab import report, runs
from aelab.cli import main
from helpers import one_line_exit_2

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--train-limit", "120", "--hidden", "8", "--latent", "2"]
MARKDOWN_TABLE_ROW = re.compile(r"^\| ([^|]+) \|")


@pytest.fixture(scope="module")
def two_groups(tmp_path_factory):
    """An AE group (squared error per image) and a VAE group (nats per image), seeds 0 and 1, one epoch each."""
    root = tmp_path_factory.mktemp("groups")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AELAB_DATA", str(root / "aelab-data"))
        for name, extra in {"ae": ["--loss", "mse"], "vae": ["--model", "vae"]}.items():
            args = ["train", *TINY, "--epochs", "1", "--seeds", "2", *extra, "--quiet", "--out", str(root / name)]
            assert main(args) == 0
    return root


def _capture_figures(monkeypatch) -> list:
    """Every figure aelab.report saves, still drawable after it was written."""
    figures, real = [], report.save_png
    monkeypatch.setattr(report, "save_png", lambda fig, path: figures.append(fig) or real(fig, path))
    return figures


def _lead(md: str) -> list[str]:
    """The paragraphs of a report.md between its title and its first section."""
    head = md.split("\n## ", 1)[0]
    return [p.strip() for p in head.split("\n\n")[1:] if p.strip()]


# ---------------------------------------------------------------- compare: a VAE group beside an AE group
def test_compare_pairs_only_like_with_like_and_shows_the_baselines_once(two_groups, tmp_path, monkeypatch, capsys):
    figures = _capture_figures(monkeypatch)
    ae, vae, out = two_groups / "ae", two_groups / "vae", tmp_path / "cmp"
    assert main(["compare", str(ae), str(vae), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "comparison.json").read_text())
    (paired,) = result["paired"]
    # the same unit and meaning in both: paired; a loss in squared error against one in nats, or a baseline: not
    assert {"recon_sse", "probe_accuracy"} <= set(paired["metrics"])
    assert not {"test_loss", "test_recon", "pca_sse", "raw_probe_accuracy", "raw_probe_C"} & set(paired["metrics"])
    assert "test_loss, test_recon (squared error per image against nats per image" in printed
    md = (out / "comparison.md").read_text()
    runs_table = md.split("## Runs and test metrics")[1].split("\n## ")[0]
    assert "pca_sse" not in runs_table and "raw_probe" not in runs_table
    baselines = md.split("## Baselines")[1].split("\n## ")[0]
    rows = [MARKDOWN_TABLE_ROW.match(line).group(1) for line in baselines.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["pca_sse (PCA-2)", "raw_probe_accuracy", "raw_probe_C (chosen on validation)"]  # once each
    assert "| every run |" in baselines
    pairs = [line for line in md.split("## Paired differences")[1].splitlines() if line.startswith("| ")]
    assert "| recon_sse |" in "\n".join(pairs) and not [x for x in pairs if "pca_sse" in x or "test_loss" in x]

    # the top of the report: its reading, from the numbers, then every warning
    lead = _lead(md)
    means = {g: result["groups"][str(g)]["metrics"] for g in (ae, vae)}
    assert lead[0].startswith(f"{ae} reconstructs ") and "than PCA-2" in lead[0]
    accuracy = {g: f"{means[g]['probe_accuracy']['mean']:.3f}" for g in (ae, vae)}
    raw = f"{json.loads((ae / 'seed-0' / 'eval.json').read_text())['metrics']['raw_probe_accuracy']:.3f}"
    assert f"raw pixels on the probe ({accuracy[ae]}, {accuracy[vae]} vs {raw})" in lead[0]
    warnings = [f"{g}/seed-{s}: warning: {w}" for g in (ae, vae) for s in (0, 1)
                for w in json.loads((g / f"seed-{s}" / "eval.json").read_text())["warnings"]]  # fmt: skip
    assert warnings and lead[1:] == warnings

    # the loss plot: one colour per group, one line style per split, a band over each group's seeds
    (fig,) = [f for f in figures if any(ax.get_title() == "loss per epoch" for ax in f.axes)]
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
        names = {label.rsplit(" ", 1)[0] for label in lines}
        colours = {n: {lines[f"{n} {k}"].get_color() for k in ("val_loss", "test_loss")} for n in names}
        assert all(len(c) == 1 for c in colours.values())  # a group's validation and test lines: one colour
        styles = {k: {lines[f"{n} {k}"].get_linestyle() for n in names} for k in ("val_loss", "test_loss")}
        assert styles == {"val_loss": {":"}, "test_loss": {"--"}}
        assert len(ax.collections) == 2 * len(names)  # the seeds' spread around each line
    colour_of: dict[str, set] = {}
    for line in (line for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")):
        colour_of.setdefault(line.get_label().rsplit(" ", 1)[0], set()).add(line.get_color())
    assert len(colour_of) == 2 and all(len(c) == 1 for c in colour_of.values())  # whichever panel each is in
    assert len(set.union(*colour_of.values())) == 2


NETS = """
import torch.nn as nn


class ConvEncoder(nn.Module):
    def __init__(self, code=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, code))

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    def __init__(self, code=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(code, 64), nn.Unflatten(1, (1, 8, 8)))

    def forward(self, z):
        return self.net(z)
"""


def test_options_that_did_not_shape_a_user_network_are_left_blank(two_groups, tmp_path, monkeypatch):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "aelab_test_loop_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    conv, out = tmp_path / "conv", tmp_path / "cmp"
    try:
        assert main(["train", *TINY, "--epochs", "1", "--quiet", "--encoder", "aelab_test_loop_nets:ConvEncoder",
                     "--decoder", "aelab_test_loop_nets:ConvDecoder", "--out", str(conv)]) == 0  # fmt: skip
        assert main(["compare", str(conv), str(two_groups / "ae"), "--out", str(out), "--trust-code"]) == 0
    finally:
        sys.modules.pop("aelab_test_loop_nets", None)
    with open(out / "comparison.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    shaped = rows[f"{two_groups / 'ae'}/seed-0"]
    assert (shaped["opt.hidden"], shaped["opt.latent"], shaped["opt.activation"]) == ("[8]", "2", "relu")
    assert (rows[str(conv)]["opt.hidden"], rows[str(conv)]["opt.latent"], rows[str(conv)]["opt.activation"]) == (
        "",
    ) * 3
    assert rows[str(conv)]["code_dim"] == "3" and rows[str(conv)]["opt.loss"] == "mse"  # what did shape it stays
    md = (out / "comparison.md").read_text()
    for option in ("opt.hidden", "opt.latent"):
        (line,) = [x for x in md.splitlines() if x.startswith(f"| {option} |")]
        assert line.split("|")[2].strip() == "—" and line.split("|")[3].strip() != "—"


# ---------------------------------------------------------------- SIGTERM and Ctrl-C during train
STOPPED = re.compile(
    r"aelab: stopped at epoch (\d+) of (\d+) \((SIGTERM|SIGINT)\)( in seed-\d+)?; checkpoint of epoch (\d+) kept in "
    r"(\S+); resume with: (.+)$"
)


def _aelab(args, env_extra=None, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AELAB_FAULT")}
    env.update(PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1", **(env_extra or {}))  # epoch lines as they come
    return subprocess.Popen([sys.executable, "-m", "aelab", *args], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)  # fmt: skip


def _signal_after(process, line: str, signum) -> tuple[str, str]:
    """Send `signum` once `line` is printed (an epoch line on stdout); (stdout, stderr) of the whole run."""
    seen, deadline = [], time.monotonic() + 120
    for text in process.stdout:
        seen.append(text)
        if line in text or time.monotonic() > deadline:
            break
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return "".join(seen) + out, err


def _checkpoint_epoch(run) -> int:
    return runs.load_state(run / "checkpoint.safetensors")[1]["epoch"]


def test_sigterm_says_where_it_stopped_and_the_command_that_continues_it(tmp_path):
    """--checkpoint-every 3600: after epoch 1 the finished epochs are only in memory; the SIGTERM writes the last
    one and says so, and the printed command, run as it is, finishes the run from there."""
    out = tmp_path / "run"
    args = ["train", *TINY, "--batch-size", "8", "--epochs", "10", "--no-progress", "--checkpoint-every", "3600"]
    process = _aelab([*args, "--out", str(out)], cwd=tmp_path)
    _, err = _signal_after(process, "epoch 2/10", signal.SIGTERM)
    assert process.returncode == 143, err
    (line,) = err.strip().splitlines()
    stopped = STOPPED.match(line)
    assert stopped, line
    epoch, kept = int(stopped.group(1)), int(stopped.group(5))
    assert (stopped.group(2), stopped.group(3), stopped.group(6)) == ("10", "SIGTERM", str(out))
    assert kept == epoch - 1 >= 2 and _checkpoint_epoch(out) == kept == len(runs.read_history(out))
    command = shlex.split(stopped.group(7))
    assert command == ["aelab", "train", "--out", str(out), "--resume", "--no-progress"]
    assert main(command[1:]) == 0  # the command as printed (in this process: no second start of torch)
    history = runs.read_history(out)
    assert [h["epoch"] for h in history] == list(range(1, 11))
    assert [h["resumes"] for h in history] == [0] * kept + [1] * (10 - kept)  # continued, not started again


def test_a_second_signal_while_the_checkpoint_is_written_neither_cuts_it_short_nor_the_line(tmp_path):
    """Ctrl-C on a --seeds run, and a SIGTERM while the stop is writing the last finished epoch (sent by the
    process itself at that point: AELAB_FAULT_KILL_AT_STOP): the checkpoint is that epoch's, whole, and the
    line names the seed group's resume command."""
    out = tmp_path / "group"
    args = ["train", *TINY, "--batch-size", "8", "--epochs", "10", "--seeds", "2", "--no-progress",
            "--checkpoint-every", "3600", "--out", str(out)]  # fmt: skip
    process = _aelab(args, env_extra={"AELAB_FAULT_KILL_AT_STOP": "1", "AELAB_FAULT_SIGNAL": "TERM"})
    _, err = _signal_after(process, "epoch 2/10", signal.SIGINT)
    assert process.returncode == 130, err
    assert "aelab: already stopping" in err  # the second signal was noted, and waited for the checkpoint
    stopped = STOPPED.match(err.strip().splitlines()[-1])
    assert stopped, err
    epoch, kept, run = int(stopped.group(1)), int(stopped.group(5)), Path(stopped.group(6))
    assert (stopped.group(3), stopped.group(4), run) == ("SIGINT", " in seed-0", out / "seed-0")
    assert kept == epoch - 1 >= 2 and _checkpoint_epoch(run) == kept == len(runs.read_history(run))
    runs.read_safetensors(run / "checkpoint.safetensors")  # every tensor against its checksum
    assert shlex.split(stopped.group(7)) == ["aelab", "train", "--out", str(out), "--seeds", "2", "--resume",
                                             "--no-progress"]  # fmt: skip


# ---------------------------------------------------------------- the reports open with their reading
def test_every_report_opens_with_its_reading_and_warnings(two_groups):
    """A run's report (written by evaluate) and a seed group's seeds.md; the demo's and compare's have tests of
    their own."""
    run = two_groups / "vae" / "seed-0"
    result = json.loads((run / "eval.json").read_text())
    m = result["metrics"]
    lead = _lead((run / "report.md").read_text())[: 1 + len(result["warnings"])]  # the notes follow
    change = 100 * (m["recon_sse"] / m["pca_sse"] - 1)
    size = f"{m['recon_sse'] / m['pca_sse']:.2g} times" if change >= 100 else f"{abs(change):.0f}%"
    assert lead[0].startswith(f"VAE reconstructs {size} {'worse' if change > 0 else 'better'} than PCA-2")
    beat = "beat" if m["probe_accuracy"] > m["raw_probe_accuracy"] else "do not beat"
    assert (
        f"VAE's codes {beat} raw pixels on the probe ({m['probe_accuracy']:.3f} vs {m['raw_probe_accuracy']:.3f})"
        in lead[0]
    )
    assert result["warnings"] and lead[1:] == [f"Warning: {w[0].upper()}{w[1:]}." for w in result["warnings"]]
    seeds = json.loads((two_groups / "vae" / "seeds.json").read_text())["metrics"]
    (line,) = _lead((two_groups / "vae" / "seeds.md").read_text())
    assert f"({seeds['probe_accuracy']['mean']:.3f} vs " in line and line.endswith("(Means over 2 seeds.)")


def test_the_demo_report_opens_with_its_reading_and_every_warning(tmp_path, tiny_demo):
    """The report `make demo` prints the path of (one seed: the summary over seeds writes it) and the seed's own."""
    from aelab.experiments import demo

    tiny_demo()
    out = tmp_path / "demo"
    path = demo.run(demo.Settings(out=str(out), dataset="digits", epochs=2, figures=False, no_progress=True))
    assert Path(path) == out / "report.html"
    results = json.loads((out / "seed-0" / "results.json").read_text())
    rows = {r["model"]: r for r in results["tables"]["test split"]}
    for report_md in (out / "report.md", out / "seed-0" / "report.md"):
        lead = _lead(report_md.read_text())[: len(results["lead"])]  # the notes follow
        assert lead == results["lead"]
    assert lead[0].startswith("AE reconstructs ") and "; VAE " in lead[0] and "PCA-2" in lead[0]
    raw = rows["ae"]["raw_probe_accuracy"]
    accuracies = f"{rows['ae']['probe_accuracy']:.3f}, {rows['vae']['probe_accuracy']:.3f} vs {raw:.3f}"
    assert f"raw pixels on the probe ({accuracies})" in lead[0]
    warnings = [f"{name.upper()}: warning: {w}" for name in ("ae", "vae")
                for w in json.loads((out / "seed-0" / name / "eval.json").read_text())["warnings"]]  # fmt: skip
    assert warnings and lead[1:] == warnings


def test_the_demo_over_seeds_reads_the_means():
    from aelab.experiments import demo

    def seed(ae_sse, vae_sse, ae_probe, warnings):
        read = [
            {
                "name": "AE",
                "metrics": {
                    "recon_sse": ae_sse,
                    "pca_sse": 20.0,
                    "code_dim": 20,
                    "sse_ratio_to_pca": 1,
                    "probe_accuracy": ae_probe,
                    "raw_probe_accuracy": 0.9,
                },
                "warnings": [],
            },
            {
                "name": "VAE",
                "metrics": {
                    "recon_sse": vae_sse,
                    "pca_sse": 20.0,
                    "code_dim": 20,
                    "sse_ratio_to_pca": 1,
                    "probe_accuracy": 0.86,
                    "raw_probe_accuracy": 0.9,
                },
                "warnings": warnings,
            },
        ]
        return {"reading": read, "lead": ["(this seed's reading)", *(f"VAE: warning: {w}" for w in warnings)]}  # fmt: skip

    lead = demo.lead_over_seeds([seed(19.6, 22.0, 0.87, ["slow"]), seed(20.0, 24.0, 0.88, [])], [3, 4])
    assert lead == [
        "AE reconstructs 1% better than PCA-20; VAE 15% worse (likely undertrained). Neither model's codes beat raw "
        "pixels on the probe (0.875, 0.860 vs 0.900). (Means over 2 seeds.)",
        "seed 3: VAE: warning: slow",
    ]


# ---------------------------------------------------------------- figures that read
def test_figures_have_plain_tick_labels_integer_epochs_and_titles_that_do_not_overlap(tmp_path, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = _capture_figures(monkeypatch)
    history = [{"epoch": e, "train_loss": 9.0 / e, "val_loss": 9.5 / e, "test_loss": 9.6 / e, "test_recon": 8.0 / e,
                "test_kl": 1.0 + e / 10} for e in (1, 2, 3)]  # fmt: skip
    report.plot_kl_per_dimension([3.0, 0.5, 0.0001, 0.0], 0.01, tmp_path / "kl.png")
    report.plot_curves({"vae": history}, tmp_path / "loss.png")
    terms = {"test_recon": "reconstruction: -E_q log p(x|z)", "test_kl": "KL(q(z|x) || p(z))"}  # as evaluate draws
    vae = [{"epoch": e, "test_recon": 197.3 - 0.7 * e, "test_kl": 10.2 + 0.3 * e} for e in range(1, 31)]  # nats
    report.plot_terms(vae, terms, tmp_path / "elbo_terms.png", ylabel="nats per image")
    kl, loss, elbo = figures
    for fig in figures:
        FigureCanvasAgg(fig).draw()  # a closed figure, drawn again with Agg: its texts as they were rendered
        for ax in fig.axes:
            for label in [*ax.get_xticklabels(), *ax.get_yticklabels(), *ax.get_yticklabels(minor=True)]:
                assert "$" not in label.get_text() and "mathdefault" not in label.get_text(), label.get_text()
    (ax,) = kl.axes
    shown = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert "1" in shown and "0.01" in shown  # decades as plain numbers
    for ax in [*loss.axes, *elbo.axes, *kl.axes]:  # epochs and dimensions: whole numbers only
        ticks = [t.get_text().replace("−", "-") for t in ax.get_xticklabels() if t.get_text()]
        assert ticks and all(re.fullmatch(r"-?\d+", t) for t in ticks), ticks
    renderer = elbo.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in elbo.axes]
    assert not boxes[0].overlaps(boxes[1])
    assert all(box.x0 >= 0 and box.x1 <= elbo.bbox.width for box in boxes)  # and each within the figure


# ---------------------------------------------------------------- smaller frictions
def test_evaluate_on_a_seed_group_says_what_to_evaluate(two_groups, capsys):
    group = two_groups / "ae"
    err = one_line_exit_2(capsys, main(["evaluate", str(group)]), "is a seed group (seed-0 ... seed-1)")
    assert f"evaluate {group / 'seed-1'}" in err and "compare the group" in err and "model.json" not in err


def test_train_help_states_the_one_rule_for_evaluation(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Plain train does not evaluate: aelab evaluate RUN writes eval.json, report.html/md and figures/." in text
    assert (
        "With --seeds N every seed is trained and then evaluated (eval.json and report.html/md without figures" in text
    )


def test_a_misspelt_flag_gets_the_flag_it_meant(capsys):
    err = one_line_exit_2(capsys, main(["train", "--modle", "3", "--out", "x"]), "unrecognized arguments: --modle 3")
    assert err.strip().endswith("did you mean --model?")
    err = one_line_exit_2(capsys, main(["experiment", "demo", "--quik"]), "did you mean --quick?")
    err = one_line_exit_2(capsys, main(["compare", "a", "--zzzz", "--out", "o"]), "unrecognized arguments: --zzzz")
    assert "did you mean" not in err  # nothing close: no guess


def test_a_shortened_flag_is_refused_not_taken_for_the_long_one(tmp_path, capsys):
    """argparse's prefix matching is off: `--iwae 10` would have re-scored a run with k = 10 and `--epoch 2`
    trained for 2 epochs; both are refused with the flag meant, before anything is written."""
    err = one_line_exit_2(capsys, main(["evaluate", str(tmp_path), "--iwae", "10"]), "unrecognized arguments: --iwae")
    assert err.strip().endswith("did you mean --iwae-k?")
    out = tmp_path / "run"
    err = one_line_exit_2(capsys, main(["train", "--epoch", "2", "--out", str(out)]), "did you mean --epochs?")
    assert not out.exists()


def test_numbers_have_the_digits_their_spread_carries_and_stay_where_they_can_be():
    from aelab.metrics.intervals import format_interval, metric_range, summarize
    from aelab.reading import plural
    from aelab.seeds import summarize_metrics

    equal = summarize([0.9333333333333333, 0.9333333333333332, 0.9333333333333333])  # std ~1e-16: rounding
    assert format_interval(equal, None) == "0.9333 ± 0.0000 [0.9333, 0.9333] (n=3)"
    assert format_interval(summarize([10.0, 12.0]), None) == "11.0 ± 1.4 [-1.7, 23.7] (n=2)"
    counts = summarize_metrics([{"active_units": 1, "eval_time_s": 0.2}, {"active_units": 4, "eval_time_s": 3.0}])
    assert counts["active_units"]["ci95"][0] == 0.0 and counts["eval_time_s"]["ci95"][0] == 0.0  # clipped at 0
    assert counts["active_units"]["ci95"][1] > 4 and "clipped at 0" in counts["active_units"]["method"]
    assert metric_range("time (s)") == (0.0, float("inf")) and metric_range("test_loss") is None
    assert summarize([1.0, 4.0], bounded=metric_range("test_loss"))["ci95"][0] < 0  # a loss may be anything
    assert (plural(1, "pass"), plural(3, "pass"), plural(1, "seed"), plural(2, "seed")) == (
        "1 pass", "3 passes", "1 seed", "2 seeds")  # fmt: skip
    assert (plural(30, "epoch"), plural(1, "epoch"), plural(2, "batch")) == ("30 epochs", "1 epoch", "2 batches")


# ---------------------------------------------------------------- installing and browsing
def _make_n(*args) -> str:
    if shutil.which("make") is None:
        pytest.skip("no make")
    return subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_demo_installs_what_the_demo_uses_and_make_test_the_test_extras():
    demo, test = _make_n("demo"), _make_n("test")
    assert '-e ".[tensorboard]"' in demo and ".[test]" not in demo and "left out:" in demo
    assert '-e ".[test]"' in test and "torch==2.13.0" in test and "pytest tests" in test
    assert "--index-url" not in demo  # by default torch comes from the index pip is configured with
    cpu = "https://download.pytorch.org/whl/cpu"
    assert f"torch==2.13.0 --index-url {cpu}" in _make_n("demo", f"TORCH_INDEX={cpu}")


def test_the_readme_says_how_to_install_and_browse_on_a_small_machine():
    readme = " ".join((ROOT / "README.md").read_text().split())
    (command,) = [line for line in (ROOT / "README.md").read_text().splitlines() if "mlflow ui " in line]
    assert "--workers 1" in command and "--backend-store-uri sqlite:///mlflow.db" in command
    assert "experiment aelab" in readme and "Model training" in readme and "Runs" in readme
    assert "make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu" in readme
    assert "resume with: aelab train --out" in readme
