"""Net2Deeper: insert an identity block after a value, so the network is one layer deeper and computes the same.

After the value x of node `after` (C channels) the pass inserts

    NCHW:  conv2d k x k, C -> C, padding k//2, weight[o, i, :, :] = 0 except weight[c, c, k//2, k//2] = 1, bias 0
    NC:    linear C -> C, weight = I (identity matrix), bias 0

so the new layer computes y = x exactly (k must be odd: an even kernel has no centre tap). Then a batchnorm

    bn(y) = gamma (y - running_mean) / sqrt(running_var + eps) + beta

set to undo itself:
- without data: running_mean 0, running_var 1 - eps, gamma 1, beta 0, so bn(y) = y / sqrt(1) = y; exact in
  eval mode only (in train mode the batch statistics replace 0 and 1 - eps);
- with calibration (mu, sigma^2 measured at x on a batch of training data, see `calibration_stats`):
  running_mean = mu, running_var = sigma^2, beta = mu, gamma = sqrt(sigma^2 + eps), so
  bn(y) = sqrt(sigma^2 + eps) (y - mu) / sqrt(sigma^2 + eps) + mu = y; exact in eval mode and close to the
  identity in train mode, whose batch statistics are close to mu and sigma^2 (EAS, Net2Deeper with BN).

Last an activation, but only where the range analysis (`easc.ir.value_ranges`) proves it is the identity on x.
The activation is the one `after` is (relu, leaky_relu, clip such as ReLU6), or relu when `after` is not an
activation: relu(y) = y and leaky_relu(y) = y exactly when y >= 0, clip(y) = y exactly when min <= y <= max.
After relu x >= 0, after ReLU6 x lies in [0, 6], after a pooling of such values the same: the activation is
added. Anywhere else (after sigmoid, silu, hardswish, which are the identity nowhere, or after a value that can
leave the domain) an activation would change the function, and the block is left without one (the changes say
so).

Every consumer of x then reads the block's output instead. A value that is a graph output is refused: the
block would sit after the output, or change it.
"""

from __future__ import annotations

import numpy as np

from easc.ir import Graph, UnknownNodeError, identity_domain, make_node, run_all, value_ranges
from easc.ir.ops import ACTIVATION_OPS

from .base import PassError, PassResult, owned

DEFAULT_EPS = 1e-5
"""eps of the inserted batchnorm: torch's and ONNX's default."""


def unique_name(graph: Graph, base: str, taken=()) -> str:
    """`base`, else `base_2`, `base_3`, ... (the one naming rule of `easc.ir.names`)."""
    return graph.namespace(taken).fresh(base)


def deepenable(graph: Graph) -> list:
    """Names valid as `after`: NCHW or NC values that are read by some node and are not graph outputs."""
    outputs = set(graph.outputs.values())
    return [n.name for n in graph.nodes
            if n.type.rank in (2, 4) and n.name not in outputs and graph.consumers(n.name)]


def calibration_stats(graph: Graph, after: str, x_batch) -> tuple:
    """Per-channel (mean, population variance) of `after`'s value on a batch, by the interpreter run up to
    `after` only, in float32 (the statistics are summed in float64).

    `x_batch` is an array for a graph with one input, or a dict {input name: array}. The statistics are
    over the batch and, for NCHW values, over the spatial positions too (as batchnorm computes them).
    float32 is enough: the statistics only say where the new batchnorm starts training; in eval mode it is
    the identity whatever they are (the module doc), so their rounding cannot break the preservation.
    """
    if after not in graph:
        raise UnknownNodeError(graph, after)
    if not isinstance(x_batch, dict):
        inputs = [n.name for n in graph.inputs]
        if len(inputs) != 1:
            raise PassError(f"calibration_stats: the graph has {len(inputs)} inputs ({', '.join(inputs)}); "
                            f"pass a dict {{input name: array}}")
        x_batch = {inputs[0]: x_batch}
    # only the graph up to `after`: nothing later can change its value, and the rest would cost the whole net
    prefix = Graph(graph.nodes[:graph.position(after) + 1], {after: after}, graph.name)
    value = run_all(prefix, x_batch, dtype=np.float32)[after]
    axes = (0,) if value.ndim == 2 else (0, 2, 3)
    return value.mean(axis=axes, dtype=np.float64), value.var(axis=axes, dtype=np.float64)


def _check_calibration(after: str, channels: int, calibration) -> tuple:
    try:
        mean, var = (np.asarray(a, dtype=np.float64) for a in calibration)
    except (TypeError, ValueError):
        raise PassError(f"deepen {after}: calibration must be a pair (mean, var) of per-channel arrays") from None
    for what, a in (("mean", mean), ("var", var)):
        if a.shape != (channels,):
            raise PassError(f"deepen {after}: calibration {what} has shape {a.shape}, expected ({channels},) "
                            f"(one value per channel of {after})")
        if not np.all(np.isfinite(a)):
            raise PassError(f"deepen {after}: calibration {what} has NaN or infinite values")
    if np.any(var < 0):
        raise PassError(f"deepen {after}: calibration var has negative values (a variance is >= 0)")
    return mean, var


def _identity_layer(name: str, node, kernel: int) -> tuple:
    """The identity conv2d / linear reading `node`'s value, and a line describing it."""
    c = node.type.channels
    if node.type.rank == 4:
        weight = np.zeros((c, c, kernel, kernel), np.float32)
        weight[np.arange(c), np.arange(c), kernel // 2, kernel // 2] = 1.0
        layer = make_node(name, "conv2d", [node.name], [node.type],
                          dict(out=c, kernel=kernel, padding=kernel // 2, bias=True),
                          dict(weight=owned(weight), bias=np.zeros(c, np.float32)), origin=node.name)
        return layer, (f"{node.name} -> {name}: conv2d {kernel}x{kernel}, {c} -> {c} channels, identity kernel, "
                       f"zero bias")
    layer = make_node(name, "linear", [node.name], [node.type], dict(out=c, bias=True),
                      dict(weight=owned(np.eye(c, dtype=np.float32)), bias=np.zeros(c, np.float32)),
                      origin=node.name)
    return layer, f"{node.name} -> {name}: linear, {c} -> {c} units, identity matrix, zero bias"


def _batchnorm(name: str, layer, origin: str, calibration) -> tuple:
    c = layer.type.channels
    if calibration is None:
        weights = dict(scale=np.ones(c), bias=np.zeros(c), mean=np.zeros(c), var=np.full(c, 1.0 - DEFAULT_EPS))
        line = f"{name}: batchnorm, running mean 0, running var 1 - eps, gamma 1, beta 0 (exact in eval mode only)"
    else:
        mean, var = calibration
        weights = dict(scale=np.sqrt(var + DEFAULT_EPS), bias=mean, mean=mean, var=var)
        line = (f"{name}: batchnorm calibrated on data, running mean = beta = mu, running var = sigma^2, "
                f"gamma = sqrt(sigma^2 + eps) (exact in eval mode, near identity in train mode)")
    bn = make_node(name, "batchnorm", [layer.name], [layer.type], dict(eps=DEFAULT_EPS),
                   {k: np.asarray(v, np.float32) for k, v in weights.items()}, origin=origin)
    return bn, line


def _activation(graph: Graph, node, bn, names, changes: list) -> list:
    """The activation closing the block, if the range analysis proves it the identity on `node`'s value."""
    after = node.name
    model = node if node.op in ACTIVATION_OPS else None
    op, attrs = (model.op, dict(model.attrs)) if model is not None else ("relu", {})
    lo, hi = value_ranges(graph)[after]
    probe = make_node("probe", op, [bn.name], [bn.type], attrs)
    domain = identity_domain(probe)
    if domain is None:
        changes.append(f"no activation: {op} is the identity on no interval, so after {after} the block has none")
        return []
    if not (domain[0] <= lo and hi <= domain[1]):
        if op == "relu":
            changes.append(f"no relu: {after}'s value can be negative and relu(x) = x only for x >= 0, "
                           f"so the block has no activation")
        else:
            changes.append(f"no {op}: {after}'s value lies in [{lo:g}, {hi:g}] but {op}(x) = x only on "
                           f"[{domain[0]:g}, {domain[1]:g}], so the block has no activation")
        return []
    name = names.fresh(f"deepen_{after}_{op}")
    what = f"{op} {attrs}" if attrs else op
    if op == "relu":
        changes.append(f"{name}: relu ({after}'s value is non-negative, so relu is the identity on it)")
    else:
        changes.append(f"{name}: {what} ({after}'s value lies in [{lo:g}, {hi:g}], where {op} is the identity)")
    return [make_node(name, op, [bn.name], [bn.type], attrs, origin=after)]


def deepen(graph: Graph, after: str, *, kernel: int = 3, rng: np.random.Generator | None = None,
           calibration=None) -> PassResult:
    """Insert an identity conv2d/linear -> batchnorm (-> relu) block after node `after` (see module doc).

    kernel:      odd kernel size of the new conv2d (ignored after an NC value, where the layer is linear).
    rng:         unused (the block is deterministic); taken so every pass has the same signature.
    calibration: (mean, var) per channel of `after`'s value on training data, from `calibration_stats`.
    """
    del rng  # deterministic: an identity block has nothing to draw
    if after not in graph:
        raise UnknownNodeError(graph, after)
    node = graph.node(after)
    if node.type.rank not in (2, 4):
        raise PassError(f"deepen {after}: its value {node.type} is neither NCHW nor NC")
    exposed = graph.output_names_of(after)
    if exposed:
        raise PassError(f"deepen {after}: its value is the graph output {exposed[0]!r}; a block after it would "
                        f"change the output (deepen an earlier node)")
    consumers = graph.consumers(after)
    if not consumers:
        raise PassError(f"deepen {after}: no node reads its value, so a block after it would compute nothing")
    conv = node.type.rank == 4
    if conv:
        if isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or kernel < 1 or kernel % 2 == 0:
            raise PassError(f"deepen {after}: kernel {kernel!r} is not an odd positive size; an identity kernel "
                            f"needs a centre tap (use 1, 3, 5, ...)")
        kernel = int(kernel)
    if calibration is not None:
        calibration = _check_calibration(after, node.type.channels, calibration)

    names = graph.namespace()  # one authority for the block's names: they cannot collide
    layer_name = names.fresh(f"deepen_{after}")
    bn_name = names.fresh(f"deepen_{after}_bn")
    layer, line = _identity_layer(layer_name, node, kernel)
    bn, bn_line = _batchnorm(bn_name, layer, after, calibration)
    block, changes = [layer, bn], [line, bn_line]
    block.extend(_activation(graph, node, bn, names, changes))
    out = block[-1].name
    changes.append(f"{', '.join(consumers)} now read{'s' if len(consumers) == 1 else ''} {out} instead of {after}")

    readers = set(consumers)
    nodes = []
    for n in graph.nodes:
        if n.name in readers:
            n = n.replace(inputs=tuple(out if i == after else i for i in n.inputs))
        nodes.append(n)
        if n.name == after:
            nodes.extend(block)
    record = {"pass": "deepen", "after": after, "calibrated": calibration is not None}
    if conv:
        record["kernel"] = kernel
    return PassResult(graph.replace(nodes=nodes), changes, record,
                      rewritten=frozenset([*readers, *(n.name for n in block)]))
