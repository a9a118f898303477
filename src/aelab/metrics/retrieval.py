"""Binary codes: Hamming retrieval, the PCA-hashing baseline and label-free code statistics.

Semantic hashing (Salakhutdinov & Hinton 2009): the training codes are the database, each test code
a query, ranked by Hamming distance; relevant = same class label.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ._util import eval_mode


def bits_per_image(model: nn.Module) -> int:
    """Storage cost of one code in bits: `bits` for the binary code, 32 * bits for the float32 baseline code."""
    return model.bits * (32 if model.options["float_bottleneck"] else 1)


@torch.no_grad()
def encode_codes(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Codes of `images` as a uint8 {0, 1} array (N, bits), encoded in batches in eval mode."""
    with eval_mode(model):
        codes = torch.cat([model.encode(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    if not torch.all((codes == 0) | (codes == 1)):
        raise ValueError("the model's codes are not binary (float_bottleneck model?); threshold them first")
    return codes.to(torch.uint8).cpu().numpy()


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def hamming_retrieval(
    train_codes, train_labels, test_codes, test_labels, ks=(10, 100), chunk_size: int | None = None
) -> dict[str, float]:
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
        q = 2 * queries[start : start + chunk_size].astype(np.float64) - 1
        dist = (bits - q @ db_signs) / 2  # (chunk, n_db) Hamming distances
        order = np.argsort(dist, axis=1, kind="stable")  # stable: ties stay in database-index order
        relevant = db_labels[order] == query_labels[start : start + chunk_size, None]
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
def bit_codes(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """{0, 1} codes as uint8 (N, bits): the binary model's bits, or a float model's sigmoid code > 0.5."""
    if not model.options.get("float_bottleneck"):
        return encode_codes(model, images, batch_size)
    with eval_mode(model):
        return torch.cat([(model.encode(xb) > 0.5).to(torch.uint8) for xb in images.split(batch_size)]).cpu().numpy()


@torch.no_grad()
def code_statistics(model: nn.Module, train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[dict, np.ndarray]:
    """Label-free statistics of a binary model's codes; returns (metrics, f) with f_j the bit usage.

    Codes are the {0, 1} bits; for a float_bottleneck model, its sigmoid code thresholded at 0.5. With
    f_j = the fraction of train images whose bit j is 1 and H(f) = -f log2 f - (1 - f) log2(1 - f):
        bits_per_image        storage of one code (32 per float number)
        code_distinct_train   number of distinct train codes (a collapsed code has few)
        bit_balance           mean over bits of f_j (0.5 = every bit on for half the images)
        bits_constant         bits with f_j in {0, 1}, which carry no information
        bit_entropy_mean      mean over bits of H(f_j), in bits (1 at most)
        code_saturation       float_bottleneck only: fraction of sigmoid values outside [0.05, 0.95]
    """
    train_codes = bit_codes(model, train_x)
    f = train_codes.mean(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nan_to_num(f * np.log2(f)) - np.nan_to_num((1 - f) * np.log2(1 - f))
    metrics = {
        "bits_per_image": bits_per_image(model),
        "code_distinct_train": int(len(np.unique(train_codes, axis=0))),
        "code_distinct_test": int(len(np.unique(bit_codes(model, test_x), axis=0))),
        "bit_balance": float(f.mean()),
        "bits_constant": int(((f == 0) | (f == 1)).sum()),
        "bit_entropy_mean": float(entropy.mean()),
    }
    if model.options.get("float_bottleneck"):
        with eval_mode(model):
            s = torch.cat([model.encode(xb) for xb in test_x.split(512)])
        metrics["code_saturation"] = float(((s < 0.05) | (s > 0.95)).double().mean())
    return metrics, f
