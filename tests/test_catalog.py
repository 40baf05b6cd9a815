"""The catalogs are the one source of model and data-set facts: one entry is enough to add either.

Also: one default config (`TrainConfig()` is the CLI's no-flag run), presets as checked overrides,
the resolved config, the typed key at the checkpoint boundary.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import data, models
from jaxnets.cli import train as cli
from jaxnets.data import catalog as data_catalog
from jaxnets.data import files
from jaxnets.models import catalog as model_catalog
from jaxnets.training import Checkpoints, TrainConfig, TrainState, optimizers, presets
from jaxnets.training.data_setup import resolve


def stripes(split: str):
    """A tiny learnable data set: horizontal vs vertical stripes, 12x12 grey, 2 classes."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    labels = rng.integers(0, 2, 96).astype(np.int32)
    images = np.zeros((96, 12, 12, 1), np.uint8)
    images[labels == 0, ::3, :, 0] = 255
    images[labels == 1, :, ::3, 0] = 255
    return images, labels, ("horizontal", "vertical")


@pytest.fixture
def stripes_entry():
    entry = data_catalog.register(data_catalog.DatasetEntry("stripes", (12, 12, 1), ("horizontal", "vertical"),
                                                            reader=stripes, description="test stripes"))
    yield entry
    data_catalog.unregister("stripes")


def test_a_registered_data_set_trains_through_the_cli_with_no_other_change(stripes_entry, tmp_path, capsys):
    assert "stripes" in cli.parser().format_help()  # the --dataset choices and the epilog read the catalog
    code = cli.main(["--dataset", "stripes", "--model", "mlp", "--epochs", "1", "--batch-size", "16",
                     "--workdir", str(tmp_path), "--no-progress", "--no-tensorboard"])
    assert code == 0, capsys.readouterr().err
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1] and history[-1]["test_acc"] is not None
    # The run stored its resolved config: the MLP's sizes followed from the entry (12x12x1, 2 classes).
    checkpoints = Checkpoints(tmp_path)
    try:
        saved = TrainConfig.from_json(checkpoints.read_meta()["config"])
    finally:
        checkpoints.close()
    assert saved.model_kwargs == {"input_dim": 144, "output_dim": 2}
    assert data.load("stripes", "test").class_names == ("horizontal", "vertical")
    assert "stripes" in data.DATASETS  # the views are live


def test_cli_model_choices_come_from_the_catalog(capsys):
    base = model_catalog.get("lenet5")
    model_catalog.register(dataclasses.replace(base, name="lenet5-test"))
    try:
        assert cli.parser().parse_args(["--model", "lenet5-test"]).model == "lenet5-test"
        assert models.create("lenet5-test", num_classes=3).num_classes == 3
    finally:
        model_catalog.unregister("lenet5-test")
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--model", "lenet5-test"])
    assert "invalid choice: 'lenet5-test'" in capsys.readouterr().err


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        data_catalog.register(data_catalog.DatasetEntry("mnist"))
    with pytest.raises(ValueError, match="already registered"):
        model_catalog.register(model_catalog.get("mlp"))


def test_the_old_tables_are_views_of_the_data_catalog():
    assert data.FILE_DATASETS == ("mnist", "fashion_mnist", "cifar10", "cifar100")
    assert data.TFDS_NAMES == {n: n for n in data.FILE_DATASETS}
    assert data.NORMALIZATION["mnist"] == ((0.1307,), (0.3081,))
    for name in data.DATASETS:
        entry = data_catalog.get(name)
        if entry.image_shape is not None and entry.normalization is not None:
            assert len(entry.normalization[0]) == entry.image_shape[-1], name
    with pytest.raises(data.DataError, match="unknown data set 'nope'; available: digits"):
        data.load("nope")


def test_every_data_set_with_a_fixed_shape_loads_that_shape():
    for name in ("digits",):
        entry = data_catalog.get(name)
        ds = data.load(name, "test")
        assert ds.image_shape == entry.image_shape and ds.num_classes == entry.num_classes


def test_a_load_looks_for_the_files_once(tmp_path, monkeypatch):
    calls = []
    real = files.locate

    def locate(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(files, "locate", locate)
    with pytest.raises(data.DataNotFound):
        data.load("mnist", "test", source="auto", data_dir=tmp_path, download=False)
    assert len(calls) == 1, calls


# ------------------------------------------------------------------ the model catalog

@pytest.mark.parametrize("name", models.available())
def test_every_model_has_a_family_with_a_torch_twin_and_an_input_contract(name):
    entry = model_catalog.get(name)
    model = entry.create()
    assert model_catalog.family_of(model) is entry.family
    assert len(model.input_spec) == len(model.input_shape)
    assert entry.data_mismatch(model, model.input_shape) is None  # its own example input fits
    torch_models = pytest.importorskip("jaxnets.interop.torch_models")
    assert callable(getattr(torch_models, entry.family.torch_reference).from_flax)


@pytest.mark.parametrize(("name", "shape", "fits"), [
    ("lenet", (28, 28, 1), True), ("lenet", (32, 32, 1), False), ("resnet18", (64, 48, 3), True),
    ("resnet18", (32, 32, 1), False), ("vgg11", (64, 64, 3), False), ("vgg11_imagenet", (40, 40, 3), True),
    ("mlp", (28, 28, 1), True), ("mlp", (32, 32, 3), False),
])
def test_the_input_contract(name, shape, fits):
    entry = model_catalog.get(name)
    assert (entry.data_mismatch(entry.create(), shape) is None) == fits


def test_arguments_follow_from_the_data_set_and_the_mlp_alias_lives_in_its_entry():
    assert model_catalog.get("mlp").arguments((28, 28, 1), 10) == {"input_dim": 784, "output_dim": 10}
    assert model_catalog.get("resnet18").arguments((32, 32, 3), 100) == {"num_classes": 100}
    assert models.create("mlp", num_classes=7).output_dim == 7
    with pytest.raises(ValueError, match=r"mlp does not take \['depth'\]"):
        models.create("mlp", depth=3)


def test_resolve_returns_a_new_config_and_leaves_the_callers_alone():
    train = data.load("digits", "train")
    config = TrainConfig(model="mlp", model_kwargs={"num_classes": 10, "hidden_size": 8})
    resolved = resolve(config, train)
    assert config.model_kwargs == {"num_classes": 10, "hidden_size": 8}
    assert resolved.model_kwargs == {"input_dim": 784, "output_dim": 10, "hidden_size": 8}
    with pytest.raises(ValueError, match=r"resnet18 expects images of shape \(32, 32, 3\), but digits has"):
        resolve(TrainConfig(model="resnet18"), train)


def test_the_torch_resnet_twin_pools_globally_like_ours_at_any_size(getkey):
    """pytorch-cifar's avg_pool2d(4) only fits 32x32; both twins pool globally, so 48x48 matches too."""
    torch = pytest.importorskip("torch")
    from jaxnets import interop
    from jaxnets.interop import torch_models

    net = torch_models.create("resnet18", width_divisor=16).eval()
    x = np.asarray(jax.random.normal(getkey(), (2, 48, 48, 3)), np.float32)
    variables = interop.from_torch("resnet18", net.state_dict(), width_divisor=16)
    ours = jax.jit(models.create("resnet18", width_divisor=16).apply)(variables, jnp.asarray(x))
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


# ------------------------------------------------------------------ one default config

def test_train_config_defaults_are_the_cli_defaults_and_the_help_reads_them():
    assert cli.config_from_args(cli.parser().parse_args([])) == TrainConfig()
    assert presets.preset("digits-lenet") == TrainConfig()
    default = TrainConfig()
    assert (default.model, default.dataset, default.epochs, default.optimizer, default.lr, default.schedule,
            default.batch_size) == ("lenet", "digits", 15, "adam", 3e-3, "cosine", 64)
    text = " ".join(cli.parser().format_help().split())
    for field in dataclasses.fields(TrainConfig):
        if field.metadata.get("help") and field.default is not None:
            assert f"(default {field.default})" in text, field.name


def test_presets_are_checked_overrides_of_train_config():
    with pytest.raises(ValueError, match=r"preset 'bad' sets \['learning_rate'\]"):
        presets._check({"bad": {"learning_rate": 0.1}})
    with pytest.raises(ValueError, match="preset 'worse': epochs must be >= 1"):
        presets._check({"worse": {"epochs": 0}})
    config = presets.preset("mnist-mlp", epochs=1)
    assert (config.model, config.dataset, config.epochs, config.schedule) == ("mlp", "mnist", 1, "cosine")
    config.model_kwargs["hidden_size"] = 3  # a config's dict is its own, not the preset's
    assert presets.PRESETS["mnist-mlp"]["model_kwargs"]["hidden_size"] == 512


# ------------------------------------------------------------------ the typed key at the checkpoint boundary

def test_train_state_holds_a_typed_key_and_checkpoints_its_raw_data():
    model = models.create("mlp", hidden_size=4)
    state = TrainState.create(model, optimizers.create("adam", 1e-3), seed=3)
    assert jnp.issubdtype(state.key.dtype, jax.dtypes.prng_key)
    arrays = state.arrays()
    # The raw data is what checkpoints written before keys were typed hold: PRNGKey(3) split.
    np.testing.assert_array_equal(arrays["key"], jax.random.split(jax.random.PRNGKey(3))[1])
    restored = state.replace_arrays(jax.device_get(arrays))
    assert jnp.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), arrays["key"])
    assert math.isclose(float(jax.random.uniform(restored.key)), float(jax.random.uniform(state.key)))
