"""Reference PyTorch implementations of every jaxnets architecture.

Written the way the texts, pytorch-cifar and torchvision write them (NCHW,
`nn.Sequential`, `state_dict` names that `jaxnets.interop` maps one to one,
each source's own init). Used for parity
tests, PyTorch-side benchmarks and `to_torch`. Importing this module imports
torch; nothing else in jaxnets does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from jaxnets import models

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class MLP(nn.Module):
    """`MyModel(num_layers, hidden_size, input_dim, output_dim)` of text 000."""

    def __init__(self, num_layers=2, hidden_size=10, input_dim=784, output_dim=10, activation="relu"):
        super().__init__()
        sizes = [input_dim] + [hidden_size] * num_layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.act = _ACTIVATIONS[activation]()
        self.output = nn.Linear(sizes[-1], output_dim)

    @classmethod
    def from_flax(cls, m: models.MLP) -> MLP:
        return cls(m.num_layers, m.hidden_size, m.input_dim, m.output_dim, m.activation)

    def forward(self, x):
        x = torch.flatten(x, 1)
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.output(x)


class LeNet(nn.Module):
    """`Net` (text 000), `CNN` (text 003) and `LeNet` (text 002), logits out."""

    def __init__(self, conv_channels=(6, 16), kernel_size=5, padding=0, hidden_sizes=(120, 84),
                 in_channels=3, image_size=32, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, conv_channels[0], kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(conv_channels[0], conv_channels[1], kernel_size, padding=padding)
        size = image_size
        for _ in range(2):
            size = (size + 2 * padding - kernel_size + 1) // 2
        sizes = [conv_channels[1] * size * size, *hidden_sizes, num_classes]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            setattr(self, f"fc{i + 1}", nn.Linear(a, b))
        self.num_fc = len(sizes) - 1

    @classmethod
    def from_flax(cls, m: models.LeNet) -> LeNet:
        return cls(tuple(m.conv_channels), m.kernel_size, m.padding, tuple(m.hidden_sizes), m.in_channels,
                   m.image_size, m.num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        for i in range(1, self.num_fc):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.num_fc}")(x)


def _shortcut(block: nn.Module, in_planes: int, out_planes: int, stride: int, layout: str) -> None:
    """`shortcut` (pytorch-cifar: an empty Sequential when the identity) or `downsample` (torchvision: None)."""
    projection = None
    if stride != 1 or in_planes != out_planes:
        projection = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_planes))
    if layout == "torchvision":
        block.downsample = projection
    else:
        block.shortcut = projection if projection is not None else nn.Sequential()


def _identity(block: nn.Module, x):
    projection = block.shortcut if hasattr(block, "shortcut") else block.downsample
    return x if projection is None else projection(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, layout="cifar"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        _shortcut(self, in_planes, planes, stride, layout)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + _identity(self, x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1, layout="cifar"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        _shortcut(self, in_planes, 4 * planes, stride, layout)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + _identity(self, x))


class ResNet(nn.Module):
    """kuangliu/pytorch-cifar's ResNet (`layout='cifar'`) or torchvision's (`layout='torchvision'`)."""

    def __init__(self, block, num_blocks, num_classes=10, in_channels=3, layout="cifar", width_divisor=1):
        super().__init__()
        widths = [w // width_divisor for w in (64, 128, 256, 512)]
        self.in_planes = widths[0]
        self.layout = layout
        if layout == "torchvision":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        for i, (planes, blocks) in enumerate(zip(widths, num_blocks, strict=True)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, blocks, 1 if i == 0 else 2))
        head = nn.Linear(widths[-1] * block.expansion, num_classes)
        if layout == "torchvision":
            self.fc = head
            for module in self.modules():  # torchvision.models.resnet.ResNet.__init__
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            self.linear = head

    @classmethod
    def from_flax(cls, m: models.ResNet) -> ResNet:
        block = Bottleneck if m.block_cls is models.Bottleneck else BasicBlock
        return cls(block, list(m.stage_sizes), m.num_classes, m.in_channels, m.layout, m.width_divisor)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s, self.layout))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.layout == "torchvision":
            out = F.max_pool2d(out, 3, stride=2, padding=1)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global average pool, as ours: pytorch-cifar's avg_pool2d(4) is the same on the 4x4 map of a
        # 32x32 input, but breaks at any other size.
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out) if self.layout == "torchvision" else self.linear(out)


class VGG(nn.Module):
    """pytorch-cifar's VGG (CIFAR head) or torchvision's classifier (ImageNet head)."""

    def __init__(self, config="vgg16", batch_norm=False, head="cifar", num_classes=10, in_channels=3,
                 dropout_rate=0.5, width_divisor=1):
        super().__init__()
        layers, channels = [], in_channels
        for item in models.VGG_CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            item //= width_divisor
            layers.append(nn.Conv2d(channels, item, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            channels = item
        self.features = nn.Sequential(*layers)
        self.head = head
        if head == "cifar":
            self.classifier = nn.Linear(channels, num_classes)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(channels * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(dropout_rate),
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(dropout_rate),
                nn.Linear(4096, num_classes),
            )
            for module in self.modules():  # torchvision.models.vgg.VGG.__init__
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.constant_(module.bias, 0)
                elif isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0, 0.01)
                    nn.init.constant_(module.bias, 0)

    @classmethod
    def from_flax(cls, m: models.VGG) -> VGG:
        return cls(m.config, m.batch_norm, m.head, m.num_classes, m.in_channels, m.dropout_rate, m.width_divisor)

    def forward(self, x):
        x = self.features(x)
        if self.head != "cifar":
            x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))


def create(name: str, **kwargs) -> nn.Module:
    """The PyTorch twin of `jaxnets.models.create(name, **kwargs)`.

    Takes the same names and keyword arguments; the catalog names the twin
    class (`Family.torch_reference`), whose `from_flax` reads the
    configuration off the flax model, so the two can never drift apart.
    Float32, train mode.
    """
    entry = models.catalog.get(name)
    reference = globals().get(entry.family.torch_reference)
    if reference is None:
        raise ValueError(f"no PyTorch reference for {name!r} (its family names {entry.family.torch_reference!r})")
    return reference.from_flax(entry.create(**kwargs))
