"""The structural verifier: `verify(graph)` checks every invariant the IR promises, or raises.

Checked, node by node in order:
- names are unique and every input is defined earlier (so the order is topological and acyclic);
- the op is in the closed op set, takes that many inputs, and its attributes are the normalised ones;
- every dimension is a positive integer and no value exceeds `types.MAX_ELEMENTS` per sample;
- the declared type equals the type the op's shape rule infers from its inputs;
- the weights are exactly the ones the op needs, float32, of the right shapes, and finite;
- there is at least one input and one output, and every output names a node.

One error type, `VerificationError`; its first line names the node and the problem, `details`
shows the nodes around it and suggests a fix (in the manner of torch.fx's lint and JAX's check_jaxpr).
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, IRError
from .ops import OPS, ShapeError, infer_type, normalise_attrs, weight_shapes
from .types import check_dims


class VerificationError(IRError):
    """The graph breaks an invariant of the IR."""


def _context(graph: Graph, index: int, radius: int = 2) -> str:
    from .text import format_node

    lo, hi = max(0, index - radius), min(len(graph.nodes), index + radius + 1)
    lines = []
    for i in range(lo, hi):
        mark = ">" if i == index else " "
        lines.append(f"  {mark} {format_node(graph.nodes[i])}")
    return "\n".join(lines)


def _fail(graph, index, message, fix):
    raise VerificationError(message, _context(graph, index) + (f"\n  fix: {fix}" if fix else ""))


def verify(graph: Graph, since: Graph | None = None) -> Graph:
    """Raise `VerificationError` unless `graph` is a well-formed IR graph; return it otherwise.

    since: a graph already verified that `graph` was derived from (the input of a pass). Graphs are
    immutable and share untouched nodes, so a node that is the very same object as in `since`, reading
    values of the same types, passed every per-node check there already: only names and order are
    checked for it, and the cost of verifying follows what the pass rewrote, not the graph. A node whose
    op, inputs, attributes and type are those it had in `since` (training wrote new weights back) has
    only its weights checked: its structure is not verified again.
    """
    seen: dict = {}
    before = since._index if since is not None else {}
    for index, node in enumerate(graph.nodes):
        old = before.get(node.name)
        if old is node and node.name not in seen and _reads_as_before(node.inputs, seen, before):
            seen[node.name] = node.type  # the very node `since` verified, reading the same types
            continue
        where = f"node {node.name!r} ({node.op})"
        if node.name in seen:
            _fail(graph, index, f"{where}: the name is used by an earlier node too",
                  "rename one of them (names must be unique)")
        if node.op not in OPS:
            _fail(graph, index, f"{where}: unknown op (ops: {', '.join(OPS)})", "")
        for name in node.inputs:
            if name not in seen:
                later = name in graph
                _fail(graph, index,
                      f"{where}: input {name!r} is {'defined later' if later else 'not defined'}",
                      "move the node after its inputs (nodes must be in topological order)" if later
                      else "read a value defined above this node")
        try:  # before the shape rule, which must not see zero, negative or absurd dimensions
            check_dims(node.type.shape, where)
        except ValueError as e:
            _fail(graph, index, str(e), "")
        if node.op == "input":
            if node.inputs or node.weights or node.attrs:
                _fail(graph, index, f"{where}: an input node takes no inputs, attributes or weights", "")
            if node.type.rank < 2:
                _fail(graph, index, f"{where}: an input must be batched, got {node.type}", "")
            seen[node.name] = node.type
            continue
        in_types = [seen[i] for i in node.inputs]
        same_inputs = old is not None and all(i in before and t == before[i].type
                                              for i, t in zip(node.inputs, in_types))
        if same_inputs and old.op == node.op and old.inputs == node.inputs and old.type == node.type \
                and dict(old.attrs) == dict(node.attrs):
            # only the weights changed (training wrote them back): their shapes are the ones `since` had
            _check_weights(graph, index, where, node, {k: w.shape for k, w in old.weights.items()})
            seen[node.name] = node.type
            continue
        try:
            attrs = normalise_attrs(node.op, dict(node.attrs))
        except ShapeError as e:
            _fail(graph, index, f"{where}: {e}", "")
        if attrs != dict(node.attrs):
            _fail(graph, index, f"{where}: attributes are not normalised ({dict(node.attrs)} vs {attrs})",
                  "build nodes with easc.ir.builder.make_node")
        try:
            inferred = infer_type(node.op, in_types, attrs)
            shapes = weight_shapes(node.op, in_types, attrs)
        except ShapeError as e:
            _fail(graph, index, f"{where}: {e}", "check the input types and the attributes")
        if inferred != node.type:
            _fail(graph, index, f"{where}: declared type {node.type} but the shape rule gives {inferred}",
                  "rebuild the node from its inputs, or fix the producer upstream")
        _check_weights(graph, index, where, node, shapes)
        seen[node.name] = node.type
    if not graph.inputs:
        raise VerificationError("the graph has no input")
    if not graph.outputs:
        raise VerificationError("the graph has no output")
    for public, name in graph.outputs.items():
        if name not in seen:
            raise VerificationError(f"output {public!r} names {name!r}, which is not a node")
    return graph


def _reads_as_before(inputs, seen: dict, before: dict) -> bool:
    """Whether every one of `inputs` is defined above (in `seen`) with the type it had in `before`."""
    for i in inputs:
        t = seen.get(i)
        if t is None:
            return False  # not defined above: the full checks below say so
        was = before.get(i)
        if was is None or not (t is was.type or t == was.type):
            return False
    return True


def _check_weights(graph: Graph, index: int, where: str, node, shapes: dict) -> None:
    """The node's weights are exactly `shapes`' keys, float32, of those shapes, finite (variances >= 0)."""
    if set(shapes) != set(node.weights):
        _fail(graph, index, f"{where}: weights {sorted(node.weights)} but the op needs {sorted(shapes)}", "")
    for key, shape in shapes.items():
        w = node.weights[key]
        if w.dtype != np.float32:
            _fail(graph, index, f"{where}: weight {key!r} is {w.dtype}, not float32", "")
        if tuple(w.shape) != tuple(shape):
            _fail(graph, index, f"{where}: weight {key!r} has shape {tuple(w.shape)}, expected {tuple(shape)}",
                  "the layer's neighbours changed width without remapping this layer")
        if not np.all(np.isfinite(w)):
            _fail(graph, index, f"{where}: weight {key!r} has NaN or infinite values", "")
    if node.op == "batchnorm" and np.any(node.weights["var"] < 0):
        _fail(graph, index, f"{where}: negative running variance", "")
