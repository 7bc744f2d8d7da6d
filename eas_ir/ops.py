"""The closed op set of the IR: each op with its attributes, weights and shape rule.

An op spec is data: the attributes it takes (with defaults), how many inputs, which weights and
their shapes, a function from input types and attributes to the output type, and its numpy kernel
(`kernels.py`, the reference semantics the interpreter runs). The verifier, the text parser, the
builder and the interpreter read these specs; the backends read the matching entry of
`easc.backends.optable` (ONNX patterns in and out, torch module or function, code line), which
lives outside the IR because the IR imports neither torch nor onnx. Adding an op is one entry here
and one entry there.

Conventions: values are NCHW (rank 4) or NC (rank 2); the channel axis is 1; spatial attributes
are pairs `(height, width)`; padding is symmetric per axis, as in torch.nn.Conv2d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import kernels
from .types import BATCH, TensorType


class ShapeError(ValueError):
    """An op's inputs or attributes do not fit its shape rule."""


def _pair(value) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ShapeError(f"expected a pair, got {value!r}")
        return (int(value[0]), int(value[1]))
    return (int(value), int(value))


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1,
                     ceil: bool = False) -> int:
    """Output length of a sliding window, as torch and ONNX define it.

    floor((size + 2 pad - dilation (kernel - 1) - 1) / stride) + 1, or with ceil instead of floor,
    where the last window must still start inside the input or its left padding.
    """
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    if span < 0:
        raise ShapeError(f"window {kernel} (dilation {dilation}) is larger than the padded input {size + 2 * pad}")
    if ceil:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = span // stride + 1
    return out


def ceil_overhang(size: int, kernel: int, stride: int, pad: int, out: int) -> int:
    """Extra right padding a pool of `out` windows needs beyond its symmetric `pad` (ceil mode's last window)."""
    return max(0, (out - 1) * stride + kernel - (size + 2 * pad))


def plain_ceil_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """The output length ONNX shape inference (onnx 1.23) gives a ceil_mode=1 pool: the plain ceiling,
    keeping a last window that starts in the right padding (torch and onnxruntime drop it)."""
    return -(-(size + 2 * pad - kernel) // stride) + 1


def _expect_rank(t: TensorType, rank: int, what: str):
    if t.rank != rank:
        raise ShapeError(f"{what} expects a rank-{rank} input, got {t}")


def _conv2d_rule(inputs, attrs):
    (x,) = inputs
    _expect_rank(x, 4, "conv2d")
    groups = attrs["groups"]
    if x.channels % groups or attrs["out"] % groups:
        raise ShapeError(f"groups={groups} must divide input channels {x.channels} and out={attrs['out']}")
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    ph, pw = attrs["padding"]
    dh, dw = attrs["dilation"]
    h = pool_output_size(x.shape[2], kh, sh, ph, dh)
    w = pool_output_size(x.shape[3], kw, sw, pw, dw)
    return TensorType((BATCH, attrs["out"], h, w), x.dtype)


def _conv2d_weights(inputs, attrs):
    (x,) = inputs
    shapes = {"weight": (attrs["out"], x.channels // attrs["groups"]) + tuple(attrs["kernel"])}
    if attrs["bias"]:
        shapes["bias"] = (attrs["out"],)
    return shapes


def _linear_rule(inputs, attrs):
    (x,) = inputs
    _expect_rank(x, 2, "linear")
    return TensorType((BATCH, attrs["out"]), x.dtype)


def _linear_weights(inputs, attrs):
    (x,) = inputs
    shapes = {"weight": (attrs["out"], x.channels)}
    if attrs["bias"]:
        shapes["bias"] = (attrs["out"],)
    return shapes


def _batchnorm_rule(inputs, attrs):
    (x,) = inputs
    if x.rank not in (2, 4):
        raise ShapeError(f"batchnorm expects a rank-2 or rank-4 input, got {x}")
    return x


def _batchnorm_weights(inputs, attrs):
    c = (inputs[0].channels,)
    return {"scale": c, "bias": c, "mean": c, "var": c}


def _same_rule(inputs, attrs):
    return inputs[0]


def _pool_rule(inputs, attrs):
    (x,) = inputs
    _expect_rank(x, 4, "pooling")
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    ph, pw = attrs["padding"]
    if ph * 2 > kh or pw * 2 > kw:
        raise ShapeError(f"padding {attrs['padding']} must be at most half the kernel {attrs['kernel']}")
    h = pool_output_size(x.shape[2], kh, sh, ph, 1, attrs["ceil"])
    w = pool_output_size(x.shape[3], kw, sw, pw, 1, attrs["ceil"])
    return TensorType((BATCH, x.channels, h, w), x.dtype)


def _global_avgpool_rule(inputs, attrs):
    (x,) = inputs
    _expect_rank(x, 4, "global_avgpool")
    return TensorType((BATCH, x.channels, 1, 1), x.dtype)


def _flatten_rule(inputs, attrs):
    (x,) = inputs
    if x.rank < 2:
        raise ShapeError(f"flatten expects rank >= 2, got {x}")
    return TensorType((BATCH, math.prod(x.sample_shape)), x.dtype)


def _concat_rule(inputs, attrs):
    first = inputs[0]
    for t in inputs[1:]:
        if t.rank != first.rank or t.shape[2:] != first.shape[2:]:
            raise ShapeError(f"concat inputs must agree on all but the channel axis: {first} vs {t}")
    return first.with_channels(sum(t.channels for t in inputs))


def _add_rule(inputs, attrs):
    first = inputs[0]
    for t in inputs[1:]:
        if t != first:
            raise ShapeError(f"add inputs must have the same type: {first} vs {t}")
    return first


def _softmax_rule(inputs, attrs):
    _expect_rank(inputs[0], 2, "softmax")
    return inputs[0]


def _mul_rule(inputs, attrs):
    x, gate = inputs
    if gate == x:
        return x
    if x.rank == 4 and gate.channels == x.channels and (gate.rank == 2 or tuple(gate.shape[2:]) == (1, 1)):
        return x  # a squeeze-excitation gate: one factor per channel, broadcast over H, W
    raise ShapeError(f"mul inputs must have the same type, or the second must be (N, C, 1, 1) or (N, C) with the "
                     f"first's C channels: {x} vs {gate}")


def _slice_rule(inputs, attrs):
    (x,) = inputs
    start, end = attrs["start"], attrs["end"]
    if not 0 <= start < end <= x.channels:
        raise ShapeError(f"slice [{start}, {end}) is not a non-empty range of the {x.channels} channels of {x}")
    return x.with_channels(end - start)


def _shuffle_rule(inputs, attrs):
    (x,) = inputs
    g = attrs["groups"]
    if x.rank != 4 or g < 1 or x.channels % g:
        raise ShapeError(f"channel_shuffle(groups={g}) needs an NCHW input whose channels it divides, got {x}")
    return x


def _gather_rule(inputs, attrs):
    (x,) = inputs
    index = attrs["index"]
    if x.rank not in (2, 4) or not index or min(index) < 0 or max(index) >= x.channels:
        raise ShapeError(f"channel_gather needs a non-empty index of channels of an NC or NCHW value; got "
                         f"{len(index)} entries in [{min(index, default=0)}, {max(index, default=0)}] for {x}")
    return x.with_channels(len(index))


def shuffle_index(channels: int, groups: int) -> tuple:
    """The gather of a channel shuffle: output channel j g + i reads input channel i (C/g) + j."""
    per = channels // groups
    return tuple(i * per + j for j in range(per) for i in range(groups))


def _pad_rule(inputs, attrs):
    (x,) = inputs
    _expect_rank(x, 4, "pad")
    top, left, bottom, right = attrs["pads"]
    if min(top, left, bottom, right) < 0:
        raise ShapeError(f"pads {attrs['pads']} must be >= 0 (cropping is not a pad)")
    return TensorType((BATCH, x.channels, x.shape[2] + top + bottom, x.shape[3] + left + right), x.dtype)


def _clip_check(attrs):
    if not attrs["min"] < attrs["max"]:
        raise ShapeError(f"clip needs min < max, got [{attrs['min']}, {attrs['max']}]")


def _clip_rule(inputs, attrs):
    _clip_check(attrs)
    return inputs[0]


@dataclass(frozen=True)
class OpSpec:
    """What the IR knows about one op."""

    name: str
    doc: str
    attrs: dict = field(default_factory=dict)  # attribute name -> default (None: required)
    arity: tuple = (1, 1)  # (min, max) inputs; max None for variadic
    rule: Callable = _same_rule
    weights: Callable | None = None  # (input types, attrs) -> {weight name: shape}
    channelwise: bool = False  # maps channel c of its input to channel c of its output
    pairs: tuple = ()  # attributes given as (height, width) pairs
    kernel: Callable | None = None  # (node, input values) -> value: the reference semantics (float64)
    quads: tuple = ()  # attributes given as 4-tuples of ints
    ints: tuple = ()  # attributes that are whole numbers
    vectors: tuple = ()  # attributes given as tuples of whole numbers, any length


OPS: dict[str, OpSpec] = {}


def _op(spec: OpSpec):
    OPS[spec.name] = spec


# A graph input; its type is declared, not inferred.
_op(OpSpec("input", "a graph input", arity=(0, 0)))
# y = conv(x, weight) + bias: NCHW -> N,out,H',W' with H' = floor((H + 2p - d(k-1) - 1)/s) + 1;
# groups = in = out is a depthwise conv (one k x k filter per channel)
_op(OpSpec("conv2d", "2-D convolution",
           {"out": None, "kernel": None, "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1),
            "groups": 1, "bias": True},
           rule=_conv2d_rule, weights=_conv2d_weights, pairs=("kernel", "stride", "padding", "dilation"),
           kernel=kernels.conv2d, ints=("out", "groups")))
# y = scale (x - mean) / sqrt(var + eps) + bias per channel; shape unchanged (NC or NCHW)
_op(OpSpec("batchnorm", "batch normalisation (running statistics in eval mode)",
           {"eps": 1e-5, "momentum": 0.1}, rule=_batchnorm_rule, weights=_batchnorm_weights,
           channelwise=True, kernel=kernels.batchnorm))
# y = max(x, 0); shape unchanged
_op(OpSpec("relu", "rectified linear unit", channelwise=True, kernel=kernels.relu))
# y = min(max(x, min), max); ReLU6 is clip [0, 6]; shape unchanged
_op(OpSpec("clip", "clip to [min, max] (ReLU6: [0, 6])", {"min": 0.0, "max": 6.0}, rule=_clip_rule,
           channelwise=True, kernel=kernels.clip))
# y = x for x >= 0, slope x otherwise; shape unchanged
_op(OpSpec("leaky_relu", "leaky rectified linear unit", {"slope": 0.01}, channelwise=True,
           kernel=kernels.leaky_relu))
# y = 1 / (1 + exp(-x)); shape unchanged
_op(OpSpec("sigmoid", "logistic sigmoid", channelwise=True, kernel=kernels.sigmoid))
# y = x sigmoid(x) (swish); shape unchanged
_op(OpSpec("silu", "sigmoid-weighted linear unit (swish)", channelwise=True, kernel=kernels.silu))
# y = clip(x / 6 + 1/2, 0, 1) (torch's Hardsigmoid); shape unchanged
_op(OpSpec("hardsigmoid", "hard sigmoid, relu6(x + 3) / 6", channelwise=True, kernel=kernels.hardsigmoid))
# y = x relu6(x + 3) / 6; shape unchanged
_op(OpSpec("hardswish", "hard swish, x relu6(x + 3) / 6", channelwise=True, kernel=kernels.hardswish))
# y = max over k x k windows; H' as conv (ceil optional), channels unchanged
_op(OpSpec("maxpool2d", "2-D max pooling",
           {"kernel": None, "stride": None, "padding": (0, 0), "ceil": False},
           rule=_pool_rule, channelwise=True, pairs=("kernel", "stride", "padding"), kernel=kernels.maxpool2d))
# y = mean over k x k windows; H' as conv (ceil optional), channels unchanged
_op(OpSpec("avgpool2d", "2-D average pooling",
           {"kernel": None, "stride": None, "padding": (0, 0), "ceil": False, "count_include_pad": True},
           rule=_pool_rule, channelwise=True, pairs=("kernel", "stride", "padding"), kernel=kernels.avgpool2d))
# y = mean over H, W: NCHW -> N,C,1,1
_op(OpSpec("global_avgpool", "global average pooling", rule=_global_avgpool_rule, channelwise=True,
           kernel=kernels.global_avgpool))
# y = x with a constant border: pads = (top, left, bottom, right); NCHW -> N,C,H+top+bottom,W+left+right
_op(OpSpec("pad", "constant padding of H and W", {"pads": None, "value": 0.0}, rule=_pad_rule,
           channelwise=True, quads=("pads",), kernel=kernels.pad))
# y = x reshaped to (N, prod(rest)); channel c of NCHW becomes columns [c HW, (c+1) HW)
_op(OpSpec("flatten", "flatten all but the batch axis", rule=_flatten_rule, kernel=kernels.flatten))
# y = x weight^T + bias: N,in -> N,out
_op(OpSpec("linear", "fully connected layer", {"out": None, "bias": True},
           rule=_linear_rule, weights=_linear_weights, kernel=kernels.linear, ints=("out",)))
# y = x in eval mode (random zeroing with probability p while training); shape unchanged
_op(OpSpec("dropout", "dropout", {"p": 0.5}, channelwise=True, kernel=kernels.identity))
# y = inputs stacked along the channel axis; other axes must agree
_op(OpSpec("concat", "concatenation along the channel axis", arity=(1, None), rule=_concat_rule,
           kernel=kernels.concat))
# y = channels [start, end) of x (one part of a channel split)
_op(OpSpec("slice", "channels start..end-1 (a channel split)", {"start": None, "end": None}, rule=_slice_rule,
           kernel=kernels.slice_channels, ints=("start", "end")))
# y[:, j g + i] = x[:, i (C/g) + j]: view C as (g, C/g), swap, flatten back (ShuffleNet); shape unchanged
_op(OpSpec("channel_shuffle", "channel shuffle (reshape-transpose-reshape)", {"groups": None},
           rule=_shuffle_rule, kernel=kernels.channel_shuffle, ints=("groups",)))
# y[:, i] = x[:, index[i]]: any channel permutation, selection or repetition (ONNX Gather on axis 1 with a
# constant index, torch x[:, index]); what a channel shuffle becomes when widening makes its groups unequal
_op(OpSpec("channel_gather", "channels index[0], index[1], ... of x (a fixed gather)", {"index": None},
           rule=_gather_rule, kernel=kernels.channel_gather, vectors=("index",)))
# y = sum of inputs; all inputs have the same type
_op(OpSpec("add", "element-wise sum", arity=(2, None), rule=_add_rule, kernel=kernels.add))
# y = a * b; b has a's type or is (N, C, 1, 1) or (N, C) (a squeeze-excitation gate, broadcast over H, W)
_op(OpSpec("mul", "element-wise product (per-channel gate broadcast)", arity=(2, 2), rule=_mul_rule,
           kernel=kernels.mul))
# y = exp(x) / sum exp(x) over the class axis; N,C -> N,C
_op(OpSpec("softmax", "softmax over axis 1", rule=_softmax_rule, kernel=kernels.softmax))

ACTIVATION_OPS = ("relu", "clip", "leaky_relu", "sigmoid", "silu", "hardsigmoid", "hardswish")
"""Element-wise non-linearities (one value in, one out, channel by channel)."""

WEIGHTED_OPS = tuple(name for name, spec in OPS.items() if spec.weights is not None)
LAYER_OPS = ("conv2d", "linear")
"""Ops that carry a width: the layers that widen / deepen / skip edits act on."""


def normalise_attrs(op: str, attrs: dict) -> dict:
    """Fill defaults, turn pairs into tuples and check that every attribute is known.

    Raises `ShapeError` naming the attribute at fault.
    """
    spec = OPS[op]
    unknown = sorted(set(attrs) - set(spec.attrs))
    if unknown:
        raise ShapeError(f"{op} has no attribute {unknown[0]!r} (it takes: {', '.join(spec.attrs) or 'none'})")
    out = {}
    for key, default in spec.attrs.items():
        value = attrs.get(key, default)
        if value is None and key == "stride" and "kernel" in attrs:
            value = attrs["kernel"]  # pooling: stride defaults to the kernel, as in torch
        if value is None:
            raise ShapeError(f"{op} needs attribute {key!r}")
        if key in spec.pairs:
            value = _pair(value)
        elif key in spec.quads:
            if not isinstance(value, (list, tuple)) or len(value) != 4:
                raise ShapeError(f"{op} attribute {key!r} must be 4 integers, got {value!r}")
            value = tuple(int(v) for v in value)
        elif key in spec.vectors:
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                value = (value,)
            if not isinstance(value, (list, tuple, np.ndarray)) or not all(
                    isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
                raise ShapeError(f"{op} attribute {key!r} must be a tuple of integers, got {value!r}"[:300])
            value = tuple(int(v) for v in value)
        elif isinstance(default, bool) or isinstance(value, bool):
            value = bool(value)
        elif isinstance(default, float):
            value = float(value)
        elif key in spec.ints:
            value = int(value)
        out[key] = value
    return out


def infer_type(op: str, inputs: list, attrs: dict) -> TensorType:
    """The output type of `op` applied to values of `inputs` types (ShapeError when it does not fit)."""
    spec = OPS[op]
    lo, hi = spec.arity
    if len(inputs) < lo or (hi is not None and len(inputs) > hi):
        want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any number of'}"
        raise ShapeError(f"{op} takes {want} inputs, got {len(inputs)}")
    return spec.rule(list(inputs), attrs)


def weight_shapes(op: str, inputs: list, attrs: dict) -> dict:
    """The weights `op` must carry and their shapes, for inputs of the given types."""
    spec = OPS[op]
    return {} if spec.weights is None else spec.weights(list(inputs), attrs)
