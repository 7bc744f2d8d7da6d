"""The one generator of random valid IR graphs: small CNNs built with `easc.ir.GraphBuilder`.

`build_graph(choose)` draws every choice from `choose`, so the same generator serves hypothesis
(`cnn_graphs()`, which shrinks) and a plain numpy loop (`random_graph(rng)`, which `benchmarks/bench_passes.py`
uses to draw thousands of graphs quickly).

What it draws: one or two inputs (1-3 channels, 4-9 x 4-9 pixels; a second input of the same size is merged
into the first by a conv and a concat or an add), then 1 to `max_blocks` blocks, each one of

    conv          kernel 1/3/5/7, stride 1 or 2, padding 0..k//2, bias on or off, sometimes grouped
                  (groups 2) or depthwise (groups = channels)
    conv_bn_relu  the same choices, then batchnorm and relu
    pool          max or average, kernel 2 or 3, stride 2, padding 0 or 1, ceil_mode on or off
    residual      conv-bn (same size) added to the block input, then relu
    dense         a densenet block: 1-3 layers batchnorm -> relu -> conv 3x3 (growth 2-4), each output
                  concatenated onto the running map (what `passes.dense` recognises)
    concat        conv-bn-relu concatenated with the input and sometimes an earlier value of the same size
    branches      1x1 conv and 3x3 conv-relu, added or concatenated
    dropout, relu

then a head: global average pooling or a plain flatten, an optional hidden linear layer (with batchnorm,
relu, dropout), a classifier, an optional softmax, and sometimes a second output. Weights come from a drawn
seed; batchnorm statistics and biases are randomised too, so a pass that mishandles them shows in the outputs.
Grouped and depthwise convs are drawn although `widen` and `skip` refuse them (with a reason): a refusal is
an acceptable answer in a chain, and the passes that do apply (deepen, widen_kernel) must handle them.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from easc.ir import Graph, GraphBuilder
from easc.ir.builder import randomise_weights  # noqa: F401 - re-exported for the tests

BLOCKS = ("conv", "conv_bn_relu", "pool", "residual", "dense", "concat", "branches", "dropout", "relu")


class _Hypothesis:
    """Choices drawn by hypothesis (shrinkable)."""

    def __init__(self, draw):
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def pick(self, options):
        return self.draw(st.sampled_from(list(options)))

    def chance(self, p: float) -> bool:
        return self.draw(st.integers(0, 99)) < round(100 * p)


class _Numpy:
    """Choices drawn from a numpy generator (fast, for benchmarks)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def pick(self, options):
        options = list(options)
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


def _spatial(b: GraphBuilder, name: str) -> tuple:
    return tuple(b.type_of(name).shape[2:])


def _channels(b: GraphBuilder, name: str) -> int:
    return b.type_of(name).channels


def _conv(choose, b: GraphBuilder, cur: str) -> tuple:
    """A conv with drawn kernel, stride, padding, bias and grouping; (its name, whether it kept the size)."""
    h, w = _spatial(b, cur)
    k = choose.pick([k for k in (1, 3, 5, 7) if k <= max(h, w) + 2])
    stride = 2 if min(h, w) >= 4 and choose.chance(0.25) else 1
    padding = k // 2 if choose.chance(0.7) else choose.integer(0, k // 2)
    if h + 2 * padding < k or w + 2 * padding < k:
        padding = k // 2
    c = _channels(b, cur)
    out = choose.integer(2, 8)
    groups = 1
    if c > 1 and choose.chance(0.15):  # depthwise: one filter (or two) per input channel
        groups, out = c, c * choose.integer(1, 2)
    elif c % 2 == 0 and choose.chance(0.15):
        groups = 2
        out += out % 2
    name = b.conv2d(cur, out, k, stride=stride, padding=padding, bias=choose.chance(0.7), groups=groups)
    return name, _spatial(b, name) == (h, w)


def _block(choose, b: GraphBuilder, cur: str, same_size: list) -> tuple:
    """Append one block after `cur`; return the new current value and the values of its spatial size."""
    kind = choose.pick(BLOCKS)
    if kind in ("conv", "conv_bn_relu"):
        y, kept = _conv(choose, b, cur)
        if kind == "conv_bn_relu":
            y = b.relu(b.batchnorm(y))
        return y, (same_size + [y] if kept else [y])
    if kind == "pool":
        h, w = _spatial(b, cur)
        k = choose.pick([2, 3]) if min(h, w) >= 3 else 2
        if min(h, w) < k:
            return cur, same_size
        padding = 1 if k == 3 and choose.chance(0.3) else 0
        pool = b.maxpool2d if choose.chance(0.5) else b.avgpool2d
        y = pool(cur, k, stride=2, padding=padding, ceil=choose.chance(0.4))
        return y, [y]
    if kind == "residual":
        y = b.batchnorm(b.conv2d(cur, _channels(b, cur), 3, padding=1, bias=choose.chance(0.5)))
        y = b.relu(b.add_([y, cur]))
        return y, same_size + [y]
    if kind == "dense":
        running = cur
        for _ in range(choose.integer(1, 3)):
            grown = b.conv2d(b.relu(b.batchnorm(running)), choose.integer(2, 4), 3, padding=1,
                             bias=choose.chance(0.5))
            running = b.concat([running, grown])
        return running, same_size + [running]
    if kind == "concat":
        y = b.relu(b.batchnorm(b.conv2d(cur, choose.integer(2, 8), 3, padding=1)))
        earlier = [v for v in same_size if v != cur]
        extra = [choose.pick(earlier)] if earlier and choose.chance(0.5) else []
        y2 = b.concat([cur, y] + extra)
        return y2, same_size + [y, y2]
    if kind == "branches":
        out = choose.integer(2, 8)
        left = b.conv2d(cur, out, 1, bias=choose.chance(0.5))
        right = b.relu(b.conv2d(cur, out, 3, padding=1))
        y = b.add_([left, right]) if choose.chance(0.5) else b.concat([left, right])
        return y, same_size + [left, right, y]
    if kind == "dropout":
        y = b.dropout(cur, 0.2)
        return y, same_size + [y]
    y = b.relu(cur)
    return y, same_size + [y]


def build_graph(choose, max_blocks: int = 4) -> Graph:
    """A random valid small CNN (see the module doc), every choice drawn from `choose`."""
    rng = np.random.default_rng(choose.integer(0, 2**32 - 1))
    b = GraphBuilder("random", rng=rng)
    h, w = choose.integer(4, 9), choose.integer(4, 9)
    cur = b.input("x", (choose.integer(1, 3), h, w))
    if choose.chance(0.2):  # a second input, merged after a conv of its own
        other = b.conv2d(b.input("x2", (choose.integer(1, 3), h, w)), choose.integer(2, 4), 3, padding=1)
        if choose.chance(0.5):
            cur = b.concat([cur, other])
        else:
            cur = b.add_([b.conv2d(cur, _channels(b, other), 1), other])
    same_size = [cur]
    for _ in range(choose.integer(1, max_blocks)):
        cur, same_size = _block(choose, b, cur, same_size)
    features = b.flatten(b.global_avgpool(cur)) if choose.chance(0.5) else b.flatten(cur)
    cur = features
    if choose.chance(0.5):
        cur = b.linear(cur, choose.integer(2, 8), bias=choose.chance(0.8))
        if choose.chance(0.5):
            cur = b.batchnorm(cur)
        cur = b.relu(cur)
        if choose.chance(0.5):
            cur = b.dropout(cur, 0.5)
    logits = b.linear(cur, choose.integer(2, 5))
    if choose.chance(0.5):
        b.output("probs", b.softmax(logits))
    else:
        b.output("logits", logits)
    if choose.chance(0.2):
        b.output("features", features)
    return randomise_weights(b.build(), rng)


@st.composite
def cnn_graphs(draw, max_blocks: int = 4) -> Graph:
    """A random valid small CNN graph, drawn by hypothesis (see the module doc)."""
    return build_graph(_Hypothesis(draw), max_blocks)


def random_graph(rng: np.random.Generator, max_blocks: int = 4) -> Graph:
    """A random valid small CNN graph, drawn from a numpy generator (see the module doc)."""
    return build_graph(_Numpy(rng), max_blocks)
