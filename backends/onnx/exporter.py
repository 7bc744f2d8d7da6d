"""Write an IR graph as a standard ONNX model.

Each IR node becomes the ONNX node of the same name (an n-ary `add` becomes `Sum`; silu, a
hardswish below opset 14 and a channel shuffle are several nodes, the last or the Transpose named after
it), weights become
initializers named `<node>.<weight>`, the batch dimension of inputs and outputs is the symbolic
`N`, and the graph's input and output names are kept. A node a pass inserted records where it came
from in the ONNX node's `metadata_props` (`easc.origin`), so that importing the file gives back
the same IR, text form included.

| IR             | ONNX                                                        |
|----------------|-------------------------------------------------------------|
| conv2d         | Conv (pads [ph, pw, ph, pw], group, dilations, bias input)  |
| batchnorm      | BatchNormalization (momentum = 1 - torch momentum)          |
| relu           | Relu                                                        |
| maxpool2d      | MaxPool (ceil_mode)                                         |
| avgpool2d      | AveragePool (ceil_mode, count_include_pad written always)   |
| global_avgpool | GlobalAveragePool                                           |
| flatten        | Flatten axis=1                                              |
| linear         | Gemm transB=1                                               |
| dropout        | Dropout with a constant ratio (identity at inference)       |
| concat         | Concat axis=1                                               |
| add            | Add (two inputs), Sum (more)                                |
| softmax        | Softmax axis=1                                              |
| clip           | Clip with min / max inputs                                  |
| leaky_relu     | LeakyRelu alpha                                             |
| sigmoid        | Sigmoid                                                     |
| silu           | Sigmoid then Mul (x * sigmoid(x), as both torch exporters)  |
| hardsigmoid    | HardSigmoid alpha=1/6 beta=1/2                              |
| hardswish      | HardSwish (opset >= 14), else HardSigmoid then Mul          |
| mul            | Mul (the (N, C, 1, 1) gate broadcasts)                      |
| slice          | Slice on axis 1                                             |
| channel_shuffle| Reshape (N, g, C/g, H, W) - Transpose - Reshape             |
| pad            | Pad mode=constant                                           |
| channel_gather | Gather axis=1 with a constant int64 index                   |

The rows live in `easc.backends.optable` (each op's `onnx` entry); this module owns names,
initializers, the graph's inputs and outputs, and the checks.

Pools with ceil=true: ONNX shape inference (onnx 1.23) sizes a `ceil_mode=1` pool by the plain
ceiling formula, while onnxruntime and torch drop a last window that would start in the right
padding; `pool_attrs` writes such pools in an equivalent form ONNX sizes correctly. Output shapes
are declared as the IR computes them unless ONNX's inference disagrees (then only the batch
dimension is declared), so that the model passes `onnx.checker.check_model(full_check=True)`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from easc.ir import BATCH, Graph, IRError, Namespace, atomic_write_bytes
from easc.ir.ops import ceil_overhang, plain_ceil_output_size, pool_output_size

from easc.backends.optable import LOWERINGS

from .importer import ORIGIN_KEY

MIN_OPSET = 13
"""Dropout takes its ratio as an input from opset 12, Softmax means one axis from opset 13."""


class OnnxExportError(IRError):
    """A graph or option the exporter cannot write; the message names the node or option."""


def _dims(shape) -> list:
    return [BATCH if d == BATCH else int(d) for d in shape]


class _Context:
    """What an op's ONNX lowering (easc.backends.optable) needs: initializers, fresh names, node making.

    The op's last node takes the IR node's name; intermediate values and their nodes get fresh names
    derived from it (`conv_1/sigmoid`), unique among values and node names alike.
    """

    def __init__(self, node, values: Namespace, node_names: set, initializers: list, opset: int):
        self.node, self.values, self.node_names, self.initializers, self.opset = node, values, node_names, \
            initializers, opset

    def init(self, key: str, array) -> str:
        array = np.asarray(array)
        if array.dtype != np.int64:
            array = np.asarray(array, dtype=np.float32)  # the IR's own array when it is float32 already
        name = self.values.fresh(f"{self.node.name}.{key}")
        self.initializers.append((name, array))  # its data is written once, by export_model or stream
        return name

    def value(self, key: str) -> str:
        name = self.values.fresh(f"{self.node.name}/{key}")
        k = 2
        while name in self.node_names:  # also a node name: nodes and values are named alike
            name = self.values.fresh(f"{self.node.name}/{key}_{k}")
            k += 1
        self.node_names.add(name)
        return name

    def make(self, op_type: str, inputs: list, output: str, name: str | None = None, **attrs) -> onnx.NodeProto:
        return helper.make_node(op_type, inputs, [output], name=name or self.node.name, **attrs)


def export_model(graph: Graph, opset: int = 17) -> onnx.ModelProto:
    """The ONNX model of `graph`: checked with `onnx.checker.check_model(full_check=True)`."""
    model, weights = export_parts(graph, opset)
    for tensor, array in zip(model.graph.initializer, weights):
        tensor.raw_data = raw_bytes(array).tobytes()
    return model


def _onnx_type(array: np.ndarray) -> int:
    return TensorProto.INT64 if array.dtype == np.int64 else TensorProto.FLOAT


def raw_bytes(array: np.ndarray) -> memoryview:
    """An initializer's `raw_data`: little-endian float32 (weights) or int64 (shapes, indices), no copy when
    the array already is."""
    kind = "<i8" if array.dtype == np.int64 else "<f4"
    return memoryview(np.ascontiguousarray(array, dtype=kind)).cast("B")


def export_parts(graph: Graph, opset: int = 17) -> tuple:
    """(the ONNX model of `graph` with its initializers' names, types and shapes but no data, their arrays in
    order): `backends.onnx.stream.write_model` writes the two to a file without a copy of the weights."""
    latest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= latest:
        raise OnnxExportError(f"opset {opset} is not supported for export (use {MIN_OPSET} to {latest})")
    by_name = {n.name: n for n in graph.nodes}
    input_names = [n.name for n in graph.inputs]
    publics_of: dict = {}
    for public, node in graph.outputs.items():
        publics_of.setdefault(node, []).append(public)
    public_names = set(graph.outputs)

    values = Namespace()  # ONNX tensors and initializers share one namespace (easc.ir.names)
    for name in input_names:
        values.claim(name)
    for public in public_names:
        if public in input_names and graph.outputs[public] != public:
            raise OnnxExportError(f"output {public!r} has the name of graph input {public!r} but exposes "
                                  f"node {graph.outputs[public]!r}; rename one of them")
        values.claim(public)
    value_of: dict = {name: name for name in input_names}
    for node in graph.nodes:
        if node.op == "input":
            continue
        own = publics_of.get(node.name)
        if own:
            value_of[node.name] = own[0]
        elif node.name in values:
            value_of[node.name] = values.fresh(f"{node.name}_value")
        else:
            value_of[node.name] = values.claim(node.name)

    onnx_nodes, initializers = [], []
    node_names = {n.name for n in graph.nodes}

    for node in graph.nodes:
        if node.op == "input":
            continue
        low = LOWERINGS.get(node.op)
        if low is None:
            raise OnnxExportError(f"node {node.name!r} ({node.op}): no export rule")
        ctx = _Context(node, values, node_names, initializers, opset)
        made = low.onnx(ctx, node, [by_name[i].type for i in node.inputs], [value_of[i] for i in node.inputs],
                        value_of[node.name])
        for m in made:
            if node.origin:
                m.metadata_props.add(key=ORIGIN_KEY, value=node.origin)
        onnx_nodes.extend(made)

    outputs = []
    for public, node_name in graph.outputs.items():
        source = value_of[node_name]
        if source != public:
            ident = public + "/Identity"
            k = 2
            while ident in node_names:
                ident, k = f"{public}/Identity_{k}", k + 1
            node_names.add(ident)
            onnx_nodes.append(helper.make_node("Identity", [source], [public], name=ident))
        outputs.append((public, by_name[node_name].type))

    inputs = [helper.make_tensor_value_info(n.name, TensorProto.FLOAT, _dims(n.type.shape)) for n in graph.inputs]
    # First with only the batch dimension declared, to learn what ONNX's shape inference makes of each
    # output (see the module docstring on ceil_mode).
    loose = [helper.make_tensor_value_info(p, TensorProto.FLOAT, [BATCH] + [None] * (t.rank - 1))
             for p, t in outputs]
    g = helper.make_graph(onnx_nodes, graph.name, inputs, loose)
    for name, array in initializers:
        # names and shapes only: the data is the IR's own arrays (numpy_helper.from_array and make_graph would
        # copy every weight twice; `export_model` copies each once, `stream.write_model` not at all)
        tensor = g.initializer.add()
        tensor.name, tensor.data_type = name, _onnx_type(array)
        tensor.dims.extend(array.shape)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="easc",
                              ir_version=helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    # Shape inference and the full check run on the model without its weights (initializers declared as typed
    # inputs instead): they read the weights' shapes, never their values, and serialising hundreds of MB of
    # weights twice per export was most of an export's time.
    skeleton = helper.make_model(
        helper.make_graph(onnx_nodes, graph.name, inputs + [helper.make_tensor_value_info(
            name, _onnx_type(array), list(array.shape)) for name, array in initializers], loose),
        opset_imports=model.opset_import, producer_name="easc", ir_version=model.ir_version)
    inferred = _inferred_sample_shapes(skeleton)
    for m in (model, skeleton):
        del m.graph.output[:]
        for public, t in outputs:
            sample = list(t.sample_shape)
            dims = [BATCH] + (sample if inferred.get(public) == tuple(sample) else [None] * len(sample))
            m.graph.output.append(helper.make_tensor_value_info(public, TensorProto.FLOAT, dims))
    onnx.checker.check_model(skeleton, full_check=True)
    return model, [array for _, array in initializers]


def _inferred_sample_shapes(model: onnx.ModelProto) -> dict:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:  # the exporter wrote something ONNX rejects: a bug here, not the user's
        raise OnnxExportError(f"the exported model fails ONNX shape inference: {e}") from None
    out = {}
    for vi in inferred.graph.output:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims[1:]):
            out[vi.name] = tuple(int(d.dim_value) for d in dims[1:])
    return out


def pool_attrs(node, in_type) -> tuple:
    """ONNX attributes of a pooling node, and whether they stand for the IR's ceil=true.

    ONNX shape inference sizes ceil_mode=1 by the plain ceiling, keeping a last window that starts
    in the right padding; torch, onnxruntime and the IR drop it. Written naively, such a pool gets a
    shape from ONNX that differs from what runs, and a Flatten + Gemm after it fails
    `check_model(full_check=True)` (torch's own exporter writes such files). So:
    - if ceil adds no window on either axis (the usual case where the two disagree), the pool is
      exactly the floor-mode pool: write ceil_mode=0;
    - if the plain ceiling is right on both axes, write ceil_mode=1;
    - otherwise write ceil_mode=0 with the overhang as extra end padding (exact for max pooling and
      for average pooling that does not count padding).
    The first and last forms carry `easc.ceil_mode=1` so that importing gives back ceil=true.
    """
    a = node.attrs
    (ph, pw) = a["padding"]
    attrs = dict(kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=[ph, pw, ph, pw], ceil_mode=0)
    if not a["ceil"]:
        return attrs, False
    sizes, outs = in_type.shape[2:], node.type.shape[2:]
    floor = [pool_output_size(size, k, s, p) for size, k, s, p in zip(sizes, a["kernel"], a["stride"], a["padding"])]
    plain_ceil = [plain_ceil_output_size(size, k, s, p)
                  for size, k, s, p in zip(sizes, a["kernel"], a["stride"], a["padding"])]
    if list(outs) == floor:
        return attrs, True
    if list(outs) == plain_ceil:
        return dict(attrs, ceil_mode=1), False
    if node.op == "avgpool2d" and a["count_include_pad"]:
        raise OnnxExportError(f"node {node.name!r} (avgpool2d): ceil=true on input {in_type} cannot be written "
                              "so that ONNX shape inference agrees with onnxruntime (ceil adds a window on one "
                              "axis only, and padding is counted; count_include_pad=false would work)")
    extra = [ceil_overhang(size, k, s, p, o)
             for o, s, k, size, p in zip(outs, a["stride"], a["kernel"], sizes, a["padding"])]
    return dict(attrs, pads=[ph, pw, ph + extra[0], pw + extra[1]]), True


def save_onnx(graph: Graph, path, opset: int = 17) -> None:
    """Export `graph` and write it atomically (a temporary file renamed into place)."""
    model = export_model(graph, opset)
    if model.ByteSize() >= 2 ** 31:
        raise OnnxExportError(f"{path}: the model is larger than 2 GB, which a single ONNX file cannot hold")
    atomic_write_bytes(path, model.SerializeToString())
