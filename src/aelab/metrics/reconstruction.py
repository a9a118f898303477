"""Reconstruction error in the unit of Hinton & Salakhutdinov (2006): the per-image sum of squared errors.

    recon_sse = mean over test images of sum_i (x_i - x_hat_i)^2
Their MNIST numbers (30-D codes): deep AE 3.00, logistic PCA 8.01, PCA 13.87.
"""

from __future__ import annotations

import numpy as np


def sse_per_image(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """sum over pixels of (x - x_hat)^2, one value per image (N,)."""
    return ((x.reshape(len(x), -1) - x_hat.reshape(len(x), -1)) ** 2).sum(1)


def pca_reconstruction_sse(train_x: np.ndarray, test_x: np.ndarray, n_components: int) -> float:
    """Test SSE per image of PCA with n_components fitted on the train images only."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, svd_solver="covariance_eigh").fit(train_x.reshape(len(train_x), -1))
    x_hat = pca.inverse_transform(pca.transform(test_x.reshape(len(test_x), -1)))
    return float(sse_per_image(test_x, x_hat).mean())


def linear_decoder_sse(
    train_codes: np.ndarray, train_x: np.ndarray, test_codes: np.ndarray, test_x: np.ndarray
) -> np.ndarray:
    """Per-image test SSE of the least-squares affine decoder x_hat = W b + c fitted on the train codes.

    Solved through the normal equations A^T A w = A^T X (A = [b, 1], (bits+1) x (bits+1)), with lstsq giving
    the minimum-norm solution when a bit is constant or bits are collinear: 10x faster than lstsq on the
    N x (bits+1) matrix itself, and accurate here (0/1 columns, float64)."""

    def design(b):
        return np.c_[b.astype(np.float64), np.ones(len(b))]

    x_tr = train_x.reshape(len(train_x), -1).astype(np.float64)
    a = design(train_codes)
    weights, *_ = np.linalg.lstsq(a.T @ a, a.T @ x_tr, rcond=None)
    return sse_per_image(test_x.astype(np.float64), design(test_codes) @ weights)
