"""Every `--preset` is a runnable recipe: valid names, and a config that survives a checkpoint round trip."""

from __future__ import annotations

import jax
import pytest

from jaxnets import data, models
from jaxnets.cli import train as cli
from jaxnets.training import TrainConfig, optimizers
from jaxnets.training.presets import PRESETS


def preset_config(name: str) -> TrainConfig:
    return cli.config_from_args(cli.parser().parse_args(["--preset", name]))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_names_a_known_model_data_set_and_optimizer(name):
    config = preset_config(name)
    assert config.model in models.available()
    assert config.dataset in data.DATASETS
    assert config.optimizer in optimizers.OPTIMIZERS and config.schedule in optimizers.SCHEDULES
    models.create(config.model, **config.model_kwargs)  # raises on a keyword the model does not take
    # The config is stored with every checkpoint; resume compares it field by field.
    assert TrainConfig.from_json(config.to_json()) == config


def test_accuracy_table_presets_train_on_the_whole_training_split():
    """The MNIST / Fashion-MNIST rows use all 60,000 training images; CIFAR-10 keeps 10,000 held out."""
    for name in ("mnist-lenet-full", "mnist-mlp", "fashion-mnist-lenet"):
        assert preset_config(name).val_fraction == 0.0, name
    for name in ("cifar10-lenet5", "cifar10-lenet-adam", "cifar10-resnet18", "cifar10-vgg16"):
        assert preset_config(name).val_fraction == 0.2, name


def test_mnist_mlp_preset_is_784_512_512_10():
    config = preset_config("mnist-mlp")
    model = models.create(config.model, **config.model_kwargs)
    variables = models.init(model, jax.random.key(0))
    assert models.count_params(variables) == (784 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10)
