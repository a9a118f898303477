"""The VAE family at Burda, Grosse & Salakhutdinov's protocol (Importance Weighted Autoencoders, ICLR 2016,
Table 1, one stochastic layer): VAE, IWAE k = 5 and IWAE k = 50 on dynamically binarised MNIST, test NLL by the
IWAE bound with k = 5000, at equal passes over the data.

    every model: preset burda2016 (784-200-200-50 tanh, Bernoulli, batch 20, Adam eps 1e-4, lr 1e-3 * 10^(-i/7)
                 for 3^i passes), trained on a fresh Bernoulli draw of the train images each epoch
    at each stage end (1, 4, 13, 40, ... passes) up to --epochs: test NLL = -mean log p(x), IWAE bound with
                 --nll-k samples per image (the NLL-against-epochs curve); the run resumes to the next stage
    final:       test NLL, test ELBO, active units (Burda's: Cov_x E_q[z_j] > 0.01) -> results.json, report

Nothing is chosen: every model keeps its final weights (as in the paper); the test split is only scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import data as datamod
from .. import papers, report, runs
from ..data import BINARIZE
from ..evaluate import iwae_mean
from ..options import opt, positive_int, seed_value
from ..presets import BURDA_PASSES, PRESETS
from ..progress import Progress
from ..reading import plural
from ..runs import load_model
from ..train import TrainConfig, burda_stage
from . import multiseed
from .common import (
    amp_field,
    device_field,
    jobs_field,
    preflight,
    seeds_field,
    splits_of,
    train_or_resume,
    write_partial,
)

MODELS = ("vae", "iwae-5", "iwae-50")
ROW_KEY = "model"


def PAIRS(tables: dict) -> list[tuple[str, str, str]]:  # noqa: N802 (multiseed's name for the pairs)
    """Every IWAE row against the VAE, on the test NLL, paired by seed."""
    return [(r[ROW_KEY], "VAE", "test NLL") for r in tables["nll"] if r[ROW_KEY].startswith("IWAE")]


PLOT_COLUMNS = ["test NLL"]
FIXED_COLUMNS = ["passes", "k (training)", "NLL k", "NLL test images"]
# Burda et al.'s Table 1 (one stochastic layer, dynamic binarisation), the rows this experiment trains; source and
# protocol in aelab.papers (pythae's numbers are another benchmark: static binarisation, other budgets)
PAPER_NLL = {label: papers.get("burda2016").value(key) for label, key in
             (("VAE", "VAE k=1"), ("IWAE k=5", "IWAE k=5"), ("IWAE k=50", "IWAE k=50"))}  # fmt: skip
PYTHAE_NLL = papers.get("pythae").values()


@dataclass
class Settings:
    out: str = field(default="runs/vae-family", metadata=opt("output folder"))
    dataset: str | None = field(
        default=None, metadata=opt("a grey-level dataset name (aelab data list; default mnist, --quick mnist5k)")
    )
    data_dir: str | None = field(default=None, metadata=opt("folder of downloaded datasets"))
    binarize: str = field(default="dynamic", metadata=opt("dynamic or static binarisation", choices=BINARIZE))
    models: list[str] = field(
        default_factory=lambda: list(MODELS),
        metadata=opt("comma-separated, distinct: vae, iwae-K (trained with K samples)", parse=lambda t: model_list(t)),
    )
    epochs: int | None = field(
        default=None,
        metadata=opt(f"passes over the train images (paper {BURDA_PASSES}; default 13, --quick 1)", parse=positive_int),
    )
    nll_k: int = field(default=5000, metadata=opt("samples per image of the test NLL", parse=positive_int))
    nll_test_limit: int | None = field(
        default=None, metadata=opt("score the first N test images only (default all)", parse=positive_int)
    )
    train_limit: int | None = field(
        default=None, metadata=opt("use only the first N training images", parse=positive_int)
    )
    seed: int = field(default=0, metadata=opt("seed of every model", parse=seed_value))
    seeds: int = seeds_field()
    jobs: int = jobs_field()
    quick: bool = field(default=False, metadata=opt("1 pass, NLL with k = 100 (a smoke test)"))
    device: str = device_field()
    amp: bool = amp_field()
    no_progress: bool = field(default=False, metadata=opt("no progress bars"))


def parse_model(name: str) -> tuple[str, str, int]:
    """(row label, model, k) of 'vae' or 'iwae-K'."""
    if name == "vae":
        return "VAE", "vae", 1
    if name.startswith("iwae-") and name[5:].isdigit() and 1 <= int(name[5:]) <= 5000:
        return f"IWAE k={int(name[5:])}", "iwae", int(name[5:])
    raise ValueError(f"unknown model {name!r} in --models; use vae or iwae-K with K in [1, 5000]")


def model_list(text: str) -> list[str]:
    import argparse

    words = [w.strip() for w in text.split(",") if w.strip()]
    try:
        for w in words:
            parse_model(w)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not words or len(set(words)) != len(words):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated models, got {text!r}")
    return words


def stage_ends(epochs: int) -> list[int]:
    """The epochs at which the NLL is measured: the ends of Burda's stages up to `epochs`, and `epochs`."""
    ends = sorted({e + 1 for e in range(epochs) if burda_stage(e + 1) != burda_stage(e)} | {epochs})
    return [e for e in ends if e <= epochs]


@torch.no_grad()
def active_units(model, x: torch.Tensor, threshold: float = 0.01) -> int:
    """Burda et al.'s activity statistic: latent j is active when Cov_x(E_q(z|x)[z_j]) > 0.01, the variance over
    the images x of its posterior mean."""
    means = torch.cat([model.posterior(xb)[0].double() for xb in x.split(1000)])
    return int((means.var(0) > threshold).sum())


def run(settings: Settings) -> Path:
    import dataclasses
    import sys

    for name in settings.models:
        parse_model(name)
    if settings.dataset is None:  # --quick runs on the embedded digits: no IDX files needed
        settings = dataclasses.replace(settings, dataset="mnist5k" if settings.quick else "mnist")
    if settings.quick and not settings.no_progress:
        print(
            f"--quick: {settings.dataset}, {settings.epochs or 1} pass, test NLL with k = 100 (the full run: mnist, "
            "13 passes, k = 5000); its numbers only check the path"
        )
    preflight(settings)
    return multiseed.run(sys.modules[__name__], settings)


def run_one(settings: Settings) -> Path:
    started = time.perf_counter()
    out = Path(settings.out)
    epochs = settings.epochs or (1 if settings.quick else 13)
    nll_k = 100 if settings.quick and settings.nll_k == 5000 else settings.nll_k
    test_x, _ = datamod.load(settings.dataset, "test", settings.data_dir, binarize=settings.binarize)
    test_x = test_x[: settings.nll_test_limit] if settings.nll_test_limit else test_x
    device = torch.device(settings.device)
    rows, curves, config = [], {}, None
    bar = Progress(f"{out.name or out}: vae-family", total=len(settings.models), unit="model",
                   enabled=not settings.no_progress)  # fmt: skip
    with bar:
        for i, name in enumerate(settings.models):
            bar.phase(f"{name}: training and the test NLL (k = {nll_k}) at each stage's end")
            row, curve, config = _one_model(settings, out, name, epochs, nll_k, test_x, device, bar)
            rows.append(row)
            curves[row["model"]] = curve
            bar.update(text=f"{name}: test NLL {row['test NLL']:.2f} nats")
            if i + 1 < len(settings.models):
                write_partial(out, {"experiment": "vae_family", "tables": {"nll": rows}}, settings.models[: i + 1],
                              settings.models[i + 1 :], "vae-family")  # fmt: skip
    return write(settings, out, rows, curves, config, epochs, time.perf_counter() - started)


def _one_model(settings, out: Path, name: str, epochs: int, nll_k: int, test_x, device, bar) -> tuple[dict, dict, dict]:
    """(its row, its NLL curve, its config) of one model: trained (or continued) stage by stage, the test NLL measured
    at each stage's end and kept in its folder (a resumed experiment keeps the points it measured)."""
    preset = PRESETS["burda2016"]
    label, model_name, k = parse_model(name)
    folder = out / "runs" / name
    cfg = TrainConfig(
        model=model_name,
        model_options={**preset["model_options"], **({"k": k} if model_name == "iwae" else {})},
        dataset=settings.dataset,
        dataset_options={"binarize": settings.binarize},
        data_dir=settings.data_dir,
        train_limit=settings.train_limit,
        val_fraction=0.0,  # nothing is chosen: final weights, as in the paper
        seed=settings.seed,
        device=settings.device,
        amp=settings.amp,
        out=str(folder),
        tensorboard=False,
        **preset["settings"],
    )
    curve_file = folder / "nll_curve.json"
    curve = runs.read_json(curve_file) if curve_file.is_file() else {}
    t0 = time.perf_counter()
    for end in stage_ends(epochs):
        cfg.epochs = end
        train_or_resume(cfg, progress=not settings.no_progress)
        if str(end) not in curve:  # a resumed experiment keeps the points it measured
            bar.phase(f"{name}: test NLL after {plural(end, 'pass')} (k = {nll_k}, {len(test_x)} images)")
            model = load_model(folder).to(device).eval()
            curve[str(end)] = -iwae_mean(model, test_x.to(device), nll_k, seed=settings.seed)
            runs.write_json(curve_file, curve)
    seconds = time.perf_counter() - t0
    model = load_model(folder).to(device).eval()
    history = runs.read_history(folder)
    config = runs.read_config(folder)
    row = {
        "model": label,
        "k (training)": k,
        "passes": epochs,
        "test NLL": curve[str(epochs)],
        "test ELBO": history[-1]["test_elbo"],
        "active units": active_units(model, test_x.to(device)),
        "NLL k": nll_k,
        "NLL test images": len(test_x),
        "time (s)": seconds,
    }
    return row, {int(e): v for e, v in curve.items()}, config


def write(settings, out: Path, rows, curves, config, epochs, wall) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("passes over the train images")
    ax.set_ylabel("test NLL (nats)")
    ax.legend()
    fig.tight_layout()
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "figures" / "nll_vs_epochs.png", dpi=120)
    plt.close(fig)
    curve_rows = [
        {"model": f"{label}, {plural(e, 'pass')}", "passes": e, "test NLL": v}
        for label, c in curves.items()
        for e, v in c.items()
    ]
    notes = protocol_notes(settings, epochs, config)
    results = {
        "experiment": "vae_family",
        "title": "The VAE family at Burda et al.'s protocol (IWAE, ICLR 2016, Table 1)",
        "selection_split": "none (final weights)",
        "splits": splits_of(config),
        "tables": {"nll": rows, "nll_by_passes": curve_rows},
        "table_order": ["nll", "nll_by_passes"],
        "curves": {label: {str(e): v for e, v in c.items()} for label, c in curves.items()},
        "paper_nll": PAPER_NLL,
        "pythae_nll": PYTHAE_NLL,
        "figures": [["Test NLL against passes over the data", "figures/nll_vs_epochs.png"]],
        "notes_for_summary": notes,
        "device": settings.device,
        "wall_time_s": wall,
    }
    runs.write_json(out / "results.json", results)
    return report.write_report(
        out,
        results["title"],
        [("Test NLL (nats), final weights", rows), ("Test NLL against passes", curve_rows)],
        [("Test NLL against passes over the data", out / "figures" / "nll_vs_epochs.png")],
        notes,
    )


def protocol_notes(settings, epochs: int, config: dict) -> list[str]:
    """Every way this run's protocol differs from the paper's, stated beside its numbers."""
    paper = ", ".join(f"{k} {v}" for k, v in PAPER_NLL.items())
    theirs = ", ".join(f"{k} {v}" for k, v in PYTHAE_NLL.items())
    burda, pythae = papers.get("burda2016"), papers.get("pythae")
    return [
        f"Paper (Burda et al. 2016, Table 1, one stochastic layer, {BURDA_PASSES} passes, dynamic binarisation): "
        f"{paper} nats; {burda.cite()}.",
        f"pythae's figures are another benchmark, not Burda's Table 1: {theirs} nats, on statically binarised MNIST "
        f"(Larochelle's 50,000 / 10,000 / 10,000), its VAE a 784-400-40 ReLU net after 500 epochs scored with 200 "
        f"importance samples, its IWAE trained with 50 samples; {pythae.cite()}.",
        f"Budget here: {plural(epochs, 'pass')} (the paper: {BURDA_PASSES}), the learning-rate stages that fit; "
        f"{config['n_train']} train images (the paper: 59,600, 400 held out), final weights.",
        f"Binarisation: {settings.binarize}; train images redrawn every epoch with seeds from (seed, epoch), the "
        "test images drawn once with a fixed seed (the paper's code redraws test images too).",
        "Adam as in the paper (beta1 0.9, beta2 0.999, eps 1e-4); the paper's code uses beta1 0.99 and starts "
        "the decoder's output bias at the data's log-odds: here PyTorch's default initialisation.",
        f"Test NLL: IWAE bound, k = {settings.nll_k if not settings.quick else 100} per image, on "
        f"{settings.nll_test_limit or 'all'} test images (the paper: k = 5000 on all 10,000).",
    ]
