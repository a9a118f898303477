"""ColoredMNIST (LfF protocol): bias counts, colour placement, determinism, unbiased test split."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from aelab.data.colored import PALETTE, make_colored_mnist


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    images = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return images, torch.tensor(d.target)


def blank_images_with_class_sizes(sizes, seed=0):
    """Random 4x4 'digits' whose labels have the given class sizes, in a shuffled order."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    images = torch.rand(len(labels), 1, 4, 4, generator=torch.Generator().manual_seed(seed + 1))
    return images, labels


# aligned counts worked out by hand: ratio * N_c rounded half up (0.98 * 175 = 171.5 -> 172)
HAND_COUNTS = {
    0.95: [190, 171, 166, 155],  # 190.0, 171.0, 166.25, 154.85
    0.98: [196, 176, 172, 160],  # 196.0, 176.4, 171.5, 159.74
    0.99: [198, 178, 173, 161],  # 198.0, 178.2, 173.25, 161.37
    0.995: [199, 179, 174, 162],  # 199.0, 179.1, 174.125, 162.185
    1.0: [200, 180, 175, 163],
}


@pytest.mark.parametrize("ratio", sorted(HAND_COUNTS))
def test_train_aligned_count_per_class_is_exact(ratio):
    images, labels = blank_images_with_class_sizes([200, 180, 175, 163])
    out = make_colored_mnist(images, labels, "train", aligned_ratio=ratio, n_classes=4)
    for c, expected in enumerate(HAND_COUNTS[ratio]):
        in_class = labels == c
        assert int((out["color_labels"][in_class] == c).sum()) == expected
    assert torch.equal(out["aligned"], out["color_labels"] == labels)


def test_conflicting_samples_get_other_colours_evenly(digits):
    images, labels = digits
    out = make_colored_mnist(images, labels, "train", aligned_ratio=0.5, seed=3)
    for c in range(10):
        conflicting = out["color_labels"][(labels == c) & ~out["aligned"]]
        assert len(conflicting) > 0 and not torch.any(conflicting == c)
        counts = np.bincount(conflicting.numpy(), minlength=10)
        others = np.delete(counts, c)
        assert others.min() >= 1 and others.max() - others.min() <= 1  # stratified over the 9 other colours
    # aligned samples do have their class colour
    assert torch.equal(out["color_labels"][out["aligned"]], labels[out["aligned"]])


def test_output_format_and_background_stays_black(digits):
    images, labels = digits
    out = make_colored_mnist(images, labels, "train")
    x = out["images"]
    assert x.shape == (len(images), 3, 8, 8) and x.dtype == torch.float32
    assert out["labels"].dtype == torch.int64 and torch.equal(out["labels"], labels)
    assert out["color_labels"].dtype == torch.int64 and out["aligned"].dtype == torch.bool
    assert x.min() >= 0 and x.max() <= 1
    background = (images == 0).expand_as(x)
    assert background.any() and torch.all(x[background] == 0)
    # and the digit itself is visible: every image keeps some bright foreground
    assert torch.all(x.flatten(1).max(1).values > 0.1)


def test_colour_times_gray_reproduces_the_digit(digits):
    """Recover each image's colour from its own pixels (not from the returned colours): the brightest
    grayscale pixel gives c = x[:, p] / gray[p]; then x / c == gray on every channel, and c is the
    palette colour of color_labels up to the small noise."""
    images, labels = digits
    out = make_colored_mnist(images, labels, "train", color_std=0.005)
    x = out["images"].flatten(2).double()  # (N, 3, 64)
    g = images.flatten(1).double()  # (N, 64)
    brightest = g.argmax(1)
    rows = torch.arange(len(g))
    color = x[rows, :, brightest] / g[rows, brightest][:, None]  # (N, 3)
    assert torch.allclose(color, PALETTE[out["color_labels"]].double(), atol=0.03)  # 6 sigma of the noise
    assert torch.allclose(color, out["colors"].double(), atol=1e-6)
    digit = g > 0
    recovered = x / color[:, :, None]
    assert torch.allclose(
        recovered[digit.unsqueeze(1).expand_as(x)],
        g.unsqueeze(1).expand_as(x)[digit.unsqueeze(1).expand_as(x)],
        atol=1e-5,
    )


def test_colour_noise_has_the_requested_std():
    images, labels = blank_images_with_class_sizes([1000] * 10)
    out = make_colored_mnist(images, labels, "train", color_std=0.02)
    deviation = out["colors"] - PALETTE[out["color_labels"]]
    # palette channels lie in [0.1, 0.95], 2.5 sigma away from the clamp, so clipping barely matters
    assert abs(deviation.std().item() - 0.02) < 0.001
    assert abs(deviation.mean().item()) < 0.001
    still = make_colored_mnist(images, labels, "train", color_std=0.0)
    assert torch.equal(still["colors"], PALETTE[still["color_labels"]])


def test_deterministic_for_a_seed_and_independent_of_global_rng(digits):
    images, labels = digits
    torch.manual_seed(123)
    a = make_colored_mnist(images, labels, "train", seed=7)
    torch.manual_seed(999)
    torch.rand(10)
    state = torch.get_rng_state()
    b = make_colored_mnist(images, labels, "train", seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is not touched
    for key in a:
        assert torch.equal(a[key], b[key]), key
    c = make_colored_mnist(images, labels, "train", seed=8)
    assert not torch.equal(a["color_labels"], c["color_labels"])
    assert not torch.equal(a["images"], c["images"])


def test_test_split_colour_is_independent_of_digit(digits):
    images, labels = digits
    out = make_colored_mnist(images, labels, "test", aligned_ratio=0.99)  # ratio is ignored for test
    table = np.zeros((10, 10), dtype=int)
    np.add.at(table, (labels.numpy(), out["color_labels"].numpy()), 1)
    class_sizes = np.bincount(labels.numpy())
    # every colour appears floor(N_c / 10) or ceil(N_c / 10) times in every class
    assert np.all(table >= class_sizes[:, None] // 10) and np.all(table <= -(-class_sizes[:, None] // 10))
    assert abs(out["aligned"].float().mean().item() - 0.1) < 0.01
    # chi-square test of independence is far from rejecting
    expected = class_sizes[:, None] * table.sum(0)[None, :] / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert chi2 < 30  # df = 81; stratification makes it tiny


def test_train_split_is_biased(digits):
    """Sanity contrast with the test split: in train, colour predicts the digit 95% of the time."""
    images, labels = digits
    out = make_colored_mnist(images, labels, "train", aligned_ratio=0.95)
    assert abs(out["aligned"].float().mean().item() - 0.95) < 0.005


def test_rejects_bad_arguments(digits):
    images, labels = digits
    with pytest.raises(ValueError):
        make_colored_mnist(images, labels, "valid")
    with pytest.raises(ValueError):
        make_colored_mnist(images, labels, "train", aligned_ratio=0.0)
    with pytest.raises(ValueError):
        make_colored_mnist(images, labels, "train", aligned_ratio=1.5)
    with pytest.raises(ValueError):
        make_colored_mnist(images.repeat(1, 3, 1, 1), labels, "train")
    with pytest.raises(ValueError):
        make_colored_mnist(images * 16, labels, "train")
    with pytest.raises(ValueError):
        make_colored_mnist(images, labels, "train", n_classes=5)  # labels go up to 9
