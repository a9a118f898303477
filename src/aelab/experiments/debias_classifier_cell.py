"""The methods of `aelab experiment debias-classifier` on one (aligned ratio, seed) cell (a recipe): which
debiasing methods of aelab.debias run, their hyper-parameter grids, the label-free selection on validation, the
colour-label oracles, and the grading on the unbiased test sets."""

from __future__ import annotations

import time

import torch

from .. import debias
from ..data.colored_splits import classifier_splits
from ..train import resolve_device

LFF_GRID = [{"q": q, "ema_alpha": a} for q in (0.5, 0.7) for a in (0.7, 0.9)]
JTT_GRID = [{"T": t, "lambda_up": lam} for t in (1, 2) for lam in (20, 50)]
DETECT_GRID = [{"rho": rho} for rho in (0.01, 0.02, 0.05)]
SYNTH_GRID = [{"p": p} for p in (0.25, 0.5, 0.75)]
BIASED_EPOCHS, BIASED_Q = 3, 0.7  # the GCE-biased MLP behind the bias discovery and the donor choice
SELECTION_RULE = (
    "accuracy on the bias-swapped validation set: every validation image (a held-out part of the BIASED "
    "training distribution) with its discovered bias factor swapped for that of another validation "
    "image which the GCE-biased model assigns to a different digit; digit labels kept. The bias factor "
    "is the one the biased model relies on most (bias_reliance). No colour label is used."
)
LABEL_FREE = ["vanilla", "lff", "jtt", "detect_reweight", "synthesis"]
ORACLES = ["ORACLE_group_reweight", "ORACLE_group_reweight+synthesis"]


def load_splits(s, ratio: float, seed: int) -> dict:
    """train / validation (carved from the biased train split, stratified by digit) / test sets of settings s."""
    return classifier_splits(s.dataset, ratio, seed, s.val_fraction, s.train_limit, s.data_dir)


def fit_label_free(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    epochs: int,
    ae_epochs: int,
    seed: int,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> dict:
    """Every non-oracle method, with its hyper-parameters chosen on the validation split. Images and digit labels
    only: the signature has no place for a colour label. Every model trains on `device` (bf16 autocast there
    with amp on CUDA). Returns {"models", "choices", "bias", "aes", ...}."""
    s0 = seed * 1000
    run = {"device": device, "amp": amp}
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    # 1. the GCE-biased model, the discovery of the bias factor, the donors and the selection set
    biased, reliance, factor, synth, val_swapped = discover_bias(train_x, train_y, val_x, val_y, s0, run)
    models, choices = {}, {}
    timings["bias_discovery"] = time.perf_counter() - mark
    mark = time.perf_counter()

    def select(name: str, candidates: list[tuple[dict, torch.nn.Module]]) -> None:
        nonlocal mark
        models[name], choices[name] = best_on_validation(candidates, val_swapped, val_y)
        timings[name] = time.perf_counter() - mark  # the whole grid, training included
        mark = time.perf_counter()

    # 2. vanilla
    select("vanilla", [({}, _classifier(train_x, train_y, epochs, s0 + 10, run))])
    # 3. LfF
    select("lff", lff_candidates(train_x, train_y, epochs, s0, run))
    # 4. JTT: identification by ERM for T epochs, then upweighting
    select("jtt", jtt_candidates(train_x, train_y, epochs, s0, run))
    # 5. detect-then-reweight with our detector (gce_knn)
    select("detect_reweight", detect_reweight_candidates(train_x, train_y, epochs, s0, run))
    # 6. bias-swap synthesis
    select("synthesis", synthesis_candidates(train_x, train_y, epochs, s0, run, synth))
    p = choices["synthesis"]["chosen"]["p"]
    # 7. representation: plain AE vs AE on synthesis-augmented images
    aes = {
        "ae_plain": debias.train_autoencoder(train_x, ae_epochs, s0 + 60, **run),
        "ae_debiased": debias.train_autoencoder(
            train_x, ae_epochs, s0 + 60, synthesizer=synth, synth_fraction=p, **run
        ),
    }
    timings["autoencoders"] = time.perf_counter() - mark
    return {
        "models": models,
        "choices": choices,
        "bias": {"reliance": reliance, "factor": factor},
        "timings": timings,
        "synthesizer": synth,
        "aes": aes,
        "biased_model": biased,
    }


def discover_bias(train_x, train_y, val_x, val_y, s0: int, run: dict) -> tuple:
    """The GCE-biased model, the bias factor it relies on most, the synthesizer that swaps it between train images
    (donors: images it assigns to another digit) and the bias-swapped validation set that selects every method.
    Returns (biased model, reliance, factor, synthesizer, swapped validation images)."""
    biased = debias.train_biased_classifier(train_x, train_y, epochs=BIASED_EPOCHS, q=BIASED_Q, seed=s0 + 1, **run)
    reliance = debias.bias_reliance(biased, train_x, seed=s0 + 2)
    factor = max(reliance, key=reliance.get)
    synth = debias.Synthesizer(train_x, train_y, torch.from_numpy(debias.predict(biased, train_x)), factor)
    val_synth = debias.Synthesizer(val_x, val_y, torch.from_numpy(debias.predict(biased, val_x)), factor)
    val_swapped = val_synth.sample(torch.arange(len(val_x)), torch.Generator().manual_seed(s0 + 3))
    return biased, reliance, factor, synth, val_swapped


def best_on_validation(candidates: list[tuple[dict, torch.nn.Module]], val_x, val_y) -> tuple:
    """The candidate of the best accuracy on the (bias-swapped) validation set, the first on ties; returns (its model,
    {"grid": every candidate's settings and score, "chosen": the chosen settings, "val_score": its score})."""
    grid = [{**params, "val_score": debias.accuracy(m, val_x, val_y)} for params, m in candidates]
    best = max(range(len(grid)), key=lambda i: grid[i]["val_score"])  # first best on ties
    choice = {
        "grid": grid,
        "chosen": {k: v for k, v in grid[best].items() if k != "val_score"},
        "val_score": grid[best]["val_score"],
    }
    return candidates[best][1], choice


def _classifier(train_x, train_y, epochs: int, seed: int, run: dict, **options) -> torch.nn.Module:
    return debias.train_classifier(train_x, train_y, epochs, seed, **options, **run)[0]


def lff_candidates(train_x, train_y, epochs: int, s0: int, run: dict) -> list[tuple[dict, torch.nn.Module]]:
    """Learning from Failure at every point of LFF_GRID."""
    lff = [
        debias.train_lff(train_x, train_y, epochs, s0 + 20, q=g["q"], ema_alpha=g["ema_alpha"], **run) for g in LFF_GRID
    ]
    return [(g, m[0]) for g, m in zip(LFF_GRID, lff)]


def jtt_candidates(train_x, train_y, epochs: int, s0: int, run: dict) -> list[tuple[dict, torch.nn.Module]]:
    """Just Train Twice at every point of JTT_GRID: the errors of ERM after T epochs, upweighted lambda_up times."""
    snaps = debias.identification_predictions(train_x, train_y, [g["T"] for g in JTT_GRID], s0 + 30, **run)
    cands = []
    for g in JTT_GRID:
        w, n_errors = debias.upweights(snaps[g["T"]], train_y, g["lambda_up"])
        cands.append(({**g, "n_errors": n_errors}, _classifier(train_x, train_y, epochs, s0 + 31, run, weights=w)))
    return cands


def detect_reweight_candidates(train_x, train_y, epochs: int, s0: int, run: dict) -> list[tuple[dict, torch.nn.Module]]:
    """Detect-then-reweight at every point of DETECT_GRID: the top rho of each class by our detector (gce_knn)
    flagged, and the flagged images balanced against the rest."""
    log_probs = debias.biased_log_probabilities(
        train_x, train_y, n_models=5, epochs=BIASED_EPOCHS, q=BIASED_Q, seed=s0 + 40, **run
    )
    det_scores = debias.knn_distance_scores(log_probs, train_y.numpy(), k=5)
    cands = []
    for g in DETECT_GRID:
        flags = debias.top_fraction_flags(det_scores, train_y.numpy(), g["rho"])
        weights = debias.balanced_flag_weights(flags, train_y.numpy())
        cands.append((g, _classifier(train_x, train_y, epochs, s0 + 41, run, weights=weights)))
    return cands


def synthesis_candidates(
    train_x, train_y, epochs: int, s0: int, run: dict, synth
) -> list[tuple[dict, torch.nn.Module]]:
    """Bias-swap synthesis at every point of SYNTH_GRID: a fraction p of every batch replaced by synthesised images."""
    return [
        (g, _classifier(train_x, train_y, epochs, s0 + 50, run, synthesizer=synth, synth_fraction=g["p"]))
        for g in SYNTH_GRID
    ]


def fit_oracles(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    train_colours: torch.Tensor,
    epochs: int,
    seed: int,
    synth_fraction: float,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> dict:
    """ORACLES (colour labels): group-balanced reweighting, and the same plus synthesis given the true colour split
    (factor colour_statistics, donors whose true colour differs from the digit). Upper references only."""
    s0 = seed * 1000
    w = debias.group_balanced_weights(train_y, train_colours)
    true_synth = debias.Synthesizer(train_x, train_y, train_colours, "colour_statistics")
    run = {"device": device, "amp": amp}
    return {
        "ORACLE_group_reweight": debias.train_classifier(train_x, train_y, epochs, s0 + 70, weights=w, **run)[0],
        "ORACLE_group_reweight+synthesis": debias.train_classifier(
            train_x, train_y, epochs, s0 + 71, weights=w, synthesizer=true_synth, synth_fraction=synth_fraction, **run
        )[0],
    }


def run_cell(s, ratio: float, seed: int, splits: dict | None = None, progress=None) -> dict:
    """One (ratio, seed): fit everything, grade on the test sets. `progress`: an aelab.progress.Progress whose phase
    says which step runs (its heartbeat covers the steps themselves)."""
    say = progress.phase if progress is not None else (lambda text: None)
    where = f"ratio {ratio} seed {seed}"
    splits = splits or load_splits(s, ratio, seed)
    tr, va = splits["train"], splits["val"]
    run = {"device": resolve_device(s.device), "amp": s.amp}
    t0 = time.perf_counter()
    say(f"{where}: label-free methods (vanilla, LfF, JTT, detect-reweight, synthesis) and their autoencoders")
    fit = fit_label_free(tr["images"], tr["digits"], va["images"], va["digits"], s.epochs, s.ae_epochs, seed, **run)
    t1 = time.perf_counter()
    p = fit["choices"]["synthesis"]["chosen"]["p"]
    say(f"{where}: oracles (colour labels)")
    oracles = fit_oracles(tr["images"], tr["digits"], tr["colours"], s.epochs, seed, p, **run)
    fit["timings"]["oracles"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    models = {**fit["models"], **oracles}
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    preds = {}
    for test_name, te in splits["test"].items():
        for name, model in models.items():
            pr = debias.predict(model, te["images"])
            preds[(test_name, name)] = pr
            metrics.setdefault(test_name, {})[name] = debias.group_metrics(pr, te["digits"], te["colours"])
    fit["timings"]["evaluation"] = time.perf_counter() - t1
    say(f"{where}: linear probes of the autoencoders' codes")
    t1 = time.perf_counter()
    # representation: linear probes on the AE codes
    first_test = next(iter(splits["test"].values()))
    # label-free: every training image with its discovered bias factor swapped (the synthesis, one copy)
    swapped_train = fit["synthesizer"].sample(
        torch.arange(len(tr["digits"])), torch.Generator().manual_seed(seed * 1000 + 80)
    )
    probes = {
        name: debias.probe_accuracies(
            ae, tr["images"], tr["digits"], swapped_train, first_test["images"], first_test["digits"], seed
        )
        for name, ae in fit["aes"].items()
    }
    fit["timings"]["probes"] = time.perf_counter() - t1
    return {
        "ratio": ratio,
        "seed": seed,
        "metrics": metrics,
        "probes": probes,
        "choices": fit["choices"],
        "bias": fit["bias"],
        "fit": fit,
        "oracles": oracles,
        "preds": preds,
        "splits": splits,
        "sizes": {
            "train": len(tr["digits"]),
            "validation": len(va["digits"]),
            **{k: len(v["digits"]) for k, v in splits["test"].items()},
        },
        "n_conflicting_train": int((tr["colours"] != tr["digits"]).sum()),
        "n_conflicting_val": int((va["colours"] != va["digits"]).sum()),
        "timings": fit["timings"],
        "time_s": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------- run
