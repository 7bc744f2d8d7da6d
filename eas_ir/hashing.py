"""A canonical structural hash: same architecture, any names, weights or node order, same hash.

Each node's hash is computed bottom-up (Merkle style) from its op, its attributes and its type, and
the hashes of its inputs: in order for ops where order matters (concat), sorted for commutative
ones (add). The graph's hash combines its outputs' hashes in output order. Names, weights and the
order of independent nodes in the list never enter, so the search can deduplicate children that
reached the same architecture by different transformation sequences.
"""

from __future__ import annotations

import hashlib

from .graph import Graph

COMMUTATIVE_OPS = frozenset({"add"})


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def node_hashes(graph: Graph) -> dict:
    hashes = {}
    for node in graph.nodes:
        ins = [hashes[i] for i in node.inputs]
        if node.op in COMMUTATIVE_OPS:
            ins.sort()
        attrs = ",".join(f"{k}={node.attrs[k]!r}" for k in sorted(node.attrs))
        hashes[node.name] = _digest(f"{node.op}|{attrs}|{node.type}|{'/'.join(ins)}")
    return hashes


def structural_hash(graph: Graph) -> str:
    """Hex digest (16 characters) of the graph's architecture."""
    hashes = node_hashes(graph)
    return _digest("|".join(hashes[name] for name in graph.outputs.values()))[:16]
