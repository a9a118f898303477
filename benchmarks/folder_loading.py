"""Loading a folder of 60,000 28x28 PNGs: the first load (decode + write the cache) and the cached second load.

    python benchmarks/folder_loading.py [--images 60000] [--rounds 3] [--notes benchmarks/FOLDER_LOADING.md]

The PNGs are MNIST digits written with Pillow into <tmp>/png/<label>/: the official 10,000 test digits
(../shared/data/mnist-idx) when present, else mnist5k, repeated with shifts and flips up to --images. Each
round starts from an empty aelab cache folder, so the first load decodes every file; the files themselves
are then in the OS page cache (as they are for a user loading the same folder twice). Goals (issue 10):
first load < 20 s, cached load < 2 s, on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import format_load, load_average, machine  # noqa: E402


def source_digits() -> tuple[np.ndarray, np.ndarray]:
    shared = HERE.parent.parent / "shared" / "data" / "mnist-idx"
    if (shared / "t10k-images-idx3-ubyte.gz").exists():
        from aelab.data import read_idx

        return read_idx(shared / "t10k-images-idx3-ubyte.gz"), read_idx(shared / "t10k-labels-idx1-ubyte.gz")
    from aelab import data

    x, y = data.load("mnist5k", "train")
    return (x[:, 0].numpy() * 255).round().astype(np.uint8), y.numpy()


def write_pngs(root: Path, n: int) -> None:
    from PIL import Image

    x, y = source_digits()
    for i in range(n):
        j, r = i % len(x), i // len(x)
        img = np.roll(x[j] if r % 2 == 0 else x[j][:, ::-1], r // 2, axis=0)
        folder = root / str(int(y[j]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"{i:06d}.png")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=60000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--notes", default=None, help="write the Markdown section here")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from aelab.data import from_path

    tmp = Path(tempfile.mkdtemp(prefix="aelab-folder-bench-"))
    try:
        t0 = time.perf_counter()
        write_pngs(tmp / "png", args.images)
        print(f"wrote {args.images} PNGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        first, second = [], []
        load_start = load_average()
        for r in range(args.rounds):
            cache = tmp / f"cache{r}"
            t0 = time.perf_counter()
            a = from_path(tmp / "png", cache_dir=cache)
            first.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b = from_path(tmp / "png", cache_dir=cache)
            second.append(time.perf_counter() - t0)
            assert a.info["sha256"] == b.info["sha256"]
            print(f"round {r + 1}: first {first[-1]:.2f} s, cached {second[-1]:.2f} s", file=sys.stderr)
        result = {
            "images": args.images,
            "shape": a.info["shape"],
            "first_load_s": first,
            "cached_load_s": second,
            "first_median_s": statistics.median(first),
            "cached_median_s": statistics.median(second),
            "load_average": [load_start, load_average()],
            "machine": machine(),
            "cpus": os.cpu_count(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.notes:
        fmt = lambda xs: ", ".join(f"{v:.2f}" for v in xs)  # noqa: E731
        Path(args.notes).write_text(
            "## Loading a folder of images (hand-run; kept across reruns by run_all.py)\n\n"
            f"`python benchmarks/folder_loading.py --images {args.images} --rounds {args.rounds} "
            f"--notes benchmarks/FOLDER_LOADING.md` on {result['machine']['cpu']}, "
            f"{format_load(*result['load_average'])}.\n\n"
            f"{args.images} PNGs of 28x28 in 10 class folders (`aelab train --dataset FOLDER`, "
            "`aelab.data.from_path`). The first load decodes every file with Pillow (2 threads) and writes "
            "the .npz cache; the second reads the files only to hash them and loads the cache.\n\n"
            "| load | goal | median (s) | rounds (s) |\n|---|---|---|---|\n"
            f"| first (decode, write cache) | < 20 s | {result['first_median_s']:.2f} | {fmt(first)} |\n"
            f"| second (cached) | < 2 s | {result['cached_median_s']:.2f} | {fmt(second)} |\n"
        )
    print(json.dumps({k: v for k, v in result.items() if k.endswith("median_s")}))
    return result


if __name__ == "__main__":
    main()
