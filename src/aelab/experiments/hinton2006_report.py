"""The figures, notes and selection table of the hinton2006 experiment (its recipe is hinton2006.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import report, runs
from ..metrics.codes import encode_all, reconstruct_all, tsne_2d


def budget(settings) -> tuple[int, int, int]:
    """(Adam epochs, conjugate-gradient epochs, RBM epochs per layer) of these settings."""
    epochs = settings.epochs or (15 if settings.quick else 80)
    return epochs, settings.cg_epochs or epochs, settings.pretrain_epochs or (5 if settings.quick else 50)


def sweep_rows(sweeps: dict) -> list[dict]:
    return [
        {
            "row": label,
            "weight cost": wd,
            "validation recon_sse": score,
            "epoch kept": s["best_epochs"][i],
            "chosen": "✓" if i == s["chosen_index"] else "",
        }
        for label, s in sweeps.items()
        for i, (wd, score) in enumerate(zip(s["grid"], s["scores"]))
    ]


def figures(settings, out: Path, chosen_runs: dict, sweeps: dict, pca, lpca, test_x, test_y, x_tr, code) -> list:
    """Validation sweeps, reconstructions of the same test digits by every method, the fine-tuning curves, the
    paper's Fig. 3 for 2-D codes, and t-SNE maps of the codes (settings.figures only). PCA and logistic PCA
    were fitted on train only."""
    x_te, y_te = test_x.flatten(1).numpy(), test_y.numpy()
    made = [
        (
            "Validation recon_sse of each weight cost, per row (circled: the chosen one)",
            report.plot_validation_sweeps(sweeps, out / "validation_sweeps.png"),
        )
    ]
    pca_te = pca.transform(x_te)
    codes = {"raw pixels": x_te, f"PCA ({code}-D)": pca_te}
    lpca_te = lpca.transform(x_te)
    recons = {"PCA": pca.inverse_transform(pca_te), "logistic PCA": lpca.inverse_transform(lpca_te).cpu().numpy()}
    codes[f"logistic PCA ({code}-D)"] = lpca_te.cpu().numpy()
    for label, folder in chosen_runs.items():
        model = runs.load_model(folder)
        codes[label] = encode_all(model, test_x).numpy()
        recons[label] = reconstruct_all(model, test_x).flatten(1).numpy()
    pick = [int(np.flatnonzero(y_te == c)[0]) for c in np.unique(y_te)][:10]
    pick += [int(i) for i in np.random.default_rng(settings.seed).permutation(len(y_te)) if int(i) not in pick][:6]
    shape = test_x.shape[1:]
    image_rows = [x_te[pick].reshape(-1, *shape)] + [recons[k][pick].reshape(-1, *shape) for k in recons]
    made.append(
        (
            "The same test digits: original, then each method's reconstruction",
            report.plot_image_rows(image_rows, ["original", *recons], out / "reconstructions.png"),
        )
    )
    histories = {label: runs.read_history(folder) for label, folder in chosen_runs.items()}
    units = {label: report.loss_unit(runs.read_config(folder)) for label, folder in chosen_runs.items()}
    made.append(
        (
            "Fine-tuning curves of the chosen runs (per-image cross-entropy; train solid, validation dotted, test "
            "dashed; the vertical line is the kept epoch)",
            report.plot_curves(histories, out / "curves.png", units=units),
        )
    )
    n = min(2000, len(y_te))
    pretrained = [label for label in chosen_runs if "pretrained" in label]
    if code == 2 and pretrained:
        panels = [("PCA: first two components", pca_te[:n, :2])]
        panels += [(f"{label}: 2-D code", codes[label][:n]) for label in pretrained]
        made.append(
            (
                "The paper's Fig. 3: 2-D codes of the test digits by the deep AE beside PCA's first two components",
                report.plot_side_by_side(panels, y_te[:n], out / "fig3.png"),
            )
        )
    if not settings.figures:
        return made
    progress = not settings.no_progress
    for name, c in codes.items():
        emb = c[:n] if c.shape[1] == 2 else tsne_2d(c[:n], settings.seed, f"{out.name}/{name}" if progress else None)
        what = "the codes themselves (2-D)" if c.shape[1] == 2 else "t-SNE"
        slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
        made.append(
            (f"{name}: {what} of {n} test codes", report.plot_scatter(emb, y_te[:n], out / f"map-{slug}.png", name))
        )
    return made


def notes(
    settings, config: dict, splits: dict, official_note: str, sizes: list[int], grid: list, pre: dict
) -> list[str]:
    """The report's notes: the data and splits, what was trained how, and how it differs from the paper."""
    epochs, cg_epochs, pretrain_epochs = budget(settings)
    code = sizes[-1]
    return [
        f"Data: {config['dataset']}: {splits['train']} train images, {splits['validation']} validation images "
        f"carved from train (stratified, seed 0), {splits['test']} test images. The RBMs and autoencoders trained "
        "on train only; the validation split chose each run's epoch (the best validation loss, patience "
        f"{settings.patience}) and each row's weight cost (the lowest validation recon_sse); PCA, logistic PCA and "
        "the logistic probes were fitted on train + validation, the probes' C chosen on validation (each probe "
        "fitted on train minus validation); the test split was scored once.",
        official_note,
        f"Architecture {'-'.join(map(str, sizes))}, logistic units, linear code layer. RBM pretraining (once, "
        f"shared by the fine-tuners): CD-1, {pretrain_epochs} epochs per layer, Hinton's settings (lr 0.1, weight "
        "cost 2e-4, momentum 0.5 then 0.9, batch 100; a linear top layer with lr 0.001), "
        f"{pre['time_s']:.0f} s. Fine-tuning on the cross-entropy loss plus the weight cost chosen from {grid}: "
        f"conjugate gradients (Polak-Ribière, 3 line searches per batch of {settings.cg_batch_size}) for at most "
        f"{cg_epochs} epochs; Adam (lr 1e-3, batch {settings.batch_size or 100}) for at most "
        f"{epochs} epochs. The random-init row is fine-tuned by Adam. Logistic PCA: {code} components, "
        f"L-BFGS ({settings.logistic_pca_iter} iterations) on the Bernoulli likelihood of the grey levels.",
        "How this differs from the paper: it trained on all 60,000 training digits (no validation split, no "
        "early stopping), 50 RBM epochs per layer, 200 epochs of conjugate gradients, and reported one run; here "
        f"{splits['train']} training digits, at most {cg_epochs} CG epochs with the epoch and "
        "weight cost chosen on validation, and Adam as a second fine-tuner. Its numbers (full MNIST, 30-D): deep "
        "AE 3.00, logistic PCA 8.01, PCA 13.87 (recon_sse).",
    ]


def write(settings, out: Path, results: dict, figures: list, notes: list[str]) -> Path:
    """results.json (the recipe's numbers plus what every multiseed summary reads) and the report."""
    from .hinton2006 import PAPER

    title = "Hinton & Salakhutdinov (2006): deep autoencoders vs PCA and logistic PCA"
    tables = results["tables"]
    results = {
        "experiment": "hinton2006",
        "title": title,
        "selection_split": "validation",
        "selection": "per row, the weight cost with the lowest validation recon_sse; per run, the epoch with the "
        "lowest validation loss",
        **results,
        "table_order": list(tables),
        "figures": [[caption, str(Path(path).relative_to(out))] for caption, path in figures],
        "notes_for_summary": notes,
        "paper_recon_sse": PAPER,
        "fine_tuners": settings.fine_tuners,
        "device": settings.device,
    }
    runs.write_json(out / "results.json", results)
    code = results["layers"][-1]
    return report.write_report(
        out,
        title,
        [(f"{code}-D codes, {name}", rows) for name, rows in tables.items()]
        + [("Selection on the validation split", sweep_rows(results["sweeps"]))],
        figures,
        notes,
    )
