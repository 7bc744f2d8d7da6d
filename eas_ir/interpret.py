"""The IR's reference semantics: a numpy interpreter, in eval mode, computing in float64.

This is the definition of what each op means, not a fast path: the PyTorch backend generates real
modules for training, and onnxruntime is the independent oracle. Computing in float64 keeps the
interpreter's own rounding far below the tolerances used to check that a pass preserved the
function, so what a check measures is the pass, not the interpreter.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, IRError, Node
from .ops import OPS


def eval_node(node: Node, args: list) -> np.ndarray:
    """The value of one node given its input values (float64 arrays): the op's kernel (`ops.OPS`)."""
    spec = OPS.get(node.op)
    if spec is None or spec.kernel is None:
        raise IRError(f"node {node.name!r}: the interpreter has no rule for op {node.op!r}")
    return spec.kernel(node, args)


def input_value(node, feeds: dict, dtype=np.float64) -> np.ndarray:
    """The value fed to input node `node` (float64 by default), checked against its declared sample shape."""
    if node.name not in feeds:
        raise IRError(f"no value given for input {node.name!r}")
    x = np.asarray(feeds[node.name], dtype=dtype)
    if x.shape[1:] != node.type.sample_shape:
        raise IRError(f"input {node.name!r} expects samples of shape {node.type.sample_shape}, got {x.shape[1:]}")
    return x


def run_all(graph: Graph, feeds: dict, dtype=np.float64) -> dict:
    """Every node's value (eval mode) for the given inputs, keyed by node name.

    dtype: what the values are computed in. float64 (the default) is the reference semantics; float32 is for
    statistics whose float32 rounding (6e-8 relative) does not matter, at half the memory and time.
    """
    values = {}
    for node in graph.nodes:
        if node.op == "input":
            values[node.name] = input_value(node, feeds, dtype)
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
