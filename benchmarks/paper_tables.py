"""Print the paper-scale tables of README/BENCHMARKS from the committed results files, so that they can be
checked without rerunning anything:

    python benchmarks/paper_tables.py [results/hinton2006-mnist-40ep.json] [results/colored-mnist-lff.json]
                                      [results/vae-family-mnist.json] [results/rbm-likelihood-mnist.json]
                                      [results/contractive-mnist.json] [results/colored-mnist-lff-99-995]

Seed groups: runs of one table made one seed at a time are committed as `<stem>-seed-<N>.json` (e.g.
results/colored-mnist-lff-99-995-seed-0.json, -seed-1.json, -seed-2.json). Such a group is merged: every cell is
printed as the mean [95% interval] over the seeds (Student's t, aelab.metrics.intervals.summarize, clipped to
what the quantity can be), with the number of seeds and the per-seed values. Without arguments the script prints
the three tables above and every group in results/ with at least two seed files; an argument that is a stem
(`results/colored-mnist-lff-99-995`) or one seed file of a group merges that group, whatever its size.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from aelab import papers
from aelab.metrics.intervals import decimals, metric_range, summarize

# settings, not results, in a per-seed file's rows (a multi-seed results.json keeps them under "fixed")
SETTINGS = ("method", "model", "fixed", "chosen_per_seed", "code size", "passes", "k (training)", "NLL k",
            "NLL test images")  # fmt: skip
SEED_FILE = re.compile(r"^(?P<stem>.+)-seed-(?P<seed>\d+)\.json$")

# the paper's numbers beside the like-for-like rows (aelab.papers): PCA, the fixed-encoder logistic PCA, the
# RBM-pretrained deep AE with its fixed encoder; never beside a per-image-codes row
_H06 = papers.get("hinton2006").numbers
HINTON_PAPER = {
    "PCA (30-D)": _H06["PCA"],
    "logistic PCA, linear encoder (30-D)": _H06["logistic PCA"],
    "deep AE, RBM-pretrained, CG": _H06["deep AE"],
    "deep AE, RBM-pretrained, Adam": _H06["deep AE"],
}
# the label an earlier version gave the logistic PCA whose test codes are solved per image
RENAMED = {"logistic PCA (30-D)": "logistic PCA, per-image codes (30-D)"}
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
        label = RENAMED.get(row["method"], row["method"])
        fmt = lambda key, spec: "—" if _mean(m.get(key)) is None else format(_mean(m[key]), spec)  # noqa: E731
        epoch = row.get("chosen_per_seed", {}).get("epoch kept", ["—"])[0]
        wall = walls.get(row["method"]) or (walls.get("logistic PCA") if label.startswith("logistic") else None)
        lines.append(
            f"| {label} | {fmt('recon_sse', '.2f')} | {fmt('ratio to PCA', '.3f')} | {fmt('probe accuracy', '.4f')} "
            f"| {epoch} | {'—' if wall is None else f'{wall / 60:.0f} min'} | {HINTON_PAPER.get(label, '—')} |"
        )
    return "\n".join(lines)


def rbm_table(path: Path) -> str:
    """Salakhutdinov & Murray 2008: log Z by AIS (and exactly for the small row), log p of train and test images."""
    doc = json.loads(path.read_text())
    end = lambda v: "open" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [
        "| RBM | log Z, AIS [±3 std] | log Z, exact | AIS ESS | train log p | test log p [interval] | paper, test log p |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        exact = "—" if r["log Z exact"] is None else f"{r['log Z exact']:.3f}"
        paper = (doc.get("paper") or {}).get(r["RBM"], {}).get("test log p", "—")
        lines.append(
            f"| {r['RBM']} | {r['log Z (AIS)']:.3f} [{end(r['log Z low'])}, {end(r['log Z high'])}] | {exact} "
            f"| {r['AIS ESS']:.1f} | {r['train log p']:.2f} | {r['test log p']:.2f} [{end(r['test log p low'])}, "
            f"{end(r['test log p high'])}] | {paper} |"
        )
    sources = "; ".join(f"{k}: {v['source']}" for k, v in (doc.get("paper") or {}).items())
    return "\n".join(lines + ["", f"The paper's numbers: {sources}", *doc.get("warnings", [])])


def rifai_table(path: Path) -> str:
    """Rifai et al. 2011, Table 1: the fine-tuned MLP's test error (%) of each encoder beside the paper's (aelab.papers),
    with the linear probe, ‖J_f(x)‖_F and SAT beside it; mean [95% interval] over seeds where there are several."""
    doc = json.loads(path.read_text())
    paper = papers.get("rifai2011")
    pct = lambda cell: _interval({**cell, "mean": 100 * cell["mean"], "ci95": cell["ci95"] and [100 * v for v in cell["ci95"]]})  # noqa: E731  # fmt: skip
    lines = [
        "| model | chosen | fine-tuned test error % | Rifai et al. % | probe acc | mean ‖J‖_F | SAT % | Rifai SAT % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        m, label = row["metrics"], {"RBM": "RBM-binary"}.get(row["model"], row["model"])
        lines.append(
            f"| {row['model']} | {row['setting']} | {pct(m['finetune_error'])} | "
            f"{paper.numbers.get(f'MNIST {label}', '—')} | {m['probe_accuracy']['mean']:.4f} | "
            f"{m['jacobian_fro_mean']['mean']:.2f} | {pct(m['saturation'])} | "
            f"{paper.numbers.get(f'MNIST {label} SAT %', '—')} |"
        )
    notes = [d["verdict"] for d in doc.get("paired_differences", [])]
    return "\n".join(lines + ["", f"The paper's numbers: {paper.cite()}", *notes])


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
    """Test NLL per model (mean [95% interval] over seeds), the paired differences, the curve's points. pythae's
    published figures are another benchmark (statically binarised MNIST): a note under the table, not a column."""
    doc = json.loads(path.read_text())
    seed_file = path.parent / path.name.replace(".json", "-seed-0.json")  # the per-seed file has the references
    refs = json.loads(seed_file.read_text()) if seed_file.exists() else doc
    paper = refs.get("paper_nll", {})
    pythae = papers.get("pythae")  # its record, not results' copy: older files call its IWAE (50 samples) k=5
    lines = [
        "| model | test NLL (nats) | test ELBO | active units | passes | Burda et al. 2016, Table 1 (3,280 passes) |",
        "|---|---|---|---|---|---|",
    ]
    for row in doc["tables"]["nll"]:
        m, fixed, label = row["metrics"], row.get("fixed", {}), row["model"]
        lines.append(
            f"| {label} | {_interval(m['test NLL'])} | {_interval(m['test ELBO'])} | "
            f"{_interval(m['active units'])} | {fixed.get('passes', '—')} | {paper.get(label, '—')} |"
        )
    lines.append(f"\nBurda et al. 2016: {papers.get('burda2016').cite()}")
    theirs = ", ".join(f"{k} {v}" for k, v in pythae.values().items())
    lines.append(
        f"\npythae's published test NLL ({theirs} nats) is on statically binarised MNIST (its VAE's NLL with 200 "
        "importance samples, its IWAE's with 5000), a different benchmark from Burda's dynamically binarised "
        f"MNIST, so comparable with neither column; {pythae.cite()}"
    )
    for d in doc.get("paired_differences", []):
        lines.append(f"\n{d['a']} − {d['b']} (paired by seed): {_interval(d['difference'])} nats")
    curve = ["\n| model, passes | test NLL |", "|---|---|"]
    for row in doc["tables"].get("nll_by_passes", []):
        curve.append(f"| {row['model']} | {_interval(row['metrics']['test NLL'])} |")
    return "\n".join(lines + curve)


def seed_group(stem: Path) -> dict[int, Path]:
    """The files `<stem>-seed-<N>.json` beside `stem`, by seed."""
    files = {}
    for f in stem.parent.glob(f"{stem.name}-seed-*.json"):
        m = SEED_FILE.match(f.name)
        if m and m["stem"] == stem.name:
            files[int(m["seed"])] = f
    return dict(sorted(files.items()))


def seed_groups(folder: Path, min_seeds: int = 2) -> list[Path]:
    """The stems in `folder` with at least `min_seeds` seed files."""
    stems = {folder / m["stem"] for f in folder.glob("*-seed-*.json") if (m := SEED_FILE.match(f.name))}
    return sorted(s for s in stems if len(seed_group(s)) >= min_seeds)


def _values(cell) -> list[float]:
    """The per-seed values of a cell: a number, or a summary {mean, values, ...} of a multi-seed results.json."""
    if isinstance(cell, dict):
        return [float(v) for v in cell.get("values") or [cell["mean"]]]
    if isinstance(cell, bool) or not isinstance(cell, (int, float)):
        return []
    return [float(cell)]


def _cells(doc: dict) -> tuple[str, list[str], dict[tuple[str, str, str], list[float]], list[str]]:
    """(what the cells are, columns, {(table, row, column): per-seed values}, rows in order) of one seed's file:
    a debias-classifier results.json (unbiased accuracy in %, a column per aligned ratio) or a file of `tables`
    (a row per method or model, a column per metric)."""
    cells: dict[tuple[str, str, str], list[float]] = {}
    if "ratios" in doc and "results" in doc:
        ratios = [str(r) for r in doc["ratios"]]
        test = next(iter(doc["results"][ratios[0]]["test_sets"]))
        for r in ratios:
            for key, per_metric in doc["results"][r]["test_sets"][test].items():
                cells[("", METHODS.get(key, key), r)] = [100 * v for v in _values(per_metric["unbiased"])]
        found = list(doc["results"][ratios[0]]["test_sets"][test])
        rows = [
            METHODS.get(k, k) for k in [*(k for k in METHODS if k in found), *(k for k in found if k not in METHODS)]
        ]
        return f"unbiased accuracy (%) on {test}", ratios, cells, rows
    columns: list[str] = []
    rows: list[str] = []
    for table, table_rows in doc["tables"].items():
        for row in table_rows:
            label = row.get("method", row.get("model", "?"))
            metrics = row.get("metrics", {k: v for k, v in row.items() if k not in SETTINGS})
            if label not in rows:
                rows.append(label)
            for col, cell in metrics.items():
                if vals := _values(cell):
                    cells[(table, label, col)] = vals
                    if col not in columns:
                        columns.append(col)
    return "", columns, cells, rows


def _summary(values: list[float], column: str) -> dict:
    bounds = (0.0, 100.0) if _is_percent(column) else metric_range(column)
    return summarize(values, bounded=bounds)


def _is_percent(column: str) -> bool:
    return re.fullmatch(r"0?\.\d+|1(\.0)?", column) is not None  # an aligned ratio: the cell is an accuracy in %


def _merged_cell(s: dict, percent: bool) -> str:
    d = 1 if percent else decimals(s)  # accuracies in % at the one-seed tables' precision
    if s["ci95"] is None:
        return f"{s['mean']:.{d}f} (1 seed)"
    return f"{s['mean']:.{d}f} [{s['ci95'][0]:.{d}f}, {s['ci95'][1]:.{d}f}]"


def merged_table(stem: Path) -> str:
    """Every cell of a seed group as mean [95% interval] over its seeds, then the per-seed values."""
    group = seed_group(stem)
    if not group:
        raise SystemExit(f"no files {stem}-seed-<N>.json")
    what, columns, rows = "", [], []
    per_seed: dict[int, dict] = {}
    for seed, f in group.items():
        doc = json.loads(f.read_text())
        what, cols, cells, seed_rows = _cells(doc)
        columns += [c for c in cols if c not in columns]
        rows += [r for r in seed_rows if r not in rows]
        per_seed[seed] = cells
    keys = list(dict.fromkeys(k for cells in per_seed.values() for k in cells))
    tables = list(dict.fromkeys(k[0] for k in keys))
    seeds = list(group)
    methods: set[str] = set()
    out = []
    for table in tables:
        used = [c for c in columns if any(k[0] == table and k[2] == c for k in keys)]
        head = ["| " + ("method" if what else table) + " | " + " | ".join(used) + " |", "|---" * (len(used) + 1) + "|"]
        body, vals_body = [], []
        for row in rows:
            if not any(k[0] == table and k[1] == row for k in keys):
                continue
            merged, listed = [], []
            for c in used:
                values = [v for s in seeds for v in per_seed[s].get((table, row, c), [])]
                if not values:
                    merged.append("—")
                    listed.append("—")
                    continue
                summary = _summary(values, c)
                note = f" (n={len(values)})" if len(values) != len(seeds) else ""
                methods.add(summary["method"])
                merged.append(_merged_cell(summary, _is_percent(c)) + note)
                d = 2 if _is_percent(c) else 0 if all(v.is_integer() for v in values) else decimals(summary) + 1
                listed.append(", ".join(f"{v:.{d}f}" for v in values))
            body.append(f"| {row} | " + " | ".join(merged) + " |")
            vals_body.append(f"| {row} | " + " | ".join(listed) + " |")
        out += ["", *head, *body, "", f"per-seed values (seeds {', '.join(map(str, seeds))}):", "", *head, *vals_body]
    head = (
        f"{what + ', ' if what else ''}mean [95% interval] over {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
        f"interval: {'; '.join(sorted(methods))}"
    )
    walls = {s: json.loads(group[s].read_text()).get("wall_time_s") for s in seeds}
    if all(isinstance(w, (int, float)) for w in walls.values()):
        out += [
            "",
            "wall time per seed (results' wall_time_s): "
            + ", ".join(f"seed {s} {int(w // 60)} min {int(w % 60)} s" for s, w in walls.items()),
        ]
    return "\n".join([head, *out])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].rstrip(":") + ".",
        epilog="A results.json of hinton2006, contractive, debias-classifier, rbm-likelihood or vae-family, a seed file "
        "or a group's stem.",
    )
    parser.add_argument("paths", nargs="*", type=Path, help="results files or seed groups (default: results/)")
    args = parser.parse_args(argv)
    paths = args.paths or [
        Path("results/hinton2006-mnist-40ep.json"),
        Path("results/colored-mnist-lff.json"),
        Path("results/vae-family-mnist.json"),
        Path("results/rbm-likelihood-mnist.json"),
        *([Path("results/contractive-mnist.json")] if Path("results/contractive-mnist.json").exists() else []),
        *seed_groups(Path("results")),
    ]
    for p in paths:
        if not p.exists() and not seed_group(p):
            parser.error(f"{p}: no such file, and no {p}-seed-<N>.json")
        m = SEED_FILE.match(p.name)
        if m or (not p.exists() and seed_group(p)):
            stem = p.parent / m["stem"] if m else p
            print(f"## {stem}-seed-<N>.json, merged\n")
            print(merged_table(stem))
        else:
            print(f"## {p}\n")
            kinds = {
                "vae-family": vae_family_table,
                "hinton": hinton_table,
                "rbm-likelihood": rbm_table,
                "contractive": rifai_table,
            }
            table = next((f for key, f in kinds.items() if key in p.name), None)
            if table is None:  # by what the file holds
                table = rifai_table if "reference_rifai2011_table1" in json.loads(p.read_text()) else lff_table
            print(table(p))
        print()


if __name__ == "__main__":
    main()
