"""Export an IR graph as PyTorch source a person can read, plus its weights in safetensors.

`export_torch_source(graph, outdir)` writes

- `outdir/model.py`: imports only torch; one `nn.Module` class named after the graph (CamelCase)
  whose `__init__` defines one named layer per line (`self.conv_1 = nn.Conv2d(1, 16, kernel_size=3,
  padding=1)`, default arguments left out) and whose `forward` has one line per op; plus a
  `load()` helper that reads the weights next to the file (it imports safetensors when called);
- `outdir/weights.safetensors`: that module's state_dict.

    spec = importlib.util.spec_from_file_location("model", "out/model.py"); ...
    model = module.Tiny(); model.load_state_dict(safetensors.torch.load_file("out/weights.safetensors"))

Layer attributes use `python_names(graph)`, the names `to_module` gives its submodules, so the
state_dict layouts agree and `write_back(graph, exported_model)` works on the exported class.

Variable names in forward are the few generic ones people use for a chain of layers (`x`, `out`,
`h`, ...), reused like registers: an op overwrites the variable of an input that dies there
(`x = self.relu_1(x)`, `out = out + x`), and a value still needed later keeps its variable while
the next one takes the first free name. Each line names its IR node: layer lines through
`self.<layer>`, expression lines (`+`, `torch.cat`, `torch.softmax`) in a trailing comment.

Files: `outdir` is created if needed. An existing folder is fine: `model.py` and
`weights.safetensors` are replaced, each atomically (temporary file + rename, so a crash never
leaves half a file), and nothing else in the folder is touched or deleted. The weights are
written first; a crash between the two writes leaves new weights beside the old `model.py`, and the
strict `load_state_dict` of `load()` reports the mismatch whenever the architectures differ.
Before anything is written the generated source is executed, loaded with the weights and checked
against `to_module(graph)` on seeded probe inputs, so a file that does not reproduce the graph is
never written.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

from easc.ir import Graph, probe_inputs, verify
from easc.ir.serialize import OutputError, stage_file

from easc.backends.optable import LOWERINGS

from .module import TorchBackendError, class_name, python_names, to_module

__all__ = ["TorchExport", "export_torch_source", "generate_source"]

MODEL_FILE = "model.py"
WEIGHTS_FILE = "weights.safetensors"
# Exported module vs to_module: the same torch ops on the same float32 weights, so they agree to
# float32 rounding (about 1e-6 relative); 1e-5 leaves room for kernel choice on other machines.
EXPORT_TOLERANCE = 1e-5


class TorchExport(NamedTuple):
    model_py: Path
    weights: Path
    class_name: str


def _layer_source(node, in_type) -> str:
    """The constructor call of the layer for `node`, default arguments omitted (easc.backends.optable)."""
    low = LOWERINGS.get(node.op)
    if low is None or low.code is None:
        raise TorchBackendError(f"node {node.name!r}: op {node.op!r} has no layer to export")
    return low.code(node, in_type)


def _shape(t) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


# Variable names of forward(), as people write them: `x` first, `out` for a second live value, ...
_GENERIC = ("x", "out", "h", "y", "z")


def _generic(k: int) -> str:
    return _GENERIC[k] if k < len(_GENERIC) else f"h{k - len(_GENERIC) + 2}"


def _is_generic(name: str) -> bool:
    return name in _GENERIC or re.fullmatch(r"h\d+", name) is not None


def _forward_lines(graph: Graph, names: dict) -> tuple:
    """The lines of forward() and of __init__, in graph order.

    Variables are a few generic names used like registers: an op reuses the variable of an input
    that dies there (read by no later op and not an output), else it takes the first generic name
    not holding a live value. Graph inputs keep their own names (one called `x` or another generic
    name is reused once dead). Lines of expressions (`+`, `torch.cat`, `torch.softmax`) end with the IR node's name,
    layer lines name it through `self.<layer>`.
    """
    types = {n.name: n.type for n in graph.nodes}
    outputs = set(graph.outputs.values())
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    last_use = {}
    for node in graph.nodes:
        for i in node.inputs:
            last_use[i] = position[node.name]
    var: dict = {}
    live: set = set()  # variable names holding a value that is still needed
    init_lines, forward_lines = [], []
    for node in graph.nodes:
        ident = names[node.name]
        if node.op == "input":
            var[node.name] = ident
            live.add(ident)
            continue
        args = [var[i] for i in node.inputs]
        dying = [i for i in dict.fromkeys(node.inputs)
                 if last_use[i] == position[node.name] and i not in outputs]
        for i in dying:
            live.discard(var[i])
        recycled = [var[i] for i in dying if _is_generic(var[i])]
        if recycled:
            target = recycled[0]
        else:
            k = 0
            while _generic(k) in live:
                k += 1
            target = _generic(k)
        var[node.name] = target
        live.add(target)
        if node.name not in last_use and node.name not in outputs:
            live.discard(target)  # dead code: nothing reads it
        low = LOWERINGS.get(node.op)
        if low is not None and low.expr is not None:
            line = f"{target} = {low.expr(node, args, [types[i] for i in node.inputs])}  # {ident}"
        else:
            init_lines.append(f"self.{ident} = {_layer_source(node, types[node.inputs[0]])}")
            line = f"{target} = self.{ident}({args[0]})"
        forward_lines.append(line)
    forward_lines.append("return " + ", ".join(var[n] for n in graph.outputs.values()))
    return forward_lines, init_lines


def generate_source(graph: Graph) -> str:
    """The text of `model.py` for `graph` (see the module docstring)."""
    verify(graph)
    names = python_names(graph)
    cls = class_name(graph)
    types = {n.name: n.type for n in graph.nodes}
    inputs = graph.inputs
    forward_lines, init_lines = _forward_lines(graph, names)
    in_doc = ", ".join(f"{names[n.name]} {_shape(n.type)}" for n in inputs)
    # Output names are user text: in the docstrings they appear only through `_doc_text`.
    out_doc = ", ".join(f"{_doc_text(public)} {_shape(types[node])}" for public, node in graph.outputs.items())
    returns = "a tuple " if len(graph.outputs) > 1 else ""
    input_shapes = ", ".join(f"{names[n.name]!r}: {n.type.sample_shape!r}" for n in inputs)
    output_names = ", ".join(repr(o) for o in graph.outputs) + ("," if len(graph.outputs) == 1 else "")

    ind2 = " " * 8
    lines = [
        f'"""{cls}: a network exported by easc from the IR graph {_doc_text(graph.name)}.',
        "",
        f"{len(graph.nodes)} nodes, depth {graph.depth}, {graph.params:,} parameters.",
        f"Inputs (float32, N = batch): {in_doc}. Outputs: {out_doc}.",
        f"The weights are in {WEIGHTS_FILE} next to this file:",
        "",
        "    model = load()  # the class below with the exported weights, in eval mode",
        '"""',
        "",
        "import torch",
        "from torch import nn",
        "",
        "",
        f"class {cls}(nn.Module):",
        f'    """Generated by easc; edit freely, the layer names match the keys of {WEIGHTS_FILE}."""',
        "",
        f"    input_shapes = {{{input_shapes}}}  # per sample, without the batch axis",
        f"    output_names = ({output_names})",
        "",
        "    def __init__(self):",
        "        super().__init__()",
        *[ind2 + line for line in init_lines],
        "",
        f"    def forward(self, {', '.join(names[n.name] for n in inputs)}):",
        f'        """Returns {returns}{out_doc}."""',
        *[ind2 + line for line in forward_lines],
        "",
        "",
        f'def load(weights="{WEIGHTS_FILE}", device="cpu"):',
        f'    """A {cls} holding the exported weights, in eval mode (a relative path is next to this file)."""',
        "    from pathlib import Path",
        "",
        "    from safetensors.torch import load_file",
        "",
        "    path = Path(weights)",
        "    if not path.is_absolute():",
        "        path = Path(__file__).resolve().parent / path",
        f"    model = {cls}()",
        "    model.load_state_dict(load_file(str(path), device=str(device)))",
        "    return model.to(device).eval()",
        "",
    ]
    return "\n".join(lines)


def _doc_text(text: str) -> str:
    """User text (a graph or output name) as it may appear inside a generated docstring.

    Names come from model files and are hostile until proven otherwise: a name holding three double
    quotes would close the docstring, and the rest would run whenever `model.py` is imported. The
    text is written as its `ascii()` literal (quotes, backslashes, newlines and non-ASCII escaped)
    with every double quote spelled `\\x22`, so the docstring cannot be closed or broken from
    inside and no user character reaches the source unescaped.
    """
    return ascii(str(text)).replace('"', "\\x22")


def _instantiate(source: str, cls: str) -> torch.nn.Module:
    namespace = {"__name__": "easc_export_check"}
    exec(compile(source, "<generated model.py>", "exec"), namespace)
    return namespace[cls]()


def _check(graph: Graph, reference: torch.nn.Module, exported: torch.nn.Module) -> None:
    feeds = probe_inputs(graph, batch=2)
    args = [torch.from_numpy(feeds[n.name]) for n in graph.inputs]
    with torch.no_grad():
        want, got = reference.eval()(*args), exported.eval()(*args)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    for public, w, g in zip(graph.outputs, want, got):
        err = float((w - g).abs().max())
        if err > EXPORT_TOLERANCE * (1 + float(w.abs().max())):
            raise TorchBackendError(f"export of {graph.name!r}: output {public!r} of the generated module differs "
                                    f"from to_module by {err:.3g}; this is a bug in easc's code generator")


def export_torch_source(graph: Graph, outdir) -> TorchExport:
    """Write `outdir/model.py` and `outdir/weights.safetensors` for `graph`; return their paths.

    All or nothing: the folder is created if missing; in an existing one only these two files are replaced and
    nothing else is removed. The source is checked to reproduce `to_module(graph)` before anything is written;
    both files are then written in full to temporary names next to their targets and renamed into place, the
    previous weights kept aside until the new model.py is in place. A failure at any step (a full disk, a
    read-only folder) removes what this call wrote, restores the previous pair and removes a folder it created,
    so the folder never holds new weights without their model.py. Write errors are `OutputError`s naming the
    file the user asked for.
    """
    from safetensors.torch import save

    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise TorchBackendError(f"export: {outdir} exists and is not a folder")
    source = generate_source(graph)
    cls = class_name(graph)
    reference = to_module(graph)
    exported = _instantiate(source, cls)
    exported.load_state_dict(reference.state_dict())  # strict: the layouts must agree
    _check(graph, reference, exported)
    state = {k: v.detach().contiguous() for k, v in exported.state_dict().items()}
    blob = save(state, metadata={"format": "pt", "easc_graph": graph.name, "class": cls})

    model_py, weights = outdir / MODEL_FILE, outdir / WEIGHTS_FILE
    created = _make_folder(outdir)
    staged, backup, placed = {}, None, False
    try:
        staged[weights] = _stage(weights, blob)
        staged[model_py] = _stage(model_py, source.encode("utf-8"))
        if os.path.lexists(weights):
            backup = _aside(weights)
        for target in (weights, model_py):
            _rename(staged[target], target)
            del staged[target]
            placed = True
    except BaseException:
        for tmp in staged.values():
            _remove(tmp)
        if placed:  # the new weights are in place but model.py is not: take them out again
            _remove(weights)
        if backup is not None:
            _rename_quietly(backup, weights)
            backup = None
        if created is not None:
            _remove_folder(created)
        raise
    finally:
        if backup is not None:
            _remove(backup)
    return TorchExport(model_py, weights, cls)


def _make_folder(outdir: Path) -> Path | None:
    """Create `outdir` (and missing parents); the topmost folder created, or None if it existed."""
    top = None
    for folder in reversed([outdir, *outdir.parents]):
        if not folder.exists():
            top = top or folder
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(e.errno, f"cannot create the folder ({e.strerror or e})", str(outdir)) from None
    return top


def _stage(path: Path, data: bytes) -> Path:
    """`data` written in full and flushed to a temporary file next to `path`."""
    return stage_file(path, lambda f: f.write(data))


def _aside(path: Path) -> Path:
    keep = Path(tempfile.mktemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    _rename(path, keep)
    return keep


def _rename(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as e:
        raise OutputError(e.errno, f"cannot write ({e.strerror or e})", str(dst)) from None


def _rename_quietly(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError:
        pass


def _remove(path: Path) -> None:
    try:
        if os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass


def _remove_folder(top: Path) -> None:
    """Remove the folders this export created, if they hold nothing (they only ever held its own files)."""
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            folder.rmdir()
        except OSError:
            pass
    try:
        top.rmdir()
    except OSError:
        pass
