"""PyTorch parity: every checkpoint form a user has gives the same logits, and converts back."""

from __future__ import annotations

import copy
import logging
import math
import os

import jax
import numpy as np
import pytest

from jaxnets import interop, models

torch = pytest.importorskip("torch")
torch_models = pytest.importorskip("jaxnets.interop.torch_models")
import torch_reference  # noqa: E402  (tests/torch_reference.py, needs torch)

# Every checkpoint form (renamed classes, wrappers, containers, .pth files) is tried on one model of each
# family and block type: the form handling is the same code for every member. Every other model (a config
# table apart) gets the logits check of form (a) alone. The ImageNet-head VGGs (133-144M parameters, ~50 s
# a form test on 2 cores) are checked once, at 224x224 in torchvision's own names (test_torchvision_layout_...).
FORM_NAMES = ["mlp", "lenet", "lenet5", "lenet-cifar", "resnet18", "resnet50", "resnet18_imagenet", "vgg11_bn", "vgg16"]
# `slow`: over ~20M parameters
_BIG = {"resnet34", "resnet50", "resnet34_imagenet", "resnet50_imagenet", "vgg19", "vgg19_bn"}
# The quick lane tries the forms on one model per family; plain VGG-16 and the torchvision ResNet (its names are
# also checked at 224x224 below) join in the slow lane.
_SLOW_FORMS = _BIG | {"vgg16", "resnet18_imagenet"}
LOGITS_ONLY = [n for n in models.available() if n not in FORM_NAMES and n != "resnet50_imagenet"  # at 224x224 below
               and not (n.startswith("vgg") and n.endswith("_imagenet"))]


def sample_input(name: str, batch: int = 2, seed: int = 0) -> np.ndarray:
    """NHWC input; small images for the any-size ImageNet layouts (224x224 has its own tests)."""
    model = models.create(name)
    shape = model.input_shape
    if name.endswith("_imagenet"):
        shape = (64, 64, 3) if name.startswith("resnet") else (32, 32, 3)
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype(np.float32)


def randomize(net, x_nhwc: np.ndarray, seed: int = 0):
    """Eval-mode `net` with random BatchNorm affine and running stats of a sane scale.

    Running stats are first measured on `x` (so activations stay O(1) through
    50 layers, and 1e-4 on the logits is a fair float32 tolerance), then
    perturbed so that they are nothing like the defaults (0 and 1).
    """
    torch.manual_seed(seed)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative: the stats of the calibration batch
        if norms:
            net.train()(to_torch_input(x_nhwc))
        for m in norms:
            m.momentum = 0.1
            m.running_mean.add_(torch.randn_like(m.running_mean) * 0.05 * m.running_var.sqrt())
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.9, 1.1))
            # A tiny batch at a small size leaves some channels with almost no
            # variance, which would amplify float32 rounding without bound.
            m.running_var.clamp_(min=0.2 * float(m.running_var.mean()))
    return net.eval()


def to_torch_input(x_nhwc: np.ndarray):
    x = x_nhwc if x_nhwc.ndim == 2 else x_nhwc.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def torch_logits(net, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(to_torch_input(x_nhwc)).numpy()


def float32_noise(net, x_nhwc: np.ndarray) -> float:
    """How far PyTorch's own float32 logits are from its float64 ones."""
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        truth = net64(to_torch_input(x_nhwc).double()).numpy()
    return float(np.abs(torch_logits(net, x_nhwc) - truth).max())


def assert_logits_match(name, variables, net, x, **kwargs):
    """Logits equal PyTorch's to 1e-4.

    Where PyTorch's own float32 rounding is larger than that (ResNet-50's 50
    layers reach ~3e-4 against float64 at logits ~5), the bound is twice
    that rounding: a wrong conversion is off by O(1), not by rounding.
    """
    ours = np.asarray(models.create(name, **kwargs).apply(variables, x))
    theirs = torch_logits(net, x)
    assert np.abs(theirs).max() > 1e-3, "degenerate logits would make this test vacuous"
    atol = 1e-4
    if np.abs(ours - theirs).max() > atol:
        atol = max(atol, 2 * float32_noise(net, x))
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)


def assert_same_variables(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def converted_reference(name: str, x: np.ndarray):
    """Form (a): our reference class, our key names; the converted logits equal PyTorch's. Returns the net."""
    ours_net = randomize(torch_models.create(name), x)
    variables = interop.from_torch(name, ours_net.state_dict())
    assert models.count_params(variables) == sum(p.numel() for p in ours_net.parameters())
    assert_logits_match(name, variables, ours_net, x)
    return ours_net


# The quick lane leaves out vgg13_bn too: vgg11_bn's form test runs the same BatchNorm VGG code.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _BIG | {"vgg13_bn"} else n
                                  for n in LOGITS_ONLY])
def test_every_other_model_gives_pytorch_logits(name):
    converted_reference(name, sample_input(name))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_FORMS else n
                                  for n in FORM_NAMES])
def test_every_checkpoint_form_gives_pytorch_logits(name, tmp_path, caplog):
    x = sample_input(name)
    ours_net = converted_reference(name, x)  # (a)

    # (b) the same architecture written with other names, matched by structure, visibly.
    net = randomize(torch_reference.renamed(name), x, seed=1)
    with caplog.at_level(logging.INFO, logger="jaxnets.interop"):
        renamed, mapping = interop.from_torch(name, net.state_dict(), return_mapping=True)
    assert_logits_match(name, renamed, net, x)
    state_dict = net.state_dict()
    assert set(mapping) == {k for k in state_dict if not k.endswith("num_batches_tracked")}
    assert sorted(mapping.values()) == sorted(k for k in ours_net.state_dict() if not k.endswith("num_batches_tracked"))
    assert "matched" in caplog.text and next(iter(mapping)) in caplog.text

    # (c) wrapper prefixes, as DataParallel/DDP and torch.compile write them.
    data_parallel = torch.nn.DataParallel(net).state_dict()
    assert next(iter(data_parallel)).startswith("module.")
    compiled = {"_orig_mod." + k: v for k, v in state_dict.items()}
    for wrapped in (data_parallel, compiled, torch.nn.DataParallel(net)):
        assert_same_variables(interop.from_torch(name, wrapped), renamed)

    # (d) checkpoint containers, as training scripts save them.
    for key in interop.CONTAINER_KEYS:
        assert_same_variables(interop.from_torch(name, {key: state_dict, "acc": 93.0, "epoch": 199}), renamed)

    # (e) a .pth path (str or Path).
    path = tmp_path / "checkpoint.pth"
    torch.save({"net": data_parallel, "acc": 93.0, "epoch": 199}, path)
    assert_same_variables(interop.from_torch(name, str(path)), renamed)
    assert_same_variables(interop.from_torch(name, path), renamed)

    # Back into the user's own class, strictly, and with a wrapper's prefix.
    fresh = torch_reference.renamed(name).eval()
    fresh.load_state_dict(interop.to_torch(name, renamed, like=net), strict=True)
    np.testing.assert_array_equal(torch_logits(fresh, x), torch_logits(net, x))
    wrapped = torch.nn.DataParallel(torch_reference.renamed(name))
    wrapped.load_state_dict(interop.to_torch(name, renamed, like=wrapped), strict=True)
    # ...and into our reference class under our names.
    torch_models.create(name).load_state_dict(interop.to_torch(name, renamed), strict=True)


@pytest.mark.parametrize("name", ["lenet", "vgg11_bn", "resnet18", "resnet18_imagenet"])
def test_round_trip_is_exact(name):
    state_dict = randomize(torch_models.create(name), sample_input(name)).state_dict()
    back = interop.to_torch(name, interop.from_torch(name, state_dict))
    assert list(back) == list(state_dict)  # PyTorch's order too
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue  # not part of the JAX variables; written back as 0
        assert torch.equal(back[key], value), key
    torch_models.create(name).load_state_dict(back, strict=True)


def test_numpy_state_dict_and_kwargs():
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    net = randomize(torch_models.create("lenet5", num_classes=7), x)
    numpy_sd = {k: v.numpy() for k, v in net.state_dict().items()}
    variables = interop.from_torch("lenet5", numpy_sd, num_classes=7)
    np.testing.assert_allclose(models.create("lenet5", num_classes=7).apply(variables, x), torch_logits(net, x),
                               atol=1e-4)


@pytest.mark.slow  # full size; the quick lane has the tiny twin at 48x48 (test_catalog)
def test_cifar_resnet_takes_any_size_and_global_pool_keeps_parity():
    # pytorch-cifar's avg_pool2d(4) is the global pool at 32x32 (checked in
    # the form test above); the global pool also runs 64x64 and 40x48 inputs.
    x = sample_input("resnet18", batch=1)
    net = randomize(torch_reference.renamed("resnet18"), x)  # NamedResNet pools globally
    variables = interop.from_torch("resnet18", net.state_dict())
    for shape in ((1, 64, 64, 3), (1, 40, 48, 3)):
        x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
        assert_logits_match("resnet18", variables, net, x)


# --- torchvision's ImageNet layouts at 224x224 -------------------------------------------------

# vgg16_imagenet stands for the eight ImageNet-head VGGs (BatchNorm is checked on vgg11_bn above).
TORCHVISION = ["resnet18_imagenet", pytest.param("resnet50_imagenet", marks=pytest.mark.slow),
               pytest.param("vgg16_imagenet", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_layout_logits_at_224(name):
    x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    net = randomize(torch_reference.TORCHVISION[name](), x)
    variables, mapping = interop.from_torch(name, net.state_dict(), return_mapping=True)
    assert all(theirs == ours for theirs, ours in mapping.items()), "torchvision's key names are ours"
    assert models.count_params(variables) == sum(p.numel() for p in net.parameters())
    assert_logits_match(name, variables, net, x)


# --- errors ------------------------------------------------------------------------------------


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": torch_models.create("lenet").state_dict(), "extra": Payload()}, path)
    with pytest.raises(interop.UnsafeCheckpoint, match=r"refused.*nothing in it was executed"):
        interop.from_torch("lenet", path)
    assert not marker.exists()
    with pytest.raises(interop.UnsafeCheckpoint):
        interop.convert(path, tmp_path / "out", "lenet")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_whole_model_pickle_is_refused_with_advice(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch_models.create("lenet"), path)  # torch.save(net), as text 002 does
    with pytest.raises(interop.UnsafeCheckpoint, match=r"torch.save\(model\).*state_dict\(\)"):
        interop.from_torch("lenet", path)


def test_other_architecture_names_first_mismatch():
    # The wide CIFAR LeNet of text 002 is not LeNet-5: both names and shapes are said.
    net = torch_reference.renamed("lenet-cifar")
    with pytest.raises(interop.StateDictMismatch,
                       match=r"first mismatch at layer 0: theirs 'conv_block.0' \(conv weight \(16, 3, 5, 5\), "
                             r"bias \(16,\)\) vs ours 'conv1' \(conv weight \(6, 3, 5, 5\), bias \(6,\)\)"):
        interop.from_torch("lenet5", net.state_dict())
    # A deeper network: the first layer that differs is named, not the first key.
    with pytest.raises(interop.StateDictMismatch,
                       match=r"layer 10: theirs 'stages.1.0.c_a' \(conv weight \(128, 64, 3, 3\)\) "
                             r"vs ours 'layer1.2.conv1' \(conv weight \(64, 64, 3, 3\)\)"):
        interop.from_torch("resnet34", torch_reference.renamed("resnet18").state_dict())
    with pytest.raises(interop.StateDictMismatch, match=r"ours has 1 more layer\(s\), the first 'output'"):
        interop.from_torch("mlp", {k: v for k, v in torch_reference.renamed("mlp").state_dict().items()
                                   if not k.startswith("net.4")})


def test_missing_key_is_named():
    state_dict = torch_models.create("resnet18").state_dict()
    del state_dict["layer2.0.shortcut.1.running_var"]
    with pytest.raises(interop.StateDictMismatch, match=r"missing key 'layer2.0.shortcut.1.running_var'"):
        interop.from_torch("resnet18", state_dict)


def test_unexpected_key_is_named():
    state_dict = torch_models.create("lenet").state_dict()
    state_dict["fc4.weight"] = torch.zeros(3, 3)
    with pytest.raises(interop.StateDictMismatch, match=r"unexpected key 'fc4.weight'"):
        interop.from_torch("lenet", state_dict)


def test_misshaped_key_is_named():
    with pytest.raises(interop.StateDictMismatch,
                       match=r"'conv1.weight' has shape \(6, 3, 5, 5\), expected \(16, 3, 5, 5\)"):
        interop.from_torch("lenet-cifar", torch_models.create("lenet5").state_dict())


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (None, r"got NoneType"),
        (5, r"got int"),
        ([1, 2], r"got list"),
        ({}, r"empty"),
        ({"acc": 93.0, "epoch": 199}, r"keys found: 'acc', 'epoch'"),
        ({"weights": {"a": 1}, "epoch": 1}, r"keys found: 'weights', 'epoch'"),
        ({"net": {}}, r"empty"),
        ({1: np.zeros(3)}, r"keys must be strings"),
        ({"conv1.weight": np.zeros(()), "conv1.bias": np.zeros(6)}, r"does not match|missing"),
        ({"fc1.weight": np.zeros((120, 0))}, r"does not match|missing"),
    ],
)
def test_malformed_input_raises_the_documented_error(source, message):
    with pytest.raises(interop.StateDictMismatch, match=message):
        interop.from_torch("lenet", source)


def test_unreadable_or_missing_file(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(interop.StateDictMismatch, match="not a readable PyTorch checkpoint"):
        interop.from_torch("lenet", tmp_path / "notes.pth")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        interop.from_torch("lenet", tmp_path / "missing.pth")


# --- initialisation as PyTorch does it -----------------------------------------------------------

# The quick lane checks PyTorch's default rule; torchvision's kaiming fan-out and N(0, 0.01) are the slow lane's.
INIT_NAMES = ["mlp", "lenet", "lenet-cifar", "resnet18", "vgg11_bn",
              pytest.param("resnet18_imagenet", marks=pytest.mark.slow),
              pytest.param("vgg11_imagenet", marks=pytest.mark.slow)]


def _torch_rule(name: str, module: str, kernel_ndim: int, torch_net) -> str:
    """Which of PyTorch's inits `module` gets: 'default', 'kaiming_fan_out' or 'normal_0.01'."""
    source = dict(torch_net.named_modules())[module]
    if name.endswith("_imagenet") and kernel_ndim == 4:
        return "kaiming_fan_out"
    if name.startswith("vgg") and name.endswith("_imagenet"):
        return "normal_0.01"
    assert isinstance(source, (torch.nn.Linear, torch.nn.Conv2d))
    return "default"


@pytest.mark.parametrize("name", INIT_NAMES)
def test_init_follows_pytorch(name, getkey):
    model = models.create(name)
    variables = models.init(model, getkey())  # jitted once per model configuration, shared with other tests
    torch_net = torch_models.create(name)
    checked = 0
    for module, leaves in _layers(variables):
        if "scale" in leaves:  # BatchNorm: weight 1, bias 0
            np.testing.assert_array_equal(leaves["scale"], 1.0)
            np.testing.assert_array_equal(leaves["bias"], 0.0)
            continue
        kernel = np.asarray(leaves["kernel"])
        fan_in = math.prod(kernel.shape[:-1])
        fan_out = kernel.shape[-1] * math.prod(kernel.shape[:-2])
        rule = _torch_rule(name, module, kernel.ndim, torch_net)
        if rule == "default":  # kaiming_uniform(a=sqrt(5)) and U(+-1/sqrt(fan_in)) biases
            bound = 1 / math.sqrt(fan_in)
            assert np.abs(kernel).max() <= bound
            if kernel.size >= 1000:
                assert np.abs(kernel).max() > 0.95 * bound
                assert kernel.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
            if "bias" in leaves:
                bias = np.asarray(leaves["bias"])
                assert np.all(bias != 0) and np.abs(bias).max() <= bound, module
                if bias.size >= 64:
                    assert np.abs(bias).max() > 0.8 * bound
        else:
            std = math.sqrt(2 / fan_out) if rule == "kaiming_fan_out" else 0.01
            assert kernel.std() == pytest.approx(std, rel=0.1), module
            assert np.abs(kernel).max() > 2.5 * std  # a plain normal, not a truncated one
            if "bias" in leaves:
                np.testing.assert_array_equal(leaves["bias"], 0.0)
        checked += 1
    assert checked >= 3


def _layers(variables):
    """(module name, {leaf: array}) for every layer with parameters."""
    out = []

    def walk(tree, prefix):
        if any(not isinstance(v, dict) for v in tree.values()):
            out.append((".".join(prefix), tree))
            return
        for key, value in tree.items():
            walk(value, prefix + [key])

    walk(jax.tree.map(np.asarray, dict(variables["params"])), [])
    return out


def test_torch_twins_init_like_their_source():
    """Our PyTorch twins use the same rules (so the tests above compare like with like)."""
    tv = torch_reference.TORCHVISION["resnet18_imagenet"]()
    twin = torch_models.create("resnet18_imagenet")
    for a, b in ((tv.conv1.weight, twin.conv1.weight), (tv.fc.weight, twin.fc.weight), (tv.fc.bias, twin.fc.bias)):
        assert float(a.detach().std()) == pytest.approx(float(b.detach().std()), rel=0.1)


# ---------------------------------------------------------------- layer order, non-finite and meta tensors, options

class SwappedMLP(torch.nn.Module):
    """An MLP that registers fc1, fc3, fc2 but calls fc1 -> fc2 -> fc3 (fc2 and fc3 have the same shapes)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 10)
        self.fc3 = torch.nn.Linear(10, 10)
        self.fc2 = torch.nn.Linear(10, 10)
        self.out = torch.nn.Linear(10, 10)

    def forward(self, x):
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.out(torch.relu(self.fc3(torch.relu(self.fc2(x)))))


def _swapped():
    torch.manual_seed(0)
    net = SwappedMLP().eval()
    x = np.random.default_rng(0).normal(size=(4, 784)).astype(np.float32)
    with torch.no_grad():
        return net, x, net(torch.from_numpy(x)).numpy()


def test_a_module_is_matched_in_the_order_its_forward_calls_its_layers():
    """Registration order fc1, fc3, fc2, call order fc1 -> fc2 -> fc3: from_torch(module) gives the module's logits,
    and to_torch(like=module) loads back with strict=True into the same function."""
    net, x, expected = _swapped()
    model = models.create("mlp", num_layers=3)
    variables, mapping = interop.from_torch("mlp", net, return_mapping=True, num_layers=3)
    assert mapping["fc2.weight"] == "hidden.1.weight" and mapping["fc3.weight"] == "hidden.2.weight"
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), expected, atol=1e-5, rtol=0)
    other = SwappedMLP()
    other.load_state_dict(interop.to_torch("mlp", variables, like=other, num_layers=3), strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(other.eval()(torch.from_numpy(x)).numpy(), expected, atol=1e-6, rtol=0)


def test_an_ambiguous_state_dict_is_refused_naming_the_layers_and_a_mapping_resolves_it(tmp_path):
    """The same weights as a state_dict (no call order): AmbiguousMapping names fc3 and fc2 and the mapping to
    pass; passing that mapping gives the module's logits; to_torch(like=state_dict) is refused the same way."""
    net, x, expected = _swapped()
    torch.save(net.state_dict(), tmp_path / "swapped.pth")
    for source in (net.state_dict(), tmp_path / "swapped.pth"):
        with pytest.raises(interop.AmbiguousMapping, match=r"'fc3' and 'fc2' .*mapping=\{'fc2': 'hidden.1', "
                                                           r"'fc3': 'hidden.2'\}") as error:
            interop.from_torch("mlp", source, num_layers=3)
    assert "\n" not in str(error.value)
    with pytest.raises(interop.AmbiguousMapping):
        interop.to_torch("mlp", interop.from_torch("mlp", net, num_layers=3), like=net.state_dict(), num_layers=3)
    variables = interop.from_torch("mlp", net.state_dict(), mapping={"fc2": "hidden.1", "fc3": "hidden.2"},
                                   num_layers=3)
    np.testing.assert_allclose(np.asarray(models.create("mlp", num_layers=3).apply(variables, x)), expected,
                               atol=1e-5, rtol=0)
    with pytest.raises(interop.StateDictMismatch, match="'fc9', which is no layer of the state_dict"):
        interop.from_torch("mlp", net.state_dict(), mapping={"fc9": "hidden.1"}, num_layers=3)
    with pytest.raises(interop.StateDictMismatch, match="maps two layers to 'hidden.1'"):
        interop.from_torch("mlp", net.state_dict(), mapping={"fc2": "hidden.1", "fc3": "hidden.1"}, num_layers=3)


def test_a_module_whose_forward_fails_falls_back_to_the_state_dict_rule():
    """A module that cannot run on the model's input shape: the ambiguity is refused, saying why it was not traced."""
    net, _, _ = _swapped()
    net.forward = lambda x: (_ for _ in ()).throw(RuntimeError("needs a mask"))
    with pytest.raises(interop.AmbiguousMapping, match="could not be traced.*needs a mask"):
        interop.from_torch("mlp", net, num_layers=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensors(bad):
    """NaN or Inf anywhere in a state_dict: NonFiniteWeights names every such tensor and how many values."""
    net = torch_reference.renamed("lenet")
    state_dict = net.state_dict()
    with torch.no_grad():
        state_dict["conv_block.0.weight"][0, 0, 0, 0] = bad
        state_dict["classifier.4.bias"][:2] = bad
    with pytest.raises(interop.NonFiniteWeights, match=r"2 tensor\(s\): conv_block\.0\.weight \(1 of \d+ values\), "
                                                      r"classifier\.4\.bias \(2 of 10 values\)"):
        interop.from_torch("lenet", state_dict)


def test_meta_device_tensors_are_one_clear_error():
    """A module built on the meta device has shapes but no values: refused, saying how to load it first."""
    with torch.device("meta"):
        net = torch_reference.renamed("lenet")
    with pytest.raises(interop.StateDictMismatch, match=r"'meta' device.*to_empty"):
        interop.from_torch("lenet", net)


def test_to_torch_with_another_models_variables_is_one_clear_error(getkey):
    """LeNet variables given as an MLP's: a ValueError naming the first missing variable, not a KeyError."""
    variables = models.init(models.create("lenet"), getkey())
    with pytest.raises(ValueError, match=r"variables do not fit mlp: params/hidden\.0/kernel is missing"):
        interop.to_torch("mlp", variables)
    with pytest.raises(ValueError, match=r"params/hidden\.0/kernel has shape \(784, 10\), mlp needs \(784, 32\)"):
        interop.to_torch("mlp", models.init(models.create("mlp"), getkey()), hidden_size=32)


@pytest.mark.parametrize(("options", "message"), [
    ({"hidden_size": "abc"}, "option hidden_size must be an integer"),
    ({"hidden_size": -3}, "option hidden_size must not be negative"),
    ({"hidden_size": 2.5}, "option hidden_size must be an integer"),
    ({"hidden_size": 0}, "cannot build mlp with hidden_size=0"),
])
def test_model_options_of_the_wrong_type_or_value_are_one_clear_error(options, message):
    """A create option the model cannot be built with is a ValueError naming it, not a JAX traceback."""
    with pytest.raises(ValueError, match=message):
        interop.from_torch("mlp", torch_reference.renamed("mlp").state_dict(), **options)
