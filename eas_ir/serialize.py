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
    """The graph in an IR file's bytes.

    Order matters for hostile files: the header is read and checked first (every tensor float32, its byte
    range inside the file and of the size its shape says), then the graph text is parsed, and each node's
    weights are taken from the file's tensor of the shape the node's attributes require. Nothing is
    allocated from a declared shape alone: a conv declaring 5,000,000 output channels in a small file is
    refused because the file holds no such tensor, without any memory spent on it.
    """
    header, body = _header(data, source)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "graph" not in meta:
        raise IRFileError(f"{source}: not an easc IR file (no graph in its metadata)")
    if meta.get("version") != VERSION:
        raise IRFileError(f"{source}: IR file version {meta.get('version')!r}, this easc reads {VERSION!r}")
    if not isinstance(meta["graph"], str):
        raise IRFileError(f"{source}: not an easc IR file (its graph is not text)")

    def weights(node_name: str, shapes: dict) -> dict:
        out = {}
        for key, shape in shapes.items():
            full = f"{node_name}/{key}"
            entry = header.get(full)
            if not isinstance(entry, dict):
                raise IRFileError(f"{source}: weight {full!r} is missing")
            if tuple(entry["shape"]) != tuple(shape):
                raise IRFileError(f"{source}: weight {full!r} has shape {tuple(entry['shape'])} in the file but "
                                  f"the graph declares {tuple(shape)}")
            begin, end = entry["data_offsets"]
            out[key] = np.frombuffer(body, dtype="<f4", count=(end - begin) // 4, offset=begin).reshape(shape).copy()
        return out

    try:
        graph = parse_graph(meta["graph"], weights=weights)
    except ParseError as e:
        raise IRFileError(f"{source}: {e}") from None
    try:
        verify(graph)
    except IRError as e:
        raise IRFileError(f"{source}: {e}") from None
    return graph


def _header(data: bytes, source: str) -> tuple[dict, memoryview]:
    """The safetensors header of `data`, checked entry by entry, and the byte buffer its offsets index."""
    import json
    import struct

    def bad(reason: str) -> IRFileError:
        return IRFileError(f"{source}: not an easc IR file ({reason})")

    if len(data) < 8:
        raise bad("too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise bad(f"its header claims {n:,} bytes but the file has {len(data) - 8:,} after the length; "
                  "is it truncated?")
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"its header is not JSON: {str(e).splitlines()[0][:80]}") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    body = memoryview(data)[8 + n:]
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
                and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                        for d in [*entry["shape"], *entry["data_offsets"]])):
            raise bad(f"tensor {name!r} has a malformed header entry")
        if entry.get("dtype") != "F32":
            raise IRFileError(f"{source}: weight {name!r} is {entry.get('dtype')}, not float32 (F32)")
        begin, end = entry["data_offsets"]
        size = 4
        for d in entry["shape"]:
            size *= d
        if end < begin or end > len(body) or end - begin != size:
            raise bad(f"tensor {name!r} does not fit the file (bytes {begin}..{end} of {len(body)}); "
                      "is it truncated?")
    return header, body


def _creation_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: 0666 less the process's umask.

    mkstemp creates its file 0600 whatever the umask; an output the user shares (a model, a plot) must get
    the mode their umask asks for. Linux reports the umask in /proc/self/status without changing it; the
    os.umask round trip is the portable fallback.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class OutputError(OSError):
    """An output that cannot be written; `filename` is the path the user gave, never a temporary name."""


def stage_file(path, write, sync: bool = True) -> Path:
    """A temporary file next to `path`, created with the mode the umask gives, filled by `write(f)` (a binary
    file object), flushed and synced; returns its path for the caller to rename into place (`commit_file`)
    or remove. Nothing is left behind on failure; an OSError is raised as an `OutputError` naming `path`.

    sync=False leaves the fsync to the caller (`sync_file`, which must run before `commit_file`): the file's
    bytes are in the page cache already, so the caller can read the file back (a check) while the disk
    catches up.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _creation_mode())
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        return Path(tmp)
    except BaseException as e:
        if tmp is not None:
            _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise OutputError(e.errno, f"cannot write ({e.strerror or e})", str(path)) from None
        raise


def sync_file(staged, path) -> None:
    """fsync a file `stage_file(..., sync=False)` wrote (it releases the GIL: other threads run meanwhile); an
    OSError is raised as an `OutputError` naming `path`. The caller removes the staged file on failure."""
    try:
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)  # Linux syncs the file's data through any descriptor of it, a read-only one included
        finally:
            os.close(fd)
    except OSError as e:
        raise OutputError(e.errno, f"cannot write ({e.strerror or e})", str(path)) from None


def commit_file(staged, path) -> None:
    """Rename the staged file over `path` (replacing a symlink there, never writing through it); on failure
    remove it and raise an `OutputError` naming `path`."""
    try:
        os.replace(staged, path)
    except OSError as e:
        _unlink_quietly(staged)
        raise OutputError(e.errno, f"cannot write ({e.strerror or e})", str(path)) from None


def _unlink_quietly(path) -> None:
    try:
        if os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename.

    The rename replaces a symlink planted at `path` by a regular file instead of writing through it to
    its target. Errors (read-only file system, a folder under /proc, a full disk) are raised as an
    `OutputError` naming `path`, with the errno of the cause, so that callers can tell a full disk
    (ENOSPC) from a path the user got wrong.
    """
    commit_file(stage_file(path, lambda f: f.write(data)), path)


def check_writable(path) -> None:
    """Fail now, naming `path`, when a file could not be written there later (read-only file system, no
    permission, a folder such as /proc that takes no new files): commands check before hours of work."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as e:
        raise OutputError(e.errno, f"cannot write ({e.strerror or e})", str(path)) from None
    os.close(fd)
    os.unlink(tmp)


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
