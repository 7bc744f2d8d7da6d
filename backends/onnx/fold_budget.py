"""Budgets for evaluating constant expressions at import time (see importer._Importer._fold).

A 200-byte ONNX file can ask for unbounded work: a `ConstantOfShape` of [100000, 100000, 10] is a
request for 8 GB, a `Loop` of 10^12 iterations never ends. The importer evaluates any operator whose
inputs are all constants, so it checks each one against two budgets before running it:

- size: the elements a folded value may have, and all folded values together, at most
  max(FOLD_MIN_ELEMENTS, FOLD_FACTOR x the elements the file stores in initializers and Constant nodes). Real
  exporters fold shape arithmetic (a few integers) and weight transposes (as large as the weights
  they come from), both well inside; a bomb in a small file is far outside.
- steps: operators that carry subgraphs (Loop, Scan, If, ...) are not evaluated at all. Their cost
  cannot be known before running them (a Loop's trip count may be a loop-carried condition), and the
  exporters of the CNNs easc imports do not fold through them.

The size of an operator's result is predicted before it runs, by ONNX's own shape inference fed with
the values of its (small) constant inputs; an operator whose result size cannot be predicted and that
can grow its input (`ConstantOfShape`, `Expand`, `Tile`, `Range`, ...) is refused. Every result is
measured again after it runs, so a misprediction cannot slip past the cumulative budget.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper, shape_inference

FOLD_MIN_ELEMENTS = 2**24
"""The size budget of a file with few weights: 16M elements (128 MB of int64), ample for shape arithmetic."""
FOLD_FACTOR = 4
"""A file may fold up to this many times the elements it stores (transposes and reshapes of its weights)."""
_DATA_FOR_INFERENCE = 4096
"""Constant inputs up to this size are given to shape inference as values (shapes, repeats, pads, ...)."""

# Operators whose result can be much larger than their inputs: without a predicted size, not run.
_GROWING = frozenset({
    "ConstantOfShape", "Expand", "Tile", "Range", "Pad", "OneHot", "Resize", "Upsample", "MatMul", "Gemm",
    "Einsum", "MatMulInteger", "QLinearMatMul", "ConvTranspose", "MaxUnpool", "Col2Im", "DFT", "STFT",
    "MelWeightMatrix", "BlackmanWindow", "HammingWindow", "HannWindow", "AffineGrid", "GridSample", "RoiAlign",
    "CenterCropPad", "SequenceConstruct", "SequenceInsert", "SplitToSequence", "ConcatFromSequence",
    "StringSplit", "CastLike", "Mul", "Add", "Sub", "Div", "Pow", "Mod", "Where", "Max", "Min", "Sum", "Mean",
    "And", "Or", "Xor", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "BitShift", "PRelu",
    "BitwiseAnd", "BitwiseOr", "BitwiseXor",
})


class FoldBudgetError(Exception):
    """A constant expression over the budget; the importer turns it into its one-line error."""


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


class FoldBudget:
    def __init__(self, model: onnx.ModelProto, opset: int):
        # What the file stores: initializers, and tensors held by nodes (older exporters keep every weight
        # in a Constant node, which the importer folds like any other constant).
        stored = sum(math.prod(t.dims) for t in model.graph.initializer)
        stored += sum(math.prod(a.t.dims) for n in model.graph.node for a in n.attribute
                      if a.type == onnx.AttributeProto.TENSOR)
        self.limit = max(FOLD_MIN_ELEMENTS, FOLD_FACTOR * stored)
        self.used = 0
        self.opset = opset

    def before(self, node: onnx.NodeProto, args: list) -> None:
        """Refuse `node` (inputs `args`, numpy arrays or None) if running it could exceed the budget."""
        if _has_subgraph(node):
            raise FoldBudgetError(f"{node.op_type} over constants is not evaluated at import (a subgraph's "
                                  "cost cannot be bounded before it runs)")
        predicted = self._predict(node, args)
        if predicted is None:
            if node.op_type in _GROWING:
                raise FoldBudgetError(f"the size of this constant {node.op_type} cannot be known before "
                                      "evaluating it, and it may exceed the folding budget")
            return
        self._charge(predicted, spend=False)

    def after(self, results: list) -> None:
        """Count what a node produced against the cumulative budget."""
        total = sum(int(np.asarray(r).size) for r in results if r is not None)
        self._charge(total, spend=True)

    def _charge(self, elements: int, spend: bool) -> None:
        if self.used + elements > self.limit:
            raise FoldBudgetError(f"folding it would produce {elements:,} elements, over the import budget of "
                                  f"{self.limit:,} for this file ({self.used:,} already folded)")
        if spend:
            self.used += elements

    def _predict(self, node: onnx.NodeProto, args: list) -> int | None:
        """Total elements of the node's outputs by ONNX shape inference, or None when not fully known."""
        try:
            schema = defs.get_schema(node.op_type, self.opset, node.domain or "")
        except Exception:  # noqa: BLE001 - unknown op: the evaluator will refuse it on its own
            return None
        types, data = {}, {}
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        del clone.input[:]
        for k, arg in enumerate(args):
            name = f"in{k}" if arg is not None else ""
            clone.input.append(name)
            if arg is None:
                continue
            arr = np.asarray(arg)
            try:
                elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
            except Exception:  # noqa: BLE001 - e.g. object arrays: no prediction
                return None
            types[name] = helper.make_tensor_type_proto(elem, list(arr.shape))
            if arr.size <= _DATA_FOR_INFERENCE:
                data[name] = numpy_helper.from_array(arr, name)
        del clone.output[:]
        clone.output.extend([f"out{k}" if o else "" for k, o in enumerate(node.output)])
        try:
            out = shape_inference.infer_node_outputs(schema, clone, types, data)
        except Exception:  # noqa: BLE001 - inference errors: leave the verdict to the evaluator
            return None
        total = 0
        for name in (o for o in clone.output if o):
            t = out.get(name)
            if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
                return None
            dims = t.tensor_type.shape.dim
            if not all(d.HasField("dim_value") for d in dims):
                return None
            total += math.prod(max(d.dim_value, 0) for d in dims)
        return total
