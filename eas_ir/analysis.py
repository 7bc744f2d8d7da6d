"""Small analyses over the IR that passes rely on.

`value_ranges`: an interval analysis. Every value gets bounds [lo, hi] that hold for every input
(inputs themselves are unbounded): activations bound their output (relu >= 0, clip to [min, max],
sigmoid and hardsigmoid to [0, 1], silu >= -0.2785, hardswish >= -0.375), monotone ops map their
input's bounds (relu, clip, leaky_relu with slope >= 0, hardsigmoid, sigmoid), ops that only select
or average values keep them (pooling, dropout, flatten, slice, channel shuffle; average pooling
that counts zero padding and constant padding add the pad value), concat takes the hull, add sums
the bounds and mul multiplies them. Layers with weights (conv2d, linear, batchnorm) are unbounded.

Net2Deeper inserts an activation after its identity block only where this analysis proves the
activation is the identity on the value: relu(x) = x and leaky_relu(x) = x on [0, inf), clip(x) = x
on [min, max].

`nonnegative_values` is the set of values whose lower bound is >= 0.
"""

from __future__ import annotations

import math

from .graph import Graph

INF = math.inf

SILU_MIN = -0.27846454276107380
"""min over x of x sigmoid(x) (at x = -1.27846...), rounded down."""
HARDSWISH_MIN = -0.375
"""min over x of x relu6(x + 3) / 6, at x = -1.5."""


def _sigmoid(x: float) -> float:
    if x == INF:
        return 1.0
    if x == -INF:
        return 0.0
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _mul(a: tuple, b: tuple) -> tuple:
    products = []
    for x in a:
        for y in b:
            if (x == 0 and math.isinf(y)) or (y == 0 and math.isinf(x)):
                products.append(0.0)
            else:
                products.append(x * y)
    return min(products), max(products)


def _range(node, ins: list) -> tuple:
    op, a = node.op, node.attrs
    lo, hi = ins[0] if ins else (-INF, INF)
    if op == "relu":
        return max(lo, 0.0), max(hi, 0.0)
    if op == "clip":
        return min(max(lo, a["min"]), a["max"]), min(max(hi, a["min"]), a["max"])
    if op == "leaky_relu":
        s = a["slope"]
        if s < 0:
            return -INF, INF
        f = lambda x: x if x >= 0 else s * x  # noqa: E731
        return f(lo), f(hi)
    if op == "sigmoid":
        return _sigmoid(lo), _sigmoid(hi)
    if op == "hardsigmoid":
        f = lambda x: min(max(x / 6.0 + 0.5, 0.0), 1.0)  # noqa: E731
        return f(lo), f(hi)
    if op == "silu":
        # increasing on [0, inf) with silu(x) <= x there; in [SILU_MIN, 0) for x < 0
        top = INF if hi == INF else max(hi * _sigmoid(hi), 0.0)
        return (lo * _sigmoid(lo) if lo >= 0 else SILU_MIN), top
    if op == "hardswish":
        f = lambda x: x if x == INF else x * min(max(x + 3.0, 0.0), 6.0) / 6.0  # noqa: E731
        return (f(lo) if lo >= 0 else HARDSWISH_MIN), max(f(hi), 0.0)
    if op == "softmax":
        return 0.0, 1.0
    if op in ("maxpool2d", "global_avgpool", "dropout", "flatten", "slice", "channel_shuffle",
              "channel_gather"):
        return lo, hi
    if op == "avgpool2d":
        if a["count_include_pad"] and any(a["padding"]):
            return min(lo, 0.0), max(hi, 0.0)
        return lo, hi
    if op == "pad":
        return min(lo, a["value"]), max(hi, a["value"])
    if op == "concat":
        return min(r[0] for r in ins), max(r[1] for r in ins)
    if op == "add":
        return sum(r[0] for r in ins), sum(r[1] for r in ins)
    if op == "mul":
        return _mul(ins[0], ins[1])
    return -INF, INF  # inputs and layers with weights: unbounded


def value_ranges(graph: Graph) -> dict:
    """Bounds (lo, hi) of every node's value that hold for every input, keyed by node name."""
    ranges: dict = {}
    for node in graph.nodes:
        lo, hi = _range(node, [ranges[i] for i in node.inputs])
        if math.isnan(lo) or math.isnan(hi):  # inf - inf in an add: nothing is known
            lo, hi = -INF, INF
        ranges[node.name] = (lo, hi)
    return ranges


def identity_domain(node) -> tuple | None:
    """The interval on which activation `node` computes the identity, or None if there is none."""
    if node.op in ("relu", "leaky_relu"):
        return 0.0, INF
    if node.op == "clip":
        return node.attrs["min"], node.attrs["max"]
    return None


def nonnegative_values(graph: Graph) -> set:
    """Names of the nodes whose value is >= 0 for every input."""
    return {name for name, (lo, _) in value_ranges(graph).items() if lo >= 0}


def is_nonnegative(graph: Graph, name: str) -> bool:
    return name in nonnegative_values(graph)
