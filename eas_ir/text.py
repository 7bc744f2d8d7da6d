"""The IR's text form: print a graph, parse it back (structure exactly; weights are not text).

    graph tiny
      x = input() : f32[N,1,8,8]
      conv_1 = conv2d(x) {out=16, kernel=(3,3), stride=(1,1), padding=(1,1), dilation=(1,1), groups=1, bias=true} : f32[N,16,8,8]
      relu_1 = relu(conv_1) : f32[N,16,8,8]
      deepen_conv_1 = conv2d(relu_1) {...} : f32[N,16,8,8]  # from conv_1
      output logits = fc_1

Names that are not plain identifiers (ONNX files use `/layer1/conv/Conv`) are written as JSON
strings. `parse_graph(print_graph(g))` has the structure of `g`, and printing it again gives the
same text; the weights of a parsed graph are freshly initialised from a seeded generator, which
makes the text form the short way to write test fixtures. The IR file format (`serialize.py`) keeps
the weights next to this text.
"""

from __future__ import annotations

import json
import re

import numpy as np

from .builder import make_node
from .graph import Graph, IRError, Node
from .ops import OPS, ShapeError, normalise_attrs, weight_shapes
from .types import TensorType, check_dims

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")


class ParseError(IRError):
    """The text is not a well-formed graph; the message names the line."""


def format_name(name: str) -> str:
    return name if _IDENT.match(name) else json.dumps(name)


def _format_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "(" + ",".join(_format_value(x) for x in v) + ")"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def format_node(node: Node) -> str:
    args = ", ".join(format_name(i) for i in node.inputs)
    text = f"{format_name(node.name)} = {node.op}({args})"
    if node.attrs:
        text += " {" + ", ".join(f"{k}={_format_value(v)}" for k, v in node.attrs.items()) + "}"
    text += f" : {node.type}"
    if node.origin:
        text += f"  # from {format_name(node.origin)}"
    return text


def print_graph(graph: Graph) -> str:
    lines = [f"graph {format_name(graph.name)}"]
    lines += ["  " + format_node(n) for n in graph.nodes]
    lines += [f"  output {format_name(o)} = {format_name(n)}" for o, n in graph.outputs.items()]
    return "\n".join(lines) + "\n"


# -- parsing ---------------------------------------------------------------------------------
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|-?inf|nan)'
                    r'|(?P<ident>[A-Za-z_][A-Za-z0-9_.]*)|(?P<punct>[=(){},:#\[\]]))')


def _tokens(line: str, lineno: int) -> list:
    out, pos = [], 0
    line = line.rstrip()
    while pos < len(line):
        m = _TOKEN.match(line, pos)
        if not m or m.end() == pos:
            raise ParseError(f"line {lineno}: cannot read {line[pos:].strip()[:30]!r}")
        pos = m.end()
        kind = m.lastgroup
        text = m.group(kind)
        out.append((kind, json.loads(text) if kind == "str" else text))
    return out


class _Cursor:
    def __init__(self, tokens, lineno):
        self.t, self.i, self.lineno = tokens, 0, lineno

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else (None, None)

    def take(self, value=None, kinds=None):
        kind, text = self.peek()
        if kind is None or (value is not None and text != value) or (kinds and kind not in kinds):
            want = repr(value) if value else " or ".join(kinds or ["a token"])
            got = repr(text) if kind else "end of line"
            raise ParseError(f"line {self.lineno}: expected {want}, got {got}")
        self.i += 1
        return text

    def name(self):
        return self.take(kinds=("ident", "str"))

    def done(self):
        return self.i >= len(self.t)


def _parse_value(cur: _Cursor):
    kind, text = cur.peek()
    if text == "(":
        cur.take("(")
        items = []
        while cur.peek()[1] != ")":
            items.append(_parse_value(cur))
            if cur.peek()[1] == ",":
                cur.take(",")
        cur.take(")")
        return tuple(items)
    cur.take()
    if kind == "num":
        return float(text) if any(c in text for c in ".eEnai") else int(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def parse_graph(text: str, rng: np.random.Generator | None = None, weights=None) -> Graph:
    """Parse the text form. Weights are initialised from `rng` (seed 0 when not given), or, when
    `weights` is given, come from `weights(node_name, shapes)`: the IR file passes the tensors it holds,
    so that nothing is initialised only to be overwritten, and a shape the text declares is checked
    against the file's tensor before any memory is spent on it.

    Declared shapes must have positive dimensions and at most `types.MAX_ELEMENTS` elements per sample,
    checked before a node's weights are made."""
    rng = rng if rng is not None else np.random.default_rng(0)
    nodes: list[Node] = []
    types: dict = {}
    outputs: dict = {}
    name = "graph"
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.strip().startswith("#"):
            continue
        cur = _Cursor(_tokens(raw, lineno), lineno)
        head = cur.peek()[1]
        if head == "graph" and not nodes and cur.t[1:2] and cur.t[1][1] != "=":
            cur.take("graph")
            name = cur.name()
            continue
        if head == "output" and len(cur.t) > 1 and cur.t[1][1] != "=":
            cur.take("output")
            public = cur.name()
            cur.take("=")
            outputs[public] = cur.name()
            continue
        node_name = cur.name()
        cur.take("=")
        op = cur.take(kinds=("ident",))
        if op not in OPS:
            raise ParseError(f"line {lineno}: unknown op {op!r} (ops: {', '.join(OPS)})")
        cur.take("(")
        inputs = []
        while cur.peek()[1] != ")":
            inputs.append(cur.name())
            if cur.peek()[1] == ",":
                cur.take(",")
        cur.take(")")
        attrs = {}
        if cur.peek()[1] == "{":
            cur.take("{")
            while cur.peek()[1] != "}":
                key = cur.take(kinds=("ident",))
                cur.take("=")
                attrs[key] = _parse_value(cur)
                if cur.peek()[1] == ",":
                    cur.take(",")
            cur.take("}")
        cur.take(":")
        type_text = cur.take(kinds=("ident",)) + cur.take("[")
        while cur.peek()[1] != "]":
            type_text += str(cur.take())
        type_text += cur.take("]")
        try:
            declared = TensorType.parse(type_text)
            check_dims(declared.shape, f"{node_name!r}")
        except ValueError as e:
            raise ParseError(f"line {lineno}: {e}") from None
        origin = ""
        if cur.peek()[1] == "#":
            cur.take("#")
            cur.take("from")
            origin = cur.name()
        if not cur.done():
            raise ParseError(f"line {lineno}: unexpected {cur.peek()[1]!r} after the type")
        if node_name in types:
            raise ParseError(f"line {lineno}: node {node_name!r} is defined twice")
        if op == "input":
            node = Node(node_name, "input", (), {}, declared, {}, origin)
        else:
            missing = [i for i in inputs if i not in types]
            if missing:
                raise ParseError(f"line {lineno}: {node_name!r} reads {missing[0]!r}, which is not defined above it")
            in_types = [types[i] for i in inputs]
            try:
                shapes = weight_shapes(op, in_types, normalise_attrs(op, dict(attrs)))
                for key, shape in shapes.items():
                    check_dims(tuple(shape), f"weight {key!r}")
            except (ShapeError, ValueError) as e:
                raise ParseError(f"line {lineno}: node {node_name!r} ({op}): {e}") from None
            given = weights(node_name, shapes) if weights is not None else None
            try:
                node = make_node(node_name, op, inputs, in_types, attrs, given, rng, origin)
            except IRError as e:
                raise ParseError(f"line {lineno}: {e}") from None
            if node.type != declared:
                raise ParseError(f"line {lineno}: {node_name!r} is declared {declared} but its shape rule "
                                 f"gives {node.type}")
        nodes.append(node)
        types[node_name] = node.type
    if not nodes:
        raise ParseError("no nodes in the text")
    if not outputs:
        outputs = {nodes[-1].name: nodes[-1].name}
    return Graph(nodes, outputs, name)
