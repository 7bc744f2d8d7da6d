"""The ONNX backend: import ONNX files to the IR, export IR graphs to ONNX, and run onnxruntime as
the numeric oracle.

    graph = load_onnx("model.onnx")          # OnnxImportError names the file and the node at fault
    save_onnx(graph, "grown.onnx", opset=17)  # atomic write
    outputs = run_onnx(graph, {"x": batch})   # keyed by public output name
"""

from .exporter import OnnxExportError, export_model, save_onnx
from .importer import SUPPORTED_OPS, OnnxImportError, import_model, load_onnx
from .oracle import run_onnx

__all__ = ["OnnxExportError", "OnnxImportError", "SUPPORTED_OPS", "export_model", "import_model", "load_onnx",
           "run_onnx", "save_onnx"]
