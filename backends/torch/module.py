"""IR graph -> `torch.nn.Module`, and trained weights back into the graph.

`to_module(graph)` builds a `torch.fx.GraphModule`: one submodule per IR node that is a layer
(`nn.Conv2d`, `nn.BatchNorm2d` / `nn.BatchNorm1d`, `nn.ReLU`, `nn.MaxPool2d`, `nn.AvgPool2d`,
`nn.AdaptiveAvgPool2d(1)`, `nn.Flatten`, `nn.Linear`, `nn.Dropout`) and a plain call for the three
ops that are expressions (`torch.cat(..., dim=1)`, `+`, `torch.softmax(..., dim=1)`). fx turns that
graph into ordinary Python source (`module.code`), so the forward pass costs what a hand-written
`nn.Sequential` costs: no interpreter loop, no per-call dispatch on op names.

Calling convention: `module(*inputs)` with one tensor per graph input, in `graph.inputs` order;
it returns a single tensor when the graph has one output, else a tuple in `graph.outputs` order
(`module.easc_outputs` holds the public names of that tuple).

Names: an IR name may be any string ("/layer1/conv/Conv" from ONNX); `python_names(graph)` turns
each into a unique Python identifier ("layer1_conv_Conv"). Submodules (hence state_dict keys) use
those identifiers, and so does the exported source (`codegen.py`), so a module from `to_module`
and one from `export_torch_source` share one state_dict layout. `module.easc_names` maps each IR
node that owns a submodule to the submodule's name.

`write_back(graph, module)` reads the trained parameters and batchnorm running statistics out of
the module into a new graph with the same structure: the search trains a child, writes its
weights back, and transforms the trained graph again.
"""

from __future__ import annotations

import keyword
import re

import numpy as np
import torch
from torch import fx, nn

from easc.ir import Graph, IRError, verify

__all__ = ["TorchBackendError", "python_names", "class_name", "to_module", "write_back", "build_layer",
           "MODULE_OPS", "EXPRESSION_OPS"]


class TorchBackendError(IRError):
    """The PyTorch backend cannot do what was asked; the message names the node or module at fault."""


# Ops materialised as a submodule; the others are expressions in forward() (see easc.backends.optable).
from easc.backends.optable import EXPRESSION_OPS, LOWERINGS, MODULE_OPS  # noqa: E402

# Identifiers a generated name must not take: they would shadow something the module or the
# generated source needs (an nn.Module method, the `torch` / `nn` modules, our own attributes).
_RESERVED = frozenset({"self", "torch", "nn", "F", "easc_names", "easc_outputs", "input_shapes", "output_names",
                       "meta", "graph", "code", "training", "load"})


def _is_free(ident: str) -> bool:
    return not (keyword.iskeyword(ident) or ident in _RESERVED or hasattr(nn.Module, ident)
                or hasattr(fx.GraphModule, ident))


def _sanitize(name: str, fallback: str) -> str:
    ident = re.sub(r"_+", "_", re.sub(r"[^0-9A-Za-z_]", "_", name)).strip("_")
    if not ident:
        return fallback
    if ident[0].isdigit():
        ident = f"{fallback}_{ident}"
    return ident


def python_names(graph: Graph) -> dict:
    """A unique Python identifier for every node, in graph order: `{ir name: identifier}`.

    Characters outside [A-Za-z0-9_] become `_`, a leading digit gets the op's short name as prefix,
    keywords and names an `nn.Module` already uses (`forward`, `train`, ...) get a trailing `_`,
    and collisions after all that are suffixed `_2`, `_3`, ... in graph order. The result only
    depends on the node names, so it can be recomputed from the graph at any time.
    """
    from easc.ir.builder import SHORT_NAMES

    out, taken = {}, set()
    for node in graph.nodes:
        ident = _sanitize(node.name, SHORT_NAMES.get(node.op, "v"))
        while not _is_free(ident):
            ident += "_"
        if ident in taken:
            stem, k = ident, 2
            while f"{stem}_{k}" in taken or not _is_free(f"{stem}_{k}"):
                k += 1
            ident = f"{stem}_{k}"
        taken.add(ident)
        out[node.name] = ident
    return out


def class_name(graph: Graph) -> str:
    """The graph's name in CamelCase ("resnet_cifar" -> "ResnetCifar"), a valid class name."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", graph.name) if p]
    ident = "".join(p[0].upper() + p[1:] for p in parts) or "Net"
    if ident[0].isdigit():
        ident = "Net" + ident
    return ident if not keyword.iskeyword(ident) else ident + "_"


def _tensor(array) -> torch.Tensor:
    # IR weights are read-only numpy arrays: copy, so training never writes into a graph.
    return torch.tensor(np.asarray(array, dtype=np.float32))


def build_layer(node, in_type) -> nn.Module:
    """The `nn.Module` computing `node` (an op of MODULE_OPS), weights copied from the node."""
    low = LOWERINGS.get(node.op)
    if low is None or low.module is None:
        raise TorchBackendError(f"node {node.name!r}: op {node.op!r} has no torch module")
    return low.module(node, in_type)


def to_module(graph: Graph, device=None) -> fx.GraphModule:
    """A `torch.fx.GraphModule` computing `graph`, with float32 weights copied from it.

    Inputs are positional, in `graph.inputs` order; the result is one tensor for a one-output
    graph, else a tuple in `graph.outputs` order. Like any freshly built `nn.Module` it starts in
    training mode (batchnorm uses batch statistics, dropout drops): call `.eval()` to compute
    what `easc.ir.run` computes. `module.easc_names` maps IR node -> submodule name and
    `module.easc_outputs` lists the public output names; both survive `copy.deepcopy`.
    """
    verify(graph)
    names = python_names(graph)
    types = {n.name: n.type for n in graph.nodes}
    root = nn.Module()
    fg = fx.Graph()
    env: dict = {}
    easc_names: dict = {}
    for node in graph.nodes:
        ident = names[node.name]
        if node.op == "input":
            env[node.name] = fg.placeholder(ident)
        elif node.op in MODULE_OPS:
            root.add_module(ident, build_layer(node, types[node.inputs[0]]))
            easc_names[node.name] = ident
            env[node.name] = fg.create_node("call_module", ident, (env[node.inputs[0]],), name=ident)
        elif node.op in EXPRESSION_OPS:
            env[node.name] = LOWERINGS[node.op].fx(fg, node, [env[i] for i in node.inputs], ident,
                                                   [types[i] for i in node.inputs])
        else:  # the op set is closed; a new op needs an entry in easc.backends.optable
            raise TorchBackendError(f"node {node.name!r}: op {node.op!r} has no lowering to torch")
    outs = [env[n] for n in graph.outputs.values()]
    fg.output(outs[0] if len(outs) == 1 else tuple(outs))
    module = fx.GraphModule(root, fg, class_name=class_name(graph))
    extras = {"easc_names": easc_names, "easc_outputs": tuple(graph.outputs)}
    for key, value in extras.items():
        setattr(module, key, value)
    # fx's deepcopy rebuilds the module and keeps only what this meta entry lists.
    from torch.fx import graph_module as _gm

    module.meta[getattr(_gm, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")] = extras
    return module.to(device) if device is not None else module


def _unwrap(module: nn.Module) -> nn.Module:
    """The user module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


# IR weight name -> attribute of the torch layer holding it.
_WEIGHT_ATTRS = {
    "conv2d": {"weight": "weight", "bias": "bias"},
    "linear": {"weight": "weight", "bias": "bias"},
    "batchnorm": {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"},
}


def write_back(graph: Graph, module: nn.Module) -> Graph:
    """A new graph: `graph`'s structure with the weights and running statistics of `module`.

    `module` is one `to_module(graph)` built (possibly trained, on any device, possibly wrapped in
    DataParallel / DDP / torch.compile), or an instance of the class `export_torch_source` wrote.
    Submodules are found through `module.easc_names`, or else through `python_names(graph)`, which
    both of those use. Raises `TorchBackendError` naming the node when a layer is missing, has the
    wrong shape, or holds non-finite values (training diverged).
    """
    module = _unwrap(module)
    names = dict(python_names(graph))
    names.update(getattr(module, "easc_names", {}) or {})
    nodes = []
    for node in graph.nodes:
        attrs = _WEIGHT_ATTRS.get(node.op)
        if not attrs or not node.weights:
            nodes.append(node)
            continue
        try:
            layer = module.get_submodule(names[node.name])
        except AttributeError:
            raise TorchBackendError(f"write_back: the module has no submodule {names[node.name]!r} for node "
                                    f"{node.name!r} ({node.op}); was it built from this graph?") from None
        weights = {}
        for key, old in node.weights.items():
            tensor = getattr(layer, attrs[key], None)
            if not isinstance(tensor, torch.Tensor):
                raise TorchBackendError(f"write_back: node {node.name!r} ({node.op}) needs {key!r} but "
                                        f"{names[node.name]}.{attrs[key]} is {type(tensor).__name__}")
            array = tensor.detach().to("cpu", torch.float32).numpy().copy()
            if array.shape != old.shape:
                raise TorchBackendError(f"write_back: {names[node.name]}.{attrs[key]} has shape {array.shape}, "
                                        f"node {node.name!r} needs {key!r} of shape {old.shape}")
            if not np.isfinite(array).all():
                raise TorchBackendError(f"write_back: {names[node.name]}.{attrs[key]} (node {node.name!r}) holds "
                                        f"non-finite values; training diverged")
            weights[key] = array
        nodes.append(node.replace(weights=weights))
    return verify(graph.replace(nodes=nodes), since=graph)  # only weights changed: structure not re-verified

