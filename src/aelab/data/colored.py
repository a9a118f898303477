"""Colored MNIST with a colour bias, following the Learning-from-Failure protocol
(Nam, Cha, Ahn, Lee & Shin, "Learning from Failure: Training Debiased Classifier from Biased Classifier",
NeurIPS 2020; reference code github.com/alinlab/LfF, make_dataset.py and colored_mnist_protocol.py).

Every class y has a mean colour m_y (PALETTE). A sample with colour label k gets the foreground colour

    c = clamp(m_k + color_std * eps, 0, 1),   eps ~ N(0, I_3)  (one draw per sample, shared by all its pixels)

and the image is c (x) gray: each channel is the grayscale digit times one colour component, so the digit is
coloured and the black background stays exactly 0 (as in LfF's `colorize`).

Colour labels:
- train: in every class, exactly n_aligned = floor(aligned_ratio * N_y + 1/2) samples (chosen at random) take
  the class colour k = y ("bias-aligned"). The other N_y - n_aligned ("bias-conflicting") take one of the
  other n_classes - 1 colours, uniformly and stratified: the colours are dealt round-robin in a random
  order, so their counts differ by at most one. LfF likewise uses exact per-class counts (cumulative
  milestones rounded from aligned_ratio * N_y); exact counts make the bias strength reproducible, where
  independent draws would give 0.95 +- 0.016 on a class of 180 images. LfF's ratios: 0.95, 0.98, 0.99, 0.995.
- test: unbiased -- in every class the n_classes colours are dealt round-robin in a random order, so colour
  and digit are independent (up to the +-1 of unequal division) and about 1/n_classes of the test samples
  happen to be aligned. `aligned_ratio` is ignored.

color_std = 0.005 is LfF's "severity 4" colour noise (their list is 0.05, 0.02, 0.01, 0.005, 0.002 for
severities 1..5). The palette is our own set of ten well-separated colours (min pairwise RGB distance 0.30,
every channel in [0.1, 0.95] so the noise is rarely clipped): LfF ships its mean colours only as a binary
tensor file, which we do not reproduce.

All randomness comes from a torch.Generator seeded with `seed`, so the result does not depend on (or change)
the global RNG state.
"""

from __future__ import annotations

import math

import torch

PALETTE = torch.tensor(
    [
        [0.90, 0.10, 0.10],  # 0 red
        [0.10, 0.75, 0.15],  # 1 green
        [0.15, 0.35, 0.95],  # 2 blue
        [0.95, 0.85, 0.10],  # 3 yellow
        [0.90, 0.15, 0.85],  # 4 magenta
        [0.10, 0.85, 0.90],  # 5 cyan
        [0.95, 0.55, 0.10],  # 6 orange
        [0.55, 0.25, 0.85],  # 7 purple
        [0.55, 0.35, 0.15],  # 8 brown
        [0.90, 0.90, 0.90],  # 9 light grey
    ]
)
COLOR_NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan", "orange", "purple", "brown", "light grey"]
SPLITS = ("train", "test")


def aligned_count(n: int, aligned_ratio: float) -> int:
    """Number of bias-aligned samples in a train class of n samples: aligned_ratio * n rounded half up."""
    return math.floor(aligned_ratio * n + 0.5)


def make_colored_mnist(
    images: torch.Tensor,
    labels: torch.Tensor,
    split: str,
    aligned_ratio: float = 0.95,
    seed: int = 0,
    color_std: float = 0.005,
    n_classes: int = 10,
) -> dict[str, torch.Tensor]:
    """Colour grayscale digits (N, 1, H, W) in [0, 1] with the LfF protocol (see the module docstring).

    Returns a dict of
        images        float32 (N, 3, H, W) in [0, 1]   colour (x) digit, background 0
        labels        int64 (N,)                       the digit (copied from `labels`)
        color_labels  int64 (N,)                       index k of the mean colour PALETTE[k] used
        aligned       bool (N,)                        color_labels == labels
        colors        float32 (N, 3)                   the noisy foreground colour c actually applied
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if not 2 <= n_classes <= len(PALETTE):
        raise ValueError(f"n_classes must be in 2..{len(PALETTE)}, got {n_classes}")
    if not 0 < aligned_ratio <= 1:
        raise ValueError(f"aligned_ratio must be in (0, 1], got {aligned_ratio}")
    if color_std < 0:
        raise ValueError(f"color_std must be >= 0, got {color_std}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be grayscale (N, 1, H, W), got shape {tuple(images.shape)}")
    labels = torch.as_tensor(labels).long().reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be in 0..{n_classes - 1}")
    gray = images.float()
    if len(gray) and (gray.min() < 0 or gray.max() > 1):
        raise ValueError("images must be in [0, 1]")

    gen = torch.Generator().manual_seed(int(seed))
    color_labels = torch.empty_like(labels)
    for y in range(n_classes):
        members = (labels == y).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=gen)]  # random order: who gets which colour
        if split == "train":
            n_aligned = aligned_count(len(members), aligned_ratio)
            others = torch.tensor([k for k in range(n_classes) if k != y])
            others = others[torch.randperm(len(others), generator=gen)]  # which colours get the extra ones
            n_conflicting = len(members) - n_aligned
            color_labels[members[:n_aligned]] = y
            color_labels[members[n_aligned:]] = others[torch.arange(n_conflicting) % len(others)]
        else:
            colors = torch.randperm(n_classes, generator=gen)
            color_labels[members] = colors[torch.arange(len(members)) % n_classes]

    noise = torch.randn(len(labels), 3, generator=gen)
    colors = (PALETTE[color_labels] + color_std * noise).clamp(0, 1)
    colored = colors[:, :, None, None] * gray  # (N, 3, 1, 1) * (N, 1, H, W)
    return {
        "images": colored.float().contiguous(),
        "labels": labels.clone(),
        "color_labels": color_labels,
        "aligned": color_labels == labels,
        "colors": colors.float(),
    }
