"""The PyTorch backend: IR graphs as trainable `nn.Module`s, `nn.Module`s as IR graphs, readable exports.

    to_module(graph)                  -> torch.fx.GraphModule           (module.py)
    write_back(graph, module)         -> Graph with the module's weights (module.py)
    from_module(module, example)      -> Graph traced with torch.fx      (fx_import.py)
    export_torch_source(graph, outdir) -> model.py + weights.safetensors  (codegen.py)

Names are resolved lazily (PEP 562), so importing one submodule of this package (say `data`)
does not import the others.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "to_module": "module", "write_back": "module", "python_names": "module", "TorchBackendError": "module",
    "from_module": "fx_import", "TorchImportError": "fx_import",
    "export_torch_source": "codegen", "TorchExport": "codegen",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
