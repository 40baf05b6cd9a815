"""Data parallel and multi-process training (jaxnets.training.distributed) on virtual CPU devices.

The device count is fixed when JAX starts, so the work runs in child processes
started once for the whole file, at the same time: one with 4 virtual CPU
devices runs every single-process check (and the reference run), two with 2
devices each form one `--distributed` run over the loopback address. The
tests below only read what they reported.

Run this file as a script to do the checks of one child (`checks OUT REF`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # three child processes with 2 and 4 virtual devices (~45 s)

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
# The one-process and two-process runs: the same command, the same global batch (4 devices in both).
# An evaluation batch of 50 is padded to 52 on 4 devices.
CLI_ARGS = ["--epochs", "1", "--batch-size", "128", "--eval-batch-size", "50", "--no-progress", "--no-tensorboard"]


def _env(devices: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start the three children together; return what each printed and where each wrote."""
    tmp = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    cli = [sys.executable, "-c", "import sys; from jaxnets.cli.train import main; sys.exit(main(sys.argv[1:]))"]
    procs = {
        "checks": subprocess.Popen([sys.executable, __file__, "checks", str(tmp / "checks.json"), str(tmp)],
                                   env=_env(4), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        **{f"process{i}": subprocess.Popen(
            cli + CLI_ARGS + ["--workdir", str(tmp / "two-processes"), "--distributed", "--coordinator-address",
                              f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            env=_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)},
    }
    out = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=300)  # ~1-2 min normally; a hang fails in 5, not 15
            out[name] = {"rc": proc.returncode, "stdout": stdout, "stderr": stderr}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, result in out.items():
        assert result["rc"] == 0, f"{name} failed:\n{result['stdout'][-3000:]}\n{result['stderr'][-5000:]}"
    return {"results": json.loads((tmp / "checks.json").read_text()), "tmp": tmp, **out}


def _compare_runs(workdir_a: Path, workdir_b: Path) -> None:
    """The two runs' epoch-1 metrics and checkpointed arrays agree to TOLERANCE."""
    import jax

    from jaxnets.training import Checkpoints, TrainConfig
    from jaxnets.training.data_setup import build, learning_rate_schedule

    a, b = Checkpoints(workdir_a), Checkpoints(workdir_b)
    try:
        assert a.epochs() == b.epochs() == [1]
        history_a, history_b = a.read_meta()["history"], b.read_meta()["history"]
        for key in ("train_loss", "val_loss", "val_acc", "test_acc"):
            assert abs(history_a[0][key] - history_b[0][key]) < TOLERANCE, (key, history_a[0][key], history_b[0][key])
        config = TrainConfig.from_json(a.read_meta()["config"])
        target = jax.eval_shape(lambda: build(config, learning_rate_schedule(config, 1))[1].arrays())
        arrays_a, arrays_b = a.restore(target)[0], b.restore(target)[0]
    finally:
        a.close()
        b.close()
    assert int(arrays_a["step"]) == int(arrays_b["step"]) >= 8
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                                         arrays_a, arrays_b))
    assert max(diffs) < TOLERANCE


def test_lenet_on_four_devices_equals_one_device(runs):
    """`fit` on one device vs `jaxnets-train` on four (every device by default), the same global batches."""
    assert runs["results"]["one_device_log"] and "data parallel" not in runs["results"]["one_device_log"]
    assert "data parallel: batch 128 split over 4 devices (cpu), 1 process" in runs["results"]["stdout"]
    _compare_runs(runs["tmp"] / "one-device", runs["tmp"] / "four-devices")


def test_resnet_batchnorm_statistics_over_the_global_batch(runs):
    resnet = runs["results"]["resnet"]
    assert resnet["steps"] >= 4
    assert resnet["max_loss_diff"] < TOLERANCE
    assert resnet["max_param_diff"] < TOLERANCE
    assert resnet["max_batch_stats_diff"] < TOLERANCE
    # What per-device statistics (DDP without SyncBatchNorm) would have given is far off: the check can fail.
    assert resnet["per_device_stats_diff"] > 100 * TOLERANCE


def test_indivisible_batch_is_a_clear_error(runs):
    errors = runs["results"]["indivisible"]
    for where in ("fit", "loader"):
        message = errors[where]
        assert "30" in message and "4 devices" in message and "28 or 32" in message, message


def test_batches_cut_on_four_devices_equal_host_batches(runs):
    """A Loader holding the data on all 4 devices (the accelerator default) cuts the host path's sharded batches."""
    resident = runs["results"]["resident"]
    assert resident["batches"] == 8 and resident["labels_equal"] and resident["same_placement"], resident
    assert resident["max_image_diff"] == 0.0, resident


def test_train_step_makes_no_host_transfers(runs):
    guard = runs["results"]["transfer_guard"]
    assert guard["one_device"] == "ok" and guard["four_devices"] == "ok", guard
    assert "Disallowed host-to-device transfer" in guard["host_batch"]  # the guard was really on


def test_two_processes_equal_one_process(runs):
    """Two processes x 2 devices (`--distributed` on 127.0.0.1) vs one process x 4 devices."""
    assert "epoch   1/1" in runs["process0"]["stdout"]
    assert "split over 4 devices (cpu), 2 processes" in runs["process0"]["stdout"]
    # Only process 0 prints. (Gloo, the CPU collectives library, logs its connections from C++ threads in both
    # processes, and those lines can interleave mid-word, so the check looks for what jaxnets prints instead.)
    for said in ("jaxnets-train:", "data parallel", "epoch   1/1", "final test accuracy", "history:"):
        assert said in runs["process0"]["stdout"] and said not in runs["process1"]["stdout"], said
    two = runs["tmp"] / "two-processes"
    assert (two / "history.json").is_file() and (two / "curves.png").is_file()
    _compare_runs(runs["tmp"] / "four-devices", two)


# ----------------------------------------------------------------------------- the checks child


def _max_diff(a, b) -> float:
    import jax

    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)),
               default=0.0)


def _resnet_checks(mesh_of) -> dict:
    """Step by step: tiny ResNet-18 on 4 batches of digits, one device vs four (same global batches)."""
    import jax

    from jaxnets import data, models
    from jaxnets.bench.devices import host_variables  # seeded host weights: no PRNG program per layer
    from jaxnets.training import TrainState, distributed, make_steps, optimizers

    model = models.create("resnet18", width_divisor=8, in_channels=1, num_classes=10)
    variables = host_variables(model)
    # Float reordering in BatchNorm's backward grows step by step (a permuted batch on one device drifts the
    # same way); a small learning rate keeps 4 steps inside the tolerance.
    host = jax.device_get(TrainState.create(model, optimizers.create("sgd", 1e-3, momentum=0.9), variables=variables))
    train = data.load("digits", "train")
    loader = data.Loader(train.images[:128], train.labels[:128], 32,
                         preprocess=data.Preprocess.for_dataset("digits", train.images), train=True)
    batches = [jax.device_get(b) for b in loader.epoch(0)]
    steps = make_steps()
    one, four = mesh_of(1), mesh_of(4)
    state_one, state_four = (jax.device_put(host, one.devices.flat[0], may_alias=False),
                             distributed.replicate(host, four))
    loss_diffs = []
    for batch in batches:
        state_one, m_one = steps.train(state_one, jax.device_put(batch, one.devices.flat[0]))
        state_four, m_four = steps.train(state_four, jax.device_put(batch, distributed.batch_sharding(four)))
        loss_diffs.append(abs(float(m_one["loss_sum"]) - float(m_four["loss_sum"])) / len(batch.label))
    # BatchNorm statistics from each device's quarter of the first batch (what per-device BN would keep).
    _, quarter = model.apply(host.variables, batches[0].image[:8], train=True, mutable=["batch_stats"])
    _, whole = model.apply(host.variables, batches[0].image, train=True, mutable=["batch_stats"])
    return {"steps": len(batches), "max_loss_diff": max(loss_diffs),
            "max_param_diff": _max_diff(state_one.params, state_four.params),
            "max_batch_stats_diff": _max_diff(state_one.batch_stats, state_four.batch_stats),
            "per_device_stats_diff": _max_diff(quarter["batch_stats"], whole["batch_stats"])}


def _indivisible_checks(mesh_of) -> dict:
    from jaxnets import data
    from jaxnets.training import TrainConfig, distributed, fit

    out = {}
    try:
        fit(TrainConfig(batch_size=30), mesh=mesh_of(4), log=lambda _: None)
    except ValueError as err:
        out["fit"] = str(err)
    images, labels = np.zeros((64, 8, 8, 1), np.uint8), np.zeros(64, np.int32)
    try:
        data.Loader(images, labels, 30, preprocess=data.Preprocess(), train=True,
                    sharding=distributed.batch_sharding(mesh_of(4)))
    except ValueError as err:
        out["loader"] = str(err)
    return out


def _resident_checks(mesh_of) -> dict:
    from jaxnets import data
    from jaxnets.training import distributed

    train = data.load("digits", "train")
    preprocess = data.Preprocess.for_dataset("digits", train.images, augment=True)
    host, device = (data.Loader(train.images[:256], train.labels[:256], 32, preprocess=preprocess, train=True,
                                sharding=distributed.batch_sharding(mesh_of(4)), resident=resident)
                    for resident in (False, True))
    diffs, labels_equal, same_placement = [], True, True
    for a, b in zip(host.epoch(1), device.epoch(1), strict=True):
        same_placement &= b.image.sharding.is_equivalent_to(a.image.sharding, a.image.ndim)
        labels_equal &= bool(np.array_equal(np.asarray(a.label), np.asarray(b.label)))
        diffs.append(float(np.max(np.abs(np.asarray(a.image) - np.asarray(b.image)))))
    return {"batches": len(diffs), "max_image_diff": max(diffs), "labels_equal": labels_equal,
            "same_placement": bool(same_placement)}


def _transfer_guard_checks(mesh_of) -> dict:
    import jax

    from jaxnets import data, models
    from jaxnets.bench.devices import host_variables
    from jaxnets.training import TrainState, distributed, make_steps, optimizers

    model = models.create("lenet")
    train = data.load("digits", "train")
    preprocess = data.Preprocess.for_dataset("digits", train.images)
    steps = make_steps()
    out = {}
    for name, mesh in (("one_device", mesh_of(1)), ("four_devices", mesh_of(4))):
        sharding = distributed.batch_sharding(mesh)
        batch = next(data.Loader(train.images, train.labels, 32, preprocess=preprocess, train=True,
                                 sharding=sharding).epoch(0))
        # a fresh state per mesh: the step donates its input, and a typed key stays a device array under device_get
        host = jax.device_get(TrainState.create(model, optimizers.create("adam", 1e-3),
                                                variables=host_variables(model)))
        state = distributed.replicate(host, mesh)
        try:
            with jax.transfer_guard("disallow"):  # the first call compiles too: still nothing may cross
                for _ in range(2):
                    state, metrics = steps.train(state, batch)
                jax.block_until_ready(metrics)
            out[name] = "ok"
        except Exception as err:
            out[name] = f"{type(err).__name__}: {err}"
    try:
        with jax.transfer_guard("disallow"):
            steps.train(state, jax.device_get(batch))
        out["host_batch"] = "no error"
    except Exception as err:
        out["host_batch"] = str(err)
    return out


def _checks(out_path: str, tmp: str) -> None:
    import contextlib
    import io

    import jax

    from jaxnets.cli.train import config_from_args, main, parser
    from jaxnets.training import distributed, fit

    assert jax.device_count() == 4, jax.devices()

    def mesh_of(n):
        return distributed.data_parallel_mesh(jax.devices()[:n])

    results, cpu_seconds = {}, {}
    for name, check in (("indivisible", _indivisible_checks), ("resident", _resident_checks),
                        ("transfer_guard", _transfer_guard_checks), ("resnet", _resnet_checks)):
        start = time.process_time()
        results[name] = check(mesh_of)
        cpu_seconds[name] = time.process_time() - start
    start = time.process_time()
    lines = []  # the command's own config, on one device
    fit(config_from_args(parser().parse_args(CLI_ARGS)), workdir=Path(tmp) / "one-device", mesh=mesh_of(1),
        progress=False, log=lines.append, tensorboard=False)
    results["one_device_log"] = "\n".join(lines)
    cpu_seconds["one_device_run"] = time.process_time() - start
    start = time.process_time()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # the command as a user runs it: every device (4)
        assert main(CLI_ARGS + ["--workdir", str(Path(tmp) / "four-devices")]) == 0
    results["stdout"] = stdout.getvalue()
    cpu_seconds["four_device_run"] = time.process_time() - start
    results["cpu_seconds"] = cpu_seconds  # where this child's time goes (for keeping the file fast)
    Path(out_path).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if sys.argv[1] != "checks":
        raise SystemExit(f"usage: {sys.argv[0]} checks OUT_JSON TMP_FOLDER")
    _checks(sys.argv[2], sys.argv[3])
