"""The figures and the selection table of the hinton2006 experiment (its recipe is hinton2006.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import report, runs
from ..metrics.codes import encode_all, reconstruct_all, tsne_2d


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
