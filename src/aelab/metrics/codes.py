"""What a code is good for: encoding a data set, a linear probe of the labels, a 2-D map.

probe_accuracy   logistic regression on standardised codes, fitted on TRAIN codes, scored on TEST codes
tsne_2d          t-SNE of codes (for figures; never fitted across splits)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ._util import eval_mode


@torch.no_grad()
def encode_all(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Codes (N, d_code) of a whole data set, in eval mode, on the data's device."""
    with eval_mode(model):
        return torch.cat([model.encode(xb).flatten(1) for xb in x.split(batch_size)])


@torch.no_grad()
def reconstruct_all(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([model.decode(model.encode(xb)) for xb in x.split(batch_size)])


def probe_accuracy(
    train_codes: np.ndarray, train_y: np.ndarray, test_codes: np.ndarray, test_y: np.ndarray, max_iter: int = 500
) -> float:
    """Logistic-regression probe: fitted on train codes, scored on held-out test codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    # one BLAS thread: these small products gain nothing from more, and lose a lot on a busy machine
    with threadpool_limits(1, "blas"):
        probe.fit(train_codes.reshape(len(train_codes), -1), train_y)
        return float(probe.score(test_codes.reshape(len(test_codes), -1), test_y))


def tsne_2d(codes: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(2.0, (len(codes) - 1) / 3))
    # 500 iterations (sklearn's default is 1000): the map is settled by then, at half the cost
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity, max_iter=500).fit_transform(
        codes.astype(np.float32)
    )
