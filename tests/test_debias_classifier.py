"""debias-classifier (issue 13): unbiased test set, no colour label in any label-free path, LfF weights, group
metrics, synthesis, CLI bad input. Tiny data: every test runs in seconds on 2 cores."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from aelab import debias as dm
from aelab.cli import main
from aelab.data.colored import make_colored_mnist
from aelab.experiments import debias_classifier as dc
from aelab.experiments import debias_classifier_cell as cell

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(train_limit=300, epochs=2, ae_epochs=1, no_progress=True)


@pytest.fixture(scope="module")
def tiny_splits():
    s = dc.Settings(out="unused", **TINY)
    return s, cell.load_splits(s, 0.9, 0)


def test_unbiased_test_set_is_colour_uniform(tiny_splits):
    _, splits = tiny_splits
    te = splits["test"]["mnist5k_test"]
    digits, colours = te["digits"].numpy(), te["colours"].numpy()
    assert len(digits) == 1000
    for d in range(10):
        counts = np.bincount(colours[digits == d], minlength=10)
        assert counts.max() - counts.min() <= 1, counts  # dealt round-robin
        assert chisquare(counts).pvalue > 0.99, counts
    # and the colour really is independent of the digit over the whole set
    table = np.array([np.bincount(colours[digits == d], minlength=10) for d in range(10)])
    from scipy.stats import chi2_contingency

    assert chi2_contingency(table).pvalue > 0.99


def _scrambled(splits, seed=123):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("train", "val"):
        part = dict(splits[name])
        part["colours"] = part["colours"][torch.randperm(len(part["colours"]), generator=gen)]
        out[name] = part
    out["test"] = {
        k: {**v, "colours": v["colours"][torch.randperm(len(v["colours"]), generator=gen)]}
        for k, v in splits["test"].items()
    }
    return out


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_scrambled_colour_labels_leave_every_label_free_model_identical(tiny_splits):
    s, splits = tiny_splits
    scrambled = _scrambled(splits)
    assert not torch.equal(scrambled["train"]["colours"], splits["train"]["colours"])
    a, b = cell.run_cell(s, 0.9, 0, splits), cell.run_cell(s, 0.9, 0, scrambled)
    assert set(a["fit"]["models"]) == set(cell.LABEL_FREE)
    for name in cell.LABEL_FREE:
        assert _same_state(a["fit"]["models"][name], b["fit"]["models"][name]), name
    for name in a["fit"]["aes"]:
        assert _same_state(a["fit"]["aes"][name], b["fit"]["aes"][name]), name
    assert _same_state(a["fit"]["biased_model"], b["fit"]["biased_model"])
    assert a["choices"] == b["choices"] and a["bias"] == b["bias"]
    assert a["probes"] == b["probes"]
    for key in a["preds"]:
        if not key[1].startswith("ORACLE"):
            assert np.array_equal(a["preds"][key], b["preds"][key]), key
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    idx = torch.arange(20)
    assert torch.equal(a["fit"]["synthesizer"].sample(idx, g1), b["fit"]["synthesizer"].sample(idx, g2))
    # the check can see a colour label at work: the oracles do change
    assert not _same_state(a["oracles"]["ORACLE_group_reweight"], b["oracles"]["ORACLE_group_reweight"])


def test_lff_weights_match_hand_computation():
    digits = torch.tensor([0, 0, 1, 1])
    ema_b, ema_d = torch.zeros(4), torch.zeros(4)
    seen_b, seen_d = torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    everyone = torch.arange(4)
    dm.ema_update(ema_b, seen_b, everyone, torch.tensor([1.0, 2.0, 3.0, 0.5]), 0.7)  # first visit: the loss itself
    dm.ema_update(ema_d, seen_d, everyone, torch.tensor([0.5, 0.5, 1.0, 1.0]), 0.7)
    assert torch.allclose(ema_b, torch.tensor([1.0, 2.0, 3.0, 0.5]))
    dm.ema_update(ema_b, seen_b, torch.tensor([0, 2]), torch.tensor([3.0, 1.0]), 0.7)
    dm.ema_update(ema_d, seen_d, torch.tensor([0, 2]), torch.tensor([0.5, 2.0]), 0.7)
    # by hand: 0.7*1 + 0.3*3 = 1.6, 0.7*3 + 0.3*1 = 2.4; 0.7*0.5 + 0.3*0.5 = 0.5, 0.7*1 + 0.3*2 = 1.3
    assert torch.allclose(ema_b, torch.tensor([1.6, 2.0, 2.4, 0.5]))
    assert torch.allclose(ema_d, torch.tensor([0.5, 0.5, 1.3, 1.0]))
    w = dm.lff_weights(ema_b, ema_d, everyone, digits, n_classes=2)
    # class maxima: b: class 0 -> 2.0, class 1 -> 2.4; d: class 0 -> 0.5, class 1 -> 1.3
    lb = torch.tensor([1.6 / 2.0, 2.0 / 2.0, 2.4 / 2.4, 0.5 / 2.4])
    ld = torch.tensor([0.5 / 0.5, 0.5 / 0.5, 1.3 / 1.3, 1.0 / 1.3])
    expected = torch.tensor([0.8 / 1.8, 0.5, 0.5, (0.5 / 2.4) / (0.5 / 2.4 + 1 / 1.3)])
    assert torch.allclose(lb / (lb + ld), expected)
    assert torch.allclose(w, expected, atol=1e-6)


def test_group_metrics_match_direct_computation():
    # by hand: groups (0,0): 1/1, (0,1): 1/2, (1,1): 1/1, (1,0): 1/1 -> worst 0.5
    m = dm.group_metrics([0, 1, 0, 1, 1], [0, 0, 0, 1, 1], [0, 1, 1, 1, 0])
    assert m["unbiased"] == pytest.approx(4 / 5) and m["aligned"] == 1.0
    assert m["conflicting"] == pytest.approx(2 / 3) and m["worst_group"] == 0.5 and m["n_groups"] == 4
    rng = np.random.default_rng(0)
    digits, colours = rng.integers(0, 10, 2000), rng.integers(0, 10, 2000)
    pred = np.where(rng.random(2000) < 0.7, digits, rng.integers(0, 10, 2000))
    direct = []
    for d in range(10):
        for c in range(10):
            sel = [i for i in range(2000) if digits[i] == d and colours[i] == c]
            if sel:
                direct.append(sum(pred[i] == digits[i] for i in sel) / len(sel))
    m = dm.group_metrics(pred, digits, colours)
    assert m["worst_group"] == pytest.approx(min(direct))
    assert m["unbiased"] == pytest.approx(np.mean(pred == digits))
    conf = colours != digits
    assert m["conflicting"] == pytest.approx(np.mean(pred[conf] == digits[conf]))


def test_synthesis_shape_and_range():
    gen = torch.Generator().manual_seed(0)
    gray = torch.rand(40, 1, 28, 28, generator=gen) * (torch.rand(40, 1, 28, 28, generator=gen) > 0.7)
    digits = torch.arange(40) % 10
    col = make_colored_mnist(gray, digits, "train", aligned_ratio=0.8, seed=0)
    x = col["images"]
    for name, swap in dm.SWAPS.items():
        out = swap(x[:7], x[7:14])
        assert out.shape == (7, 3, 28, 28) and out.dtype == torch.float32, name
        assert out.min() >= 0 and out.max() <= 1, name
    donor_class = (digits + 1) % 10  # stands for the biased model's predictions
    synth = dm.Synthesizer(x, digits, donor_class, "colour_statistics")
    imgs, donors = synth.sample_with_donors(torch.arange(40), torch.Generator().manual_seed(1))
    assert imgs.shape == x.shape and imgs.min() >= 0 and imgs.max() <= 1
    assert (donor_class[donors] != digits).all()
    # colour statistics swap on colour (x) gray images: the donor's colour up to a scale, the source's shape
    c, g = col["colors"], gray
    expected = (c[donors] / c[donors].amax(1, keepdim=True) * c.amax(1, keepdim=True))[:, :, None, None] * g
    assert torch.allclose(imgs, expected.clamp(0, 1), atol=1e-5)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--aligned-ratio", "1.5"], "(0, 1)"),
        (["--aligned-ratio", "0.99,1"], "(0, 1)"),
        (["--aligned-ratio", "0"], "(0, 1)"),
        (["--aligned-ratio", "x"], "(0, 1)"),
        (["--aligned-ratio", "0.999"], "no bias-conflicting sample"),
        (["--seeds", "0"], "positive integer"),
        (["--device", "tpu", "--aligned-ratio", "0.9"], "unknown device"),
    ],
)
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    # a tiny budget, so that a missing check fails fast instead of running the experiment
    tiny = ["--seeds", "1", "--epochs", "1", "--ae-epochs", "1", "--train-limit", "300", "--no-progress"]
    code = main(["experiment", "debias-classifier", "--out", str(out), *tiny, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert not out.exists()
