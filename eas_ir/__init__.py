"""The typed graph IR of easc: the neutral middle between ONNX, PyTorch and the passes.

It imports neither torch nor onnx. See `graph.py` (nodes and graphs), `ops.py` (the closed op
set and its shape rules), `verify.py`, `text.py` (print / parse), `hashing.py`, `serialize.py`
(the `.easir` file) and `interpret.py` (reference semantics).
"""

from .analysis import identity_domain, is_nonnegative, nonnegative_values, value_ranges
from .builder import GraphBuilder, init_weights, make_node
from .graph import Graph, IRError, Node, UnknownNodeError
from .hashing import structural_hash
from .interpret import probe_inputs, run, run_all
from .names import Namespace
from .ops import LAYER_OPS, OPS, ShapeError
from .serialize import IRFileError, graph_from_bytes, graph_to_bytes, load_graph, save_graph, atomic_write_bytes
from .text import ParseError, format_node, parse_graph, print_graph
from .types import BATCH, TensorType
from .verify import VerificationError, verify

__all__ = [
    "BATCH", "Graph", "GraphBuilder", "IRError", "IRFileError", "LAYER_OPS", "Namespace", "Node", "OPS", "ParseError",
    "ShapeError", "TensorType", "UnknownNodeError", "VerificationError", "atomic_write_bytes", "format_node",
    "graph_from_bytes", "graph_to_bytes", "identity_domain", "init_weights", "is_nonnegative", "load_graph", "make_node",
    "nonnegative_values", "parse_graph", "print_graph", "probe_inputs", "run", "run_all", "save_graph",
    "structural_hash", "value_ranges", "verify",
]
