"""What a researcher reads in a report: loss curves in their own units, the VAE's ELBO terms and active units,
latent traversals and interpolations beside their real images, tables that wrap, figures in a grid, the debias
experiment's ROC and precision-recall curves, and progress bars labelled by run."""

import copy
import json
import re

import numpy as np
import pytest
import torch

from aelab import evaluate as evaluate_module
from aelab import report, runs
from aelab.cli import main
from aelab.metrics import codes as codes_module
from aelab.metrics import ranking
from aelab.metrics.codes import interpolation_rows, traversal_rows, tsne_2d
from aelab.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A tiny trained VAE run on the 8x8 digits (6 latent dimensions), not yet evaluated."""
    out = tmp_path_factory.mktemp("report") / "tiny-vae"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AELAB_DATA", str(tmp_path_factory.getbasetemp() / "aelab-data"))
        cfg = TrainConfig(
            model="vae",
            model_options={"hidden": [32], "latent": 6},
            dataset="digits",
            train_limit=300,
            epochs=2,
            out=str(out),
        )
        train(cfg, progress=False)
    return out


# ---------------------------------------------------------------- loss curves in their own units
def test_an_ae_and_a_vae_never_share_an_axis(monkeypatch):
    configs = {
        "ae mse": {"model": "ae", "model_options": {"loss": "mse"}},
        "ae bce": {"model": "ae", "model_options": {"loss": "bce"}},
        "cae": {"model": "cae", "model_options": {"loss": "bce", "lam": 0.1}},
        "vae": {"model": "vae", "model_options": {"likelihood": "bce"}},
        "vae gaussian": {"model": "vae", "model_options": {"likelihood": "gaussian"}},
    }
    units = {name: report.loss_unit(c) for name, c in configs.items()}
    panels = report.curve_panels(configs, units)
    assert sorted(n for names in panels.values() for n in names) == sorted(configs)  # each curve drawn once
    for names in panels.values():
        assert len({units[n] for n in names}) == 1
        assert not ({"ae mse", "ae bce", "cae"} & set(names) and {"vae", "vae gaussian"} & set(names))
    assert panels[units["ae bce"]] == ["ae bce", "cae"]  # the same unit: one panel
    assert len(panels) == 4

    # and the figure draws exactly those panels: each axis holds the curves of one unit
    figures = []
    monkeypatch.setattr(report, "save_png", lambda fig, path: figures.append(fig) or path)
    history = [{"epoch": e, "train_loss": 10.0 / e, "test_loss": 11.0 / e} for e in (1, 2, 3)]
    report.plot_curves({n: history for n in configs}, "unused.png", units=units)
    (fig,) = figures
    assert [ax.get_ylabel() for ax in fig.axes] == list(panels)
    for ax, names in zip(fig.axes, panels.values()):
        assert {line.get_label().rsplit(" ", 1)[0] for line in ax.get_lines()} == set(names)


# ---------------------------------------------------------------- the VAE's active units
def _kl_per_dimension_float64(model, x: torch.Tensor) -> np.ndarray:
    """KL(N(mu, sigma^2) || N(0, 1)) = (mu^2 + sigma^2 - 1 - log sigma^2) / 2 per dimension, mean over x, float64."""
    encoder = copy.deepcopy(model.encoder).double()
    with torch.no_grad():
        mu, logvar = encoder(x.flatten(1).double()).chunk(2, dim=1)
    return (0.5 * (mu**2 + torch.exp(logvar) - 1 - logvar)).mean(0).numpy()


def test_active_units_match_a_float64_count(vae_run, monkeypatch, capsys):
    model = runs.load_model(vae_run)
    last = model.encoder[-1]  # outputs (mu, logvar): rows j and latent + j are dimension j
    latent = model.latent
    with torch.no_grad():
        for j, mu in [(0, 0.0), (1, 0.0), (2, 0.15), (3, 0.13)]:  # q(z_j|x) = N(mu, 1) whatever x: KL = mu^2 / 2
            for row in (j, latent + j):
                last.weight[row] = 0
                last.bias[row] = 0
            last.bias[j] = mu
    monkeypatch.setattr(evaluate_module.runs, "load_model", lambda run_dir, **modules: model)
    result = evaluate_module.evaluate(vae_run, iwae_k=2, write=False)
    assert capsys.readouterr().err == ""  # no bars unless asked for

    _, _, test_x, _ = runs.run_data(runs.read_config(vae_run))
    expected = _kl_per_dimension_float64(model, test_x)
    np.testing.assert_allclose(result["kl_per_dimension"], expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(expected[:4], [0.0, 0.0, 0.01125, 0.00845], atol=1e-7)  # 2: just active, 3: not
    assert result["metrics"]["active_units"] == int((expected > 0.01).sum())
    assert 1 <= result["metrics"]["active_units"] <= latent - 3  # dims 0, 1, 3 are inactive, 2 is active
    assert sum(result["kl_per_dimension"]) == pytest.approx(float(expected.sum()), rel=1e-5)


# ---------------------------------------------------------------- traversals and interpolations
def test_traversal_and_interpolation_rows_hold_the_real_images(vae_run):
    model = runs.load_model(vae_run)
    _, _, test_x, _ = runs.run_data(runs.read_config(vae_run))
    x = test_x[:50]
    codes = model.encode(x).detach().numpy()

    rows = traversal_rows(model, x[7], codes, dims=[4, 1], steps=5)
    assert rows.shape == (2, 6, *x.shape[1:])
    for row in rows:
        assert torch.equal(row[0], x[7])  # the real image, bit for bit
    z = model.encode(x[7][None]).detach()
    z[0, 1] = float(np.quantile(codes[:, 1], 0.98))
    torch.testing.assert_close(rows[1, -1], model.decode(z)[0].detach())  # only z_1 moved, to its 98th percentile

    pairs = [(0, 9), (3, 8)]
    rows = interpolation_rows(model, x, pairs, steps=6)
    assert rows.shape == (2, 8, *x.shape[1:])
    for row, (a, b) in zip(rows, pairs):
        assert torch.equal(row[0], x[a]) and torch.equal(row[-1], x[b])  # both real ends, bit for bit
        torch.testing.assert_close(row[1], model(x[a][None])[0].detach())  # the path starts at a's reconstruction
        torch.testing.assert_close(row[-2], model(x[b][None])[0].detach())
        assert not torch.equal(row[1], row[0])


# ---------------------------------------------------------------- the run's report
def test_evaluated_vae_report_has_the_figures_wraps_its_table_and_labels_bars_by_run(vae_run, capsys, terminal):
    assert main(["evaluate", str(vae_run), "--iwae-k", "3", "--tsne-points", "60"]) == 0
    err = capsys.readouterr().err
    for bar in ("tiny-vae: evaluate", "tiny-vae: IWAE k=3", "tiny-vae: t-SNE"):
        assert bar in err, err
    assert "vae: evaluate" not in err.replace("tiny-vae: evaluate", "")  # labelled by run, not by model

    result = json.loads((vae_run / "eval.json").read_text())
    assert result["metrics"]["active_units"] == sum(k > 0.01 for k in result["kl_per_dimension"])
    for name in ("elbo_terms", "kl_per_dimension", "traversals", "interpolation", "tsne", "loss"):
        assert (vae_run / "figures" / f"{name}.png").exists(), name
    html = (vae_run / "report.html").read_text()
    for caption in ("negative ELBO", "KL per latent dimension", "Latent traversals", "two real images at the ends"):
        assert caption in html
    # the metric table (one row, many metrics) is transposed: no table is wider than MAX_TABLE_COLUMNS, cells wrap
    tables = re.findall(r"<table>.*?</table>", html)
    assert tables and all(t.split("</thead>")[0].count("<th>") <= report.MAX_TABLE_COLUMNS for t in tables)
    assert "<td>active_units</td>" in html
    assert "overflow-wrap:anywhere" in html and "max-width:100%" in html
    # figures in a grid: the maps are grid cells, the wide mosaics span the row
    assert "<div class='figures'>" in html and "display:grid" in html
    assert re.search(r"<figure><figcaption>t-SNE of", html)
    assert re.search(r"<figure><figcaption>KL per latent dimension", html)

    assert main(["evaluate", str(vae_run), "--iwae-k", "3", "--no-figures", "--no-progress"]) == 0
    # no bars, no notes: only the warning of this tiny run (aelab.metrics.convergence)
    assert [x.split(":")[1] for x in capsys.readouterr().err.splitlines()] == [" warning"]


def test_tsne_bar_follows_the_iterations_and_changes_nothing_but_stderr(capsys, monkeypatch, terminal):
    codes = np.random.default_rng(0).normal(size=(40, 5))
    quiet = tsne_2d(codes, seed=1)
    assert capsys.readouterr().err == ""
    positions = []
    update = codes_module._TsneIterations.write

    def spy(self, text):
        update(self, text)
        positions.append(self.bar.n)
        return len(text)

    monkeypatch.setattr(codes_module._TsneIterations, "write", spy)
    with_bar = tsne_2d(codes, seed=1, progress="some-run")
    captured = capsys.readouterr()
    assert "some-run: t-SNE" in captured.err and captured.out == ""  # sklearn's verbose lines are swallowed
    assert {50, 250, 300} <= set(positions) and positions == sorted(positions)  # moved by sklearn's own count
    np.testing.assert_array_equal(quiet, with_bar)


# ---------------------------------------------------------------- tables
def test_wide_tables_are_transposed_or_split_and_lose_nothing():
    one_run = [{"model": "vae", **{f"metric_{i}": float(i) for i in range(20)}}]
    (block,) = report.table_blocks(one_run)
    assert [r["model"] for r in block] == [f"metric_{i}" for i in range(20)]
    assert [r["vae"] for r in block] == [float(i) for i in range(20)]

    many = [{"method": f"m{j}", **{str(c): c + j / 10 for c in range(12)}} for j in range(9)]
    blocks = report.table_blocks(many)
    assert len(blocks) == 2 and all(len(b[0]) <= report.MAX_TABLE_COLUMNS for b in blocks)
    for j, row in enumerate(many):  # every cell is in one of the blocks, beside its row's first cell
        merged = {k: v for b in blocks for k, v in b[j].items()}
        assert merged == row
    html = report.html_table(many)
    assert html.count("<table>") == 2 and html.count("<td>m3</td>") == 2
    assert report.markdown_table(many).count("| method |") == 2
    narrow = [{"a": 1, "b": 2}]
    assert report.table_blocks(narrow) == [narrow]


# ---------------------------------------------------------------- debias: ROC and precision-recall curves
def test_debias_roc_pr_curves_and_their_areas(tmp_path):
    rng = np.random.default_rng(0)
    digits = np.repeat(np.arange(4), 60)
    conflicting = rng.random(len(digits)) < 0.15
    conflicting[::60] = True  # every class has a positive
    scores = {
        "good": conflicting + rng.normal(0, 0.6, len(digits)),
        "tied": np.round(conflicting + rng.normal(0, 1.0, len(digits))),
        "noise": rng.normal(size=len(digits)),
    }
    methods = {name: ranking.class_metrics(s, digits, conflicting) for name, s in scores.items()}
    for name, s in scores.items():  # the curves' areas are the tables' numbers
        c = ranking.mean_curves(s, digits, conflicting, points=2001)
        assert np.trapezoid(c["tpr"], c["fpr"]) == pytest.approx(methods[name]["mean"]["auroc"], abs=2e-3)
        assert np.mean(c["precision"][1:]) == pytest.approx(methods[name]["mean"]["average_precision"], abs=2e-3)

    figures = report.detection_curve_figures(scores, digits, conflicting, methods, "good", tmp_path / "figures")
    assert [p.name for _, p in figures] == ["roc_pr.png", "roc_pr_best.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for _, p in figures)
    html = report.write_report(tmp_path, "debias", [], figures).read_text()
    assert "ROC and precision-recall curves of each method" in html and html.count("data:image/png") == 2


# ---------------------------------------------------------------- RBM pretraining bar
def test_rbm_pretraining_bar_is_labelled_by_run(tmp_path, capsys, terminal):
    out = tmp_path / "pretrained-run"
    cfg = TrainConfig(
        model="deep-ae",
        model_options={"layers": [64, 16, 4], "init": "rbm", "pretrain_epochs": 2},
        dataset="digits",
        train_limit=100,
        epochs=1,
        out=str(out),
    )
    train(cfg, progress=True, log=lambda text: None)
    err = capsys.readouterr().err
    assert "pretrained-run: RBM pretraining" in err and "RBM 1/2 (64-16)" in err and "RBM 2/2 (16-4)" in err
    assert "/4 " in err  # two layers of two epochs
    train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "quiet")}), progress=False)
    assert "RBM" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    ["R&D < 5 & a<b", "<script>alert(1)</script>", "&amp; &#96; &lt;", "C:\\dir\\file", "a\\|b", "x|y", "co`de",
     "p@10 > 3", "&", "<!-- x -->", "a\\`b`", "![i](http://evil/x.png)", "[run](javascript:x) [16]"],
)  # fmt: skip
def test_a_markdown_table_cell_renders_as_the_text_itself(text):
    """report.md is read in a terminal and in a viewer: a CommonMark renderer (markdown-it, raw HTML on, as
    viewers do) must show exactly the text in a table cell, and the raw cell keeps a plain & and > as they are
    (no '&amp;' in a terminal)."""
    import html as html_mod

    from markdown_it import MarkdownIt

    md = "| h |\n|---|\n| " + report.md_escape(text) + " |\n"
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    cell = re.search(r"<td>(.*)</td>", rendered, re.S).group(1)
    assert "<" not in cell.replace("<code>", "").replace("</code>", "")  # no tag of the text's own reaches the page
    assert html_mod.unescape(cell) == text
    if not re.search(r"&#?[A-Za-z0-9]+;", text):
        assert "&amp;" not in report.md_escape(text)
