"""`jaxnets-convert`: a PyTorch .pth in, a save_model folder out, the same predictions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from jaxnets import models
from jaxnets.cli import convert as cli
from jaxnets.training import load_model

torch = pytest.importorskip("torch")
import torch_reference  # noqa: E402  (tests/torch_reference.py, needs torch)


def test_convert_round_trip_gives_the_same_predictions(tmp_path, capsys):
    torch.manual_seed(0)
    net = torch_reference.renamed("lenet-cifar").eval()  # the text's conv_block/classifier names
    path = tmp_path / "lenet.pth"
    torch.save({"net": net.state_dict(), "acc": 61.5, "epoch": 9}, path)

    assert cli.main([str(path), str(tmp_path / "converted"), "--model", "lenet-cifar", "--show-mapping"]) == 0
    out = capsys.readouterr().out
    assert "10 tensors (10 matched by structure)" in out and "conv_block.0.weight -> conv1.weight" in out

    model, variables = load_model(tmp_path / "converted")
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(model.apply(variables, x))
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))


def test_options_reach_the_model(tmp_path):
    torch.manual_seed(0)
    net = torch_reference.renamed("lenet5", num_classes=7)
    path = tmp_path / "lenet5.pth"
    torch.save(net.state_dict(), path)
    assert cli.main([str(path), str(tmp_path / "out"), "--model", "lenet5", "--num-classes", "7"]) == 0
    model, _ = load_model(tmp_path / "out")
    assert isinstance(model, models.LeNet) and model.num_classes == 7


def test_errors_are_one_line_and_nothing_is_written(tmp_path, capsys):
    path = tmp_path / "lenet.pth"
    torch.save(torch_reference.renamed("lenet5").state_dict(), path)
    assert cli.main([str(path), str(tmp_path / "out"), "--model", "lenet-cifar"]) == 2
    err = capsys.readouterr().err
    assert (err.startswith("jaxnets-convert: error: lenet-cifar: the state_dict does not match")
            and "Traceback" not in err)
    assert not (tmp_path / "out").exists()
    assert cli.main([str(tmp_path / "missing.pth"), str(tmp_path / "out"), "--model", "lenet"]) == 2
    assert "no checkpoint file" in capsys.readouterr().err


@pytest.mark.slow  # a fresh process: mostly Python and JAX start-up
def test_entry_point_runs_as_a_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxnets.cli.convert", "--help"], capture_output=True, text=True,
                            check=True)
    assert "--model" in result.stdout and "weights_only" in result.stdout


@pytest.mark.parametrize(("value", "message"), [("abc", "must be an integer"), ("-3", "must not be negative"),
                                                ("0", "cannot build mlp with hidden_size=0")])
def test_a_bad_model_option_is_one_line(tmp_path, capsys, value, message):
    """`--option hidden_size=abc` (or -3, or 0): one line naming the option, exit 2, nothing written."""
    path = tmp_path / "mlp.pth"
    torch.save(torch_reference.renamed("mlp").state_dict(), path)
    assert cli.main([str(path), str(tmp_path / "out"), "--model", "mlp", "--option", f"hidden_size={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxnets-convert: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_dataset_stores_the_input_contract_and_map_resolves_an_ambiguous_order(tmp_path, capsys):
    """--dataset puts the catalog's contract in the folder; an ambiguous state_dict is refused in one line
    that gives the --map flags, and following it converts to the module's logits."""
    from test_interop import SwappedMLP

    from jaxnets.models.saving import read_contract

    torch.manual_seed(0)
    net = SwappedMLP().eval()
    path = tmp_path / "swapped.pth"
    torch.save(net.state_dict(), path)
    argv = [str(path), str(tmp_path / "out"), "--model", "mlp", "--option", "num_layers=3", "--dataset", "mnist"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--map fc2=hidden.1 --map fc3=hidden.2" in err
    assert cli.main(argv + ["--map", "fc2=hidden.1", "--map", "fc3=hidden.2"]) == 0
    model, variables = load_model(tmp_path / "out")
    x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x.reshape(4, -1))).numpy()
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), expected, atol=1e-5, rtol=0)
    contract = read_contract(tmp_path / "out")
    assert contract.dataset == "mnist" and contract.mean == (0.1307,) and len(contract.class_names) == 10
    assert cli.main([str(path), str(tmp_path / "bare"), "--model", "mlp", "--option", "num_layers=3",
                     "--map", "fc2=hidden.1", "--map", "fc3=hidden.2"]) == 0
    assert "no input contract" in capsys.readouterr().err  # said at once, not only at export time
