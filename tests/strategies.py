"""Hypothesis strategies for random valid IR graphs: small CNNs built with `easc.ir.GraphBuilder`.

`cnn_graphs()` draws a stem of blocks (conv, conv-bn-relu, pooling, residual add, dense concat, two-branch
block, dropout, bare relu) on a 1-3 channel input of 4-8 x 4-8 pixels with widths 2-8, then a head (global
average pooling or a plain flatten, an optional hidden linear layer, a classifier, an optional softmax, and
sometimes a second output). Weights come from a drawn seed; batchnorm statistics and biases are randomised
too, so that a pass that mishandles them shows up in the outputs.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from easc.ir import Graph, GraphBuilder
from easc.ir.builder import randomise_weights  # noqa: F401 - re-exported for the tests

BLOCKS = ("conv", "conv_bn_relu", "pool", "residual", "dense", "branches", "dropout", "relu")


def _spatial(b: GraphBuilder, name: str) -> tuple:
    return tuple(b.type_of(name).shape[2:])


def _channels(b: GraphBuilder, name: str) -> int:
    return b.type_of(name).channels


def _block(draw, b: GraphBuilder, cur: str, same_size: list) -> tuple:
    """Append one block after `cur`; return the new current value and the values of its spatial size."""
    kind = draw(st.sampled_from(BLOCKS))
    width = st.integers(2, 8)
    if kind == "conv":
        k = draw(st.sampled_from([1, 3]))
        h, w = _spatial(b, cur)
        shrink = k == 3 and min(h, w) >= 4 and draw(st.booleans())  # padding 0: a smaller map
        c = _channels(b, cur)
        groups = 2 if c % 2 == 0 and draw(st.integers(0, 5)) == 0 else 1
        out = draw(width)
        out += out % groups
        cur = b.conv2d(cur, out, k, padding=0 if shrink else k // 2, groups=groups)
        return cur, ([cur] if shrink else same_size + [cur])
    if kind == "conv_bn_relu":
        cur = b.relu(b.batchnorm(b.conv2d(cur, draw(width), 3, padding=1)))
        return cur, same_size + [cur]
    if kind == "pool":
        if min(_spatial(b, cur)) < 2:
            return cur, same_size
        pool = b.maxpool2d if draw(st.booleans()) else b.avgpool2d
        cur = pool(cur, 2)
        return cur, [cur]
    if kind == "residual":
        c = _channels(b, cur)
        y = b.batchnorm(b.conv2d(cur, c, 3, padding=1))
        cur = b.relu(b.add_([y, cur]))
        return cur, same_size + [cur]
    if kind == "dense":
        y = b.relu(b.batchnorm(b.conv2d(cur, draw(width), 3, padding=1)))
        earlier = [v for v in same_size if v != cur]
        extra = [draw(st.sampled_from(earlier))] if earlier and draw(st.booleans()) else []
        cur = b.concat([cur, y] + extra)
        return cur, same_size + [y, cur]
    if kind == "branches":
        out = draw(width)
        left = b.conv2d(cur, out, 1)
        right = b.relu(b.conv2d(cur, out, 3, padding=1))
        cur = b.add_([left, right]) if draw(st.booleans()) else b.concat([left, right])
        return cur, same_size + [left, right, cur]
    if kind == "dropout":
        cur = b.dropout(cur, 0.2)
        return cur, same_size + [cur]
    cur = b.relu(cur)
    return cur, same_size + [cur]


@st.composite
def cnn_graphs(draw, max_blocks: int = 4) -> Graph:
    """A random valid small CNN graph (see module doc)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = GraphBuilder("random", rng=rng)
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(4, 8)), draw(st.integers(4, 8))
    cur = b.input("x", (c, h, w))
    same_size = [cur]
    for _ in range(draw(st.integers(1, max_blocks))):
        cur, same_size = _block(draw, b, cur, same_size)
    if draw(st.booleans()):
        features = b.flatten(b.global_avgpool(cur))
    else:
        features = b.flatten(cur)
    cur = features
    if draw(st.booleans()):
        cur = b.linear(cur, draw(st.integers(2, 8)))
        if draw(st.booleans()):
            cur = b.batchnorm(cur)
        cur = b.relu(cur)
        if draw(st.booleans()):
            cur = b.dropout(cur, 0.5)
    logits = b.linear(cur, draw(st.integers(2, 5)))
    if draw(st.booleans()):
        b.output("probs", b.softmax(logits))
    else:
        b.output("logits", logits)
    if draw(st.integers(0, 4)) == 0:
        b.output("features", features)
    return randomise_weights(b.build(), rng)
