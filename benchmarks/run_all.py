"""Run every benchmark in one process and rewrite BENCHMARKS.md with the numbers measured in this run.

    python benchmarks/run_all.py [--quick] [--only throughput,rbm,contractive]

Each benchmark module is a script whose main() reads sys.argv and writes its results with --json; this runs
them one after another in this process and turns each JSON into rows of benchmark / peer / ratio / goal. Ratios compare contenders measured in this same run, interleaved, because the
machine is shared and noisy; absolute samples/s are reported with the machine description.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import NOISY, busy_reason, format_load, format_ratio, load_average, machine, setup  # noqa: E402

# name -> (module, argv for a full run, argv for --quick)
BENCHMARKS = {
    "throughput": ("throughput", ["--epochs", "2", "--rounds", "5", "--compile"], ["--epochs", "1", "--rounds", "3"]),
    "rbm": ("rbm", ["--rounds", "5"], ["--quick"]),
    "contractive": (
        "contractive",
        ["--repeats", "7", "--exact-repeats", "1", "--penalty-repeats", "2"],
        ["--repeats", "3", "--exact-repeats", "1", "--penalty-repeats", "1"],
    ),
}


def fmt_num(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"


def summarise(name: str, r: dict) -> tuple[list[dict], str]:
    """Summary rows and a markdown detail table from one benchmark's JSON.

    A summary row: benchmark, peer, num / den (the medians over rounds, in `unit`), r (the ratio from
    common.summarize_ratio: median of per-round ratios, bootstrap interval, noisy flag) and goal.
    """
    if name in ("throughput", "rbm"):
        return r["summary"], r["markdown"]
    if name == "contractive":
        meta = r.get("meta", {})
        busy = busy_reason(max([meta.get("loadavg_start", [0])[0], meta.get("loadavg_end", [0])[0]]), os.cpu_count())

        def unpaired(v: float) -> str:  # ratios without an interval: shown only on a quiet machine, and marked
            return f"{NOISY} ({busy})" if busy else f"{v:.2f} (no interval)"

        rows, md = [], ["| train step (784-1000 sigmoid, batch 128) | median ms | x AE [95% CI] |", "|---|---|---|"]
        for row in r["train_step"]["rows"]:
            x_ae = format_ratio(row["x_ae_ratio"]) if "x_ae_ratio" in row else unpaired(row["x_ae"])
            md.append(f"| {row['variant']} | {row['median_ms']:.1f} | {x_ae} |")
        ae_ms = next(row["median_ms"] for row in r["train_step"]["rows"] if row["variant"] == "AE")
        cae_ms = next(
            row["median_ms"] for row in r["train_step"]["rows"] if row["variant"] == "CAE (reused activations)"
        )
        rows.append(
            {
                "benchmark": "CAE train step (analytic, activations reused) / AE step",
                "peer": "same AE",
                "num": cae_ms,
                "den": ae_ms,
                "unit": "ms",
                "r": r["train_step"]["cae_over_ae"],
                "goal": "<= 1.5 (aim 1.1)",
            }
        )
        for table in r.get("penalty") or []:
            md += [
                "",
                f"Penalty + backward, encoder {table['encoder']}, batch {table['batch']} (median of "
                "per-round ratios, no interval or noisy rule yet):",
                "",
                "| method | median ms | x floor | rel. RMS error per example |",
                "|---|---|---|---|",
            ]
            for row in table["rows"]:
                err = row.get("rel_rms_per_example")
                md.append(
                    f"| {row['method']} | {row['median_ms']:.1f} | {unpaired(row['x_floor'])} | "
                    f"{'' if err is None else f'{err:.3f}'} |"
                )
        return rows, "\n".join(md)
    return [], ""


def run_benchmark(module_name: str, argv: list[str]) -> dict:
    """Run module.main in this process with argv and --json, and return what it wrote."""
    import tempfile

    module = importlib.import_module(module_name)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "out.json")
        saved = sys.argv
        sys.argv = [f"{module_name}.py", *argv, "--json", path]
        try:
            module.main()
        finally:
            sys.argv = saved
        return json.loads(Path(path).read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=",".join(BENCHMARKS))
    p.add_argument("--out", default=str(HERE.parent / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    setup()
    load_start = load_average()
    results, sections = {}, []
    summary = []
    for name in args.only.split(","):
        module_name, full, quick = BENCHMARKS[name]
        argv_used = quick if args.quick else full
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        results[name] = run_benchmark(module_name, argv_used)
        wall = time.perf_counter() - t0
        rows, md = summarise(name, results[name])
        summary += rows
        cmd = f"python benchmarks/{module_name}.py {' '.join(argv_used)}".strip()
        sections.append(f"### {name}\n\nCommand: `{cmd}` ({wall:.0f} s)\n\n{md}\n")
    m = machine()
    load_end = load_average()
    cmd = f"PYTHONPATH=src python benchmarks/run_all.py{' --quick' if args.quick else ''}"
    if args.only != ",".join(BENCHMARKS):
        cmd += f" --only {args.only}"
    lines = [
        "# Benchmarks",
        "",
        "## CPU",
        "",
        f"Produced by `{cmd}` on {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}: {m['cpu']}, {m['cores']} "
        f"cores, torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}; {format_load(load_start, load_end)}.",
        "",
        "How to read it: every contender, and the float32 matmul reference, is measured in short interleaved rounds "
        "(rotating order); a ratio is the median of the per-round ratios with its bootstrap 95% interval in "
        "brackets, and the two columns beside it are the medians over the same rounds. A ratio whose interval "
        "reaches beyond ±15%, a fraction of the matmul rate above 1 (estimate or interval), or a ratio outside "
        'the interval implied by its own columns is printed as "noisy, rerun" instead (benchmarks/common.py, '
        "tested in tests/test_bench_harness.py). The machine is shared: absolute rates move with other jobs.",
        "",
        "| benchmark | ours | peer | peer value | ratio (ours / peer) [95% CI] | goal |",
        "|---|---:|---|---:|---|---|",
        *[
            f"| {r['benchmark']} | {fmt_num(r['num'])} {r['unit']} | {r['peer']} | {fmt_num(r['den'])} {r['unit']} | "
            f"{format_ratio(r['r'], 3)} | {r['goal']} |"
            for r in summary
        ],
        "",
        "### Details",
        "",
        *sections,
    ]
    gpu = HERE / "GPU_NOTES.md"
    lines += ["", gpu.read_text() if gpu.exists() else "## GPU\n\nNo GPU could be had in this session.\n"]
    for notes in (
        "MFU_NOTES.md",
        "LOAD_CHECK.md",
        "FOLDER_LOADING.md",
        "VAE_VS_PYTHAE.md",
        "VAE_GAP.md",
        "PAPER_SCALE_COST.md",
    ):  # hand-run checks (the MFU study, the busy-loop run), kept
        if (HERE / notes).exists():
            lines += ["", (HERE / notes).read_text()]
    extra = HERE.parent / "benchmarks" / "RESULTS_NOTES.md"
    if extra.exists():  # hand-written results of long experiments (quality tables), kept across reruns
        lines += ["", extra.read_text()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    (HERE / "last_run.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
