"""Data: `load(name, split)` -> (images (N, C, H, W) float32 in [0, 1], labels int64), the IDX reader and downloads."""

from ..errors import DataError
from .datasets import EMBEDDED, IDX_DATASETS, available_offline, check_options, data_dir, fetch, load, names, verify
from .idx import read_idx

__all__ = [
    "DataError",
    "EMBEDDED",
    "IDX_DATASETS",
    "available_offline",
    "check_options",
    "data_dir",
    "fetch",
    "load",
    "names",
    "read_idx",
    "verify",
]
