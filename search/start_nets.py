"""Built-in start networks of the search, built as IR graphs with seeded He-normal weights.

- `eas-small`: the released EAS demo net for 32x32x3 inputs: four blocks of [conv 3x3 (4 filters),
  batchnorm, relu] with 2x2 max-pools between them, global average pool, fc-8 (batchnorm, relu), fc-C.
- `eas-paper`: the paper's plain start net (PAPER.md, "as recalled"): C(16,3)-P-C(32,3)-P-C(64,3)-P-
  C(128,3)-GAP-FC(256)-FC(C), each conv and the hidden fc followed by batchnorm and relu.
- `digits-small`: the same shape scaled to 1x8x8 digits: C(8,3)-P-C(16,3)-GAP-FC(16)-FC(10).

Every hidden layer is conv/linear -> batchnorm -> relu, so Net2Deeper's identity layer with relu is
exact after any of them.
"""

from __future__ import annotations

import numpy as np

from easc.ir import Graph, GraphBuilder


def _plain(name, input_shape, convs, fcs, num_classes, seed):
    """convs: widths per block (one conv each), pooled between blocks; fcs: hidden fc widths."""
    b = GraphBuilder(name, rng=np.random.default_rng(seed))
    h = b.input("image", input_shape)
    for i, width in enumerate(convs):
        if i:
            h = b.maxpool2d(h, 2)
        h = b.relu(b.batchnorm(b.conv2d(h, width, 3, padding=1)))
    h = b.flatten(b.global_avgpool(h))
    for width in fcs:
        h = b.relu(b.batchnorm(b.linear(h, width)))
    b.output("logits", b.linear(h, num_classes))
    return b.build()


def eas_small(input_shape=(3, 32, 32), num_classes=10, seed=0) -> Graph:
    return _plain("eas_small", input_shape, [4, 4, 4, 4], [8], num_classes, seed)


def eas_paper(input_shape=(3, 32, 32), num_classes=10, seed=0) -> Graph:
    return _plain("eas_paper", input_shape, [16, 32, 64, 128], [256], num_classes, seed)


def digits_small(input_shape=(1, 8, 8), num_classes=10, seed=0) -> Graph:
    return _plain("digits_small", input_shape, [8, 16], [16], num_classes, seed)


START_NETS = {"eas-small": eas_small, "eas-paper": eas_paper, "digits-small": digits_small}


def build_start_net(name: str, input_shape, num_classes: int, seed: int = 0) -> Graph:
    """A built-in start net for the data's input shape and class count (ValueError for unknown names)."""
    from .densenet_start import DENSENET_START_NETS

    table = {**START_NETS, **DENSENET_START_NETS}
    if name not in table:
        raise ValueError(f"unknown start net {name!r} (built-in: {', '.join(sorted(table))}; or a model file)")
    return table[name](tuple(input_shape), num_classes, seed)
