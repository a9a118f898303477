"""results.json and the report of `aelab experiment rbm-likelihood`: the table, the paper's numbers with where each was
read, the paper's protocol as far as it could be read, and every difference from ours."""

from __future__ import annotations

from pathlib import Path

from .. import papers, report, runs

# The paper's numbers come from aelab.papers, with where each was read: Salakhutdinov & Murray's own table was not
# among the sources that could be searched, so only what a source that was read quotes is shown; every other cell of
# the paper's columns is left empty rather than recalled.
_SM = papers.get("salakhutdinov2008")
PAPER = {label.removesuffix(" test"): {"test log p": _SM.value(label), "source": _SM.cite()} for label in _SM.numbers}
PAPER_MISSING = f"Not shown, because no readable source gave them: {_SM.missing}; and any PCD (Tieleman 2008) row."
# What was read about the paper's protocol, and where (Salakhutdinov's AIS code, which his demo scripts tie to the
# paper); what could not be read is said so.
PAPER_PROTOCOL = {
    "AIS": "100 runs; beta = [0:1/1000:0.5 0.5:1/10000:0.9 0.9:1/100000:1.0] (14,500 steps; 0.5 and 0.9 appear twice); "
    "base-rate model from the training data; log Z +/- 3 std of the mean weight (RBM_AIS.m and its demo script, "
    "read in github.com/surban/ruslan-ais, RBM_AIS.m, and a copy of Salakhutdinov's demo for CD25(500))",
    "base-rate smoothing": "p_i = (n_i + 5 x number of batches) / (N + 5 x number of batches), i.e. 5 'on' counts per "
    "batch of 100 images (base_rate.m, read as an excerpt without its repository)",
    "training": "Salakhutdinov's rbm.m as mirrored (and marked 'slightly modified') in github.com/surban/ruslan-ais: "
    "lr 0.05, weight cost 2e-4, momentum 0.5 then 0.9 after epoch 5, every batch binarised afresh "
    "(data > rand), CD-T with sampled visible states; not shown to be the paper's settings",
    "not read": "the paper's text: its epochs, learning-rate schedule, batch size, binarisation and PCD settings",
}


def ours(settings: dict) -> dict:
    return {
        "data": f"{settings['dataset']}, {'all' if not settings['train_limit'] else settings['train_limit']} train "
        "images (no validation split: nothing is chosen), the test split; binarize=static: one fixed Bernoulli draw "
        "of each split (aelab.data.binarize, seeds 20080101 train / 20080102 test)",
        "training": f"RBM.fit: {settings['epochs']} epoch(s) for every row, batches of {settings['cd_batch_size']}, "
        f"lr {settings['cd_lr']:g}, weight cost {settings['weight_cost']:g} (on W), momentum 0.5 for 5 epochs then "
        f"0.9, W = {settings.get('init_std', 0.1):g} N(0, 1) and zero biases at the start; CD ends at the visible probabilities (Hinton's "
        f"mean-field end), PCD keeps {settings['cd_batch_size']} chains and ends at visible samples (Tieleman); seed "
        f"{settings['seed']}",
        "AIS": f"{settings['ais_runs']} runs, {settings['ais_betas']} beta steps in the paper's proportions, base "
        "rate (n_i + 0.05 N) / (N + 0.1 N) from the train images, seed as above; exact log Z of the small row by "
        "enumerating its hidden units (aelab.metrics.rbm_likelihood)",
    }


def differences(settings: dict) -> list[str]:
    full = settings["ais_runs"] == 100 and settings["ais_betas"] == 14_500
    return [
        f"Budget: {settings['epochs']} CD epoch(s) for every row (the paper's epochs could not be read).",
        "Binarisation: one fixed draw of the train images; the mirrored rbm.m redraws every batch.",
        f"Learning rate {settings['cd_lr']:g} for every row and no decay (the mirrored rbm.m: 0.05; at 0.05 the 25-unit "
        "RBM grew hidden biases to 47 and AIS fell 3.7 nats below its exact log Z); PCD with the same rate "
        "(Tieleman 2008 decays it; not read here).",
        "CD's last visible state: probabilities here (Hinton's rbm.m), samples in the mirrored rbm.m.",
        f"Initial weights {settings.get('init_std', 0.1):g} N(0, 1) (the mirrored rbm.m: 0.01 scale; Hinton's: 0.1).",
        "Base-rate smoothing: 5% pseudo-counts on both 'on' and 'off' here, on 'on' only in base_rate.m.",
        "AIS: the paper's 100 runs and 14,500 betas, each beta once (the Matlab schedule repeats 0.5 and 0.9)."
        if full
        else f"AIS: {settings['ais_runs']} runs x {settings['ais_betas']} betas (the paper: 100 x 14,500).",
    ]


def quick_note(settings: dict) -> str:
    return (
        f"--quick: {settings['dataset']}, {settings['epochs']} CD epoch(s) per row, the exact row with "
        f"{settings['small_hidden']} hidden units, AIS {settings['ais_runs']} runs x {settings['ais_betas']} betas "
        "(the full run: mnist 60,000 / 10,000, 50 epochs, 25 units, 100 runs x 14,500 betas)"
    )


def _interval(row: dict, what: str) -> str:
    """[low, high] of a number's AIS interval; an end that does not exist (the weights' interval reaches 0) is inf."""
    low, high = row.get(f"{what} low"), row.get(f"{what} high")
    return f"[{'-inf' if low is None else f'{low:.2f}'}, {'inf' if high is None else f'{high:.2f}'}]"


def tables(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    log_p = []
    log_z = []
    for r in rows:
        paper = PAPER.get(r["RBM"], {})
        log_p.append(
            {
                "RBM": r["RBM"],
                "train log p (AIS)": r["train log p"],
                "train interval": _interval(r, "train log p"),
                "test log p (AIS)": r["test log p"],
                "test interval": _interval(r, "test log p"),
                "train log p (exact)": r["train log p exact"],
                "test log p (exact)": r["test log p exact"],
                "paper test log p": paper.get("test log p"),
            }
        )
        log_z.append(
            {
                "RBM": r["RBM"],
                "log Z (AIS)": r["log Z (AIS)"],
                "interval (±3 std)": _interval(r, "log Z"),
                "log Z (exact)": r["log Z exact"],
                "AIS ESS": r["AIS ESS"],
                "CD epochs": r["CD epochs"],
                "train / test images": f"{r['train images']} / {r['test images']}",
                "CD time (s)": r["cd_time_s"],
            }
        )
    return [
        ("Average log-probability (nats per image); its interval from the AIS interval of log Z (±3 std)", log_p),
        ("log Z", log_z),
    ]


def warnings(rows: list[dict], ais_runs: int) -> list[str]:
    """A row whose AIS did not settle: its log Z interval open (the weights' mean minus 3 standard errors is not
    positive) or an effective sample size below a tenth of the runs. Its numbers are estimates without a bound."""
    lines = []
    for r in rows:
        open_end = r.get("log Z low") is None or r.get("log Z high") is None
        ess = r.get("AIS ESS")
        low_ess = isinstance(ess, (int, float)) and ess < 0.1 * ais_runs
        if open_end or low_ess:
            lines.append(
                f"AIS did not settle for {r['RBM']}: effective sample size {ess:.1f} of {ais_runs} runs"
                + (", its log Z interval open" if open_end else "")
                + ": its log Z and log p are estimates without a usable bound (AIS tends to underestimate log Z, "
                "which overstates log p); more runs or betas (--ais-runs, --ais-betas) would tighten them."
            )
    return lines


def reading(rows: list[dict]) -> list[str]:
    """The table in one line each: the exact row against AIS, and each row against the paper's number."""
    lines = []
    for r in rows:
        if r.get("log Z exact") is not None:
            gap = r["log Z (AIS)"] - r["log Z exact"]
            lines.append(f"{r['RBM']}: AIS log Z {r['log Z (AIS)']:.3f} against the exact {r['log Z exact']:.3f} "
                         f"({gap:+.3f} nats).")  # fmt: skip
        paper = PAPER.get(r["RBM"], {}).get("test log p")
        if paper is not None:
            lines.append(f"{r['RBM']}: test log p {r['test log p']:.2f} against the paper's {paper} "
                         f"({r['test log p'] - paper:+.2f} nats; protocol differences below).")  # fmt: skip
    return lines


def write(out: Path, settings: dict, rows: list[dict], wall: float, partial: bool) -> Path:
    """results.json (every number, the settings, the paper's numbers and protocol, the differences) and the report."""
    title = "RBMs on MNIST: log Z by AIS and log-likelihood (Salakhutdinov & Murray 2008)"
    results = {
        "experiment": "rbm_likelihood",
        "title": title,
        "partial": partial,
        "settings": settings,
        "rows": rows,
        "tables": {name: table for name, table in zip(("log_p", "log_z"), (t for _, t in tables(rows)))},
        "paper": PAPER,
        "paper_missing": PAPER_MISSING,
        "paper_protocol": PAPER_PROTOCOL,
        "protocol": ours(settings),
        "differences": differences(settings),
        "warnings": warnings(rows, settings["ais_runs"]),
        "selection_split": "none (every row keeps its final weights)",
        "wall_time_s": wall,
    }
    runs.write_json(out / "results.json", results)
    notes = [
        *(["PARTIAL: not every row has finished; rerun the same command to continue."] if partial else []),
        "Paper numbers (empty where none could be read): "
        + "; ".join(f"{k}: test log p {v['test log p']} ({v['source']})" for k, v in PAPER.items()),
        PAPER_MISSING,
        *(f"Ours, {k}: {v}" for k, v in ours(settings).items()),
        *(f"The paper, {k}: {v}" for k, v in PAPER_PROTOCOL.items()),
        *(f"Difference: {d}" for d in differences(settings)),
    ]
    if settings.get("quick"):
        notes.insert(0, quick_note(settings))
    lead = [*results["warnings"], *reading(rows)]
    return report.write_report(out, title, tables(rows), [], notes, numbers_first=True, lead=lead)
