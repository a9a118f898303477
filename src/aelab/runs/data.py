"""A run's own data: the splits it was trained on, and the validation split it carved from them."""

from __future__ import annotations

import os
from typing import Any

from ..errors import CheckpointError, DataError


def run_data(config: dict, data_dir: str | os.PathLike | None = None, data=None):
    """The run's own train and test splits: same dataset, options and train_limit as in training.
    Returns (train_x, train_y, test_x, test_y); labels are -1 for unlabeled data.

    `data` (an aelab.data.Data or a path) stands in for the recorded dataset: needed for data given from
    Python, and for a folder that has moved. Data whose content hash differs from the one config.json
    recorded are refused: the metrics would not be about the run's data."""
    from .. import data as datamod

    name, opts = config["dataset"], config.get("dataset_options", {})
    if not isinstance(opts, dict):
        raise CheckpointError("config.json: dataset_options is not an object")
    if data is None and name.startswith("python:"):
        raise DataError(
            f"the run was trained on data given from Python ({name[len('python:') :]}); pass the same data: "
            "evaluate(run, data=...)"
        )
    if data is None:
        datamod.check_options(name, opts)  # before **opts meets load's own parameters
        if name not in datamod.names() and not datamod.path_exists(name):
            raise DataError(f"the run's data at {name} is not there any more; pass data=PATH or Data")
    # the data folder comes from the caller, never from config.json (an untrusted file must not make aelab
    # create folders or download anywhere); files that are not there already are an error, not a download;
    # a folder's decoded cache is read, never written, from here
    source = name if data is None else data
    found = datamod.get(
        source, {} if isinstance(source, datamod.Data) else opts, data_dir, download=False, write_cache=False
    )
    recorded = config.get("data_info", {}).get("sha256") if isinstance(config.get("data_info"), dict) else None
    if recorded is not None and found.info.get("sha256") != recorded:
        raise DataError(
            f"the data of {found.info.get('source', name)} differ from those the run was trained on "
            "(content hash changed); pass the same data"
        )
    train_x, train_y, test_x, test_y = found.train_x, found.train_y, found.test_x, found.test_y
    if config.get("train_limit"):
        train_x, train_y = train_x[: config["train_limit"]], train_y[: config["train_limit"]]
    return train_x, train_y, test_x, test_y


def validation_indices(config: dict, train_labels) -> tuple[Any, Any] | None:
    """(kept, held) indices of the validation split the run carved from its train split (after train_limit), as
    train.py carved it, or None when it carved none. config.json is untrusted: a val_fraction that is not a
    number in [0, 1) is a CheckpointError."""
    import numpy as np

    from ..data.sources import validation_split

    fraction = config.get("val_fraction") or 0
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction < 1):
        raise CheckpointError(f"config.json: val_fraction {fraction!r} is not a number in [0, 1)")
    if not fraction:
        return None
    keep, held, _ = validation_split(np.asarray(train_labels), fraction)
    return keep, held
