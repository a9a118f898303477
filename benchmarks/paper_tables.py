"""Print the paper-scale tables of README/BENCHMARKS from the committed results files, so that they can be
checked without rerunning anything:

    python benchmarks/paper_tables.py [results/hinton2006-mnist.json] [results/colored-mnist-lff.json]
                                      [results/vae-family-mnist.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HINTON_PAPER = {"PCA (30-D)": "13.87", "logistic PCA (30-D)": "8.01", "deep AE, RBM-pretrained, CG": "3.00"}
METHODS = {
    "vanilla": "vanilla",
    "lff": "LfF (Nam et al. 2020)",
    "jtt": "JTT (Liu et al. 2021)",
    "detect_reweight": "detect-then-reweight",
    "synthesis": "bias-swap synthesis (label-free)",
    "ORACLE_group_reweight": "ORACLE: group-balanced reweighting",
    "ORACLE_group_reweight+synthesis": "ORACLE: reweighting + synthesis",
}


def _mean(cell) -> float | None:
    if isinstance(cell, dict):
        return cell.get("mean")
    return cell


def hinton_table(path: Path) -> str:
    doc = json.loads(path.read_text())
    seed = json.loads((path.parent / path.name.replace(".json", "-seed-0.json")).read_text())
    walls = seed.get("wall_time_s_per_row", {})
    lines = [
        "| method | recon_sse, test (10k) | ratio to PCA | probe acc | epoch kept | wall | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in doc["tables"]["test split"]:
        m = row["metrics"]
        label = row["method"]
        fmt = lambda key, spec: "—" if _mean(m.get(key)) is None else format(_mean(m[key]), spec)  # noqa: E731
        epoch = row.get("chosen_per_seed", {}).get("epoch kept", ["—"])[0]
        wall = walls.get(label) or (walls.get("logistic PCA") if label.startswith("logistic") else None)
        lines.append(
            f"| {label} | {fmt('recon_sse', '.2f')} | {fmt('ratio to PCA', '.3f')} | {fmt('probe accuracy', '.4f')} "
            f"| {epoch} | {'—' if wall is None else f'{wall / 60:.0f} min'} | {HINTON_PAPER.get(label, '—')} |"
        )
    return "\n".join(lines)


def lff_table(path: Path) -> str:
    doc = json.loads(path.read_text())
    ratios = [str(r) for r in doc["ratios"]]
    test = next(iter(doc["results"][ratios[0]]["test_sets"]))
    lines = ["| method | " + " | ".join(ratios) + " |", "|---" * (len(ratios) + 1) + "|"]
    for key, label in METHODS.items():
        cells = [100 * doc["results"][r]["test_sets"][test][key]["unbiased"]["mean"] for r in ratios]
        lines.append(f"| {label} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return f"unbiased accuracy (%) on {test}\n\n" + "\n".join(lines)


def _interval(cell) -> str:
    if not isinstance(cell, dict):
        return "—" if cell is None else f"{cell:.2f}"
    ci = cell.get("ci95")
    return f"{cell['mean']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def vae_family_table(path: Path) -> str:
    """Test NLL per model (mean [95% interval] over seeds), the paired differences, the curve's points."""
    doc = json.loads(path.read_text())
    seed_file = path.parent / path.name.replace(".json", "-seed-0.json")  # the per-seed file has the references
    refs = json.loads(seed_file.read_text()) if seed_file.exists() else doc
    paper, pythae = refs.get("paper_nll", {}), refs.get("pythae_nll", {})
    lines = [
        "| model | test NLL (nats) | test ELBO | active units | passes | paper (3,280 passes) | pythae's VAE |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in doc["tables"]["nll"]:
        m, fixed, label = row["metrics"], row.get("fixed", {}), row["model"]
        lines.append(
            f"| {label} | {_interval(m['test NLL'])} | {_interval(m['test ELBO'])} | "
            f"{_interval(m['active units'])} | {fixed.get('passes', '—')} | {paper.get(label, '—')} | "
            f"{pythae.get(label, '—') if label == 'VAE' else '—'} |"
        )
    iwae = next((v for k, v in pythae.items() if k.startswith("IWAE")), None)
    if iwae is not None:
        lines.append(f"\npythae's IWAE reproduction (its README; its own k and budget): {iwae}")
    for d in doc.get("paired_differences", []):
        lines.append(f"\n{d['a']} − {d['b']} (paired by seed): {_interval(d['difference'])} nats")
    curve = ["\n| model, passes | test NLL |", "|---|---|"]
    for row in doc["tables"].get("nll_by_passes", []):
        curve.append(f"| {row['model']} | {_interval(row['metrics']['test NLL'])} |")
    return "\n".join(lines + curve)


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]] or [
        Path("results/hinton2006-mnist.json"),
        Path("results/colored-mnist-lff.json"),
        Path("results/vae-family-mnist.json"),
    ]
    for p in args:
        print(f"## {p}\n")
        table = vae_family_table if "vae-family" in p.name else hinton_table if "hinton" in p.name else lff_table
        print(table(p))
        print()
