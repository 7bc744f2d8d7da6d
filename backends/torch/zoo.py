"""Standard ImageNet-family layouts in plain PyTorch, written from their papers: no weights, no downloads.

These are the networks users bring to easc. The tests and the benchmarks build them here (at reduced width
and small inputs for the tests, at full width for the benchmarks), export them with both ONNX exporters or
trace them with `from_module`, and check that every pass stays exact on them. Each builder has the signature

    builder(num_classes=10, width_mult=1.0, **layout options) -> torch.nn.Module

`width_mult` scales every channel count (rounded to a multiple of 8, as the mobile papers round, and kept
compatible with group sizes); at `width_mult=1.0` and `num_classes=1000` the parameter counts equal the
reference implementations' (the tests check this). The layouts keep the ImageNet stems, so the spatial size
shrinks by 32 overall: 32x32 inputs end at 1x1, 64x64 at 2x2. AlexNet and VGG flatten their last feature
map into the classifier, so they take `input_size` (AlexNet needs at least 63x63).

The forward passes are written the way the reference code writes them, on purpose: `x.mean([2, 3])` in
MnasNet and ShuffleNetV2, `x.size()` and `//` in ShuffleNet's channel shuffle, `x.chunk(2, dim=1)` for its
channel split. Those are the forms `from_module` must understand.

Choices where the papers leave room: GoogLeNet uses batchnorm after each conv (as the common
implementations do) and the paper's 5x5 kernels in its third branch; EfficientNet's stochastic depth is
omitted (it is the identity in eval mode, the only mode function preservation is defined in).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never more than 10% below it (MobileNet's rule)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _scale(channels: int, width_mult: float) -> int:
    return channels if width_mult == 1.0 else make_divisible(channels * width_mult)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act=nn.ReLU,
             eps: float = 1e-5) -> nn.Sequential:
    """conv (no bias) + batchnorm (+ activation): the unit almost every modern CNN is made of."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=eps)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU) else act())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- ResNet, ResNeXt (He et al. 2016, Xie et al. 2017)

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, width: int | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, width: int | None = None):
        super().__init__()
        width = width or planes
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max-pool, four stages (stride 1, 2, 2, 2), global average pool, FC."""

    def __init__(self, block, layers, num_classes=10, width_mult=1.0, groups=1, width_per_group=64):
        super().__init__()
        stem = _scale(64, width_mult)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = stem, []
        for i, blocks in enumerate(layers):
            planes = _scale(64 * 2 ** i, width_mult)
            width = int(planes * width_per_group / 64) * groups
            g = math.gcd(width, groups)
            units = []
            for j in range(blocks):
                units.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1, g, width))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def resnet18(num_classes=10, width_mult=1.0):
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width_mult)


def resnet50(num_classes=10, width_mult=1.0):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width_mult)


def resnext50(num_classes=10, width_mult=1.0):
    """ResNeXt-50 32x4d: ResNet-50's bottlenecks with a 3x3 conv of 32 groups of 4 channels (x2 wider)."""
    groups = 32 if width_mult == 1.0 else max(1, round(32 * width_mult))
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width_mult, groups=groups,
                  width_per_group=4 * 32 // groups)


# ---------------------------------------------------------------- DenseNet-BC (Huang et al. 2017)

class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features):
        x = self.conv1(F.relu(self.norm1(features)))
        return self.conv2(F.relu(self.norm2(x)))


class _DenseBlock(nn.Module):
    def __init__(self, layers: int, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.layers = nn.ModuleList(_DenseLayer(cin + i * growth, growth, bn_size) for i in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


class DenseNet(nn.Module):
    def __init__(self, blocks=(6, 12, 24, 16), growth=32, init_features=64, bn_size=4, num_classes=10):
        super().__init__()
        parts = [nn.Conv2d(3, init_features, 7, 2, 3, bias=False), nn.BatchNorm2d(init_features),
                 nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        channels = init_features
        for i, layers in enumerate(blocks):
            parts.append(_DenseBlock(layers, channels, growth, bn_size))
            channels += layers * growth
            if i != len(blocks) - 1:
                parts += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                          nn.Conv2d(channels, channels // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
                channels //= 2
        parts += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*parts)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(x)


def densenet121(num_classes=10, width_mult=1.0):
    return DenseNet((6, 12, 24, 16), _scale(32, width_mult) if width_mult != 1.0 else 32,
                    _scale(64, width_mult), 4, num_classes)


# ---------------------------------------------------------------- VGG (Simonyan & Zisserman 2015), AlexNet (2012)

class VGG(nn.Module):
    def __init__(self, config, num_classes=10, width_mult=1.0, input_size=64, hidden=4096):
        super().__init__()
        layers, cin, size = [], 3, input_size
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            else:
                cout = _scale(item, width_mult)
                layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        hidden = _scale(hidden, width_mult)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin * size * size, hidden), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg11_bn(num_classes=10, width_mult=1.0, input_size=64):
    """VGG configuration A with batchnorm; the classifier sees the flattened last feature map."""
    return VGG([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"], num_classes, width_mult,
               input_size)


class AlexNet(nn.Module):
    def __init__(self, num_classes=10, width_mult=1.0, input_size=64):
        super().__init__()
        c = [_scale(n, width_mult) for n in (64, 192, 384, 256, 256)]
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[0], c[1], 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        size = (input_size + 4 - 11) // 4 + 1
        for _ in range(3):
            size = (size - 3) // 2 + 1
        if size < 1:
            raise ValueError(f"AlexNet needs an input of at least 63x63, got {input_size}")
        hidden = _scale(4096, width_mult)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(c[4] * size * size, hidden), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def alexnet(num_classes=10, width_mult=1.0, input_size=64):
    return AlexNet(num_classes, width_mult, input_size)


# ---------------------------------------------------------------- SqueezeNet (Iandola et al. 2016)

class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand1: int, expand3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, version: str = "1_0", num_classes=10, width_mult=1.0):
        super().__init__()
        s = lambda n: _scale(n, width_mult)  # noqa: E731 (a local shorthand keeps the tables readable)

        def fire(cin, sq, ex):
            return Fire(s(cin), s(sq), s(ex), s(ex))

        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        if version == "1_0":
            layers = [nn.Conv2d(3, s(96), 7, 2), nn.ReLU(inplace=True), pool(),
                      fire(96, 16, 64), fire(128, 16, 64), fire(128, 32, 128), pool(),
                      fire(256, 32, 128), fire(256, 48, 192), fire(384, 48, 192), fire(384, 64, 256), pool(),
                      fire(512, 64, 256)]
        else:
            layers = [nn.Conv2d(3, s(64), 3, 2), nn.ReLU(inplace=True), pool(),
                      fire(64, 16, 64), fire(128, 16, 64), pool(),
                      fire(128, 32, 128), fire(256, 32, 128), pool(),
                      fire(256, 48, 192), fire(384, 48, 192), fire(384, 64, 256), fire(512, 64, 256)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(2 * s(256), num_classes, 1),
                                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet1_0(num_classes=10, width_mult=1.0):
    return SqueezeNet("1_0", num_classes, width_mult)


def squeezenet1_1(num_classes=10, width_mult=1.0):
    return SqueezeNet("1_1", num_classes, width_mult)


# ---------------------------------------------------------------- GoogLeNet (Szegedy et al. 2015)

class Inception(nn.Module):
    """Four branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj, kernel5=5):
        super().__init__()
        bn = lambda i, o, k: _conv_bn(i, o, k, eps=1e-3)  # noqa: E731
        self.branch1 = bn(cin, c1, 1)
        self.branch2 = nn.Sequential(bn(cin, c3r, 1), bn(c3r, c3, 3))
        self.branch3 = nn.Sequential(bn(cin, c5r, 1), bn(c5r, c5, kernel5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), bn(cin, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    # Inception configurations from the paper's table 1: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
    INCEPTION3 = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)]
    INCEPTION4 = [(192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
                  (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)]
    INCEPTION5 = [(256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]

    def __init__(self, num_classes=10, width_mult=1.0, kernel5=5):
        super().__init__()
        s = lambda n: _scale(n, width_mult)  # noqa: E731
        pool = lambda k=3: nn.MaxPool2d(k, 2, ceil_mode=True)  # noqa: E731
        self.stem = nn.Sequential(_conv_bn(3, s(64), 7, 2, eps=1e-3), pool(), _conv_bn(s(64), s(64), 1, eps=1e-3),
                                  _conv_bn(s(64), s(192), 3, eps=1e-3), pool())
        cin = s(192)

        def stage(configs, *tail):
            nonlocal cin
            modules = []
            for config in configs:
                c = [s(n) for n in config]
                modules.append(Inception(cin, *c, kernel5=kernel5))
                cin = c[0] + c[2] + c[4] + c[5]
            return nn.Sequential(*modules, *tail)

        self.inception3 = stage(self.INCEPTION3, pool())
        self.inception4 = stage(self.INCEPTION4, pool(2))
        self.inception5 = stage(self.INCEPTION5)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.inception5(self.inception4(self.inception3(self.stem(x))))
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def googlenet(num_classes=10, width_mult=1.0, kernel5=5):
    """GoogLeNet with batchnorm. `kernel5=3` gives the 3x3 third branch that torchvision's copy has."""
    return GoogLeNet(num_classes, width_mult, kernel5)


# ---------------------------------------------------------------- MobileNetV2 (Sandler et al. 2018)

class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection; residual when shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, act=nn.ReLU6)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   _conv_bn(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]  # expansion t, channels c, repeats n, first stride s

    def __init__(self, num_classes=10, width_mult=1.0):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers = [_conv_bn(3, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in self.SETTINGS:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(x)


def mobilenet_v2(num_classes=10, width_mult=1.0):
    return MobileNetV2(num_classes, width_mult)


# ---------------------------------------------------------------- squeeze-excitation (Hu et al. 2018)

class SqueezeExcitation(nn.Module):
    """Global average pool -> 1x1 conv (squeeze) -> activation -> 1x1 conv (excite) -> gate; x * gate."""

    def __init__(self, channels: int, squeeze: int, activation=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation, self.gate = activation(), gate()

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.gate(self.fc2(self.activation(self.fc1(scale))))
        return x * scale


# ---------------------------------------------------------------- MobileNetV3-Large (Howard et al. 2019)

class MobileNetV3Block(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, use_se, activation, stride):
        super().__init__()
        layers = [] if expanded == cin else [_conv_bn(cin, expanded, 1, act=activation)]
        layers.append(_conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=activation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4), nn.ReLU, nn.Hardsigmoid))
        layers.append(_conv_bn(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV3(nn.Module):
    LARGE = [(16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
             (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
             (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
             (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1),
             (112, 3, 672, 112, True, "HS", 1), (112, 5, 672, 160, True, "HS", 2),
             (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1)]
    # (input, kernel, expanded, output, squeeze-excitation, activation RE=ReLU HS=hardswish, stride)

    def __init__(self, num_classes=10, width_mult=1.0):
        super().__init__()
        s = lambda n: make_divisible(n * width_mult)  # noqa: E731
        layers = [_conv_bn(3, s(16), 3, 2, act=nn.Hardswish)]
        for cin, k, exp, cout, se, act, stride in self.LARGE:
            layers.append(MobileNetV3Block(s(cin), k, s(exp), s(cout), se,
                                           nn.ReLU if act == "RE" else nn.Hardswish, stride))
        last_conv = 6 * s(160)
        layers.append(_conv_bn(s(160), last_conv, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        hidden = make_divisible(1280 * width_mult)
        self.classifier = nn.Sequential(nn.Linear(last_conv, hidden), nn.Hardswish(inplace=True),
                                        nn.Dropout(0.2), nn.Linear(hidden, num_classes))

    def forward(self, x):
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(x)


def mobilenet_v3(num_classes=10, width_mult=1.0):
    return MobileNetV3(num_classes, width_mult)


# ---------------------------------------------------------------- EfficientNet-B0 (Tan & Le 2019)

class MBConv(nn.Module):
    """1x1 expand (SiLU) -> kxk depthwise (SiLU) -> squeeze-excitation (SiLU, sigmoid) -> 1x1 projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, act=nn.SiLU, eps=1e-3)]
        layers += [_conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU, eps=1e-3),
                   SqueezeExcitation(hidden, max(1, cin // 4), nn.SiLU, nn.Sigmoid),
                   _conv_bn(hidden, cout, 1, act=None, eps=1e-3)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class EfficientNet(nn.Module):
    B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
    # (expansion, kernel, first stride, input, output, repeats)

    def __init__(self, num_classes=10, width_mult=1.0):
        super().__init__()
        s = lambda n: make_divisible(n * width_mult)  # noqa: E731
        layers = [_conv_bn(3, s(32), 3, 2, act=nn.SiLU, eps=1e-3)]
        for expand, kernel, stride, cin, cout, repeats in self.B0:
            for i in range(repeats):
                layers.append(MBConv(s(cin) if i == 0 else s(cout), s(cout), kernel, stride if i == 0 else 1, expand))
        head = 4 * s(320)
        layers.append(_conv_bn(s(320), head, 1, act=nn.SiLU, eps=1e-3))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, num_classes))

    def forward(self, x):
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(x)


def efficientnet_b0(num_classes=10, width_mult=1.0):
    return EfficientNet(num_classes, width_mult)


# ---------------------------------------------------------------- MnasNet-B1 (Tan et al. 2019)

class MnasNet(nn.Module):
    STACKS = [(24, 3, 2, 3, 3), (40, 5, 2, 3, 3), (80, 5, 2, 6, 3), (96, 3, 1, 6, 2), (192, 5, 2, 6, 4),
              (320, 3, 1, 6, 1)]  # (output, kernel, first stride, expansion, repeats)

    def __init__(self, num_classes=10, width_mult=1.0):
        super().__init__()
        s = lambda n: make_divisible(n * width_mult)  # noqa: E731
        layers = [_conv_bn(3, s(32), 3, 2), _conv_bn(s(32), s(32), 3, groups=s(32)),
                  _conv_bn(s(32), s(16), 1, act=None)]
        cin = s(16)
        for cout, kernel, stride, expand, repeats in self.STACKS:
            for i in range(repeats):
                layers.append(_MnasBlock(cin, s(cout), kernel, stride if i == 0 else 1, expand))
                cin = s(cout)
        layers.append(_conv_bn(cin, 1280, 1))
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.layers(x).mean([2, 3]))


class _MnasBlock(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.layers = nn.Sequential(_conv_bn(cin, hidden, 1), _conv_bn(hidden, hidden, kernel, stride, groups=hidden),
                                    _conv_bn(hidden, cout, 1, act=None))
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.layers(x) if self.use_residual else self.layers(x)


def mnasnet(num_classes=10, width_mult=1.0):
    return MnasNet(num_classes, width_mult)


# ---------------------------------------------------------------- RegNetX / RegNetY (Radosavovic et al. 2020)

def regnet_stages(depth: int, w0: float, wa: float, wm: float, group_width: int, width_mult: float = 1.0):
    """The paper's quantised linear widths: u_j = w0 + wa j, w_j = w0 wm^round(log(u_j / w0) / log wm),
    rounded to multiples of 8; consecutive equal widths form a stage. Returns [(width, depth, groups width)]."""
    widths = []
    for j in range(depth):
        exponent = round(math.log((w0 + wa * j) / w0) / math.log(wm))
        widths.append(int(round(w0 * wm ** exponent / 8) * 8))
    stages = []
    for w in widths:
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    result = []
    for w, d in stages:
        w = w if width_mult == 1.0 else make_divisible(w * width_mult)
        g = min(group_width, w)
        result.append((make_divisible(w, g, g) if w % g else w, d, g))
    return result


class RegNetBlock(nn.Module):
    """X block: 1x1 -> 3x3 grouped (stride) -> [Y: squeeze-excitation] -> 1x1, residual, ReLU."""

    def __init__(self, cin, cout, stride, group_width, se_ratio):
        super().__init__()
        layers = [_conv_bn(cin, cout, 1), _conv_bn(cout, cout, 3, stride, groups=cout // group_width)]
        if se_ratio:
            layers.append(SqueezeExcitation(cout, int(round(se_ratio * cin))))
        layers.append(_conv_bn(cout, cout, 1, act=None))
        self.f = nn.Sequential(*layers)
        self.proj = None
        if cin != cout or stride != 1:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.proj is None else self.proj(x)
        return F.relu(identity + self.f(x))


class RegNet(nn.Module):
    def __init__(self, depth, w0, wa, wm, group_width, se_ratio=0.0, num_classes=10, width_mult=1.0):
        super().__init__()
        stem = make_divisible(32 * width_mult)
        layers, cin = [_conv_bn(3, stem, 3, 2)], stem
        for width, blocks, g in regnet_stages(depth, w0, wa, wm, group_width, width_mult):
            for i in range(blocks):
                layers.append(RegNetBlock(cin, width, 2 if i == 0 else 1, g, se_ratio))
                cin = width
        self.trunk = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.trunk(x), 1), 1))


def regnetx(num_classes=10, width_mult=1.0):
    """RegNetX-400MF: depth 22, w0 24, wa 24.48, wm 2.54, group width 16."""
    return RegNet(22, 24, 24.48, 2.54, 16, 0.0, num_classes, width_mult)


def regnety(num_classes=10, width_mult=1.0):
    """RegNetY-400MF: depth 16, w0 48, wa 27.89, wm 2.09, group width 8, squeeze-excitation ratio 0.25."""
    return RegNet(16, 48, 27.89, 2.09, 8, 0.25, num_classes, width_mult)


# ---------------------------------------------------------------- ShuffleNetV2 (Ma et al. 2018)

def channel_shuffle(x, groups: int):
    """Interleave the channels of `groups` groups: view (N, g, C/g, H, W), swap axes 1 and 2, view back."""
    batch, channels, height, width = x.size()
    per_group = channels // groups
    x = x.view(batch, groups, per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        half = cout // 2
        self.stride = stride
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin, act=None), _conv_bn(cin, half, 1))
        into = cin if stride > 1 else half
        self.branch2 = nn.Sequential(_conv_bn(into, half, 1), _conv_bn(half, half, 3, stride, groups=half, act=None),
                                     _conv_bn(half, half, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes=10, width_mult=1.0, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024)):
        super().__init__()
        c = [channels[0]] + [c if width_mult == 1.0 else make_divisible(c * width_mult) for c in channels[1:4]]
        c.append(channels[4])
        self.conv1 = _conv_bn(3, c[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], c[0]
        for n, cout in zip(repeats, c[1:4]):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = _conv_bn(cin, c[4], 1)
        self.fc = nn.Linear(c[4], num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2(num_classes=10, width_mult=1.0):
    return ShuffleNetV2(num_classes, width_mult)


ARCHITECTURES = {
    "resnet18": resnet18, "resnet50": resnet50, "resnext50": resnext50, "densenet121": densenet121,
    "vgg11_bn": vgg11_bn, "alexnet": alexnet, "squeezenet1_0": squeezenet1_0, "squeezenet1_1": squeezenet1_1,
    "googlenet": googlenet, "mnasnet": mnasnet, "regnetx": regnetx, "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3": mobilenet_v3, "efficientnet_b0": efficientnet_b0, "regnety": regnety,
    "shufflenet_v2": shufflenet_v2,
}
"""Every layout by name: builder(num_classes=10, width_mult=1.0) -> nn.Module."""

MIN_INPUT = {"alexnet": 64}
"""Smallest square input a layout accepts where it is more than 32 (AlexNet's 11x11/4 stem and three pools)."""
