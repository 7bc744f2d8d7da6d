"""The graph IR: nodes in topological order, each producing one typed value, weights attached.

A `Node` is its value (as in torch.fx): other nodes name it in their `inputs`. A `Graph` is an
immutable sequence of nodes plus named outputs. Passes never change a graph in place; they build a
new one with `Graph.replace` (the search branches many children from one parent, so a parent must
stay intact). Weight arrays are stored read-only to make an accidental in-place edit fail loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace as _dc_replace
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from .ops import LAYER_OPS
from .types import TensorType

if TYPE_CHECKING:
    from .names import Namespace


class IRError(ValueError):
    """Base class of every error the IR raises; `str(err)` is one line for users."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details

    def full(self) -> str:
        """The one-line message followed by any context (surrounding nodes, a suggested fix)."""
        return f"{self}\n{self.details}" if self.details else str(self)


def _frozen_array(a) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float32)
    if arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr).copy()
        arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Node:
    """One operation and the value it produces (named after the node).

    name:    unique in the graph; imported models keep their own names.
    op:      a key of `easc.ir.ops.OPS`.
    inputs:  names of the nodes whose values it reads, in order.
    attrs:   the op's attributes (normalised: defaults filled, pairs as tuples).
    weights: float32 arrays, read-only.
    type:    the type of the value it produces.
    origin:  for nodes a pass inserted, the node it came from (for readable diffs).
    """

    name: str
    op: str
    inputs: tuple
    attrs: Mapping
    type: TensorType
    weights: Mapping = field(default_factory=dict)
    origin: str = ""

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))
        object.__setattr__(self, "weights",
                           MappingProxyType({k: _frozen_array(v) for k, v in self.weights.items()}))

    def replace(self, **changes) -> "Node":
        return _dc_replace(self, **changes)

    @cached_property
    def params(self) -> int:
        """Trainable parameters (batchnorm running statistics are not counted); counted once per node (its
        weights never change), since every graph a pass makes sums them again."""
        return sum(int(w.size) for k, w in self.weights.items() if k not in ("mean", "var"))

    @property
    def width(self) -> int | None:
        """Output channels of a conv2d or units of a linear layer; None for other ops."""
        return int(self.attrs["out"]) if self.op in LAYER_OPS else None

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.op}, inputs={list(self.inputs)}, {self.type})"


class Graph:
    """An immutable computation graph: nodes in topological order and named outputs.

    outputs maps each public output name (kept from an imported file) to the node producing it.
    """

    def __init__(self, nodes: Iterable[Node], outputs: Mapping[str, str] | Sequence, name: str = "graph"):
        self._nodes = tuple(nodes)
        if not isinstance(outputs, Mapping):
            outputs = {o: o for o in outputs}
        self._outputs = MappingProxyType(dict(outputs))
        self.name = name
        self._index = {}
        for n in self._nodes:
            self._index.setdefault(n.name, n)  # duplicates are the verifier's to report
        self._consumers = None
        self._positions = None  # name -> index in `nodes`, built on first use (the graph never changes)
        self._params = None

    # -- access ------------------------------------------------------------------------------
    @property
    def nodes(self) -> tuple:
        return self._nodes

    @property
    def outputs(self) -> Mapping[str, str]:
        return self._outputs

    @property
    def inputs(self) -> list:
        """The graph's input nodes, in order."""
        return [n for n in self._nodes if n.op == "input"]

    def node(self, name: str) -> Node:
        try:
            return self._index[name]
        except KeyError:
            raise UnknownNodeError(self, name) from None

    def __contains__(self, name) -> bool:
        return name in self._index

    def __iter__(self):
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def position(self, name: str) -> int:
        if self._positions is None:
            positions = {}
            for i, n in enumerate(self._nodes):
                positions.setdefault(n.name, i)  # the first, as a scan would find it
            self._positions = positions
        try:
            return self._positions[name]
        except KeyError:
            raise UnknownNodeError(self, name) from None

    def reaches(self, source: str, target: str) -> bool:
        """Whether a path of data flow runs from node `source` to node `target` (a node reaches itself).

        Nodes are in topological order, so only the nodes between the two positions can be on such a path."""
        start, end = self.position(source), self.position(target)
        if start > end:
            return False
        seen, frontier = {source}, [source]
        while frontier:
            name = frontier.pop()
            if name == target:
                return True
            for reader in self.consumers(name):
                if reader not in seen and self.position(reader) <= end:
                    seen.add(reader)
                    frontier.append(reader)
        return False

    def consumers(self, name: str) -> list:
        """Names of the nodes that read `name`'s value, in graph order (each once)."""
        if self._consumers is None:
            table = {n.name: [] for n in self._nodes}
            for n in self._nodes:
                for i in dict.fromkeys(n.inputs):
                    table.setdefault(i, []).append(n.name)
            self._consumers = table
        return list(self._consumers.get(name, []))

    def output_names_of(self, node_name: str) -> list:
        """The public output names that expose `node_name`'s value."""
        return [o for o, n in self._outputs.items() if n == node_name]

    @property
    def params(self) -> int:
        if self._params is None:  # asked before every pass (the size limit): summed once per graph
            self._params = sum(n.params for n in self._nodes)
        return self._params

    @property
    def op_count(self) -> int:
        """Nodes other than inputs: the count `easc inspect` shows."""
        return sum(n.op != "input" for n in self._nodes)

    def layers(self) -> list:
        """The conv2d and linear nodes: the layers passes widen, deepen and connect."""
        return [n for n in self._nodes if n.op in LAYER_OPS]

    @property
    def depth(self) -> int:
        """Number of weighted layers (conv2d + linear), the usual depth of a CNN."""
        return len(self.layers())

    # -- building new graphs -----------------------------------------------------------------
    def replace(self, nodes: Iterable[Node] | None = None, outputs=None, name: str | None = None) -> "Graph":
        return Graph(self._nodes if nodes is None else nodes,
                     self._outputs if outputs is None else outputs,
                     self.name if name is None else name)

    def namespace(self, taken: Iterable[str] = ()) -> "Namespace":
        """The name authority for new names in a graph derived from this one (`easc.ir.names`)."""
        from .names import Namespace

        return Namespace([*self._index, *taken])

    def fresh_name(self, base: str, taken: Iterable[str] = ()) -> str:
        """`base` if unused, else `base_2`, `base_3`, ... (the one naming rule, `easc.ir.names`).

        The suffix is appended, never substituted, so `deepen_conv_3` can only become `deepen_conv_3_2`
        and keeps naming the layer it came from.
        """
        return self.namespace(taken).fresh(base)

    def to_networkx(self):
        """A networkx DiGraph of the data flow (edges producer -> consumer), for graph algorithms."""
        import networkx as nx

        g = nx.DiGraph()
        for n in self._nodes:
            g.add_node(n.name)
            for i in n.inputs:
                g.add_edge(i, n.name)
        return g

    def summary(self) -> str:
        return (f"{self.name}: {len(self._nodes)} nodes, depth {self.depth}, "
                f"{self.params:,} parameters")

    def __repr__(self) -> str:
        return f"<Graph {self.summary()}>"


class UnknownNodeError(IRError, KeyError):
    """A name that is not a node of the graph; the message lists the valid layer names."""

    def __init__(self, graph: Graph, name: str, kinds: Sequence[str] | None = None):
        pool = [n.name for n in graph.nodes if kinds is None or n.op in kinds]
        shown = ", ".join(pool[:30]) + (", ..." if len(pool) > 30 else "")
        what = "layer" if kinds else "node"
        IRError.__init__(self, f"no {what} named {name!r} in the graph (valid: {shown})")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]

