"""Shapes, parameter counts and clear errors for every model (jit == eager: test_training.py)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import backend, models

# Counts of the same architectures in PyTorch (10 classes); the PyTorch side
# is recounted in test_interop.py. README's model table lists these.
EXPECTED_PARAMS = {
    "mlp": 8_070,
    "lenet": 106_154,
    "lenet5": 62_006,
    "lenet-cifar": 121_182,
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "vgg11": 9_225_610,
    "vgg11_bn": 9_231_114,
    "vgg13": 9_410_122,
    "vgg13_bn": 9_416_010,
    "vgg16": 14_719_818,
    "vgg16_bn": 14_728_266,
    "vgg19": 20_029_514,
    "vgg19_bn": 20_040_522,
    # torchvision's layouts (1,000 classes), the counts torchvision publishes.
    "resnet18_imagenet": 11_689_512,
    "resnet34_imagenet": 21_797_672,
    "resnet50_imagenet": 25_557_032,
    "vgg11_imagenet": 132_863_336,
    "vgg11_bn_imagenet": 132_868_840,
    "vgg13_imagenet": 133_047_848,
    "vgg13_bn_imagenet": 133_053_736,
    "vgg16_imagenet": 138_357_544,
    "vgg16_bn_imagenet": 138_365_992,
    "vgg19_imagenet": 143_667_240,
    "vgg19_bn_imagenet": 143_678_248,
}
# Shapes are checked on tiny variants (`width_divisor=8`: the same blocks and layer names, 1/8 of the
# channels) and at 64x64 for the any-size ImageNet layouts. The ImageNet-head VGGs differ from
# vgg11(_bn)_imagenet only by the config table, which their CIFAR-head twins cover: two stand for the eight.
_SAME_AS_VGG11_IMAGENET = {f"vgg{depth}{bn}_imagenet" for depth in (13, 16, 19) for bn in ("", "_bn")}
SHAPE_NAMES = [n for n in EXPECTED_PARAMS if n not in _SAME_AS_VGG11_IMAGENET]
# Values (train-mode BatchNorm, dropout) are checked compiled on one depth per block type and head: the deeper
# twins run the same modules from a longer config table, so their shapes are traced (no compile, ~10x cheaper).
COMPILED_NAMES = ["mlp", "lenet", "lenet5", "lenet-cifar", "resnet18", "resnet50", "vgg11", "vgg11_bn",
                  "resnet18_imagenet", "vgg11_imagenet", "vgg11_bn_imagenet"]
# The quick lane compiles one model per family and traces the rest; the slow lane (CI) compiles them all.
QUICK_COMPILED = {"mlp", "lenet", "vgg11_bn"}  # BatchNorm running statistics: vgg11_bn
SHAPE_CASES = [pytest.param(name, False, id=f"{name}-traced") for name in SHAPE_NAMES if name not in QUICK_COMPILED]
SHAPE_CASES += [pytest.param(name, True, id=name, marks=() if name in QUICK_COMPILED else pytest.mark.slow)
                for name in COMPILED_NAMES]


def tiny(name: str, **kwargs):
    """`models.create(name)`, narrowed by 8 where the family has `width_divisor` (ResNet, VGG)."""
    if name.startswith(("resnet", "vgg")):
        kwargs.setdefault("width_divisor", 8)
    return models.create(name, **kwargs)


def jitted_apply(model):
    """`model.apply` under one jit: one compile, where op-by-op dispatch would compile every primitive."""
    return jax.jit(model.apply, static_argnames=("train", "mutable"))


def traced_apply(model):
    """`model.apply` traced for shapes and dtypes only (`jax.eval_shape`): nothing compiles or runs."""
    return lambda variables, x, **kwargs: jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, x)


def test_registry_lists_every_model():
    assert models.available() == list(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_parameter_count(name):
    shapes = jax.eval_shape(lambda: models.init(models.create(name), jax.random.key(0)))
    assert models.count_params(shapes) == EXPECTED_PARAMS[name]


def test_vgg16_imagenet_head_parameter_count():
    shapes = jax.eval_shape(lambda: models.init(models.create("vgg16", head="imagenet"), jax.random.key(0)))
    # torchvision vgg16 with a 10-way last layer: 138,357,544 - 4096*990 - 990.
    assert models.count_params(shapes) == 134_301_514


@pytest.mark.parametrize(("name", "compiled"), SHAPE_CASES)
def test_shapes_in_eval_and_train_mode(name, compiled, getkey):
    """jit == eager is asserted once, on whole train and eval steps, in test_training.py."""
    model = tiny(name)
    shape = (64, 64, 3) if name.endswith("_imagenet") else model.input_shape
    x = jax.random.normal(getkey(), (3, *shape))
    variables = (jax.jit(model.init) if compiled else functools.partial(jax.eval_shape, model.init))(getkey(), x[:1])
    apply = jitted_apply(model) if compiled else traced_apply(model)
    logits = apply(variables, x)
    assert logits.shape == (3, model.num_classes if hasattr(model, "num_classes") else 10)
    assert logits.dtype == jnp.float32

    # Train mode: BatchNorm uses batch statistics and returns new running ones.
    train_logits, updates = apply(variables, x, train=True, mutable=("batch_stats",), rngs={"dropout": getkey()})
    assert train_logits.shape == logits.shape
    has_bn = "batch_stats" in variables
    assert bool(updates) == has_bn
    if has_bn and compiled:
        old = jax.tree_util.tree_leaves(variables["batch_stats"])
        new = jax.tree_util.tree_leaves(updates["batch_stats"])
        assert any(not np.allclose(a, b) for a, b in zip(old, new, strict=True)), "running statistics did not move"
        assert not np.allclose(train_logits, logits), "train mode must use the batch's statistics"


@pytest.mark.slow  # the ImageNet head's 4096-wide layers; the quick lane checks dropout keys on small nets
def test_imagenet_head_dropout_differs_per_key(getkey):
    model = tiny("vgg11", head="imagenet", num_classes=4)
    variables = models.init(model, getkey())
    x = jax.random.normal(getkey(), (2, 32, 32, 3))
    apply = jitted_apply(model)
    a = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    c = apply(variables, x, train=False)
    d = apply(variables, x, train=False)
    assert a.shape == (2, 4)
    assert not np.allclose(a, b), "dropout masks must differ between keys"
    np.testing.assert_array_equal(c, d)  # eval mode is deterministic


def test_kwargs_reach_the_model(getkey):
    model = tiny("resnet18", num_classes=100)
    variables = jax.eval_shape(lambda key: models.init(model, key), getkey())
    assert jax.eval_shape(model.apply, variables, jnp.zeros((1, 32, 32, 3))).shape == (1, 100)
    mlp = models.create("mlp", num_layers=1, hidden_size=10, input_dim=2, output_dim=1)
    assert mlp.apply(models.init(mlp, getkey()), jnp.zeros((5, 2))).shape == (5, 1)
    assert models.create("mlp", num_classes=3).output_dim == 3
    sigmoid = models.create("mlp", num_layers=1, hidden_size=2, input_dim=1, output_dim=1, activation="sigmoid")
    assert models.count_params(models.init(sigmoid, getkey())) == 7  # the 1-2-1 net of text 002


def test_mlp_flattens_images(getkey):
    model = models.create("mlp")
    variables = models.init(model, getkey())
    assert model.apply(variables, jnp.zeros((4, 28, 28, 1))).shape == (4, 10)


def test_bfloat16_compute_returns_float32_logits(getkey):
    model = models.create("lenet5", dtype=jnp.bfloat16)
    # dtypes are decided at trace time: nothing to run
    variables = jax.eval_shape(lambda key: models.init(model, key), getkey())
    assert jax.tree_util.tree_leaves(variables)[0].dtype == jnp.float32  # params stay float32
    assert jax.eval_shape(model.apply, variables, jnp.ones((2, 32, 32, 3))).dtype == jnp.float32


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match=r"unknown model 'resnet9'.*resnet18.*vgg16_bn"):
        models.create("resnet9")


def test_unknown_kwarg_lists_accepted():
    with pytest.raises(ValueError, match=r"does not take \['depth'\].*num_classes"):
        models.create("lenet5", depth=3)


@pytest.mark.parametrize("name", ["resnet18", "resnet50_imagenet"])
def test_resnet_takes_any_input_size(name):
    # ResNet advertises (N, any, any, 3): a global average pool, not a fixed 4x4 one.
    model = models.create(name)
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
    for size in ((64, 64), (40, 56), (224, 224)):
        assert jax.eval_shape(model.apply, variables, jnp.zeros((2, *size, 3))).shape == (2, model.num_classes)


def test_unknown_resnet_layout():
    with pytest.raises(ValueError, match="unknown layout 'keras'"):
        jax.eval_shape(lambda: models.init(models.create("resnet18", layout="keras"), jax.random.key(0)))


def test_unknown_vgg_head():
    model = models.create("vgg11", head="tiny")
    with pytest.raises(ValueError, match="unknown head 'tiny'"):
        models.init(model, jax.random.key(0))


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("lenet", (2, 28, 28, 3), r"lenet expects input of shape \(N, 28, 28, 1\); got \(2, 28, 28, 3\)"),
        ("lenet", (28, 28, 1), r"\(N, 28, 28, 1\).*Add a batch axis"),
        ("lenet5", (2, 3, 32, 32), r"\(N, 32, 32, 3\).*NCHW"),
        ("resnet18", (2, 32, 32), r"resnet18 expects input of shape \(N, any, any, 3\)"),
        ("resnet18_imagenet", (2, 3, 224, 224), r"resnet18_imagenet expects input of shape \(N, any, any, 3\)"),
        ("vgg16", (2, 64, 64, 3), r"vgg16 expects input of shape \(N, 32, 32, 3\)"),
        ("mlp", (2, 100), r"mlp expects input of shape \(N, 784\)"),
    ],
)
def test_wrong_input_shape_says_what_was_expected(name, shape, message):
    model = models.create(name)
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.apply, variables, jnp.zeros(shape))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11_bn"])
def test_width_divisor_narrows_every_layer_and_keeps_the_layer_names(name):
    """Tiny variants (`width_divisor`) run the same code paths with the same PyTorch names, fewer channels."""
    full_model = models.create(name)
    full = jax.eval_shape(lambda key: models.init(full_model, key), jax.random.key(0))  # shapes only: no compile
    tiny_model = models.create(name, width_divisor=8)
    tiny = jax.eval_shape(lambda key: models.init(tiny_model, key), jax.random.key(0))  # runs: the shapes test
    assert jax.tree.structure(tiny) == jax.tree.structure(full)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(full), jax.tree.leaves(tiny), strict=True):
        if "kernel" in jax.tree_util.keystr(path) and a.ndim == 4:
            assert b.shape[-1] * 8 == a.shape[-1], jax.tree_util.keystr(path)
    assert models.count_params(tiny) < sum(x.size for x in jax.tree.leaves(full["params"])) / 30
    assert traced_apply(tiny_model)(tiny, models.example_input(tiny_model, 2)).shape == (2, 10)
    with pytest.raises(ValueError, match="width_divisor must be an integer"):
        models.init(models.create(name, width_divisor=0), jax.random.key(0))


def test_init_reuses_its_compiled_program_for_an_equal_model():
    first = models.init(models.create("mlp", hidden_size=8), jax.random.key(0))
    hits = models._jitted_init.cache_info().hits
    again = models.init(models.create("mlp", hidden_size=8), jax.random.key(0))  # an equal, separately built model
    other_seed = models.init(models.create("mlp", hidden_size=8), jax.random.key(1))
    assert models._jitted_init.cache_info().hits == hits + 2
    assert max(float(jnp.max(jnp.abs(a - b)))
               for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True)) == 0
    assert not np.allclose(jax.tree.leaves(first)[0], jax.tree.leaves(other_seed)[0])
    other = models.init(models.create("mlp", hidden_size=8, num_classes=3), jax.random.key(0))  # its own program
    assert other["params"]["output"]["kernel"].shape[-1] == 3


@pytest.mark.parametrize(("name", "kwargs"), [("lenet", {}), ("resnet18", {"width_divisor": 8})])
def test_init_compiled_at_its_lower_llvm_level_gives_the_default_programs_weights_bit_for_bit(name, kwargs, getkey):
    """`models.init` compiles with `backend.init_compiler_options()`: faster to compile, never other weights.

    Uniform (LeNet's PyTorch defaults) and truncated-normal draws (ResNet's Kaiming normal); the reference is the
    same init traced inside a caller's own `jax.jit` (XLA's default options), which `models.init` also supports.
    """
    assert backend.init_compiler_options("cpu") == backend.INIT_OPTIONS and backend.init_compiler_options("gpu") == {}
    model, key = models.create(name, **kwargs), getkey()
    ours = models.init(model, key)
    default = jax.jit(lambda k: models.init(model, k))(key)  # a tracer key: the caller's program, default options
    assert jax.tree.structure(ours) == jax.tree.structure(default)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(default), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
