"""Numpy kernels of the IR's ops: what each op means, in float64 (see `interpret.py`).

Each function takes the node (for its attributes, weights and inferred type) and the values of its
inputs, and returns its value. `ops.py` names the kernel of every op in its entry. A kernel computes in the
floating type of its input (weights are cast to it): float64 for the checks, float32 where only statistics
are wanted (`run_all(..., dtype=np.float32)`, batchnorm calibration).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _pad(x, ph, pw, value=0.0, extra_h=0, extra_w=0):
    if not (ph or pw or extra_h or extra_w):
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=value)


def _windows(x, kh, kw, sh, sw, dh=1, dw=1):
    """Sliding windows of x (N,C,H,W) -> (N,C,H',W',kh,kw)."""
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    return sliding_window_view(x, (span_h, span_w), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]


def conv2d_array(x, weight, bias, stride, padding, dilation, groups):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    x = _pad(x, ph, pw)
    out_c, in_per_group, kh, kw = weight.shape
    per_out = out_c // groups
    if kh == kw == 1 and groups == 1:  # a 1x1 conv is one matrix product per sample (BLAS, no window copy)
        x = x[:, :, ::sh, ::sw]
        y = np.matmul(weight[:, :, 0, 0], x.reshape(x.shape[0], x.shape[1], -1)).reshape(
            (x.shape[0], out_c) + x.shape[2:])
        return y + bias.reshape(1, -1, 1, 1) if bias is not None else y
    win = _windows(x, kh, kw, sh, sw, dh, dw)  # N,C,H',W',kh,kw
    if groups > 1 and in_per_group == 1 and per_out == 1:  # depthwise: one filter per channel
        if win[..., 0, 0].size * kh * kw > DEPTHWISE_SHIFTED:
            y = _depthwise_shifted(win, weight[:, 0])
        else:
            y = np.einsum("nchwij,cij->nchw", win, weight[:, 0], optimize=True)
    else:
        outs = []
        for g in range(groups):
            xs = win[:, g * in_per_group:(g + 1) * in_per_group]
            ws = weight[g * per_out:(g + 1) * per_out]
            outs.append(np.einsum("nchwij,ocij->nohw", xs, ws, optimize=True))
        y = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


DEPTHWISE_SHIFTED = 2_000_000
"""Window elements (N x C x H' x W' x kh x kw) above which a depthwise conv is summed over its kernel offsets
instead of contracted by einsum, which first copies every window: for EfficientNet-B0's 5x5 depthwise conv of 240
channels at 16x16 on 4 probes that copy is 49 MB of float64, and the einsum took 7-33 ms from run to run against
a steady 6 ms summed (two buffers of the output's size). Below ~1.3M elements einsum was the faster one. A whole
`easc transform` of EfficientNet-B0 or MobileNetV2 took the same wall either way (alternating runs)."""


def _depthwise_shifted(win, weight):
    """sum over (i, j) of window element (i, j) times each channel's weight (i, j): y[n,c,h,w] =
    sum_ij x[n,c,h*s+i*d,w*s+j*d] w[c,i,j], one strided view of the input per kernel offset, no window copy."""
    kh, kw = weight.shape[1:]
    y = np.zeros(win.shape[:4], dtype=np.result_type(win, weight))
    term = np.empty_like(y)  # one buffer for every offset's products: no new array per offset
    for i in range(kh):
        for j in range(kw):
            np.multiply(win[..., i, j], weight[:, i, j].reshape(1, -1, 1, 1), out=term)
            y += term
    return y


def conv2d(node, args):
    a, w = node.attrs, node.weights
    return conv2d_array(args[0], w["weight"].astype(args[0].dtype), w.get("bias"), a["stride"], a["padding"],
                        a["dilation"], a["groups"])


def linear(node, args):
    y = args[0] @ node.weights["weight"].astype(args[0].dtype).T
    return y + node.weights["bias"] if node.attrs["bias"] else y


def batchnorm(node, args):
    x, w, eps = args[0], node.weights, node.attrs["eps"]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = w["scale"].astype(x.dtype) / np.sqrt(w["var"].astype(x.dtype) + x.dtype.type(eps))
    return (x - w["mean"].reshape(shape)) * inv.reshape(shape) + w["bias"].reshape(shape)


def _pool(x, node, kind: str):
    (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
    oh, ow = node.type.shape[2], node.type.shape[3]
    from .ops import ceil_overhang  # ops imports this module: the pool arithmetic lives there

    eh = ceil_overhang(x.shape[2], kh, sh, ph, oh)
    ew = ceil_overhang(x.shape[3], kw, sw, pw, ow)
    if kind == "max":
        return _over_offsets(_windows(_pad(x, ph, pw, -np.inf, eh, ew), kh, kw, sh, sw), oh, ow, np.maximum)
    total = _over_offsets(_windows(_pad(x, ph, pw, 0.0, eh, ew), kh, kw, sh, sw), oh, ow, np.add)
    # The divisor counts the explicit padding when count_include_pad is set, never ceil's overhang.
    ones = np.ones((1, 1) + x.shape[2:], dtype=x.dtype)
    pad_value = 1.0 if node.attrs["count_include_pad"] else 0.0
    counted = np.pad(ones, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    counted = np.pad(counted, ((0, 0), (0, 0), (0, eh), (0, ew)))
    return total / _over_offsets(_windows(counted, kh, kw, sh, sw), oh, ow, np.add)


def _over_offsets(win, oh, ow, combine):
    """combine (np.maximum / np.add) over the kernel offsets (i, j) of a window view (`_windows`), the first oh x
    ow windows: a pool as kh*kw whole-array operations on strided views, into one buffer. Reducing the window
    view over its last two axes instead (what this replaced) walked the input element by element: 9 ms for
    ResNet's 3x3 stride-2 max pool of 64 channels at 32x32 on 4 probes, against 0.6 ms here."""
    out = np.array(win[:, :, :oh, :ow, 0, 0])
    for i, j in np.ndindex(*win.shape[4:]):
        if i or j:
            combine(out, win[:, :, :oh, :ow, i, j], out=out)
    return out


def maxpool2d(node, args):
    return _pool(args[0], node, "max")


def avgpool2d(node, args):
    return _pool(args[0], node, "avg")


def global_avgpool(node, args):
    return args[0].mean(axis=(2, 3), keepdims=True)


def flatten(node, args):
    return args[0].reshape(args[0].shape[0], -1)


def identity(node, args):
    return args[0]


def concat(node, args):
    return np.concatenate(args, axis=1)


def add(node, args):
    out = args[0]
    for x in args[1:]:
        out = out + x
    return out


def mul(node, args):
    # the second factor is the same shape, (N, C, 1, 1) or (N, C): broadcast per channel over H, W
    x, gate = args
    if gate.ndim == 2 and x.ndim == 4:
        gate = gate[:, :, None, None]
    return x * gate


def softmax(node, args):
    x = args[0]
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def relu(node, args):
    return np.maximum(args[0], 0.0)


def clip(node, args):
    return np.clip(args[0], node.attrs["min"], node.attrs["max"])


def leaky_relu(node, args):
    x = args[0]
    return np.where(x >= 0, x, x * node.attrs["slope"])


def _sigmoid(x):
    # exp of -|x| only: no overflow warning for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid(node, args):
    return _sigmoid(args[0])


def silu(node, args):
    return args[0] * _sigmoid(args[0])


def hardsigmoid(node, args):
    return np.clip(args[0] / 6.0 + 0.5, 0.0, 1.0)


def hardswish(node, args):
    x = args[0]
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def slice_channels(node, args):
    return args[0][:, node.attrs["start"]:node.attrs["end"]]


def channel_shuffle(node, args):
    # the same as channel_gather with ops.shuffle_index(C, g)
    x, g = args[0], node.attrs["groups"]
    n, c = x.shape[:2]
    return x.reshape((n, g, c // g) + x.shape[2:]).swapaxes(1, 2).reshape(x.shape)


def pad(node, args):
    top, left, bottom, right = node.attrs["pads"]
    return np.pad(args[0], ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=node.attrs["value"])


def channel_gather(node, args):
    return args[0][:, list(node.attrs["index"])]
