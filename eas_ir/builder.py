"""Build graphs node by node, with types inferred and weights initialised from a seeded generator.

    b = GraphBuilder("tiny", rng=np.random.default_rng(0))
    x = b.input("x", (1, 8, 8))
    h = b.relu(b.batchnorm(b.conv2d(x, 16, 3, padding=1)))
    b.output("logits", b.linear(b.flatten(b.global_avgpool(h)), 10))
    graph = b.build()

Names default to the op's short name and a counter (`conv_1`, `bn_1`, ...), as the style guide asks.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, IRError, Node
from .names import Namespace
from .ops import OPS, ShapeError, infer_type, normalise_attrs, weight_shapes
from .types import TensorType, batched

SHORT_NAMES = {
    "input": "x", "conv2d": "conv", "batchnorm": "bn", "relu": "relu", "maxpool2d": "maxpool",
    "avgpool2d": "avgpool", "global_avgpool": "gap", "flatten": "flatten", "linear": "fc",
    "dropout": "dropout", "concat": "concat", "add": "add", "softmax": "softmax",
}


def init_weights(op: str, shapes: dict, attrs: dict, rng: np.random.Generator) -> dict:
    """Fresh weights for a new layer: He-normal for conv2d/linear, zero bias, neutral batchnorm.

    Batchnorm gets scale 1, bias 0, mean 0, var 1 so that a fresh graph computes something sane in
    eval mode; training (or a pass that calibrates it) sets real statistics.
    """
    out = {}
    for key, shape in shapes.items():
        if op in ("conv2d", "linear") and key == "weight":
            fan_in = int(np.prod(shape[1:]))
            out[key] = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), size=shape)
        elif key in ("scale", "var"):
            out[key] = np.ones(shape)
        else:
            out[key] = np.zeros(shape)
    return {k: v.astype(np.float32) for k, v in out.items()}


def make_node(name: str, op: str, inputs, input_types, attrs=None, weights=None,
              rng: np.random.Generator | None = None, origin: str = "") -> Node:
    """A node with normalised attributes, inferred type, and weights (given or initialised)."""
    if op not in OPS:
        raise IRError(f"unknown op {op!r} for node {name!r} (ops: {', '.join(OPS)})")
    try:
        attrs = normalise_attrs(op, dict(attrs or {}))
        typ = infer_type(op, list(input_types), attrs)
        shapes = weight_shapes(op, list(input_types), attrs)
    except ShapeError as e:
        raise IRError(f"node {name!r} ({op}): {e}") from None
    if weights is None:
        weights = init_weights(op, shapes, attrs, rng if rng is not None else np.random.default_rng(0))
    return Node(name, op, tuple(inputs), attrs, typ, weights, origin)


class GraphBuilder:
    """Appends nodes in order; each method returns the new node's name."""

    def __init__(self, name: str = "graph", rng: np.random.Generator | None = None):
        self.name = name
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.nodes: list[Node] = []
        self.types: dict[str, TensorType] = {}
        self.outputs: dict[str, str] = {}
        self._numbered = Namespace()  # `conv_1`, `conv_2`, ...: the counting rule of easc.ir.names
        self._position: dict[str, int] = {}
        self.reserved: set = set()  # names a source model uses further on (`fresh` avoids them)

    def _name(self, op: str, name: str | None) -> str:
        if name is not None:
            if name in self.types:
                raise IRError(f"duplicate node name {name!r}")
            return name
        return self._numbered.counter(SHORT_NAMES.get(op, op))

    def add(self, op: str, inputs, attrs=None, weights=None, name: str | None = None, origin: str = "",
            expect=None) -> str:
        """Append a node; `expect`: the sample shape the source model says it has (importers cross-check)."""
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        for i in inputs:
            if i not in self.types:
                raise IRError(f"{op}: input {i!r} is not defined yet")
        node = make_node(self._name(op, name), op, inputs, [self.types[i] for i in inputs],
                         attrs, weights, self.rng, origin)
        self._numbered.claim(node.name)
        if expect is not None and tuple(expect) != node.type.sample_shape:
            raise IRError(f"node {node.name!r} ({op}): easc computes samples of shape {node.type.sample_shape}, "
                          f"the source model says {tuple(expect)}")
        self._position[node.name] = len(self.nodes)
        self.nodes.append(node)
        self.types[node.name] = node.type
        return node.name

    def node(self, name: str) -> Node:
        return self.nodes[self._position[name]]

    def replace_node(self, node: Node) -> None:
        """Put `node` in place of the node of the same name and type (a bias folded into its layer)."""
        old = self.node(node.name)
        if node.type != old.type:
            raise IRError(f"node {node.name!r}: a replacement must keep the type {old.type}, got {node.type}")
        self.nodes[self._position[node.name]] = node

    def fresh(self, base: str) -> str:
        """`base` if no node has it and no source name is reserved, else `base_2`, `base_3`, ... (the rule of
        `easc.ir.names`; the name is taken when a node is added under it)."""
        return Namespace.first_free(base, lambda n: n in self.types or n in self.reserved)

    def type_of(self, name: str) -> TensorType:
        return self.types[name]

    # -- one method per op -------------------------------------------------------------------
    def input(self, name: str, sample_shape) -> str:
        name = self._name("input", name)
        self._numbered.claim(name)
        node = Node(name, "input", (), {}, batched(sample_shape))
        self._position[name] = len(self.nodes)
        self.nodes.append(node)
        self.types[name] = node.type
        return name

    def conv2d(self, x, out, kernel, stride=1, padding=0, bias=True, groups=1, dilation=1, name=None,
               weights=None):
        return self.add("conv2d", x, dict(out=out, kernel=kernel, stride=stride, padding=padding,
                                          bias=bias, groups=groups, dilation=dilation), weights, name)

    def batchnorm(self, x, eps=1e-5, name=None, weights=None):
        return self.add("batchnorm", x, dict(eps=eps), weights, name)

    def relu(self, x, name=None):
        return self.add("relu", x, name=name)

    def maxpool2d(self, x, kernel, stride=None, padding=0, ceil=False, name=None):
        return self.add("maxpool2d", x, dict(kernel=kernel, stride=stride if stride is not None else kernel,
                                             padding=padding, ceil=ceil), name=name)

    def avgpool2d(self, x, kernel, stride=None, padding=0, ceil=False, count_include_pad=True, name=None):
        return self.add("avgpool2d", x, dict(kernel=kernel, stride=stride if stride is not None else kernel,
                                             padding=padding, ceil=ceil,
                                             count_include_pad=count_include_pad), name=name)

    def global_avgpool(self, x, name=None):
        return self.add("global_avgpool", x, name=name)

    def flatten(self, x, name=None):
        return self.add("flatten", x, name=name)

    def linear(self, x, out, bias=True, name=None, weights=None):
        return self.add("linear", x, dict(out=out, bias=bias), weights, name)

    def dropout(self, x, p=0.5, name=None):
        return self.add("dropout", x, dict(p=p), name=name)

    def concat(self, xs, name=None):
        return self.add("concat", list(xs), name=name)

    def add_(self, xs, name=None):
        return self.add("add", list(xs), name=name)

    def softmax(self, x, name=None):
        return self.add("softmax", x, name=name)

    def output(self, public_name: str, node: str):
        self.outputs[public_name] = node

    def build(self) -> Graph:
        from .verify import verify

        if not self.outputs and self.nodes:
            self.outputs[self.nodes[-1].name] = self.nodes[-1].name
        graph = Graph(self.nodes, self.outputs, self.name)
        verify(graph)
        return graph


def randomise_weights(graph, rng: np.random.Generator):
    """The graph with non-trivial biases and batchnorm statistics (fresh ones are zero / neutral).

    For checking passes: a pass that mishandles a bias or a running mean is invisible on fresh weights.
    """
    nodes = []
    for n in graph.nodes:
        w = dict(n.weights)
        if n.op == "batchnorm":
            c = n.type.channels
            w = dict(scale=rng.uniform(0.5, 1.5, c), bias=rng.normal(0, 0.2, c),
                     mean=rng.normal(0, 0.2, c), var=rng.uniform(0.5, 1.5, c))
        elif "bias" in w:
            w["bias"] = rng.normal(0, 0.1, w["bias"].shape)
        nodes.append(n.replace(weights={k: np.asarray(v, np.float32) for k, v in w.items()}) if w else n)
    return graph.replace(nodes=nodes)
