"""The IR's reference semantics: a numpy interpreter, in eval mode, computing in float64.

This is the definition of what each op means, not a fast path: the PyTorch backend generates real
modules for training, and onnxruntime is the independent oracle. Computing in float64 keeps the
interpreter's own rounding far below the tolerances used to check that a pass preserved the
function, so what a check measures is the pass, not the interpreter.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .graph import Graph, IRError, Node


def _pad(x, ph, pw, value=0.0, extra_h=0, extra_w=0):
    if not (ph or pw or extra_h or extra_w):
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=value)


def _windows(x, kh, kw, sh, sw, dh=1, dw=1):
    """Sliding windows of x (N,C,H,W) -> (N,C,H',W',kh,kw)."""
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(x, (span_h, span_w), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    return win


def conv2d(x, weight, bias, stride, padding, dilation, groups):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    x = _pad(x, ph, pw)
    out_c, in_per_group, kh, kw = weight.shape
    win = _windows(x, kh, kw, sh, sw, dh, dw)  # N,C,H',W',kh,kw
    outs = []
    per_out = out_c // groups
    for g in range(groups):
        xs = win[:, g * in_per_group:(g + 1) * in_per_group]
        ws = weight[g * per_out:(g + 1) * per_out]
        outs.append(np.einsum("nchwij,ocij->nohw", xs, ws, optimize=True))
    y = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


def _ceil_extra(size, k, s, p, out):
    """Extra right padding that ceil mode needs so that the last window fits."""
    return max(0, (out - 1) * s + k - (size + 2 * p))


def pool2d(x, node: Node, kind: str):
    (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
    oh, ow = node.type.shape[2], node.type.shape[3]
    eh = _ceil_extra(x.shape[2], kh, sh, ph, oh)
    ew = _ceil_extra(x.shape[3], kw, sw, pw, ow)
    if kind == "max":
        win = _windows(_pad(x, ph, pw, -np.inf, eh, ew), kh, kw, sh, sw)
        return win.max(axis=(4, 5))[:, :, :oh, :ow]
    total = _windows(_pad(x, ph, pw, 0.0, eh, ew), kh, kw, sh, sw).sum(axis=(4, 5))[:, :, :oh, :ow]
    # The divisor counts the explicit padding when count_include_pad is set, never ceil's overhang.
    ones = np.ones((1, 1) + x.shape[2:])
    pad_value = 1.0 if node.attrs["count_include_pad"] else 0.0
    counted = np.pad(ones, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    counted = np.pad(counted, ((0, 0), (0, 0), (0, eh), (0, ew)))
    count = _windows(counted, kh, kw, sh, sw).sum(axis=(4, 5))[:, :, :oh, :ow]
    return total / count


def batchnorm(x, w, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = w["scale"].astype(np.float64) / np.sqrt(w["var"].astype(np.float64) + eps)
    return (x - w["mean"].reshape(shape)) * inv.reshape(shape) + w["bias"].reshape(shape)


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def eval_node(node: Node, args: list) -> np.ndarray:
    """The value of one node given its input values (float64 arrays)."""
    op, a, w = node.op, node.attrs, node.weights
    if op == "conv2d":
        return conv2d(args[0], w["weight"].astype(np.float64), w.get("bias"), a["stride"], a["padding"],
                      a["dilation"], a["groups"])
    if op == "linear":
        y = args[0] @ w["weight"].astype(np.float64).T
        return y + w["bias"] if a["bias"] else y
    if op == "batchnorm":
        return batchnorm(args[0], w, a["eps"])
    if op == "relu":
        return np.maximum(args[0], 0.0)
    if op == "maxpool2d":
        return pool2d(args[0], node, "max")
    if op == "avgpool2d":
        return pool2d(args[0], node, "avg")
    if op == "global_avgpool":
        return args[0].mean(axis=(2, 3), keepdims=True)
    if op == "flatten":
        return args[0].reshape(args[0].shape[0], -1)
    if op == "dropout":
        return args[0]
    if op == "concat":
        return np.concatenate(args, axis=1)
    if op == "add":
        out = args[0]
        for x in args[1:]:
            out = out + x
        return out
    if op == "softmax":
        return _softmax(args[0])
    raise IRError(f"node {node.name!r}: the interpreter has no rule for op {op!r}")


def run_all(graph: Graph, feeds: dict) -> dict:
    """Every node's value (eval mode) for the given inputs, keyed by node name."""
    values = {}
    for node in graph.nodes:
        if node.op == "input":
            if node.name not in feeds:
                raise IRError(f"no value given for input {node.name!r}")
            x = np.asarray(feeds[node.name], dtype=np.float64)
            if x.shape[1:] != node.type.sample_shape:
                raise IRError(f"input {node.name!r} expects samples of shape {node.type.sample_shape}, "
                              f"got {x.shape[1:]}")
            values[node.name] = x
        else:
            values[node.name] = eval_node(node, [values[i] for i in node.inputs])
    return values


def run(graph: Graph, feeds: dict) -> dict:
    """The graph's outputs (eval mode), keyed by public output name."""
    values = run_all(graph, feeds)
    return {public: values[name] for public, name in graph.outputs.items()}


def probe_inputs(graph: Graph, batch: int = 4, seed: int = 0) -> dict:
    """Seeded standard-normal inputs for every graph input: the probes of numeric checks."""
    rng = np.random.default_rng(seed)
    return {n.name: rng.standard_normal((batch,) + n.type.sample_shape).astype(np.float32)
            for n in graph.inputs}
