"""Independent computations the tests compare aelab with: sklearn used directly, the protocol re-derived from
its description."""

from __future__ import annotations

import numpy as np


def sklearn_probe(train_features, train_labels, test_features, test_labels, C: float = 1.0) -> float:
    """Standardise, then logistic regression, both fitted on the train features only; accuracy on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=500))
        probe.fit(train_features, train_labels)
        return float(probe.score(test_features, test_labels))


def protocol_validation_indices(train_labels) -> np.ndarray:
    """The protocol's validation split, derived here from its description: a stratified 10% of the train
    split, sklearn's train_test_split with random_state 0."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(train_labels)
    n_val = round(0.1 * len(labels))
    return np.sort(train_test_split(np.arange(len(labels)), test_size=n_val, stratify=labels, random_state=0)[1])


def sklearn_grid_probe(train_features, train_labels, test_features, test_labels, held) -> tuple[float, float]:
    """(test accuracy, C) of sklearn's own grid search: C chosen by accuracy on the `held` rows of the train
    features (fitted on the others), then refitted on all of them (refit=True) and scored on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, PredefinedSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    fold = np.full(len(train_labels), -1)
    fold[held] = 0
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    search = GridSearchCV(pipe, {"logisticregression__C": [0.001, 0.01, 0.1, 1.0, 10.0]}, cv=PredefinedSplit(fold))
    with threadpool_limits(1, "blas"):
        search.fit(train_features, np.asarray(train_labels))
        return float(search.score(test_features, np.asarray(test_labels))), search.best_params_["logisticregression__C"]
