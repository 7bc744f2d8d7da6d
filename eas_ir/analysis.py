"""Small analyses over the IR that passes rely on.

`nonnegative_values`: a value-sign analysis. A value is provably non-negative when it is produced
by relu or softmax, or by an op that keeps signs (pooling, dropout, flatten, concat or add of
non-negative values). Net2Deeper inserts a relu only after such a value, because relu(x) = x holds
exactly when x >= 0.
"""

from __future__ import annotations

from .graph import Graph

# ops whose output is non-negative whenever all their inputs are
_SIGN_KEEPING = frozenset({"maxpool2d", "avgpool2d", "global_avgpool", "flatten", "dropout", "concat", "add"})
_ALWAYS_NONNEGATIVE = frozenset({"relu", "softmax"})


def nonnegative_values(graph: Graph) -> set:
    """Names of the nodes whose value is >= 0 for every input."""
    nonneg = set()
    for node in graph.nodes:
        if node.op in _ALWAYS_NONNEGATIVE:
            nonneg.add(node.name)
        elif node.op in _SIGN_KEEPING and all(i in nonneg for i in node.inputs):
            nonneg.add(node.name)
    return nonneg


def is_nonnegative(graph: Graph, name: str) -> bool:
    return name in nonnegative_values(graph)
