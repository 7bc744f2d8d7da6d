"""The expected training cost of a child, for scheduling: which waiting child a free worker takes first.

A step ends when its last child does. Handing the longest children out first (longest-processing-time-first)
leaves short ones for the end, where they fill the gaps instead of leaving a worker idle while the other
finishes a long one. That needs an estimate that orders children by training time, not the time itself:

    cost = epochs x (multiply-adds per sample + LAYER_OVERHEAD x layers)

Multiply-adds of a conv: weight elements x output positions (H x W); of a linear layer: weight elements.
On the digits search (2 cores, one thread per worker, 30 children of a 3-step search) the training seconds
correlate 0.82 with multiply-adds against 0.56 with parameters (which the file size follows): parameters
miss the spatial size at which a conv runs. The per-layer term stands for the fixed cost of each layer's
kernels per batch (launch and Python overhead), which dominates small networks: a least-squares fit of
seconds = a + b x layers + c x multiply-adds on those children gave b / c of about 7e4 multiply-adds.
Only the order matters, so the constants need not fit another machine closely.
"""

from __future__ import annotations

import math

from easc.ir import Graph

LAYER_OVERHEAD = 70_000  # multiply-adds one layer's fixed per-batch cost is worth (see above)


def multiply_adds(graph: Graph) -> int:
    """Multiply-adds of one sample's forward pass through the weighted layers (conv2d and linear)."""
    total = 0
    for node in graph.layers():
        weight = node.weights.get("weight")
        if weight is None:
            continue
        shape = node.type.sample_shape  # (C, H, W) for a conv, (units,) for a linear layer
        total += int(weight.size) * (math.prod(shape[1:]) if len(shape) > 1 else 1)
    return total


def training_cost(graph: Graph, epochs: int) -> float:
    """Relative cost of training `graph` for `epochs` (comparable between children of one search only)."""
    return float(max(epochs, 1) * (multiply_adds(graph) + LAYER_OVERHEAD * graph.depth))
