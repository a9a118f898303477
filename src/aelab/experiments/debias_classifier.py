"""Debiasing end to end (issue 13): a digit classifier on ColoredMNIST that ignores colour, learned and selected
without colour labels, measured on colour-unbiased test sets (the protocol of Learning from Failure, Nam et al.,
NeurIPS 2020).

    for every aligned ratio r and seed s:
      biased train split (mnist5k train, r of every digit in its class colour, colouring seed s)
        -> train / validation (stratified by DIGIT, val_fraction) -- both from the biased distribution
      label-free methods (images + digit labels only; see aelab.debias): vanilla, LfF, JTT, detect-then-reweight,
        bias-swap synthesis; each method's hyper-parameters chosen on the validation split by SELECTION_RULE
      oracles (colour labels; upper references, never counted as ours): group-balanced reweighting, and
        group-balanced reweighting + the same synthesis given the true colour split
      representation: an AE on the plain training images and an AE on synthesis-augmented images, codes probed
      test: the mnist5k test split coloured with every colour equally often per digit (and the official 10k MNIST
        test set the same way, when --data-dir holds its IDX files)
    -> results.json (every metric as mean / std / ci95 / values / n_seeds), report.html / report.md, figures

The methods run on one (ratio, seed) cell are in debias_classifier_cell.py, the summary over seeds and the report
in debias_classifier_report.py; the methods themselves are aelab.debias. --device / --amp: every model trains
there (random draws stay on CPU generators, so a seed gives the same data order on any device).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import runs
from ..progress import Progress
from .common import preflight
from .debias_classifier_cell import run_cell
from .debias_classifier_settings import DEFAULT_RATIOS, QUICK, Settings, resolved  # noqa: F401 (the recipe's interface)


def run(settings: Settings) -> Path:
    from threadpoolctl import threadpool_limits

    settings = resolved(settings)
    if settings.quick and not settings.no_progress:
        print(
            f"--quick: ratio {settings.ratios[0]} only, {settings.n_seeds} seed, {settings.epochs} classifier epochs and "
            f"{settings.ae_epochs} autoencoder epochs (the full run: 4 ratios, 15 and 6 epochs); its numbers only "
            "check the path"
        )
    preflight(settings)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with threadpool_limits(limits=settings.threads):  # numpy / sklearn BLAS (the probes: 61 s -> ~2 s)
            return _run(settings)
    finally:
        torch.set_num_threads(threads_before)


HEAVY = ("splits", "fit", "oracles", "preds")  # a cell's models and data: for the figures of the first seed only


def _cell_file(out: Path, ratio: float, seed: int) -> Path:
    return out / "cells" / f"ratio-{ratio:g}-seed-{seed}.json"


def _run(settings: Settings) -> Path:
    """Every (ratio, seed) cell in turn, each a row: its numbers are written to OUT/cells/ when it finishes, and the
    summary and report after it, marked partial until the last; --resume reads the finished cells back."""
    from . import debias_classifier_report
    from .common import write_partial

    t_start = time.perf_counter()
    s = settings
    out = Path(s.out)
    order = [(ratio, seed) for ratio in s.ratios for seed in range(s.seed, s.seed + s.n_seeds)]
    cells: dict[float, list[dict]] = {}
    label = f"{out.name or out}: debias-classifier"
    with Progress(label, total=len(order), unit="cell", enabled=not s.no_progress) as bar:
        for i, (ratio, seed) in enumerate(order):
            saved = _cell_file(out, ratio, seed)
            if saved.is_file():  # finished before a --resume: its numbers as they were written
                cell = runs.read_json(saved)
                bar.update(text=f"ratio {ratio} seed {seed}: finished already, kept", kept=True)
            else:
                bar.phase(f"ratio {ratio} seed {seed}: vanilla, LfF, JTT, detect-reweight, synthesis, oracles")
                cell = run_cell(s, ratio, seed, progress=bar)
                runs.write_json(saved, {k: v for k, v in cell.items() if k not in HEAVY})
                m = cell["metrics"][next(iter(cell["metrics"]))]
                bar.update(
                    text=f"ratio {ratio} seed {seed} ({cell['time_s']:.0f} s): "
                    + ", ".join(f"{k} {100 * v['unbiased']:.1f}" for k, v in m.items())
                )
            if seed != s.seed:  # the figures need the models and data of the first seed only (the 10k test: 94 MB)
                for heavy in HEAVY:
                    cell.pop(heavy, None)
            cells.setdefault(ratio, []).append(cell)
            done, todo = order[: i + 1], order[i + 1 :]
            if todo:
                finished = {r: cs for r, cs in cells.items() if len(cs) == s.n_seeds}
                partial = debias_classifier_report.summary(s, finished, t_start) if finished else {}
                write_partial(out, partial, [f"ratio {r} seed {sd}" for r, sd in done],
                              [f"ratio {r} seed {sd}" for r, sd in todo], "debias-classifier")  # fmt: skip
    return debias_classifier_report.write(s, cells, t_start)
