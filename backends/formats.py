"""Load and save a model in any format easc reads: ONNX (`.onnx`) or the IR's own file (`.easir`).

The format is chosen by the file's suffix when saving, and by its content when loading (an IR file
is a safetensors container whose metadata says `easc-ir`; anything else is tried as ONNX), so a
renamed file still loads.
"""

from __future__ import annotations

from pathlib import Path

from easc.ir import Graph, IRError, load_graph, save_graph
from easc.ir.serialize import FORMAT, check_writable

SAVE_SUFFIXES = (".onnx", ".easir")


class ModelFileError(IRError):
    """A model path that cannot be read or written; the message names the file."""


def _is_ir_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return FORMAT.encode() in head


def load_model(path) -> Graph:
    """The IR graph of an ONNX or .easir file (ModelFileError / OnnxImportError / IRFileError on failure)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file (.onnx or .easir)")
    if not path.is_file():  # /dev/zero, a FIFO: reading it would never end
        raise ModelFileError(f"{path}: is not a regular file")
    if path.suffix == ".easir" or _is_ir_file(path):
        return load_graph(path)
    from easc.backends.onnx import load_onnx

    return load_onnx(path)


def check_save_path(path) -> Path:
    """Fail early (before any work) when `path` cannot take a model: unknown suffix, no folder, or a
    folder where no file can be written (read-only, /proc, no permission)."""
    path = Path(path)
    if path.suffix not in SAVE_SUFFIXES:
        raise ModelFileError(f"{path}: unknown model format {path.suffix or '(no suffix)'!r} "
                             f"(use {' or '.join(SAVE_SUFFIXES)})")
    if not path.parent.exists():
        raise ModelFileError(f"{path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder")
    check_writable(path)
    return path


def save_model(graph: Graph, path) -> None:
    """Write `graph` as ONNX or .easir by suffix; atomic (a temporary file renamed into place)."""
    path = check_save_path(path)
    if path.suffix == ".easir":
        save_graph(graph, path)
    else:
        from easc.backends.onnx import save_onnx

        save_onnx(graph, path)
