"""Data: `get(dataset)` -> Data (train/test images (N, C, H, W) float32 in [0, 1], labels, info) for a
built-in name, a path (image folder, .npz, .npy) or a Data made from Python (`from_arrays`, `from_dataset`);
`load(name, split)` for the built-in sets, the IDX reader and downloads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import datasets
from .datasets import (
    BINARIZE,
    EMBEDDED,
    IDX_DATASETS,
    available_offline,
    binarize,
    check_options,
    data_dir,
    fetch,
    load,
    names,
    verify,
)
from .idx import read_idx
from .sources import Data, content_hash, from_arrays, from_dataset, from_path

__all__ = [
    "BINARIZE",
    "Data",
    "DataError",
    "EMBEDDED",
    "IDX_DATASETS",
    "available_offline",
    "binarize",
    "check_options",
    "content_hash",
    "data_dir",
    "describe",
    "fetch",
    "from_arrays",
    "from_dataset",
    "from_path",
    "get",
    "load",
    "names",
    "path_exists",
    "read_idx",
    "load_test_split",
    "verify",
]


def path_exists(name: str) -> bool:
    """Whether a dataset argument names something on disk; a name no file system accepts (too long, a NUL
    byte) names nothing, and is not an error here."""
    try:
        return Path(name).exists()
    except (OSError, ValueError):
        return False


def describe(dataset: str | Data) -> str:
    """What config.json records as the dataset: a built-in name, an absolute path, or python:<name>."""
    if isinstance(dataset, Data):
        return f"python:{dataset.info.get('source', 'data')}"
    if dataset in names():
        return dataset
    return str(Path(dataset).resolve())


def get(
    dataset: str | os.PathLike | Data,
    options: dict | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = False,
    write_cache: bool = True,
) -> Data:
    """The Data of a built-in dataset name, of a path (folder of images, .npz, .npy), or `dataset` itself.
    `info` records where the data came from, the sizes, classes, the split and a content hash."""
    options = dict(options or {})
    if isinstance(dataset, Data):
        if options:
            raise DataError("dataset options apply to names and paths; a Data object is used as it is")
        return dataset
    name = os.fspath(dataset)
    check_options(name, options)
    if name in names():  # load() keeps the arrays in memory: a second call costs the hash only
        train_x, train_y = load(name, "train", data_dir, download, **options)
        test_x, test_y = load(name, "test", data_dir, download, **options)
        info = {
            "kind": "builtin",
            "source": name,
            "split": "given (the dataset's own train/test split)",
            "shape": list(train_x.shape[1:]),
            "n_train": len(train_x),
            "n_test": len(test_x),
            "labeled": True,
            "n_classes": int(len(train_y.unique())),
            "sha256": content_hash(train_x, train_y, test_x, test_y),
        }
        return Data(train_x, train_y, test_x, test_y, info)
    if not path_exists(name):
        raise DataError(f"no dataset named {name!r} and no file or folder there; choose from {', '.join(names())}")
    # the cache of decoded folders lives in the data folder (--data-dir, $AELAB_DATA or ~/.cache/aelab)
    return from_path(name, **options, cache_dir=data_dir, write_cache=write_cache, progress=progress)


def load_test_split(
    dataset: str | os.PathLike, data_dir: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images, labels, description) of another dataset's TEST split only, for scoring a trained run on it
    (`aelab evaluate RUN --test-dataset NAME`). Never downloads. For an IDX set only its two test files are
    needed, MD5-verified, in DATA_DIR/NAME/ or in DATA_DIR itself (e.g. ../shared/data/mnist-idx/)."""
    name = os.fspath(dataset)
    if not name.strip():
        raise DataError("--test-dataset needs a dataset name or path")
    if name in IDX_DATASETS:
        files = IDX_DATASETS[name].files
        root = datasets.data_dir(data_dir)
        for folder in (root / name, root):
            paths = [folder / files[k].name for k in ("test_images", "test_labels")]
            if all(p.is_file() for p in paths):
                for p, k in zip(paths, ("test_images", "test_labels")):
                    verify(p, files[k])
                images = read_idx(paths[0], expect_ndim=3)
                labels = read_idx(paths[1], expect_ndim=1)
                if len(images) != len(labels):
                    raise DataError(f"{folder}: {len(images)} test images but {len(labels)} labels")
                x = torch.from_numpy((images.astype(np.float32) / 255.0)[:, None].copy())
                return x, torch.from_numpy(labels.astype(np.int64)), f"{name} test split ({folder})"
        need = ", ".join(files[k].name for k in ("test_images", "test_labels"))
        raise DataError(f"--test-dataset {name}: put {need} in {root / name} or {root} (never downloaded here)")
    if name in names():
        x, y = load(name, "test", data_dir, download=False)
        return x, y, f"{name} test split"
    data = get(name, {}, data_dir, download=False, write_cache=False)
    return data.test_x, data.test_y, f"{data.info.get('source', name)} test split ({data.info.get('split')})"
