"""`torch.nn.Module` -> IR graph, by symbolic tracing with torch.fx.

`from_module(module, example_input)` traces `module` (`torch.fx.symbolic_trace`, with the torch.nn
layers below as leaves), runs the example through the trace once to learn every value's shape
(`torch.fx.passes.shape_prop.ShapeProp`), and lowers each fx node to at most one IR node:

| IR op          | torch                                                                                 |
|----------------|---------------------------------------------------------------------------------------|
| conv2d         | nn.Conv2d (padding_mode 'zeros'; padding 'valid' / 'same' become numbers)              |
| batchnorm      | nn.BatchNorm2d, nn.BatchNorm1d (rank 2), nn.SyncBatchNorm; running statistics required |
| relu           | nn.ReLU, F.relu, torch.relu, x.relu() and their in-place forms                        |
| maxpool2d      | nn.MaxPool2d, F.max_pool2d (dilation 1)                                               |
| avgpool2d      | nn.AvgPool2d, F.avg_pool2d (no divisor_override); adaptive pooling that divides evenly |
| global_avgpool | nn.AdaptiveAvgPool2d(1) or ((1, 1)), F.adaptive_avg_pool2d(x, 1)                       |
| flatten        | nn.Flatten(), torch.flatten(x, 1), x.flatten(1), x.view(x.size(0), -1), x.reshape(N, -1) |
| linear         | nn.Linear (on rank-2 values)                                                          |
| dropout        | nn.Dropout, F.dropout                                                                 |
| concat         | torch.cat / torch.concat (channel axis)                                               |
| add            | `+`, torch.add, x.add() (alpha 1, two tensors of one shape)                            |
| softmax        | F.softmax / torch.softmax / x.softmax / nn.Softmax over axis 1 of a rank-2 value        |
| clip           | nn.ReLU6, nn.Hardtanh, F.relu6, F.hardtanh                                            |
| leaky_relu     | nn.LeakyReLU, F.leaky_relu                                                            |
| sigmoid        | nn.Sigmoid, torch.sigmoid, F.sigmoid, x.sigmoid()                                     |
| silu           | nn.SiLU, F.silu, and x * torch.sigmoid(x)                                             |
| hardsigmoid    | nn.Hardsigmoid, F.hardsigmoid                                                         |
| hardswish      | nn.Hardswish, F.hardswish                                                             |
| mul            | `*`, torch.mul, x.mul() of two tensors (a (N, C, 1, 1) gate broadcasts; so does an (N, C)  |
|                | gate viewed as y.view(b, c, 1, 1), y[:, :, None, None], y.view(...).expand_as(x))      |
| global_avgpool | also x.mean((2, 3), keepdim=True) / torch.mean; without keepdim, then a flatten       |
| slice          | torch.chunk / torch.split / x.chunk / x.split on dim 1 (one slice per part), x[:, a:b] |
| channel_shuffle| nn.ChannelShuffle, x.view(n, g, c // g, h, w) -> transpose(1, 2) -> view(n, -1, h, w) |
| pad            | nn.ZeroPad2d, nn.ConstantPad2d, F.pad (constant, H and W)                             |
| channel_gather | torch.index_select(x, 1, torch.tensor([i, j, ...])), x[:, [i, j, ...]] (constant)     |

nn.Identity and x.contiguous() are no-ops and make no node; `x.size(0)` / `x.shape[0]` (the batch) only
feed a reshape; the other entries of a size are static ints, so shape arithmetic on them (`c // groups`)
is evaluated while lowering. A lone layer given as the module (`from_module(nn.Conv2d(1, 2, 3), x)`) becomes
one node named after its class (`conv2d`), fed by an input `x`. Anything else raises `TorchImportError`
with one line naming the module type or function and where it sits in the traced graph.

Semantics are eval semantics, whatever mode the module is in: batchnorm lowers with its running
statistics and dropout is the identity, which is what the IR computes (see `easc.ir.interpret`).
The module itself is left as it was: shape propagation runs in eval mode under `no_grad`, so no
running statistic moves, and each submodule's training flag is restored afterwards. A batchnorm
with `momentum=None` (cumulative average) is given the IR default momentum 0.1 for later training.

Names: an IR node takes its module's path (`features.0`, `layer1.0.conv1`) or, for a function or
method call, the fx node name (`relu`, `add_1`, `view`); inputs take the forward's argument names.
A value computed twice from one module gets `path_2`, ...; a layer with weights called twice is
refused (the IR gives each layer its own weights: sharing cannot be expressed). Outputs are named
`output` (one tensor), `output_0`, `output_1`, ... (tuple or list) or by the keys of a returned dict.

Limits of tracing itself: fx records what the forward does for the example's control flow, and it
records `x += y` as `x + y`; if another alias of `x` is read afterwards, eager PyTorch sees the
mutation and the trace does not. In-place relu / dropout, which fx does record, are checked: they
are refused when a value they overwrite is read later.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from easc.backends.optable import LOWERINGS
from easc.ir import Graph, IRError, verify
from easc.ir.ops import ACTIVATION_OPS
from easc.ir.builder import GraphBuilder

__all__ = ["TorchImportError", "from_module"]


class TorchImportError(IRError):
    """A module that cannot be lowered to the IR; the one-line message names what and where."""


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)
# The op table names the torch module classes each op is read from (`torch_modules`); the attributes
# some of them carry are read off the module here. ReLU keeps its own rule (its in-place check).
_TABLE_MODULES = {getattr(nn, cls): op for op, low in LOWERINGS.items() for cls in low.torch_modules}
_MODULE_ATTRS = {
    nn.ReLU6: lambda m: {"min": 0.0, "max": 6.0},
    nn.Hardtanh: lambda m: {"min": float(m.min_val), "max": float(m.max_val)},
    nn.LeakyReLU: lambda m: {"slope": float(m.negative_slope)},
}
_ACTIVATION_MODULES = tuple(cls for cls, op in _TABLE_MODULES.items() if op in ACTIVATION_OPS and op != "relu")
# Module types lowered as leaves, and the class whose forward a subclass must keep to count as one.
_LEAF_TYPES = (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d,
               nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear, nn.Dropout, nn.Identity, nn.Softmax,
               nn.ZeroPad2d, nn.ConstantPad2d, nn.ChannelShuffle) + _ACTIVATION_MODULES
SUPPORTED_MODULES = "Conv2d, BatchNorm1d/2d, ReLU, ReLU6, Hardtanh, LeakyReLU, Sigmoid, SiLU, Hardsigmoid, " \
                    "Hardswish, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, ZeroPad2d, ConstantPad2d, ChannelShuffle, " \
                    "Flatten, Linear, Dropout, Softmax, Identity"
SUPPORTED_FUNCTIONS = "F.relu, F.relu6, F.hardtanh, F.leaky_relu, torch.sigmoid, F.silu, F.hardsigmoid, " \
                      "F.hardswish, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.pad, torch.flatten, " \
                      "torch.reshape, torch.transpose, torch.cat, torch.chunk, torch.split, torch.mean, " \
                      "torch.add / +, torch.mul / *, // on sizes, F.softmax, torch.softmax, F.dropout, " \
                      "torch.index_select on dim 1 with a constant index"
SUPPORTED_METHODS = "relu, sigmoid, view, reshape, transpose, flatten, size, mean, chunk, split, softmax, add, " \
                    "mul, expand_as, contiguous"


def _plain(module: nn.Module) -> type | None:
    """The supported torch class `module` is, if its forward is that class's own."""
    for cls in _LEAF_TYPES:
        if isinstance(module, cls) and type(module).forward is cls.forward:
            return cls
    return None


class _Tracer(fx.Tracer):
    # Subclasses of supported layers that keep the layer's forward (say `class MyConv(nn.Conv2d)`
    # adding an attribute) are leaves too, so they lower as the layer rather than as F.conv2d.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or _plain(m) is not None


class _Size:
    """A traced `x.size()` / `x.shape` (dim None, `shape` the static sizes) or its batch entry (dim 0).

    Other entries of a size are plain ints (sample shapes are static), so shape arithmetic on them
    (`channels // groups`) is evaluated during lowering.
    """

    def __init__(self, dim, shape=None):
        self.dim = dim
        self.shape = shape


class _View:
    """An IR value seen through a reshape the IR has no op for, pending the op that gives it a meaning
    (the (N, g, C/g, H, W) view of a channel shuffle, then its transpose)."""

    def __init__(self, node: str, shape: tuple):
        self.node = node
        self.shape = tuple(shape)


class _Channels:
    """A constant list of channel indices (`torch.tensor([...], device=x.device)` or a traced tensor constant)
    that only `torch.index_select(x, 1, ...)` may read; `device` marks a traced `x.device`."""

    def __init__(self, index=None):
        self.index = index


class _Parts:
    """The tuple of IR values `torch.chunk` / `torch.split` returns; `operator.getitem` picks one."""

    def __init__(self, names: list):
        self.names = names


def _pair(v) -> tuple:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _bind(node: fx.Node, names: tuple, defaults: dict) -> dict:
    """The call's arguments by parameter name (positional ones first, then keywords, then defaults)."""
    values = dict(defaults)
    values.update(zip(names, node.args))
    values.update(node.kwargs)
    return values


def _qualname(target) -> str:
    if target in _FUNCTION_NAMES:
        return _FUNCTION_NAMES[target]
    try:
        from torch.fx.node import _get_qualified_name

        return _get_qualified_name(target)
    except Exception:  # an unusual callable: fall back to its repr
        return getattr(target, "__name__", repr(target))


_FUNCTION_NAMES = {F.relu: "F.relu", F.max_pool2d: "F.max_pool2d", F.avg_pool2d: "F.avg_pool2d",
                   F.adaptive_avg_pool2d: "F.adaptive_avg_pool2d", F.softmax: "F.softmax", F.dropout: "F.dropout",
                   operator.add: "operator.add", operator.getitem: "operator.getitem", getattr: "getattr"}


_UNARY = (("input", "inplace"), {"inplace": False}, lambda a: {})
# function -> (IR op, parameter names, defaults, attributes from the bound arguments)
_ACTIVATION_FUNCTIONS = {
    F.relu6: ("clip", ("input", "inplace"), {"inplace": False}, lambda a: {"min": 0.0, "max": 6.0}),
    F.hardtanh: ("clip", ("input", "min_val", "max_val", "inplace"), {"min_val": -1.0, "max_val": 1.0,
                                                                       "inplace": False},
                 lambda a: {"min": float(a["min_val"]), "max": float(a["max_val"])}),
    F.leaky_relu: ("leaky_relu", ("input", "negative_slope", "inplace"), {"negative_slope": 0.01, "inplace": False},
                   lambda a: {"slope": float(a["negative_slope"])}),
    torch.sigmoid: ("sigmoid", ("input",), {}, lambda a: {}),
    F.sigmoid: ("sigmoid", ("input",), {}, lambda a: {}),
    F.silu: ("silu",) + _UNARY,
    F.hardsigmoid: ("hardsigmoid",) + _UNARY,
    F.hardswish: ("hardswish",) + _UNARY,
}


def _to_numpy(t: torch.Tensor):
    return t.detach().to("cpu", torch.float32).numpy().copy()


class _Lowering:
    def __init__(self, gm: fx.GraphModule, examples: tuple, name: str):
        self.gm = gm
        self.examples = examples
        self.name = name
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.env: dict = {}  # fx node -> IR value name, or a _Size
        self.storage: dict = {}  # fx node -> the fx node whose tensor it aliases (for in-place checks)
        self.builder = GraphBuilder(name)  # the IR nodes, their names and the shape check against torch
        self.weighted_calls: dict = {}
        self.fx_node = None
        self.fused: set = set()  # IR nodes a fused op absorbed (the sigmoid of x * sigmoid(x))

    # -- errors and names ---------------------------------------------------------------------
    def where(self) -> str:
        n = self.fx_node
        if n.op == "call_module":
            what = f"call_module {n.target!r} ({type(self.gm.get_submodule(n.target)).__name__})"
        elif n.op == "call_function":
            what = f"call_function {_qualname(n.target)}"
        elif n.op == "call_method":
            what = f"call_method {n.target!r} (Tensor.{n.target})"
        else:
            what = f"{n.op} {n.target!r}"
        return f"{what} at node {self.order[n]} {n.name!r}"

    def fail(self, reason: str):
        raise TorchImportError(f"cannot lower {self.where()}: {reason}")

    def unique(self, base: str) -> str:
        return self.builder.fresh(base)

    # -- values -------------------------------------------------------------------------------
    def tensor(self, arg) -> str:
        """The IR value an argument names; it must be a traced tensor."""
        value = self.env.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(value, str):
            what = f"{arg.name!r} (a size, not a tensor)" if isinstance(value, _Size) else repr(arg)
            self.fail(f"argument {what} is not a tensor value")
        return value

    @property
    def nodes(self) -> list:
        return self.builder.nodes

    @property
    def types(self) -> dict:
        return self.builder.types

    def add_node(self, op: str, inputs: list, attrs: dict | None = None, weights: dict | None = None,
                 name: str | None = None, expect=None) -> str:
        """Add an IR node through the builder (`expect`: the sample shape torch computed for it)."""
        try:
            return self.builder.add(op, inputs, attrs, weights, name=self.unique(name), expect=expect)
        except IRError as e:
            self.fail(str(e).split(": ", 1)[-1] if str(e).startswith("node ") else str(e))

    def emit(self, op: str, inputs: list, attrs: dict | None = None, weights: dict | None = None,
             alias_of: fx.Node | None = None) -> None:
        n = self.fx_node
        meta = n.meta.get("tensor_meta")
        expect = tuple(meta.shape[1:]) if meta is not None and hasattr(meta, "shape") else None
        name = self.add_node(op, inputs, attrs, weights, n.target if n.op == "call_module" else n.name, expect)
        self.env[n] = name
        self.storage[n] = self.storage.get(alias_of, alias_of) if alias_of is not None else n

    def alias(self, arg: fx.Node) -> None:
        """A no-op: the fx node stands for the same IR value (and the same storage) as `arg`."""
        self.env[self.fx_node] = self.tensor(arg)
        self.storage[self.fx_node] = self.storage.get(arg, arg)

    def check_in_place(self, arg: fx.Node) -> None:
        """Refuse an in-place op whose overwritten tensor (under any alias) is read after it."""
        here = self.order[self.fx_node]
        root = self.storage.get(arg, arg)
        for other, other_root in self.storage.items():
            if other_root is not root or self.order[other] >= here:
                continue
            for user in other.users:
                reads_shape_only = user.target == "size" or user.target is getattr
                if self.order[user] > here and not reads_shape_only:
                    self.fail(f"it overwrites {other.name!r} in place and node {self.order[user]} {user.name!r} "
                              f"reads it afterwards; use the out-of-place form")

    def type_of(self, arg) -> Any:
        return self.types[self.tensor(arg)]

    # -- lowering rules shared by modules, functions and methods ----------------------------------
    def relu(self, arg, inplace: bool):
        if inplace:
            self.check_in_place(arg)
        self.emit("relu", [self.tensor(arg)], alias_of=arg if inplace else None)

    def dropout(self, arg, p: float, inplace: bool):
        if inplace:
            self.check_in_place(arg)
        # In eval mode dropout returns its input itself: an alias for the in-place check.
        self.emit("dropout", [self.tensor(arg)], {"p": float(p)}, alias_of=arg)

    def maxpool(self, arg, kernel, stride, padding, dilation, ceil, return_indices):
        if return_indices:
            self.fail("return_indices=True (the IR max pool returns values only)")
        if _pair(dilation) != (1, 1):
            self.fail(f"dilation={dilation} (the IR pools with dilation 1)")
        stride = kernel if stride is None or stride == [] or stride == () else stride
        self.emit("maxpool2d", [self.tensor(arg)],
                  {"kernel": _pair(kernel), "stride": _pair(stride), "padding": _pair(padding), "ceil": bool(ceil)})

    def avgpool(self, arg, kernel, stride, padding, ceil, count_include_pad, divisor_override):
        if divisor_override is not None:
            self.fail(f"divisor_override={divisor_override} (the IR divides by the window size)")
        stride = kernel if stride is None or stride == [] or stride == () else stride
        self.emit("avgpool2d", [self.tensor(arg)],
                  {"kernel": _pair(kernel), "stride": _pair(stride), "padding": _pair(padding), "ceil": bool(ceil),
                   "count_include_pad": bool(count_include_pad)})

    def adaptive_avgpool(self, arg, output_size):
        t = self.type_of(arg)
        if t.rank != 4:
            self.fail(f"adaptive pooling of a rank-{t.rank} value")
        h, w = t.shape[2], t.shape[3]
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        oh, ow = (h if size[0] is None else int(size[0])), (w if size[1] is None else int(size[1]))
        if (oh, ow) == (1, 1):
            self.emit("global_avgpool", [self.tensor(arg)])
        elif (oh, ow) == (h, w):
            self.alias(arg)  # output size = input size: the identity
        elif h % oh == 0 and w % ow == 0:
            # Windows of adaptive pooling are all k x k with stride k when the sizes divide evenly.
            self.emit("avgpool2d", [self.tensor(arg)],
                      {"kernel": (h // oh, w // ow), "stride": (h // oh, w // ow)})
        else:
            self.fail(f"output size {(oh, ow)} does not divide the input size {(h, w)}")

    def flatten(self, arg, start_dim, end_dim):
        rank = self.type_of(arg).rank
        if start_dim % rank != 1 or end_dim % rank != rank - 1:
            self.fail(f"flatten(start_dim={start_dim}, end_dim={end_dim}) of a rank-{rank} value "
                      f"(the IR flattens all but the batch axis: start_dim=1, end_dim=-1)")
        self.emit("flatten", [self.tensor(arg)], alias_of=arg)

    def reshape(self, arg, shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        shape = tuple(self.env[d] if isinstance(d, fx.Node) and isinstance(self.env.get(d), int) else d
                      for d in shape)
        if self.view_reshape(arg, shape):
            return
        t = self.type_of(arg)
        features = math.prod(t.sample_shape)
        if len(shape) == 2:
            first, second = shape
            batch = first == -1 or (isinstance(first, fx.Node) and isinstance(self.env.get(first), _Size)
                                    and self.env[first].dim == 0)
            if first == -1 and second == features:
                return self.flatten(arg, 1, -1)
            if batch and first != -1 and second in (-1, features):
                return self.flatten(arg, 1, -1)
        shown = ", ".join(a.name if isinstance(a, fx.Node) else repr(a) for a in shape)
        self.fail(f"reshape to ({shown}): only a flatten to (batch, -1) lowers (e.g. x.view(x.size(0), -1))")

    def add(self, a, b, alpha=1):
        if alpha != 1:
            self.fail(f"alpha={alpha} (the IR adds with weight 1)")
        if not isinstance(b, fx.Node):
            self.fail(f"adding the constant {b!r} (the IR adds tensors of one shape)")
        self.emit("add", [self.tensor(a), self.tensor(b)])

    def cat(self, tensors, dim):
        tensors = list(tensors)
        rank = self.type_of(tensors[0]).rank
        if dim % rank != 1:
            self.fail(f"dim={dim} (the IR concatenates along the channel axis, dim=1)")
        self.emit("concat", [self.tensor(t) for t in tensors])

    def softmax(self, arg, dim, dtype=None):
        rank = self.type_of(arg).rank
        if dtype is not None:
            self.fail(f"dtype={dtype}")
        if dim is None and rank == 2:
            dim = 1  # the implicit dim PyTorch picks for rank 2
        if rank != 2 or dim is None or dim % rank != 1:
            self.fail(f"softmax over dim={dim} of a rank-{rank} value (the IR takes axis 1 of rank 2)")
        self.emit("softmax", [self.tensor(arg)])


    # -- mobile-network ops -------------------------------------------------------------------------
    def activation(self, arg, op: str, attrs: dict, alias: bool = False):
        self.emit(op, [self.tensor(arg)], attrs, alias_of=arg if alias else None)

    def _gate(self, arg) -> str:
        """A factor of a product: a tensor, or an (N, C) value viewed as (N, C, 1, 1) (a per-channel gate)."""
        value = self.env.get(arg) if isinstance(arg, fx.Node) else None
        if isinstance(value, _View) and self.types[value.node].rank == 2:
            return value.node
        if not isinstance(value, str):
            self.fail(f"multiplying by {arg!r} (the IR multiplies two tensors: a gate, or x * sigmoid(x))")
        return value

    def mul(self, a, b):
        x, y = self._gate(a), self._gate(b)
        tx, ty = self.types[x], self.types[y]
        if tx.rank == 2 and ty.rank == 4 or (tx.rank == 4 and ty.rank == 4 and tuple(tx.shape[2:]) == (1, 1)
                                            and tuple(ty.shape[2:]) != (1, 1)):
            x, y = y, x  # the per-channel gate goes second
        gate = self.builder.node(y)
        if gate.op == "sigmoid" and gate.inputs == (x,):
            self.fused.add(y)  # x * sigmoid(x); the sigmoid stays only if something else reads it
            return self.emit("silu", [x])
        self.emit("mul", [x, y])

    def pad(self, arg, pad, mode, value):
        pad = [int(p) for p in pad]
        if mode != "constant":
            self.fail(f"mode={mode!r} (the IR pads with a constant)")
        if len(pad) == 2:
            pad = pad + [0, 0]
        if len(pad) != 4 or min(pad) < 0:
            self.fail(f"pad {pad} (the IR pads H and W of an NCHW value by non-negative amounts)")
        left, right, top, bottom = pad
        self.emit("pad", [self.tensor(arg)], {"pads": (top, left, bottom, right), "value": float(value)})

    def mean(self, arg, dim, keepdim):
        t = self.type_of(arg)
        dims = sorted(d % t.rank for d in (dim if isinstance(dim, (tuple, list)) else [dim])) if dim is not None \
            else None
        if t.rank != 4 or dims != [2, 3]:
            self.fail(f"mean over dims {dim} of a rank-{t.rank} value (the IR averages H and W of NCHW values)")
        if keepdim:
            return self.emit("global_avgpool", [self.tensor(arg)])
        n = self.fx_node
        pooled = self.add_node("global_avgpool", [self.tensor(arg)], name=f"{n.name}_pool")
        self.emit("flatten", [pooled])

    def split(self, arg, how, dim, chunk: bool):
        t = self.type_of(arg)
        if dim % t.rank != 1:
            self.fail(f"dim={dim} (the IR splits along the channel axis, dim=1)")
        c = t.channels
        if chunk:
            part = -(-c // int(how))
            sizes = [min(part, c - k * part) for k in range(int(how)) if c - k * part > 0]
        elif isinstance(how, int):
            sizes = [min(how, c - k) for k in range(0, c, how)]
        else:
            sizes = [int(s) for s in how]
        if sum(sizes) != c:
            self.fail(f"split sizes {sizes} do not add up to the {c} channels")
        names, start = [], 0
        for k, size in enumerate(sizes):
            names.append(self.add_node("slice", [self.tensor(arg)], {"start": start, "end": start + size},
                                       name=f"{self.fx_node.name}_{k}"))
            start += size
        self.env[self.fx_node] = _Parts(names)
        self.storage[self.fx_node] = self.fx_node

    def index(self, arg, index):
        """`x[:, a:b]` (and trailing full slices): a channel slice; `x[:, [i, j, ...]]`: a channel gather;
        `g[:, :, None, None]` of an (N, C) gate."""
        t = self.type_of(arg)
        index = index if isinstance(index, tuple) else (index,)
        full = slice(None, None, None)
        if t.rank == 2 and index == (full, full, None, None):
            return self.gate_view(self.tensor(arg))
        if len(index) == 2 and index[0] == full and isinstance(index[1], (list, tuple)) and index[1] \
                and all(isinstance(i, int) and not isinstance(i, bool) for i in index[1]):
            c = t.channels
            if not all(-c <= i < c for i in index[1]):
                self.fail(f"channel index {list(index[1])!r} out of range for {c} channels")
            return self.emit("channel_gather", [self.tensor(arg)], {"index": tuple(i % c for i in index[1])})
        if len(index) < 2 or index[0] != full or not isinstance(index[1], slice) \
                or any(i not in (full, Ellipsis) for i in index[2:]):
            self.fail(f"indexing with {index!r} (the IR slices channels: x[:, a:b])")
        start, end, step = index[1].indices(t.channels)
        if step != 1 or start >= end:
            self.fail(f"channel slice {index[1]!r} (step 1, non-empty)")
        if (start, end) == (0, t.channels):
            return self.alias(arg)
        self.emit("slice", [self.tensor(arg)], {"start": start, "end": end})

    def index_select(self, arg, dim, index):
        """`torch.index_select(x, 1, constant index)`: a channel gather."""
        t = self.type_of(arg)
        value = self.env.get(index) if isinstance(index, fx.Node) else None
        if not isinstance(value, _Channels) or value.index is None or dim % t.rank != 1:
            self.fail("index_select other than along dim 1 with a constant index (torch.tensor([...]))")
        c = t.channels
        if not value.index or not all(-c <= i < c for i in value.index):
            self.fail(f"channel index {list(value.index)!r} out of range for {c} channels")
        self.emit("channel_gather", [self.tensor(arg)], {"index": tuple(i % c for i in value.index)})

    def view_reshape(self, arg, shape) -> bool:
        """Reshapes of a channel shuffle: NCHW -> (N, g, C/g, H, W), and back after the transpose."""
        value = self.env.get(arg)
        batch = lambda d: isinstance(d, fx.Node) and isinstance(self.env.get(d), _Size) \
            and self.env[d].dim == 0 or d == -1  # noqa: E731
        if isinstance(value, _View):
            base = self.types[value.node]
            rest = [d for d in shape[1:]]
            known = math.prod(d for d in rest if d != -1)
            rest = [math.prod(base.sample_shape) // known if d == -1 else d for d in rest]
            if batch(shape[0]) and tuple(rest) == base.sample_shape:
                self.env[self.fx_node] = value.node
                self.storage[self.fx_node] = self.fx_node
                return True
            self.fail(f"reshape of a channel-shuffle view to {shape} (expected back to {base.sample_shape})")
        if not isinstance(value, str):
            return False
        t = self.types[value]
        if t.rank == 2 and len(shape) == 4 and batch(shape[0]) and tuple(shape[1:]) == (t.channels, 1, 1):
            self.gate_view(value)  # an SE gate computed by linear layers, viewed per channel
            return True
        if t.rank == 4 and len(shape) == 5 and batch(shape[0]) and all(isinstance(d, int) for d in shape[1:]) \
                and shape[1] * shape[2] == t.channels and tuple(shape[3:]) == tuple(t.shape[2:]):
            self.env[self.fx_node] = _View(value, (t.shape[0],) + tuple(shape[1:]))
            self.storage[self.fx_node] = self.fx_node
            return True
        return False

    def gate_view(self, value: str):
        """(N, C) seen as (N, C, 1, 1): only a factor of a product may read it (see `_gate`)."""
        self.env[self.fx_node] = _View(value, (self.types[value].shape[0], self.types[value].channels, 1, 1))
        self.storage[self.fx_node] = self.fx_node

    def expand_as(self, arg, other):
        value = self.env.get(arg)
        if isinstance(value, _View) and self.types[value.node].rank == 2:
            self.env[self.fx_node] = value  # broadcasting a gate: the product broadcasts it anyway
            self.storage[self.fx_node] = self.fx_node
        elif isinstance(value, str) and self.types[value] == self.type_of(other):
            self.alias(arg)
        else:
            self.fail("expand_as of anything but a per-channel gate or a value of the same shape")

    def transpose(self, arg, d0, d1):
        value = self.env.get(arg)
        if isinstance(value, _View) and len(value.shape) == 5 and sorted((d0 % 5, d1 % 5)) == [1, 2]:
            g, per = value.shape[1], value.shape[2]
            # torch sees the 5-D transposed view; the IR node is the shuffled NCHW value behind it
            name = self.add_node("channel_shuffle", [value.node], {"groups": int(g)}, name=self.fx_node.name)
            self.env[self.fx_node] = _View(name, (value.shape[0], per, g) + value.shape[3:])
            self.storage[self.fx_node] = self.fx_node
            return
        self.fail("transpose of anything but the (N, g, C/g, H, W) view of a channel shuffle")

    # -- fx opcodes ---------------------------------------------------------------------------
    def placeholder(self, n: fx.Node, index: int):
        if index >= len(self.examples):
            self.fail(f"forward has more inputs than the {len(self.examples)} example tensor(s) given")
        example = self.examples[index]
        if not isinstance(example, torch.Tensor) or example.dim() < 2:
            self.fail("the example must be a batched tensor of rank >= 2 (N, C, ...)")
        name = self.builder.input(self.unique(str(n.target).lstrip("*")), tuple(example.shape[1:]))
        self.env[n] = name
        self.storage[n] = n

    def call_module(self, n: fx.Node):
        m = self.gm.get_submodule(n.target)
        cls = _plain(m)
        x = n.args[0] if n.args else n.kwargs.get("input")
        if cls is None:
            self.fail(f"supported modules are {SUPPORTED_MODULES}")
        if any(p.numel() for p in m.parameters(recurse=False)):
            if n.target in self.weighted_calls:
                self.fail(f"the module is called a second time (first at node {self.weighted_calls[n.target]}); "
                          f"the IR gives every call its own weights, so shared weights cannot be lowered")
            self.weighted_calls[n.target] = self.order[n]
        if cls is nn.Conv2d:
            padding = m.padding
            if m.padding_mode != "zeros":
                self.fail(f"padding_mode={m.padding_mode!r} (the IR pads with zeros)")
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                spans = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
                if any(s % 2 for s in spans):
                    self.fail("padding='same' with an even kernel span pads asymmetrically (the IR pads "
                              "both sides equally)")
                padding = tuple(s // 2 for s in spans)
            weights = {"weight": _to_numpy(m.weight)}
            if m.bias is not None:
                weights["bias"] = _to_numpy(m.bias)
            self.emit("conv2d", [self.tensor(x)],
                      {"out": m.out_channels, "kernel": m.kernel_size, "stride": m.stride, "padding": padding,
                       "dilation": m.dilation, "groups": m.groups, "bias": m.bias is not None}, weights)
        elif cls in _BATCHNORMS:
            if m.running_mean is None or m.running_var is None:
                self.fail("track_running_stats=False normalises with batch statistics even in eval mode "
                          "(the IR uses running statistics)")
            c = m.num_features
            ones, zeros = torch.ones(c), torch.zeros(c)
            weights = {"scale": _to_numpy(m.weight if m.affine else ones),
                       "bias": _to_numpy(m.bias if m.affine else zeros),
                       "mean": _to_numpy(m.running_mean), "var": _to_numpy(m.running_var)}
            momentum = 0.1 if m.momentum is None else float(m.momentum)
            self.emit("batchnorm", [self.tensor(x)], {"eps": float(m.eps), "momentum": momentum}, weights)
        elif cls is nn.ReLU:
            self.relu(x, m.inplace)
        elif cls is nn.MaxPool2d:
            self.maxpool(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)
        elif cls is nn.AvgPool2d:
            self.avgpool(x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                         m.divisor_override)
        elif cls is nn.AdaptiveAvgPool2d:
            self.adaptive_avgpool(x, m.output_size)
        elif cls is nn.Flatten:
            self.flatten(x, m.start_dim, m.end_dim)
        elif cls is nn.Linear:
            weights = {"weight": _to_numpy(m.weight)}
            if m.bias is not None:
                weights["bias"] = _to_numpy(m.bias)
            self.emit("linear", [self.tensor(x)], {"out": m.out_features, "bias": m.bias is not None}, weights)
        elif cls is nn.Dropout:
            self.dropout(x, m.p, m.inplace)
        elif cls is nn.Softmax:
            self.softmax(x, m.dim)
        elif cls is nn.Identity:
            self.alias(x)
        elif cls in _ACTIVATION_MODULES:
            op, attrs = _TABLE_MODULES[cls], _MODULE_ATTRS.get(cls, lambda m: {})(m)
            if getattr(m, "inplace", False):
                self.check_in_place(x)
            self.activation(x, op, attrs, alias=bool(getattr(m, "inplace", False)))
        elif cls in (nn.ZeroPad2d, nn.ConstantPad2d):
            self.pad(x, m.padding, "constant", float(getattr(m, "value", 0.0)))
        elif cls is nn.ChannelShuffle:
            self.emit("channel_shuffle", [self.tensor(x)], {"groups": int(m.groups)})

    def call_function(self, n: fx.Node):
        t = n.target
        if t in (F.relu, torch.relu, torch.relu_, F.relu_):
            a = _bind(n, ("input", "inplace"), {"inplace": t in (torch.relu_, F.relu_)})
            self.relu(a["input"], bool(a["inplace"]))
        elif t in (F.max_pool2d, torch.max_pool2d):
            a = _bind(n, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                      {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
            self.maxpool(a["input"], a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"],
                         a["return_indices"])
        elif t is F.avg_pool2d:
            a = _bind(n, ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                          "divisor_override"),
                      {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                       "divisor_override": None})
            self.avgpool(a["input"], a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
                         a["count_include_pad"], a["divisor_override"])
        elif t is F.adaptive_avg_pool2d:
            a = _bind(n, ("input", "output_size"), {})
            self.adaptive_avgpool(a["input"], a["output_size"])
        elif t is torch.flatten:
            a = _bind(n, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
            self.flatten(a["input"], a["start_dim"], a["end_dim"])
        elif t is torch.reshape:
            a = _bind(n, ("input", "shape"), {})
            self.reshape(a["input"], tuple(a["shape"]))
        elif t in (torch.cat, torch.concat, getattr(torch, "concatenate", torch.cat)):
            a = _bind(n, ("tensors", "dim"), {"dim": 0})
            self.cat(a["tensors"], a["dim"])
        elif t in (operator.add, torch.add, operator.iadd):
            a = _bind(n, ("input", "other", "alpha"), {"alpha": 1})
            if t is operator.iadd:
                self.check_in_place(a["input"])
            self.add(a["input"], a["other"], a["alpha"])
        elif t in (F.softmax, torch.softmax):
            a = _bind(n, ("input", "dim", "_stacklevel", "dtype"), {"dim": None, "dtype": None})
            self.softmax(a["input"], a["dim"], a["dtype"])
        elif t is F.dropout:
            a = _bind(n, ("input", "p", "training", "inplace"), {"p": 0.5, "inplace": False})
            self.dropout(a["input"], a["p"], bool(a["inplace"]))
        elif t is getattr and len(n.args) == 2 and n.args[1] == "device":
            self.env[n] = _Channels()  # x.device: only the device of a constant index
        elif t is torch.tensor and n.args and isinstance(n.args[0], (list, tuple)) \
                and all(isinstance(i, int) and not isinstance(i, bool) for i in n.args[0]) \
                and all(isinstance(self.env.get(v), _Channels) for k, v in n.kwargs.items() if k == "device") \
                and set(n.kwargs) <= {"device"}:
            self.env[n] = _Channels(tuple(n.args[0]))
        elif t is torch.index_select:
            a = _bind(n, ("input", "dim", "index"), {})
            self.index_select(a["input"], a["dim"], a["index"])
        elif t is getattr and len(n.args) == 2 and n.args[1] == "shape":
            self.size(n.args[0], None)
        elif t is operator.getitem and isinstance(self.env.get(n.args[0]), _Size) \
                and self.env[n.args[0]].dim is None and isinstance(n.args[1], int):
            self.env[n] = self._size_entry(self.env[n.args[0]].shape, n.args[1])
        elif t is operator.getitem and isinstance(self.env.get(n.args[0]), _Parts) and isinstance(n.args[1], int):
            self.env[n] = self.env[n.args[0]].names[n.args[1]]
            self.storage[n] = n
        elif t is operator.getitem and isinstance(self.env.get(n.args[0]), str):
            self.index(n.args[0], n.args[1])
        elif t in (operator.floordiv, operator.mul, operator.add, operator.sub) \
                and not any(isinstance(self.env.get(a), str) for a in n.args if isinstance(a, fx.Node)):
            self.arith(n, t, *n.args)
        elif t in (operator.mul, torch.mul):
            a = _bind(n, ("input", "other"), {})
            self.mul(a["input"], a["other"])
        elif t in _ACTIVATION_FUNCTIONS:
            op, names, defaults, attrs_of = _ACTIVATION_FUNCTIONS[t]
            a = _bind(n, names, defaults)
            if a.get("inplace"):
                self.check_in_place(a["input"])
            self.activation(a["input"], op, attrs_of(a), alias=bool(a.get("inplace")))
        elif t is F.pad:
            a = _bind(n, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
            self.pad(a["input"], a["pad"], a["mode"], a["value"] or 0.0)
        elif t is torch.mean:
            a = _bind(n, ("input", "dim", "keepdim", "dtype"), {"keepdim": False, "dtype": None})
            self.mean(a["input"], a["dim"], a["keepdim"])
        elif t in (torch.chunk, torch.split):
            key = "chunks" if t is torch.chunk else "split_size_or_sections"
            a = _bind(n, ("input", key, "dim"), {"dim": 0})
            self.split(a["input"], a[key], a["dim"], chunk=t is torch.chunk)
        elif t is torch.transpose:
            a = _bind(n, ("input", "dim0", "dim1"), {})
            self.transpose(a["input"], a["dim0"], a["dim1"])
        else:
            self.fail(f"supported functions are {SUPPORTED_FUNCTIONS}")

    def size(self, arg, dim):
        t = self.type_of(arg)
        self.env[self.fx_node] = self._size_entry(t.shape, dim)

    @staticmethod
    def _size_entry(shape, dim):
        if dim is None:
            return _Size(None, tuple(shape))
        dim %= len(shape)
        return _Size(0) if dim == 0 else int(shape[dim])

    def arith(self, n: fx.Node, op, a, b):
        """Shape arithmetic on static sizes (`c // groups`); the batch size may not take part."""
        vals = []
        for v in (a, b):
            v = self.env.get(v) if isinstance(v, fx.Node) else v
            if not isinstance(v, int) or isinstance(v, bool):
                self.fail("arithmetic on the batch size or on a tensor (only static sizes can be computed with)")
            vals.append(v)
        self.env[n] = int(op(*vals))

    def call_method(self, n: fx.Node):
        m, x = n.target, n.args[0]
        if m in ("relu", "relu_"):
            self.relu(x, m == "relu_")
        elif m == "size":
            a = _bind(n, ("self", "dim"), {"dim": None})
            self.size(x, a["dim"])
        elif m in ("view", "reshape"):
            self.reshape(x, tuple(n.args[1:]) or tuple(n.kwargs.get("shape", n.kwargs.get("size", ()))))
        elif m == "flatten":
            a = _bind(n, ("self", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
            self.flatten(x, a["start_dim"], a["end_dim"])
        elif m == "softmax":
            a = _bind(n, ("self", "dim", "dtype"), {"dim": None, "dtype": None})
            self.softmax(x, a["dim"], a["dtype"])
        elif m in ("add", "add_"):
            a = _bind(n, ("self", "other", "alpha"), {"alpha": 1})
            if m == "add_":
                self.check_in_place(x)
            self.add(x, a["other"], a["alpha"])
        elif m == "contiguous":
            if isinstance(self.env.get(x), _View):
                self.env[n] = self.env[x]
            else:
                self.alias(x)
        elif m in ("mul", "mul_"):
            if m == "mul_":
                self.check_in_place(x)
            self.mul(x, _bind(n, ("self", "other"), {})["other"])
        elif m in ("sigmoid", "sigmoid_"):
            if m == "sigmoid_":
                self.check_in_place(x)
            self.activation(x, "sigmoid", {}, alias=m == "sigmoid_")
        elif m == "mean":
            a = _bind(n, ("self", "dim", "keepdim", "dtype"), {"keepdim": False, "dtype": None})
            self.mean(x, a["dim"], a["keepdim"])
        elif m in ("chunk", "split"):
            key = "chunks" if m == "chunk" else "split_size"
            a = _bind(n, ("self", key, "dim"), {"dim": 0})
            self.split(x, a[key], a["dim"], chunk=m == "chunk")
        elif m == "transpose":
            a = _bind(n, ("self", "dim0", "dim1"), {})
            self.transpose(x, a["dim0"], a["dim1"])
        elif m == "expand_as":
            self.expand_as(x, n.args[1])
        else:
            self.fail(f"supported tensor methods are {SUPPORTED_METHODS}")

    def output(self, n: fx.Node) -> dict:
        result = n.args[0]
        if isinstance(result, fx.Node):
            items = {"output": result}
        elif isinstance(result, (tuple, list)):
            items = {f"output_{i}": r for i, r in enumerate(result)}
        elif isinstance(result, dict):
            items = {str(k): r for k, r in result.items()}
        else:
            self.fail(f"the forward returns {type(result).__name__} (expected a tensor, a tuple or a dict)")
        outputs = {}
        for public, r in items.items():
            if not isinstance(r, fx.Node):
                self.fail(f"output {public!r} is the constant {r!r}, not a traced tensor")
            outputs[public] = self.tensor(r)
        return outputs

    def _index_constant(self, n: fx.Node) -> bool:
        """A traced 1-D integer tensor constant (`torch.tensor([...])` in forward) read only by index_select."""
        try:
            value = functools.reduce(getattr, n.target.split("."), self.gm)
        except AttributeError:
            return False
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype.is_floating_point \
                or value.dtype == torch.bool or any(u.target is not torch.index_select for u in n.users):
            return False
        self.env[n] = _Channels(tuple(int(i) for i in value.tolist()))
        return True

    def run(self) -> Graph:
        outputs = None
        placeholders = 0
        for n in self.gm.graph.nodes:
            self.fx_node = n
            if n.op == "placeholder":
                self.placeholder(n, placeholders)
                placeholders += 1
            elif n.op == "call_module":
                self.call_module(n)
            elif n.op == "call_function":
                self.call_function(n)
            elif n.op == "call_method":
                self.call_method(n)
            elif n.op == "output":
                outputs = self.output(n)
            elif self._index_constant(n):
                pass
            else:  # get_attr: a parameter or buffer read by hand, outside any layer
                self.fail("reading a parameter or buffer directly has no IR form (wrap it in a layer)")
        if placeholders != len(self.examples):
            raise TorchImportError(f"cannot lower {self.name}: forward takes {placeholders} input(s) but "
                                   f"{len(self.examples)} example tensor(s) were given")
        read = {i for n in self.nodes for i in n.inputs} | set(outputs.values())
        nodes = [n for n in self.nodes if n.name not in self.fused or n.name in read]
        return Graph(nodes, outputs, self.name)


class _Holder(nn.Module):
    def __init__(self, name: str, layer: nn.Module):
        super().__init__()
        self.layer_name = name
        self.add_module(name, layer)

    def forward(self, x):
        return getattr(self, self.layer_name)(x)


def _propagate_shapes(gm: fx.GraphModule, module: nn.Module, examples: tuple, name: str) -> None:
    """Record each node's output shape in `node.meta['tensor_meta']`, leaving `module` as it was."""
    import contextlib
    import io

    from torch.fx.passes.shape_prop import ShapeProp

    class _Prop(ShapeProp):
        current = None

        def run_node(self, n):
            self.current = n
            return super().run_node(n)

    prop = _Prop(gm)
    modes = [(m, m.training) for m in list(module.modules()) + list(gm.modules())]
    try:
        gm.eval()
        # ShapeProp prints a traceback of its own before raising: the one-line error below says it.
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            prop.propagate(*examples)
    except Exception as e:
        cause = e.__cause__ or e
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        at = ""
        if prop.current is not None:
            index = list(gm.graph.nodes).index(prop.current)
            at = f" at node {index} {prop.current.name!r}"
        raise TorchImportError(f"cannot run {name} on the example input{at}: {first}") from None
    finally:
        for m, training in modes:
            m.training = training


def from_module(module: nn.Module, example_input, name: str | None = None) -> Graph:
    """The IR graph of `module`, traced with torch.fx on `example_input` (a tensor or a tuple of them).

    The module is lowered with eval semantics (running statistics, no dropout) even when it is in
    training mode, and is not modified. Shapes come from running `example_input` (any batch size);
    the graph's batch dimension is symbolic. The graph is named `name` or the module's class name
    and passes `easc.ir.verify`. Raises `TorchImportError` (one line: what, and where in the
    traced graph) for anything outside the table in this module's docstring.
    """
    examples = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    graph_name = name or type(module).__name__
    tracer = _Tracer()
    if tracer.is_leaf_module(module, ""):
        # fx never treats the root as a leaf: it would trace nn.Conv2d down to F.conv2d and its
        # weight. A lone layer is lowered as the one child of a holder, named after its class.
        module = _Holder(type(module).__name__.lower(), module)
    try:
        traced = tracer.trace(module)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TorchImportError(f"cannot trace {graph_name} with torch.fx: {first}") from None
    gm = fx.GraphModule(module, traced, graph_name)
    _propagate_shapes(gm, module, examples, graph_name)
    graph = _Lowering(gm, examples, graph_name).run()
    try:
        return verify(graph)
    except IRError as e:  # a lowering bug rather than a user error, but still say where
        raise TorchImportError(f"the graph lowered from {graph_name} does not verify: {e}") from None
