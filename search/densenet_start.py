"""Built-in DenseNet-BC start networks of the DenseNet search space, built as ordinary IR graphs.

A dense layer is pre-activation batchnorm -> relu -> conv, with the DenseNet-BC bottleneck in front:

    bn -> relu -> conv 1x1 (4 k) -> bn -> relu -> conv 3x3 (k)        k = the layer's growth rate

and its k output channels are concatenated onto the running feature map, so layer i of a block reads the
block input and every earlier layer's output. The running map is written as nested concats,
concat(concat(x, l1), l2), one concat per layer. Between blocks a transition (bn -> relu -> conv 1x1 with
floor(compression * C) channels -> 2x2 average pool) halves the channels and the spatial size; after the
last block: bn -> relu -> global average pool -> flatten -> classifier.

Nothing here is special to the IR: `easc.passes.dense.dense_blocks` recognises the blocks by their
structure, so an imported DenseNet is searched the same way. Names are readable and are what the passes
and the CLI take: `block1_layer3` is the 3x3 growth conv of layer 3 of block 1, `block1_layer3_bottleneck`
its 1x1 conv, `block1_layer3_bn` / `_relu` the batchnorm and relu in front of the growth conv,
`block1_layer3_bottleneck_bn` / `_relu` those in front of the bottleneck, `block1_layer3_concat` the running
map after it; `transition1_bn`, `_relu`, `_conv`, `_pool`; `stem`, `final_bn`, `final_relu`, `gap`,
`flatten`, `classifier`. Convs carry no bias (a batchnorm follows each), as in DenseNet.

- `densenet-bc`: 32x32x3 inputs (CIFAR): growth 12, 3 blocks of 4 layers, compression 0.5, stem conv
  3x3 with 2k channels. Deliberately small, like EAS's start nets: the search grows it.
- `densenet-digits`: 1x8x8 digits: growth 6, 2 blocks of 3 layers, compression 0.5, one transition
  (8x8 -> 4x4). Trains in seconds on a CPU.

Both take keyword overrides: `growth`, `layers` (per block: an int for every block or a sequence),
`bottleneck` (False: plain bn -> relu -> conv 3x3 layers) and `compression`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from easc.ir import Graph, GraphBuilder

BOTTLENECK_FACTOR = 4
"""DenseNet-BC's bottleneck width: 4 x growth channels."""


def dense_layer(b: GraphBuilder, x: str, name: str, growth: int, bottleneck: bool = True) -> str:
    """Append one dense layer reading `x` (see the module doc); return its growth conv's name."""
    h = x
    if bottleneck:
        h = b.relu(b.batchnorm(h, name=f"{name}_bottleneck_bn"), name=f"{name}_bottleneck_relu")
        h = b.conv2d(h, BOTTLENECK_FACTOR * growth, 1, bias=False, name=f"{name}_bottleneck")
    h = b.relu(b.batchnorm(h, name=f"{name}_bn"), name=f"{name}_relu")
    return b.conv2d(h, growth, 3, padding=1, bias=False, name=name)


def _per_block(layers, blocks: int) -> list:
    if isinstance(layers, (int, np.integer)):
        layers = [int(layers)] * blocks
    layers = [int(n) for n in layers]
    if not layers or any(n < 1 for n in layers):
        raise ValueError(f"densenet: layers per block must be positive, got {layers}")
    return layers


def densenet(name: str, input_shape, num_classes: int, seed: int, *, growth: int, layers: Sequence[int],
             bottleneck: bool = True, compression: float = 0.5, stem_channels: int | None = None) -> Graph:
    """A DenseNet(-BC) with one block per entry of `layers` (see the module doc)."""
    if growth < 1:
        raise ValueError(f"densenet: growth must be positive, got {growth}")
    if not 0 < compression <= 1:
        raise ValueError(f"densenet: compression must be in (0, 1], got {compression}")
    b = GraphBuilder(name, rng=np.random.default_rng(seed))
    h = b.input("image", input_shape)
    h = b.conv2d(h, stem_channels or 2 * growth, 3, padding=1, bias=False, name="stem")
    for i, count in enumerate(layers, 1):
        if i > 1:
            t = f"transition{i - 1}"
            h = b.relu(b.batchnorm(h, name=f"{t}_bn"), name=f"{t}_relu")
            out = max(1, int(b.type_of(h).channels * compression))
            h = b.avgpool2d(b.conv2d(h, out, 1, bias=False, name=f"{t}_conv"), 2, name=f"{t}_pool")
        for j in range(1, count + 1):
            layer = f"block{i}_layer{j}"
            out = dense_layer(b, h, layer, growth, bottleneck)
            h = b.concat([h, out], name=f"{layer}_concat")
    h = b.relu(b.batchnorm(h, name="final_bn"), name="final_relu")
    h = b.flatten(b.global_avgpool(h, name="gap"), name="flatten")
    b.output("logits", b.linear(h, num_classes, name="classifier"))
    return b.build()


def densenet_bc(input_shape=(3, 32, 32), num_classes=10, seed=0, *, growth: int = 12, layers=4,
                bottleneck: bool = True, compression: float = 0.5) -> Graph:
    """DenseNet-BC for 32x32 images: 3 blocks (4 layers each by default), growth 12, compression 0.5."""
    return densenet("densenet_bc", tuple(input_shape), num_classes, seed, growth=growth,
                    layers=_per_block(layers, 3), bottleneck=bottleneck, compression=compression)


def densenet_digits(input_shape=(1, 8, 8), num_classes=10, seed=0, *, growth: int = 6, layers=3,
                    bottleneck: bool = True, compression: float = 0.5) -> Graph:
    """A small DenseNet-BC for 8x8 digits: 2 blocks of 3 layers, growth 6, one transition."""
    return densenet("densenet_digits", tuple(input_shape), num_classes, seed, growth=growth,
                    layers=_per_block(layers, 2), bottleneck=bottleneck, compression=compression)


DENSENET_START_NETS = {"densenet-bc": densenet_bc, "densenet-digits": densenet_digits}
