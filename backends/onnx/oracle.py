"""onnxruntime as the numeric oracle: run an IR graph (through its ONNX export) or an ONNX model.

onnxruntime shares no code with the IR's numpy interpreter or the PyTorch backend, which makes it
the independent check that a transformation preserved the function. Sessions run the graph as the file
says, with no graph optimisation at all: no Conv+BatchNormalization fusion, and no constant folding, whose
folded copies of the weights made a session of a 98 MB model peak at 3.2x its size (1.6x without; the probe
runs of a check are a few milliseconds either way).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from easc.ir import Graph, IRError


def _session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Severity 3 = errors only: onnxruntime warns when a ceil_mode pool's output is smaller than
    # ONNX's shape inference predicts, which is the documented behaviour (see exporter.py).
    options.log_severity_level = 3
    # bytes or a path go to onnxruntime as they are (the file the user gave, not a re-serialisation of it)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(graph_or_model, feeds: dict, threads: int = 1) -> dict:
    """Run with onnxruntime on the CPU; outputs keyed by public output name (ONNX output name).

    graph_or_model: an IR `Graph` (exported first), an `onnx.ModelProto`, ONNX bytes, or a path to a file.
    feeds: input name -> array (cast to float32).
    """
    from .exporter import export_model

    if isinstance(graph_or_model, Graph):
        model = export_model(graph_or_model)
    elif isinstance(graph_or_model, onnx.ModelProto):
        model = graph_or_model
    elif isinstance(graph_or_model, (str, Path)):
        model = str(graph_or_model)
    elif isinstance(graph_or_model, bytes):
        model = graph_or_model
    else:
        raise TypeError(f"run_onnx takes a Graph, an onnx.ModelProto, ONNX bytes or a path, "
                        f"not {type(graph_or_model).__name__}")
    session = _session(model, threads)
    wanted = [i.name for i in session.get_inputs()]
    missing = [name for name in wanted if name not in feeds]
    if missing:
        raise IRError(f"no value given for input {missing[0]!r} (inputs: {', '.join(wanted)})")
    arrays = {name: np.ascontiguousarray(feeds[name], dtype=np.float32) for name in wanted}
    names = [o.name for o in session.get_outputs()]
    fixed = session.get_inputs()[0].shape[0] if wanted else None
    total = len(arrays[wanted[0]]) if wanted else 0
    if not isinstance(fixed, int) or fixed <= 0 or fixed == total:
        return dict(zip(names, session.run(names, arrays)))
    # A file with a fixed batch size (an export at batch 2, say) runs the feeds `fixed` samples at a time; a
    # last short run is padded with repeats of its first sample and the padding's outputs dropped.
    parts = []
    for start in range(0, total, fixed):
        chunk = {k: v[start:start + fixed] for k, v in arrays.items()}
        short = fixed - len(chunk[wanted[0]])
        if short:
            chunk = {k: np.concatenate([v, np.repeat(v[:1], short, axis=0)]) for k, v in chunk.items()}
        outs = session.run(names, chunk)
        parts.append([o[:fixed - short] for o in outs])
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}
