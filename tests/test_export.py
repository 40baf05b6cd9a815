"""Static-graph export (`jaxnets.export`, `jaxnets-export`): the artifact computes what `model.apply` computes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxnets import data, export, models
from jaxnets.cli import export as export_cli
from jaxnets.data import catalog
from jaxnets.training import Checkpoints, TrainConfig, save_model
from jaxnets.training.data_setup import build, learning_rate_schedule

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 3, 8)

# Every family, tiny (width_divisor narrows ResNet/VGG with the same layers and code paths).
FAMILIES = {
    "mlp": {},
    "lenet": {},
    "lenet5": {},
    "lenet-cifar": {},
    "resnet18": {"width_divisor": 8},
    "resnet50": {"width_divisor": 8},
    "vgg11_bn": {"width_divisor": 8},
    "vgg16": {"width_divisor": 8},
    "resnet18_imagenet": {"width_divisor": 8, "image_size": 64},
}
# The quick lane exports one model per family, block type and layout; the slow lane adds their twins.
_SLOW_EXPORTS = {"lenet5", "lenet-cifar", "resnet50", "vgg16", "resnet18_imagenet"}  # quick: one per family


def _model(name: str, seed: int = 1, **kwargs):
    """A model and random variables of its exact structure, drawn in NumPy.

    Compiling `models.init` (its random initialisers) costs more than everything else here put together;
    the export does not care how the weights were drawn. BatchNorm variances stay positive.
    """
    model = models.create(name, **kwargs)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    return model, jax.tree_util.tree_map_with_path(draw, jax.eval_shape(lambda: models.init(model, jax.random.key(0))))


@pytest.fixture(autouse=True)
def quick_compiles():
    """XLA's cheapest compiles: they change no program (the artifact is StableHLO), only how fast it is built."""
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


def _apply(model, variables, x) -> np.ndarray:
    """The reference: `model.apply` in eval mode, jitted (eager would compile every op)."""
    return np.asarray(jax.jit(lambda x: model.apply(variables, x, train=False))(x))


def _images(shape, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_EXPORTS else n
                                  for n in FAMILIES])
def test_logits_equal_apply_at_every_batch_size(tmp_path, name):
    kwargs = FAMILIES[name]
    model, variables = _model(name, **kwargs)
    path = export.save(tmp_path / f"{name}.jaxexport", name, variables, model_kwargs=kwargs, write_stablehlo=False)
    run = export.load(path)
    x = _images(model.input_shape, max(BATCH_SIZES))
    # Eval mode treats examples independently (BatchNorm uses running statistics), so one reference batch
    # serves every batch size: its first n rows (one compile of apply instead of one per size).
    reference = _apply(model, variables, x)
    for n in BATCH_SIZES:
        got, want = np.asarray(run(x[:n])), reference[:n]
        assert got.shape == want.shape == (n, run.info["num_classes"])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"{name} batch {n}")
    assert run.info["input_shape"] == ["b", *model.input_shape] and run.info["model_kwargs"] == kwargs


FRESH_PROCESS = """
import sys
import numpy as np
from jaxnets import export
run = export.load(sys.argv[1])
np.save(sys.argv[3], np.asarray(run(np.load(sys.argv[2]))))
assert "jaxnets.models" not in sys.modules, "loading imported jaxnets.models"
assert "flax" not in sys.modules, "loading imported flax"
print("ok", run.info["model"])
"""


@pytest.mark.slow  # a fresh process: mostly Python and JAX start-up
def test_artifact_runs_in_a_fresh_process_without_model_code(tmp_path):
    model, variables = _model("lenet5")
    path = export.save(tmp_path / "lenet5.jaxexport", "lenet5", variables)
    x = _images(model.input_shape, 5)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok lenet5"
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _apply(model, variables, x), atol=1e-5, rtol=1e-5)


def test_sidecar_and_stablehlo_text(tmp_path):
    model, variables = _model("lenet5")
    path = export.save(tmp_path / "m.jaxexport", "lenet5", variables,
                       normalization=export.normalization_for("cifar10", channels=3))
    info = json.loads(export.sidecar_path(path).read_text())
    assert info["model"] == "lenet5" and info["input_dtype"] == "float32" and info["num_classes"] == 10
    assert info["normalization"]["mean"] == list(data.NORMALIZATION["cifar10"][0])
    assert info["parameters"] == models.count_params(variables) and info["jax_version"] == jax.__version__
    assert info["artifact_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    text = export.stablehlo_path(path).read_text()
    assert "stablehlo.convolution" in text and "tensor<?x32x32x3xf32>" in text  # symbolic batch, readable
    assert len(text) < path.stat().st_size / 4  # the weights are elided from the text


def test_multi_platform_export_has_no_cpu_only_lowering(tmp_path):
    """cpu+cuda lowers without a GPU, runs here, and traces VGG's 2x2-map convs as convolutions (no CPU matmul)."""
    kwargs = FAMILIES["vgg11_bn"]
    model, variables = _model("vgg11_bn", **kwargs)
    both = export.save(tmp_path / "both.jaxexport", "vgg11_bn", variables, model_kwargs=kwargs,
                       platforms=("cpu", "cuda"))
    cpu = export.save(tmp_path / "cpu.jaxexport", "vgg11_bn", variables, model_kwargs=kwargs)
    run = export.load(both)
    assert run.exported.platforms == ("cpu", "cuda") and run.info["platforms"] == ["cpu", "cuda"]
    x = _images(model.input_shape, 3)
    np.testing.assert_allclose(run(x), _apply(model, variables, x), atol=1e-5, rtol=1e-5)

    def tiny_map_convolutions(path):
        return [line for line in export.stablehlo_path(path).read_text().splitlines()
                if "stablehlo.convolution" in line and "-> tensor<?x2x2x" in line]

    assert tiny_map_convolutions(both) and not tiny_map_convolutions(cpu)


def test_never_overwrites_unless_asked(tmp_path):
    _, variables = _model("lenet5")
    path = export.save(tmp_path / "m.jaxexport", "lenet5", variables)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _, other = _model("lenet5", seed=2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.save(path, "lenet5", other)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    export.save(path, "lenet5", other, overwrite=True)
    assert path.read_bytes() != before["m.jaxexport"]
    export.load(path)  # artifact and sidecar agree


def test_clear_errors(tmp_path):
    model, variables = _model("lenet5")
    with pytest.raises(FileNotFoundError, match="no exported model"):
        export.load(tmp_path / "missing.jaxexport")
    with pytest.raises(ValueError, match="platforms"):
        export.save(tmp_path / "p.jaxexport", "lenet5", variables, platforms=("gpu",))
    with pytest.raises(ValueError, match="do not fit"):
        export.save(tmp_path / "w.jaxexport", "lenet", variables)
    path = export.save(tmp_path / "m.jaxexport", "lenet5", variables, write_stablehlo=False)
    run = export.load(path)
    with pytest.raises(ValueError, match=r"\[N, 32, 32, 3\] float32.*got shape \[2, 28, 28, 1\]"):
        run(np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="got dtype float64"):
        run(np.zeros((2, 32, 32, 3)))
    corrupt = bytearray(path.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(export.ExportError, match="corrupt"):
        export.load(path)
    export.sidecar_path(path).unlink()
    with pytest.raises(export.ExportError, match="missing"):
        export.load(path)


def test_cli_from_a_save_model_folder(tmp_path, capsys):
    """A folder saved without a contract, exported with --dataset: the catalog's normalisation and classes."""
    kwargs = {"num_classes": 10}
    model, variables = _model("lenet5", **kwargs)
    save_model(tmp_path / "saved", "lenet5", variables, **kwargs)
    out = tmp_path / "lenet5.jaxexport"
    assert export_cli.main(["--from", str(tmp_path / "saved"), "-o", str(out), "--dataset", "cifar10"]) == 0
    captured = capsys.readouterr()
    assert "lenet5" in captured.out and "warning" not in captured.err
    run = export.load(out)
    assert run.info["model_kwargs"] == kwargs and run.info["num_classes"] == 10 and run.info["note"] is None
    assert run.info["normalization"]["std"] == list(data.NORMALIZATION["cifar10"][1])
    assert run.info["input_contract"]["class_names"] == list(catalog.get("cifar10").class_names)
    x = _images(model.input_shape, 2)
    np.testing.assert_allclose(run(x), _apply(model, variables, x), atol=1e-5, rtol=1e-5)
    assert export_cli.main(["--from", str(tmp_path / "saved"), "-o", str(out)]) == 1  # exists: refused
    assert "already exist" in capsys.readouterr().err
    assert export_cli.main(["--from", str(tmp_path), "-o", str(tmp_path / "x")]) == 1  # neither kind of folder
    assert "neither" in capsys.readouterr().err
    assert export_cli.main(["--from", str(tmp_path / "saved"), "-o", str(tmp_path / "y"), "--dataset", "cifar100"]) == 1
    assert "100 classes" in capsys.readouterr().err  # a contract that cannot be this model's is refused


def test_export_of_a_folder_without_a_contract_says_so_loudly(tmp_path, capsys):
    """No contract in the folder, no --dataset: a warning on stderr, a note in the sidecar, never a silent null."""
    model, variables = _model("lenet5")
    save_model(tmp_path / "saved", "lenet5", variables)
    out = tmp_path / "m.jaxexport"
    assert export_cli.main(["--from", str(tmp_path / "saved"), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: no input contract" in err
    info = export.read_info(out)
    assert info["normalization"] is None and info["input_contract"] is None and info["note"] == export.NO_CONTRACT_NOTE
    assert "NOT KNOWN" in export.describe(info)


def test_export_of_a_folder_carries_its_stored_contract(tmp_path, capsys):
    """save_model(dataset=...) stores the catalog's contract; the export records it with no flag and no note."""
    model, variables = _model("lenet", num_classes=10)
    save_model(tmp_path / "saved", "lenet", variables, dataset="mnist", num_classes=10)
    out = tmp_path / "m.jaxexport"
    assert export_cli.main(["--from", str(tmp_path / "saved"), "-o", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    info = export.read_info(out)
    assert (tuple(info["normalization"]["mean"]), tuple(info["normalization"]["std"])) == \
        catalog.get("mnist").normalization
    assert info["input_contract"]["image_shape"] == [28, 28, 1] and info["note"] is None
    assert export_cli.main(["--from", str(tmp_path / "saved"), "-o", str(tmp_path / "n"), "--dataset",
                            "fashion_mnist"]) == 1
    assert "was saved for mnist" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["num_classes", "input_shape", "artifact_sha256", "platforms"])
def test_a_sidecar_missing_a_field_is_one_clear_error(tmp_path, field):
    """A sidecar cut or edited (a field removed, or of the wrong type) is an ExportError naming the field."""
    _, variables = _model("lenet5")
    path = export.save(tmp_path / "m.jaxexport", "lenet5", variables, write_stablehlo=False)
    info = json.loads(export.sidecar_path(path).read_text())
    export.sidecar_path(path).write_text(json.dumps({**info, field: True}))
    with pytest.raises(export.ExportError, match=f"{field} must be"):
        export.load(path)
    del info[field]
    export.sidecar_path(path).write_text(json.dumps(info))
    with pytest.raises(export.ExportError, match=f"lacks {field}"):
        export.load(path)


def test_cli_from_a_training_run(tmp_path, capsys):
    """A run folder as `fit` leaves it: the state `fit.build` makes, saved by `Checkpoints` (no training needed)."""
    config = TrainConfig(model="mlp", dataset="digits", model_kwargs={"input_dim": 784, "output_dim": 10})
    model, state = build(config, learning_rate_schedule(config, 1))
    state = state.replace(params=_model("mlp", seed=3, input_dim=784, output_dim=10)[1]["params"])
    checkpoints = Checkpoints(tmp_path / "run")
    checkpoints.save(1, state.arrays(), {"config": config.to_json()}, is_best=True)
    checkpoints.close()
    out = tmp_path / "mlp.jaxexport"
    assert export_cli.main(["--from", str(tmp_path / "run"), "-o", str(out)]) == 0
    assert "best/1" in capsys.readouterr().out
    run = export.load(out)
    x = _images(run.input_shape, 4)
    np.testing.assert_allclose(run(x), _apply(model, state.variables, x), atol=1e-5, rtol=1e-5)
    norm = run.info["normalization"]  # digits has no table entry: computed from the run's training images, as fit does
    assert norm["dataset"] == "digits" and 0 < norm["mean"][0] < 1
