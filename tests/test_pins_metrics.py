"""Pins of the metrics where they are used: which names are bounded (and so clipped in a seed summary), the
binary code statistics evaluate reports, compare's seed groups (one seed each; paired differences of bounded
metrics), the staleness note of an old eval.json, and a network spec with unknown keys."""

import json
import os
import shutil

import numpy as np
import pytest
import scipy.stats
import torch

from aelab.cli import main
from aelab.metrics.intervals import metric_bounds
from helpers import one_line_exit_2

pytestmark = pytest.mark.usefixtures("one_thread")

UNIT = (0.0, 1.0)
BOUNDED = ["auc", "AUC", "test auc", "auroc", "AUROC", "auprc", "ap", "AP", "map", "mAP", "acc", "accuracy",
           "probe_accuracy", "worst-group acc", "precision", "precision@10", "p@10", "ap@5", "map@100", "recall",
           "recall@5", "fraction flagged", "saturation", "code_saturation", "bit_balance", "bit_entropy_mean"]  # fmt: skip
UNBOUNDED = ["recon_sse", "auc (%)", "accuracy percent", "nll_nats", "sauce", "mapping", "capacity", "time (s)",
             "code_distinct_test", "bits_per_image", "ratio to PCA", "epoch"]  # fmt: skip


@pytest.mark.parametrize("name", BOUNDED)
def test_every_bounded_metric_name_is_bounded(name):
    assert metric_bounds(name) == UNIT


@pytest.mark.parametrize("name", UNBOUNDED)
def test_other_names_are_not(name):
    assert metric_bounds(name) is None


def test_a_seed_summary_clips_an_auc_interval_at_1():
    """Where the bounds are used: `train --seeds` and compare summarise each metric; an AUC near 1 over three seeds
    has a Student t interval past 1 (computed here), which the summary clips."""
    from aelab.seeds import summarize_metrics

    values = [0.999, 1.0, 0.97]
    half = scipy.stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    assert np.mean(values) + half > 1
    summary = summarize_metrics([{"auc": v, "recon_sse": v} for v in values])
    assert summary["auc"]["ci95"] == pytest.approx([np.mean(values) - half, 1.0])
    assert summary["recon_sse"]["ci95"][1] == pytest.approx(np.mean(values) + half)


def _binary_model(float_bottleneck: bool, scale: float):
    from aelab import models

    torch.manual_seed(0)
    model = models.create("binary", input_shape=[1, 8, 8], bits=8, float_bottleneck=float_bottleneck)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)  # larger weights: codes that saturate the sigmoid
    return model.eval()


@pytest.mark.parametrize("float_bottleneck", [False, True])
def test_code_statistics_count_the_test_codes_and_measure_saturation(float_bottleneck):
    """code_distinct_test counts the distinct codes of the TEST images; code_saturation is the fraction of sigmoid
    code values outside [0.05, 0.95] (float bottleneck only): both computed here from the encoder's output."""
    from aelab.data import load
    from aelab.metrics.retrieval import code_statistics

    model = _binary_model(float_bottleneck, scale=4.0)
    train_x, test_x = load("digits", "train")[0][:200], load("digits", "test")[0]
    metrics, _ = code_statistics(model, train_x, test_x)
    with torch.no_grad():
        codes = {name: model.encode(x) for name, x in (("train", train_x), ("test", test_x))}
    bits = {name: (c > 0.5).numpy() if float_bottleneck else c.numpy() for name, c in codes.items()}
    distinct = {name: len(np.unique(b, axis=0)) for name, b in bits.items()}
    assert distinct["train"] != distinct["test"]  # the two counts are told apart
    assert metrics["code_distinct_test"] == distinct["test"]
    assert metrics["code_distinct_train"] == distinct["train"]
    if float_bottleneck:
        s = codes["test"]
        saturation = float(((s < 0.05) | (s > 0.95)).double().mean())
        assert 0.05 < saturation < 0.95
        assert metrics["code_saturation"] == pytest.approx(saturation)
    else:
        assert "code_saturation" not in metrics


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    """A tiny trained AE with an eval.json of chosen metrics that records the weights it scored."""
    from aelab import runs

    run = tmp_path_factory.mktemp("runs") / "ae"
    argv = ["train", "--dataset", "digits", "--train-limit", "100", "--hidden", "8", "--latent", "2", "--epochs",
            "1", "--quiet", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    metrics = {"recon_sse": 10.0, "probe_accuracy": 0.5, "auc": 0.5}
    (run / "eval.json").write_text(json.dumps({"metrics": metrics, "scored": runs.weights_record(run)}))
    return run


def _group(root, name, run, metrics_per_seed):
    """A --seeds folder of copies of `run`, seed-<s>/ for s = 0, 1, ..., each eval.json with the given metrics."""
    group = root / name
    for seed, metrics in enumerate(metrics_per_seed):
        folder = group / f"seed-{seed}"
        shutil.copytree(run, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "seed": seed}))
        result = json.loads((folder / "eval.json").read_text())
        result["metrics"].update(metrics)
        (folder / "eval.json").write_text(json.dumps(result))
    return group


def test_two_one_seed_groups_get_the_note_not_a_paired_table(ae_run, tmp_path):
    from aelab.compare import compare

    a, b = (_group(tmp_path, name, ae_run, [{}]) for name in ("a", "b"))
    result = compare([a, b], tmp_path / "cmp")
    assert result["paired"] == []
    assert any("one seed each, so no paired differences" in n for n in result["notes"])
    assert "Paired differences" not in (tmp_path / "cmp" / "comparison.md").read_text()


def test_paired_differences_of_bounded_metrics_stay_in_minus_1_to_1(ae_run, tmp_path):
    """B - A of an accuracy and an AUC that flip between 0 and 1 over three seeds: the Student t interval of the
    differences (computed here) reaches far past +-1; compare's stays within [-1, 1]. recon_sse is not clipped."""
    from aelab.compare import compare

    a_values, b_values = [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]
    a = _group(tmp_path, "a", ae_run, [{"probe_accuracy": v, "auc": v, "recon_sse": 10 * v} for v in a_values])
    b = _group(tmp_path, "b", ae_run, [{"probe_accuracy": v, "auc": v, "recon_sse": 10 * v} for v in b_values])
    (paired,) = compare([a, b], tmp_path / "cmp")["paired"]
    d = np.subtract(b_values, a_values)
    half = scipy.stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert d.mean() - half < -1 and d.mean() + half > 1
    for key in ("probe_accuracy", "auc"):
        assert paired["metrics"][key]["mean"] == pytest.approx(d.mean())
        assert paired["metrics"][key]["ci95"] == pytest.approx([-1.0, 1.0])
    assert paired["metrics"]["recon_sse"]["ci95"] == pytest.approx([10 * (d.mean() - half), 10 * (d.mean() + half)])


@pytest.mark.parametrize("eval_is_older", [True, False])
def test_an_old_eval_json_without_a_weights_record_is_called_stale_only_when_older_than_the_weights(
    ae_run, tmp_path, eval_is_older
):
    from aelab.compare import compare

    run = tmp_path / "old"
    shutil.copytree(ae_run, run)
    result = json.loads((run / "eval.json").read_text())
    del result["scored"]  # as eval.json was written before it recorded its weights
    (run / "eval.json").write_text(json.dumps(result))
    weights = os.stat(run / "model.safetensors").st_mtime_ns
    when = weights - 10**9 if eval_is_older else weights + 10**9
    os.utime(run / "eval.json", ns=(when, when))
    notes = compare([run], tmp_path / "cmp")["notes"]
    stale = any("eval.json is older than model.safetensors" in n for n in notes)
    assert stale == eval_is_older


NETS = """
import torch.nn as nn


class Enc(nn.Module):
    def __init__(self, latent=3):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, latent))

    def forward(self, x):
        return self.net(x)
"""


def test_a_network_spec_with_other_keys_than_import_and_kwargs_is_refused(tmp_path, monkeypatch, capsys):
    """model.json's encoder {"import", "kwargs", "extra"}: one line, exit 2, even with --trust-code."""
    import sys

    code = tmp_path / "code"
    code.mkdir()
    (code / "aelab_pins_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(code))
    run = tmp_path / "run"
    try:
        argv = ["train", "--dataset", "digits", "--train-limit", "100", "--epochs", "1", "--quiet", "--latent", "3",
                "--encoder", "aelab_pins_nets:Enc", "--out", str(run)]  # fmt: skip
        assert main(argv) == 0
        spec = json.loads((run / "model.json").read_text())
        assert set(spec["options"]["encoder"]) == {"import", "kwargs"}
        spec["options"]["encoder"]["extra"] = "anything"
        (run / "model.json").write_text(json.dumps(spec))
        capsys.readouterr()
        code = main(["evaluate", str(run), "--no-figures", "--no-progress", "--trust-code"])
        one_line_exit_2(capsys, code, "expected {'import': 'pkg.module:Class', 'kwargs': {...}}")
    finally:
        sys.modules.pop("aelab_pins_nets", None)


# ---------------------------------------------------------------- intervals: ranges, decimals, refusals
NONNEGATIVE = ["active_units", "code_dim", "bits_per_image", "recon_sse", "recon_mse", "pca_sse", "distinct train codes",
               "epoch kept", "time (s)", "wall_time_s", "jacobian_fro_mean", "jacobian_sv_top", "test_kl", "n"]  # fmt: skip
SIGNED = ["test_loss", "kl loss", "nll_nats", "nll count", "test_elbo", "elbo kl", "time (%)", "time percent",
          "probe_C", "ratio to PCA", "probe_accuracy"]  # fmt: skip


@pytest.mark.parametrize("name", NONNEGATIVE)
def test_counts_times_squared_errors_and_kl_are_nonnegative(name):
    from aelab.metrics.intervals import metric_range, nonnegative_metric

    assert nonnegative_metric(name) is True and metric_range(name) == (0.0, np.inf)


@pytest.mark.parametrize("name", SIGNED)
def test_losses_likelihoods_percentages_and_others_are_not(name):
    from aelab.metrics.intervals import metric_range, nonnegative_metric

    assert nonnegative_metric(name) is False
    assert metric_range(name) == (UNIT if name == "probe_accuracy" else None)


def test_a_seed_summary_clips_a_count_at_0_and_says_how_it_clipped():
    """Where the ranges are used (`train --seeds`, compare): a count's Student t interval (computed here) is clipped
    at 0 below and left open above; an accuracy's to [0, 1]; a loss is not clipped."""
    from aelab.seeds import summarize_metrics

    values = [0.0, 0.0, 0.9]
    half = scipy.stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    s = summarize_metrics([{"active_units": v, "probe_accuracy": v, "test_loss": v} for v in values])
    assert s["active_units"]["ci95"] == pytest.approx([0.0, np.mean(values) + half])
    assert s["active_units"]["method"] == "Student t, 2 degrees of freedom, clipped at 0"
    assert s["probe_accuracy"]["ci95"] == pytest.approx([0.0, 1.0])
    assert s["probe_accuracy"]["method"] == "Student t, 2 degrees of freedom, clipped to [0, 1]"
    assert s["test_loss"]["ci95"] == pytest.approx([np.mean(values) - half, np.mean(values) + half])
    assert s["test_loss"]["method"] == "Student t, 2 degrees of freedom"
    assert s["test_loss"]["std"] == pytest.approx(np.std(values, ddof=1)) and type(s["test_loss"]["values"][0]) is float


def test_two_seeds_have_a_spread_and_integers_are_summarised_as_floats():
    from aelab.metrics.intervals import summarize

    s = summarize([1, 4])
    assert s["std"] == pytest.approx(np.std([1, 4], ddof=1)) and s["values"] == [1.0, 4.0]
    assert all(type(v) is float for v in s["values"])


def test_the_bootstrap_is_scipys_percentile_bootstrap_with_10000_resamples():
    from aelab.metrics.intervals import summarize

    values = np.linspace(0.80, 0.98, 12)
    ref = scipy.stats.bootstrap((values,), np.mean, n_resamples=10_000, confidence_level=0.95, method="percentile",
                                rng=np.random.default_rng(3)).confidence_interval  # fmt: skip
    assert summarize(values, bounded=(0.0, 1.0), seed=3)["ci95"] == [ref.low, ref.high]


@pytest.mark.parametrize(
    "call, message",
    [(lambda s: s([]), "summarize: expected a non-empty list of numbers, got shape (0,)"),
     (lambda s: s([[1.0, 2.0], [3.0, 4.0]]), "summarize: expected a non-empty list of numbers, got shape (2, 2)"),
     (lambda s: s([1.0, np.nan, 2.0, np.inf]), "summarize: NaN or infinite values at seed index [1, 3]"),
     (lambda s: s([1e308, 1e308]), "values too large to average in float64 (largest 1e+308)"),
     (lambda s: s([-1e308, 1e308]), "values too large to average in float64 (largest 1e+308)"),
     (lambda s: s([1.0, 1.0], bounded=(1.0, 1.0)), "bounded must be (low, high) with low < high, got (1.0, 1.0)"),
     (lambda s: s([1.0, 2.0], confidence=0.0), "confidence must be in (0, 1), got 0.0"),
     (lambda s: s([1.0, 2.0], confidence=1.0), "confidence must be in (0, 1), got 1.0"),
     (lambda s: s([1.0, 2.0], confidence=1.5), "confidence must be in (0, 1), got 1.5")],
)  # fmt: skip
def test_summarize_refuses_what_it_cannot_summarise_and_says_what(call, message):
    """One ValueError naming the problem, never a numpy warning (warnings are errors here) or a NaN summary."""
    import re
    import warnings

    from aelab.metrics.intervals import summarize

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            call(summarize)


def test_paired_differences_name_their_side_and_bound_by_the_range():
    """B - A of a metric in [1, 3] lies in [-2, 2]: the t interval of d = (2, 2, -2) (computed here) is clipped there."""
    import re

    from aelab.metrics.intervals import paired_difference

    for a, b, side in (([1.0, np.nan], [1.0, 2.0], "a"), ([1.0, 2.0], [np.inf, 2.0], "b")):
        message = f"paired_difference ({side}): NaN or infinite values at seed index [{1 if side == 'a' else 0}]"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            paired_difference(a, b)
    d = np.array([2.0, 2.0, -2.0])
    half = scipy.stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert d.mean() + half > 2 and d.mean() - half < -2
    assert paired_difference([3.0, 3.0, 1.0], [1.0, 1.0, 3.0], bounded=(1.0, 3.0))["ci95"] == [-2.0, 2.0]


@pytest.mark.parametrize(
    "values, d",
    [([0.9312, 0.9456, 0.9379], 4),  # std 0.0072: two significant figures
     ([0.0, 1.0, 2.0], 1),  # std exactly 1
     ([2.0, 2.0, 2.0], 0),  # a count the same at every seed
     ([0.9333333333333333] * 3, 4),  # a std of rounding only: the mean's four figures
     ([120.0, 250.0, 380.0], 0),  # std 130
     ([0.0, 1e-12, 2e-12], 10)],  # at most 10
)  # fmt: skip
def test_intervals_are_printed_with_the_decimals_their_spread_carries(values, d):
    """format_interval(digits=None), as seeds.md and compare's cells print a group: the std to two significant
    figures (or, all values equal, the mean to four; integers with none); the numbers computed here."""
    from aelab.metrics.intervals import format_interval, summarize

    mean, std = np.mean(values), np.std(values, ddof=1)
    half = scipy.stats.t.ppf(0.975, 2) * std / np.sqrt(3)
    expected = f"{mean:.{d}f} ± {std:.{d}f} [{mean - half:.{d}f}, {mean + half:.{d}f}] (n=3)"
    assert format_interval(summarize(values), digits=None) == expected


def test_a_spread_at_the_noise_threshold_counts_as_none():
    """A std of at most 1e-9 of the mean is rounding: the mean's four figures (2.000), not the std's (10 decimals)."""
    from aelab.metrics.intervals import decimals

    assert decimals({"mean": 2.0, "std": 2e-9, "values": [2.0 - 1e-9, 2.0 + 1e-9]}) == 3
    assert decimals({"mean": 2.0, "std": 4e-8, "values": [2.0 - 2e-8, 2.0 + 2e-8]}) == 9


# ---------------------------------------------------------------- retrieval: statistics, inputs, ties
def _entropy_bits(f: np.ndarray) -> np.ndarray:
    out = np.zeros_like(f)
    inner = (f > 0) & (f < 1)
    p = f[inner]
    out[inner] = -p * np.log2(p) - (1 - p) * np.log2(1 - p)
    return out


@pytest.mark.parametrize("float_bottleneck", [False, True])
def test_code_statistics_of_every_bit_computed_directly(float_bottleneck):
    """bits_per_image, bit_balance, bits_constant and bit_entropy_mean (in bits, H(0) = H(1) = 0: no numpy
    warning, warnings are errors here) from the train codes computed here; two bits forced constant."""
    import warnings

    from aelab.data import load
    from aelab.metrics.retrieval import code_statistics

    model = _binary_model(float_bottleneck, scale=4.0)
    with torch.no_grad():  # bit 0 always on, bit 1 always off (a large bias before the code)
        model.encoder[-2].weight[:2] = 0
        model.encoder[-2].bias[:2] = torch.tensor([1e3, -1e3])
    train_x, test_x = load("digits", "train")[0][:200], load("digits", "test")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics, f = code_statistics(model, train_x, test_x)
    with torch.no_grad():
        codes = model.encode(train_x)
    bits = ((codes > 0.5) if float_bottleneck else codes).double().numpy()
    usage = bits.mean(0)
    assert usage[0] == 1.0 and usage[1] == 0.0
    np.testing.assert_allclose(f, usage)
    assert metrics["bits_per_image"] == (8 * 32 if float_bottleneck else 8)
    assert metrics["bit_balance"] == pytest.approx(usage.mean())
    assert metrics["bits_constant"] == int(((usage == 0) | (usage == 1)).sum()) >= 2
    assert metrics["bit_entropy_mean"] == pytest.approx(_entropy_bits(usage).mean())
    assert 0 < metrics["bit_entropy_mean"] < 1


def test_a_float_code_of_exactly_one_half_is_bit_0():
    """bit = 1[sigmoid code > 0.5]: a code of exactly 0.5 (pre-activation 0) is 0, in retrieval and statistics."""
    from aelab.metrics.retrieval import bit_codes, code_statistics

    model = _binary_model(True, scale=1.0)
    with torch.no_grad():
        model.encoder[-2].weight.zero_()
        model.encoder[-2].bias.zero_()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.encode(x), torch.full((5, 8), 0.5))
    codes = bit_codes(model, x)
    assert codes.dtype == np.uint8 and not codes.any()
    assert code_statistics(model, x, x)[0]["bit_balance"] == 0.0


def test_binary_codes_are_required_where_they_are_read():
    import re

    from aelab.metrics.retrieval import encode_codes

    message = "the model's codes are not binary (float_bottleneck model?); threshold them first"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        encode_codes(_binary_model(True, scale=1.0), torch.rand(3, 1, 8, 8))


def test_hamming_retrieval_refuses_bad_inputs_with_their_reason():
    import re

    from aelab.metrics.retrieval import hamming_retrieval

    db, labels = np.array([[0, 1, 1], [1, 1, 1], [0, 0, 0]]), np.array([0, 1, 0])
    cases = [
        ((db[0], labels, db, labels), "codes must be (N, bits) arrays with the same bits, got (3,) and (3, 3)"),
        ((db, labels, db[0], labels), "codes must be (N, bits) arrays with the same bits, got (3, 3) and (3,)"),
        ((db, labels, db[:, :2], labels), "codes must be (N, bits) arrays with the same bits, got (3, 3) and (3, 2)"),
        ((db, labels[:2], db, labels), "codes and labels differ in length"),
        ((db, labels, db, labels[:2]), "codes and labels differ in length"),
        ((db * 2, labels, db, labels), "codes must be in {0, 1}"),
        ((db, labels, db * 2, labels), "codes must be in {0, 1}"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            hamming_retrieval(*args, ks=(1,))
    with pytest.raises(ValueError, match=re.escape("every k must be in 1..3 (the database size), got [0]")):
        hamming_retrieval(db, labels, db, labels, ks=(0,))


def test_average_precision_with_one_relevant_item_is_one_over_its_rank():
    """A query whose class has a single database item, found at rank 2 (Hamming distance 1 after a closer item of
    another class): AP = 1/2, computed by hand."""
    from aelab.metrics.retrieval import hamming_retrieval

    db = np.array([[0, 0, 0], [0, 0, 1], [1, 1, 1]])
    labels = np.array([5, 7, 5])
    query = np.array([[0, 0, 0]])
    out = hamming_retrieval(db, labels, query, np.array([7]), ks=(1, 2))
    assert out == {"precision@1": 0.0, "precision@2": 0.5, "mAP": 0.5}
    # labels as columns (N, 1), as a tensor of targets often is: the same
    assert hamming_retrieval(db, labels[:, None], query, np.array([[7]]), ks=(1, 2)) == out


def test_pca_sign_codes_check_their_sizes_and_code_an_image_at_the_mean_as_0():
    """bits from 1 to min(N, pixels); uint8 codes; a projection of exactly 0 (an image equal to the train mean) is
    bit 0, as 1[(x - mean) . v > 0] says."""
    import re

    from aelab.metrics.retrieval import pca_sign_codes

    rng = np.random.default_rng(0)
    v = rng.integers(-3, 4, size=(3, 4)).astype(float)
    train = np.concatenate([v, -v, np.zeros((1, 4))])  # integers: the mean is exactly 0; the last image is it
    for bits in (1, 4):
        train_codes, test_codes = pca_sign_codes(train, np.zeros((2, 4)), bits)
        assert train_codes.dtype == np.uint8 and test_codes.dtype == np.uint8
        assert not train_codes[-1].any() and not test_codes.any()
    for bits in (0, 5):
        message = f"bits must be in 1..4 (min of train size and pixel count), got {bits}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            pca_sign_codes(train, train, bits)
    with pytest.raises(ValueError, match="^train and test images differ in size$"):
        pca_sign_codes(train, np.zeros((2, 5)), 2)


# ---------------------------------------------------------------- intervals: what `make mutate` found unpinned
def test_an_overflowing_sum_of_finite_values_is_refused_without_a_numpy_warning():
    """Eight finite values whose float64 sum is inf + (-inf) = NaN (numpy adds 8 values in 8 accumulators, then
    (1e308 + 1e308) + (-1e308 - 1e308)): numpy's overflow and invalid-value warnings stay silent (warnings are
    errors here) and the ValueError says what happened."""
    import re
    import warnings

    from aelab.metrics.intervals import summarize

    values = [1e308, 1e308, -1e308, -1e308, 0.0, 0.0, 0.0, 0.0]
    with np.errstate(all="warn"), warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            ValueError, match=f"^{re.escape('values too large to average in float64 (largest 1e+308)')}$"
        ):
            summarize(values)


def test_a_confidence_that_rounds_the_t_quantile_to_1_is_refused_with_the_std():
    """c = 1 - 2^-53 < 1 passes the (0, 1) check, but (1 + c) / 2 rounds to 1.0: t.ppf(1) = inf, an interval of
    [-inf, inf], refused with the std (of 1 and 2: 0.707) rather than returned."""
    import re

    from aelab.metrics.intervals import summarize

    confidence = 1 - 2**-53
    assert confidence < 1 and (1 + confidence) / 2 == 1.0
    message = "values too spread out for a float64 interval (std 0.707)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        summarize([1.0, 2.0], confidence=confidence)


@pytest.mark.parametrize("mean, d", [(3.0, 0), (0.0, 0), (0.5, 4), (123.25, 1)])
def test_decimals_of_a_summary_without_values_read_its_mean(mean, d):
    """A summary written before `values` was recorded (or with an empty list): an integer mean with no spread is
    printed with no decimals, any other mean with four significant figures."""
    from aelab.metrics.intervals import decimals

    assert decimals({"mean": mean, "std": 0.0}) == d
    assert decimals({"mean": mean, "std": 0.0, "values": []}) == d


def test_values_whose_spread_underflows_to_0_around_a_mean_of_0_are_printed_without_decimals():
    """-1e-200 and 1e-200: their mean is 0 and their squared deviations underflow, so the std is 0 too, while the
    values are not integers; no log10(0): no decimals."""
    from aelab.metrics.intervals import decimals, format_interval, summarize

    s = summarize([-1e-200, 1e-200])
    assert (s["mean"], s["std"]) == (0.0, 0.0)
    assert decimals(s) == 0 and format_interval(s, digits=None) == "0 ± 0 [0, 0] (n=2)"


def test_the_bootstrap_draws_exactly_10000_resamples():
    """Eleven values spread continuously (no tied resample means): the interval of 10,000 resamples (scipy's,
    computed here) differs in the 7th digit from that of scipy's default 9,999, and summarize gives the former."""
    from aelab.metrics.intervals import summarize

    values = np.random.default_rng(5).uniform(0.6, 0.99, size=11)

    def interval(n_resamples):
        ci = scipy.stats.bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=0.95,
                                   method="percentile", rng=np.random.default_rng(0)).confidence_interval  # fmt: skip
        return [float(ci.low), float(ci.high)]

    assert interval(10_000) != interval(9_999)
    assert summarize(values, bounded=(0.0, 1.0))["ci95"] == interval(10_000)


def test_paired_differences_pass_their_confidence_and_seed_on():
    """paired_difference(a, b, bounded, confidence, seed) is summarize(a - b) with the same confidence and seed:
    a bootstrap (12 differences of a metric in [0, 1]) at confidence 0.8 and seed 7, computed here by scipy,
    differs from one at the defaults 0.95 and 0."""
    from aelab.metrics.intervals import paired_difference

    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.7, 0.9, size=12), rng.uniform(0.6, 0.8, size=12)

    def interval(confidence, seed):
        ci = scipy.stats.bootstrap((a - b,), np.mean, n_resamples=10_000, confidence_level=confidence,
                                   method="percentile", rng=np.random.default_rng(seed)).confidence_interval  # fmt: skip
        return [float(ci.low), float(ci.high)]

    out = paired_difference(a, b, bounded=(0.0, 1.0), confidence=0.8, seed=7)
    assert out["ci95"] == interval(0.8, 7) and out["confidence"] == 0.8
    assert interval(0.8, 7) not in (interval(0.95, 7), interval(0.8, 0))
    assert out["method"] == "percentile bootstrap of the mean, 10000 resamples, seed 7"


def test_code_saturation_counts_sigmoid_values_strictly_outside_0_05_to_0_95():
    """A float-bottleneck model whose sigmoid codes are given exactly (float64): 0.05 and 0.95 lie inside the
    closed interval [0.05, 0.95] of the docstring and are not saturated; 0.04 and 0.96 are. 2 of 8 values."""
    from aelab.metrics.retrieval import code_statistics

    class Fixed(torch.nn.Module):
        bits, options = 4, {"float_bottleneck": True}

        def encode(self, x):
            codes = torch.tensor([[0.05, 0.95, 0.5, 0.04], [0.96, 0.05, 0.95, 0.3]], dtype=torch.float64)
            return codes[: len(x)]

    metrics, _ = code_statistics(Fixed(), torch.zeros(2, 1), torch.zeros(2, 1))
    assert metrics["code_saturation"] == 2 / 8
