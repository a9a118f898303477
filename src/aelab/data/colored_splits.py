"""The ColoredMNIST splits of the debiasing experiments (aelab.data.colored builds the images).

biased train split      a grayscale dataset's train split coloured with aligned_ratio of every digit in its
                        class colour (exactly the images data.load("colored-mnist", ...) gives a trainer)
train / validation      carved from it, stratified by DIGIT (both from the biased distribution)
unbiased test sets      the dataset's test split (and the official MNIST 10k test set, when data_dir holds
                        its IDX files) coloured with every colour dealt equally often per digit (LfF protocol)
"""

from __future__ import annotations

import numpy as np
import torch

from .colored import make_colored_mnist


def load_biased_train_split(source: str, aligned_ratio: float, seed: int, data_dir=None, train_limit=None):
    """(images, digits, colour labels, conflicting) of the ColoredMNIST train split, exactly the images that
    data.load("colored-mnist", ...) gives the autoencoder's trainer."""
    from .. import data as datamod

    gray, digits = datamod.load(source, "train", data_dir)
    colored = make_colored_mnist(gray, digits, split="train", aligned_ratio=aligned_ratio, seed=seed)
    images, _ = datamod.load("colored-mnist", "train", data_dir, aligned_ratio=aligned_ratio, seed=seed, source=source)
    if not torch.equal(images, colored["images"]):
        raise RuntimeError("colored-mnist images differ from make_colored_mnist's: the colour labels would not match")
    n = train_limit or len(images)
    return images[:n], digits[:n], colored["color_labels"][:n], ~colored["aligned"][:n]


def unbiased_test_split(gray: torch.Tensor, digits: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The colour-unbiased test set (LfF protocol): every colour dealt equally often within every digit."""
    return make_colored_mnist(gray, digits, split="test", seed=seed)


def classifier_splits(
    source: str,
    aligned_ratio: float,
    seed: int,
    val_fraction: float,
    train_limit: int | None = None,
    data_dir: str | None = None,
) -> dict:
    """{"train", "val": {"images", "digits", "colours"}, "test": {name: {...}}}: train / validation carved from
    the biased train split (stratified by digit, seeded), and the colour-unbiased test sets."""
    from sklearn.model_selection import train_test_split

    from .. import data as datamod

    images, digits, colours, _ = load_biased_train_split(source, aligned_ratio, seed, data_dir, train_limit)
    idx_tr, idx_val = train_test_split(
        np.arange(len(digits)), test_size=val_fraction, stratify=digits.numpy(), random_state=seed % 2**32
    )
    idx_tr, idx_val = torch.from_numpy(np.sort(idx_tr)), torch.from_numpy(np.sort(idx_val))
    out = {
        "train": {"images": images[idx_tr], "digits": digits[idx_tr], "colours": colours[idx_tr]},
        "val": {"images": images[idx_val], "digits": digits[idx_val], "colours": colours[idx_val]},
        "test": {},
    }
    gray, d = datamod.load(source, "test", data_dir)
    t = unbiased_test_split(gray, d, seed)
    out["test"][{"mnist5k": "mnist5k_test", "mnist": "mnist10k_test"}.get(source, f"{source}_test")] = {
        "images": t["images"],
        "digits": t["labels"],
        "colours": t["color_labels"],
    }
    if data_dir is not None and source != "mnist":  # with source mnist, its test split is the official set
        g, lab, _ = datamod.load_test_split("mnist", data_dir)  # the official files, MD5-verified
        t = unbiased_test_split(g, lab, seed)
        out["test"]["mnist10k_test"] = {"images": t["images"], "digits": t["labels"], "colours": t["color_labels"]}
    return out
