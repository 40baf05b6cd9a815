"""fit, checkpoints, resume (also after kill -9), NaN, corrupt checkpoints, save/load_model, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import data, interop, models
from jaxnets.training import (CheckpointError, Checkpoints, NonFiniteLoss, TrainConfig, TrainState, fit, load_model,
                              optimizers, save_model)
from train import cli

REPO = Path(__file__).resolve().parents[1]


def small_config(**overrides) -> TrainConfig:
    values = dict(model="lenet", dataset="digits", epochs=2, batch_size=32, optimizer="adam", lr=3e-3,
                  weight_decay=5e-4, schedule="constant", seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fit_writes_history_curves_and_checkpoints(tmp_path):
    result = fit(small_config(epochs=2), workdir=tmp_path, log=lambda _: None)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history == result.history and len(history) == 2
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "seconds", "images_per_second"):
        assert key in history[-1]
    assert history[-1]["val_acc"] > 0.5 and history[-1]["test_acc"] > 0.5  # learns something in 2 epochs
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    checkpoints = Checkpoints(tmp_path)
    assert checkpoints.epochs() == [1, 2] and checkpoints.best_epoch() in (1, 2)
    checkpoints.close()


def test_two_plus_two_epochs_equals_four(tmp_path):
    straight = fit(small_config(epochs=4), log=lambda _: None)
    fit(small_config(epochs=2), workdir=tmp_path, log=lambda _: None)
    resumed = fit(small_config(epochs=4), workdir=tmp_path, resume=True, log=lambda _: None)
    assert int(resumed.state.step) == int(straight.state.step)
    assert_same_params(resumed.state.params, straight.state.params)
    assert_same_params(resumed.state.opt_state, straight.state.opt_state)  # Adam moments too
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[-1]["val_acc"] == straight.history[-1]["val_acc"]


def test_fresh_run_refuses_to_overwrite_a_workdir(tmp_path):
    fit(small_config(epochs=1), workdir=tmp_path, log=lambda _: None)
    before = tree_hash(tmp_path / "checkpoints")
    with pytest.raises(FileExistsError, match="--resume"):
        fit(small_config(epochs=1), workdir=tmp_path, log=lambda _: None)
    assert tree_hash(tmp_path / "checkpoints") == before


def test_kill_9_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """SIGKILL a CLI run during epoch 2, resume it, compare with an uninterrupted run."""
    args = ["--model", "lenet", "--dataset", "digits", "--epochs", "3", "--batch-size", "16", "--optimizer", "sgd",
            "--lr", "0.02", "--schedule", "cosine", "--mode", "eager", "--seed", "5", "--no-progress"]
    workdir = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "train", *args, "--workdir", str(workdir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / "1").is_dir():
        assert proc.poll() is None, f"training exited early:\n{proc.stdout.read()}"
        assert time.time() < deadline, "epoch 1 never finished"
        time.sleep(0.05)
    time.sleep(1.0)  # well into epoch 2 (an eager epoch here takes several seconds)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    checkpoints = Checkpoints(workdir)
    assert checkpoints.latest_epoch() in (1, 2), "the kill should land before the run ends"
    checkpoints.close()
    assert cli.main([*args, "--workdir", str(workdir), "--resume"]) == 0

    config = cli.config_from_args(cli.parser().parse_args(args))
    straight = fit(config, log=lambda _: None)
    checkpoints = Checkpoints(workdir)
    arrays, meta = checkpoints.restore(straight.state.arrays())
    checkpoints.close()
    assert meta["history"][-1]["epoch"] == 3
    assert_same_params(arrays["params"], straight.state.params)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    fit(small_config(epochs=1), workdir=tmp_path, log=lambda _: None)
    before = tree_hash(tmp_path / "checkpoints")
    with pytest.raises(NonFiniteLoss, match=r"loss became (nan|inf).*epoch 2.*last good checkpoint \(epoch 1\)"):
        fit(small_config(epochs=2, lr=1e12), workdir=tmp_path, resume=True, log=lambda _: None)
    assert tree_hash(tmp_path / "checkpoints") == before
    checkpoints = Checkpoints(tmp_path)
    assert checkpoints.epochs() == [1]
    checkpoints.close()


def test_corrupt_checkpoint_is_a_clear_error_and_stays_untouched(tmp_path):
    fit(small_config(epochs=2), workdir=tmp_path, log=lambda _: None)
    state_dir = tmp_path / "checkpoints" / "2" / "state"
    for f in (p for p in state_dir.rglob("*") if p.is_file() and p.stat().st_size > 100):
        f.write_bytes(f.read_bytes()[:50])
    before = tree_hash(tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match=r"cannot restore .*checkpoints/2.*corrupt.*Epochs \[1\] are also saved"):
        fit(small_config(epochs=3), workdir=tmp_path, resume=True, log=lambda _: None)
    assert tree_hash(tmp_path / "checkpoints") == before


def test_resume_with_another_model_is_refused(tmp_path):
    fit(small_config(epochs=1), workdir=tmp_path, log=lambda _: None)
    with pytest.raises(CheckpointError, match=r"trained with model='lenet', this run asks for 'mlp'"):
        fit(small_config(epochs=2, model="mlp"), workdir=tmp_path, resume=True, log=lambda _: None)


def test_restore_against_a_mismatched_target_is_a_clear_error(tmp_path):
    fit(small_config(epochs=1), workdir=tmp_path, log=lambda _: None)
    other = TrainState.create(models.create("lenet", num_classes=4), optimizers.sgd(0.1, momentum=0.9))
    checkpoints = Checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match="different model/optimizer"):
        checkpoints.restore(other.arrays())
    checkpoints.close()


# --------------------------------------------------------------- whole model

def test_save_and_load_whole_model(tmp_path, getkey):
    model = models.create("resnet18", num_classes=7)
    variables = models.init(model, getkey())
    path = save_model(tmp_path / "net", "resnet18", variables, num_classes=7)
    loaded_model, loaded = load_model(path)
    assert loaded_model == model
    assert_same_params(loaded, variables)
    x = jax.random.normal(getkey(), (2, 32, 32, 3))
    np.testing.assert_array_equal(loaded_model.apply(loaded, x), model.apply(variables, x))
    with pytest.raises(FileExistsError, match="already exists"):
        save_model(path, "resnet18", variables, num_classes=7)


def test_save_model_keeps_dtype_and_rejects_mismatch(tmp_path, getkey):
    model = models.create("lenet5", dtype=jnp.bfloat16)
    variables = models.init(model, getkey())
    loaded_model, _ = load_model(save_model(tmp_path / "m", "lenet5", variables, dtype=jnp.bfloat16))
    assert loaded_model.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="do not fit lenet"):
        save_model(tmp_path / "bad", "lenet", variables)
    assert not (tmp_path / "bad").exists()


def test_load_model_errors(tmp_path, getkey):
    with pytest.raises(CheckpointError, match="not a model saved by jaxnets"):
        load_model(tmp_path)
    variables = models.init(models.create("mlp"), getkey())
    path = save_model(tmp_path / "m", "mlp", variables)
    for f in (p for p in (path / "variables").rglob("*") if p.is_file() and p.stat().st_size > 100):
        f.write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="cannot restore"):
        load_model(path)


def test_from_torch_then_save_model(tmp_path):
    torch_models = pytest.importorskip("jaxnets.interop.torch_models")
    net = torch_models.create("lenet")
    path = save_model(tmp_path / "lenet", "lenet", interop.from_torch("lenet", net.state_dict()))
    model, variables = load_model(path)
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype(np.float32)
    import torch

    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(model.apply(variables, x), expected, atol=1e-4)


# --------------------------------------------------------------- CLI

def test_cli_default_job_prints_final_accuracy(tmp_path, capsys):
    assert cli.main(["--epochs", "2", "--workdir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "epoch   2/2" in out and "final test accuracy:" in out
    assert float(out.split("final test accuracy:")[1].split("%")[0]) > 50


def test_cli_presets_and_overrides():
    config = cli.config_from_args(cli.parser().parse_args(["--preset", "cifar10-resnet18", "--lr", "0.05"]))
    assert (config.model, config.dataset, config.optimizer, config.lr) == ("resnet18", "cifar10", "sgd", 0.05)
    assert (config.momentum, config.weight_decay, config.schedule, config.augment) == (0.9, 5e-4, "cosine", True)
    default = cli.config_from_args(cli.parser().parse_args([]))
    assert (default.model, default.dataset) == ("lenet", "digits")


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--model", "resnet9"], "invalid choice: 'resnet9'"), (["--epochs", "0"], "must be >= 1"),
     (["--lr", "-1"], "must be > 0"), (["--val-fraction", "1.5"], r"must be in \[0, 1\)")],
)
def test_cli_bad_arguments_exit_nonzero(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_cli_reports_data_errors(tmp_path, capsys):
    code = cli.main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--source", "files", "--workdir",
                     str(tmp_path / "w"), "--no-progress"])
    assert code == 1
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err


def test_cli_wrong_model_for_data(tmp_path, capsys):
    assert cli.main(["--model", "resnet18", "--workdir", str(tmp_path)]) == 1
    assert "resnet18 expects images of shape (32, 32, 3), but digits has (28, 28, 1)" in capsys.readouterr().err


def test_python_dash_m_train_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "train", "--model", "mlp", "--epochs", "1", "--workdir",
                          str(tmp_path), "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "final test accuracy" in out.stdout


def test_lenet_on_real_mnist_reaches_97_percent(shared_data, tmp_path, capsys):
    """The CLI on the 10,000 real MNIST images (80/20 split), 5 epochs."""
    code = cli.main(["--preset", "mnist-lenet", "--data-dir", str(shared_data / "mnist-t10k"), "--split", "test",
                     "--workdir", str(tmp_path), "--no-progress"])
    assert code == 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 5
    assert history[-1]["val_acc"] >= 0.97, history[-1]
