"""Export a torch module to an ONNX model in memory with either of torch's exporters, quietly (tests only)."""

import io
import logging
import warnings

import onnx
import torch


def export_onnx(model, x, dynamo: bool) -> onnx.ModelProto:
    """`dynamo=True`: torch.export-based exporter (needs onnxscript); else the TorchScript one at opset 17."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            if dynamo:
                return torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto
            f = io.BytesIO()
            torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17)
            return onnx.load_from_string(f.getvalue())
        finally:
            logging.disable(logging.NOTSET)
