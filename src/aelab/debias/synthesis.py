"""Bias-swap synthesis: bias-conflicting samples made by swapping a discovered bias factor between images.

In the spirit of DisEnt (Lee, Kim, Lee, Lee & Choo, NeurIPS 2021: swap the bias half of disentangled features
between samples to make diverse bias-conflicting samples), but the factors are image factors and the bias factor
is DISCOVERED. For each candidate factor f (colour statistics, brightness, position) and random pairs (i, j) on
which the GCE-biased model b disagrees,

    reliance(f) = P[ b(swap_f(x_i <- x_j)) = b(x_j) ]

is the fraction of swaps after which the biased model follows the donor; the factor relied on most is the bias.
New samples keep the digit (and label y_i) of x_i and take the bias factor of a donor x_j that the biased model
assigns to another class (b(x_j) != y_i): bias-conflicting by construction, in any number.

Colour statistics: with the shape map g = max_channel x and mu_c = sum_p x_c(p) / sum_p g(p), x ~= mu (x) g
(exact for ColoredMNIST's colour (x) gray images), and the swap is mu_donor (x) g_x. The swaps run on the images'
device; donors are drawn with a CPU generator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .predict import predict


def colour_stats(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Split x (B, 3, H, W) into a shape map g = max_channel x (B, 1, H, W) and colour statistics
    mu_c = sum_p x_c(p) / sum_p g(p) (B, 3), so that x ~= mu (x) g (exact when x = colour (x) gray)."""
    g = x.amax(1, keepdim=True)
    mu = x.sum((2, 3)) / g.sum((2, 3)).clamp_min(eps)
    return g, mu


def swap_colour(x: torch.Tensor, donor: torch.Tensor) -> torch.Tensor:
    """Shape of x, colour statistics of donor: mu_donor (x) g_x, clamped to [0, 1]."""
    g, _ = colour_stats(x)
    _, mu = colour_stats(donor)
    return (mu[:, :, None, None] * g).clamp(0, 1)


def swap_brightness(x: torch.Tensor, donor: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x rescaled to the donor's mean intensity: x * mean(donor) / mean(x), clamped to [0, 1]."""
    scale = donor.mean((1, 2, 3)) / x.mean((1, 2, 3)).clamp_min(eps)
    return (x * scale[:, None, None, None]).clamp(0, 1)


def _centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    w = x.sum(1)  # (B, H, W)
    h, wd = w.shape[1:]
    total = w.sum((1, 2)).clamp_min(1e-6)
    rows = (w.sum(2) * torch.arange(h, dtype=x.dtype, device=x.device)).sum(1) / total
    cols = (w.sum(1) * torch.arange(wd, dtype=x.dtype, device=x.device)).sum(1) / total
    return torch.stack([rows, cols], 1)


def swap_position(x: torch.Tensor, donor: torch.Tensor) -> torch.Tensor:
    """x translated (whole pixels, wrapping the black border) so its centre of mass lands on the donor's."""
    shift = (_centre_of_mass(donor) - _centre_of_mass(x)).round().long()
    return torch.stack([torch.roll(xi, (int(s[0]), int(s[1])), dims=(1, 2)) for xi, s in zip(x, shift)])


SWAPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "colour_statistics": swap_colour,
    "brightness": swap_brightness,
    "position": swap_position,
}


@torch.no_grad()
def bias_reliance(biased: nn.Module, images: torch.Tensor, n_pairs: int = 2000, seed: int = 0) -> dict[str, float]:
    """For each candidate factor f of SWAPS: over random pairs (i, j) with b(x_i) != b(x_j) (b = the biased
    model's argmax), the fraction of swaps swap_f(x_i <- x_j) that the biased model assigns to b(x_j).
    Images only: no label of any kind."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.from_numpy(predict(biased, images))
    i = torch.randint(len(images), (n_pairs,), generator=gen)
    j = torch.randint(len(images), (n_pairs,), generator=gen)
    keep = b[i] != b[j]
    i, j = i[keep], j[keep]
    if len(i) == 0:
        return {name: 0.0 for name in SWAPS}
    return {
        name: float((torch.from_numpy(predict(biased, swap(images[i], images[j]))) == b[j]).float().mean())
        for name, swap in SWAPS.items()
    }


class Synthesizer:
    """Bias-conflicting samples on demand: sample(shape_idx, gen) returns swap(x[shape_idx] <- x[donor]) with a
    random donor whose `donor_class` differs from the digit of the shape sample; the label stays the digit.

    Label-free: donor_class = the biased model's predictions. Oracle: donor_class = the true colour labels."""

    def __init__(self, images: torch.Tensor, digits: torch.Tensor, donor_class: torch.Tensor, factor: str):
        self.images, self.digits, self.factor = images, digits, factor
        self.swap = SWAPS[factor]
        n_classes = int(max(digits.max(), donor_class.max())) + 1
        # row y of `pool` lists the samples whose donor_class != y (padded); `n_pool[y]` how many
        lists = [torch.nonzero(donor_class != y).squeeze(1) for y in range(n_classes)]
        lists = [d if len(d) else torch.arange(len(images)) for d in lists]
        self.n_pool = torch.tensor([len(d) for d in lists])
        self.pool = torch.zeros(n_classes, int(self.n_pool.max()), dtype=torch.long)
        for y, d in enumerate(lists):
            self.pool[y, : len(d)] = d

    def donors(self, shape_idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One uniform donor per shape sample among the samples whose donor_class differs from its digit."""
        y = self.digits[shape_idx]
        pos = (torch.rand(len(shape_idx), generator=gen) * self.n_pool[y]).long().clamp_max(self.n_pool[y] - 1)
        return self.pool[y, pos]

    def sample(self, shape_idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.swap(self.images[shape_idx], self.images[self.donors(shape_idx, gen)])

    def sample_with_donors(self, shape_idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        donors = self.donors(shape_idx, gen)
        return self.swap(self.images[shape_idx], self.images[donors]), donors
