"""jaxnets.paths: `~` and `$VARS` expand in every path jaxnets takes, from Python and from the commands."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxnets import export, report
from jaxnets.cli import convert as convert_cli
from jaxnets.cli import export as export_cli
from jaxnets.cli import train as train_cli
from jaxnets.paths import expand_path
from jaxnets.training import Checkpoints, TrainConfig, fit, load_model, save_model


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh `~` and `$RUNS` (both under tmp_path); the working directory is elsewhere, to catch a literal '~/'."""
    home, runs, cwd = tmp_path / "home", tmp_path / "runs", tmp_path / "cwd"
    for folder in (home, runs, cwd):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RUNS", str(runs))
    monkeypatch.chdir(cwd)
    yield home
    assert list(cwd.iterdir()) == [], "a path was taken literally (a folder named '~' or '$RUNS' appeared)"


def test_expand_path_follows_the_shell(home, tmp_path):
    assert expand_path("~/a") == home / "a"
    assert expand_path("$RUNS/b") == expand_path("${RUNS}/b") == tmp_path / "runs" / "b"
    assert expand_path("$JAXNETS_UNSET_VARIABLE/c").as_posix() == "$JAXNETS_UNSET_VARIABLE/c"  # as a shell leaves it


def test_fit_save_load_export_and_reports_expand_their_paths(home, tmp_path):
    config = TrainConfig(model="mlp", dataset="digits", epochs=1, batch_size=64, schedule="constant")
    result = fit(config, workdir="~/run", progress=False, log=lambda _: None, tensorboard=False)
    assert (home / "run" / "history.json").is_file() and Checkpoints("~/run").latest_epoch() == 1
    fit(dataclasses.replace(config, epochs=2), workdir="~/run", resume=True,
        progress=False, log=lambda _: None, tensorboard=False)
    assert json.loads((home / "run" / "history.json").read_text())[-1]["epoch"] == 2

    saved = save_model("$RUNS/model", "mlp", result.state.variables)
    assert saved == tmp_path / "runs" / "model"
    _, variables = load_model("${RUNS}/model")
    np.testing.assert_array_equal(variables["params"]["output"]["kernel"],
                                  result.state.variables["params"]["output"]["kernel"])

    export.save("~/mlp.jax", "mlp", variables)
    logits = export.load("~/mlp.jax")(np.zeros((2, 784), np.float32))
    assert logits.shape == (2, 10) and export.sidecar_path("~/mlp.jax").is_file()

    report.write_json("$RUNS/report.json", {"x": 1})
    assert json.loads((tmp_path / "runs" / "report.json").read_text()) == {"x": 1}


def test_the_commands_expand_their_paths(home, capsys):
    assert train_cli.main(["--model", "mlp", "--epochs", "1", "--workdir", "~/cli-run", "--no-progress",
                           "--no-tensorboard", "--no-cache"]) == 0
    assert (home / "cli-run" / "history.json").is_file()
    assert export_cli.main(["--from", "~/cli-run", "-o", "$RUNS/cli.jax"]) == 0
    assert expand_path("$RUNS/cli.jax").is_file()


def test_a_pytorch_checkpoint_path_expands(home):
    torch = pytest.importorskip("torch")
    torch_models = pytest.importorskip("jaxnets.interop.torch_models")
    torch.save(torch_models.create("mlp").state_dict(), home / "mlp.pth")
    assert convert_cli.main(["~/mlp.pth", "$RUNS/converted", "--model", "mlp"]) == 0
    assert load_model("$RUNS/converted")[0] is not None
