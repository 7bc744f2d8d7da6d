"""The controller's view of an IR graph: layer tokens, and the IR nodes an action edits.

`graph_tokens` reads the layers in graph order: conv2d -> `conv-{width}-{kernel}`, linear ->
`fc-{width}`, and every pooling node (max, average, global) -> `pool`, which marks a block boundary.
The last linear layer (the classifier) is the output token. A token's `name` is its IR node, so a
Net2Wider choice on token i is `widen(graph, tokens[i].name, next_width)`.

A Net2Deeper choice "after layer L" inserts the new layer after L's whole unit: L followed by the
batchnorm / relu / dropout nodes that only L feeds. Inserting after the relu keeps the new layer's
own relu exact (its input is non-negative) and matches the token simulator, which puts the new
token right after L's.
"""

from __future__ import annotations

from easc.ir import Graph

from .tokens import LayerToken

POOL_OPS = ("maxpool2d", "avgpool2d", "global_avgpool")
UNIT_OPS = ("batchnorm", "relu", "dropout")


def graph_tokens(graph: Graph) -> list:
    linears = [n.name for n in graph.nodes if n.op == "linear"]
    outputs = set(graph.outputs.values())
    tokens = []
    for node in graph.nodes:
        if node.op == "conv2d":
            tokens.append(LayerToken("conv", node.width, int(node.attrs["kernel"][0]), node.name))
        elif node.op == "linear":
            is_out = node.name in outputs or (linears and node.name == linears[-1])
            tokens.append(LayerToken("fc", node.width, 0, node.name, is_output=bool(is_out)))
        elif node.op in POOL_OPS:
            tokens.append(LayerToken("pool", 0, 0, node.name))
    return tokens


def unit_end(graph: Graph, layer: str) -> str:
    """The last node of `layer`'s unit (layer -> batchnorm -> relu ...), where Net2Deeper inserts."""
    current = layer
    while True:
        consumers = graph.consumers(current)
        if len(consumers) != 1 or graph.output_names_of(current):
            return current
        nxt = graph.node(consumers[0])
        if nxt.op not in UNIT_OPS:
            return current
        current = nxt.name
