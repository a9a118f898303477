"""Binary autoencoder: a conv AE whose code is a vector of {0, 1} bits, trained with straight-through estimators.

Forward pass of the bottleneck: b = 1[a > 0] for the encoder's pre-activation a (so a = 0 gives 0).
The step has zero derivative almost everywhere, so the backward pass substitutes a surrogate
("straight-through estimator", STE). With g = dL/db the incoming gradient, `backward` selects:

    identity          dL/da = g                          plain STE (Bengio, Leonard & Courville 2013,
                                                         "Estimating or propagating gradients through
                                                         stochastic neurons", arXiv:1308.3432)
    clipped           dL/da = g * 1[|a| <= 1]            the hardtanh derivative, as in BinaryNet
                                                         (Courbariaux, Hubara et al. 2016, arXiv:1602.02830);
                                                         BinaryNet binarizes to sign(a) in {-1, +1}; for our
                                                         {0, 1} = (sign + 1)/2 the exact analogue would carry a
                                                         factor 1/2, which we drop (it only rescales the step)
    sigmoid-adjusted  dL/da = g * s sigma(s a)(1 - sigma(s a))
                                                         derivative of the sigmoid of slope s: the
                                                         sigmoid-adjusted STE of Chung, Ahn & Bengio (2016,
                                                         "Hierarchical multiscale RNNs", arXiv:1609.01704),
                                                         with a fixed slope instead of their annealed one
    clip-grad-values  dL/da = clamp(g, -1, 1)            what the popular STE blog post does
                                                         (backward returns F.hardtanh(grad_output))

"clipped" and "clip-grad-values" are easy to confuse but are different estimators. "clipped" gates on the
INPUT: it passes g unchanged where the pre-activation is inside [-1, 1] and blocks it (0) where the unit is
saturated, |a| > 1, whatever the size of g. "clip-grad-values" looks only at the GRADIENT: it passes every
gradient, whatever a is, but caps its magnitude at 1 -- it is gradient-value clipping, not the hardtanh
derivative. For |g| <= 1 it is identical to the plain identity STE.

Retrieval evaluation (semantic hashing, Salakhutdinov & Hinton 2009): the training codes are the
database, each test code a query, ranked by Hamming distance; relevant = same class label.
See `hamming_retrieval` for precision@k and mAP, and `pca_sign_codes` for the PCA-hashing baseline.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn as nn

from .ae import check_positive_sizes, reconstruction_loss

BACKWARD_RULES = ["identity", "clipped", "sigmoid-adjusted", "clip-grad-values"]


class BinarizeSTE(torch.autograd.Function):
    """b = 1[a > 0] forward; the backward surrogate selected by `rule` (see the module docstring)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, rule: str, slope: float) -> torch.Tensor:
        ctx.save_for_backward(a)
        ctx.rule = rule
        ctx.slope = slope
        return (a > 0).to(a.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (a,) = ctx.saved_tensors
        if ctx.rule == "identity":
            grad_in = grad_out
        elif ctx.rule == "clipped":
            grad_in = grad_out * (a.abs() <= 1).to(grad_out.dtype)
        elif ctx.rule == "sigmoid-adjusted":
            s = torch.sigmoid(ctx.slope * a)
            grad_in = grad_out * ctx.slope * s * (1 - s)
        else:  # "clip-grad-values"
            grad_in = grad_out.clamp(-1.0, 1.0)
        return grad_in, None, None


def binarize(a: torch.Tensor, backward: str = "identity", slope: float = 1.0) -> torch.Tensor:
    """{0, 1} code 1[a > 0] (same dtype as a) whose gradient follows the STE rule `backward`.

    `slope` is used only by "sigmoid-adjusted": the surrogate is d/da sigma(slope * a).
    """
    if backward not in BACKWARD_RULES:
        raise ValueError(f"unknown backward rule {backward!r}; choose from {', '.join(BACKWARD_RULES)}")
    return BinarizeSTE.apply(a, backward, float(slope))


def conv_out(size: int) -> int:
    """Spatial size after Conv2d(kernel 4, stride 2, padding 1): floor((size + 2 - 4) / 2) + 1 = floor(size / 2)."""
    return (size + 2 - 4) // 2 + 1


class BinaryAE(nn.Module):
    """Conv autoencoder with a `bits`-bit binary bottleneck (or a sigmoid float code of the same size).

    encoder: Conv(C->c1, k4 s2 p1) ReLU Conv(c1->c2, k4 s2 p1) ReLU flatten Linear [BatchNorm] -> a (bits)
    code:    b = binarize(a, backward)  in {0, 1}^bits      (float_bottleneck: b = sigmoid(a) in (0, 1)^bits)
    decoder: Linear -> c2 x h2 x w2, ReLU, ConvT(c2->c1, k4 s2 p1) ReLU ConvT(c1->C, k4 s2 p1) -> sigmoid

    Each k4 s2 p1 conv maps a size n to floor(n/2) and each transposed conv maps m to 2m; an output_padding
    of 1 restores odd sizes, so any H, W >= 4 works: 28 -> 14 -> 7, 8 -> 4 -> 2, 9 -> 4 -> 2 (-> 4 -> 9).

    code_norm="batchnorm" (default) standardises each pre-activation over the batch (BatchNorm1d without
    affine parameters; running statistics in eval mode, so encode the database in eval mode) before the
    threshold; "none" leaves a as the Linear output. The float baseline uses the same normalisation.
    In training mode a batch of one image is an error (BatchNorm needs two values per bit).

    loss (per image, summed over pixels and channels, then mean over the batch), as in ae.py:
        mse: sum (x - x_hat)^2          bce: -sum x log x_hat + (1 - x) log(1 - x_hat)
    """

    def __init__(self, input_shape=(1, 28, 28), bits: int = 512, backward: str = "identity", loss: str = "mse",
                 float_bottleneck: bool = False, slope: float = 1.0, channels=(32, 64), code_norm: str = "batchnorm"):
        super().__init__()
        channels = [int(c) for c in channels]
        check_positive_sizes(bits=bits, channels=channels)
        if len(channels) != 2:
            raise ValueError(f"channels must be two integers (one per conv layer), got {channels!r}")
        if backward not in BACKWARD_RULES:
            raise ValueError(f"unknown backward rule {backward!r}; choose from {', '.join(BACKWARD_RULES)}")
        if loss not in ("mse", "bce"):
            raise ValueError(f"unknown loss {loss!r}; choose from bce, mse")
        if code_norm not in ("batchnorm", "none"):
            raise ValueError(f"unknown code_norm {code_norm!r}; choose from batchnorm, none")
        if not slope > 0:
            raise ValueError(f"slope must be positive, got {slope!r}")
        c, h, w = (int(s) for s in input_shape)
        if min(h, w) < 4:
            raise ValueError(f"input height and width must be at least 4, got {tuple(input_shape)}")
        self.options = dict(input_shape=[c, h, w], bits=bits, backward=backward, loss=loss,
                            float_bottleneck=bool(float_bottleneck), slope=float(slope), channels=channels,
                            code_norm=code_norm)
        self.input_shape = (c, h, w)
        self.bits = bits
        c1, c2 = channels
        h1, w1 = conv_out(h), conv_out(w)
        h2, w2 = conv_out(h1), conv_out(w1)
        self.hidden_shape = (c2, h2, w2)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c1, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(c1, c2, 4, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(c2 * h2 * w2, bits),
        )
        if code_norm == "batchnorm":
            # Why: without it the codes collapse. Early in training dL/db is nearly the same for every image
            # ("make the output darker"), the STE pushes every a_j the same way without bound (no saturation),
            # and all images end up with ONE code: on 256 sklearn digits, 16 bits, Adam 1e-3, every rule
            # stalled at the mean-image error with |a| in the thousands; on mnist5k, 64 bits, 3 epochs, the
            # 4000 training images shared 2-3 codes (retrieval mAP 0.10-0.14, chance). Standardising each
            # bit over the batch keeps a_j centred, so each bit stays on for about half the images
            # (same runs with it: ~3900 distinct codes, mAP 0.48-0.50).
            self.encoder.append(nn.BatchNorm1d(bits, affine=False))
        # output_padding = 1 where the conv floored an odd size, so the decoder returns exactly (C, H, W)
        self.decoder = nn.Sequential(
            nn.Linear(bits, c2 * h2 * w2), nn.ReLU(), nn.Unflatten(1, (c2, h2, w2)),
            nn.ConvTranspose2d(c2, c1, 4, 2, 1, output_padding=(h1 - 2 * h2, w1 - 2 * w2)), nn.ReLU(),
            nn.ConvTranspose2d(c1, c, 4, 2, 1, output_padding=(h - 2 * h1, w - 2 * w1)),
        )

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder output a (N, bits) that the bottleneck thresholds (after the batchnorm, if any)."""
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """{0, 1} code (float tensor, N x bits); the sigmoid float code when float_bottleneck."""
        a = self.pre_activation(x)
        if self.options["float_bottleneck"]:
            return torch.sigmoid(a)
        return binarize(a, self.options["backward"], self.options["slope"])

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms "loss" (the training objective) and "recon_mse" (per-image sum of squared error, mean over the
        batch, reported for both losses so that mse and bce runs can be compared)."""
        logits = self.decode_logits(self.encode(x))
        recon = reconstruction_loss(logits, x, self.options["loss"], logits=True).mean()
        sse = (torch.sigmoid(logits) - x).pow(2).flatten(1).sum(1).mean()
        return {"loss": recon, "recon_mse": sse}

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.loss_terms(x)["loss"]


def bits_per_image(model: BinaryAE) -> int:
    """Storage cost of one code in bits: `bits` for the binary code, 32 * bits for the float32 baseline code."""
    return model.bits * (32 if model.options["float_bottleneck"] else 1)


@torch.no_grad()
def encode_codes(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Codes of `images` as a uint8 {0, 1} array (N, bits), encoded in batches in eval mode."""
    was_training = model.training
    model.eval()
    try:
        codes = [model.encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    codes = torch.cat(codes)
    if not torch.all((codes == 0) | (codes == 1)):
        raise ValueError("the model's codes are not binary (float_bottleneck model?); threshold them first")
    return codes.to(torch.uint8).cpu().numpy()


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def hamming_retrieval(train_codes, train_labels, test_codes, test_labels, ks=(10, 100),
                      chunk_size: int | None = None) -> dict[str, float]:
    """Hamming-ranking retrieval: TRAIN codes are the database, each TEST code is a query.

    For a query q, the database is ranked by Hamming distance d(q, x) = number of differing bits, computed
    for a whole chunk of queries at once from the +-1 codes s = 2c - 1:  d = (bits - s_q . s_x) / 2.
    Ties (frequent with few bits) are broken deterministically by database index: a stable sort keeps
    equal-distance items in their original order. This makes the score reproducible, but not
    tie-averaged -- a different database order can change precision@k and mAP when many items tie.

    With rel_i = 1 if the i-th ranked item has the query's label, and P@i = (1/i) sum_{j<=i} rel_j:
        precision@k = P@k                                  (mean over queries)
        AP          = sum_i P@i rel_i / sum_i rel_i         over the full ranked database
        mAP         = mean of AP over queries; a query with no relevant item has AP = 0.
    Queries are processed in chunks of `chunk_size` rows (default: about 2^22 distances per chunk).
    Returns {"precision@k": ... for k in ks, "mAP": ...}.
    """
    db = _as_numpy(train_codes)
    queries = _as_numpy(test_codes)
    db_labels = _as_numpy(train_labels).reshape(-1)
    query_labels = _as_numpy(test_labels).reshape(-1)
    if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
        raise ValueError(f"codes must be (N, bits) arrays with the same bits, got {db.shape} and {queries.shape}")
    if len(db) != len(db_labels) or len(queries) != len(query_labels):
        raise ValueError("codes and labels differ in length")
    for codes in (db, queries):
        if not np.all((codes == 0) | (codes == 1)):
            raise ValueError("codes must be in {0, 1}")
    n_db, bits = db.shape
    ks = [int(k) for k in ks]
    if any(k < 1 or k > n_db for k in ks):
        raise ValueError(f"every k must be in 1..{n_db} (the database size), got {ks}")
    if chunk_size is None:
        chunk_size = max(1, (1 << 22) // n_db)
    db_signs = (2 * db.astype(np.float64) - 1).T  # (bits, n_db); float64 products of +-1 are exact integers
    ranks = np.arange(1, n_db + 1)
    precision_sums = {k: 0.0 for k in ks}
    ap_sum = 0.0
    for start in range(0, len(queries), chunk_size):
        q = 2 * queries[start:start + chunk_size].astype(np.float64) - 1
        dist = (bits - q @ db_signs) / 2  # (chunk, n_db) Hamming distances
        order = np.argsort(dist, axis=1, kind="stable")  # stable: ties stay in database-index order
        relevant = db_labels[order] == query_labels[start:start + chunk_size, None]
        hits = np.cumsum(relevant, axis=1)
        for k in ks:
            precision_sums[k] += (hits[:, k - 1] / k).sum()
        n_relevant = hits[:, -1]
        ap = (relevant * hits / ranks).sum(1) / np.maximum(n_relevant, 1)  # AP = 0 when nothing is relevant
        ap_sum += ap.sum()
    n_queries = len(queries)
    result = {f"precision@{k}": float(precision_sums[k] / n_queries) for k in ks}
    result["mAP"] = float(ap_sum / n_queries)
    return result


def pca_sign_codes(train_x, test_x, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA hashing baseline: {0, 1} codes 1[(x - mean) . v_j > 0] for the top `bits` principal directions v_j.

    The mean and the directions are fitted on TRAIN only (eigenvectors of the centred scatter matrix, float64);
    test images are centred with the train mean. Inputs (N, ...) are flattened per image.
    The sign of each v_j is arbitrary, but flipping it flips bit j in every code, which leaves all
    Hamming distances unchanged. Returns (train_codes, test_codes) as uint8 arrays (N, bits).
    """
    train = _as_numpy(train_x).reshape(len(train_x), -1).astype(np.float64)
    test = _as_numpy(test_x).reshape(len(test_x), -1).astype(np.float64)
    if train.shape[1] != test.shape[1]:
        raise ValueError("train and test images differ in size")
    if not 1 <= bits <= min(train.shape):
        raise ValueError(f"bits must be in 1..{min(train.shape)} (min of train size and pixel count), got {bits}")
    mean = train.mean(0)
    centred = train - mean
    # eigenvectors of the scatter matrix X^T X (pixels x pixels) = the right singular vectors of X, found
    # several times faster than by an SVD of the N x pixels matrix when N >> pixels (4000 x 784: ~4x)
    eigval, eigvec = np.linalg.eigh(centred.T @ centred)
    directions = eigvec[:, ::-1][:, :bits]  # (pixels, bits), largest variance first
    train_codes = ((train - mean) @ directions > 0).astype(np.uint8)
    test_codes = ((test - mean) @ directions > 0).astype(np.uint8)
    return train_codes, test_codes


@torch.no_grad()
def binary_diagnostics(model: BinaryAE, train_x: torch.Tensor, test_x: torch.Tensor, fig_dir) -> tuple[dict, list]:
    """Label-free code statistics for `aelab evaluate` (registered as EXTRA_DIAGNOSTICS["binary"]).

    Codes are the {0, 1} bits; for a float_bottleneck model, its sigmoid code thresholded at 0.5. With
    f_j = the fraction of train images whose bit j is 1 and H(f) = -f log2 f - (1 - f) log2(1 - f):
        bits_per_image        storage of one code (32 per float number)
        code_distinct_train   number of distinct train codes (a collapsed code has few)
        bit_balance           mean over bits of f_j (0.5 = every bit on for half the images)
        bits_constant         bits with f_j in {0, 1}, which carry no information
        bit_entropy_mean      mean over bits of H(f_j), in bits (1 at most)
        code_saturation       float_bottleneck only: fraction of sigmoid values outside [0.05, 0.95]
    Figure: the histogram of f_j.
    """
    from pathlib import Path

    from .. import report

    def codes_of(x: torch.Tensor) -> np.ndarray:
        if not model.options["float_bottleneck"]:
            return encode_codes(model, x)
        model.eval()
        return np.concatenate([(model.encode(xb) > 0.5).to(torch.uint8).numpy() for xb in x.split(512)])

    train_codes = codes_of(train_x)
    f = train_codes.mean(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nan_to_num(f * np.log2(f)) - np.nan_to_num((1 - f) * np.log2(1 - f))
    metrics = {"bits_per_image": bits_per_image(model),
               "code_distinct_train": int(len(np.unique(train_codes, axis=0))),
               "code_distinct_test": int(len(np.unique(codes_of(test_x), axis=0))),
               "bit_balance": float(f.mean()), "bits_constant": int(((f == 0) | (f == 1)).sum()),
               "bit_entropy_mean": float(entropy.mean())}
    if model.options["float_bottleneck"]:
        model.eval()
        s = torch.cat([model.encode(xb) for xb in test_x.split(512)])
        metrics["code_saturation"] = float(((s < 0.05) | (s > 0.95)).double().mean())
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(f, bins=np.linspace(0, 1, 41))
    ax.set_xlabel("fraction of train images with the bit on")
    ax.set_ylabel("bits")
    ax.set_title(f"bit usage ({model.bits} bits)")
    path = report.save_png(fig, Path(fig_dir) / "bit_usage.png")
    return metrics, [("Bit usage over the train images", path)]
