"""fit, checkpoints, resume (also after kill -9), NaN, corrupt checkpoints, save/load_model, the CLI."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import data, interop, models
from jaxnets.cli import train as cli
from jaxnets.orbax_io import arrays_checksum
from jaxnets.training import (
    CheckpointError,
    Checkpoints,
    NonFiniteLoss,
    RunLocked,
    TrainConfig,
    TrainState,
    data_setup,
    fit,
    load_model,
    loop,
    optimizers,
    run_folder,
    save_model,
)
from jaxnets.training import config as train_config
from jaxnets.training.checkpoint import UnverifiedCheckpointWarning

REPO = Path(__file__).resolve().parents[1]


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fit_writes_history_curves_and_checkpoints(finished_run):
    result, workdir = finished_run
    history = json.loads((workdir / "history.json").read_text())
    assert history == result.history and len(history) == 2
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "seconds", "images_per_second"):
        assert key in history[-1]
    assert history[-1]["val_acc"] > 0.5 and history[-1]["test_acc"] > 0.5  # learns something in 2 epochs
    assert (workdir / "curves.png").stat().st_size > 10_000
    checkpoints = Checkpoints(workdir)
    assert checkpoints.epochs() == [1, 2] and checkpoints.best_epoch() in (1, 2)
    checkpoints.close()


def test_one_plus_one_epochs_equals_two(tmp_path, constant_epoch_run):
    """Resume extends a finished run (epochs 1 -> 2) to exactly the straight 2-epoch run: weights, Adam's
    moments, step, history, best/ (the interrupted-run tests below resume mid-run to the same standard)."""
    straight = fit(mlp_config(epochs=2, schedule="constant"), **QUIET)
    workdir = copy_run(constant_epoch_run, tmp_path / "run")
    resumed = fit(mlp_config(epochs=2, schedule="constant"), workdir=workdir, resume=True, **QUIET)
    assert int(resumed.state.step) == int(straight.state.step)
    assert_same_params(resumed.state.params, straight.state.params)
    assert_same_params(resumed.state.opt_state, straight.state.opt_state)  # Adam moments too
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert_ends_like(workdir, straight)


def test_fresh_run_refuses_to_overwrite_a_workdir(tmp_path, one_epoch_run):
    workdir = copy_run(one_epoch_run, tmp_path / "run")
    before = tree_hash(workdir / "checkpoints")
    with pytest.raises(FileExistsError, match="--resume"):
        fit(mlp_config(epochs=1), workdir=workdir, **QUIET)
    assert tree_hash(workdir / "checkpoints") == before


def test_corrupt_checkpoint_is_a_clear_error_and_stays_untouched(tmp_path, finished_run):
    workdir = copy_run(finished_run[1], tmp_path / "run")
    state_dir = workdir / "checkpoints" / "2" / "state"
    for f in (p for p in state_dir.rglob("*") if p.is_file() and p.stat().st_size > 100):
        f.write_bytes(f.read_bytes()[:50])
    before = tree_hash(workdir / "checkpoints")
    with pytest.raises(CheckpointError, match=r"cannot restore .*checkpoints/2.*corrupt.*Epochs \[1\] are also saved"):
        fit(mlp_config(epochs=3), workdir=workdir, resume=True, **QUIET)
    assert tree_hash(workdir / "checkpoints") == before


def test_resume_with_another_model_is_refused(one_epoch_run, monkeypatch):
    no_training(monkeypatch)
    with pytest.raises(CheckpointError, match=r"trained with model='mlp', this run asks for 'lenet'"):
        fit(mlp_config(epochs=2, model="lenet"), workdir=one_epoch_run, resume=True, **QUIET)


def test_restore_against_a_mismatched_target_is_a_clear_error(one_epoch_run):
    other = TrainState.create(models.create("mlp", num_classes=4), optimizers.sgd(0.1, momentum=0.9))
    checkpoints = Checkpoints(one_epoch_run)
    with pytest.raises(CheckpointError, match="different model/optimizer"):
        checkpoints.restore(other.arrays())
    checkpoints.close()


# --------------------------------------------------------------- whole model

def test_save_and_load_whole_model(tmp_path, getkey):
    model = models.create("resnet18", num_classes=7, width_divisor=8)  # tiny: BatchNorm statistics and all
    variables = models.init(model, getkey())
    path = save_model(tmp_path / "net", "resnet18", variables, num_classes=7, width_divisor=8)
    loaded_model, loaded = load_model(path)
    assert loaded_model == model
    assert_same_params(loaded, variables)
    x = jax.random.normal(getkey(), (2, 32, 32, 3))
    apply = jax.jit(type(model).apply, static_argnums=0)  # one program: the two models are equal (asserted above)
    np.testing.assert_array_equal(apply(loaded_model, loaded, x), apply(model, variables, x))
    with pytest.raises(FileExistsError, match="already exists"):
        save_model(path, "resnet18", variables, num_classes=7, width_divisor=8)


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


@pytest.mark.slow  # a fresh process (~9 s); the quick lane runs the same `main` in-process just above
def test_python_dash_m_train_runs(tmp_path, compile_cache_env):
    out = subprocess.run([sys.executable, "-m", "train", "--model", "mlp", "--epochs", "1", "--workdir",
                          str(tmp_path), "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, **compile_cache_env))
    assert out.returncode == 0, out.stderr
    assert "final test accuracy" in out.stdout


@pytest.mark.slow
def test_lenet_on_real_mnist_reaches_97_percent(shared_data, tmp_path, capsys):
    """The CLI on the 10,000 real MNIST images (80/20 split), 5 epochs."""
    code = cli.main(["--preset", "mnist-lenet", "--data-dir", str(shared_data / "mnist-t10k"), "--split", "test",
                     "--workdir", str(tmp_path), "--no-progress"])
    assert code == 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 5
    assert history[-1]["val_acc"] >= 0.97, history[-1]


# =============================================================== reliability (issue 14; see RELIABILITY.md)

QUIET = dict(log=lambda _: None)
NO_TIMING = ("seconds", "images_per_second")


def mlp_config(**overrides) -> TrainConfig:
    """The cheapest real run: the MLP on the embedded digits (35 steps an epoch)."""
    values = dict(model="mlp", dataset="digits", epochs=2, batch_size=32, optimizer="adam", lr=3e-3, schedule="cosine",
                  seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in NO_TIMING} for h in history]


def strict_json(path: Path):
    """Parse as strict JSON: a bare NaN / Infinity fails the test."""
    return json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"{path} holds a bare {token}"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[object, Path]:
    """(result, workdir) of the 2-epoch MLP run: trained once, copied by the tests that need such a folder."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    return fit(mlp_config(epochs=2), workdir=workdir, **QUIET), workdir


@pytest.fixture(scope="module")
def uninterrupted(finished_run):
    """The 2-epoch MLP run every interrupted run must end equal to."""
    return finished_run[0]


@pytest.fixture(scope="module")
def constant_epoch_run(tmp_path_factory) -> Path:
    """A workdir holding 1 epoch of the MLP at a constant learning rate (whose epoch 1 is any run's epoch 1)."""
    workdir = tmp_path_factory.mktemp("constant-epoch") / "run"
    fit(mlp_config(epochs=1, schedule="constant"), workdir=workdir, **QUIET)
    return workdir


def copy_run(source: Path, destination: Path) -> Path:
    """A private copy of a finished run's folder, for a test that changes it."""
    shutil.copytree(source, destination, dirs_exist_ok=True)
    return destination


def assert_ends_like(workdir: Path, straight):
    """The run in `workdir` ended exactly where `straight` did: history, weights, best/, no leftovers."""
    history = strict_json(workdir / "history.json")
    assert without_timing(history) == without_timing(straight.history)
    checkpoints = Checkpoints(workdir)
    try:
        arrays, meta = checkpoints.restore(straight.state.arrays())
        assert checkpoints.partial_saves() == []
        best = max(straight.history, key=lambda h: h["val_acc"])["epoch"]
        assert checkpoints.best_epochs() == [best]
        assert meta["best_epoch"] == best
    finally:
        checkpoints.close()
    assert_same_params(arrays, straight.state.arrays())
    assert not list(workdir.glob("*.tmp"))


def assert_tensorboard_is_history(workdir: Path) -> None:
    """The TensorBoard log in `workdir` has exactly one point per epoch of history.json, with its values, for every
    scalar (read back with TensorBoard's own reader, keeping every event)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from jaxnets.training.tensorboard import SCALARS

    history = strict_json(workdir / "history.json")
    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for key, tag in SCALARS.items():
        expected = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        points = [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []
        assert [step for step, _ in points] == [epoch for epoch, _ in expected], (tag, points, expected)
        assert [v for _, v in points] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    assert len(events.Tensors("config/text_summary")) == 1


# ---------------------------------------------------------------- 1. one process owns a run folder

HOLD_LOCK = """
import sys
from jaxnets.training.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()  # kept referenced: a collected lock is released
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_live_run_folder_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path,
                                                                                             constant_epoch_run):
    """Finding 1: run B into run A's folder is refused while A lives; after kill -9 of A, B takes over."""
    copy_run(constant_epoch_run, tmp_path)
    before = tree_hash(tmp_path / "checkpoints")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunLocked, match=rf"in use by another run \(pid {holder.pid} on "):
            fit(mlp_config(epochs=2, lr=1e-2, seed=9), workdir=tmp_path, resume=True, **QUIET)
        with pytest.raises(RunLocked, match=rf"pid {holder.pid}"):
            fit(mlp_config(epochs=1), workdir=tmp_path, **QUIET)
        assert tree_hash(tmp_path / "checkpoints") == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    lines = []
    result = fit(mlp_config(epochs=2, schedule="constant"), workdir=tmp_path, resume=True, log=lines.append)
    assert any(f"took over {tmp_path} from pid {holder.pid}" in line for line in lines), lines
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert not (tmp_path / ".lock-holder.json").exists(), "a finished run releases the folder"


def test_the_overwrite_check_sees_checkpoints_written_after_opening(tmp_path, one_epoch_run):
    """Finding 1: the list of saved epochs is read from disk, never from a stale cache."""
    reader = Checkpoints(tmp_path)
    assert reader.epochs() == []
    copy_run(one_epoch_run, tmp_path)  # a run's checkpoint lands after the reader opened the folder
    assert reader.epochs() == [1] and reader.latest_epoch() == 1
    reader.close()


# ---------------------------------------------------------------- 2. save_model(overwrite=True)

def test_save_model_overwrite_replaces_only_a_model_folder(tmp_path, getkey):
    variables = models.init(models.create("mlp"), getkey())
    user_folder = tmp_path / "mine"
    user_folder.mkdir()
    (user_folder / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a model folder written by save_model"):
        save_model(user_folder, "mlp", variables, overwrite=True)
    assert (user_folder / "thesis.tex").read_text() == "years of work"
    user_file = tmp_path / "notes.txt"
    user_file.write_text("keep")
    with pytest.raises(FileExistsError, match="not a model folder"):
        save_model(user_file, "mlp", variables, overwrite=True)
    assert user_file.read_text() == "keep"

    path = save_model(tmp_path / "net", "mlp", variables)
    other = models.init(models.create("mlp"), getkey())
    save_model(path, "mlp", other, overwrite=True)  # a model folder: replaced
    assert_same_params(load_model(path)[1], other)
    (path / "README").write_text("a user's file inside a model folder")
    with pytest.raises(FileExistsError, match="not a model folder"):
        save_model(path, "mlp", variables, overwrite=True)
    assert (path / "README").exists()
    assert not list(tmp_path.glob(".net.*")), "no staging folders left behind"


# ---------------------------------------------------------------- 3. kill -9 inside each phase of a save

# One driver process imports jaxnets once (no JAX backend started, so forking is safe), then forks one child per
# phase; each child patches one point inside one phase of epoch 2's save, runs the CLI, and SIGKILLs itself the
# moment the run reaches that point (an observable event, never a timer):
#   state     orbax starts writing checkpoints/2's arrays (tmp folder exists, half written)
#   metadata  orbax writes checkpoints/2's JSON metadata (arrays written, not renamed)
#   commit    orbax is about to rename checkpoints/2's tmp folder into place
#   best      checkpoints/2 is complete; orbax starts writing best/2's arrays
#   best-commit  best/2 is written, about to be renamed; best/1 still there
#   history   history.json.tmp is written, not yet renamed over history.json (still at epoch 1)
#   curves    curves.png.tmp is half written
#   sigterm   SIGTERM at step 10 of the epoch (mid-epoch; the previous epoch is saved and logged)
#   enospc    not a kill: the disk is full when orbax starts writing epoch 2's arrays (the CLI exits 1)
# Each child's stdout/stderr go to files beside its workdir, so what orbax's writer threads print at exit is seen.
KILL_AT = r"""
import json, os, signal, sys
from pathlib import Path

epoch, root, phases, argv = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(","), sys.argv[4:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)


def inside(folder, where):
    path = Path(str(folder))
    return any(p.name.startswith(f"{epoch}.orbax-checkpoint-tmp") and p.parent.name == where
               for p in (path, *path.parents))


def kill_on_entry(cls, method, where, arg=lambda self, a, k: a[0] if a else k.get("directory")):
    original = getattr(cls, method)

    async def patched(self, *a, **k):
        if inside(arg(self, a, k), where):
            die()
        return await original(self, *a, **k)

    setattr(cls, method, patched)


from orbax.checkpoint._src.handlers.json_checkpoint_handler import JsonCheckpointHandler
from orbax.checkpoint._src.handlers.standard_checkpoint_handler import StandardCheckpointHandler
from orbax.checkpoint._src.path.atomicity import AtomicRenameTemporaryPath
from jaxnets.training import loop, run_folder
from jaxnets.cli import train as cli


def run(phase):
    tmp_path_of = lambda self, a, k: self._tmp_path
    if phase == "state":
        kill_on_entry(StandardCheckpointHandler, "async_save", "checkpoints")
    elif phase == "metadata":
        kill_on_entry(JsonCheckpointHandler, "async_save", "checkpoints")
    elif phase == "commit":
        kill_on_entry(AtomicRenameTemporaryPath, "finalize", "checkpoints", tmp_path_of)
    elif phase == "best":
        kill_on_entry(StandardCheckpointHandler, "async_save", "best")
    elif phase == "best-commit":
        kill_on_entry(AtomicRenameTemporaryPath, "finalize", "best", tmp_path_of)
    elif phase == "sigterm":  # SIGTERM (default action: the process ends at once) at step 10 of the epoch
        run_epoch = loop._run_epoch

        def _run_epoch(state, steps, loader, eval_loaders, e, *a):
            if e + 1 == epoch:
                train, count = steps.train, iter(range(10**9))

                def terminated_at_step_10(state, batch):
                    if next(count) == 10:
                        os.kill(os.getpid(), signal.SIGTERM)
                    return train(state, batch)

                steps = steps._replace(train=terminated_at_step_10)
            return run_epoch(state, steps, loader, eval_loaders, e, *a)

        loop._run_epoch = _run_epoch
    elif phase == "enospc":
        original = StandardCheckpointHandler.async_save

        async def full_disk(self, directory, *a, **k):
            if inside(directory, "checkpoints"):
                raise OSError(28, "No space left on device")
            return await original(self, directory, *a, **k)

        StandardCheckpointHandler.async_save = full_disk
    elif phase == "history":
        write_json = run_folder._write_json

        def _write_json(path, value):
            if len(value) == epoch:
                Path(str(path) + ".tmp").write_text(json.dumps(value))
                die()
            write_json(path, value)

        run_folder._write_json = _write_json
    elif phase == "curves":
        plot = run_folder.plot_history

        def plot_history(history, path, title=""):
            if len(history) == epoch:
                Path(str(path) + ".tmp").write_bytes(b"\x89PNG\r\n" + bytes(500))
                die()
            return plot(history, path, title)

        run_folder.plot_history = plot_history
    else:
        raise SystemExit(f"unknown phase {phase}")
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(root / f"{phase}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.exit(cli.main([*argv, "--workdir", str(root / phase)]))


statuses = {}
for phase in phases:
    pid = os.fork()
    if pid == 0:
        run(phase)  # exits (or is killed); never returns
    _, status = os.waitpid(pid, 0)
    statuses[phase] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
print(json.dumps(statuses))
"""
CLI_ARGS = ["--model", "mlp", "--dataset", "digits", "--epochs", "2", "--batch-size", "32", "--optimizer", "adam",
            "--lr", "0.003", "--schedule", "cosine", "--seed", "3", "--no-progress"]
KILL_PHASES = ["state", "metadata", "commit", "best", "best-commit", "history", "curves", "sigterm"]


class Interrupted(NamedTuple):
    code: int  # the exit code, or -signal when killed
    workdir: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory, compile_cache_env) -> dict[str, Interrupted]:
    """Every phase of KILL_AT (and the full disk), run once in one driver process."""
    root = tmp_path_factory.mktemp("interrupted")
    driver = subprocess.run([sys.executable, "-c", KILL_AT, "2", str(root), ",".join([*KILL_PHASES, "enospc"]),
                             *CLI_ARGS], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(REPO), **compile_cache_env))
    assert driver.returncode == 0, driver.stderr
    codes = json.loads(driver.stdout.strip().splitlines()[-1])
    return {phase: Interrupted(code, root / phase, (root / f"{phase}.stdout").read_text(),
                               (root / f"{phase}.stderr").read_text()) for phase, code in codes.items()}


def test_the_interrupted_runs_are_the_uninterrupted_config():
    assert cli.config_from_args(cli.parser().parse_args(CLI_ARGS)) == mlp_config(epochs=2)


@pytest.mark.slow  # one driver process trains 8 runs (about 30 s in all)
@pytest.mark.parametrize("phase", KILL_PHASES)
def test_kill_9_inside_each_phase_of_a_save_then_resume_ends_like_an_uninterrupted_run(phase, interrupted_runs,
                                                                                      uninterrupted):
    """Finding 3: whatever the moment of the kill, --resume repairs the folder and ends where a straight run does."""
    killed = interrupted_runs[phase]
    signum = signal.SIGTERM if phase == "sigterm" else signal.SIGKILL
    assert killed.code == -signum, f"the kill point was never reached:\n{killed.stdout}{killed.stderr}"
    workdir = killed.workdir
    assert (workdir / ".lock-holder.json").exists(), "killed runs leave their lock record behind"
    written = [1, 2] if phase == "curves" else [1]  # history.json goes before curves.png
    assert [h["epoch"] for h in strict_json(workdir / "history.json")] == written

    assert cli.main([*CLI_ARGS, "--workdir", str(workdir), "--resume"]) == 0
    assert_ends_like(workdir, uninterrupted)
    assert_tensorboard_is_history(workdir)


def test_a_checkpoint_saved_without_its_history_is_completed_on_resume(tmp_path, finished_run, uninterrupted):
    """Finding 3, in-process: epoch 2 saved, but history.json and best/ lag behind; resume repairs both."""
    copy_run(finished_run[1], tmp_path)
    run_folder._write_json(tmp_path / "history.json", uninterrupted.history[:1])  # as if killed before it was rewritten
    for folder in (tmp_path / "best").iterdir():
        shutil.rmtree(folder)  # and before best/ was written
    result = fit(mlp_config(epochs=2), workdir=tmp_path, resume=True, **QUIET)  # nothing to train, but repairs
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert_ends_like(tmp_path, uninterrupted)


# ---------------------------------------------------------------- 4. nothing non-finite is saved

def steps_per_epoch(config: TrainConfig) -> int:
    train = data_setup.load_splits(config).train
    return len(data.Loader(train.images, train.labels, config.batch_size, preprocess=data.Preprocess(), train=True))


def blow_up_at(monkeypatch, step: int, field: str = "params"):
    """Make the train step return inf weights from optimizer step `step` on (a learning rate that explodes there)."""
    real = loop.make_steps

    def make_steps(*args, **kwargs):
        steps = real(*args, **kwargs)

        def train(state, batch):
            new, metrics = steps.train(state, batch)
            if int(new.step) >= step:
                new = new.replace(**{field: jax.tree.map(
                    lambda x: x * jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else x, getattr(new, field))})
            return new, metrics

        return steps._replace(train=train)

    monkeypatch.setattr(loop, "make_steps", make_steps)


def test_a_blow_up_on_the_last_step_of_an_epoch_is_never_saved(tmp_path, monkeypatch, constant_epoch_run):
    """Finding 4: the training loss of the epoch is finite, but the held-out loss and the weights are not."""
    copy_run(constant_epoch_run, tmp_path)
    before = tree_hash(tmp_path / "checkpoints")
    blow_up_at(monkeypatch, 2 * steps_per_epoch(mlp_config()))  # the very last step of epoch 2
    with pytest.raises(NonFiniteLoss, match=r"held-out loss became nan at epoch 2.*last good checkpoint \(epoch 1\)"):
        fit(mlp_config(epochs=2, schedule="constant"), workdir=tmp_path, resume=True, **QUIET)
    assert tree_hash(tmp_path / "checkpoints") == before
    assert [h["epoch"] for h in strict_json(tmp_path / "history.json")] == [1]
    checkpoints = Checkpoints(tmp_path)
    assert checkpoints.epochs() == [1] and checkpoints.best_epochs() == [1]
    checkpoints.close()


def test_non_finite_weights_without_a_held_out_set_are_never_saved(tmp_path, monkeypatch):
    """Finding 4: no held-out loss to look at (val_fraction=0): the weights themselves are checked."""
    config = mlp_config(epochs=1, val_fraction=0.0)
    blow_up_at(monkeypatch, steps_per_epoch(config), field="opt_state")  # last step: Adam's moments go inf, weights not
    with pytest.raises(NonFiniteLoss,
                       match=r"of [\d,]+ weights and optimizer values became NaN or infinite at epoch 1"):
        fit(config, workdir=tmp_path, **QUIET)
    checkpoints = Checkpoints(tmp_path)
    assert checkpoints.epochs() == []
    checkpoints.close()


def test_nan_training_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, constant_epoch_run):
    copy_run(constant_epoch_run, tmp_path)
    before = tree_hash(tmp_path / "checkpoints")
    blow_up_at(monkeypatch, steps_per_epoch(mlp_config()) + 5)  # early in epoch 2: the training loss itself goes NaN
    with pytest.raises(NonFiniteLoss, match=r"loss became (nan|inf).*epoch 2.*last good checkpoint \(epoch 1\)"):
        fit(mlp_config(epochs=2, schedule="constant"), workdir=tmp_path, resume=True, **QUIET)
    assert tree_hash(tmp_path / "checkpoints") == before


def test_history_json_is_strict_json_even_with_non_finite_values(tmp_path):
    run_folder._write_json(tmp_path / "h.json", [{"val_loss": float("nan"), "x": [float("inf"), 1.0]}])
    assert strict_json(tmp_path / "h.json") == [{"val_loss": None, "x": [None, 1.0]}]


# ---------------------------------------------------------------- 5. every field that changes training must match

@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one-epoch")
    fit(mlp_config(epochs=1), workdir=workdir, **QUIET)
    return workdir


@pytest.mark.parametrize(("field", "value"), [
    ("split", "test"), ("augment", True), ("normalize", "half"), ("label_smoothing", 0.1), ("lr", 0.01),
    ("weight_decay", 5e-4), ("warmup_epochs", 1.0), ("schedule", "constant"), ("batch_size", 16), ("seed", 4),
    ("val_fraction", 0.3), ("optimizer", "sgd"), ("momentum", 0.5), ("nesterov", True), ("loss", "mse"),
])
def test_resume_refuses_a_changed_field_naming_it(field, value, one_epoch_run, monkeypatch):
    """Finding 5: refused before any data is loaded."""
    no_training(monkeypatch)
    with pytest.raises(CheckpointError, match=rf"cannot resume: the checkpoint was trained with {field}="):
        fit(mlp_config(epochs=2, **{field: value}), workdir=one_epoch_run, resume=True, **QUIET)


def test_resume_refuses_other_training_data(one_epoch_run):
    splits = data_setup.load_splits(mlp_config())
    labels = splits.train.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    other = splits._replace(train=dataclasses.replace(splits.train, labels=labels))
    with pytest.raises(CheckpointError, match="training data differ"):
        fit(mlp_config(epochs=2), workdir=one_epoch_run, resume=True, splits=other, **QUIET)


def test_every_config_field_is_either_checked_on_resume_or_known_not_to_change_training():
    may_change = {"epochs", "eval_batch_size", "mode", "accumulate", "distributed", "keep", "source", "data_dir",
                  "mirror", "strict_data"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields == set(train_config.RESUME_MUST_MATCH) | may_change


# ---------------------------------------------------------------- 7 + 10. checksums; the advice works

def largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_a_one_bit_flip_is_caught_and_the_advice_to_resume_from_the_older_epoch_works(tmp_path, finished_run,
                                                                                      uninterrupted):
    """Findings 7 and 10: flip one bit of epoch 2's arrays; the error names epoch 2 and offers epoch 1;
    do as it says.
    """
    copy_run(finished_run[1], tmp_path)
    target = largest_file(tmp_path / "checkpoints" / "2" / "state")
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    target.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"epoch 2\).*corrupt.*Epochs \[1\] are also saved") as error:
        fit(mlp_config(epochs=2), workdir=tmp_path, resume=True, **QUIET)
    command = re.search(r"\(mv (\S+) (\S+)\)", str(error.value))
    assert command, str(error.value)
    shutil.move(command.group(1), command.group(2))
    fit(mlp_config(epochs=2), workdir=tmp_path, resume=True, **QUIET)  # epoch 2 again: best/2 exists already
    assert_ends_like(tmp_path, uninterrupted)


def test_restore_verifies_the_checksum_of_the_arrays(tmp_path, one_epoch_run, uninterrupted):
    copy_run(one_epoch_run, tmp_path)
    meta_file = next(p for p in (tmp_path / "checkpoints" / "1" / "meta").rglob("*") if p.is_file()
                     and "checksum" in p.read_text(errors="ignore"))
    meta = json.loads(meta_file.read_text())
    assert len(meta["checksum"]["value"]) == 64
    meta["checksum"]["value"] = "0" * 64  # equivalent to changing the arrays behind its back
    meta_file.write_text(json.dumps(meta))
    checkpoints = Checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match=r"epoch 1\): corrupt, its arrays do not match the checksum"):
        checkpoints.restore(uninterrupted.state.arrays())  # the same structure as any MLP run's
    checkpoints.close()


def test_a_checkpoint_without_a_checksum_restores_with_a_warning(tmp_path, one_epoch_run, uninterrupted):
    """A run checkpoint whose metadata lacks its checksum (an older jaxnets, or edited) is restored, unverified,
    with an UnverifiedCheckpointWarning naming it, not silently."""
    copy_run(one_epoch_run, tmp_path)
    meta_file = next(p for p in (tmp_path / "checkpoints" / "1" / "meta").rglob("*") if p.is_file()
                     and "checksum" in p.read_text(errors="ignore"))
    meta = json.loads(meta_file.read_text())
    saved_checksum = meta.pop("checksum")["value"]
    meta_file.write_text(json.dumps(meta))
    checkpoints = Checkpoints(tmp_path)
    try:
        with pytest.warns(UnverifiedCheckpointWarning, match=r"checkpoints/1 \(epoch 1\) has no checksum"):
            arrays, restored = checkpoints.restore(uninterrupted.state.arrays())
    finally:
        checkpoints.close()
    assert "checksum" not in restored
    assert arrays_checksum(arrays) == saved_checksum  # the arrays as saved, restored all the same


# ---------------------------------------------------------------- 8. flags that make no sense

@pytest.mark.parametrize(("argv", "flag"), [
    (["--weight-decay", "-5"], "--weight-decay"), (["--warmup-epochs", "-3"], "--warmup-epochs"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--momentum", "nan"], "--momentum"),
    (["--momentum", "-0.1"], "--momentum"), (["--weight-decay", "inf"], "--weight-decay"),
    (["--label-smoothing", "nan"], "--label-smoothing"), (["--val-fraction", "nan"], "--val-fraction"),
    (["--warmup-epochs", "nan"], "--warmup-epochs"), (["--lr", "abc"], "--lr"),
])
def test_cli_refuses_flags_that_make_no_sense_naming_the_flag(argv, flag, capsys):
    """Finding 8."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--workdir", "/nonexistent/never-used"])
    assert exit_info.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_fit_refuses_config_values_that_make_no_sense():
    with pytest.raises(ValueError, match=r"weight_decay must be >= 0"):
        fit(mlp_config(weight_decay=-5.0), **QUIET)
    with pytest.raises(ValueError, match=r"lr must be finite"):
        fit(mlp_config(lr=float("nan")), **QUIET)


def test_config_errors_carry_the_field_the_cli_names(capsys):
    """Every TrainConfig check raises ConfigError with `.field`; the CLI names `--field` from it, not from the text.

    A batch that does not split into `accumulate` micro-batches is batch_size's error; `--accumulate 0` is accumulate's.
    """
    cases = ((mlp_config(weight_decay=-5.0), "weight_decay"), (mlp_config(mode="fast"), "mode"),
             (mlp_config(dtype="float8"), "dtype"), (mlp_config(epochs=2, warmup_epochs=2.5), "warmup_epochs"),
             (mlp_config(batch_size=32, accumulate=3), "batch_size"), (mlp_config(optimizer="rmsprop"), "optimizer"),
             (mlp_config(schedule="poly"), "schedule"), (mlp_config(source="web"), "source"))
    for config, field in cases:
        with pytest.raises(train_config.ConfigError) as error:
            config.check()
        assert error.value.field == field and str(error.value) == error.value.message
    with pytest.raises(SystemExit):
        cli.main(["--batch-size", "32", "--accumulate", "3", "--workdir", "/nonexistent/never-used"])
    assert "argument --batch-size: batch_size (32) must be a multiple of accumulate (3)" in capsys.readouterr().err
    with pytest.raises(train_config.ConfigError, match="accumulate must be a positive integer") as error:
        mlp_config(accumulate=0).check()
    assert error.value.field == "accumulate"
    with pytest.raises(SystemExit):
        cli.main(["--accumulate", "0", "--workdir", "/nonexistent/never-used"])
    assert "argument --accumulate: accumulate must be a positive integer (got 0)" in capsys.readouterr().err


def test_a_config_field_type_without_a_flag_type_is_refused_when_the_parser_is_built(monkeypatch):
    """A flag field of a type the CLI cannot parse (here a tuple) fails at parser build, not as a string flag."""
    @dataclasses.dataclass
    class Config:
        size: tuple[int, int] = train_config.option((1, 1), "a pair")

    monkeypatch.setattr(cli, "TrainConfig", Config)
    with pytest.raises(TypeError, match=r"TrainConfig.size: no command-line flag type"):
        cli.parser()


def test_optional_float_fields_become_float_flags(monkeypatch):
    """An `float | None` flag field parses its text as a float (the annotation is resolved, not read as text)."""
    @dataclasses.dataclass
    class Config:
        rate: float | None = train_config.option(None, "a rate")

    monkeypatch.setattr(cli, "TrainConfig", Config)
    assert cli.parser().parse_args(["--rate", "0.5"]).rate == 0.5


def test_strict_data_and_data_cache_reach_data_load_as_arguments(monkeypatch):
    """`strict_data=False` and `fit(data_cache=False)` are passed to data.load (True: its env-driven defaults);
    `jaxnets-train --no-strict-data --no-cache` sets them and no environment variable."""
    calls = []

    def load(name, split, **kwargs):
        calls.append((split, kwargs["strict"], kwargs["cache"]))
        raise data.DataNotFound("stop here")

    monkeypatch.setattr(data, "load", load)
    for config, cache, expected in ((mlp_config(), True, (None, None)),
                                    (mlp_config(strict_data=False), False, (False, False))):
        calls.clear()
        with pytest.raises(data.DataNotFound):
            fit(config, data_cache=cache, **QUIET)
        assert calls == [("train", *expected)]
    seen = {}

    def fake_fit(config, **kwargs):
        seen.update(strict_data=config.strict_data, data_cache=kwargs["data_cache"], env=dict(os.environ))
        raise data.DataNotFound("stop here")

    monkeypatch.setattr(cli, "fit", fake_fit)
    environment = dict(os.environ)
    assert cli.main(["--no-strict-data", "--no-cache", "--workdir", "/nonexistent/never-used"]) == 1
    assert (seen["strict_data"], seen["data_cache"]) == (False, False)
    assert seen["env"] == environment == dict(os.environ)


# ---------------------------------------------------------------- 11. one clear line for expected failures

def make_read_only(path: Path, monkeypatch) -> None:
    """Read-only as the OS sees it; as root (permission bits do not bind) every write under `path` fails EROFS."""
    for folder in (path, *[p for p in path.rglob("*") if p.is_dir()]):
        folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    import builtins

    def refuse(name, real):
        def wrapper(file, *args, **kwargs):
            flags = args[0] if args else kwargs.get("flags", kwargs.get("mode", "r"))
            writing = (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)) or \
                (isinstance(flags, str) and any(c in flags for c in "wax+"))
            if writing and isinstance(file, (str, os.PathLike)) and Path(os.path.abspath(file)).is_relative_to(path):
                raise OSError(errno.EROFS, "Read-only file system", str(file))
            return real(file, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(os, "open", refuse("os.open", os.open))
    monkeypatch.setattr(builtins, "open", refuse("open", builtins.open))
    real_mkdir = os.mkdir
    monkeypatch.setattr(os, "mkdir", lambda p, *a, **k: refuse("mkdir", lambda f, *_: real_mkdir(f, *a, **k))(p, "w"))


def no_training(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("data were loaded: the workdir problem was found only after training started")
    monkeypatch.setattr(loop, "load_splits", fail)


def test_read_only_workdir_is_one_line_before_training(tmp_path, monkeypatch, capfd, one_epoch_run):
    """Finding 11: fresh and resumed runs into a read-only folder stop before loading data, in one line."""
    copy_run(one_epoch_run, tmp_path / "run")
    try:
        make_read_only(tmp_path, monkeypatch)
        no_training(monkeypatch)
        capfd.readouterr()
        for argv in (["--workdir", str(tmp_path / "run"), "--resume"], ["--workdir", str(tmp_path / "new")]):
            assert cli.main(["--model", "mlp", "--epochs", "2", "--no-progress", *argv]) == 1
            err = capfd.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "Read-only file system" in err[0] and "--workdir" in err[0], err
    finally:
        monkeypatch.undo()
        for folder in (tmp_path, *[p for p in tmp_path.rglob("*") if p.is_dir()]):
            folder.chmod(0o755)


@pytest.mark.parametrize("blocked", [".", "checkpoints"])
def test_a_file_in_the_way_of_the_workdir_is_one_line_before_training(blocked, tmp_path, monkeypatch, capfd):
    """Finding 11: a file where the workdir (or its checkpoints folder) should be."""
    workdir = tmp_path / "run"
    if blocked == ".":
        workdir.write_text("not a folder")
    else:
        workdir.mkdir()
        (workdir / blocked).write_text("not a folder")
    no_training(monkeypatch)
    assert cli.main(["--model", "mlp", "--no-progress", "--workdir", str(workdir)]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(workdir) in err[0], err


@pytest.mark.slow  # shares the driver of the kill -9 tests
def test_disk_full_while_saving_is_one_line_and_the_run_resumes(interrupted_runs, uninterrupted):
    """Finding 11: ENOSPC injected where orbax writes epoch 2's arrays, in a real CLI process (so that anything
    orbax's writer threads print at exit is seen): one line, epoch 1 intact, --resume finishes the run."""
    full = interrupted_runs["enospc"]
    assert full.code == 1, full.stderr
    err = full.stderr.strip().splitlines()
    assert len(err) == 1, full.stderr
    assert "cannot save epoch 2" in err[0] and "disk is full" in err[0] and "Epochs [1] are saved" in err[0]
    assert cli.main([*CLI_ARGS, "--workdir", str(full.workdir), "--resume"]) == 0
    assert_ends_like(full.workdir, uninterrupted)


def test_disk_full_while_writing_history_is_one_line(tmp_path, monkeypatch, capfd):
    def full_disk(path, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_folder, "_write_json", full_disk)
    capfd.readouterr()
    assert cli.main(["--model", "mlp", "--epochs", "1", "--no-progress", "--workdir", str(tmp_path)]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk is full" in err[0] and "--resume" in err[0], err


def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capfd, uninterrupted):
    """Finding 11: Ctrl-C during epoch 2 -> exit 130 and one line; the folder is released; --resume finishes."""
    real = loop._run_epoch

    def interrupted(state, steps, loader, eval_loaders, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(state, steps, loader, eval_loaders, epoch, *args)

    monkeypatch.setattr(loop, "_run_epoch", interrupted)
    args = [*CLI_ARGS, "--workdir", str(tmp_path)]
    capfd.readouterr()
    assert cli.main(args) == 130
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and "--resume" in err[0], err
    monkeypatch.undo()
    assert cli.main([*args, "--resume"]) == 0, capfd.readouterr().err
    assert_ends_like(tmp_path, uninterrupted)


# ---------------------------------------------------------------- 12. documented error types

@pytest.mark.parametrize("model_json", [
    "[1, 2]", '{"format": "jaxnets-model/1", "name": 3, "kwargs": {}}',
    '{"format": "jaxnets-model/1", "name": "mlp", "kwargs": [1]}',
    '{"format": "jaxnets-model/1", "name": "lenet", "kwargs": {"num_classes": 0}}',
    '{"format": "jaxnets-model/1", "name": "mlp", "kwargs": {"hidden_size": "ten"}}',
    '{"format": "jaxnets-model/1", "name": "mlp", "kwargs": {"dtype": "float99"}}', "not json",
])
def test_load_model_raises_checkpoint_error_for_malformed_model_json(model_json, tmp_path, getkey):
    """Finding 12."""
    path = save_model(tmp_path / "m", "mlp", models.init(models.create("mlp"), getkey()))
    (path / "model.json").write_text(model_json)
    with pytest.raises(CheckpointError, match="not a model saved by jaxnets.save_model"):
        load_model(path)


def test_models_create_refuses_a_class_count_below_one():
    """Finding 12."""
    for name, kwargs in (("lenet", {"num_classes": 0}), ("resnet18", {"num_classes": -1}), ("mlp", {"output_dim": 0})):
        with pytest.raises(ValueError, match=r"must be a positive integer"):
            models.create(name, **kwargs)


def test_lenet_hint_names_the_missing_channel_axis():
    """Finding 12: (N, 28, 28) lacks the channel axis, not the batch axis."""
    model = models.create("lenet")
    variables = models.init(model, jax.random.key(0))
    with pytest.raises(ValueError, match=r"Add the channel axis: x\[\.\.\., None\]"):
        model.apply(variables, jnp.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match=r"Add a batch axis: x\[None\]"):
        model.apply(variables, jnp.zeros((28, 28, 1)))


# ---------------------------------------------------------------- issue 25: resume never destroys what it cannot resume

def file_bytes(paths) -> dict:
    return {str(p): p.read_bytes() for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*")))
            if p.is_file()}


def test_resume_without_checkpoints_refuses_and_keeps_best_and_history(tmp_path, finished_run, capfd):
    """checkpoints/ deleted, --resume: one line naming best/ and history.json and how to keep them; both unchanged."""
    workdir = copy_run(finished_run[1], tmp_path / "run")
    shutil.rmtree(workdir / "checkpoints")
    kept = [workdir / "best", workdir / "history.json"]
    before = file_bytes(kept)
    capfd.readouterr()
    assert cli.main([*CLI_ARGS, "--workdir", str(workdir), "--resume"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    best = finished_run[0].history and max(finished_run[0].history, key=lambda h: h["val_acc"])["epoch"]
    for needle in (f"best/{best}", "history.json (epochs 1-2)", "--resume-from-best", f"mv {workdir} {workdir}.old"):
        assert needle in err[0], (needle, err[0])
    assert file_bytes(kept) == before
    shutil.rmtree(workdir / "best")  # history.json alone is kept too, by a fresh run and by --resume
    for argv in ([], ["--resume"]):
        assert cli.main([*CLI_ARGS, "--workdir", str(workdir), *argv]) == 1
        assert "history.json" in capfd.readouterr().err
    assert file_bytes([workdir / "history.json"]) == {k: v for k, v in before.items() if k.endswith("history.json")}


def test_resume_from_best_continues_exactly_from_the_best_epoch(tmp_path, finished_run, uninterrupted):
    """--resume-from-best with checkpoints/ gone: best/N is a whole TrainState, so the run continues from epoch N
    exactly (ends like the straight run); a history.json with later epochs is kept aside, not overwritten."""
    workdir = copy_run(finished_run[1], tmp_path / "run")
    shutil.rmtree(workdir / "checkpoints")
    best = Checkpoints(workdir)
    epoch = best.best_epoch()
    best.close()
    if epoch == 2:  # make best/ hold epoch 1, as after a run whose held-out accuracy peaked early
        shutil.rmtree(workdir / "best")
        shutil.copytree(finished_run[1] / "checkpoints" / "1", workdir / "best" / "1")
        run_folder._write_json(workdir / "history.json", uninterrupted.history)
        epoch = 1
    later = (workdir / "history.json").read_bytes()
    lines = []
    result = fit(mlp_config(epochs=2), workdir=workdir, resume="best", log=lines.append)
    assert any(f"copied best/{epoch} to checkpoints/{epoch}" in line for line in lines), lines
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert_ends_like(workdir, uninterrupted)
    if epoch < 2:
        assert (workdir / "history.until-epoch-2.json").read_bytes() == later
    with pytest.raises(CheckpointError, match="continue from epoch 2 with --resume"):
        fit(mlp_config(epochs=3), workdir=workdir, resume="best", **QUIET)


# ---------------------------------------------------------------- issue 25: flags refused in one line, naming the flag

@pytest.mark.parametrize(("argv", "flag", "message"), [
    (["--seed", "-1"], "--seed", r"seed must be in \[0, 9223372036854775807\] \(got -1\)"),
    (["--seed", str(2**64)], "--seed", r"seed must be in \[0, "),
    (["--seed", "1.5"], "--seed", "not a whole number"),
    (["--warmup-epochs", "2", "--epochs", "2"], "--warmup-epochs", r"must be shorter than the run \(epochs=2\)"),
    (["--warmup-epochs", "1", "--epochs", "3", "--schedule", "step"], "--warmup-epochs", "cosine schedule only"),
])
def test_cli_refuses_a_seed_out_of_range_and_a_warm_up_the_run_never_finishes(argv, flag, message, capsys):
    """A seed JAX or numpy cannot take, and a warm-up as long as the run (or with a schedule that ignores it), are
    refused by the parser naming the flag and the range; the same checks refuse the same TrainConfig in Python."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--workdir", "/nonexistent/never-used"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and re.search(message, err), err


def test_fit_refuses_a_seed_out_of_range_and_a_warm_up_as_long_as_the_run():
    """TrainConfig.check: the same ranges as the CLI flags, naming the field."""
    for config, message in ((mlp_config(seed=-1), r"seed must be in \[0, "),
                            (mlp_config(seed=2.0), "seed must be a whole number"),
                            (mlp_config(epochs=2, warmup_epochs=2.5), "warmup_epochs .* must be shorter than the run"),
                            (mlp_config(warmup_epochs=0.5, schedule="constant"), "cosine schedule only")):
        with pytest.raises(ValueError, match=message):
            fit(config, **QUIET)


def test_distributed_without_a_coordinator_is_one_line(capfd, monkeypatch):
    """--distributed with no coordinator (no flags, no environment): one line saying which flags to pass, exit 1."""
    for variable in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
                     "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    from jax._src import xla_bridge  # the backend of this test process is up; the CLI checks run before it matters

    monkeypatch.setattr(xla_bridge, "_backends", {})
    for argv, needle in (([], "--coordinator-address HOST:PORT"), (["--coordinator-address", "localhost"],
                                                                     "must be HOST:PORT")):
        capfd.readouterr()
        assert cli.main(["--distributed", *argv, "--workdir", "/nonexistent/never-used", "--no-progress"]) == 1
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


# ---------------------------------------------------------------- issue 25: TensorBoard after any interruption

def test_resume_writes_back_the_tensorboard_points_a_killed_run_never_logged(tmp_path, finished_run, uninterrupted):
    """In-process: a folder whose TensorBoard log stops at epoch 1 while epoch 2 is saved (a kill between the two)
    and holds a stray second event file; --resume (nothing left to train) rebuilds it: one point per epoch."""
    from jaxnets.training.tensorboard import TensorBoard

    workdir = copy_run(finished_run[1], tmp_path / "run")
    TensorBoard(workdir / "tensorboard", {"model": "mlp"}, history=uninterrupted.history[:1]).close()
    (workdir / "tensorboard" / "events.out.tfevents.0.stray").write_bytes(
        next((workdir / "tensorboard").glob("events.out.tfevents.*")).read_bytes())
    fit(mlp_config(epochs=2), workdir=workdir, resume=True, **QUIET)
    assert_tensorboard_is_history(workdir)


@pytest.mark.slow  # a fresh process is killed, then two resumes (about 20 s)
def test_tensorboard_has_one_point_per_epoch_after_a_kill_and_after_a_rollback(tmp_path, compile_cache_env,
                                                                                finished_run, uninterrupted):
    """A real kill -9 after epoch 1's checkpoint and history.json, before its TensorBoard point: --resume writes the
    missing point back. Then a rollback (epoch 2's checkpoint moved away, trained again): still one point per epoch."""
    driver = subprocess.run([sys.executable, "-c", KILL_AT, "1", str(tmp_path), "curves", *CLI_ARGS], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO), **compile_cache_env))
    assert json.loads(driver.stdout.strip().splitlines()[-1]) == {"curves": -signal.SIGKILL}, driver.stderr
    workdir = tmp_path / "curves"
    assert [h["epoch"] for h in strict_json(workdir / "history.json")] == [1]
    assert cli.main([*CLI_ARGS, "--workdir", str(workdir), "--resume"]) == 0
    assert_ends_like(workdir, uninterrupted)
    assert_tensorboard_is_history(workdir)

    shutil.move(workdir / "checkpoints" / "2", tmp_path / "epoch-2")
    assert cli.main([*CLI_ARGS, "--workdir", str(workdir), "--resume"]) == 0
    assert_tensorboard_is_history(workdir)
