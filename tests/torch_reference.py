"""PyTorch classes written as users write them, for the interop tests.

* `torchvision_resnet`, `torchvision_vgg`: torchvision's ImageNet layouts,
  key names and init, written from torchvision's published source
  (torchvision itself cannot be installed beside this torch build).
* `renamed(name)`: the same architecture as a jaxnets model under other
  names, the way the texts write it: the MLP as `self.net =
  nn.Sequential(...)` (`net.0`, `net.2`, ...), LeNet as `conv_block` and
  `classifier` Sequentials, ResNet and VGG with their own names.
"""

from __future__ import annotations

import torch
from torch import nn

from jaxnets import models

# --- torchvision.models.resnet / vgg, as published -------------------------------------------


class TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # ResNet v1.5: stride on the 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TVResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


TV_CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class TVVGG(nn.Module):
    def __init__(self, features, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _tv_features(cfg, batch_norm):
    layers, in_channels = [], 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            layers += ([conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm
                       else [conv2d, nn.ReLU(inplace=True)])
            in_channels = v
    return nn.Sequential(*layers)


TORCHVISION = {
    "resnet18_imagenet": lambda: TVResNet(TVBasicBlock, [2, 2, 2, 2]),
    "resnet34_imagenet": lambda: TVResNet(TVBasicBlock, [3, 4, 6, 3]),
    "resnet50_imagenet": lambda: TVResNet(TVBottleneck, [3, 4, 6, 3]),
    "vgg11_bn_imagenet": lambda: TVVGG(_tv_features(TV_CFGS["A"], True)),
    "vgg16_imagenet": lambda: TVVGG(_tv_features(TV_CFGS["D"], False)),
}


# --- the same architectures under the users' own names ----------------------------------------


class SequentialMLP(nn.Module):
    """The texts' MLP: `self.net = nn.Sequential(Linear, ReLU, ..., Linear)`."""

    def __init__(self, num_layers, hidden_size, input_dim, output_dim):
        super().__init__()
        layers, size = [], input_dim
        for _ in range(num_layers):
            layers += [nn.Linear(size, hidden_size), nn.ReLU()]
            size = hidden_size
        self.net = nn.Sequential(*layers, nn.Linear(size, output_dim))

    def forward(self, x):
        return self.net(torch.flatten(x, 1))


class BlockLeNet(nn.Module):
    """The wide CIFAR LeNet of text 002: `conv_block` and `classifier` Sequentials."""

    def __init__(self, channels, kernel_size, padding, in_channels, image_size, num_classes):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], kernel_size, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], kernel_size, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
        )
        size = image_size
        for _ in range(2):
            size = (size + 2 * padding - kernel_size + 1) // 2
        self.classifier = nn.Sequential(nn.Linear(channels[1] * size * size, 120), nn.ReLU(), nn.Linear(120, 84),
                                        nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.conv_block(x), 1))


class _Unit(nn.Module):
    def __init__(self, cin, planes, stride, bottleneck):
        super().__init__()
        self.bottleneck = bottleneck
        out = planes * (4 if bottleneck else 1)
        if bottleneck:
            self.c_a, self.n_a = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
            self.c_b, self.n_b = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
            self.c_c, self.n_c = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        else:
            self.c_a, self.n_a = nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
            self.c_b, self.n_b = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.proj = None
        if stride != 1 or cin != out:
            self.proj = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        out = torch.relu(self.n_a(self.c_a(x)))
        out = self.n_b(self.c_b(out))
        if self.bottleneck:
            out = self.n_c(self.c_c(torch.relu(out)))
        return torch.relu(out + (x if self.proj is None else self.proj(x)))


class NamedResNet(nn.Module):
    """ResNet (either stem) as `stem`, `stages.{i}.{j}.{c_a,n_a,...,proj}`, `head`."""

    def __init__(self, stage_sizes, bottleneck, num_classes, imagenet_stem):
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        stages, cin = [], 64
        for i, (blocks, planes) in enumerate(zip(stage_sizes, (64, 128, 256, 512), strict=True)):
            units = []
            for j in range(blocks):
                units.append(_Unit(cin, planes, 2 if i > 0 and j == 0 else 1, bottleneck))
                cin = planes * (4 if bottleneck else 1)
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean(dim=(2, 3)))


class NamedVGG(nn.Module):
    """VGG as `body` (convs, BN, ReLU, pools) and `head` (one Linear or the ImageNet Sequential)."""

    def __init__(self, config, batch_norm, imagenet_head, num_classes):
        super().__init__()
        layers, cin = [], 3
        for item in models.VGG_CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(cin, item, 3, padding=1))
            layers += [nn.BatchNorm2d(item), nn.ReLU()] if batch_norm else [nn.ReLU()]
            cin = item
        self.body = nn.Sequential(*layers)
        self.imagenet_head = imagenet_head
        if imagenet_head:
            self.head = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096),
                                      nn.ReLU(), nn.Dropout(), nn.Linear(4096, num_classes))
        else:
            self.head = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.body(x)
        if self.imagenet_head:
            x = nn.functional.adaptive_avg_pool2d(x, 7)
        return self.head(torch.flatten(x, 1))


def renamed(name: str, **kwargs) -> nn.Module:
    """`name`'s architecture under names that are not ours (train mode, PyTorch's init)."""
    m = models.create(name, **kwargs)
    if isinstance(m, models.MLP):
        return SequentialMLP(m.num_layers, m.hidden_size, m.input_dim, m.output_dim)
    if isinstance(m, models.LeNet):
        return BlockLeNet(tuple(m.conv_channels), m.kernel_size, m.padding, m.in_channels, m.image_size, m.num_classes)
    if isinstance(m, models.ResNet):
        return NamedResNet(tuple(m.stage_sizes), m.block_cls is models.Bottleneck, m.num_classes,
                           m.layout == "torchvision")
    if isinstance(m, models.VGG):
        return NamedVGG(m.config, m.batch_norm, m.head == "imagenet", m.num_classes)
    raise ValueError(name)
