"""The IR's own file format (`.easir`): one file, no pickle, safe to load from anywhere.

The file is a safetensors container: the weights as float32 tensors named `<node>/<weight>`, and
in its metadata the graph in the text form (`easc.ir.text`) plus a format version. Loading parses
the text, then attaches the weights and verifies the graph, so a file that was edited by hand or
truncated fails with a clear error instead of producing a broken network. Writes go to a temporary
file in the same folder and are renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .graph import Graph, IRError
from .text import ParseError, parse_graph, print_graph
from .verify import verify

FORMAT = "easc-ir"
VERSION = "1"


class IRFileError(IRError):
    """A file that is not a readable easc IR file."""


def graph_to_bytes(graph: Graph) -> bytes:
    from safetensors.numpy import save

    tensors = {f"{n.name}/{k}": np.ascontiguousarray(w) for n in graph.nodes for k, w in n.weights.items()}
    return save(tensors, metadata={"format": FORMAT, "version": VERSION, "graph": print_graph(graph)})


def graph_from_bytes(data: bytes, source: str = "<bytes>") -> Graph:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(data)
        meta = _metadata(data)
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as e:
        raise IRFileError(f"{source}: not an easc IR file ({str(e).splitlines()[0][:80]})") from None
    if meta.get("format") != FORMAT or "graph" not in meta:
        raise IRFileError(f"{source}: not an easc IR file (no graph in its metadata)")
    if meta.get("version") != VERSION:
        raise IRFileError(f"{source}: IR file version {meta.get('version')!r}, this easc reads {VERSION!r}")
    try:
        skeleton = parse_graph(meta["graph"])
    except ParseError as e:
        raise IRFileError(f"{source}: {e}") from None
    nodes = []
    for node in skeleton.nodes:
        weights = {}
        for key in node.weights:
            full = f"{node.name}/{key}"
            if full not in tensors:
                raise IRFileError(f"{source}: weight {full!r} is missing")
            weights[key] = tensors[full]
        nodes.append(node.replace(weights=weights))
    graph = skeleton.replace(nodes=nodes)
    try:
        verify(graph)
    except IRError as e:
        raise IRFileError(f"{source}: {e}") from None
    return graph


def _metadata(data: bytes) -> dict:
    import json
    import struct

    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    return header.get("__metadata__", {}) or {}


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_graph(graph: Graph, path) -> None:
    atomic_write_bytes(path, graph_to_bytes(graph))


def load_graph(path) -> Graph:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IRFileError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) < 8:
        raise IRFileError(f"{path}: not an easc IR file (too short)")
    return graph_from_bytes(data, str(path))
