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
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# name -> (module, argv for a full run, argv for --quick)
BENCHMARKS = {
    "throughput": ("throughput", ["--epochs", "5", "--repeats", "3"], ["--epochs", "2", "--repeats", "1"]),
    "rbm": ("rbm", ["--rounds", "5"], ["--quick"]),
    "contractive": (
        "contractive",
        ["--repeats", "10", "--penalty-repeats", "3"],
        ["--repeats", "3", "--exact-repeats", "1", "--penalty-repeats", "1"],
    ),
}


PEAK = {"flops": float("nan")}  # the machine's measured matmul rate, set in main()


def summarise(name: str, r: dict) -> tuple[list[dict], str]:
    """Summary rows (benchmark / peer / ratio / goal) and a markdown detail table from one benchmark's JSON."""
    if name == "throughput":
        return r["summary"], r["markdown"]
    if name == "rbm":
        rows, md = (
            [],
            [
                "| visible-hidden | batch | ours samples/s | sklearn samples/s | ours / sklearn | "
                "fraction of matmul rate |",
                "|---|---|---|---|---|---|",
            ],
        )
        for row in r["rows"]:
            speed = row.get("median_speedup_vs_sklearn", row.get("speedup_vs_sklearn"))
            frac = row.get("median_fraction_of_matmul", row.get("fraction_of_matmul"))
            sk = row.get("sklearn_samples_per_s")
            md.append(
                f"| {row['n_visible']}-{row['n_hidden']} | {row['batch']} | {row['aelab_samples_per_s']:,.0f} | "
                f"{'—' if sk is None else f'{sk:,.0f}'} | {'—' if speed is None else f'{speed:.2f}'} | {frac:.2f} |"
            )
            if speed is not None:
                rows.append(
                    {
                        "benchmark": f"RBM CD-1 {row['n_visible']}-{row['n_hidden']}, batch {row['batch']}",
                        "peer": "sklearn BernoulliRBM",
                        "ratio": speed,
                        "goal": ">= 1.5" if row["n_hidden"] == 1000 and row["batch"] == 100 else "report",
                    }
                )
            rows.append(
                {
                    "benchmark": f"RBM CD-1 {row['n_visible']}-{row['n_hidden']}, batch {row['batch']}: "
                    "FLOP/s (5 products/step) / torch.mm on the same shapes",
                    "peer": "torch.mm, same shapes",
                    "ratio": frac,
                    "goal": ">= 0.8" if row["batch"] == 1000 else "report",
                }
            )
            if "aelab_gflops" in row:
                rows.append(
                    {
                        "benchmark": f"RBM CD-1 {row['n_visible']}-{row['n_hidden']}, batch {row['batch']}: "
                        "FLOP/s / the machine's 1024³ matmul rate",
                        "peer": "torch.mm 1024³",
                        "ratio": row["aelab_gflops"] * 1e9 / PEAK["flops"],
                        "goal": "report",
                    }
                )
        return rows, "\n".join(md)
    if name == "contractive":
        rows, md = [], ["| train step (784-1000 sigmoid, batch 128) | median ms | x AE |", "|---|---|---|"]
        for row in r["train_step"]["rows"]:
            md.append(f"| {row['variant']} | {row['median_ms']:.1f} | {row['x_ae']:.2f} |")
        rows.append(
            {
                "benchmark": "CAE train step (analytic, activations reused) / AE step",
                "peer": "same AE",
                "ratio": r["train_step"]["targets"]["cae_over_ae"],
                "goal": "<= 1.5 (aim 1.1)",
            }
        )
        for table in r.get("penalty") or []:
            md += [
                "",
                f"Penalty + backward, encoder {table['encoder']}, batch {table['batch']}:",
                "",
                "| method | median ms | x floor | rel. RMS error per example |",
                "|---|---|---|---|",
            ]
            by = {row["method"]: row for row in table["rows"]}
            for row in table["rows"]:
                err = row.get("rel_rms_per_example")
                md.append(
                    f"| {row['method']} | {row['median_ms']:.1f} | {row['x_floor']:.2f} | "
                    f"{'' if err is None else f'{err:.3f}'} |"
                )
            exact = next(v for k, v in by.items() if k.startswith("exact [") or k == "exact")
            loop = next(v for k, v in by.items() if k.startswith("per-example"))
            rows.append(
                {
                    "benchmark": f"exact Jacobian penalty {table['encoder']}: time / compute floor",
                    "peer": "batched VJP floor",
                    "ratio": exact["x_floor"],
                    "goal": "<= 1.5",
                }
            )
            rows.append(
                {
                    "benchmark": f"exact Jacobian penalty {table['encoder']}: speed-up",
                    "peer": "per-example autograd.functional.jacobian loop",
                    "ratio": loop["median_ms"] / exact["median_ms"],
                    "goal": ">= 20",
                }
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
    from common import machine, matmul_flops, setup

    setup()
    PEAK["flops"] = matmul_flops()
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
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `python benchmarks/run_all.py{' --quick' if args.quick else ''}` on "
        f"{datetime.date.today().isoformat()}: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}; measured matmul rate "
        f"{PEAK['flops'] / 1e9:.1f} GFLOP/s (float32, 1024³). The machine is shared: compare the ratios, "
        "which are measured in the same run with the contenders interleaved, rather than the absolute numbers.",
        "",
        "## Ratios against peers measured in this run",
        "",
        "| benchmark | peer | ratio (ours / peer) | goal |",
        "|---|---|---|---|",
        *[f"| {r['benchmark']} | {r['peer']} | {r['ratio']:.3g} | {r['goal']} |" for r in summary],
        "",
        "## Details",
        "",
        *sections,
    ]
    extra = HERE.parent / "benchmarks" / "RESULTS_NOTES.md"
    if extra.exists():  # hand-written results of long experiments (quality tables), kept across reruns
        lines += ["", extra.read_text()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    (HERE / "last_run.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
