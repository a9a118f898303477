"""Run every benchmark in one process and rewrite BENCHMARKS.md with the numbers measured in this run.

    python benchmarks/run_all.py [--quick] [--only throughput,rbm,contractive]

Each benchmark module has main(argv) -> dict with "markdown" (its detailed table) and "summary" (rows of
benchmark / peer / ratio / goal). Ratios compare contenders measured in this same run, interleaved, because the
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
    "rbm": ("rbm", [], ["--quick"]),
    "contractive": ("contractive", [], ["--quick"]),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=",".join(BENCHMARKS))
    p.add_argument("--out", default=str(HERE.parent / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    from common import machine, matmul_flops, setup

    setup()
    results, sections = {}, []
    for name in args.only.split(","):
        module_name, full, quick = BENCHMARKS[name]
        module = importlib.import_module(module_name)
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        results[name] = module.main(quick if args.quick else full)
        results[name]["wall_s"] = time.perf_counter() - t0
        cmd = f"python benchmarks/{module_name}.py {' '.join(quick if args.quick else full)}".strip()
        sections.append(f"### {name}\n\nCommand: `{cmd}` ({results[name]['wall_s']:.0f} s)\n\n"
                        f"{results[name].get('markdown', '')}\n")
    m = machine()
    summary = [row for r in results.values() for row in r.get("summary", [])]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `python benchmarks/run_all.py{' --quick' if args.quick else ''}` on "
        f"{datetime.date.today().isoformat()}: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}; measured matmul rate "
        f"{matmul_flops() / 1e9:.1f} GFLOP/s (float32, 1024³). The machine is shared: compare the ratios, "
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
