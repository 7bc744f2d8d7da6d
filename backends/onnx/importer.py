"""Lower an ONNX model to the easc IR.

The importer walks the ONNX nodes in their (topological) order and keeps, for every ONNX value,
one of three things:

- an activation (`_Act`): an IR node's value, possibly seen through a reshape-like *view*
  (Reshape / Squeeze / Unsqueeze change how ONNX sees the value, not the data). A view that is the
  IR node's own shape is that node; a view `(N, prod(rest))` of an NCHW value becomes a `flatten`;
  any other view is an error when something other than another view reads it;
- a constant (`_Const`): initializers, Constant nodes, and anything computed from constants only.
  Shape arithmetic that older exporters write (Shape -> Gather -> Unsqueeze -> Concat -> Reshape)
  depends on the batch size, so every constant is evaluated twice, with the batch dimension set to
  two different sentinel sizes: entries that differ between the two runs *are* the batch
  dimension (or a function of it, which is an error). This folds any arithmetic on shapes without a
  pattern per exporter;
- nothing else: an operator easc does not support raises `OnnxImportError` naming it and its node.

Mobile-network patterns: Clip (bounds as attributes or constant inputs), HardSigmoid with torch's alpha
1/6, Mul of x and Sigmoid(x) (or HardSigmoid(x)) becomes one silu (hardswish), Mul of a value and a
(N, C, 1, 1) gate is a squeeze-excitation `mul`, Slice / Split along the channels become `slice` nodes, and
the Reshape (N, g, C/g, H, W) - Transpose [0,2,1,3,4] - Reshape of a channel shuffle becomes one
`channel_shuffle`, and a Gather on axis 1 with a constant 1-D index is a `channel_gather`. One-to-one operators are read from the op table (`easc.backends.optable`, `onnx_in`).

Layers absorb what belongs to them: Conv / Gemm / MatMul followed by an Add of a per-channel
constant become one `conv2d` / `linear` with a bias, named after the Conv / Gemm / MatMul. The
batch dimension of the file (often fixed to 1 by exporters) becomes the symbolic `N`.

ONNX shape inference cross-checks every value the importer types: a disagreement means the
importer misread a node, and is reported rather than silently imported. One known exception:
ONNX shape inference (onnx 1.23) computes pooling output sizes with `ceil_mode=1` by the plain
ceiling formula, while onnxruntime and torch drop a last window that would start in the right
padding; values downstream of such a pool are not cross-checked (the IR follows onnxruntime).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from easc.ir import BATCH, Graph, GraphBuilder, IRError, Namespace, Node, TensorType, make_node, verify
from easc.backends.optable import LOWERINGS
from easc.ir.ops import plain_ceil_output_size, pool_output_size

from .fold_budget import FoldBudget, FoldBudgetError

_STRUCTURAL_OPS = (
    "Add", "BatchNormalization", "Cast", "Concat", "Conv", "Dropout", "Expand", "Flatten", "Gather", "Gemm",
    "Identity",
    "MatMul", "Mul", "ReduceMean", "Reshape", "Shape", "Squeeze", "Sum", "Swish", "Transpose", "Unsqueeze",
)
SUPPORTED_OPS = tuple(sorted(set(_STRUCTURAL_OPS) | {t for low in LOWERINGS.values() for t in low.onnx_in}))
"""ONNX operators the importer maps onto the IR. Any operator whose inputs are all constants is
evaluated at import time instead (shape arithmetic, weight transposes, ...)."""

ORIGIN_KEY = "easc.origin"
"""Node metadata written by easc's exporter: the node a pass-inserted node came from."""

CEIL_KEY = "easc.ceil_mode"
"""Node metadata written by easc's exporter on a pool with ceil=true that it wrote as ceil_mode=0
(see exporter.pool_attrs): its end pads may exceed the begin pads by ceil's overhang."""

MIN_OPSET = 9
"""Older opsets differ in attributes this importer does not read (e.g. BatchNormalization's `spatial`)."""

# Two batch sizes that the file's constants are evaluated with (see the module docstring). Small, so
# that a ConstantOfShape over a batch-dependent shape stays small; any two distinct values work.
_SENTINELS = (7, 11)

# Random generators have no constant value; never evaluate them at import time.
_NOT_FOLDABLE = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                 "Bernoulli")


class OnnxImportError(IRError):
    """An ONNX file easc cannot lower; the one-line message names the file and the node."""


@dataclass
class _Act:
    """An IR node's value as an ONNX value sees it.

    shape: the ONNX-visible shape, `BATCH` first (differs from the IR node's type under a view).
    sole:  no other ONNX consumer can see this IR node through another value so far, so a bias may
           still be folded into it.
    """

    node: str
    shape: tuple
    sole: bool = True


@dataclass
class _Const:
    """A constant, evaluated under both sentinel batch sizes (`a` and `b` are the same object when it
    does not depend on the batch)."""

    a: np.ndarray
    b: np.ndarray

    @property
    def batch_dependent(self) -> bool:
        return self.a is not self.b


def _const(value) -> _Const:
    arr = np.asarray(value)
    return _Const(arr, arr)


class _Importer:
    def __init__(self, model: onnx.ModelProto, source: str, name: str | None,
                 skeleton: onnx.ModelProto | None = None):
        self.model = model
        self.source = source
        self.graph_name = name or model.graph.name or "graph"
        self.opset = self._opset()
        self.env: dict[str, _Act | _Const] = {}
        self.builder = GraphBuilder(self.graph_name)  # the IR nodes, their names and the shape check
        self.uses: dict[str, int] = {}  # IR node name -> how many IR nodes read it so far
        self.layer_origin: dict[str, str] = {}  # IR node -> ONNX op that made it (bias folding)
        self.file_batch: int | None = None
        self.consumers = self._count_consumers()
        self.graph_outputs = {o.name for o in model.graph.output}
        self.inferred = self._infer_shapes(skeleton)
        self.tainted: set[str] = set()  # ONNX values whose inferred shape ONNX gets wrong (ceil pools)
        self.origin = ""  # of the node being lowered
        self.fused: set = set()  # IR nodes a later node absorbed (sigmoid into silu): dropped if unread
        self.fold_budget = FoldBudget(model, self.opset)  # size and step limits of constant folding

    # -- helpers -------------------------------------------------------------------------------
    def fail(self, message: str) -> OnnxImportError:
        return OnnxImportError(f"{self.source}: {message}")

    def _opset(self) -> int:
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                if imp.version < MIN_OPSET:
                    raise self.fail(f"opset {imp.version} is too old (easc reads opset {MIN_OPSET} and later; "
                                    "convert the model with onnx.version_converter)")
                return int(imp.version)
        raise self.fail("not an ONNX model (no opset_import for the default domain)")

    def _count_consumers(self) -> dict:
        counts: dict[str, int] = {}
        for node in self.model.graph.node:
            for i in node.input:
                if i:
                    counts[i] = counts.get(i, 0) + 1
        for o in self.model.graph.output:
            counts[o.name] = counts.get(o.name, 0) + 1
        return counts

    def _infer_shapes(self, skeleton: onnx.ModelProto | None = None) -> dict:
        """Sample shapes (dims after the batch) that ONNX shape inference gives each value, when static.

        skeleton: `_without_weights(self.model)` if the caller has it already (the model check built it)."""
        try:
            # Data propagation (which knows Reshape targets computed from shapes) costs time in the size of
            # the vectors it propagates, and 40 doubling Concats in a small file make that 2^40: run it only
            # when every vector the file computes is small (fold_budget.py holds the folding itself to budget).
            # Those sizes come from a plain inference of the graph without its weights (cheap: the weights
            # would be copied into the C++ inference for nothing).
            if skeleton is None:
                skeleton = _without_weights(self.model)
            inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False)
            if _vector_elements(inferred) <= _DATA_PROP_ELEMENTS:
                # the weights stay out of this one too: propagation reads integer and tiny constants only
                # (shapes, axes, scales), and copying a 100 MB model into the C++ inference took 0.3 s+
                inferred = onnx.shape_inference.infer_shapes(_without_weights(self.model, keep_values=True),
                                                             check_type=False, strict_mode=False, data_prop=True)
        except Exception:  # inference is a cross-check only; a model it cannot handle still imports
            return {}
        out = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            t = vi.type.tensor_type
            if not t.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if len(dims) >= 1 and all(d is not None for d in dims[1:]):
                out[vi.name] = tuple(dims[1:])
        return out

    def _unique_names(self) -> list:
        """IR names for the ONNX nodes: the file's own, made unique; `Conv_0` style where missing."""
        taken = Namespace(i.name for i in self.model.graph.input)  # the name authority (easc.ir.names)
        names: list = [None] * len(self.model.graph.node)
        for k, node in enumerate(self.model.graph.node):  # the first holder of a name keeps it
            if node.name and node.name not in taken:
                names[k] = taken.claim(node.name)
        for k, node in enumerate(self.model.graph.node):
            if names[k] is None:
                names[k] = taken.fresh(node.name) if node.name else taken.counter(node.op_type, start=0)
        return names

    @property
    def nodes(self) -> list:
        return self.builder.nodes

    def emit(self, name: str, op: str, inputs: list, attrs: dict, weights: dict | None, where: str,
             output: str | None = None) -> str:
        """Add IR node `name`; when it computes ONNX value `output` as is, the builder checks its shape
        against ONNX shape inference (views are checked by `cross_check` when bound)."""
        expect = None
        if output is not None and output not in self.tainted:
            expect = self.inferred.get(output)
        try:
            self.builder.add(op, inputs, attrs, weights, name=name, origin=self.origin, expect=expect)
        except IRError as e:
            msg = str(e).split(": ", 1)[-1] if str(e).startswith("node ") else str(e)
            raise self.fail(f"{where}: {msg}") from None
        self.uses[name] = 0
        for i in inputs:
            self.uses[i] += 1
        return name

    def ir_type(self, name: str) -> TensorType:
        return self.builder.type_of(name)

    def act(self, value: str, where: str) -> str:
        """The IR node behind an activation input; views must have been resolved to real nodes."""
        entry = self.env.get(value)
        if isinstance(entry, _Const):
            raise self.fail(f"{where}: input '{value}' is a constant where easc expects an activation")
        if entry is None:
            raise self.fail(f"{where}: input '{value}' is not produced by any node or graph input")
        node_type = self.ir_type(entry.node)
        if tuple(entry.shape) != tuple(node_type.shape):
            raise self.fail(f"{where}: input '{value}' has shape {_fmt(entry.shape)}, which easc cannot "
                            f"represent (values are NCHW or NC; it is a reshape of {node_type})")
        return entry.node

    def const(self, value: str, where: str, what: str = "input") -> np.ndarray:
        entry = self.env.get(value)
        if isinstance(entry, _Act):
            raise self.fail(f"{where}: {what} '{value}' must be a constant (an initializer or a Constant "
                            "node), but it is computed from the graph's inputs")
        if entry is None:
            raise self.fail(f"{where}: input '{value}' is not produced by any node or graph input")
        if entry.batch_dependent:
            raise self.fail(f"{where}: {what} '{value}' depends on the batch size")
        return entry.a

    def weight(self, value: str, where: str, what: str) -> np.ndarray:
        array = self.const(value, where, what)
        if array.dtype.kind not in "fiub":  # strings, complex numbers, objects: no float32 weights in them
            raise self.fail(f"{where}: {what} '{value}' holds {array.dtype} values, not real numbers")
        return np.ascontiguousarray(array, dtype=np.float32)

    def bind(self, output: str, node: str, where: str, sole: bool = True):
        self.env[output] = _Act(node, tuple(self.ir_type(node).shape), sole)
        self.cross_check(output, where)

    def cross_check(self, output: str, where: str):
        entry = self.env[output]
        want = self.inferred.get(output)
        if want is None or output in self.tainted:
            return
        got = tuple(entry.shape[1:])
        if tuple(want) != got:
            raise self.fail(f"{where}: easc computes shape {_fmt(entry.shape)} but ONNX shape inference "
                            f"gives [?,{','.join(map(str, want))}]")

    # -- attributes ----------------------------------------------------------------------------
    @staticmethod
    def attrs(node: onnx.NodeProto) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def pads(self, node, attrs: dict, in_hw, kernel, stride, dilation, where: str) -> tuple:
        """Symmetric (pad_h, pad_w) from `pads` or `auto_pad`; asymmetric padding is an error."""
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads_begin, pads_end = [], []
            for size, k, s, d in zip(in_hw, kernel, stride, dilation):
                out = -(-size // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
                small, big = total // 2, total - total // 2
                pads_begin.append(small if auto == "SAME_UPPER" else big)
                pads_end.append(big if auto == "SAME_UPPER" else small)
            pads = pads_begin + pads_end
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto in ("NOTSET", ""):
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
        else:
            raise self.fail(f"{where}: unknown auto_pad {auto!r}")
        if len(pads) != 4:
            raise self.fail(f"{where}: expected 4 pads for a 2-D window, got {list(pads)}")
        if pads[0] != pads[2] or pads[1] != pads[3]:
            how = f"auto_pad={auto} gives pads" if auto.startswith("SAME") else "pads"
            raise self.fail(f"{where}: asymmetric padding ({how} {list(pads)}) cannot be represented "
                            "(easc pads each axis symmetrically, as torch.nn.Conv2d)")
        return int(pads[0]), int(pads[1])

    def no_extra_outputs(self, node, where: str, what: str):
        for extra in node.output[1:]:
            if extra and self.consumers.get(extra):
                raise self.fail(f"{where}: its {what} output '{extra}' is used, which easc does not support "
                                "(only the eval-mode result is)")

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> Graph:
        g = self.model.graph
        initializers = {t.name: t for t in g.initializer}
        for name, tensor in initializers.items():
            try:
                self.env[name] = _const(numpy_helper.to_array(tensor))
            except Exception as e:  # noqa: BLE001 - a size or type the data does not match, of many kinds
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise self.fail(f"initializer '{name}' cannot be read ({reason[:200]})") from None
        for inp in g.input:
            if inp.name in initializers:
                continue  # IR version < 4 lists initializers among the inputs too
            self._input(inp)
        self.builder.reserved = set(self._unique_names())
        for node, name in zip(g.node, self._unique_names()):
            self._node(node, name)
        outputs = {}
        for out in g.output:
            where = f"graph output '{out.name}'"
            entry = self.env.get(out.name)
            if entry is None:
                raise self.fail(f"{where} is not produced by any node")
            if isinstance(entry, _Const):
                raise self.fail(f"{where} is a constant (it does not depend on the graph's inputs)")
            outputs[out.name] = self.act(out.name, where)
        self._prune_fused(outputs)
        graph = Graph(self.builder.nodes, outputs, self.graph_name)
        try:
            return verify(graph)
        except IRError as e:
            raise self.fail(f"the imported graph does not verify: {e}") from None

    def _input(self, inp: onnx.ValueInfoProto):
        where = f"graph input '{inp.name}'"
        t = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise self.fail(f"{where} is not a tensor")
        if t.elem_type != onnx.TensorProto.FLOAT:
            dtype = onnx.TensorProto.DataType.Name(t.elem_type)
            raise self.fail(f"{where} is {dtype}; easc imports float32 networks")
        if not t.HasField("shape") or len(t.shape.dim) < 2:
            raise self.fail(f"{where} needs a declared shape of rank >= 2 (batch first)")
        first = t.shape.dim[0]
        if first.HasField("dim_value") and first.dim_value > 0:
            self.file_batch = self.file_batch or int(first.dim_value)
        sample = []
        for d in t.shape.dim[1:]:
            if not d.HasField("dim_value"):
                raise self.fail(f"{where} has a dynamic dimension '{d.dim_param or '?'}' after the batch; "
                                "easc needs fixed sample shapes")
            if d.dim_value < 1:
                raise self.fail(f"{where} has dimension {d.dim_value} after the batch; dimensions must be positive")
            sample.append(int(d.dim_value))
        node = Node(inp.name, "input", (), {}, TensorType((BATCH,) + tuple(sample)))
        self.builder.input(inp.name, node.type.sample_shape)
        self.uses[inp.name] = 0
        self.env[inp.name] = _Act(inp.name, node.type.shape)

    def _node(self, node: onnx.NodeProto, name: str):
        op = node.op_type
        where = f"node '{name}' ({op})"
        present = [i for i in node.input if i]
        missing = [i for i in present if i not in self.env]
        if missing:
            raise self.fail(f"{where}: input '{missing[0]}' is not produced by any earlier node")
        standard = node.domain in ("", "ai.onnx")
        # easc's exporter records where a pass-inserted node came from (exporter.ORIGIN_KEY).
        self.origin = next((p.value for p in node.metadata_props if p.key == ORIGIN_KEY), "")
        if any(i in self.tainted for i in present):
            self.tainted.update(o for o in node.output if o)
        if not any(isinstance(self.env[i], _Act) for i in present):
            if not standard or op in _NOT_FOLDABLE:
                raise self._unsupported(node, name)
            return self._fold(node, where)
        if not standard or op not in SUPPORTED_OPS:
            raise self._unsupported(node, name)
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:  # a one-to-one pattern of the op table, no attributes of its own
            ir_op = next(o for o, low in LOWERINGS.items() if op in low.onnx_in)
            return self._simple(node, name, where, ir_op)
        handler(node, name, where)

    def _unsupported(self, node, name) -> OnnxImportError:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        return self.fail(f"operator '{op}' (node '{name}') is not supported by easc "
                         f"(supported: {', '.join(SUPPORTED_OPS)}, and any operator on constants only)")

    # -- constants -----------------------------------------------------------------------------
    def _op_Shape(self, node, name, where):
        entry = self.env[node.input[0]]
        attrs = self.attrs(node)
        window = slice(attrs.get("start", 0), attrs.get("end", None))
        a, b = (np.array([batch if d == BATCH else int(d) for d in entry.shape][window], dtype=np.int64)
                for batch in _SENTINELS)
        self.env[node.output[0]] = _const(a) if np.array_equal(a, b) else _Const(a, b)

    def _fold(self, node, where):
        """Evaluate a node whose inputs are all constants, under both sentinel batch sizes."""
        if node.op_type == "Identity" and len(node.input) == 1 and node.input[0] and len(node.output) == 1 \
                and node.output[0]:
            # the same constant under another name (exporters alias weights they share this way: 245 of them in
            # a DenseNet-121): nothing is computed or made, so nothing is charged against the folding budget
            self.env[node.output[0]] = self.env[node.input[0]]
            return
        ins = [self.env[i] if i else None for i in node.input]
        dependent = any(e is not None and e.batch_dependent for e in ins)
        results = []
        for run in ((0, 1) if dependent else (0,)):
            args = [None if e is None else (e.a if run == 0 else e.b) for e in ins]
            try:
                self.fold_budget.before(node, args)
                results.append(self._evaluate(node, args))
                self.fold_budget.after(results[-1])
            except FoldBudgetError as e:
                raise self.fail(f"{where}: {e}") from None
            except OnnxImportError:
                raise
            except Exception as e:  # the reference evaluator's errors are of many types
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise self.fail(f"{where}: cannot evaluate this constant expression ({reason[:200]})") from None
        for k, out in enumerate(node.output):
            if not out:
                continue
            a = np.asarray(results[0][k])
            b = np.asarray(results[-1][k])
            same = a is b or (a.shape == b.shape and np.array_equal(a, b))
            self.env[out] = _const(a) if same else _Const(a, b)

    def _evaluate(self, node, args: list) -> list:
        attrs = self.attrs(node)
        if node.op_type in ("Squeeze", "Unsqueeze") and "axes" not in attrs:
            axes = args[1] if len(args) > 1 and args[1] is not None else None
        else:
            axes = attrs.get("axes")
        if node.op_type == "Unsqueeze":
            x = args[0]
            rank = x.ndim + len(axes)
            return [np.expand_dims(x, tuple(sorted(int(a) % rank for a in axes)))]
        if node.op_type == "Squeeze":
            x = args[0]
            if axes is None:
                return [np.squeeze(x)]
            return [np.squeeze(x, axis=tuple(int(a) % x.ndim for a in axes))]
        if node.op_type == "Identity":
            return [args[0]]
        from onnx.reference import ReferenceEvaluator

        feeds, inputs = {}, []
        for k, arg in enumerate(args):
            if arg is None:
                inputs.append("")
            else:
                inputs.append(f"in{k}")
                feeds[f"in{k}"] = arg
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        del clone.input[:]
        clone.input.extend(inputs)
        del clone.output[:]
        clone.output.extend([f"out{k}" if o else "" for k, o in enumerate(node.output)])
        ev = ReferenceEvaluator(clone, opsets={"": self.opset})
        wanted = [f"out{k}" for k, o in enumerate(node.output) if o]
        values = ev.run(wanted, feeds)
        by_name = dict(zip(wanted, values))
        return [by_name.get(f"out{k}") for k in range(len(node.output))]

    # -- views ---------------------------------------------------------------------------------
    def _view(self, node, name, where, target: tuple, always_flatten: bool = False):
        """Bind node.output[0] to the input activation seen with shape `target` (batch first)."""
        entry: _Act = self.env[node.input[0]]
        base_type = self.ir_type(entry.node)
        out = node.output[0]
        flat = (BATCH, math.prod(base_type.sample_shape))
        if tuple(target) == tuple(base_type.shape) and not always_flatten:
            self.env[out] = self._alias(node.input[0], target)
        elif tuple(target) == flat:
            self.emit(name, "flatten", [entry.node], {}, None, where)
            self.bind(out, name, where)
            return
        else:
            self.env[out] = self._alias(node.input[0], target)
        self.cross_check(out, where)

    def _alias(self, value: str, shape) -> _Act:
        """`value`'s IR node seen as a new ONNX value; a bias can still fold into it only if nothing
        else reads `value`."""
        entry: _Act = self.env[value]
        return _Act(entry.node, tuple(shape), entry.sole and self.consumers.get(value, 0) == 1)

    def _view_input(self, node, where) -> _Act:
        entry = self.env[node.input[0]]
        if not isinstance(entry, _Act):
            raise self.fail(f"{where}: expected an activation")
        return entry

    def _op_Reshape(self, node, name, where):
        entry = self._view_input(node, where)
        target = self.env[node.input[1]]
        if isinstance(target, _Act):
            raise self.fail(f"{where}: the target shape is computed from activations")
        allowzero = self.attrs(node).get("allowzero", 0)
        ta, tb = np.asarray(target.a).reshape(-1), np.asarray(target.b).reshape(-1)
        dims: list = []
        for k, (x, y) in enumerate(zip(ta.tolist(), tb.tolist())):
            if (x, y) == _SENTINELS:
                dims.append(BATCH)
            elif x != y:
                raise self.fail(f"{where}: target shape entry {k} depends on the batch size in a way easc "
                                "cannot follow (only the batch dimension itself may)")
            elif x == 0 and not allowzero:
                if k >= len(entry.shape):
                    raise self.fail(f"{where}: target shape copies dimension {k}, which the input lacks")
                dims.append(entry.shape[k])
            else:
                dims.append(int(x))
        total = math.prod(entry.shape[1:])
        if not dims:
            raise self.fail(f"{where}: reshape to a scalar removes the batch dimension")
        first = dims[0]
        rest = dims[1:]
        if BATCH in rest:
            raise self.fail(f"{where}: the batch dimension must stay first (target {_fmt(dims)})")
        if first == BATCH or first == -1 or (self.file_batch is not None and first == self.file_batch):
            known = math.prod(d for d in rest if d != -1)
            if rest.count(-1) > 1 or (first == -1 and -1 in rest):
                raise self.fail(f"{where}: target shape {_fmt(dims)} has more than one -1")
            if -1 in rest:
                if known == 0 or total % known:
                    raise self.fail(f"{where}: cannot reshape {_fmt(entry.shape)} to {_fmt(dims)}")
                rest = [total // known if d == -1 else d for d in rest]
            elif math.prod(rest) != total:
                raise self.fail(f"{where}: reshape {_fmt(entry.shape)} to {_fmt(dims)} mixes the batch with "
                                f"other dimensions (easc keeps the batch dimension separate)")
        else:
            fixed = "the batch size" if self.file_batch is None else f"the file's batch size {self.file_batch}"
            raise self.fail(f"{where}: target shape {_fmt(dims)} does not keep the batch first (its first "
                            f"entry is neither -1, 0 nor {fixed})")
        self._view(node, name, where, (BATCH,) + tuple(int(d) for d in rest))

    def _axes(self, node, where, rank: int | None = None):
        """The `axes` attribute (older opsets) or input (newer), normalised for `rank`; None if absent."""
        attrs = self.attrs(node)
        if "axes" in attrs:
            axes = [int(a) for a in attrs["axes"]]
        elif len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in np.asarray(self.const(node.input[1], where, "axes")).reshape(-1)]
        else:
            return None
        return axes if rank is None else sorted(a % rank for a in axes)

    def _op_Squeeze(self, node, name, where):
        entry = self._view_input(node, where)
        shape = list(entry.shape)
        axes = self._axes(node, where, len(shape))
        if axes is None:  # all size-1 axes; never the batch, whatever size the file gave it
            axes = [k for k in range(1, len(shape)) if shape[k] == 1]
        if 0 in axes:
            raise self.fail(f"{where}: squeezing the batch dimension is not supported")
        if any(shape[k] != 1 for k in axes):
            raise self.fail(f"{where}: cannot squeeze axes {axes} of shape {_fmt(shape)}")
        self._view(node, name, where, tuple(d for k, d in enumerate(shape) if k not in axes))

    def _op_Unsqueeze(self, node, name, where):
        entry = self._view_input(node, where)
        shape = list(entry.shape)
        rank = len(shape) + len(self._axes(node, where) or [])
        axes = self._axes(node, where, rank)
        if not axes or 0 in axes:
            raise self.fail(f"{where}: unsqueezing before the batch dimension is not supported")
        for a in axes:
            shape.insert(a, 1)
        self._view(node, name, where, tuple(shape))

    def _op_Flatten(self, node, name, where):
        entry = self._view_input(node, where)
        axis = self.attrs(node).get("axis", 1)
        if axis % len(entry.shape) != 1:
            raise self.fail(f"{where}: axis={axis} is not supported (easc flattens all but the batch, axis=1)")
        self._view(node, name, where, (BATCH, math.prod(entry.shape[1:])), always_flatten=True)

    def _op_Identity(self, node, name, where):
        entry = self.env[node.input[0]]
        out = node.output[0]
        if isinstance(entry, _Const):
            self.env[out] = entry
            return
        self.env[out] = self._alias(node.input[0], entry.shape)

    def _op_Cast(self, node, name, where):
        to = self.attrs(node).get("to")
        if to != onnx.TensorProto.FLOAT:
            raise self.fail(f"{where}: casting an activation to "
                            f"{onnx.TensorProto.DataType.Name(to)} is not supported (easc computes in float32)")
        self._op_Identity(node, name, where)

    # -- layers --------------------------------------------------------------------------------
    def _simple(self, node, name, where, op, attrs=None, weights=None, inputs=None):
        ins = inputs if inputs is not None else [self.act(node.input[0], where)]
        self.emit(name, op, ins, attrs or {}, weights, where, output=node.output[0])
        self.bind(node.output[0], name, where)

    def _op_Conv(self, node, name, where):
        x = self.act(node.input[0], where)
        xt = self.ir_type(x)
        w = self.weight(node.input[1], where, "weight")
        if w.ndim != 4 or xt.rank != 4:
            raise self.fail(f"{where}: only 2-D convolutions are supported (weight shape {list(w.shape)}, "
                            f"input {xt})")
        attrs = self.attrs(node)
        kernel = tuple(attrs.get("kernel_shape", w.shape[2:]))
        if tuple(kernel) != tuple(w.shape[2:]):
            raise self.fail(f"{where}: kernel_shape {list(kernel)} disagrees with the weight {list(w.shape)}")
        stride = tuple(attrs.get("strides", (1, 1)))
        dilation = tuple(attrs.get("dilations", (1, 1)))
        padding = self.pads(node, attrs, xt.shape[2:], kernel, stride, dilation, where)
        weights = {"weight": w}
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if has_bias:
            weights["bias"] = self.weight(node.input[2], where, "bias").reshape(-1)
        self.layer_origin[name] = "Conv"
        self._simple(node, name, where, "conv2d",
                     dict(out=w.shape[0], kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                          groups=attrs.get("group", 1), bias=has_bias), weights, [x])

    def _op_BatchNormalization(self, node, name, where):
        attrs = self.attrs(node)
        if attrs.get("training_mode", 0):
            raise self.fail(f"{where}: training_mode=1 is not supported (export the model in eval mode)")
        if "spatial" in attrs and not attrs["spatial"]:
            raise self.fail(f"{where}: spatial=0 is not supported")
        self.no_extra_outputs(node, where, "running-statistics")
        weights = {key: self.weight(node.input[k], where, key).reshape(-1)
                   for k, key in enumerate(("scale", "bias", "mean", "var"), 1)}
        momentum = 1.0 - float(attrs.get("momentum", 0.9))  # ONNX keeps the old statistics' share
        self._simple(node, name, where, "batchnorm",
                     dict(eps=_float32_value(attrs.get("epsilon", 1e-5)), momentum=float(f"{momentum:.6g}")),
                     weights)

    def _op_Relu(self, node, name, where):
        self._simple(node, name, where, "relu")

    def _pool(self, node, name, where, op):
        x = self.act(node.input[0], where)
        xt = self.ir_type(x)
        if xt.rank != 4:
            raise self.fail(f"{where}: only 2-D pooling is supported (input {xt})")
        attrs = self.attrs(node)
        kernel = tuple(attrs["kernel_shape"])
        stride = tuple(attrs.get("strides", (1, 1)))
        if tuple(attrs.get("dilations", (1, 1))) != (1, 1):
            raise self.fail(f"{where}: dilated pooling (dilations={list(attrs['dilations'])}) is not supported")
        easc_ceil = any(p.key == CEIL_KEY and p.value == "1" for p in node.metadata_props)
        if easc_ceil and not attrs.get("ceil_mode", 0) and len(attrs.get("pads", ())) == 4:
            pads = list(attrs["pads"])
            padding, ceil = (int(pads[0]), int(pads[1])), True
        else:
            easc_ceil = False
            padding = self.pads(node, attrs, xt.shape[2:], kernel, stride, (1, 1), where)
            ceil = bool(attrs.get("ceil_mode", 0))
        ir_attrs = dict(kernel=kernel, stride=stride, padding=padding, ceil=ceil)
        if op == "avgpool2d":
            ir_attrs["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
        self.no_extra_outputs(node, where, "indices")
        if ceil:  # ONNX's shape inference and the runtime disagree here (see the module docstring)
            plain = [plain_ceil_output_size(size, k, s, p)
                     for size, k, s, p in zip(xt.shape[2:], kernel, stride, padding)]
            try:
                real = [pool_output_size(size, k, s, p, 1, True)
                        for size, k, s, p in zip(xt.shape[2:], kernel, stride, padding)]
            except Exception:
                real = plain
            if plain != real and not easc_ceil:
                self.tainted.add(node.output[0])
        self._simple(node, name, where, op, ir_attrs, None, [x])
        if easc_ceil:  # the file's floor-mode pool with its end pads must be the IR's ceil-mode pool
            pads = attrs["pads"]
            written = [pool_output_size(size + pads[i + 2] - pads[i], k, s, pads[i])
                       for i, (size, k, s) in enumerate(zip(xt.shape[2:], kernel, stride))]
            if written != list(self.ir_type(name).shape[2:]):
                raise self.fail(f"{where}: its {CEIL_KEY} metadata does not match its pads {list(pads)}")

    def _op_MaxPool(self, node, name, where):
        self._pool(node, name, where, "maxpool2d")

    def _op_AveragePool(self, node, name, where):
        self._pool(node, name, where, "avgpool2d")

    def _op_GlobalAveragePool(self, node, name, where):
        self._simple(node, name, where, "global_avgpool")

    def _op_ReduceMean(self, node, name, where):
        x = self.act(node.input[0], where)
        xt = self.ir_type(x)
        attrs = self.attrs(node)
        axes = self._axes(node, where, xt.rank)
        if xt.rank != 4 or axes != [2, 3]:
            raise self.fail(f"{where}: only the mean over H and W of an NCHW value is supported "
                            f"(axes {axes if axes is not None else 'all'} of {xt})")
        if attrs.get("keepdims", 1):
            return self._simple(node, name, where, "global_avgpool", inputs=[x])
        self.emit(name, "global_avgpool", [x], {}, None, where)
        flat = self.builder.fresh(f"{name}/flatten")
        self.emit(flat, "flatten", [name], {}, None, where)
        self.bind(node.output[0], flat, where)

    def _op_Gemm(self, node, name, where):
        attrs = self.attrs(node)
        if attrs.get("transA", 0):
            raise self.fail(f"{where}: transA=1 is not supported (the activation must be the left operand)")
        x = self.act(node.input[0], where)
        b = self.weight(node.input[1], where, "B")
        if b.ndim != 2:
            raise self.fail(f"{where}: B must be a matrix, got shape {list(b.shape)}")
        weight = b if attrs.get("transB", 0) else b.T
        alpha = np.float32(attrs.get("alpha", 1.0))
        # one copy at most (none for torch's transB=1, alpha=1 layers): a VGG classifier's weights are 300 MB
        weight = np.ascontiguousarray(weight if alpha == 1 else weight * alpha, dtype=np.float32)
        weights = {"weight": weight}
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if has_bias:
            c = self.weight(node.input[2], where, "C") * np.float32(attrs.get("beta", 1.0))
            weights["bias"] = self._channel_vector(c, (1, weight.shape[0]), where, "C")
        self.layer_origin[name] = "Gemm"
        self._simple(node, name, where, "linear", dict(out=weight.shape[0], bias=has_bias), weights, [x])

    def _op_MatMul(self, node, name, where):
        if isinstance(self.env[node.input[0]], _Const):
            raise self.fail(f"{where}: a constant times an activation is not supported (easc's linear layer "
                            "computes x W^T)")
        x = self.act(node.input[0], where)
        b = self.weight(node.input[1], where, "weight (second input)")
        if b.ndim != 2 or self.ir_type(x).rank != 2:
            raise self.fail(f"{where}: only a (batch, features) activation times a constant matrix is "
                            f"supported (got {self.ir_type(x)} and weight {list(b.shape)})")
        self.layer_origin[name] = "MatMul"
        self._simple(node, name, where, "linear", dict(out=b.shape[1], bias=False),
                     {"weight": np.ascontiguousarray(b.T)}, [x])

    def _channel_vector(self, c: np.ndarray, like: tuple, where: str, what: str) -> np.ndarray:
        """A constant added to a value of shape `like` (batch 1) as a per-channel vector, or an error."""
        rank = len(like)
        if c.ndim > rank:
            raise self.fail(f"{where}: {what} of shape {list(c.shape)} does not broadcast per channel")
        full = c.reshape((1,) * (rank - c.ndim) + c.shape)
        if full.shape[0] != 1 or any(d != 1 for d in full.shape[2:]) or full.shape[1] not in (1, like[1]):
            raise self.fail(f"{where}: {what} of shape {list(c.shape)} is not a per-channel bias for a value "
                            f"with {like[1]} channels")
        return np.ascontiguousarray(np.broadcast_to(full.reshape(-1), (like[1],)), dtype=np.float32)

    def _op_Add(self, node, name, where):
        a, b = (self.env[i] for i in node.input[:2])
        if isinstance(a, _Act) and isinstance(b, _Act):
            return self._simple(node, name, where, "add",
                                inputs=[self.act(node.input[0], where), self.act(node.input[1], where)])
        value, const = (node.input[0], node.input[1]) if isinstance(a, _Act) else (node.input[1], node.input[0])
        entry: _Act = self.env[value]
        layer = entry.node
        target = self.builder.node(layer)
        c = self.weight(const, where, "addend")
        foldable = (target.op in ("conv2d", "linear") and layer in self.layer_origin and entry.sole
                    and self.uses[layer] == 0 and self.consumers.get(value, 0) == 1
                    and value not in self.graph_outputs
                    and tuple(entry.shape) == tuple(target.type.shape))
        if not foldable:
            why = ("its other input is not the output of a Conv, Gemm or MatMul" if target.op not in
                   ("conv2d", "linear") or layer not in self.layer_origin
                   else f"'{value}' is also read elsewhere, so the bias cannot be folded into its layer")
            raise self.fail(f"{where}: adding a constant to an activation is supported only as the bias of a "
                            f"Conv, Gemm or MatMul ({why})")
        like = (1,) + tuple(target.type.shape[1:])
        bias = self._channel_vector(c, like, where, "the constant")
        weights = dict(target.weights)
        weights["bias"] = (weights.get("bias", np.zeros_like(bias)) + bias).astype(np.float32)
        attrs = dict(target.attrs, bias=True)
        ins = [self.ir_type(i) for i in target.inputs]
        self.builder.replace_node(make_node(layer, target.op, target.inputs, ins, attrs, weights, origin=target.origin))
        self.env[node.output[0]] = _Act(layer, entry.shape, self.consumers.get(node.output[0], 0) <= 1)
        self.cross_check(node.output[0], where)

    def _op_Sum(self, node, name, where):
        inputs = [self.act(i, where) for i in node.input]
        if len(inputs) == 1:
            return self._op_Identity(node, name, where)
        self._simple(node, name, where, "add", inputs=inputs)

    def _op_Concat(self, node, name, where):
        entries = [self.env[i] for i in node.input]
        if not all(isinstance(e, _Act) for e in entries):
            raise self.fail(f"{where}: concatenating constants with activations is not supported")
        inputs = [self.act(i, where) for i in node.input]
        rank = self.ir_type(inputs[0]).rank
        axis = self.attrs(node).get("axis")
        if axis is None or axis % rank != 1:
            raise self.fail(f"{where}: only concatenation along the channel axis (axis=1) is supported, "
                            f"got axis={axis}")
        self._simple(node, name, where, "concat", inputs=inputs)

    def _op_Dropout(self, node, name, where):
        attrs = self.attrs(node)
        self.no_extra_outputs(node, where, "mask")
        ratio = attrs.get("ratio", 0.5)
        if len(node.input) > 1 and node.input[1]:
            ratio = float(np.asarray(self.const(node.input[1], where, "ratio")).reshape(()))
        if len(node.input) > 2 and node.input[2]:
            if bool(np.asarray(self.const(node.input[2], where, "training_mode")).reshape(())):
                raise self.fail(f"{where}: training_mode is true (export the model in eval mode)")
        self._simple(node, name, where, "dropout", {"p": _float32_value(ratio)})

    def _op_Softmax(self, node, name, where):
        x = self.act(node.input[0], where)
        rank = self.ir_type(x).rank
        axis = self.attrs(node).get("axis", -1 if self.opset >= 13 else 1)
        if rank != 2 or axis % rank != 1:
            raise self.fail(f"{where}: only softmax over the class axis of an (N, C) value is supported "
                            f"(axis={axis} on {self.ir_type(x)})")
        self._simple(node, name, where, "softmax", inputs=[x])

    # -- mobile-network ops ----------------------------------------------------------------------
    def _scalar(self, node, k: int, where: str, what: str, default):
        if len(node.input) > k and node.input[k]:
            value = np.asarray(self.const(node.input[k], where, what))
            if value.size != 1 or value.dtype.kind not in "fiub":
                raise self.fail(f"{where}: {what} '{node.input[k]}' must be one real number, not {value.dtype} "
                                f"values of shape {_fmt(value.shape)}")
            return float(value.reshape(()))
        return default

    def _op_Clip(self, node, name, where):
        attrs = self.attrs(node)
        lo = self._scalar(node, 1, where, "min", attrs.get("min", -np.inf))
        hi = self._scalar(node, 2, where, "max", attrs.get("max", np.inf))
        if not lo < hi:
            raise self.fail(f"{where}: min {lo} is not below max {hi}")
        self._simple(node, name, where, "clip", {"min": _float32_value(lo), "max": _float32_value(hi)})

    def _op_LeakyRelu(self, node, name, where):
        self._simple(node, name, where, "leaky_relu", {"slope": _float32_value(self.attrs(node).get("alpha", 0.01))})

    def _op_Swish(self, node, name, where):
        alpha = float(self.attrs(node).get("alpha", 1.0))
        if alpha != 1.0:
            raise self.fail(f"{where}: Swish with alpha={alpha:g} is not supported (easc's silu is x sigmoid(x))")
        self._simple(node, name, where, "silu")

    def _op_HardSigmoid(self, node, name, where):
        attrs = self.attrs(node)
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
            raise self.fail(f"{where}: HardSigmoid with alpha={alpha:g}, beta={beta:g} is not supported (easc's "
                            f"hardsigmoid is torch's: alpha=1/6, beta=0.5)")
        self._simple(node, name, where, "hardsigmoid")

    def _op_Mul(self, node, name, where):
        a, b = (self.env[i] for i in node.input[:2])
        if not (isinstance(a, _Act) and isinstance(b, _Act)):
            raise self.fail(f"{where}: multiplying an activation by a constant is not supported (easc multiplies "
                            f"two activations: a gate, or x * sigmoid(x))")
        x, y = (self._gate_or_act(i, where) for i in node.input[:2])
        for value, other in ((x, y), (y, x)):  # x * sigmoid(x) is silu, x * hardsigmoid(x) hardswish
            gate = self.builder.node(other)
            fused = {"sigmoid": "silu", "hardsigmoid": "hardswish"}.get(gate.op)
            if fused and gate.inputs == (value,) and x != y:
                self.fused.add(other)
                return self._simple(node, name, where, fused, inputs=[value])
        tx, ty = self.ir_type(x), self.ir_type(y)
        if tx.rank == 2 and ty.rank == 4 or (tx.rank == 4 and ty.rank == 4 and tuple(tx.shape[2:]) == (1, 1)
                                            and tuple(ty.shape[2:]) != (1, 1)):
            x, y = y, x  # the gate, (N, C, 1, 1) or (N, C), goes second
        self._simple(node, name, where, "mul", inputs=[x, y])

    def _gate_or_act(self, value: str, where: str) -> str:
        """An activation input of Mul; an (N, C) value seen as (N, C, 1, 1), or expanded from that to
        (N, C, H, W), is a per-channel gate as it is."""
        entry = self.env[value]
        base = self.ir_type(entry.node)
        if base.rank == 2 and len(entry.shape) == 4 and entry.shape[1] == base.channels:
            return entry.node
        return self.act(value, where)

    def _op_Expand(self, node, name, where):
        """Broadcasting before a product (SENet's `y.expand_as(x)`): a view, no data of its own."""
        entry = self._view_input(node, where)
        target = self.env[node.input[1]]
        if isinstance(target, _Act):
            raise self.fail(f"{where}: the target shape is computed from activations")
        dims = []
        for x, y in zip(np.asarray(target.a).reshape(-1).tolist(), np.asarray(target.b).reshape(-1).tolist()):
            if x != y and (x, y) != _SENTINELS:
                raise self.fail(f"{where}: the target shape depends on the batch size in a way easc cannot follow")
            dims.append(BATCH if x != y else int(x))
        shape = list(entry.shape)
        if len(dims) != len(shape):
            raise self.fail(f"{where}: only an expand that keeps the rank is supported ({_fmt(shape)} to {_fmt(dims)})")
        out = []
        for have, want in zip(shape, dims):
            if want == 1 or want == have or have == BATCH:
                out.append(have)
            elif have == 1:
                out.append(want)
            else:
                raise self.fail(f"{where}: cannot expand {_fmt(shape)} to {_fmt(dims)}")
        base = self.ir_type(entry.node)
        if tuple(out) != tuple(base.shape) and not (base.rank == 2 and len(out) == 4 and out[1] == base.channels):
            raise self.fail(f"{where}: only expanding a per-channel gate (N, C, 1, 1) is supported (to {_fmt(out)})")
        self.env[node.output[0]] = _Act(entry.node, tuple(out), False)

    def _prune_fused(self, outputs: dict):
        """Drop nodes a fused op absorbed when nothing else reads them (sigmoid of x * sigmoid(x))."""
        if not self.fused:
            return
        read = {i for n in self.nodes for i in n.inputs} | set(outputs.values())
        dead = {n for n in self.fused if n not in read}
        if dead:
            self.builder.nodes[:] = [n for n in self.builder.nodes if n.name not in dead]

    def _channel_range(self, x: str, start: int, end: int, step: int, where: str) -> tuple:
        c = self.ir_type(x).channels
        if step != 1:
            raise self.fail(f"{where}: only slices with step 1 are supported (got step {step})")
        start = min(max(start + c if start < 0 else start, 0), c)
        end = min(max(end + c if end < 0 else end, 0), c)
        if start >= end:
            raise self.fail(f"{where}: the slice [{start}, {end}) of the {c} channels is empty")
        return start, end

    def _op_Slice(self, node, name, where):
        x = self.act(node.input[0], where)
        xt = self.ir_type(x)
        attrs = self.attrs(node)
        if self.opset < 10:
            starts, ends = list(attrs["starts"]), list(attrs["ends"])
            axes = list(attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            def vec(k, what):
                return [int(v) for v in np.asarray(self.const(node.input[k], where, what)).reshape(-1)]

            starts, ends = vec(1, "starts"), vec(2, "ends")
            axes = vec(3, "axes") if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
            steps = vec(4, "steps") if len(node.input) > 4 and node.input[4] else [1] * len(starts)
        channel = None
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis %= xt.rank
            size = xt.shape[axis]
            whole = step == 1 and start in (0, -size) or start <= -size and step == 1
            if axis != 1 and not (whole and end >= size):
                raise self.fail(f"{where}: only slices along the channel axis are supported (axis {axis} of {xt})")
            if axis == 1:
                channel = self._channel_range(x, start, end, step, where)
        if channel is None or channel == (0, xt.channels):
            return self._op_Identity(node, name, where)
        self._simple(node, name, where, "slice", {"start": channel[0], "end": channel[1]}, inputs=[x])

    def _op_Split(self, node, name, where):
        x = self.act(node.input[0], where)
        xt = self.ir_type(x)
        attrs = self.attrs(node)
        if attrs.get("axis", 0) % xt.rank != 1:
            raise self.fail(f"{where}: only splits along the channel axis are supported (axis={attrs.get('axis', 0)})")
        outs = list(node.output)
        if len(node.input) > 1 and node.input[1]:
            sizes = [int(v) for v in np.asarray(self.const(node.input[1], where, "split")).reshape(-1)]
        elif "split" in attrs:
            sizes = [int(v) for v in attrs["split"]]
        else:  # equal parts, the last one smaller if they do not divide (opset 18's num_outputs)
            part = -(-xt.channels // len(outs))
            sizes = [min(part, xt.channels - k * part) for k in range(len(outs))]
        if len(sizes) != len(outs) or sum(sizes) != xt.channels or min(sizes) <= 0:
            raise self.fail(f"{where}: split sizes {sizes} do not cut the {xt.channels} channels into "
                            f"{len(outs)} parts")
        start = 0
        for k, (out, size) in enumerate(zip(outs, sizes)):
            if out:
                part = name if k == 0 else self.builder.fresh(f"{name}_{k}")
                self.emit(part, "slice", [x], {"start": start, "end": start + size}, None, where)
                self.bind(out, part, where)
            start += size

    def _op_Gather(self, node, name, where):
        """A constant 1-D index on the channel axis of an activation: a `channel_gather`."""
        x = self.act(node.input[0], where)
        xt = self.ir_type(x)
        axis = int(self.attrs(node).get("axis", 0))
        if axis % xt.rank != 1:
            raise self.fail(f"{where}: only a gather along the channel axis is supported (axis={axis} of {xt})")
        index = np.asarray(self.const(node.input[1], where, "indices"))
        if index.ndim != 1 or index.size == 0 or index.dtype.kind not in "iu":
            raise self.fail(f"{where}: only a non-empty 1-D integer index of channels is supported (got shape "
                            f"{list(index.shape)}, {index.dtype})")
        c = xt.channels
        if index.min() < -c or index.max() >= c:
            raise self.fail(f"{where}: index {int(index.min())}..{int(index.max())} is out of range for the {c} "
                            f"channels")
        self._simple(node, name, where, "channel_gather", {"index": tuple(int(i) % c for i in index)}, inputs=[x])

    def _op_Pad(self, node, name, where):
        x = self.act(node.input[0], where)
        xt = self.ir_type(x)
        attrs = self.attrs(node)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode != "constant":
            raise self.fail(f"{where}: only constant padding is supported (mode={mode!r})")
        if self.opset < 11:
            pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
        else:
            pads = [int(v) for v in np.asarray(self.const(node.input[1], where, "pads")).reshape(-1)]
            value = self._scalar(node, 2, where, "constant_value", 0.0)
        rank = xt.rank
        if len(node.input) > 3 and node.input[3]:  # opset 18: pads for the listed axes only
            axes = [int(a) % rank for a in np.asarray(self.const(node.input[3], where, "axes")).reshape(-1)]
            full = [0] * (2 * rank)
            for k, a in enumerate(axes):
                full[a], full[a + rank] = pads[k], pads[k + len(axes)]
            pads = full
        if rank != 4 or len(pads) != 8 or any(pads[k] for k in (0, 1, 4, 5)) or min(pads) < 0:
            raise self.fail(f"{where}: only non-negative padding of H and W of an NCHW value is supported "
                            f"(pads {pads} on {xt})")
        if not any(pads):
            return self._op_Identity(node, name, where)
        self._simple(node, name, where, "pad", {"pads": (pads[2], pads[3], pads[6], pads[7]),
                                                 "value": _float32_value(value)}, inputs=[x])

    def _op_Transpose(self, node, name, where):
        """The middle of a channel shuffle: (N, g, C/g, H, W) -> (N, C/g, g, H, W) of an NCHW value."""
        entry = self._view_input(node, where)
        perm = [int(p) for p in self.attrs(node).get("perm", [])]
        base = self.ir_type(entry.node)
        shape = tuple(entry.shape)
        if (base.rank == 4 and len(shape) == 5 and perm == [0, 2, 1, 3, 4]
                and shape[1] * shape[2] == base.channels and tuple(shape[3:]) == tuple(base.shape[2:])):
            self.emit(name, "channel_shuffle", [entry.node], {"groups": int(shape[1])}, None, where)
            self.env[node.output[0]] = _Act(name, (BATCH, shape[2], shape[1]) + tuple(shape[3:]))
            return
        raise self.fail(f"{where}: only the transpose of a channel shuffle is supported (perm [0,2,1,3,4] of an "
                        f"NCHW value reshaped to (N, groups, C/groups, H, W)); got perm {perm} of {_fmt(shape)}")



_DATA_PROP_ELEMENTS = 2**20  # ~0.1 s of propagation


_INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                  onnx.TensorProto.UINT64, onnx.TensorProto.UINT32, onnx.TensorProto.UINT16, onnx.TensorProto.UINT8}


def _without_weights(model: onnx.ModelProto, keep_values: bool = False) -> onnx.ModelProto:
    """The model with its initializers declared as inputs of their type: what shape inference needs.

    keep_values: keep the initializers data propagation reads (integer tensors and ones of at most 64
    numbers: shapes, axes, Resize scales) with their values; only the weights are declared instead."""
    graph = model.graph

    def kept(t) -> bool:
        return keep_values and (t.data_type in _INTEGER_TYPES or int(np.prod(t.dims)) <= 64)

    declared = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in graph.initializer if not kept(t)]
    known = {i.name for i in graph.input}
    stripped = onnx.helper.make_graph(list(graph.node), graph.name,
                                      list(graph.input) + [d for d in declared if d.name not in known],
                                      list(graph.output), [t for t in graph.initializer if kept(t)])
    out = onnx.helper.make_model(stripped, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    out.functions.extend(model.functions)  # model-local functions the nodes may call
    return out


def _vector_elements(model: onnx.ModelProto) -> int:
    """Elements of all rank-0/1 values with a known length (what ONNX's data propagation would carry)."""
    total = 0
    for vi in model.graph.value_info:
        t = vi.type.tensor_type
        if t.HasField("shape") and len(t.shape.dim) <= 1:
            total += sum(d.dim_value for d in t.shape.dim if d.HasField("dim_value"))
    return total


def _float32_value(x) -> float:
    """A float attribute as written (ONNX stores float32: 1e-5 comes back as 9.99999974e-06)."""
    return float(str(np.float32(x)))


def _fmt(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def import_model(model: onnx.ModelProto, source: str = "<model>", name: str | None = None) -> Graph:
    """Lower an in-memory ONNX model to a verified IR graph (see the module docstring).

    source names the model in error messages; name is the IR graph's name (default: the ONNX
    graph's name).
    """
    if not isinstance(model, onnx.ModelProto):
        raise OnnxImportError(f"{source}: not an ONNX model (got {type(model).__name__})")
    if not model.HasField("graph") or not model.graph.node and not model.graph.output:
        raise OnnxImportError(f"{source}: not an ONNX model (no graph; the file may be empty or truncated)")
    if not model.opset_import:
        raise OnnxImportError(f"{source}: not an ONNX model (no opset_import; the file may be truncated)")
    try:
        skeleton = _check_model(model)
    except Exception as e:  # ValidationError, or a C++ error for some malformed protos
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxImportError(f"{source}: not a valid ONNX model ({reason[:300]})") from None
    return _Importer(model, source, name, skeleton).run()


_REPEATED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _check_model(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """`onnx.checker.check_model(model)`, without serialising the weights.

    The checker takes the model as bytes: for a 138 MB file that copy cost 0.21 s of its 0.28 s. The graph's
    structure (nodes against their schemas, single assignment, types) is checked on the model with its
    initializers declared as typed inputs (`_without_weights`); the checker's rules for the initializers
    themselves (onnx `checker.cc`, `check_tensor`) are applied here from their headers. Returns that model
    without weights, which shape inference reads next (None when the checker had the whole model)."""
    graph = model.graph
    if graph.sparse_initializer:  # rare; the checker's own rules for them are not repeated here
        onnx.checker.check_model(model)
        return None
    inputs = {i.name for i in graph.input}
    for t in graph.initializer:
        _check_initializer(t)
        if model.ir_version <= 3 and t.name not in inputs:
            raise onnx.checker.ValidationError(f"{t.name} in initializer but not in graph input")
    skeleton = _without_weights(model)
    onnx.checker.check_model(skeleton)
    return skeleton


def _check_initializer(t) -> None:
    """The checker's rules for one initializer: a data type, dimensions that are not negative and whose
    product fits in 64 bits, and its values in exactly one field, the one its type goes in (or raw_data,
    never for strings), or in an external file and nowhere else. Whether the data's size matches the
    dimensions is checked where it is read (`numpy_helper.to_array` reshapes it: a mismatch fails there,
    naming the initializer), without copying raw_data out of the message to measure it first."""
    where = f"TensorProto (tensor name: {t.name})"
    if not t.HasField("data_type") or t.data_type == TensorProto.UNDEFINED:
        raise onnx.checker.ValidationError(f"setting data_type field of {where} to UNDEFINED is not allowed")
    used = [f for f in _REPEATED_FIELDS if len(getattr(t, f))] + (["raw_data"] if t.HasField("raw_data") else [])
    if t.HasField("data_location") and t.data_location == TensorProto.EXTERNAL:
        if used:
            raise onnx.checker.ValidationError(f"Data of {where} is stored externally and should not have data "
                                               "field.")
        return
    if any(d < 0 for d in t.dims):  # numpy would read a -1 as "whatever fits"
        raise onnx.checker.ValidationError(f"Negative dimension value ({where})")
    elements = math.prod(t.dims)
    if elements >= 2 ** 63:
        raise onnx.checker.ValidationError(f"Tensor dimension product overflow ({where})")
    if elements == 0 and used:
        raise onnx.checker.ValidationError(f"{where} is 0-element but contains data!")
    if elements != 0 and len(used) != 1:
        raise onnx.checker.ValidationError(f"{where} should contain one and only one value field.")
    if used == ["raw_data"]:
        if t.data_type == TensorProto.STRING:
            raise onnx.checker.ValidationError(f"STRING data ({where}) should not be stored in raw_data field")
        return
    try:
        field = onnx.helper.tensor_dtype_to_field(t.data_type)  # the repeated field this type's values go in
    except KeyError:
        raise onnx.checker.ValidationError(f"Unrecognized data_type ({where}): {t.data_type}") from None
    if used and used[0] != field:
        raise onnx.checker.ValidationError(f"values of data_type {t.data_type} of {where} should be stored in "
                                           f"field {field} instead of {used[0]}")


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Every external-data file must lie inside the model's folder (symlinks resolved): a model file
    must not make easc read `/etc/passwd` or `../../secret`."""
    folder = path.parent.resolve()
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder) or target == folder:
            raise OnnxImportError(f"{path}: initializer '{t.name}' keeps its data in {location!r}, which is not "
                                  "a file in the model's folder")


def _parse_file(path: Path) -> onnx.ModelProto:
    """The file parsed as a ModelProto, from a read-only memory map of it.

    protobuf copies into the message what it keeps, so the map is closed as soon as the message is parsed. A
    copy of the file's bytes in the process (`read_bytes`) cost the page faults of a fresh allocation of the
    file's size and the copy: reading and parsing ResNet-18's 47 MB took 52 ms that way, 33 ms from the map.
    Where the file cannot be mapped (a pipe, a device) it is read. What the map does not survive is another
    process truncating the file during the parse (tens of milliseconds): the read pages past the new end fault
    (SIGBUS), where a read would have parsed a truncated copy and reported it. Tools that write a model in place
    while it is being transformed are not a case this guards against; those that write a new file and rename it
    (the way easc writes its own) leave the mapped file intact."""
    import mmap

    try:
        with open(path, "rb") as f:
            try:
                source = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file: nothing to map
                source = f.read()
            except OSError:  # not mappable: read it
                source = f.read()
    except OSError as e:
        raise OnnxImportError(f"{path}: cannot read ({e.strerror})") from None
    if not len(source):
        raise OnnxImportError(f"{path}: not an ONNX model (the file is empty)")
    model = onnx.ModelProto()
    try:
        with memoryview(source) as view:
            model.ParseFromString(view)
    except Exception as e:  # google.protobuf.message.DecodeError
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxImportError(f"{path}: not an ONNX model (it does not parse as one: {reason}; is the file "
                              "truncated?)") from None
    finally:
        if isinstance(source, mmap.mmap):
            source.close()  # parsed (or not): the file's pages need not stay mapped during the import
    return model


def load_onnx(path) -> Graph:
    """Read an ONNX file (with external data next to it, if any) and lower it to the IR.

    The IR graph is named after the file. Raises `OnnxImportError` for a file that is missing, not
    ONNX, truncated, or uses an operator easc does not support.
    """
    path = Path(path)
    model = _parse_file(path)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        _check_external_data(model, path)
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as e:
            raise OnnxImportError(f"{path}: cannot read its external weights ({e})") from None
    return import_model(model, str(path), name=path.stem)
