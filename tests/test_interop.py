"""PyTorch parity: the same weights give the same logits, and conversion round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from jaxnets import interop, models

torch = pytest.importorskip("torch")
torch_models = pytest.importorskip("jaxnets.interop.torch_models")


def randomized(name: str, seed: int = 0, **kwargs):
    """A PyTorch reference model in eval mode with random weights AND BatchNorm stats."""
    torch.manual_seed(seed)
    net = torch_models.create(name, **kwargs)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def torch_logits(net, x_nhwc: np.ndarray) -> np.ndarray:
    x = x_nhwc if x_nhwc.ndim == 2 else x_nhwc.transpose(0, 3, 1, 2)
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()


@pytest.mark.parametrize("name", models.available())
def test_logits_match_pytorch(name):
    net = randomized(name)
    model = models.create(name)
    variables = interop.from_torch(name, net.state_dict())
    assert models.count_params(variables) == sum(p.numel() for p in net.parameters())
    x = np.random.default_rng(0).normal(size=(4, *model.input_shape)).astype(np.float32)
    ours = np.asarray(model.apply(variables, x))
    theirs = torch_logits(net, x)
    assert np.abs(theirs).max() > 1e-3, "degenerate logits would make this test vacuous"
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["lenet", "vgg11_bn", "resnet18"])
def test_round_trip_is_exact(name):
    state_dict = randomized(name).state_dict()
    back = interop.to_torch(name, interop.from_torch(name, state_dict))
    assert sorted(back) == sorted(state_dict)
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue  # not part of the JAX variables; written back as 0
        assert torch.equal(back[key], value), key
    # ...and the result loads strictly into a fresh PyTorch model.
    torch_models.create(name).load_state_dict(back, strict=True)


def test_numpy_state_dict_and_kwargs():
    net = randomized("lenet5", num_classes=7)
    numpy_sd = {k: v.numpy() for k, v in net.state_dict().items()}
    variables = interop.from_torch("lenet5", numpy_sd, num_classes=7)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(models.create("lenet5", num_classes=7).apply(variables, x), torch_logits(net, x), atol=1e-4)


@pytest.mark.slow
def test_vgg16_imagenet_head_matches_pytorch():
    net = randomized("vgg16", head="imagenet")
    variables = interop.from_torch("vgg16", net.state_dict(), head="imagenet")
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    ours = models.create("vgg16", head="imagenet").apply(variables, x)
    np.testing.assert_allclose(np.asarray(ours), torch_logits(net, x), atol=1e-4, rtol=0)


def test_missing_key_is_named():
    state_dict = randomized("resnet18").state_dict()
    del state_dict["layer2.0.shortcut.1.running_var"]
    with pytest.raises(interop.StateDictMismatch, match=r"missing key 'layer2.0.shortcut.1.running_var'"):
        interop.from_torch("resnet18", state_dict)


def test_unexpected_key_is_named():
    state_dict = randomized("lenet").state_dict()
    state_dict["fc4.weight"] = torch.zeros(3, 3)
    with pytest.raises(interop.StateDictMismatch, match=r"unexpected key 'fc4.weight'"):
        interop.from_torch("lenet", state_dict)


def test_misshaped_key_is_named():
    # A LeNet-5 state_dict is not a wide CIFAR LeNet.
    with pytest.raises(interop.StateDictMismatch, match=r"'conv1.weight' has shape \(6, 3, 5, 5\), expected \(16, 3, 5, 5\)"):
        interop.from_torch("lenet-cifar", randomized("lenet5").state_dict())
