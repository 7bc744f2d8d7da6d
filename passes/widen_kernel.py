"""Kernel widening: a conv2d's k x k kernel becomes K x K with a zero border, and its padding grows to match.

With stride s and padding p, output position i of a conv reads input rows i s - p + j, j = 0 .. k-1, with weight
row j. Growing the kernel by 2d (d zero rows on each side) and the padding by d, position i reads rows
i s - (p + d) + j', j' = 0 .. k + 2d - 1, with weight row j' - d: the old rows j = j' - d see the same inputs as
before and the new rows (j' < d or j' >= k + d) have zero weight. Output size

    floor((H + 2 (p + d) - (k + 2 d)) / s) + 1 = floor((H + 2 p - k) / s) + 1

is unchanged too. The same holds for the columns. So K - k must be even per axis (the padding is symmetric), and
the layer must have dilation 1 (with dilation e the padding would have to grow by d e instead, which this pass
does not do). Groups and stride do not matter: the border is zero in every group.
"""

from __future__ import annotations

import operator

import numpy as np

from easc.ir import Graph, UnknownNodeError

from .base import PassError, PassResult


def kernel_widenable(graph: Graph) -> list:
    """The conv2d layers `widen_kernel` accepts (dilation 1)."""
    return [n.name for n in graph.nodes if n.op == "conv2d" and tuple(n.attrs["dilation"]) == (1, 1)]


def _target(layer: str, current: tuple, kernel) -> tuple:
    kh, kw = current
    if kernel is None:
        return kh + 2, kw + 2
    try:  # operator.index: an integer, not a float or string that int() would quietly accept
        pair = (operator.index(kernel),) * 2 if np.isscalar(kernel) else tuple(operator.index(k) for k in kernel)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise PassError(f"widen_kernel {layer}: kernel {kernel!r} is neither a size nor a (height, width) pair")
    th, tw = pair
    if th < kh or tw < kw or (th, tw) == (kh, kw):
        raise PassError(f"widen_kernel {layer}: kernel {th}x{tw} is not larger than the current {kh}x{kw}")
    if (th - kh) % 2 or (tw - kw) % 2:
        raise PassError(f"widen_kernel {layer}: {kh}x{kw} -> {th}x{tw} grows by an odd amount, but the zero "
                        f"border must be equally wide on both sides (choose {kh + 2}x{kw + 2})")
    return th, tw


def widen_kernel(graph: Graph, layer: str, *, kernel=None, rng: np.random.Generator | None = None) -> PassResult:
    """Grow conv2d `layer`'s kernel to `kernel` (a size or (h, w) pair; default: 2 larger) with a zero border.

    rng: unused (the border is zero); taken so every pass has the same signature.
    """
    del rng
    if layer not in graph:
        raise UnknownNodeError(graph, layer, kinds=("conv2d",))
    node = graph.node(layer)
    if node.op != "conv2d":
        raise PassError(f"widen_kernel {layer}: it is a {node.op}, not a conv2d (only conv kernels can grow)")
    if tuple(node.attrs["dilation"]) != (1, 1):
        raise PassError(f"widen_kernel {layer}: dilation {node.attrs['dilation']} is not (1, 1); only undilated "
                        f"kernels are widened")
    kh, kw = node.attrs["kernel"]
    th, tw = _target(layer, (kh, kw), kernel)
    dh, dw = (th - kh) // 2, (tw - kw) // 2
    ph, pw = node.attrs["padding"]
    weight = np.pad(node.weights["weight"], ((0, 0), (0, 0), (dh, dh), (dw, dw)))
    attrs = dict(node.attrs, kernel=(th, tw), padding=(ph + dh, pw + dw))
    new = node.replace(attrs=attrs, weights=dict(node.weights, weight=weight))
    changes = [f"{layer}: kernel {kh}x{kw} -> {th}x{tw} (zero border), padding {ph}x{pw} -> {ph + dh}x{pw + dw}"]
    nodes = [new if n.name == layer else n for n in graph.nodes]
    record = {"pass": "widen_kernel", "layer": layer, "kernel": th if th == tw else [th, tw]}
    return PassResult(graph.replace(nodes=nodes), changes, record, rewritten=frozenset([layer]))
