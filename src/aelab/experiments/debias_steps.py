"""The steps of the debias experiment (debias.run_one drives them): train the autoencoder, score every image by every
method of aelab.debias.scores, choose the kNN scores' k on the validation images, grade every method on the test
images, and score them again on the official MNIST test digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import data as datamod
from .. import runs
from ..data.colored import make_colored_mnist
from ..debias import scores as detection
from ..metrics.ranking import class_metrics
from ..train import TrainConfig, resolve_device
from .common import OFFICIAL_TEST, train_or_resume


def train_autoencoder(settings, used: dict, ae_dir: Path):
    """The autoencoder, trained by the common trainer on the same images (no labels of any kind); a finished run is
    kept. Returns the model."""
    cfg = TrainConfig(
        model="ae",
        model_options={"loss": "mse"},
        dataset="colored-mnist",
        dataset_options={
            "aligned_ratio": settings.aligned_ratio,
            "seed": settings.seed,
            "source": settings.dataset,
        },
        data_dir=settings.data_dir,
        train_limit=settings.train_limit,
        epochs=used["ae_epochs"],
        seed=settings.seed,
        device=settings.device,
        amp=settings.amp,
        # the AE sees every train image, labels unused: finding the bias-conflicting ones among them is the task
        val_fraction=0.0,
        out=str(ae_dir),
    )
    train_or_resume(cfg, progress=not settings.no_progress)
    return runs.load_model(ae_dir)


def score_all(settings, used: dict, images, digits, ae, k: int, timings: dict, features: dict, progress=None) -> dict:
    """Every method of aelab.debias.scores on one image set, with this run's settings (images and digits only)."""
    return detection.score_samples(
        images,
        digits,
        ae,
        k=k,
        n_models=used["n_models"],
        gce_epochs=settings.gce_epochs,
        q=used["gce_q"],
        seed=settings.seed,
        pca_components=used["pca_components"],
        timings=timings,
        representations=features,
        device=resolve_device(settings.device),
        amp=settings.amp,
        progress=progress,
    )


def choose_knn_k(scores: dict, features: dict, y, conf, held, ks: list[int], default_k: int) -> dict:
    """The k of ae_knn and gce_knn, each chosen on the validation images `held` (their colour labels); their scores
    in `scores` are replaced by those of the chosen k. Returns {method: the choice}."""
    choices = {}
    for method, feature in (("ae_knn", "ae_codes"), ("gce_knn", "gce_log_probs")):
        choice = detection.choose_k(features[feature], y, conf, held, ks, default_k)
        scores[method] = choice.pop("scores")
        choices[method] = choice
    return choices


def grade(scores: dict, keep, y, conf, timings: dict) -> dict:
    """Every method graded on the test images `keep` (outside validation): the only other place the colour labels
    enter."""
    methods = {}
    for name, sc in scores.items():
        graded = class_metrics(sc[keep], y[keep], conf[keep])
        methods[name] = {"description": detection.METHODS[name], "time_s": timings.get(name), **graded}
    return methods


def score_official(settings, ae, used: dict, choices: dict, progress=None) -> dict:
    """Every method on the official MNIST test digits coloured as a biased train split (colouring seed + 1, so
    that it is not the train split's draw), graded on all of them, with the k chosen on the validation images."""
    gray, digits, _ = datamod.load_test_split(OFFICIAL_TEST, settings.data_dir)
    seed = (settings.seed + 1) % (2**63)
    colored = make_colored_mnist(gray, digits, split="train", aligned_ratio=settings.aligned_ratio, seed=seed)
    images, conf = colored["images"], (~colored["aligned"]).numpy()
    y = digits.numpy()
    features: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    scores = score_all(settings, used, images, digits, ae, choices["gce_knn"]["chosen_k"], timings, features, progress)
    scores["ae_knn"] = detection.knn_distance_scores(features["ae_codes"], y, choices["ae_knn"]["chosen_k"])
    return {
        name: {"description": detection.METHODS[name], "time_s": timings.get(name), **class_metrics(sc, y, conf)}
        for name, sc in scores.items()
    }
