"""Debiasing methods for a classifier whose training data carry a spurious shortcut (ColoredMNIST's colour), and
the metrics that grade them. One idea per module:

    gce         the Generalized Cross Entropy (Zhang & Sabuncu 2018)
    classifier  the MLP classifier and its cross-entropy training (uniform, resampled, synthesis-augmented)
    biased      the GCE-trained biased classifier and its snapshot ensemble (Nam et al. 2020)
    lff         Learning from Failure (Nam et al. 2020)
    jtt         Just Train Twice (Liu et al. 2021)
    reweight    detect-then-reweight flags and weights; the group-balanced oracle weights
    scores      label-free detection scores of bias-conflicting samples (kNN, Gaussian NLL, PCA, reconstruction,
                cross-entropy, rank average)
    synthesis   bias-swap synthesis with a discovered bias factor (after DisEnt, Lee et al. 2021)
    features    the small MLP autoencoder and the linear probe of its codes
    metrics     unbiased / aligned / conflicting / worst-group accuracy
    device      where the models run (CPU generators for every random draw) and bf16 autocast

Every non-oracle function takes images and class labels only; the functions that take bias labels say so.
"""

from .biased import biased_log_probabilities, train_biased_classifier
from .classifier import MLPClassifier, accuracy, log_probabilities, new_classifier, predict, train_classifier
from .features import MLPAutoencoder, encode, linear_probe, probe_accuracies, train_autoencoder
from .gce import gce_loss
from .jtt import identification_predictions, upweights
from .lff import ema_update, lff_weights, train_lff
from .metrics import group_metrics
from .reweight import balanced_flag_weights, group_balanced_weights, top_fraction_flags
from .scores import (
    METHODS,
    choose_k,
    cross_entropy_scores,
    gaussian_nll_scores,
    knn_distance_scores,
    pca_residual_scores,
    rank_average,
    reconstruction_error_scores,
    score_samples,
    within_class_ranks,
)
from .synthesis import SWAPS, Synthesizer, bias_reliance, colour_stats, swap_brightness, swap_colour, swap_position

__all__ = [
    "METHODS",
    "SWAPS",
    "MLPAutoencoder",
    "MLPClassifier",
    "Synthesizer",
    "accuracy",
    "balanced_flag_weights",
    "bias_reliance",
    "biased_log_probabilities",
    "choose_k",
    "colour_stats",
    "cross_entropy_scores",
    "ema_update",
    "encode",
    "gaussian_nll_scores",
    "gce_loss",
    "group_balanced_weights",
    "group_metrics",
    "identification_predictions",
    "knn_distance_scores",
    "lff_weights",
    "linear_probe",
    "log_probabilities",
    "new_classifier",
    "pca_residual_scores",
    "predict",
    "probe_accuracies",
    "rank_average",
    "reconstruction_error_scores",
    "score_samples",
    "swap_brightness",
    "swap_colour",
    "swap_position",
    "top_fraction_flags",
    "train_autoencoder",
    "train_biased_classifier",
    "train_classifier",
    "train_lff",
    "upweights",
    "within_class_ranks",
]
