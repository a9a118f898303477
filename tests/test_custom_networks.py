"""Issue 23, item 5: user networks from the command line (--encoder pkg.module:Class, --decoder, JSON keyword
options). model.json records the import path, so evaluate and compare rebuild the run with no flags; a module
that is missing, not a network, or that fails gets one line and exit 2 before any run folder is made."""

import json
import sys

import pytest

from aelab.cli import main

NETS = """
import torch.nn as nn


class Enc(nn.Module):
    def __init__(self, latent=4, width=8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 16, latent))

    def forward(self, x):
        return self.net(x)


class Dec(nn.Module):
    def __init__(self, latent=4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, 64), nn.Sigmoid(), nn.Unflatten(1, (1, 8, 8)))

    def forward(self, z):
        return self.net(z)


def not_a_class(**kwargs):
    raise SystemExit("must never be called")
"""


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A module of the user's own on the path (as PYTHONPATH would put it), under a name no other test uses."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "aelab_test_user_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(folder))
    yield "aelab_test_user_nets"
    sys.modules.pop("aelab_test_user_nets", None)


def _train(out, module, *extra):
    return main(["train", "--dataset", "digits", "--train-limit", "150", "--epochs", "2", "--no-progress",
                 "--encoder", f"{module}:Enc", "--encoder-kwargs", '{"latent": 5, "width": 6}',
                 "--decoder", f"{module}:Dec", "--decoder-kwargs", '{"latent": 5}', "--out", str(out), *extra])  # fmt: skip


def test_train_evaluate_compare_from_the_cli_with_user_networks(user_code, tmp_path, capsys):
    run = tmp_path / "conv"
    assert _train(run, user_code) == 0
    options = json.loads((run / "model.json").read_text())["options"]
    assert options["encoder"] == {"import": f"{user_code}:Enc", "kwargs": {"latent": 5, "width": 6}}
    assert options["decoder"] == {"import": f"{user_code}:Dec", "kwargs": {"latent": 5}}
    # model.json names the classes: evaluate imports them only when they are named again (the trust rule), with the
    # options model.json records; the weights come from model.safetensors
    named = ["--encoder", f"{user_code}:Enc", "--decoder", f"{user_code}:Dec"]
    assert main(["evaluate", str(run), "--no-progress", "--tsne-points", "40"]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--no-progress", "--tsne-points", "40", *named]) == 0
    eval_json = json.loads((run / "eval.json").read_text())
    assert eval_json["metrics"]["code_dim"] == 5
    from aelab.runs import load_model, read_safetensors

    model = load_model(run, trust_code=True)
    saved, _ = read_safetensors(run / "model.safetensors")
    assert all(model.state_dict()[k].equal(v) for k, v in saved.items())
    # compare draws its reconstructions beside a built-in run's
    other = tmp_path / "mlp"
    assert main(["train", "--dataset", "digits", "--train-limit", "150", "--epochs", "2", "--no-progress",
                 "--out", str(other)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["compare", str(run), str(other), "--out", str(tmp_path / "cmp"), "--trust-code"]) == 0
    out = capsys.readouterr().out
    assert "reconstructions not shown" not in out
    assert (tmp_path / "cmp" / "figures" / "reconstructions-1.png").is_file()
    # a resume rebuilds the same networks from config.json, once they are named again
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress", *named]) == 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--encoder", "no_such_module_here:Enc"], "no module named 'no_such_module_here'"),
        (["--encoder", "MODULE:Missing"], "has no Missing"),
        (["--encoder", "MODULE:not_a_class"], "not a torch.nn.Module class"),
        (["--encoder", "MODULE:Enc", "--encoder-kwargs", '{"depth": 3}'], "unexpected keyword argument 'depth'"),
        (["--encoder", "MODULE"], "expected a class as pkg.module:Class"),
        (["--encoder", "MODULE:Enc", "--encoder-kwargs", "[1]"], "expected a JSON object"),
        (["--decoder-kwargs", "{}"], "--decoder-kwargs needs --decoder"),
    ],
)
def test_a_bad_network_is_one_line_and_exit_2_before_the_folder(user_code, tmp_path, capsys, flags, message):
    flags = [f.replace("MODULE", user_code) for f in flags]
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--train-limit", "50", "--epochs", "1", "--out", str(out), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_model_json_naming_anything_but_a_network_is_refused_without_calling_it(user_code, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, user_code) == 0
    spec = json.loads((run / "model.json").read_text())
    for bad in ({"import": f"{user_code}:not_a_class", "kwargs": {}}, {"import": "os:system", "kwargs": {}},
                {"import": "os", "kwargs": {}}, {"import": f"{user_code}:Enc", "kwargs": [1]}):  # fmt: skip
        spec["options"]["encoder"] = bad
        (run / "model.json").write_text(json.dumps(spec))
        assert main(["evaluate", str(run), "--no-progress", "--no-figures"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_evaluate_flags_rebuild_a_run_trained_from_python(user_code, tmp_path, capsys):
    import importlib

    from aelab.train import TrainConfig, train

    nets = importlib.import_module(user_code)
    cfg = TrainConfig(dataset="digits", train_limit=100, epochs=1, out=str(tmp_path / "py"), tensorboard=False,
                      model_options={"encoder": nets.Enc(latent=3), "decoder": nets.Dec(latent=3)})  # fmt: skip
    run = train(cfg, progress=False)
    assert main(["evaluate", str(run), "--no-progress", "--no-figures"]) == 2  # model.json only names the classes
    assert "pass the same modules again" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--no-progress", "--no-figures",
                 "--encoder", f"{user_code}:Enc", "--encoder-kwargs", '{"latent": 3}',
                 "--decoder", f"{user_code}:Dec", "--decoder-kwargs", '{"latent": 3}']) == 0  # fmt: skip
