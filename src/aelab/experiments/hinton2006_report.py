"""The figures, notes and selection table of the hinton2006 experiment (its recipe is hinton2006.py, its rows
hinton2006_rows.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import papers, report, runs
from ..metrics.codes import encode_all, reconstruct_all, tsne_2d
from .hinton2006_rows import (
    FINE_TUNERS,
    PER_IMAGE,
    QUICK,
    RANDOM,
    TEST,
    Plan,
    State,
    fit_pca,
    lpca_encoder_label,
    lpca_per_image_label,
    pca_label,
    per_image_file,
)


def paper_numbers(plan: Plan) -> dict[str, str]:
    """Our row label -> the paper's number printed beside it (30-D codes only): PCA beside PCA, logistic PCA beside
    the fixed-encoder logistic PCA (the like-for-like row), the deep AE beside the RBM-pretrained fixed-encoder rows."""
    if plan.code != 30:
        return {}
    p = papers.get("hinton2006").numbers
    rows = {pca_label(30): p["PCA"], lpca_encoder_label(30): p["logistic PCA"]}
    return rows | {FINE_TUNERS[f]: p["deep AE"] for f in plan.settings.fine_tuners}


def with_paper(plan: Plan, tables: dict) -> dict:
    """The tables with a "paper" column (the digits as printed; full MNIST, 30-D) where the paper has a number."""
    numbers = paper_numbers(plan)
    if not numbers:
        return tables
    return {t: [{**row, "paper": numbers.get(row["method"])} for row in rows] for t, rows in tables.items()}


def quick_note(plan: Plan) -> str:
    return (
        f"--quick: {plan.train_limit} train images (validation carved from them; the test split whole), "
        f"{plan.pretrain_epochs} RBM epochs per layer, {plan.epochs} Adam epochs, {plan.cg_epochs} CG epoch(s) "
        f"(batches of at most {plan.settings.cg_batch_size}: never a full CG epoch of the dataset), "
        f"{plan.lpca_iter} L-BFGS iterations for logistic PCA and the per-image codes, weight cost "
        f"{plan.grid}, t-SNE maps of {QUICK['tsne']} codes (the full run: every train image, 50 RBM epochs, 80 "
        "epochs, 300 iterations, weight costs {0.0001, 0.001}, 1,000 codes)"
    )


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


def figures(plan: Plan, state: State) -> list:
    """Validation sweeps, reconstructions of the same test digits by every row, the fine-tuning curves, the paper's
    Fig. 3 for 2-D codes, and (settings.figures) t-SNE maps of the first plan.tsne_points test codes of each row.
    PCA is fitted again (cheap, deterministic); logistic PCA and the per-image codes are read back from the files
    their steps wrote, so a resumed run draws the same figures."""
    out, code, d = plan.out, plan.code, state.data
    test_x, test_y = d.test_sets[TEST]
    x_te, y_te = test_x.flatten(1).numpy(), test_y.numpy()
    made = [
        (
            "Validation recon_sse of each weight cost, per row (circled: the chosen one)",
            report.plot_validation_sweeps(state.sweeps, out / "validation_sweeps.png"),
        )
    ]
    pca = fit_pca(state)
    pca_te = pca.transform(x_te)
    # in the table's order: state.runs read back by --resume comes in results.json's (sorted) key order
    chosen = {label: out / state.runs[label] for label in plan.row_order() if label in state.runs}
    codes, recons = codes_and_reconstructions(plan, test_x, x_te, pca, pca_te, chosen)
    made.append(reconstructions_figure(plan, x_te, y_te, test_x.shape[1:], recons))
    histories = {label: runs.read_history(folder) for label, folder in chosen.items()}
    units = {label: report.loss_unit(runs.read_config(folder)) for label, folder in chosen.items()}
    made.append(
        (
            "Fine-tuning curves of the chosen runs (per-image cross-entropy; train solid, validation dotted, test "
            "dashed; the vertical line is the kept epoch)",
            report.plot_curves(histories, out / "curves.png", units=units),
        )
    )
    n = min(plan.tsne_points, len(y_te))
    pretrained = [FINE_TUNERS[f] for f in plan.settings.fine_tuners]
    if code == 2 and pretrained:
        panels = [("PCA: first two components", pca_te[:n, :2])]
        panels += [(f"{label}: 2-D code", codes[label][:n]) for label in pretrained]
        made.append(
            (
                "The paper's Fig. 3: 2-D codes of the test digits by the deep AE beside PCA's first two components",
                report.plot_side_by_side(panels, y_te[:n], out / "fig3.png"),
            )
        )
    if not plan.settings.figures:
        return made
    return made + code_maps(plan, codes, y_te[:n])


def codes_and_reconstructions(plan: Plan, test_x, x_te, pca, pca_te, chosen: dict) -> tuple[dict, dict]:
    """The test codes and reconstructions of every row, in the table's order: raw pixels, PCA, logistic PCA's
    per-image codes (read back), every chosen run, the per-image codes of the fine-tuned deep AEs (read back).
    Returns ({label: codes}, {label: reconstructions})."""
    out, code = plan.out, plan.code
    codes = {"raw pixels": x_te, pca_label(code): pca_te}
    recons = {"PCA": pca.inverse_transform(pca_te)}
    saved, _ = runs.load_state(out / "logistic-pca.safetensors")
    lpca_codes = saved["test_codes"]
    logits = lpca_codes @ saved["components"].t() + saved["bias"]
    codes[lpca_per_image_label(code)] = lpca_codes.cpu().numpy()
    recons["logistic PCA, per-image"] = torch.sigmoid(logits).cpu().numpy()
    models = {label: runs.load_model(folder) for label, folder in chosen.items()}
    for label, model in models.items():
        codes[label] = encode_all(model, test_x).numpy()
        recons[label.replace("logistic PCA, linear encoder", "logistic PCA, encoder")] = (
            reconstruct_all(model, test_x).flatten(1).numpy()
        )
    for label in [FINE_TUNERS[f] for f in plan.settings.fine_tuners]:
        z = runs.load_state(per_image_file(out, label + PER_IMAGE))[0]["test_codes"]
        codes[label + PER_IMAGE] = z.numpy()
        with torch.no_grad():
            recons[label.replace("deep AE, RBM-pretrained", "pretrained") + PER_IMAGE] = torch.sigmoid(
                models[label].decode_logits(z)
            ).numpy()
    return codes, recons


def reconstructions_figure(plan: Plan, x_te, y_te, shape, recons: dict) -> tuple:
    """The first test digit of each class and 6 more drawn at random: the originals, then each row's
    reconstruction."""
    pick = [int(np.flatnonzero(y_te == c)[0]) for c in np.unique(y_te)][:10]
    pick += [int(i) for i in np.random.default_rng(plan.settings.seed).permutation(len(y_te)) if int(i) not in pick][:6]
    image_rows = [x_te[pick].reshape(-1, *shape)] + [recons[k][pick].reshape(-1, *shape) for k in recons]
    return (
        "The same test digits: original, then each row's reconstruction",
        report.plot_image_rows(image_rows, ["original", *recons], plan.out / "reconstructions.png"),
    )


def code_maps(plan: Plan, codes: dict, labels) -> list:
    """A map of the first len(labels) test codes of every row: the codes themselves when 2-D, else their t-SNE."""
    out, n, made = plan.out, len(labels), []
    for name, c in codes.items():
        emb = (
            c[:n]
            if c.shape[1] == 2
            else tsne_2d(c[:n], plan.settings.seed, f"{out.name}/{name}" if plan.progress else None)
        )
        what = "the codes themselves (2-D)" if c.shape[1] == 2 else "t-SNE"
        slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
        made.append(
            (
                f"{name}: {what} of the first {n} test codes",
                report.plot_scatter(emb, labels, out / f"map-{slug}.png", name),
            )
        )
    return made


def protocol_differences(plan: Plan, splits: dict) -> list[str]:
    """Every way this run's protocol differs from the paper's (results.json and the report)."""
    s, p = plan.settings, papers.get("hinton2006")
    grid = ", ".join(f"{w:g}" for w in plan.grid)
    cg = "CG" if "cg" in s.fine_tuners else None
    differences = [
        f"Training digits: {splits['train']} of the dataset's train split train the networks and {splits['validation']}"
        " are held out as a validation split that chooses each run's epoch (best validation loss, patience "
        f"{s.patience}) and each row's weight cost; the paper trained on all 60,000 MNIST training digits and "
        "reported the end of training."
        + (f" --quick: only the first {plan.train_limit} train images." if s.quick else ""),
        f"Data: {s.dataset}"
        + (" (the paper's MNIST)." if s.dataset == "mnist" else "; the paper's numbers are MNIST's."),
        f"RBM pretraining: {plan.pretrain_epochs} CD-1 epochs per layer (the paper: 50; its public code: 10).",
        f"Fine-tuning: {'conjugate gradients for at most ' + str(plan.cg_epochs) + ' epochs (the paper: 200); ' if cg else 'no conjugate-gradient row (the paper fine-tuned by conjugate gradients, 200 epochs); '}"
        f"Adam (lr 1e-3, batch {s.batch_size or 100}) for at most {plan.epochs} epochs, which the paper did not "
        "use; the random-init and fixed-encoder logistic PCA rows are trained by Adam too.",
        f"Weight cost in fine-tuning: chosen per row from {{{grid}}} on validation; the paper's is in its supporting "
        "material, which was not read.",
        "Logistic PCA: how the paper fitted it is in its supporting material, which was not read. Here two ways: a "
        "linear encoder trained jointly with the logistic decoder by the deep AE's protocol (like for like with the "
        f"deep AE, which also encodes in one pass; the row beside the paper's {p.numbers['logistic PCA']}), and "
        f"per-image codes ({plan.lpca_iter} L-BFGS iterations fit codes, V and b on the train split; each test "
        "image's code solved with V and b fixed).",
        "Per-image codes of the deep AE (its decoder fixed, each test image's code optimised by L-BFGS from the "
        f"encoder's code, at most {plan.lpca_iter} iterations) are not in the paper: those rows do not encode in one "
        "pass, so they are not comparable with the paper's numbers; their probe is not computed.",
        f"Layers {'-'.join(map(str, plan.sizes))}"
        + ("" if plan.sizes == [784, 1000, 500, 250, 30] else " (the paper: 784-1000-500-250-30)")
        + ".",
        "Seeds: every seed repeats the whole protocol (the paper reports one run).",
    ]
    return differences


def notes(plan: Plan, state: State, splits: dict, pretrain_json: Path) -> list[str]:
    """The report's notes: the data and splits, what was trained how, the paper's numbers and their source, how this
    differs from the paper, what the evaluation cost."""
    s, p = plan.settings, papers.get("hinton2006")
    code = plan.code
    pre = runs.read_json(pretrain_json) if pretrain_json.is_file() else None
    pre_time = "" if pre is None else f", {pre['time_s']:.0f} s"
    timing = state.timing()
    lines = [
        f"Data: {s.dataset}: {splits['train']} train images, {splits['validation']} validation images carved from "
        f"train (stratified, seed 0), {splits['test']} test images. The RBMs and autoencoders trained on train only; "
        "the validation split chose each run's epoch and each row's weight cost (the lowest validation recon_sse); "
        "PCA, logistic PCA and the logistic probes were fitted on train + validation, the probes' C chosen on "
        "validation; the test split was scored once.",
        splits.get("official_test", {}).get("note", ""),
        f"Rows. {pca_label(code)}: PCA fitted on the train split. {lpca_encoder_label(code)}: the deep-ae model with "
        f"layers {plan.sizes[0]}-{code} (z = x W + c, x_hat = sigmoid(z V^T + b): logistic PCA's decoder with a "
        "linear encoder), random init, trained exactly as the deep AE rows (Adam, cross-entropy, weight cost and "
        f"epoch chosen on validation). {lpca_per_image_label(code)}: aelab.models.logistic_pca (codes, V and b "
        f"jointly by L-BFGS, {plan.lpca_iter} iterations, on the train split), each test image's code solved with V "
        f"and b fixed. {RANDOM}: Adam from random weights. RBM-pretrained rows: CD-1, {plan.pretrain_epochs} epochs "
        "per layer (Hinton's settings: lr 0.1, weight cost 2e-4, momentum 0.5 then 0.9, batch 100; linear top layer "
        f"lr 0.001{pre_time}), pretrained once and shared by the "
        f"fine-tuners: conjugate gradients (Polak-Ribière, 3 line searches per batch of {s.cg_batch_size}, at most "
        f"{plan.cg_epochs} epochs) and Adam (lr 1e-3, batch {s.batch_size or 100}, at most {plan.epochs} epochs). "
        f"'{PER_IMAGE.strip(', ')}' rows: the row's decoder fixed, each test image's {code}-D code optimised by L-BFGS "
        f"on its own cross-entropy (aelab.metrics.per_image, at most {plan.lpca_iter} iterations, from the "
        "encoder's code); test split only, no probe.",
        f"The paper's numbers ({p.unit}; the 'paper' column, 30-D codes only): deep AE {p.numbers['deep AE']}, "
        f"logistic PCA {p.numbers['logistic PCA']}, PCA {p.numbers['PCA']}. Source: {p.cite()}. Not read: "
        f"{p.missing}.",
        "How this differs from the paper: " + " ".join(protocol_differences(plan, splits)),
        f"Cost: training (RBM pretraining, every fine-tuning run, logistic PCA's fit) {timing['training_time_s']:.0f} s; "
        f"evaluation (validation scores, PCA, probes, evaluate of each chosen run, per-image codes) "
        f"{timing['evaluation_time_s']:.0f} s"
        + (f", {timing['evaluation_to_training']:.2f} of the training" if timing["evaluation_to_training"] else "")
        + "; per step in results.json (phase_times_s). Steps finished before a --resume keep the times they took.",
    ]
    return [line for line in lines if line]


def write(plan: Plan, results: dict, figures: list, notes: list[str]) -> Path:
    """results.json (the recipe's numbers plus what every multiseed summary reads) and the report."""
    out = plan.out
    tables = results["tables"]
    p = papers.get("hinton2006")
    results = {
        **results,
        "figures": [[caption, str(Path(path).relative_to(out))] for caption, path in figures],
        "notes_for_summary": notes,
        "paper": {
            "key": p.key,
            "citation": p.citation,
            "source": p.source,
            "unit": p.unit,
            "numbers": dict(p.numbers),
            "secondary": p.secondary,
        },  # fmt: skip
        "paper_recon_sse": p.values(),
    }
    runs.write_json(out / "results.json", results)
    return report.write_report(
        out,
        results["title"],
        [(f"{plan.code}-D codes, {name}", rows) for name, rows in tables.items()]
        + [("Selection on the validation split", sweep_rows(results["sweeps"]))],
        figures,
        notes,
    )
