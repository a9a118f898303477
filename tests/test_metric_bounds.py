"""One rule says which metrics lie in [0, 1] (their intervals are clipped there and may be bootstrapped), for
every spelling the tables use; every column the multi-seed experiments emit is listed here with its answer."""

import importlib

import pytest

from aelab.metrics.intervals import metric_bounds, summarize

UNIT = (0.0, 1.0)
# every column of the experiments summarised by aelab.experiments.multiseed, and what it is
EXPECTED = {
    "binary": {"precision@10", "precision@100", "mAP", "probe_accuracy"},
    "debias": {"AUROC", "AP", "precision@k"},
    "demo": {"probe_accuracy", "raw_probe_accuracy"},
    "hinton2006": {"probe accuracy"},
}


@pytest.mark.parametrize("experiment", sorted(EXPECTED))
def test_every_emitted_column_is_classified(experiment):
    module = importlib.import_module(f"aelab.experiments.{experiment}")
    bounded = {c for c in module.COLUMNS if metric_bounds(c) == UNIT}
    assert bounded == EXPECTED[experiment]


@pytest.mark.parametrize(
    "name",
    ["probe_accuracy", "probe accuracy", "raw_probe_accuracy", "accuracy", "worst-group acc", "AUROC", "auroc",
     "AP", "mAP", "precision@10", "p@10", "recall@5", "fraction flagged", "saturation", "bit_entropy_mean"],
)  # fmt: skip
def test_bounded_names(name):
    assert metric_bounds(name) == UNIT


@pytest.mark.parametrize(
    "name",
    ["recon_sse", "ratio to PCA", "NLL (nats, IWAE k=100)", "test KL (nats)", "code size", "epoch kept",
     "time (s)", "test error %", "unbiased accuracy (%)", "distinct train codes", "pca_sse (same code size)"],
)  # fmt: skip
def test_unbounded_names(name):
    assert metric_bounds(name) is None


def test_the_multiseed_probe_accuracy_interval_is_clipped_at_1():
    """The bug this rule fixes: `probe_accuracy` was an unbounded t interval, which can pass 1."""
    from aelab.experiments.multiseed import bounds_of
    from aelab.seeds import summarize_metrics

    values = [0.999, 1.0, 0.97]
    for bounds in (bounds_of("probe_accuracy"), metric_bounds("probe_accuracy")):
        assert summarize(values, bounded=bounds)["ci95"][1] == 1.0
    assert summarize(values, bounded=None)["ci95"][1] > 1.0  # what it was
    per_seed = [{"probe_accuracy": v, "recon_sse": 10.0 + v} for v in values]
    assert summarize_metrics(per_seed)["probe_accuracy"]["ci95"][1] == 1.0


def test_every_eval_json_metric_is_classified(tmp_path):
    """`aelab train --seeds N` summarises eval.json's metrics by this rule: every name evaluate writes for the AE,
    the VAE and the binary AE is listed here with its answer (a new metric must be added to one of the sets)."""
    from aelab.evaluate import evaluate
    from aelab.train import TrainConfig, train

    bounded = {"probe_accuracy", "raw_probe_accuracy", "saturation", "code_saturation", "bit_balance",
               "bit_entropy_mean", "precision@10", "precision@100", "mAP"}  # fmt: skip
    seen = set()
    for model, options in (("ae", {"hidden": [8], "latent": 2}), ("vae", {"hidden": [8], "latent": 2}),
                           ("binary", {"bits": 8})):  # fmt: skip
        cfg = TrainConfig(model=model, model_options=options, dataset="digits", train_limit=120, epochs=1,
                          out=str(tmp_path / model), tensorboard=False)  # fmt: skip
        metrics = evaluate(train(cfg, progress=False), figures=False, iwae_k=2, progress=False)["metrics"]
        numeric = {k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        seen |= numeric
    wrong = {k for k in seen if (metric_bounds(k) == UNIT) != (k in bounded)}
    assert not wrong, wrong
    assert {"probe_accuracy", "raw_probe_accuracy"} <= seen
