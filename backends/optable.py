"""How each IR op leaves the IR: its torch module or function, its line of exported code, its ONNX nodes.

This is the backends' half of an op's single declaration (the IR's half, spec + shape rule + kernel, is
`easc.ir.ops.OPS`, which imports neither torch nor onnx). One `Lowering` per op, read by

- `torch.module.to_module`   through `module(node, in_type)` (a layer) or `fx(graph, node, args, ident)`
  (an expression: `torch.cat`, `+`, `*`, a channel slice, `torch.softmax`);
- `torch.codegen`            through `code(node, in_type)` (the layer's constructor) or
  `expr(node, args)` (the expression's source);
- `onnx.exporter`            through `onnx(ctx, node, in_types, inputs, output)`, which returns the ONNX
  nodes computing the op (most ops are one node; silu is Sigmoid then Mul, a channel shuffle is
  Reshape-Transpose-Reshape, exactly the forms the importer reads back);
- `onnx.importer` and `torch.fx_import` through `onnx_in` / `torch_modules`: the one-to-one patterns
  (an ONNX op type, a torch module class) that lower onto the op with no attribute of their own;
  patterns with attributes or several nodes are methods of the importers named in `onnx_in`.

torch and onnx are imported inside the functions, so reading the table imports neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from easc.ir import OPS


@dataclass(frozen=True)
class Lowering:
    op: str
    onnx: Callable  # (ctx, node, in_types, inputs, output) -> [onnx.NodeProto]
    module: Callable | None = None  # (node, in_type) -> nn.Module, weights copied from the node
    code: Callable | None = None  # (node, in_type) -> source of the module's constructor
    fx: Callable | None = None  # (fx graph, node, fx args, ident, input types) -> fx node of an expression op
    expr: Callable | None = None  # (node, argument sources, input types) -> source of the expression
    onnx_in: tuple = ()  # ONNX op types read as this op
    torch_modules: tuple = ()  # names of torch.nn classes read as this op (attribute-free)


LOWERINGS: dict[str, Lowering] = {}


def _entry(lowering: Lowering):
    if lowering.op not in OPS:
        raise KeyError(f"lowering of {lowering.op!r}, which is not an IR op")
    LOWERINGS[lowering.op] = lowering


# -- shared helpers ----------------------------------------------------------------------------------
def _tensor(array):
    import torch

    # IR weights are read-only numpy arrays: copy, so training never writes into a graph.
    return torch.tensor(np.asarray(array, dtype=np.float32))


def _copy_weights(layer, w):
    import torch

    with torch.no_grad():
        layer.weight.copy_(_tensor(w["weight"]))
        if layer.bias is not None:
            layer.bias.copy_(_tensor(w["bias"]))
    return layer


def _pair_src(value) -> str:
    h, w = value
    return str(h) if h == w else f"({h}, {w})"


def float_src(v: float) -> str:
    """A float as Python source (`float('inf')` for infinities, which `repr` writes as a bare name)."""
    v = float(v)
    if math.isinf(v):
        return "float('inf')" if v > 0 else "float('-inf')"
    return repr(v)


def _simple(op_type: str, **attrs):
    def lower(ctx, node, in_types, inputs, output):
        return [ctx.make(op_type, inputs, output, **attrs)]
    return lower


# -- layers ----------------------------------------------------------------------------------------
def _conv_module(node, in_type):
    from torch import nn

    a = node.attrs
    layer = nn.Conv2d(in_type.channels, a["out"], a["kernel"], stride=a["stride"], padding=a["padding"],
                      dilation=a["dilation"], groups=a["groups"], bias=a["bias"])
    return _copy_weights(layer, node.weights)


def _conv_code(node, in_type):
    a = node.attrs
    args = [str(in_type.channels), str(a["out"]), f"kernel_size={_pair_src(a['kernel'])}"]
    for key, default in (("stride", (1, 1)), ("padding", (0, 0)), ("dilation", (1, 1))):
        if a[key] != default:
            args.append(f"{key}={_pair_src(a[key])}")
    if a["groups"] != 1:
        args.append(f"groups={a['groups']}")
    if not a["bias"]:
        args.append("bias=False")
    return f"nn.Conv2d({', '.join(args)})"


def _conv_onnx(ctx, node, in_types, inputs, output):
    a, w = node.attrs, node.weights
    ins = inputs + [ctx.init("weight", w["weight"])]
    if a["bias"]:
        ins.append(ctx.init("bias", w["bias"]))
    (ph, pw) = a["padding"]
    return [ctx.make("Conv", ins, output, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                     pads=[ph, pw, ph, pw], dilations=list(a["dilation"]), group=a["groups"])]


def _linear_module(node, in_type):
    from torch import nn

    return _copy_weights(nn.Linear(in_type.channels, node.attrs["out"], bias=node.attrs["bias"]), node.weights)


def _linear_code(node, in_type):
    bias = "" if node.attrs["bias"] else ", bias=False"
    return f"nn.Linear({in_type.channels}, {node.attrs['out']}{bias})"


def _linear_onnx(ctx, node, in_types, inputs, output):
    ins = inputs + [ctx.init("weight", node.weights["weight"])]
    if node.attrs["bias"]:
        ins.append(ctx.init("bias", node.weights["bias"]))
    return [ctx.make("Gemm", ins, output, transB=1)]


def _bn_module(node, in_type):
    import torch
    from torch import nn

    a, w = node.attrs, node.weights
    cls = nn.BatchNorm2d if in_type.rank == 4 else nn.BatchNorm1d
    layer = cls(in_type.channels, eps=a["eps"], momentum=a["momentum"])
    with torch.no_grad():
        layer.weight.copy_(_tensor(w["scale"]))
        layer.bias.copy_(_tensor(w["bias"]))
        layer.running_mean.copy_(_tensor(w["mean"]))
        layer.running_var.copy_(_tensor(w["var"]))
    return layer


def _bn_code(node, in_type):
    a = node.attrs
    args = [str(in_type.channels)]
    if a["eps"] != 1e-5:
        args.append(f"eps={a['eps']!r}")
    if a["momentum"] != 0.1:
        args.append(f"momentum={a['momentum']!r}")
    return f"nn.{'BatchNorm2d' if in_type.rank == 4 else 'BatchNorm1d'}({', '.join(args)})"


def _bn_onnx(ctx, node, in_types, inputs, output):
    ins = inputs + [ctx.init(key, node.weights[key]) for key in ("scale", "bias", "mean", "var")]
    return [ctx.make("BatchNormalization", ins, output, epsilon=node.attrs["eps"],
                     momentum=1.0 - node.attrs["momentum"])]


def _pool_module(node, in_type):
    from torch import nn

    a = node.attrs
    if node.op == "maxpool2d":
        return nn.MaxPool2d(a["kernel"], stride=a["stride"], padding=a["padding"], ceil_mode=a["ceil"])
    return nn.AvgPool2d(a["kernel"], stride=a["stride"], padding=a["padding"], ceil_mode=a["ceil"],
                        count_include_pad=a["count_include_pad"])


def _pool_code(node, in_type):
    a = node.attrs
    args = [_pair_src(a["kernel"])]
    if a["stride"] != a["kernel"]:
        args.append(f"stride={_pair_src(a['stride'])}")
    if a["padding"] != (0, 0):
        args.append(f"padding={_pair_src(a['padding'])}")
    if a["ceil"]:
        args.append("ceil_mode=True")
    if node.op == "avgpool2d" and not a["count_include_pad"]:
        args.append("count_include_pad=False")
    return f"nn.{'MaxPool2d' if node.op == 'maxpool2d' else 'AvgPool2d'}({', '.join(args)})"


def _pool_onnx(ctx, node, in_types, inputs, output):
    from .onnx.exporter import pool_attrs
    from .onnx.importer import CEIL_KEY

    attrs, ceil_marker = pool_attrs(node, in_types[0])
    if node.op == "avgpool2d":
        made = ctx.make("AveragePool", inputs, output, count_include_pad=int(node.attrs["count_include_pad"]),
                        **attrs)
    else:
        made = ctx.make("MaxPool", inputs, output, **attrs)
    if ceil_marker:
        made.metadata_props.add(key=CEIL_KEY, value="1")
    return [made]


def _nn(cls_name: str, *args_of):
    """A module op whose torch module is `nn.<cls_name>(*args)`, the args computed from the node."""
    def module(node, in_type):
        from torch import nn

        return getattr(nn, cls_name)(*[f(node) for f in args_of])

    def code(node, in_type):
        return f"nn.{cls_name}({', '.join(_src(f(node)) for f in args_of)})"
    return module, code


def _src(v) -> str:
    if isinstance(v, float):
        return float_src(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_src(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def _is_relu6(node) -> bool:
    return node.attrs["min"] == 0.0 and node.attrs["max"] == 6.0


def _clip_module(node, in_type):
    from torch import nn

    return nn.ReLU6() if _is_relu6(node) else nn.Hardtanh(node.attrs["min"], node.attrs["max"])


def _clip_code(node, in_type):
    if _is_relu6(node):
        return "nn.ReLU6()"
    return f"nn.Hardtanh({float_src(node.attrs['min'])}, {float_src(node.attrs['max'])})"


def _clip_onnx(ctx, node, in_types, inputs, output):
    bounds = [ctx.init(key, np.float32(node.attrs[key])) for key in ("min", "max")]
    return [ctx.make("Clip", inputs + bounds, output)]


def _hardswish_onnx(ctx, node, in_types, inputs, output):
    if ctx.opset >= 14:
        return [ctx.make("HardSwish", inputs, output)]
    gate = ctx.value("hardsigmoid")  # HardSwish is opset 14: x * hardsigmoid(x) before
    return [ctx.make("HardSigmoid", inputs, gate, name=gate, alpha=1.0 / 6.0, beta=0.5),
            ctx.make("Mul", [inputs[0], gate], output)]


def _silu_onnx(ctx, node, in_types, inputs, output):
    # ONNX has no SiLU before opset 24: x * sigmoid(x), the form both torch exporters write too
    gate = ctx.value("sigmoid")
    return [ctx.make("Sigmoid", inputs, gate, name=gate), ctx.make("Mul", [inputs[0], gate], output)]


def _pad_lr_tb(node) -> tuple:
    top, left, bottom, right = node.attrs["pads"]
    return (left, right, top, bottom)


def _pad_module(node, in_type):
    from torch import nn

    if node.attrs["value"] == 0.0:
        return nn.ZeroPad2d(_pad_lr_tb(node))
    return nn.ConstantPad2d(_pad_lr_tb(node), node.attrs["value"])


def _pad_code(node, in_type):
    if node.attrs["value"] == 0.0:
        return f"nn.ZeroPad2d({_src(_pad_lr_tb(node))})"
    return f"nn.ConstantPad2d({_src(_pad_lr_tb(node))}, {float_src(node.attrs['value'])})"


def _pad_onnx(ctx, node, in_types, inputs, output):
    top, left, bottom, right = node.attrs["pads"]
    pads = ctx.init("pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
    value = ctx.init("value", np.float32(node.attrs["value"]))
    return [ctx.make("Pad", inputs + [pads, value], output, mode="constant")]


def _shuffle_onnx(ctx, node, in_types, inputs, output):
    g = node.attrs["groups"]
    _, c, h, w = in_types[0].shape
    # 0 in a Reshape target copies the input's dimension: the batch, whatever its size
    split = ctx.init("split_shape", np.array([0, g, c // g, h, w], np.int64))
    merge = ctx.init("merge_shape", np.array([0, c, h, w], np.int64))
    # the Transpose carries the node's name: it is the node the importer turns back into the shuffle
    grouped, swapped, merged = ctx.value("grouped"), ctx.value("swapped"), ctx.value("merged")
    return [ctx.make("Reshape", [inputs[0], split], grouped, name=grouped),
            ctx.make("Transpose", [grouped], swapped, perm=[0, 2, 1, 3, 4]),
            ctx.make("Reshape", [swapped, merge], output, name=merged)]


# -- expressions -----------------------------------------------------------------------------------
def _concat_fx(fg, node, args, ident, in_types):
    import torch

    return fg.create_node("call_function", torch.cat, (list(args),), {"dim": 1}, name=ident)


def _add_fx(fg, node, args, ident, in_types):
    import operator

    acc = args[0]
    for k, other in enumerate(args[1:], start=1):
        last = k == len(args) - 1
        acc = fg.create_node("call_function", operator.add, (acc, other), name=ident if last else f"{ident}_partial")
    return acc


def _mul_fx(fg, node, args, ident, in_types):
    import operator

    x, gate = args
    if in_types[1].rank == 2 and in_types[0].rank == 4:  # an (N, C) gate: unsqueezed to (N, C, 1, 1)
        gate = fg.create_node("call_function", operator.getitem, (gate, (slice(None), slice(None), None, None)),
                              name=f"{ident}_gate")
    return fg.create_node("call_function", operator.mul, (x, gate), name=ident)


def _mul_expr(node, args, in_types) -> str:
    if in_types[1].rank == 2 and in_types[0].rank == 4:
        return f"{args[0]} * {args[1]}[:, :, None, None]"
    return f"{args[0]} * {args[1]}"


def _mul_onnx(ctx, node, in_types, inputs, output):
    if in_types[1].rank == 2 and in_types[0].rank == 4:
        gate = ctx.value("gate")
        axes = ctx.init("axes", np.array([2, 3], np.int64))
        return [ctx.make("Unsqueeze", [inputs[1], axes], gate, name=gate), ctx.make("Mul", [inputs[0], gate], output)]
    return [ctx.make("Mul", inputs, output)]


def _softmax_fx(fg, node, args, ident, in_types):
    import torch

    return fg.create_node("call_function", torch.softmax, (args[0],), {"dim": 1}, name=ident)


def _slice_fx(fg, node, args, ident, in_types):
    import operator

    index = (slice(None), slice(node.attrs["start"], node.attrs["end"]))
    return fg.create_node("call_function", operator.getitem, (args[0], index), name=ident)


def _slice_onnx(ctx, node, in_types, inputs, output):
    starts = ctx.init("starts", np.array([node.attrs["start"]], np.int64))
    ends = ctx.init("ends", np.array([node.attrs["end"]], np.int64))
    axes = ctx.init("axes", np.array([1], np.int64))
    return [ctx.make("Slice", inputs + [starts, ends, axes], output)]


def _gather_fx(fg, node, args, ident, in_types):
    import torch

    # index_select with an index made on x's device: both torch ONNX exporters write it as Gather on axis 1
    device = fg.create_node("call_function", getattr, (args[0], "device"), name=f"{ident}_device")
    index = fg.create_node("call_function", torch.tensor, (list(node.attrs["index"]),), {"device": device},
                           name=f"{ident}_index")
    return fg.create_node("call_function", torch.index_select, (args[0], 1, index), name=ident)


def _gather_expr(node, args, in_types) -> str:
    return f"torch.index_select({args[0]}, 1, torch.tensor({list(node.attrs['index'])}, device={args[0]}.device))"


def _gather_onnx(ctx, node, in_types, inputs, output):
    index = ctx.init("index", np.array(node.attrs["index"], np.int64))
    return [ctx.make("Gather", inputs + [index], output, axis=1)]


def _add_onnx(ctx, node, in_types, inputs, output):
    return [ctx.make("Add" if len(inputs) == 2 else "Sum", inputs, output)]


def _dropout_onnx(ctx, node, in_types, inputs, output):
    return [ctx.make("Dropout", inputs + [ctx.init("ratio", np.float32(node.attrs["p"]))], output)]


_conv = dict(module=_conv_module, code=_conv_code)
_entry(Lowering("conv2d", _conv_onnx, **_conv))
_entry(Lowering("linear", _linear_onnx, module=_linear_module, code=_linear_code))
_entry(Lowering("batchnorm", _bn_onnx, module=_bn_module, code=_bn_code))
_entry(Lowering("relu", _simple("Relu"), *_nn("ReLU"), onnx_in=("Relu",), torch_modules=("ReLU",)))
_entry(Lowering("clip", _clip_onnx, module=_clip_module, code=_clip_code, onnx_in=("Clip",),
                torch_modules=("ReLU6", "Hardtanh")))
_entry(Lowering("leaky_relu", lambda ctx, node, t, i, o: [ctx.make("LeakyRelu", i, o, alpha=node.attrs["slope"])],
                *_nn("LeakyReLU", lambda n: n.attrs["slope"]), onnx_in=("LeakyRelu",), torch_modules=("LeakyReLU",)))
_entry(Lowering("sigmoid", _simple("Sigmoid"), *_nn("Sigmoid"), onnx_in=("Sigmoid",), torch_modules=("Sigmoid",)))
_entry(Lowering("silu", _silu_onnx, *_nn("SiLU"), torch_modules=("SiLU",)))
_entry(Lowering("hardsigmoid", _simple("HardSigmoid", alpha=1.0 / 6.0, beta=0.5), *_nn("Hardsigmoid"),
                onnx_in=("HardSigmoid",), torch_modules=("Hardsigmoid",)))
_entry(Lowering("hardswish", _hardswish_onnx, *_nn("Hardswish"), onnx_in=("HardSwish",),
                torch_modules=("Hardswish",)))
_entry(Lowering("maxpool2d", _pool_onnx, module=_pool_module, code=_pool_code, onnx_in=("MaxPool",)))
_entry(Lowering("avgpool2d", _pool_onnx, module=_pool_module, code=_pool_code, onnx_in=("AveragePool",)))
_entry(Lowering("global_avgpool", _simple("GlobalAveragePool"), *_nn("AdaptiveAvgPool2d", lambda n: 1),
                onnx_in=("GlobalAveragePool",)))
_entry(Lowering("pad", _pad_onnx, module=_pad_module, code=_pad_code, onnx_in=("Pad",)))
_entry(Lowering("flatten", _simple("Flatten", axis=1), *_nn("Flatten")))  # start_dim=1, the default
_entry(Lowering("dropout", _dropout_onnx, *_nn("Dropout", lambda n: n.attrs["p"]), onnx_in=("Dropout",)))
_entry(Lowering("channel_shuffle", _shuffle_onnx, *_nn("ChannelShuffle", lambda n: n.attrs["groups"]),
                torch_modules=("ChannelShuffle",)))
_entry(Lowering("concat", _simple("Concat", axis=1), fx=_concat_fx,
                expr=lambda node, args, in_types: f"torch.cat([{', '.join(args)}], dim=1)", onnx_in=("Concat",)))
_entry(Lowering("add", _add_onnx, fx=_add_fx, expr=lambda node, args, in_types: " + ".join(args),
                onnx_in=("Add", "Sum")))
_entry(Lowering("mul", _mul_onnx, fx=_mul_fx, expr=_mul_expr, onnx_in=("Mul",)))
_entry(Lowering("slice", _slice_onnx, fx=_slice_fx,
                expr=lambda node, args, in_types: f"{args[0]}[:, {node.attrs['start']}:{node.attrs['end']}]",
                onnx_in=("Slice", "Split")))
_entry(Lowering("channel_gather", _gather_onnx, fx=_gather_fx, expr=_gather_expr))  # Gather: importer._op_Gather
_entry(Lowering("softmax", _simple("Softmax", axis=1), fx=_softmax_fx,
                expr=lambda node, args, in_types: f"torch.softmax({args[0]}, dim=1)", onnx_in=("Softmax",)))

MODULE_OPS = tuple(op for op, low in LOWERINGS.items() if low.module is not None)
EXPRESSION_OPS = tuple(op for op, low in LOWERINGS.items() if low.fx is not None)
