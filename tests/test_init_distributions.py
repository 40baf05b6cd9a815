"""Is jaxnets' initial draw PyTorch's? Every parameter of every model, drawn many times, against its PyTorch twin.

For each model (small widths: the distributions depend on fan-in/fan-out, which
both sides compute from the same shapes) the jaxnets init is drawn with many
keys and the PyTorch twin (`jaxnets.interop.torch_models`, PyTorch's layer
defaults and torchvision's `_initialize_weights`) with as many seeds; the twin's
names are matched through `interop.to_torch`. Each leaf's pooled
values are then compared: constants exactly (BatchNorm 1/0, zero biases,
running statistics), random leaves by mean, standard deviation, bounds and a
two-sample Kolmogorov-Smirnov test. A real mismatch (a wrong fan axis, a
truncated normal, uniform vs normal, a bias bound off by a factor) moves the
standard deviation by 10% or more and the KS statistic far past its threshold;
a match passes for any seed (p-value threshold 1e-6 over about 300 leaves).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxnets import interop, layers, models

torch = pytest.importorskip("torch")
stats = pytest.importorskip("scipy.stats")
torch_models = pytest.importorskip("jaxnets.interop.torch_models")

SAMPLES = 20_000  # values compared per leaf (subsampled from the pooled draws)
P_MIN = 1e-6

# name -> (create kwargs, draws): small widths. The LeNets and the MLP are drawn often enough that every leaf
# (a 10-class bias too) has hundreds of values; the ResNets and VGGs a few times (their convolutions have thousands
# of values per draw; their few small leaves are the same Linear/Conv kinds, checked by the LeNets and the single
# layers below). One model of each family and layout, every layer kind in it.
MIN_VALUES = 300  # leaves pooling fewer values than this are only compared when constant
CASES = {
    "mlp": ({"hidden_size": 32}, 60),
    "lenet": ({}, 60),
    "lenet5": ({}, 40),
    "lenet-cifar": ({}, 40),
    "resnet18": ({"width_divisor": 8}, 3),             # pytorch-cifar: default inits, 1x1 strided shortcut convs
    "resnet50": ({"width_divisor": 16}, 3),            # bottleneck blocks
    "resnet18_imagenet": ({"width_divisor": 8, "num_classes": 10}, 3),  # kaiming-normal fan_out convs, 7x7 stem
    "vgg11_bn": ({"width_divisor": 8}, 3),             # conv biases, BatchNorm
    "vgg11_imagenet": ({"width_divisor": 16, "num_classes": 10}, 2),  # kaiming fan_out, N(0, 0.01) linears, 0 biases
}


def torch_draws(name: str, kwargs: dict, draws: int) -> dict[str, np.ndarray]:
    """Torch key -> the values of that tensor over `draws` fresh PyTorch twins (seeds 0..draws-1), float64."""
    values: dict[str, list] = {}
    for seed in range(draws):
        torch.manual_seed(seed)
        for key, tensor in torch_models.create(name, **kwargs).state_dict().items():
            if tensor.is_floating_point():
                values.setdefault(key, []).append(tensor.double().numpy().ravel())
    return {k: np.concatenate(v) for k, v in values.items()}


def jax_draws(name: str, kwargs: dict, draws: int) -> dict[str, np.ndarray]:
    """Torch key -> the values of our leaf of that name over `draws` jaxnets inits (keys 1000..), float64.

    Our leaf of each torch key is found once: `interop.to_torch` of a tree whose leaf i is filled with i.
    """
    model = models.create(name, **kwargs)
    trees = [jax.tree.leaves(jax.device_get(models.init(model, jax.random.key(1000 + seed)))) for seed in range(draws)]
    treedef = jax.tree.structure(models.init(model, jax.random.key(0)))
    labels = jax.tree.unflatten(treedef, [np.full(np.shape(leaf), i, np.float32) for i, leaf in enumerate(trees[0])])
    index = {key: int(tensor.flatten()[0]) for key, tensor in interop.to_torch(name, labels, **kwargs).items()
             if tensor.is_floating_point()}
    return {key: np.concatenate([np.asarray(t[i], np.float64).ravel() for t in trees]) for key, i in index.items()}


def assert_same_distribution(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Constants equal; otherwise mean, std, bounds and a two-sample KS test agree (see the module docstring)."""
    if np.ptp(theirs) == 0 or np.ptp(ours) == 0:
        assert np.ptp(ours) == 0 and np.ptp(theirs) == 0 and ours[0] == theirs[0], \
            f"{what}: PyTorch {np.unique(theirs)[:5]}, jaxnets {np.unique(ours)[:5]}"
        return
    n = min(SAMPLES, len(ours), len(theirs))
    if n < MIN_VALUES:
        return
    rng = np.random.default_rng(0)
    ours, theirs = rng.choice(ours, n, replace=False), rng.choice(theirs, n, replace=False)
    sd = theirs.std()
    assert abs(ours.mean() - theirs.mean()) < 6 * sd * np.sqrt(2 / n), f"{what}: mean {ours.mean()} vs {theirs.mean()}"
    assert abs(ours.std() / sd - 1) < 8 / np.sqrt(n), f"{what}: std {ours.std():.6g} vs PyTorch {sd:.6g}"
    kurtosis = stats.kurtosis(theirs)
    if kurtosis < -1.0:  # PyTorch's is uniform (excess kurtosis -1.2): the bounds must agree
        ours_bound, their_bound = np.abs(ours).max(), np.abs(theirs).max()
        assert abs(ours_bound / their_bound - 1) < 0.02, f"{what}: bound {ours_bound:.6g} vs PyTorch {their_bound:.6g}"
    ks = stats.ks_2samp(ours, theirs)
    assert ks.pvalue > P_MIN, f"{what}: KS statistic {ks.statistic:.4f} (p = {ks.pvalue:.2g}), std {ours.std():.4g} " \
                              f"vs PyTorch {sd:.4g}"


SLOW = {"resnet18", "resnet50", "resnet18_imagenet", "vgg11_bn", "vgg11_imagenet"}  # their init compiles for seconds


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_every_parameter_is_drawn_from_pytorchs_distribution(name):
    """Each leaf of `name`'s variables (weights, biases, BatchNorm scale/bias/statistics), pooled over many draws,
    has PyTorch's distribution: mean, std, bounds and a two-sample KS test against the twin's own init."""
    kwargs, draws = CASES[name]
    ours, theirs = jax_draws(name, kwargs, draws), torch_draws(name, kwargs, draws)
    assert ours.keys() == theirs.keys(), (sorted(ours), sorted(theirs))
    for key in ours:
        assert_same_distribution(ours[key], theirs[key], f"{name} {key}")


def _torchvision_conv(conv):
    """torchvision.models.{resnet,vgg}'s init of a convolution."""
    torch.nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _torchvision_linear(linear):
    """torchvision.models.vgg's init of a classifier Linear."""
    torch.nn.init.normal_(linear.weight, 0, 0.01)
    torch.nn.init.constant_(linear.bias, 0)
    return linear


def test_every_model_family_and_layout_is_covered():
    """A new family or layout (a new init) must be added to CASES."""
    def kind(name):
        return models.catalog.get(name).family.torch_reference, "imagenet" in name

    assert {kind(n) for n in models.available()} <= {kind(n) for n in CASES}


@pytest.mark.parametrize(("ours", "theirs"), [
    (lambda: layers.Conv(8, (3, 3), feature_group_count=4), lambda: torch.nn.Conv2d(16, 8, 3, groups=4)),
    (lambda: layers.Conv(24, (1, 1), strides=2, use_bias=False), lambda: torch.nn.Conv2d(16, 24, 1, 2, bias=False)),
    (lambda: layers.Conv(8, (5, 3)), lambda: torch.nn.Conv2d(16, 8, (5, 3))),
    (lambda: layers.Dense(7), lambda: torch.nn.Linear(16, 7)),
    (lambda: layers.Conv(24, (3, 3), kernel_init=layers.torchvision_conv_init, use_bias=False),
     lambda: _torchvision_conv(torch.nn.Conv2d(16, 24, 3, bias=False))),
    (lambda: layers.Dense(40, kernel_init=layers.torchvision_linear_init, bias_init=jax.nn.initializers.zeros),
     lambda: _torchvision_linear(torch.nn.Linear(16, 40))),
], ids=["grouped-conv", "1x1-strided", "5x3-conv", "linear", "torchvision-conv", "torchvision-linear"])
def test_single_layers_match_pytorchs_defaults(ours, theirs):
    """Every init kind, layer by layer (the fast lane's check; the slow lane draws whole ResNets and VGGs): PyTorch's
    Conv2d/Linear defaults (grouped, 1x1 strided, non-square kernels too) and torchvision's kaiming-normal fan_out
    convolutions and N(0, 0.01) linears, against `jaxnets.layers`' Conv/Dense with the inits the models pass."""
    x = np.zeros((1, 8, 8, 16), np.float32) if "Conv" in type(ours()).__name__ else np.zeros((1, 16), np.float32)
    layer = ours()
    init = jax.jit(jax.vmap(lambda k: layer.init(k, x)["params"]))
    mine = jax.device_get(init(jax.random.split(jax.random.key(0), 300)))
    torch.manual_seed(0)
    twins = [theirs() for _ in range(300)]
    for leaf, name in (("kernel", "weight"), ("bias", "bias")):
        if leaf in mine:
            their = np.concatenate([t.state_dict()[name].numpy().ravel() for t in twins]).astype(np.float64)
            drawn = np.asarray(mine[leaf], np.float64).ravel()
            assert_same_distribution(drawn, their, f"{type(layer).__name__} {leaf}")


@pytest.mark.parametrize("name", ["mlp", "lenet", "lenet-cifar"])
def test_no_two_parameters_share_a_random_stream(name):
    """Each leaf is an independent draw, as PyTorch's are: no two leaves of one init (each divided by its own largest
    value) share more values than chance allows, which a key reused between layers or between a kernel and its bias
    would give (the per-leaf distributions above would not see it)."""
    variables = jax.device_get(models.init(models.create(name), jax.random.key(0)))["params"]
    leaves = {jax.tree_util.keystr(path): np.abs(np.asarray(v, np.float64).ravel())
              for path, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
    leaves = {k: np.sort(v / v.max()) for k, v in leaves.items() if v.max() > 0}
    names = sorted(leaves)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = leaves[a], leaves[b]
            nearest = np.clip(np.searchsorted(x, y), 1, len(x) - 1)
            gap = np.minimum(np.abs(x[nearest] - y), np.abs(x[nearest - 1] - y))
            shared = int(np.sum(gap < 1e-7))
            assert shared <= 5 + 20 * len(x) * len(y) * 1e-7, f"{a} and {b} share {shared} values"
